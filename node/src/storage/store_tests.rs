//! Storage tests against real RocksDB in temporary directories: openraft's storage suite,
//! reopen-after-drop recovery, snapshot build/install equivalence with the log, and recovery from
//! a snapshot install interrupted by a crash.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use futures::stream;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt as _;
use openraft::RaftSnapshotBuilder as _;
use openraft::StorageError;
use proptest::prelude::*;

use super::*;
use crate::raft::types::Entry;
use crate::raft::types::EntryPayload;
use crate::raft::types::IOFlushed;
use crate::raft::types::LogId;
use crate::raft::types::Membership;
use crate::raft::types::NodeInfo;
use crate::raft::types::RaftLogReader as _;
use crate::raft::types::RaftLogStorage as _;
use crate::raft::types::RaftStateMachine as _;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;
use crate::state_machine::Command;
use crate::state_machine::Condition;
use crate::state_machine::Request;
use crate::state_machine::Transfer;

/// Open storage in `dir` as the node does, for tests that want the two stores.
fn open(dir: &std::path::Path) -> std::io::Result<(LogStore, StateStore)> {
    let storage = super::open(dir, std::sync::Arc::new(crate::clock::Clock::new()))?;
    Ok((storage.log, storage.state))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, state) = open(dir.path()).expect("open storage");
        Ok((dir, log, state))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn entry(term: u64, index: u64, payload: EntryPayload) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn request(command: Command, t: u64) -> EntryPayload {
    EntryPayload::Normal(Request {
        leader_time_ms: t,
        idempotency_key: None,
        command,
    })
}

fn membership() -> EntryPayload {
    let nodes: BTreeMap<u64, NodeInfo> = [(1, NodeInfo::default())].into();
    EntryPayload::Membership(
        Membership::new(vec![BTreeSet::from([1])], nodes).expect("valid membership"),
    )
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("flushed");
}

async fn apply(state: &mut StateStore, entries: Vec<Entry>) {
    let items: Vec<Result<crate::raft::types::EntryResponder, std::io::Error>> =
        entries.into_iter().map(|e| Ok((e, None))).collect();
    state.apply(stream::iter(items)).await.expect("apply");
}

/// Every key and value of the state machine's column family.
fn dump(state: &StateStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = &state.reader().db_for_tests();
    let mut it = db.db.raw_iterator_cf(db.cf(keys::CF_SM));
    it.seek_to_first();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        out.push((k.to_vec(), v.to_vec()));
        it.next();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_storage_recovers_log_vote_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 2);
    {
        let (mut log, mut state) = open(dir.path()).unwrap();
        log.save_vote(&vote).await.unwrap();
        let entries = vec![
            entry(1, 1, membership()),
            entry(
                1,
                2,
                request(
                    Command::Put {
                        key: "k".into(),
                        value: b"v".to_vec(),
                        condition: Condition::Always,
                    },
                    10,
                ),
            ),
            entry(
                1,
                3,
                request(
                    Command::CreateAccount {
                        id: "a".into(),
                        balance: 100,
                    },
                    11,
                ),
            ),
            entry(
                1,
                4,
                request(
                    Command::CreateAccount {
                        id: "b".into(),
                        balance: 0,
                    },
                    12,
                ),
            ),
        ];
        append(&mut log, entries.clone()).await;
        apply(&mut state, entries).await;
        append(&mut log, vec![entry(2, 5, EntryPayload::Blank)]).await;
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
    }
    let (mut log, mut state) = open(dir.path()).unwrap();
    assert_eq!(
        log.get_log_reader().await.read_vote().await.unwrap(),
        Some(vote)
    );
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(2, 5)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    let entries = log
        .get_log_reader()
        .await
        .try_get_log_entries(1..6)
        .await
        .unwrap();
    assert_eq!(entries.len(), 5);
    let (applied, membership) = state.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    let reader = state.reader();
    assert_eq!(reader.kv("k").await.unwrap().unwrap().value, b"v");
    assert_eq!(reader.account("a").await.unwrap().unwrap().balance, 100);
    assert_eq!(reader.meta().await.unwrap().revision, 3);
    // Apply continues where it stopped.
    apply(&mut state, vec![entry(2, 5, EntryPayload::Blank)]).await;
    assert_eq!(state.applied_state().await.unwrap().0, Some(log_id(2, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _state) = open(dir.path()).unwrap();
        append(
            &mut log,
            (1..=10).map(|i| entry(1, i, EntryPayload::Blank)).collect(),
        )
        .await;
        log.purge(log_id(1, 4)).await.unwrap();
        log.truncate_after(Some(log_id(1, 8))).await.unwrap();
    }
    let (mut log, _state) = open(dir.path()).unwrap();
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(st.last_log_id, Some(log_id(1, 8)));
    let entries = log
        .get_log_reader()
        .await
        .try_get_log_entries(0..100)
        .await
        .unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
}

/// A small deterministic generator for the entry generators below.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn ledger_entries(n: usize, seed: u64) -> Vec<Entry> {
    let mut next = xorshift(seed);
    let mut entries = vec![entry(1, 1, membership())];
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        entries.push(entry(
            1,
            2 + i as u64,
            request(
                Command::CreateAccount {
                    id: id.to_string(),
                    balance: 1000,
                },
                1,
            ),
        ));
    }
    for i in 0..n {
        let index = entries.len() as u64 + 1;
        let accounts = ["a", "b", "c"];
        let command = match next() % 3 {
            0 => Command::Put {
                key: format!("k{}", next() % 5),
                value: vec![(next() % 256) as u8; (next() % 64) as usize],
                condition: Condition::Always,
            },
            1 => Command::Delete {
                key: format!("k{}", next() % 5),
                condition: Condition::Always,
            },
            _ => Command::Transfer(Transfer {
                id: format!("t{}", next() % (n as u64 / 2 + 1)),
                from: accounts[(next() % 3) as usize].into(),
                to: accounts[(next() % 3) as usize].into(),
                amount: next() % 700 + 1,
            }),
        };
        entries.push(entry(1, index, request(command, 100 + i as u64)));
    }
    entries
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// State rebuilt from a snapshot plus the rest of the log equals the state that applied the
    /// whole log.
    #[test]
    fn snapshot_plus_log_equals_full_apply(n in 1usize..120, split_permille in 0u64..1000, seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let entries = ledger_entries(n, seed);
            let split = ((entries.len() as u64 * split_permille) / 1000).max(1) as usize;

            let dir_a = tempfile::tempdir().unwrap();
            let (_log_a, mut a) = open(dir_a.path()).unwrap();
            apply(&mut a, entries[..split].to_vec()).await;
            let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
            apply(&mut a, entries[split..].to_vec()).await;

            let dir_b = tempfile::tempdir().unwrap();
            let (_log_b, mut b) = open(dir_b.path()).unwrap();
            // Some unrelated state that the install must replace.
            apply(&mut b, vec![entry(1, 1, request(Command::Put { key: "junk".into(), value: vec![1], condition: Condition::Always }, 1))]).await;
            b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            prop_assert_eq!(b.applied_state().await.unwrap().0, Some(entries[split - 1].log_id));
            apply(&mut b, entries[split..].to_vec()).await;
            prop_assert_eq!(dump(&a), dump(&b));
            let current = b.get_current_snapshot().await.unwrap().expect("installed snapshot is current");
            prop_assert_eq!(current.meta.last_log_id, Some(entries[split - 1].log_id));
            Ok(())
        })?;
    }
}

/// Puts, most with idempotency keys (some reused), and transfers, stamped 7 minutes apart, so
/// that over the run the early idempotency records pass the retention and expire.
fn expiring_entries(n: usize, seed: u64) -> Vec<Entry> {
    let mut next = xorshift(seed);
    let mut entries = vec![
        entry(1, 1, membership()),
        entry(
            1,
            2,
            request(
                Command::CreateAccount {
                    id: "a".into(),
                    balance: 1_000_000,
                },
                1,
            ),
        ),
    ];
    let step_ms = 7 * 60 * 1000;
    for i in 0..n {
        let index = entries.len() as u64 + 1;
        let command = match next() % 4 {
            0 => Command::Transfer(Transfer {
                id: format!("t{}", next() % 50),
                from: "a".into(),
                to: "b".into(),
                amount: 1,
            }),
            _ => Command::Put {
                key: format!("k{}", next() % 20),
                value: vec![(next() % 256) as u8; (next() % 32) as usize],
                condition: Condition::Always,
            },
        };
        let idempotency_key =
            (!next().is_multiple_of(5)).then(|| format!("i{}", next() % (n as u64 / 3 + 1)));
        entries.push(entry(
            1,
            index,
            EntryPayload::Normal(Request {
                leader_time_ms: 1 + i as u64 * step_ms,
                idempotency_key,
                command,
            }),
        ));
    }
    entries
}

/// The state machine's column family as the pure model says it must be after `entries`:
/// every change of [`crate::state_machine::mem::MemState`] turned into RocksDB writes by `ops`.
fn model_dump(entries: &[Entry]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut model = crate::state_machine::mem::MemState::default();
    let mut rows = BTreeMap::new();
    for e in entries {
        if let EntryPayload::Normal(request) = &e.payload {
            for change in model.apply(request).changes {
                for op in state::ops(change) {
                    match op {
                        state::Op::Put(k, v) => {
                            rows.insert(k, v);
                        }
                        state::Op::Delete(k) => {
                            rows.remove(&k);
                        }
                    }
                }
            }
        }
    }
    rows.into_iter().collect()
}

/// Without the records only storage writes (the applied id and the membership).
fn data_rows(dump: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    dump.into_iter()
        .filter(|(k, _)| k != keys::SM_APPLIED && k != keys::SM_MEMBERSHIP)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Applying in batches of any size (entries that see the batch's earlier writes before
    /// they reach RocksDB, expiry searches that merge the two) leaves exactly the state the pure
    /// model computes, entry by entry; so does applying one entry per call.
    #[test]
    fn batched_apply_equals_the_model(n in 150usize..450, chunks in proptest::collection::vec(1usize..60, 1..40), seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let entries = expiring_entries(n, seed);
            let expected = model_dump(&entries);
            let expiry_rows = expected.iter().filter(|(k, _)| k.starts_with(&keys::expiry_prefix())).count();
            let idempotent = entries.iter().filter(|e| matches!(&e.payload, EntryPayload::Normal(r) if r.idempotency_key.is_some())).count();
            prop_assert!(expiry_rows < idempotent, "the run expires idempotency records");

            let dir = tempfile::tempdir().unwrap();
            let (_log, mut batched) = open(dir.path()).unwrap();
            let mut rest = &entries[..];
            for size in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((*size).min(rest.len()));
                apply(&mut batched, now.to_vec()).await;
                rest = later;
            }
            prop_assert_eq!(data_rows(dump(&batched)), expected.clone());
            prop_assert_eq!(batched.applied_state().await.unwrap().0, entries.last().map(|e| e.log_id));

            let dir = tempfile::tempdir().unwrap();
            let (_log, mut single) = open(dir.path()).unwrap();
            for e in &entries {
                apply(&mut single, vec![e.clone()]).await;
            }
            prop_assert_eq!(data_rows(dump(&single)), expected);
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_install_is_finished_at_open() {
    let entries = ledger_entries(50, 7);
    let dir_a = tempfile::tempdir().unwrap();
    let (_log_a, mut a) = open(dir_a.path()).unwrap();
    apply(&mut a, entries.clone()).await;
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    {
        let (_log_b, b) = open(dir_b.path()).unwrap();
        let db = b.reader().db_for_tests();
        // What a crash right after the first install batch leaves: the file in place, the
        // marker set, the old state cleared, only part of the new records written.
        let name = "snapshot-00000000000000000054-0000000001-0000000000000001.snap";
        std::fs::copy(&snap.snapshot.path, db.snapshot_dir.join(name)).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            db.cf(keys::CF_SM),
            keys::SM_INSTALLING,
            encode(&name.to_string()),
        );
        batch.put_cf(db.cf(keys::CF_SM), keys::kv("half-written"), b"garbage");
        db.db.write_opt(batch, &synced()).unwrap();
    }
    let (_log_b, b) = open(dir_b.path()).unwrap();
    assert_eq!(dump(&a), dump(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_an_error_not_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, state) = open(dir.path()).unwrap();
    let db = state.reader().db_for_tests();
    db.db
        .put_cf(
            db.cf(keys::CF_SM),
            keys::kv("bad"),
            [1, 0xff, 0xff, 0xff, 0xff, 0xff],
        )
        .unwrap();
    db.db
        .put_cf(db.cf(keys::CF_SM), keys::account("bad"), [9, 1])
        .unwrap();
    assert!(state.reader().kv("bad").await.is_err());
    assert!(state.reader().account("bad").await.is_err());
}

/// The review's eighth defect: `load_snapshot` checked the file only while streaming it in,
/// after the old state was gone. A corrupt file now fails the install and leaves the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused_before_the_state_is_touched() {
    let entries = ledger_entries(40, 3);
    let dir_a = tempfile::tempdir().unwrap();
    let (_log_a, mut a) = open(dir_a.path()).unwrap();
    apply(&mut a, entries).await;
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = std::fs::read(&snap.snapshot.path).unwrap();
    // A flipped bit in the last record, after every byte the header check reads.
    let at = bytes.len() - 20;
    bytes[at] ^= 0x10;
    let corrupt = dir_a.path().join("corrupt.snap");
    std::fs::write(&corrupt, &bytes).unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let (log_b, mut b) = open(dir_b.path()).unwrap();
    apply(
        &mut b,
        vec![entry(
            1,
            1,
            request(
                Command::Put {
                    key: "mine".into(),
                    value: b"kept".to_vec(),
                    condition: Condition::Always,
                },
                1,
            ),
        )],
    )
    .await;
    let before = dump(&b);
    let err = b
        .install_snapshot(&snap.meta, SnapshotFile::open(&corrupt).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(dump(&b), before, "the old state is intact");
    assert_eq!(b.applied_state().await.unwrap().0, Some(log_id(1, 1)));
    drop((log_b, b));
    // And the node still opens on it.
    let (_log_b, b) = open(dir_b.path()).unwrap();
    assert_eq!(b.reader().kv("mine").await.unwrap().unwrap().value, b"kept");
}

/// The review's fifth defect: the current snapshot was listed, then opened twice, while a build
/// could remove it in between. The snapshot handed out is now one open handle: it stays
/// readable after the file is pruned, and concurrent builds never make it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_snapshot_stays_readable_while_builds_prune_files() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut state) = open(dir.path()).unwrap();
    apply(&mut state, ledger_entries(30, 11)).await;
    let mut builder = state.get_snapshot_builder().await;
    builder.build_snapshot().await.unwrap();
    let snap_dir = dir.path().join("snapshots");

    let held = state.get_current_snapshot().await.unwrap().unwrap();
    std::fs::remove_file(&held.snapshot.path).unwrap();
    let mut all = vec![0u8; held.snapshot.len as usize];
    let n = snapshot::read_at(&held.snapshot.file, 0, &mut all).unwrap();
    assert_eq!(
        n as u64, held.snapshot.len,
        "an unlinked snapshot reads in full"
    );
    let copy = dir.path().join("copy.snap");
    std::fs::write(&copy, &all).unwrap();
    assert_eq!(snapshot::verify(&copy).unwrap(), held.meta);

    // Builds that prune older files race a reader of the current one.
    let building = tokio::spawn(async move {
        for _ in 0..40 {
            builder.build_snapshot().await.unwrap();
        }
    });
    let mut read = 0;
    while !building.is_finished() {
        if let Some(snap) = state::current_snapshot(&snap_dir).unwrap() {
            let mut bytes = vec![0u8; snap.snapshot.len as usize];
            snapshot::read_at(&snap.snapshot.file, 0, &mut bytes).unwrap();
            read += 1;
        }
    }
    building.await.unwrap();
    assert!(read > 0);
}

/// Every record the state machine can write, at the limits, fits one snapshot record: the
/// relation `limits.rs` asserts, checked here on real encodings. (The review's first defect was
/// a stored txn answer too large for the snapshot format, which stopped every node.)
#[test]
fn every_record_the_state_machine_writes_fits_a_snapshot_record() {
    use crate::limits;
    use crate::state_machine::Txn;
    use crate::state_machine::TxnOp;

    fn key(n: usize, tag: u8) -> String {
        let mut k = vec![b'k'; n];
        k[0] = tag;
        String::from_utf8(k).unwrap()
    }
    let big = vec![0xffu8; limits::VALUE_BYTES_MAX];
    let idem = "i".repeat(limits::IDEMPOTENCY_KEY_BYTES_MAX);
    let mut state = crate::state_machine::tests::MemState::default();
    let mut largest = 0usize;
    let mut check = |changes: Vec<crate::state_machine::Change>| {
        for op in changes.into_iter().flat_map(state::ops) {
            if let state::Op::Put(k, v) = op {
                let size = k.len() + v.len() + 8;
                assert!(
                    size <= limits::SNAPSHOT_RECORD_BYTES_MAX,
                    "record of {size} bytes"
                );
                largest = largest.max(size);
            }
        }
    };
    // Values of the largest size under keys of the largest size.
    for tag in b'a'..=b'e' {
        let put = Request {
            leader_time_ms: 1,
            idempotency_key: Some(format!("{}{}", &idem[..120], tag as char)),
            command: Command::Put {
                key: key(limits::KEY_BYTES_MAX, tag),
                value: big.clone(),
                condition: Condition::Always,
            },
        };
        check(state.apply_for_test(&put));
    }
    // A key whose value makes four gets (a, b, c, f) read exactly the answer budget.
    let rest =
        limits::TXN_ANSWER_BYTES_MAX - 4 * limits::KEY_BYTES_MAX - 3 * limits::VALUE_BYTES_MAX;
    check(state.apply_for_test(&Request {
        leader_time_ms: 1,
        idempotency_key: None,
        command: Command::Put {
            key: key(limits::KEY_BYTES_MAX, b'f'),
            value: vec![0xfe; rest],
            condition: Condition::Always,
        },
    }));
    // A txn that reads exactly as much as its budget allows, idempotently (its answer is
    // stored); and one over the most ops that would read more (refused, and the refusal stored).
    let full: Vec<u8> = b"abcf".to_vec();
    let over: Vec<u8> = (0..limits::TXN_OPS_MAX)
        .map(|i| b'a' + (i % 5) as u8)
        .collect();
    for (n, tags) in [full, over].into_iter().enumerate() {
        let success: Vec<TxnOp> = tags
            .into_iter()
            .map(|tag| TxnOp::Get {
                key: key(limits::KEY_BYTES_MAX, tag),
            })
            .collect();
        let txn = Request {
            leader_time_ms: 2,
            idempotency_key: Some(format!("{}{n}", &idem[..100])),
            command: Command::Txn(Txn {
                compare: vec![],
                success,
                failure: vec![],
            }),
        };
        check(state.apply_for_test(&txn));
    }
    // A transfer with the longest ids.
    for (id, balance) in [("a".repeat(128), 10), ("b".repeat(128), 0)] {
        check(state.apply_for_test(&Request {
            leader_time_ms: 3,
            idempotency_key: None,
            command: Command::CreateAccount { id, balance },
        }));
    }
    check(state.apply_for_test(&Request {
        leader_time_ms: 4,
        idempotency_key: None,
        command: Command::Transfer(Transfer {
            id: "t".repeat(128),
            from: "a".repeat(128),
            to: "b".repeat(128),
            amount: 1,
        }),
    }));
    assert!(
        largest > limits::TXN_ANSWER_BYTES_MAX,
        "the largest case (a stored answer of the whole budget) was exercised: {largest}"
    );
}

/// A flipped byte in an SST is found when the node opens, and the open fails with a message
/// that says so, instead of serving from the damaged file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_sst_is_detected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut state) = open(dir.path()).unwrap();
        apply(&mut state, ledger_entries(400, 5)).await;
        let db = state.reader().db_for_tests();
        for cf in keys::COLUMN_FAMILIES {
            db.db.flush_cf(db.cf(cf)).unwrap();
        }
    }
    let largest = std::fs::read_dir(dir.path().join("rocksdb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("an SST file");
    let mut bytes = std::fs::read(&largest).unwrap();
    // Data blocks come first in an SST; the middle of the first quarter is inside one.
    let at = bytes.len() / 8;
    bytes[at] ^= 0x01;
    std::fs::write(&largest, &bytes).unwrap();
    let err = open(dir.path()).err().expect("the open must fail");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// A flipped byte in the current snapshot file is found at open too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_file_is_detected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let (_log, mut state) = open(dir.path()).unwrap();
        apply(&mut state, ledger_entries(20, 9)).await;
        let snap = state
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        snap.snapshot.path
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir.path()).err().expect("the open must fail");
    assert!(err.to_string().contains("is corrupt"), "{err}");
}

/// A torn record at the end of the write-ahead log (a crash mid-write) is cut off at open: the
/// log that remains is a prefix of what was written, without holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_truncated_and_the_log_stays_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _state) = open(dir.path()).unwrap();
        for i in 1..=50 {
            append(&mut log, vec![entry(1, i, EntryPayload::Blank)]).await;
        }
    }
    let wal = std::fs::read_dir(dir.path().join("rocksdb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL file");
    let len = std::fs::metadata(&wal).unwrap().len();
    // Tear the last record: cut it short and leave garbage where the rest would be.
    let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, &[0xde, 0xad]).unwrap();
    drop(f);

    let (mut log, _state) = open(dir.path()).unwrap();
    let st = log.get_log_state().await.unwrap();
    let last = st.last_log_id.expect("most of the log survives").index;
    assert!(
        (40..50).contains(&last),
        "the torn entry is gone, the rest kept: {last}"
    );
    let entries = log
        .get_log_reader()
        .await
        .try_get_log_entries(0..100)
        .await
        .unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "no holes");
}

/// The review's sixth defect: an install held a std lock that every API read waited on inside a
/// runtime worker, so a few concurrent reads stalled the whole node (peers, timers, the Raft
/// core) for the install. Reads now wait on the lock without parking a worker: with an install
/// holding the lock, more reads than workers are waiting, and other tasks still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_an_install_wait_without_parking_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, state) = open(dir.path()).unwrap();
    let reader = state.reader();
    let db = reader.db_for_tests();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let install = tokio::task::spawn_blocking(move || {
        let _guard = db.install_lock.blocking_write();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held_rx.await.unwrap();
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.kv("k").await })
        })
        .collect();
    // A task that needs a worker (as the Raft core and the peer transport do) still runs while
    // the install holds the lock. Were the workers parked, it would only run after the release.
    let other = tokio::spawn(async { 42 });
    let ran = tokio::time::timeout(std::time::Duration::from_secs(10), other).await;
    release_tx.send(()).unwrap();
    assert_eq!(ran.expect("a task ran during the install").unwrap(), 42);
    install.await.unwrap();
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap(), None);
    }
}
