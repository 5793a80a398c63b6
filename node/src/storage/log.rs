//! The Raft log and vote in RocksDB, with group-commit fsync.
//!
//! `append` writes the entries (unsynced, so they are readable at once) and hands openraft's
//! completion callback to one fsync thread. That thread takes every callback waiting for it,
//! syncs the write-ahead log once, and only then reports them durable: many appends share one
//! fsync, and openraft never counts an entry toward a commit before it is on disk.
//!
//! Invariants:
//! - the log has no holes: entries are appended after the last one, truncated from the end,
//!   purged from the front (the purged id is written before the range is deleted);
//! - the vote, truncations and purges are synced before the call returns;
//! - all writes go through `&mut self`, so openraft's calls are applied in the order it made them.
//!
//! Nothing here blocks the async runtime: synced writes run on tokio's blocking pool (awaited,
//! so their order is kept), and a full fsync queue is waited on asynchronously.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::mpsc;

use super::decode;
use super::encode;
use super::keys;
use super::rocks_err;
use super::synced;
use super::unsynced;
use super::Db;
use crate::failpoint;
use crate::limits;
use crate::raft::types::Entry;
use crate::raft::types::IOFlushed;
use crate::raft::types::LogId;
use crate::raft::types::LogState;
use crate::raft::types::RaftLogReader;
use crate::raft::types::RaftLogStorage;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

type Flushed = IOFlushed<TypeConfig>;

pub struct LogStore {
    db: Arc<Db>,
    /// `None` only while dropping.
    fsync_tx: Option<mpsc::Sender<Flushed>>,
    fsync_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the queue ends the fsync thread after it completes what it holds; joining it
        // releases its handle on the database, so the directory can be opened again at once.
        self.fsync_tx.take();
        if let Some(thread) = self.fsync_thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> io::Result<Self> {
        let (fsync_tx, mut fsync_rx) = mpsc::channel(limits::FSYNC_QUEUE_MAX);
        let worker_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("metrokv-fsync".into())
            .spawn(move || fsync_worker(&worker_db, &mut fsync_rx))?;
        Ok(Self {
            db,
            fsync_tx: Some(fsync_tx),
            fsync_thread: Some(thread),
        })
    }

    fn reader(&self) -> LogReader {
        LogReader {
            db: self.db.clone(),
        }
    }

    /// Run a synced write on the blocking pool and wait for it.
    async fn blocking<F>(&self, write: F) -> io::Result<()>
    where
        F: FnOnce(&Db) -> io::Result<()> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || write(&db))
            .await
            .map_err(io::Error::other)?
    }
}

/// True when the log holds no vote, no entries and no purge point.
pub fn is_pristine(db: &Db) -> io::Result<bool> {
    let raft = db.cf(keys::CF_RAFT);
    for key in [keys::RAFT_VOTE, keys::RAFT_PURGED, keys::RAFT_COMMITTED] {
        if db.db.get_pinned_cf(raft, key).map_err(rocks_err)?.is_some() {
            return Ok(false);
        }
    }
    let mut it = db.db.raw_iterator_cf(db.cf(keys::CF_LOG));
    it.seek_to_first();
    let empty = !it.valid();
    it.status().map_err(rocks_err)?;
    Ok(empty)
}

/// This data directory's storage id, created (and synced) the first time.
pub fn storage_id(db: &Db) -> io::Result<u64> {
    let raft = db.cf(keys::CF_RAFT);
    if let Some(bytes) = db
        .db
        .get_pinned_cf(raft, keys::RAFT_STORAGE_ID)
        .map_err(rocks_err)?
    {
        return decode(&bytes, "storage id");
    }
    // Zero is never used, so "no id" can never match a real one.
    let id = loop {
        let id = rand::random::<u64>();
        if id != 0 {
            break id;
        }
    };
    db.db
        .put_cf_opt(raft, keys::RAFT_STORAGE_ID, encode(&id), &synced())
        .map_err(rocks_err)?;
    tracing::info!(
        storage_id = format!("{id:#018x}"),
        "created the storage id of this data directory"
    );
    Ok(id)
}

/// Syncs the WAL once for every batch of waiting callbacks. Ends when the store is dropped.
fn fsync_worker(db: &Db, rx: &mut mpsc::Receiver<Flushed>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = if failpoint::fail(failpoint::LOG_FSYNC_ERROR) {
            Err(failpoint::injected(failpoint::LOG_FSYNC_ERROR))
        } else {
            db.db.flush_wal(true).map_err(rocks_err)
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync of the Raft log failed; the node will stop");
        }
        for callback in batch.drain(..) {
            callback.io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(e.kind(), e.to_string())),
            );
        }
        metrics::counter!("metrokv_log_fsyncs_total").increment(1);
    }
}

/// Reads the log for openraft's replication tasks. Cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Db>,
}

impl LogReader {
    fn get_raft<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> io::Result<Option<T>> {
        let cf = self.db.cf(keys::CF_RAFT);
        match self.db.db.get_pinned_cf(cf, key).map_err(rocks_err)? {
            Some(bytes) => Ok(Some(decode(&bytes, what)?)),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let cf = self.db.cf(keys::CF_LOG);
        let mut it = self.db.db.raw_iterator_cf(cf);
        it.seek_to_last();
        it.status().map_err(rocks_err)?;
        match it.value() {
            Some(bytes) => Ok(Some(decode::<Entry>(bytes, "log entry")?.log_id)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf(keys::CF_LOG);
        let mut it = self.db.db.raw_iterator_cf(cf);
        it.seek(keys::log_key(start));
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let index = keys::log_index(key)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad log key"))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(value, "log entry")?;
            assert_eq!(
                entry.log_id.index, index,
                "log entry stored under its own index"
            );
            entries.push(entry);
            it.next();
        }
        it.status().map_err(rocks_err)?;
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_raft(keys::RAFT_VOTE, "vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let reader = self.reader();
        let last_purged_log_id: Option<LogId> =
            reader.get_raft(keys::RAFT_PURGED, "purged log id")?;
        let last_log_id = reader.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode(vote);
        // The vote must be on disk before it is used: a node that forgets its vote can vote twice.
        self.blocking(move |db| {
            db.db
                .put_cf_opt(db.cf(keys::CF_RAFT), keys::RAFT_VOTE, bytes, &synced())
                .map_err(rocks_err)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let cf = self.db.cf(keys::CF_RAFT);
        // Unsynced: a lost committed id only delays recovery, and the next log fsync covers it.
        self.db
            .db
            .put_cf_opt(cf, keys::RAFT_COMMITTED, encode(&committed), &unsynced())
            .map_err(rocks_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .reader()
            .get_raft::<Option<LogId>>(keys::RAFT_COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.db.cf(keys::CF_LOG);
        let mut batch = WriteBatch::default();
        let mut count = 0u64;
        for entry in entries {
            batch.put_cf(cf, keys::log_key(entry.log_id.index), encode(&entry));
            count += 1;
        }
        if failpoint::fail(failpoint::LOG_WRITE_ERROR) {
            return Err(failpoint::injected(failpoint::LOG_WRITE_ERROR));
        }
        // Unsynced, so it costs a memtable insert and a buffered WAL write, not a disk wait.
        self.db
            .db
            .write_opt(batch, &unsynced())
            .map_err(rocks_err)?;
        metrics::counter!("metrokv_log_entries_appended_total").increment(count);
        self.fsync_tx
            .as_ref()
            .ok_or_else(|| io::Error::other("the log store is closing"))?
            .send(callback)
            .await
            .map_err(|_| io::Error::other("the fsync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        self.blocking(move |db| delete_log_range(db, from, u64::MAX))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let purged = encode(&log_id);
        let to = log_id.index.saturating_add(1);
        self.blocking(move |db| {
            // Record the purge point first: if we crash between the two writes, the log state
            // still says where the log begins and no reader expects the deleted entries.
            db.db
                .put_cf_opt(db.cf(keys::CF_RAFT), keys::RAFT_PURGED, purged, &synced())
                .map_err(rocks_err)?;
            delete_log_range(db, 0, to)
        })
        .await
    }
}

/// Delete log entries with index in `[from, to)`, plus `to` itself when `to` is `u64::MAX`.
fn delete_log_range(db: &Db, from: u64, to: u64) -> io::Result<()> {
    let cf = db.cf(keys::CF_LOG);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, keys::log_key(from), keys::log_key(to));
    if to == u64::MAX {
        batch.delete_cf(cf, keys::log_key(u64::MAX));
    }
    db.db.write_opt(batch, &synced()).map_err(rocks_err)
}
