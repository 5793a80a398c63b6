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
//! [`seeds`] writes the meaningful valid inputs the corpus starts from.
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
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;
use crate::transport::server;
use crate::transport::validate;

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
        PeerRequest::ReadIndex | PeerRequest::Status => {}
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
    let parsed = api::parse_json::<txn::TxnJson>(data).and_then(txn::parse);
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
    let parsed =
        api::parse_json::<accounts::TransferJson>(data).and_then(accounts::transfer_command);
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
    let parsed =
        api::parse_json::<accounts::CreateAccount>(data).and_then(accounts::create_command);
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

// ---------------------------------------------------------------------------------------------
// The state machine.

/// Bytes as a sequence of requests over a few keys, accounts, transfer ids and idempotency keys,
/// with leader stamps that mostly move forward and sometimes jump or go back, applied one by
/// one to a [`MemState`] with the ledger invariants checked after each step (see
/// [`check_step`]). The decoded commands stay within the API's limits, as every command the
/// API proposes does; the state machine does not check sizes itself.
pub fn state_machine(data: &[u8]) -> Outcome {
    let mut decoder = Decoder::new(data);
    let mut state = MemState::default();
    let mut ledger = Ledger::default();
    let mut applied = 0;
    while let Some(requests) = decoder.next_requests() {
        for request in requests {
            check_step(&mut state, &mut ledger, &request);
            applied += 1;
        }
    }
    Outcome::accepted_if(applied > 0)
}

/// What the checks remember across steps: the first answer of every transfer id.
#[derive(Default)]
struct Ledger {
    transfers: BTreeMap<String, (Transfer, Response)>,
}

/// What the checks need to know of the state before a step.
struct Before {
    meta: SmMeta,
    total: u128,
    /// The live record of the request's idempotency key, if any.
    idem_record: Option<DedupRecord>,
    /// For an account creation: whether the account existed.
    account_existed: bool,
    /// For a read-only txn without a key: what `query` answers.
    queried: Option<Response>,
    /// When each dedup record was recorded.
    recorded_ms: BTreeMap<DedupKey, u64>,
}

impl Before {
    fn observe(state: &MemState, request: &Request) -> Self {
        let idem_record = request
            .idempotency_key
            .as_ref()
            .and_then(|k| state.dedup.get(&DedupKey::Idempotency(k.clone())).cloned());
        let queried = match &request.command {
            Command::Txn(t) if t.is_read_only() && request.idempotency_key.is_none() => {
                let Ok(response) = state_machine::query(state, t);
                Some(response)
            }
            _ => None,
        };
        Self {
            meta: state.meta,
            total: state.total(),
            idem_record,
            account_existed: matches!(&request.command,
                Command::CreateAccount { id, .. } if state.accounts.contains_key(id)),
            queried,
            recorded_ms: state
                .dedup
                .iter()
                .map(|(k, r)| (k.clone(), r.recorded_ms))
                .collect(),
        }
    }
}

/// Apply one request and check the invariants of `state_machine`'s module doc on what changed.
fn check_step(state: &mut MemState, ledger: &mut Ledger, request: &Request) {
    let before = Before::observe(state, request);
    let applied = state.apply(request);
    let data_changed = applied.changes.iter().any(|c| {
        matches!(
            c,
            Change::PutKv { .. } | Change::DeleteKv { .. } | Change::PutAccount { .. }
        )
    });
    check_revision_and_clock(&before, state.meta, data_changed);
    if let Some(q) = &before.queried {
        assert_eq!(
            q, &applied.response,
            "query and apply disagree on a read-only txn"
        );
    }
    check_money(&before, state, request);
    check_transfer_once(ledger, request, &applied.response, data_changed);
    check_idempotency(
        &before,
        request,
        &applied,
        data_changed,
        state.meta.clock_ms,
    );
    check_sizes(request, applied, state.meta.revision);
}

/// The revision grows by at most one, and exactly when data changed; the replicated clock never
/// goes back, and once it started moves by at most a bounded step.
fn check_revision_and_clock(before: &Before, after: SmMeta, data_changed: bool) {
    assert!(
        after.revision == before.meta.revision + u64::from(data_changed),
        "revision {} -> {} with data changed: {data_changed}",
        before.meta.revision,
        after.revision
    );
    assert!(
        after.clock_ms >= before.meta.clock_ms,
        "the clock went back"
    );
    if before.meta.clock_ms != 0 {
        assert!(after.clock_ms - before.meta.clock_ms <= limits::CLOCK_STEP_MS_MAX);
    }
}

/// Only a created account adds to the sum of balances, by its balance; nothing else changes it.
fn check_money(before: &Before, after: &MemState, request: &Request) {
    let created = match &request.command {
        Command::CreateAccount { id, balance }
            if !before.account_existed && after.accounts.contains_key(id) =>
        {
            u128::from(*balance)
        }
        _ => 0,
    };
    assert_eq!(
        after.total(),
        before.total + created,
        "the sum of balances changed by more than the accounts created"
    );
}

/// A transfer id applies once, ever; a repeat answers the first answer, or a conflict when its
/// body differs.
fn check_transfer_once(
    ledger: &mut Ledger,
    request: &Request,
    response: &Response,
    data_changed: bool,
) {
    let Command::Transfer(t) = &request.command else {
        return;
    };
    match ledger.transfers.get(&t.id) {
        Some((first, first_response)) => {
            assert!(!data_changed, "transfer {} applied twice", t.id);
            if first == t {
                assert_eq!(
                    response, first_response,
                    "a repeated transfer answered anew"
                );
            } else {
                assert!(matches!(
                    response,
                    Err(Rejection::IdempotencyConflict { .. })
                ));
            }
        }
        None => {
            ledger
                .transfers
                .insert(t.id.clone(), (t.clone(), response.clone()));
        }
    }
}

/// An idempotency key with a live record answers from it and changes nothing; a dedup record is
/// removed only once it is older than the retention period, and only an expiring one.
fn check_idempotency(
    before: &Before,
    request: &Request,
    applied: &state_machine::Applied,
    data_changed: bool,
    clock_ms: u64,
) {
    let deleted: BTreeSet<&DedupKey> = applied
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::DeleteDedup { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    for key in &deleted {
        assert!(key.expires(), "a transfer outcome was removed");
        let recorded_ms = before.recorded_ms[*key];
        assert!(
            clock_ms
                .checked_sub(recorded_ms)
                .is_some_and(|age| age >= limits::DEDUP_RETENTION_MS),
            "a dedup record recorded at {recorded_ms} ms expired at {clock_ms} ms"
        );
    }
    let keyed = !matches!(
        request.command,
        Command::Transfer(_) | Command::RecordStorage { .. }
    );
    let (Some(first), Some(key), true) = (&before.idem_record, &request.idempotency_key, keyed)
    else {
        return;
    };
    if deleted.contains(&DedupKey::Idempotency(key.clone())) {
        return;
    }
    assert!(!data_changed, "idempotency key {key} applied twice");
    if first.fingerprint == state_machine::fingerprint(&request.command) {
        assert_eq!(applied.response, first.response, "a retry answered anew");
    } else {
        assert!(matches!(
            applied.response,
            Err(Rejection::IdempotencyConflict { .. })
        ));
    }
}

/// The request fits the largest log entry; its answer fits a peer frame on its way back from
/// the leader; every version written is the new revision; every record fits a snapshot record.
fn check_sizes(request: &Request, applied: state_machine::Applied, revision: u64) {
    let encoded_request = postcard::to_allocvec(request).expect("a request encodes");
    assert!(encoded_request.len() <= limits::REQUEST_ENCODED_BYTES_MAX);
    let answer = postcard::to_allocvec(&applied.response).expect("an answer encodes");
    assert!(
        answer.len() <= limits::ANSWER_ENCODED_BYTES_MAX,
        "an answer of {} bytes",
        answer.len()
    );
    for change in applied.changes {
        if let Change::PutKv { record, .. } = &change {
            assert_eq!(record.version, revision);
        }
        for op in storage::state::ops(change) {
            if let storage::state::Op::Put(key, value) = op {
                let size = key.len() + value.len() + 8;
                assert!(
                    size <= limits::SNAPSHOT_RECORD_BYTES_MAX,
                    "a record of {size} bytes"
                );
            }
        }
    }
}

/// Turns bytes into requests. Each request takes an opcode byte, a stamp byte, an
/// idempotency-key byte and its fields; running out of bytes ends the sequence. Values are
/// small or of the largest size, and at most [`BIG_VALUES_MAX`] large ones per input, so a run
/// stays fast while the record and answer budgets are still reached.
struct Decoder<'a> {
    data: &'a [u8],
    /// The last leader stamp handed out.
    stamp_ms: u64,
    big_values: usize,
    requests: usize,
}

/// Most values of (nearly) [`limits::VALUE_BYTES_MAX`] one input decodes to: enough for gets of
/// five of them to pass the txn answer budget, few enough to keep a run in milliseconds.
const BIG_VALUES_MAX: usize = 5;
/// Most requests one input decodes to (a tick makes many); a day of ticks and then some.
const REQUESTS_MAX: usize = 1024;
/// Most requests one tick makes.
const TICK_REQUESTS_MAX: u8 = 160;

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            stamp_ms: 1_000_000,
            big_values: 0,
            requests: 0,
        }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.byte()?);
        }
        Some(v)
    }

    /// The next requests (one, or a tick's many), or `None` at the end of the input.
    fn next_requests(&mut self) -> Option<Vec<Request>> {
        if self.requests >= REQUESTS_MAX {
            return None;
        }
        let op = self.byte()?;
        let leader_time_ms = self.stamp()?;
        let idempotency_key = self.idempotency_key()?;
        let command = match op % 7 {
            0 => Command::Put {
                key: self.key()?,
                value: self.value(&mut 0)?,
                condition: self.condition()?,
            },
            1 => Command::Delete {
                key: self.key()?,
                condition: self.condition()?,
            },
            2 => Command::Txn(self.txn()?),
            3 => Command::CreateAccount {
                id: self.account()?,
                balance: self.amount()?,
            },
            4 => Command::Transfer(Transfer {
                id: self.transfer_id()?,
                from: self.account()?,
                to: self.account()?,
                amount: self.amount()?,
            }),
            5 => Command::RecordStorage {
                node: u64::from(self.byte()? % 4),
                storage_id: u64::from(self.byte()? % 3),
            },
            _ => return self.tick(),
        };
        self.requests += 1;
        Some(vec![Request {
            leader_time_ms,
            idempotency_key,
            command,
        }])
    }

    /// Many entries, each a step of the largest size forward in time: a day passes in a few
    /// bytes, so the fuzzer reaches dedup expiry.
    fn tick(&mut self) -> Option<Vec<Request>> {
        let n = usize::from(self.byte()? % TICK_REQUESTS_MAX + 1).min(REQUESTS_MAX - self.requests);
        self.requests += n;
        let out = (0..n)
            .map(|_| {
                self.stamp_ms = self.stamp_ms.saturating_add(limits::CLOCK_STEP_MS_MAX);
                Request {
                    leader_time_ms: self.stamp_ms,
                    idempotency_key: None,
                    command: Command::RecordStorage {
                        node: 9,
                        storage_id: 9,
                    },
                }
            })
            .collect();
        Some(out)
    }

    fn stamp(&mut self) -> Option<u64> {
        let b = self.byte()?;
        let s = self.stamp_ms;
        self.stamp_ms = match b {
            0..=199 => s.saturating_add(u64::from(b)),
            200..=219 => s.saturating_sub(u64::from(b - 199) * 60_000),
            220..=239 => s.saturating_add(u64::from(b - 219) * limits::CLOCK_STEP_MS_MAX),
            240..=249 => s.saturating_add(limits::DEDUP_RETENTION_MS),
            250 => 0,
            251 => u64::MAX,
            _ => self.u64()?,
        };
        Some(self.stamp_ms)
    }

    fn idempotency_key(&mut self) -> Option<Option<String>> {
        Some(match self.byte()? % 8 {
            0..=3 => None,
            7 => Some("i".repeat(limits::IDEMPOTENCY_KEY_BYTES_MAX)),
            n => Some(format!("i{n}")),
        })
    }

    fn key(&mut self) -> Option<String> {
        Some(match self.byte()? % 5 {
            0 => "a".into(),
            1 => "b".into(),
            2 => "c".into(),
            n => (if n == 3 { "x" } else { "y" }).repeat(limits::KEY_BYTES_MAX),
        })
    }

    /// A value; `txn_bytes` counts the values of one txn against its budget, and a large value
    /// that would pass the budget (or the per-input cap) becomes a small one.
    fn value(&mut self, txn_bytes: &mut usize) -> Option<Vec<u8>> {
        let b = self.byte()?;
        // Large values are rare: each costs milliseconds (copies, encodings, fingerprints).
        let len = match b {
            0..=31 => 0,
            32..=191 => 1,
            192..=249 => usize::from(self.byte()?),
            250..=252 => limits::VALUE_BYTES_MAX,
            _ => limits::VALUE_BYTES_MAX - usize::from(self.byte()?) * 1024,
        };
        let big = len > 255;
        let len = if big
            && (self.big_values >= BIG_VALUES_MAX || *txn_bytes + len > limits::TXN_VALUE_BYTES_MAX)
        {
            1
        } else {
            len
        };
        if len > 255 {
            self.big_values += 1;
        }
        *txn_bytes += len;
        Some(vec![b'a' + b % 3; len])
    }

    fn condition(&mut self) -> Option<Condition> {
        Some(match self.byte()? {
            0..=127 => Condition::Always,
            128..=159 => Condition::IfAbsent,
            b => Condition::IfVersion(u64::from(b % 16)),
        })
    }

    fn txn(&mut self) -> Option<Txn> {
        let mut txn_bytes = 0;
        let shape = self.byte()?;
        let mut compare = Vec::new();
        for _ in 0..shape % 4 {
            let key = self.key()?;
            let op = [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Gt]
                [usize::from(self.byte()? % 4)];
            let target = match self.byte()? % 3 {
                0 => CompareTarget::Version(u64::from(self.byte()? % 8)),
                1 => CompareTarget::Value(self.value(&mut txn_bytes)?),
                _ => CompareTarget::Exists(self.byte()? % 2 == 0),
            };
            compare.push(Compare { key, op, target });
        }
        let mut branch = |n: u8, d: &mut Self| -> Option<Vec<TxnOp>> {
            let mut ops = Vec::new();
            for _ in 0..n {
                let key = d.key()?;
                ops.push(match d.byte()? % 3 {
                    0 => TxnOp::Put {
                        key,
                        value: d.value(&mut txn_bytes)?,
                    },
                    1 => TxnOp::Delete { key },
                    _ => TxnOp::Get { key },
                });
            }
            Some(ops)
        };
        let success = branch(shape / 4 % 8, self)?;
        let failure = branch(shape / 32, self)?;
        Some(Txn {
            compare,
            success,
            failure,
        })
    }

    fn account(&mut self) -> Option<String> {
        Some(match self.byte()? % 5 {
            0 => "x".into(),
            1 => "y".into(),
            2 => "z".into(),
            3 => "w".into(),
            _ => "a".repeat(limits::ID_BYTES_MAX),
        })
    }

    fn transfer_id(&mut self) -> Option<String> {
        Some(match self.byte()? % 9 {
            8 => "t".repeat(limits::ID_BYTES_MAX),
            n => format!("t{n}"),
        })
    }

    fn amount(&mut self) -> Option<u64> {
        let b = self.byte()?;
        Some(match b % 6 {
            0 => 0,
            1 | 2 => u64::from(b / 6),
            3 => u64::MAX,
            4 => u64::MAX / 2 + 1,
            _ => self.u64()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

/// Meaningful valid inputs for `target`, by file name (`ok-*`: each must be accepted).
/// `scratch` is an empty directory for the snapshot file the writer needs.
pub fn seeds(target: &str, scratch: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let named = |items: Vec<(&str, Vec<u8>)>| {
        items
            .into_iter()
            .map(|(n, b)| (format!("ok-{n}"), b))
            .collect()
    };
    Ok(match target {
        "peer_frame" => named(peer_frame_seeds(scratch)?),
        "hello" => named(hello_seeds()),
        "txn_body" => named(txn_seeds()),
        "transfer_body" => {
            named(vec![
            ("readme", br#"{"id":"t-1","from":"alice","to":"bob","amount":5000}"#.to_vec()),
            (
                "longest-ids",
                format!(
                    r#"{{"id":"{}","from":"A.b_c:d-{}","to":"bob","amount":18446744073709551615}}"#,
                    "t".repeat(limits::ID_BYTES_MAX),
                    "e".repeat(limits::ID_BYTES_MAX - 8)
                )
                .into_bytes(),
            ),
        ])
        }
        "account_body" => named(vec![
            ("alice", br#"{"id":"alice","balance":10000}"#.to_vec()),
            ("bob", br#"{"id": "bob", "balance": 0}"#.to_vec()),
            (
                "max",
                br#"{"balance":18446744073709551615,"id":"M.a_x:1-2"}"#.to_vec(),
            ),
        ]),
        "snapshot_file" => named(vec![
            (
                "empty",
                snapshot_bytes(scratch, &SnapshotMeta::default(), &[])?,
            ),
            ("ledger", ledger_snapshot(scratch)?),
        ]),
        "state_machine" => named(state_machine_seeds()),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no target {other:?}"),
            ))
        }
    })
}

fn lid(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<raft::TypeConfig>(term, node, index)
}

fn frame<T: Serialize>(id: u64, body: T) -> Vec<u8> {
    codec::encode_frame(&Envelope { id, body }).expect("a seed frame encodes")
}

fn put_request(key: &str, value: &[u8]) -> Request {
    Request {
        leader_time_ms: 1_700_000_000_000,
        idempotency_key: Some("retry-1".into()),
        command: Command::Put {
            key: key.into(),
            value: value.to_vec(),
            condition: Condition::Always,
        },
    }
}

fn peer_frame_seeds(scratch: &Path) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
    let vote = Vote::new_committed(5, 1);
    let entry = |log_id, payload| raft::Entry { log_id, payload };
    let append = AppendEntriesRequest {
        vote,
        prev_log_id: Some(lid(4, 1, 9)),
        entries: vec![
            entry(
                lid(4, 1, 10),
                EntryPayload::Normal(put_request("greeting", b"hello")),
            ),
            entry(lid(5, 1, 11), EntryPayload::Blank),
            entry(lid(5, 1, 12), EntryPayload::Membership(three_members())),
        ],
        leader_commit: Some(lid(4, 1, 10)),
    };
    let heartbeat = AppendEntriesRequest {
        vote,
        prev_log_id: Some(lid(5, 1, 12)),
        entries: vec![],
        leader_commit: Some(lid(5, 1, 12)),
    };
    let vote_request = raft::VoteRequest {
        vote: Vote::new(6, 3),
        last_log_id: Some(lid(5, 1, 12)),
        leadership_transfer: false,
    };
    let chunk = codec::SnapshotChunk {
        vote,
        transfer_id: 7,
        offset: 0,
        data: ledger_snapshot(scratch)?,
        done: true,
    };
    let transfer = Command::Transfer(Transfer {
        id: "t-1".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: 5000,
    });
    let status = codec::NodeStatus {
        id: 2,
        role: "Follower".into(),
        term: 5,
        leader: Some(1),
        commit_index: 12,
        applied_index: 12,
        initialized: true,
    };
    let answers = [
        frame(
            1,
            PeerResponse::AppendEntries(raft::AppendEntriesResponse::Success),
        ),
        frame(
            2,
            PeerResponse::Vote(raft::VoteResponse::new(
                Vote::new(6, 3),
                Some(lid(5, 1, 12)),
                true,
            )),
        ),
        frame(
            3,
            PeerResponse::ClientWrite(Ok(Ok(state_machine::Success::Put {
                version: 4,
                revision: 4,
            }))),
        ),
        frame(
            4,
            PeerResponse::ReadIndex(Err(codec::ForwardError::NotLeader(Some(1)))),
        ),
        frame(5, PeerResponse::Status(status)),
        frame(
            6,
            PeerResponse::Failed(codec::Failure::Invalid("entries do not follow".into())),
        ),
    ]
    .concat();
    Ok(vec![
        (
            "append-entries",
            frame(1, PeerRequest::AppendEntries(append)),
        ),
        ("heartbeat", frame(2, PeerRequest::AppendEntries(heartbeat))),
        ("vote", frame(3, PeerRequest::Vote(vote_request.clone()))),
        ("pre-vote", frame(4, PeerRequest::PreVote(vote_request))),
        (
            "transfer-leader",
            frame(
                5,
                PeerRequest::TransferLeader(raft::TransferLeaderRequest::new(
                    vote,
                    2,
                    Some(lid(5, 1, 12)),
                )),
            ),
        ),
        (
            "snapshot-chunk",
            frame(6, PeerRequest::SnapshotChunk(chunk)),
        ),
        (
            "client-write-put",
            frame(
                7,
                PeerRequest::ClientWrite {
                    command: put_request("k", b"v").command,
                    idempotency_key: Some("idem-1".into()),
                },
            ),
        ),
        (
            "client-write-transfer",
            frame(
                8,
                PeerRequest::ClientWrite {
                    command: transfer,
                    idempotency_key: None,
                },
            ),
        ),
        (
            "read-index-then-status",
            [
                frame(9, PeerRequest::ReadIndex),
                frame(10, PeerRequest::Status),
            ]
            .concat(),
        ),
        ("answers", answers),
    ])
}

fn hello_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = |channel| Hello {
        protocol_version: codec::PROTOCOL_VERSION,
        cluster_id: "payments".into(),
        from: 1,
        to: 2,
        channel,
        storage_id: 0x1234_5678_9abc_def0,
    };
    vec![
        (
            "hello-replication",
            bare_frame(&hello(codec::Channel::Replication)),
        ),
        (
            "hello-heartbeat",
            bare_frame(&hello(codec::Channel::Heartbeat)),
        ),
        (
            "hello-snapshot",
            bare_frame(&hello(codec::Channel::Snapshot)),
        ),
        ("hello-forward", bare_frame(&hello(codec::Channel::Forward))),
        (
            "reply-accepted",
            bare_frame(&HelloReply::Accepted {
                storage_id: 0x0fed_cba9_8765_4321,
            }),
        ),
        (
            "reply-refused-cluster",
            bare_frame(&HelloReply::Refused(codec::Refusal::Cluster {
                got: "other".into(),
                want: "payments".into(),
            })),
        ),
        (
            "reply-refused-storage",
            bare_frame(&HelloReply::Refused(codec::Refusal::StorageChanged {
                node: 3,
                recorded: 1,
                presented: 2,
            })),
        ),
    ]
}

fn bare_frame<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode_frame(value).expect("a seed frame encodes")
}

fn txn_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "api-md",
            br#"{"compare": [{"key": "a", "target": "version", "op": "==", "version": 3},
                {"key": "b", "target": "value", "op": "==", "value": "S"},
                {"key": "c", "target": "exists", "op": "==", "exists": false}],
 "success": [{"put": {"key": "a", "value": "S"}}, {"delete": {"key": "b"}}, {"get": {"key": "c"}}],
 "failure": [{"get": {"key": "a"}}]}"#
                .to_vec(),
        ),
        (
            "readme",
            br#"{
  "compare": [{"key": "greeting", "target": "value", "op": "==", "value": "hello again"}],
  "success": [{"put": {"key": "greeting", "value": "bye"}}, {"get": {"key": "greeting"}}],
  "failure": [{"get": {"key": "greeting"}}]}"#
                .to_vec(),
        ),
        (
            "base64-and-orderings",
            br#"{"compare":[{"key":"k","target":"value","op":"<","value_base64":"AAE="},{"key":"k","target":"version","op":">","version":0},{"key":"j","target":"exists","op":"!=","exists":true}],"success":[{"put":{"key":"k","value_base64":"/wA="}}],"failure":[]}"#
                .to_vec(),
        ),
        ("empty", b"{}".to_vec()),
        (
            "read-only",
            br#"{"success":[{"get":{"key":"a"}},{"get":{"key":"a"}}]}"#.to_vec(),
        ),
    ]
}

/// A snapshot file as the writer makes it, read back into memory.
fn snapshot_bytes(
    scratch: &Path,
    meta: &SnapshotMeta,
    records: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    let mut w = SnapshotWriter::create(scratch, meta, 0)?;
    for (k, v) in records {
        w.record(k, v)?;
    }
    let path = w.finish()?;
    let bytes = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    Ok(bytes)
}

/// A real small snapshot: the records of a few accounts, a transfer, a key and an idempotent
/// put, in the layout storage writes them, with a three-member membership.
fn ledger_snapshot(scratch: &Path) -> io::Result<Vec<u8>> {
    let mut state = MemState::default();
    let mut records = BTreeMap::new();
    let commands = [
        Command::CreateAccount {
            id: "alice".into(),
            balance: 10_000,
        },
        Command::CreateAccount {
            id: "bob".into(),
            balance: 0,
        },
        Command::Transfer(Transfer {
            id: "t-1".into(),
            from: "alice".into(),
            to: "bob".into(),
            amount: 5000,
        }),
        put_request("greeting", b"hello").command,
    ];
    for (i, command) in commands.into_iter().enumerate() {
        let request = Request {
            leader_time_ms: 1_700_000_000_000 + i as u64,
            idempotency_key: Some(format!("idem-{i}")),
            command,
        };
        for op in state
            .apply(&request)
            .changes
            .into_iter()
            .flat_map(storage::state::ops)
        {
            match op {
                storage::state::Op::Put(k, v) => records.insert(k, v),
                storage::state::Op::Delete(k) => records.remove(&k),
            };
        }
    }
    let last = lid(2, 1, 40);
    let membership = StoredMembership::new(Some(lid(1, 1, 1)), three_members());
    records.insert(keys::SM_APPLIED.to_vec(), storage::encode(&Some(last)));
    records.insert(keys::SM_MEMBERSHIP.to_vec(), storage::encode(&membership));
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: membership,
    };
    let records: Vec<_> = records.into_iter().collect();
    snapshot_bytes(scratch, &meta, &records)
}

/// Command sequences in the [`Decoder`]'s format. Opcodes: 0 put, 1 delete, 2 txn, 3 create
/// account, 4 transfer, 5 record storage, 6 tick. Each request: opcode, stamp (0..=199: that many
/// ms forward, 200..: back), idempotency key (0: none, 4..=6: i4..i6, 7: the longest), then its
/// fields (an amount byte `6 * n + 1` is `n`; a value byte 0..=31 is empty, 32..=191 one byte,
/// 250 the largest value).
#[rustfmt::skip]
fn state_machine_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ledger", vec![
            3, 1, 0, 0, 6 * 16 + 1,       // account x with 16
            3, 1, 0, 1, 1,                // account y with 0
            4, 1, 0, 0, 0, 1, 6 * 5 + 1,  // t0: x -> y, 5
            4, 1, 0, 0, 0, 1, 6 * 5 + 1,  // t0 again: the same answer
            4, 1, 0, 1, 0, 1, 6 * 30 + 1, // t1: x -> y, 30: insufficient funds
            4, 1, 0, 2, 1, 0, 3,          // t2: y -> x, u64::MAX
            3, 1, 0, 2, 3,                // account z with u64::MAX
            4, 1, 0, 3, 2, 0, 6 * 9 + 1,  // t3: z -> x, 9
        ]),
        ("kv-idempotent", vec![
            0, 1, 4, 0, 40, 0,            // put a = "b" under key i4
            0, 1, 4, 0, 40, 0,            // the same, retried
            0, 1, 4, 1, 40, 0,            // another put under i4: a conflict
            1, 1, 0, 0, 200,              // delete a if at version 8 (it is not)
            0, 1, 7, 3, 250, 130,         // the largest value under the longest key, if absent
            2, 1, 5, 4 * 2 + 1, 3, 0, 1, 40, 3, 2, 4, 2, // txn: a value compare, two gets
        ]),
        ("expiry", vec![
            0, 1, 6, 0, 40, 0,            // put a under key i6
            6, 1, 0, 150,                 // 151 entries 10 min apart: more than a day
            0, 1, 6, 0, 40, 0,            // the same put applies again
            5, 1, 0, 2, 1,                // record storage 1 for node 2
            5, 200, 0, 2, 2,              // a conflicting one, the stamp a minute back
        ]),
    ]
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

    /// The checks are not vacuous: a broken invariant makes them panic.
    #[test]
    fn the_checks_catch_a_broken_invariant() {
        // A ledger whose first answer for a transfer is forged: the repeat then differs, and the
        // check must say so.
        let mut state = MemState::default();
        let mut ledger = Ledger::default();
        let t = Transfer {
            id: "t".into(),
            from: "x".into(),
            to: "y".into(),
            amount: 1,
        };
        ledger
            .transfers
            .insert("t".into(), (t.clone(), Ok(state_machine::Success::Noop)));
        let request = Request {
            leader_time_ms: 1,
            idempotency_key: None,
            command: Command::Transfer(t),
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_step(&mut state, &mut ledger, &request)
        }));
        assert!(caught.is_err(), "a forged first answer went unnoticed");
    }
}
