//! The state machine's storage: applies committed entries through the pure state machine, writes
//! each entry's changes together with its log id in one atomic batch, builds and installs
//! snapshots.
//!
//! Crash safety:
//! - data and the applied log id change in the same batch, so after a crash the state is exactly
//!   "everything up to the applied id"; openraft re-applies the rest from the log;
//! - apply writes are unsynced: the log is the durable record, and the next synced write (a log
//!   fsync) also makes them durable, because all column families share one write-ahead log;
//! - a snapshot install first makes the snapshot file durable, then writes an "installing" marker
//!   in the same synced batch that clears the old state, streams the records in, and removes the
//!   marker in the final synced batch. A node that crashes in between finds the marker at open and
//!   redoes the install from the file.
//!
//! Readers (the API, the snapshot builder) take `install_lock` for reading while they create their
//! RocksDB view, and the install holds it for writing, so nobody sees a half-installed state.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use rocksdb::WriteBatch;

use super::decode;
use super::encode;
use super::keys;
use super::rocks_err;
use super::snapshot;
use super::snapshot::SnapshotFile;
use super::snapshot::SnapshotReader;
use super::snapshot::SnapshotWriter;
use super::synced;
use super::unsynced;
use super::Db;
use super::StateReader;
use crate::limits;
use crate::raft::EntryPayload;
use crate::raft::EntryResponder;
use crate::raft::LogId;
use crate::raft::RaftSnapshotBuilder;
use crate::raft::RaftStateMachine;
use crate::raft::Snapshot;
use crate::raft::SnapshotMeta;
use crate::raft::StoredMembership;
use crate::raft::TypeConfig;
use crate::state_machine;
use crate::state_machine::AccountRecord;
use crate::state_machine::Change;
use crate::state_machine::DedupKey;
use crate::state_machine::DedupRecord;
use crate::state_machine::KvRecord;
use crate::state_machine::SmMeta;
use crate::state_machine::StateView;

pub struct StateStore {
    db: Arc<Db>,
    /// The last applied log id, kept to assert that apply never skips or repeats an entry.
    last_applied: Option<LogId>,
    /// Makes snapshot file names unique within this process.
    snapshot_seq: Arc<AtomicU64>,
}

impl StateStore {
    pub fn open(db: Arc<Db>) -> io::Result<Self> {
        if let Some(bytes) = db
            .db
            .get_cf(db.cf(keys::CF_SM), keys::SM_INSTALLING)
            .map_err(rocks_err)?
        {
            let name: String = decode(&bytes, "install marker")?;
            let path = db.snapshot_dir.join(&name);
            tracing::warn!(snapshot = %path.display(), "finishing a snapshot install interrupted by a crash");
            let _guard = db.install_lock.write().unwrap_or_else(|e| e.into_inner());
            load_snapshot(&db, &path)?;
        }
        let current = snapshot::list(&db.snapshot_dir)?.pop();
        snapshot::remove_all_but(&db.snapshot_dir, current.as_deref())?;
        let last_applied = read_applied(&db)?.0;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            db,
            last_applied,
            snapshot_seq: Arc::new(AtomicU64::new(seq)),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone())
    }

    /// Where received snapshot files are assembled before they are installed.
    pub fn incoming_dir(&self) -> PathBuf {
        self.db.snapshot_dir.join("incoming")
    }

    fn apply_one(
        &mut self,
        entry: &crate::raft::Entry,
    ) -> io::Result<Option<state_machine::Response>> {
        if let Some(prev) = &self.last_applied {
            // openraft applies committed entries in order, one after another. (Its storage test
            // suite also applies non-adjacent entries, so only "forward" is asserted.)
            assert!(
                entry.log_id.index > prev.index,
                "apply never repeats or goes back: {} after {}",
                entry.log_id,
                prev
            );
            assert!(
                entry.log_id.leader_id.term >= prev.leader_id.term,
                "the term never goes back"
            );
        }
        let sm = self.db.cf(keys::CF_SM);
        let mut batch = WriteBatch::default();
        let response = match &entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Normal(request) => {
                let applied = state_machine::apply(&DbView { db: &self.db }, request)?;
                write_changes(&self.db, &mut batch, applied.changes);
                Some(applied.response)
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                batch.put_cf(sm, keys::SM_MEMBERSHIP, encode(&stored));
                None
            }
        };
        batch.put_cf(sm, keys::SM_APPLIED, encode(&Some(entry.log_id)));
        self.db
            .db
            .write_opt(batch, &unsynced())
            .map_err(rocks_err)?;
        self.last_applied = Some(entry.log_id);
        Ok(response)
    }
}

fn read_applied(db: &Db) -> io::Result<(Option<LogId>, StoredMembership)> {
    let sm = db.cf(keys::CF_SM);
    let applied = match db
        .db
        .get_pinned_cf(sm, keys::SM_APPLIED)
        .map_err(rocks_err)?
    {
        Some(b) => decode::<Option<LogId>>(&b, "applied log id")?,
        None => None,
    };
    let membership = match db
        .db
        .get_pinned_cf(sm, keys::SM_MEMBERSHIP)
        .map_err(rocks_err)?
    {
        Some(b) => decode::<StoredMembership>(&b, "membership")?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Turn the state machine's changes into RocksDB operations on the `sm` column family.
fn write_changes(db: &Db, batch: &mut WriteBatch, changes: Vec<Change>) {
    let sm = db.cf(keys::CF_SM);
    for change in changes {
        match change {
            Change::PutKv { key, record } => batch.put_cf(sm, keys::kv(&key), encode(&record)),
            Change::DeleteKv { key } => batch.delete_cf(sm, keys::kv(&key)),
            Change::PutAccount { id, record } => {
                batch.put_cf(sm, keys::account(&id), encode(&record))
            }
            Change::PutDedup { key, record } => {
                batch.put_cf(sm, keys::expiry(record.recorded_ms, &key), []);
                batch.put_cf(sm, keys::dedup(&key), encode(&record));
            }
            Change::DeleteDedup { key, recorded_ms } => {
                batch.delete_cf(sm, keys::expiry(recorded_ms, &key));
                batch.delete_cf(sm, keys::dedup(&key));
            }
            Change::SetMeta(meta) => batch.put_cf(sm, keys::SM_META, encode(&meta)),
        }
    }
}

/// The state as the state machine sees it while applying: the database as of the last entry.
struct DbView<'a> {
    db: &'a Db,
}

impl DbView<'_> {
    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> io::Result<Option<T>> {
        match self
            .db
            .db
            .get_pinned_cf(self.db.cf(keys::CF_SM), key)
            .map_err(rocks_err)?
        {
            Some(bytes) => Ok(Some(decode(&bytes, what)?)),
            None => Ok(None),
        }
    }
}

impl StateView for DbView<'_> {
    type Error = io::Error;

    fn meta(&self) -> io::Result<SmMeta> {
        Ok(self
            .get(keys::SM_META, "state machine meta")?
            .unwrap_or_default())
    }

    fn kv(&self, key: &str) -> io::Result<Option<KvRecord>> {
        self.get(&keys::kv(key), "kv record")
    }

    fn account(&self, id: &str) -> io::Result<Option<AccountRecord>> {
        self.get(&keys::account(id), "account")
    }

    fn dedup(&self, key: &DedupKey) -> io::Result<Option<DedupRecord>> {
        self.get(&keys::dedup(key), "dedup record")
    }

    fn oldest_dedup(&self, limit: usize) -> io::Result<Vec<(u64, DedupKey)>> {
        let prefix = keys::expiry_prefix();
        let mut it = self.db.db.raw_iterator_cf(self.db.cf(keys::CF_SM));
        it.seek(prefix);
        let mut out = Vec::new();
        while let Some(key) = it.key() {
            if out.len() >= limit || !key.starts_with(&prefix) {
                break;
            }
            let parsed = keys::parse_expiry(key).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "corrupt expiry index key")
            })?;
            out.push(parsed);
            it.next();
        }
        it.status().map_err(rocks_err)?;
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        read_applied(&self.db)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = self.apply_one(&entry)?;
            if let Some(responder) = responder {
                // Blank and membership entries answer `Noop` to whoever proposed them.
                responder.send(response.unwrap_or(Ok(state_machine::Success::Noop)));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            seq: self.snapshot_seq.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let unique = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || install(&db, &meta, snapshot, unique))
            .await
            .map_err(io::Error::other)??;
        self.last_applied = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some(path) = snapshot::list(&self.db.snapshot_dir)?.pop() else {
            return Ok(None);
        };
        let (meta, _) = SnapshotReader::open(&path)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotFile::open(&path)?,
        }))
    }
}

/// Put a received snapshot file into the snapshot directory and load it. Returns the new applied
/// log id.
fn install(
    db: &Db,
    meta: &SnapshotMeta,
    incoming: SnapshotFile,
    unique: u64,
) -> io::Result<Option<LogId>> {
    let _guard = db.install_lock.write().unwrap_or_else(|e| e.into_inner());
    let path = place_snapshot_file(db, meta, &incoming, unique)?;
    drop(incoming);
    load_snapshot(db, &path)?;
    snapshot::remove_all_but(&db.snapshot_dir, Some(&path))?;
    tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
    metrics::counter!("metrokv_snapshots_installed_total").increment(1);
    Ok(meta.last_log_id)
}

/// Give the incoming file its final name in the snapshot directory: a rename when it was received
/// into our own incoming directory, a durable copy otherwise.
fn place_snapshot_file(
    db: &Db,
    meta: &SnapshotMeta,
    incoming: &SnapshotFile,
    unique: u64,
) -> io::Result<PathBuf> {
    let (term, index) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |id| (id.leader_id.term, id.index));
    let target = db.snapshot_dir.join(format!(
        "snapshot-{index:020}-{term:010}-{unique:016x}.snap"
    ));
    if incoming.path.parent() == Some(db.snapshot_dir.join("incoming").as_path()) {
        std::fs::rename(&incoming.path, &target)?;
    } else {
        let tmp = target.with_extension("tmp");
        std::fs::copy(&incoming.path, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &target)?;
    }
    snapshot::sync_dir(&db.snapshot_dir)?;
    let (file_meta, _) = SnapshotReader::open(&target)?;
    if &file_meta != meta {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot file does not match the snapshot meta",
        ));
    }
    Ok(target)
}

/// Replace the whole state with the snapshot at `path` (see the module doc for the crash story).
/// The caller holds `install_lock` for writing.
fn load_snapshot(db: &Db, path: &Path) -> io::Result<()> {
    let sm = db.cf(keys::CF_SM);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("snapshot path has no file name"))?
        .to_string();
    let (meta, mut reader) = SnapshotReader::open(path)?;

    let mut batch = WriteBatch::default();
    batch.delete_range_cf(sm, keys::SM_FIRST, keys::SM_END);
    batch.put_cf(sm, keys::SM_INSTALLING, encode(&name));
    db.db.write_opt(batch, &synced()).map_err(rocks_err)?;

    let mut batch = WriteBatch::default();
    while let Some((key, value)) = reader.next_record()? {
        if key == keys::SM_INSTALLING {
            continue;
        }
        batch.put_cf(sm, key, value);
        if batch.len() >= limits::SNAPSHOT_INSTALL_BATCH_RECORDS {
            db.db
                .write_opt(std::mem::take(&mut batch), &unsynced())
                .map_err(rocks_err)?;
        }
    }
    // The applied id and membership come from the meta (the records carry the same values).
    batch.put_cf(sm, keys::SM_APPLIED, encode(&meta.last_log_id));
    batch.put_cf(sm, keys::SM_MEMBERSHIP, encode(&meta.last_membership));
    batch.delete_cf(sm, keys::SM_INSTALLING);
    db.db.write_opt(batch, &synced()).map_err(rocks_err)
}

/// Builds a snapshot file from a consistent RocksDB view, off the async runtime.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.db.clone();
        let unique = self.seq.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || build(&db, unique))
            .await
            .map_err(io::Error::other)?
    }
}

fn build(db: &Db, unique: u64) -> io::Result<Snapshot> {
    let started = std::time::Instant::now();
    let view = {
        let _guard = db.install_lock.read().unwrap_or_else(|e| e.into_inner());
        db.db.snapshot()
    };
    let sm = db.cf(keys::CF_SM);
    let last_log_id: Option<LogId> = match view.get_cf(sm, keys::SM_APPLIED).map_err(rocks_err)? {
        Some(b) => decode(&b, "applied log id")?,
        None => None,
    };
    let last_membership = match view.get_cf(sm, keys::SM_MEMBERSHIP).map_err(rocks_err)? {
        Some(b) => decode::<StoredMembership>(&b, "membership")?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let mut writer = SnapshotWriter::create(&db.snapshot_dir, &meta, unique)?;
    let mut it = view.raw_iterator_cf(sm);
    it.seek_to_first();
    let mut records = 0u64;
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        writer.record(key, value)?;
        records += 1;
        it.next();
    }
    it.status().map_err(rocks_err)?;
    let path = writer.finish()?;
    // Open before pruning: an install may have placed a newer file meanwhile, and then ours goes.
    let file = SnapshotFile::open(&path)?;
    {
        let _guard = db.install_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut all = snapshot::list(&db.snapshot_dir)?;
        all.pop();
        for old in all {
            // A concurrent build may be pruning the same file.
            match std::fs::remove_file(old) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    tracing::info!(last_log_id = ?meta.last_log_id, records, elapsed_ms = started.elapsed().as_millis() as u64, "built snapshot");
    metrics::counter!("metrokv_snapshots_built_total").increment(1);
    Ok(Snapshot {
        meta,
        snapshot: file,
    })
}
