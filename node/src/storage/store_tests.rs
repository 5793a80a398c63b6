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
use crate::raft::Entry;
use crate::raft::EntryPayload;
use crate::raft::IOFlushed;
use crate::raft::LogId;
use crate::raft::Membership;
use crate::raft::NodeInfo;
use crate::raft::RaftLogReader as _;
use crate::raft::RaftLogStorage as _;
use crate::raft::RaftStateMachine as _;
use crate::raft::TypeConfig;
use crate::raft::Vote;
use crate::state_machine::Command;
use crate::state_machine::Condition;
use crate::state_machine::Request;
use crate::state_machine::Transfer;

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
    let items: Vec<Result<crate::raft::EntryResponder, std::io::Error>> =
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
    assert_eq!(reader.kv("k").unwrap().unwrap().value, b"v");
    assert_eq!(reader.account("a").unwrap().unwrap().balance, 100);
    assert_eq!(reader.meta().unwrap().revision, 3);
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

fn ledger_entries(n: usize, seed: u64) -> Vec<Entry> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
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
    assert!(state.reader().kv("bad").is_err());
    assert!(state.reader().account("bad").is_err());
}
