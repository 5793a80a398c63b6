//! Fuzz targets: one function per input parser of the node, and one for the state machine.
//!
//! Each target takes any bytes and must never panic: a panic is a bug found (in the parser, in
//! the checks behind it, or in the invariant the target asserts). The targets run the node's own
//! code paths, not copies of them: the peer frame reader and decoder, the `transport::validate`
//! checks a Raft request meets before openraft sees it, the handshake check, the HTTP JSON body
//! parsers and their limit checks, the snapshot file reader, and `state_machine::apply` on
//! [`MemState`].
//!
//! Invariants asserted, beyond "no panic":
//! - whatever an API body parser accepts respects the limits of `limits.rs` (key sizes, value
//!   sizes and the txn value budget, op and compare counts, id rules), fits the largest log
//!   entry once proposed, and is never refused by the state machine as malformed;
//! - whatever decodes from the peer link encodes back to at most the bytes it came from, and
//!   that encoding is stable; a frame buffer holds no more than the bytes that arrived (plus a
//!   read chunk); a retried forwarded write answers its first answer;
//! - snapshot records stay within `limits::SNAPSHOT_RECORD_BYTES_MAX`;
//! - the ledger invariants over command sequences (see [`state_machine`]).
//!
//! Used by `fuzz/` (cargo-fuzz, libFuzzer), by the stable mutation fuzzer `metrokv-fuzz`, and
//! by `node/tests/fuzz_corpus.rs`, which replays the kept corpus and every regression case.
//! The parsers' targets are here; the state machine's, with its input decoder and ledger
//! checks, is in `ledger`; `seeds` makes the valid inputs the corpus starts from.
//!
//! Left out: the HTTP layer itself (hyper's parser is not ours), query strings and headers
//! (small, tested beside their parsers), and anything needing RocksDB or a network.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use futures::executor::block_on;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api;
use crate::api::accounts;
use crate::api::txn;
use crate::limits;
use crate::raft;
use crate::raft::AppendEntriesRequest;
use crate::raft::EntryPayload;
use crate::raft::LogId;
use crate::raft::Membership;
use crate::raft::NodeInfo;
use crate::raft::SnapshotMeta;
use crate::raft::StoredMembership;
use crate::raft::Vote;
use crate::state_machine;
use crate::state_machine::mem::MemState;
use crate::state_machine::AccountRecord;
use crate::state_machine::Change;
use crate::state_machine::Command;
use crate::state_machine::Compare;
use crate::state_machine::CompareOp;
use crate::state_machine::CompareTarget;
use crate::state_machine::Condition;
use crate::state_machine::DedupKey;
use crate::state_machine::DedupRecord;
use crate::state_machine::KvRecord;
use crate::state_machine::Rejection;
use crate::state_machine::Request;
use crate::state_machine::Response;
use crate::state_machine::SmMeta;
use crate::state_machine::Transfer;
use crate::state_machine::Txn;
use crate::state_machine::TxnOp;
use crate::storage;
use crate::storage::keys;
use crate::storage::snapshot::SnapshotReader;
use crate::storage::snapshot::SnapshotWriter;
use crate::transport::codec;
use crate::transport::codec::Envelope;
use crate::transport::codec::Hello;
use crate::transport::codec::HelloReply;
use crate::transport::codec::MembershipCall;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;
use crate::transport::server;
use crate::transport::validate;

mod ledger;
mod seeds;

pub use ledger::state_machine;
pub use seeds::seeds;

/// What a target made of its input. libFuzzer ignores it; the corpus test checks that the valid
/// seeds (files named `ok-*`) are accepted, so a target that silently refuses everything fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input parsed (at least one frame decoded, the body was accepted, the snapshot
    /// verified, a command applied).
    Accepted,
    /// The input was refused with an error, as garbage must be.
    Refused,
}

impl Outcome {
    fn accepted_if(accepted: bool) -> Self {
        if accepted {
            Outcome::Accepted
        } else {
            Outcome::Refused
        }
    }
}

/// A fuzz target.
pub type Target = fn(&[u8]) -> Outcome;

/// Every target by name; the name is also its directory under `fuzz/corpus` and
/// `fuzz/regressions`, and its file under `fuzz/fuzz_targets`.
pub const TARGETS: &[(&str, Target)] = &[
    ("peer_frame", peer_frame),
    ("hello", hello),
    ("txn_body", txn_body),
    ("transfer_body", transfer_body),
    ("account_body", account_body),
    ("snapshot_file", snapshot_file),
    ("state_machine", state_machine),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

// ---------------------------------------------------------------------------------------------
// The peer link.

/// Bytes as a stream of peer frames: each frame read with the frame cap, decoded as a request
/// and as an answer, and every decoded Raft request run through its `transport::validate` check.
pub fn peer_frame(data: &[u8]) -> Outcome {
    let mut input = data;
    let mut buf = Vec::new();
    let mut decoded = false;
    // Every frame read consumes at least its 4-byte length, so the loop ends with the input.
    while block_on(codec::read_frame(
        &mut input,
        &mut buf,
        limits::PEER_FRAME_BYTES_MAX,
    ))
    .is_ok()
    {
        assert_buffer_bounded(&buf, data.len());
        if let Ok(envelope) = codec::decode::<Envelope<PeerRequest>>(&buf) {
            assert_stable_encoding(&envelope, buf.len());
            check_peer_request(envelope);
            decoded = true;
        }
        if let Ok(envelope) = codec::decode::<Envelope<PeerResponse>>(&buf) {
            assert_stable_encoding(&envelope, buf.len());
            decoded = true;
        }
    }
    // Also after a frame that was announced but never arrived whole.
    assert_buffer_bounded(&buf, data.len());
    Outcome::accepted_if(decoded)
}

/// A frame buffer grows with the bytes that arrive, never with the length a peer announces
/// (`Vec` at most doubles past what it was asked to hold).
fn assert_buffer_bounded(buf: &Vec<u8>, received: usize) {
    assert!(
        buf.capacity() <= 2 * (received + limits::PEER_READ_CHUNK_BYTES),
        "a frame buffer of {} bytes for {received} bytes received",
        buf.capacity()
    );
}

/// What decoded encodes back to no more bytes than it came from (postcard's encoding is
/// minimal), and encoding is stable: decode(encode(x)) encodes to the same bytes.
fn assert_stable_encoding<T: Serialize + DeserializeOwned>(value: &T, payload_len: usize) {
    let once = postcard::to_allocvec(value).expect("a decoded value encodes");
    assert!(
        once.len() <= payload_len,
        "{payload_len} bytes decoded into a value that encodes to {}",
        once.len()
    );
    let again: T = postcard::from_bytes(&once).expect("what we encoded decodes");
    let twice = postcard::to_allocvec(&again).expect("a decoded value encodes");
    assert_eq!(once, twice, "encoding is not stable across a round trip");
}

/// The node ids a request is checked with: the sender its vote names (so the checks past the
/// sender check run), and another node as the receiver.
fn sender_and_receiver(vote: &Vote) -> (u64, u64) {
    let from = vote.leader_id.node_id;
    (from, from.wrapping_add(1))
}

fn check_peer_request(envelope: Envelope<PeerRequest>) {
    match envelope.body {
        PeerRequest::AppendEntries(rpc) => {
            let (from, me) = sender_and_receiver(&rpc.vote);
            if validate::append_entries(&rpc, from, me).is_ok() {
                assert_append_entries_sound(&rpc);
            }
            // Whatever a follower stores, it may apply: the state machine takes any request.
            for entry in &rpc.entries {
                if let EntryPayload::Normal(request) = &entry.payload {
                    let _ = MemState::default().apply(request);
                }
            }
        }
        PeerRequest::Vote(rpc) | PeerRequest::PreVote(rpc) => {
            let (from, me) = sender_and_receiver(&rpc.vote);
            for transfer_allowed in [false, true] {
                if let Ok(passed) = validate::vote(rpc.clone(), from, me, transfer_allowed) {
                    assert!(transfer_allowed || !passed.leadership_transfer);
                    let term = passed.vote.leader_id.term;
                    assert!(!passed.vote.committed && term > 0 && term < validate::BOUND);
                    if let Some(last) = &passed.last_log_id {
                        assert!(
                            last.leader_id < passed.vote.leader_id && last.index < validate::BOUND
                        );
                    }
                }
            }
        }
        PeerRequest::TransferLeader(rpc) => {
            let (from, me) = sender_and_receiver(rpc.from_leader());
            if validate::transfer_leader(&rpc, from, me, &three_members()).is_ok() {
                assert!((1..=3).contains(rpc.to_node_id()));
            }
        }
        PeerRequest::SnapshotChunk(chunk) => {
            let (from, me) = sender_and_receiver(&chunk.vote);
            if validate::snapshot_chunk(&chunk.vote, from, me).is_ok() {
                assert!(chunk.vote.committed && chunk.vote.leader_id.term < validate::BOUND);
                // A whole snapshot in one chunk: the meta check runs after the file verified.
                if chunk.offset == 0 {
                    if let Some(meta) = read_snapshot(&chunk.data) {
                        let _ = validate::snapshot(&chunk.vote, &meta, from, me, None);
                        let committed = openraft::testing::log_id::<raft::TypeConfig>(1, 1, 5);
                        let _ = validate::snapshot(&chunk.vote, &meta, from, me, Some(committed));
                    }
                }
            }
        }
        PeerRequest::ClientWrite {
            command,
            idempotency_key,
        } => {
            // The leader stamps and proposes a forwarded write; applying it twice (a retry) with
            // a key, or as a transfer, must answer the first answer.
            let request = Request {
                leader_time_ms: envelope.id,
                idempotency_key,
                command,
            };
            let mut state = MemState::default();
            let first = state.apply(&request).response;
            let keyed = request.idempotency_key.is_some()
                || matches!(request.command, Command::Transfer(_));
            if keyed && !matches!(request.command, Command::RecordStorage { .. }) {
                let again = state.apply(&request).response;
                assert_eq!(
                    again, first,
                    "a retried write did not answer its first answer"
                );
            }
        }
        PeerRequest::Membership(MembershipCall::AddLearner { id, info }) => {
            // The leader checks a forwarded member as the API checks a posted one.
            let _ = crate::config::check_member(id, &info);
        }
        PeerRequest::ReadIndex | PeerRequest::Status | PeerRequest::Membership(_) => {}
    }
}

/// What `validate::append_entries` lets through is what openraft assumes: entries follow
/// `prev_log_id` without gaps, terms never go back and never pass the sender's vote, and every
/// index and term leaves room for `+ 1`.
fn assert_append_entries_sound(rpc: &AppendEntriesRequest) {
    let first = rpc.prev_log_id.map_or(0, |p| p.index + 1);
    let mut last_leader = rpc.prev_log_id.map(|p| p.leader_id);
    for (i, entry) in rpc.entries.iter().enumerate() {
        let id = &entry.log_id;
        assert_eq!(id.index, first + i as u64, "entries follow prev_log_id");
        assert!(id.index < validate::BOUND && id.leader_id.term < validate::BOUND);
        assert!(
            last_leader.is_none_or(|l| l <= id.leader_id),
            "a term went back"
        );
        assert!(
            id.leader_id <= rpc.vote.leader_id,
            "an entry is ahead of the vote"
        );
        last_leader = Some(id.leader_id);
    }
    if let Some(commit) = &rpc.leader_commit {
        assert!(commit.index < validate::BOUND && commit.leader_id <= rpc.vote.leader_id);
    }
}

fn three_members() -> Membership {
    let nodes: BTreeMap<u64, NodeInfo> = (1..=3).map(|i| (i, NodeInfo::default())).collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("a valid membership")
}

/// Bytes as a handshake frame: a `Hello` (checked as the listener checks it) and a
/// `HelloReply`.
pub fn hello(data: &[u8]) -> Outcome {
    let mut input = data;
    let hello = block_on(codec::read_hello::<_, Hello>(&mut input));
    if let Ok(hello) = &hello {
        let frame = codec::encode_frame(hello).expect("a decoded hello encodes");
        assert!(frame.len() - 4 <= limits::PEER_HELLO_BYTES_MAX);
        let back: Hello = block_on(codec::read_hello(&mut frame.as_slice())).expect("round trip");
        assert_eq!(&back, hello);
        // A listener that is the node and cluster the hello names refuses it only for its
        // protocol version.
        let identity = server::Identity {
            me: hello.to,
            cluster_id: hello.cluster_id.clone(),
        };
        assert_eq!(
            server::check_hello(hello, &identity).is_ok(),
            hello.protocol_version == codec::PROTOCOL_VERSION
        );
        let other = server::Identity {
            me: 2,
            cluster_id: "metrokv".into(),
        };
        let _ = server::check_hello(hello, &other);
    }
    let mut input = data;
    let reply = block_on(codec::read_hello::<_, HelloReply>(&mut input));
    if let Ok(reply) = &reply {
        let frame = codec::encode_frame(reply).expect("a decoded reply encodes");
        let back: HelloReply =
            block_on(codec::read_hello(&mut frame.as_slice())).expect("round trip");
        assert_eq!(&back, reply);
    }
    Outcome::accepted_if(hello.is_ok() || reply.is_ok())
}

// ---------------------------------------------------------------------------------------------
// HTTP bodies.

/// Bytes as a `POST /v1/txn` body, parsed as the handler parses it.
pub fn txn_body(data: &[u8]) -> Outcome {
    let parsed = api::parse_json::<metrokv_api::txn::TxnRequest>(data).and_then(txn::parse);
    let Ok(txn) = parsed else {
        return Outcome::Refused;
    };
    assert_txn_within_limits(&txn);
    assert_proposable(Command::Txn(txn));
    Outcome::Accepted
}

fn assert_txn_within_limits(txn: &Txn) {
    assert!(txn.compare.len() <= limits::TXN_COMPARES_MAX);
    assert!(txn.success.len() <= limits::TXN_OPS_MAX);
    assert!(txn.failure.len() <= limits::TXN_OPS_MAX);
    let key_ok = |k: &str| !k.is_empty() && k.len() <= limits::KEY_BYTES_MAX;
    let mut value_bytes = 0;
    for c in &txn.compare {
        assert!(key_ok(&c.key), "compare key of {} bytes", c.key.len());
        match &c.target {
            CompareTarget::Value(v) => {
                assert!(v.len() <= limits::VALUE_BYTES_MAX);
                value_bytes += v.len();
            }
            CompareTarget::Exists(_) => assert!(matches!(c.op, CompareOp::Eq | CompareOp::Ne)),
            CompareTarget::Version(_) => {}
        }
    }
    for branch in [&txn.success, &txn.failure] {
        let mut written = BTreeSet::new();
        for op in branch {
            assert!(key_ok(op.key()), "op key of {} bytes", op.key().len());
            if let TxnOp::Put { value, .. } = op {
                assert!(value.len() <= limits::VALUE_BYTES_MAX);
                value_bytes += value.len();
            }
            if op.is_write() {
                assert!(written.insert(op.key()), "a key written twice in a branch");
            }
        }
    }
    assert!(
        value_bytes <= limits::TXN_VALUE_BYTES_MAX,
        "{value_bytes} bytes of values in an accepted txn"
    );
}

/// A command the API accepted fits the largest log entry (with the longest idempotency key),
/// and the state machine never finds it malformed.
fn assert_proposable(command: Command) {
    let request = Request {
        leader_time_ms: 1,
        idempotency_key: Some("i".repeat(limits::IDEMPOTENCY_KEY_BYTES_MAX)),
        command,
    };
    let encoded = postcard::to_allocvec(&request).expect("a request encodes");
    assert!(
        encoded.len() <= limits::REQUEST_ENCODED_BYTES_MAX,
        "an accepted request encodes to {} bytes",
        encoded.len()
    );
    // An empty state, and one where every account the command names exists with money.
    let mut empty = MemState::default();
    let mut funded = MemState::default();
    if let Command::Transfer(t) = &request.command {
        for (id, balance) in [(&t.from, t.amount), (&t.to, 0)] {
            let record = AccountRecord {
                balance,
                version: 1,
            };
            funded.accounts.insert(id.clone(), record);
        }
    }
    for state in [&mut empty, &mut funded] {
        let response = state.apply(&request).response;
        assert!(
            !matches!(response, Err(Rejection::Invalid(_))),
            "the API accepted what the state machine finds malformed: {response:?}"
        );
    }
}

/// Bytes as a `POST /v1/transfers` body.
pub fn transfer_body(data: &[u8]) -> Outcome {
    let parsed = api::parse_json::<metrokv_api::ledger::TransferRequest>(data)
        .and_then(accounts::transfer_command);
    let Ok(command) = parsed else {
        return Outcome::Refused;
    };
    let Command::Transfer(t) = &command else {
        panic!("a transfer body became {command:?}");
    };
    for id in [&t.id, &t.from, &t.to] {
        assert_id_valid(id);
    }
    assert!(t.amount > 0 && t.from != t.to);
    assert_proposable(command);
    Outcome::Accepted
}

/// Bytes as a `POST /v1/accounts` body.
pub fn account_body(data: &[u8]) -> Outcome {
    let parsed = api::parse_json::<metrokv_api::ledger::CreateAccount>(data)
        .and_then(accounts::create_command);
    let Ok(command) = parsed else {
        return Outcome::Refused;
    };
    let Command::CreateAccount { id, balance } = &command else {
        panic!("an account body became {command:?}");
    };
    assert_id_valid(id);
    let (id, balance) = (id.clone(), *balance);
    let mut state = MemState::default();
    let response = state
        .apply(&Request {
            leader_time_ms: 1,
            idempotency_key: None,
            command: command.clone(),
        })
        .response;
    assert!(
        matches!(&response, Ok(state_machine::Success::AccountCreated { id: got, balance: b, .. }) if *got == id && *b == balance),
        "{response:?}"
    );
    assert_eq!(state.total(), u128::from(balance));
    assert_proposable(command);
    Outcome::Accepted
}

/// The id rule of API.md, restated: 1..=ID_BYTES_MAX characters of `A-Z a-z 0-9 . _ : -`.
fn assert_id_valid(id: &str) {
    assert!(
        !id.is_empty() && id.len() <= limits::ID_BYTES_MAX,
        "id {id:?}"
    );
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)),
        "id {id:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshot files.

/// Bytes as a snapshot file, read and verified from memory as `storage::snapshot::verify`
/// reads a file; every record's key and value go through the parsers storage reads them with.
pub fn snapshot_file(data: &[u8]) -> Outcome {
    let Some(meta) = read_snapshot(data) else {
        return Outcome::Refused;
    };
    // The checks a received snapshot's meta meets, under the vote of the leader it names.
    if let Some(last) = &meta.last_log_id {
        let vote = Vote::new_committed(last.leader_id.term, last.leader_id.node_id);
        let (from, me) = sender_and_receiver(&vote);
        let _ = validate::snapshot(&vote, &meta, from, me, None);
    }
    Outcome::Accepted
}

/// The meta of a snapshot held in `data` if it verifies (every record and the checksum).
fn read_snapshot(data: &[u8]) -> Option<SnapshotMeta> {
    let (meta, mut reader) = SnapshotReader::new(data).ok()?;
    // Every record consumes at least its two length words, so this ends with the input.
    loop {
        match reader.next_record() {
            Ok(Some((key, value))) => {
                assert!(key.len() + value.len() + 8 <= limits::SNAPSHOT_RECORD_BYTES_MAX);
                assert!(
                    key.len() + value.len() <= data.len(),
                    "a record larger than the file"
                );
                parse_record(&key, &value);
            }
            Ok(None) => return Some(meta),
            Err(_) => return None,
        }
    }
}

/// Decode one `sm` record the way storage reads it back after an install (errors, not panics).
fn parse_record(key: &[u8], value: &[u8]) {
    if key == keys::SM_META {
        let _ = storage::decode::<SmMeta>(value, "meta");
    }
    if key == keys::SM_APPLIED {
        let _ = storage::decode::<Option<LogId>>(value, "applied");
    }
    if key == keys::SM_MEMBERSHIP {
        let _ = storage::decode::<StoredMembership>(value, "membership");
    }
    if keys::kv_user_key(key).is_some() {
        let _ = storage::decode::<KvRecord>(value, "kv record");
    }
    if keys::account_id(key).is_some() {
        let _ = storage::decode::<AccountRecord>(value, "account");
    }
    if keys::member_storage_node(key).is_some() {
        let _ = storage::decode::<u64>(value, "member storage id");
    }
    if matches!(key.first(), Some(b'i' | b't')) {
        let _ = storage::decode::<DedupRecord>(value, "dedup record");
    }
    if let Some((_, dedup_key)) = keys::parse_expiry(key) {
        assert_eq!(
            keys::parse_expiry(&keys::expiry(0, &dedup_key)).map(|p| p.1),
            Some(dedup_key)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is accepted by its target: the seeds are what the corpus starts from, and a
    /// target that refuses them reaches nothing past its first check.
    #[test]
    fn every_seed_is_accepted() {
        let scratch = tempfile::tempdir().unwrap();
        for (name, target) in TARGETS {
            let seeds = seeds(name, scratch.path()).unwrap();
            assert!(!seeds.is_empty(), "{name} has no seeds");
            for (file, bytes) in seeds {
                assert_eq!(target(&bytes), Outcome::Accepted, "{name}/{file}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for (name, target) in TARGETS {
            for bytes in [
                &b""[..],
                b"\xff\xff\xff\xff",
                b"{\"",
                b"MKVSNAP1\x00\x00\x00\x01",
            ] {
                if *name != "state_machine" {
                    assert_eq!(target(bytes), Outcome::Refused, "{name} on {bytes:?}");
                }
            }
        }
    }
}
