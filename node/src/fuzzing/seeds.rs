//! The seeds of the kept corpus (`fuzz/corpus/<target>/ok-*`): meaningful valid inputs built
//! from the node's own types and writers (encoded real frames and hellos, the API's example
//! bodies, a snapshot file written by `SnapshotWriter` from real state machine records, command
//! sequences in the `state_machine` target's format). `metrokv-fuzz seed` writes them; each
//! must be accepted by its target (tested here and by `node/tests/fuzz_corpus.rs`).

use super::*;

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
