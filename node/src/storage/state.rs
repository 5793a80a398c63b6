//! The state machine's storage: applies committed entries through the pure state machine, writes
//! their changes together with the last one's log id in one atomic batch, builds and installs
//! snapshots.
//!
//! Applying is batched: the entries of one `apply` call (at most [`limits::APPLY_BATCH_ENTRIES_MAX`]
//! of them, [`limits::APPLY_BATCH_BYTES_MAX`] of values) are applied one after another against the
//! database plus the batch's own pending writes (`Pending`), then written in one RocksDB batch,
//! and only then answered. So many entries cost one write-ahead-log record, and the records
//! every entry rewrites (the meta, the applied id) are inserted once per batch: under load these
//! were most of the memtable inserts.
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
//! - a snapshot file is verified (every record and the checksum) before anything destructive,
//!   on every path: a received snapshot, the recovery of an interrupted install, and the current
//!   snapshot at startup. A corrupt file fails the install and leaves the state as it was.
//!
//! Readers (the API, the snapshot builder) take `install_lock` for reading while they create their
//! RocksDB view, and the install holds it for writing, so nobody sees a half-installed state. The
//! lock is tokio's: an API read waits for an install asynchronously, and the install itself runs
//! on the blocking pool.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use futures::Stream;
use futures::StreamExt;
use metrokv_api::snapshot_file::BackupInfo;
use metrokv_api::snapshot_file::BACKUP_INFO_KEY;
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
use super::Snapshot;
use super::StateReader;
use super::StorageIds;
use crate::clock::Clock;
use crate::failpoint;
use crate::limits;
use crate::raft::types::EntryPayload;
use crate::raft::types::EntryResponder;
use crate::raft::types::LogId;
use crate::raft::types::RaftSnapshotBuilder;
use crate::raft::types::RaftStateMachine;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;
use crate::state_machine;
use crate::state_machine::AccountRecord;
use crate::state_machine::Change;
use crate::state_machine::DedupKey;
use crate::state_machine::DedupRecord;
use crate::state_machine::KvRecord;
use crate::state_machine::SmMeta;
use crate::state_machine::StateView;
use crate::state_machine::ZoneRecord;

pub struct StateStore {
    db: Arc<Db>,
    /// The last applied log id, kept to assert that apply never skips or repeats an entry.
    last_applied: Option<LogId>,
    /// Makes snapshot file names unique within this process.
    snapshot_seq: Arc<AtomicU64>,
    /// Told the replicated clock after every apply, for the leader's stamps.
    clock: Arc<Clock>,
    /// Told every storage id record as it applies.
    ids: Arc<StorageIds>,
    /// A lower bound on the `recorded_ms` of every record in the expiry index (`None`: not known
    /// yet), so that most entries learn that nothing expired without an iterator over RocksDB.
    expiry_floor: Option<u64>,
}

/// The writes of the entries applied so far in this batch and not yet in RocksDB: the last value
/// of each key of the `sm` column family (`None`: deleted).
#[derive(Default)]
struct Pending {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values in `writes`, for [`limits::APPLY_BATCH_BYTES_MAX`].
    bytes: usize,
    entries: usize,
    /// The last entry applied into this batch.
    last: Option<LogId>,
    clock_ms: Option<u64>,
    recorded: Vec<(u64, u64)>,
    responses: Vec<(
        openraft::storage::ApplyResponder<TypeConfig>,
        state_machine::Response,
    )>,
}

impl Pending {
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.writes.insert(key, value);
    }

    fn full(&self) -> bool {
        self.entries >= limits::APPLY_BATCH_ENTRIES_MAX
            || self.bytes >= limits::APPLY_BATCH_BYTES_MAX
    }
}

/// True when the state machine has never applied anything.
pub fn is_pristine(db: &Db) -> io::Result<bool> {
    let sm = db.cf(keys::CF_SM);
    for key in [keys::SM_APPLIED, keys::SM_META, keys::SM_MEMBERSHIP] {
        if db.db.get_pinned_cf(sm, key).map_err(rocks_err)?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

impl StateStore {
    pub fn open(db: Arc<Db>, clock: Arc<Clock>, ids: Arc<StorageIds>) -> io::Result<Self> {
        if let Some(bytes) = db
            .db
            .get_cf(db.cf(keys::CF_SM), keys::SM_INSTALLING)
            .map_err(rocks_err)?
        {
            let name: String = decode(&bytes, "install marker")?;
            let path = db.snapshot_dir.join(&name);
            tracing::warn!(snapshot = %path.display(), "finishing a snapshot install interrupted by a crash");
            // Nothing else runs yet, so the lock is free.
            let _guard = db
                .install_lock
                .try_write()
                .map_err(|_| io::Error::other("the install lock is held at open"))?;
            snapshot::verify(&path)
                .and_then(|_| load_snapshot(&db, &path))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot finish the snapshot install interrupted by a crash ({}): {e}; \
                         this node's state is incomplete and it will not serve",
                            path.display()
                        ),
                    )
                })?;
        }
        let current = snapshot::list(&db.snapshot_dir)?.pop();
        snapshot::remove_all_but(&db.snapshot_dir, current.as_deref())?;
        if let Some(path) = &current {
            snapshot::verify(path).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the snapshot file {} is corrupt: {e}; the disk returned bad data. \
                         The node's state does not depend on it: move the file away and start \
                         the node again, and it builds a new one",
                        path.display()
                    ),
                )
            })?;
        }
        let last_applied = read_applied(&db)?.0;
        clock.observe(committed_meta(&db)?.clock_ms);
        ids.replace_recorded(read_storage_ids(&db)?);
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            db,
            last_applied,
            snapshot_seq: Arc::new(AtomicU64::new(seq)),
            clock,
            ids,
            expiry_floor: None,
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone())
    }

    /// Where received snapshot files are assembled before they are installed.
    pub fn incoming_dir(&self) -> PathBuf {
        self.db.snapshot_dir.join("incoming")
    }

    /// Apply one entry into `pending`: its changes become visible to the entries after it in
    /// the batch, and reach RocksDB with [`StateStore::write_pending`].
    fn apply_one(
        &mut self,
        entry: &crate::raft::types::Entry,
        pending: &mut Pending,
    ) -> io::Result<Option<state_machine::Response>> {
        if let Some(prev) = pending.last.as_ref().or(self.last_applied.as_ref()) {
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
        let response = match &entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Normal(request) => {
                let floor = Cell::new(self.expiry_floor);
                let applied = state_machine::apply(
                    &DbView {
                        db: &self.db,
                        pending,
                        expiry_floor: &floor,
                    },
                    request,
                )?;
                self.expiry_floor = floor.get();
                for change in applied.changes {
                    match &change {
                        Change::SetMeta(meta) => pending.clock_ms = Some(meta.clock_ms),
                        Change::PutStorage { node, storage_id } => {
                            pending.recorded.push((*node, *storage_id))
                        }
                        Change::PutDedup { key, record } if key.expires() => {
                            self.expiry_floor =
                                self.expiry_floor.map(|f| f.min(record.recorded_ms));
                        }
                        _ => {}
                    }
                    for op in ops(change) {
                        match op {
                            Op::Put(key, value) => pending.put(key, Some(value)),
                            Op::Delete(key) => pending.put(key, None),
                        }
                    }
                }
                Some(applied.response)
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                pending.put(keys::SM_MEMBERSHIP.to_vec(), Some(encode(&stored)));
                None
            }
        };
        pending.last = Some(entry.log_id);
        pending.entries += 1;
        Ok(response)
    }

    /// Write the batch with the last entry's log id, in one atomic RocksDB write, then tell the
    /// clock and the storage ids, then answer the entries' proposers: nobody hears of a write
    /// before a read could see it.
    fn write_pending(&mut self, pending: &mut Pending) -> io::Result<()> {
        let Some(last) = pending.last else {
            return Ok(());
        };
        let sm = self.db.cf(keys::CF_SM);
        let mut batch = WriteBatch::default();
        for (key, value) in std::mem::take(&mut pending.writes) {
            match value {
                Some(value) => batch.put_cf(sm, key, value),
                None => batch.delete_cf(sm, key),
            }
        }
        batch.put_cf(sm, keys::SM_APPLIED, encode(&Some(last)));
        if failpoint::fail(failpoint::SM_WRITE_ERROR) {
            return Err(failpoint::injected(failpoint::SM_WRITE_ERROR));
        }
        self.db
            .db
            .write_opt(batch, &unsynced())
            .map_err(rocks_err)?;
        metrics::histogram!("metrokv_apply_batch_entries").record(pending.entries as f64);
        self.last_applied = Some(last);
        if let Some(clock_ms) = pending.clock_ms.take() {
            self.clock.observe(clock_ms);
        }
        for (node, storage_id) in pending.recorded.drain(..) {
            tracing::info!(
                node,
                storage_id = format!("{storage_id:#018x}"),
                "recorded a member's storage id"
            );
            self.ids.set_recorded(node, storage_id);
        }
        for (responder, response) in pending.responses.drain(..) {
            responder.send(response);
        }
        *pending = Pending::default();
        Ok(())
    }
}

/// Every member storage id record.
fn read_storage_ids(db: &Db) -> io::Result<std::collections::BTreeMap<u64, u64>> {
    let prefix = keys::member_storage_prefix();
    let mut it = db.db.raw_iterator_cf(db.cf(keys::CF_SM));
    it.seek(prefix);
    let mut out = std::collections::BTreeMap::new();
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        if !key.starts_with(&prefix) {
            break;
        }
        let node = keys::member_storage_node(key).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "corrupt member storage key")
        })?;
        out.insert(node, decode::<u64>(value, "member storage id")?);
        it.next();
    }
    it.status().map_err(rocks_err)?;
    Ok(out)
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

/// One write to the `sm` column family.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// The RocksDB writes one state machine change becomes: the one place that knows how each kind
/// of record is stored (and so the one place its size is checked against the snapshot format).
pub(crate) fn ops(change: Change) -> Vec<Op> {
    match change {
        Change::PutKv { key, record } => vec![Op::Put(keys::kv(&key), encode(&record))],
        Change::DeleteKv { key } => vec![Op::Delete(keys::kv(&key))],
        Change::PutAccount { id, record } => vec![Op::Put(keys::account(&id), encode(&record))],
        Change::PutDedup { key, record } => {
            let mut ops = Vec::with_capacity(2);
            if key.expires() {
                ops.push(Op::Put(keys::expiry(record.recorded_ms, &key), vec![]));
            }
            ops.push(Op::Put(keys::dedup(&key), encode(&record)));
            ops
        }
        Change::DeleteDedup { key, recorded_ms } => vec![
            Op::Delete(keys::expiry(recorded_ms, &key)),
            Op::Delete(keys::dedup(&key)),
        ],
        Change::SetMeta(meta) => vec![Op::Put(keys::SM_META.to_vec(), encode(&meta))],
        Change::PutStorage { node, storage_id } => {
            vec![Op::Put(keys::member_storage(node), encode(&storage_id))]
        }
        Change::PutZones(zones) => vec![Op::Put(keys::SM_ZONES.to_vec(), encode(&zones))],
    }
}

/// The state as the state machine sees it while applying: the database plus the batch's
/// pending writes, as of the last entry applied.
struct DbView<'a> {
    db: &'a Db,
    pending: &'a Pending,
    /// See [`StateStore::expiry_floor`]; the view raises it when a search shows more.
    expiry_floor: &'a Cell<Option<u64>>,
}

impl DbView<'_> {
    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> io::Result<Option<T>> {
        if let Some(value) = self.pending.writes.get(key) {
            return value.as_deref().map(|b| decode(b, what)).transpose();
        }
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

/// Read the state as it was before anything of a batch was applied (at open, after an install).
fn committed_meta(db: &Db) -> io::Result<SmMeta> {
    DbView {
        db,
        pending: &Pending::default(),
        expiry_floor: &Cell::new(None),
    }
    .meta()
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

    fn expired_dedup(
        &self,
        recorded_at_or_before_ms: u64,
        limit: usize,
    ) -> io::Result<Vec<(u64, DedupKey)>> {
        if self
            .expiry_floor
            .get()
            .is_some_and(|floor| floor > recorded_at_or_before_ms)
        {
            return Ok(Vec::new());
        }
        let from = keys::expiry_prefix().to_vec();
        let to = keys::expiry_bound_after(recorded_at_or_before_ms);
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to.clone());
        let mut it = self
            .db
            .db
            .raw_iterator_cf_opt(self.db.cf(keys::CF_SM), read);
        it.seek(&from);
        let mut pending = self
            .pending
            .writes
            .range::<Vec<u8>, _>((Bound::Included(from), Bound::Excluded(to)))
            .peekable();
        let parse = |key: &[u8]| {
            keys::parse_expiry(key).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "corrupt expiry index key")
            })
        };
        // A merge of the two ordered sources; a pending write of a key replaces its stored value.
        let mut out = Vec::new();
        while out.len() < limit {
            let stored = it.key();
            let next_pending = pending.peek().map(|(k, _)| k.as_slice());
            match (stored, next_pending) {
                (None, None) => break,
                (Some(s), p) if p.is_none_or(|p| s < p) => {
                    out.push(parse(s)?);
                    it.next();
                }
                (s, Some(p)) => {
                    if s == Some(p) {
                        it.next();
                    }
                    let (key, value) = pending.next().expect("peeked");
                    if value.is_some() {
                        out.push(parse(key)?);
                    }
                }
                (Some(_), None) => unreachable!("handled by the arm above"),
            }
        }
        it.status().map_err(rocks_err)?;
        // The oldest record is a lower bound for all; with none this old, all are younger.
        self.expiry_floor.set(Some(match out.first() {
            Some((recorded_ms, _)) => *recorded_ms,
            None => recorded_at_or_before_ms.saturating_add(1),
        }));
        Ok(out)
    }

    fn storage_of(&self, node: u64) -> io::Result<Option<u64>> {
        self.get(&keys::member_storage(node), "member storage id")
    }

    fn zones(&self) -> io::Result<ZoneRecord> {
        Ok(self.get(keys::SM_ZONES, "zone record")?.unwrap_or_default())
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
        let mut pending = Pending::default();
        // Entries the stream has ready join the batch; one it has to wait for does not hold
        // back the answers to those already applied.
        loop {
            let item = match entries.next().now_or_never() {
                Some(item) => item,
                None => {
                    self.write_pending(&mut pending)?;
                    entries.next().await
                }
            };
            let Some(item) = item else { break };
            let (entry, responder) = item?;
            let response = self.apply_one(&entry, &mut pending)?;
            if let Some(responder) = responder {
                // Blank and membership entries answer `Noop` to whoever proposed them.
                pending.responses.push((
                    responder,
                    response.unwrap_or(Ok(state_machine::Success::Noop)),
                ));
            }
            if pending.full() {
                self.write_pending(&mut pending)?;
            }
        }
        self.write_pending(&mut pending)
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
        self.expiry_floor = None;
        self.ids.replace_recorded(read_storage_ids(&self.db)?);
        self.clock.observe(committed_meta(&self.db)?.clock_ms);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        current_snapshot(&self.db.snapshot_dir)
    }
}

/// The newest snapshot file, opened once: its meta is read through the same handle that is
/// returned, so a build that prunes the file meanwhile cannot make it vanish half-way (an open
/// file stays readable after it is unlinked). A file pruned between listing and opening is
/// looked for again.
pub(crate) fn current_snapshot(dir: &Path) -> io::Result<Option<Snapshot>> {
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let Some(path) = snapshot::list(dir)?.pop() else {
            return Ok(None);
        };
        match SnapshotFile::open(&path) {
            Ok(file) => {
                let meta = snapshot::read_meta(&file.file)?;
                return Ok(Some(Snapshot {
                    meta,
                    snapshot: file,
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "the newest snapshot file in {} kept disappearing while it was opened ({ATTEMPTS} tries)",
        dir.display()
    )))
}

/// Put a received snapshot file into the snapshot directory and load it. Returns the new applied
/// log id.
fn install(
    db: &Db,
    meta: &SnapshotMeta,
    incoming: SnapshotFile,
    unique: u64,
) -> io::Result<Option<LogId>> {
    let _guard = db.install_lock.blocking_write();
    let path = place_snapshot_file(db, meta, &incoming, unique)?;
    drop(incoming);
    // Verified in full before the state is touched: a corrupt file is refused and removed (it
    // must not pass for the current snapshot), and the state stays as it was.
    if let Err(e) = snapshot::verify(&path) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
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
    // The records are verified by `load_snapshot`, before anything is replaced.
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
/// The caller has verified the file in full ([`snapshot::verify`]) and holds `install_lock` for
/// writing. The reader checks the checksum again as it streams.
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
        // A backup's description is about the file, not state.
        if key == keys::SM_INSTALLING || key == BACKUP_INFO_KEY {
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
///
/// openraft stops the whole node when a build returns an error, so a build never does: a failed
/// attempt (a full disk, an I/O error) is logged, counted in
/// `metrokv_snapshot_build_failures_total` and tried again after a growing pause. openraft runs
/// builds in a task of their own, so the node goes on serving meanwhile; only log compaction
/// waits.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    seq: Arc<AtomicU64>,
}

/// First and longest pause between failed snapshot builds.
const BUILD_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const BUILD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut pause = BUILD_RETRY_FIRST;
        let mut failures = 0u64;
        loop {
            let db = self.db.clone();
            let unique = self.seq.fetch_add(1, Ordering::Relaxed);
            let attempt = tokio::task::spawn_blocking(move || build(&db, unique))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
            match attempt {
                Ok(snapshot) => {
                    if failures > 0 {
                        tracing::info!(failures, "snapshot built after failed attempts");
                    }
                    return Ok(snapshot);
                }
                Err(e) => {
                    failures += 1;
                    metrics::counter!("metrokv_snapshot_build_failures_total").increment(1);
                    tracing::error!(error = %e, failures, retry_in_ms = pause.as_millis() as u64,
                        "building a snapshot failed; the node keeps serving and tries again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BUILD_RETRY_MAX);
                }
            }
        }
    }
}

pub(crate) fn build(db: &Db, unique: u64) -> io::Result<Snapshot> {
    if failpoint::fail(failpoint::SNAPSHOT_BUILD_ERROR) {
        return Err(failpoint::injected(failpoint::SNAPSHOT_BUILD_ERROR));
    }
    let started = std::time::Instant::now();
    let (meta, path, records, _) = write_state(db, &db.snapshot_dir, unique, None)?;
    // Open before pruning: an install may have placed a newer file meanwhile, and then ours goes.
    let file = SnapshotFile::open(&path)?;
    {
        let _guard = db.install_lock.blocking_read();
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

/// Where backups are written before they are streamed (each file is unlinked as soon as it is
/// open, so a crash leaves at most one, which the next backup removes).
fn backup_dir(db: &Db) -> PathBuf {
    db.snapshot_dir.join("backup")
}

/// Write the state as of one consistent RocksDB view into a snapshot file in `dir`; with
/// `backup` (the cluster id and this node's id), the file is a backup, its description first.
/// Returns the meta, the file, its record count and the description.
fn write_state(
    db: &Db,
    dir: &Path,
    unique: u64,
    backup: Option<(&str, u64)>,
) -> io::Result<(SnapshotMeta, PathBuf, u64, Option<BackupInfo>)> {
    let view = {
        let _guard = db.install_lock.blocking_read();
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
    let mut writer = SnapshotWriter::create(dir, &meta, unique)?;
    let mut records = 0u64;
    let info = match backup {
        None => None,
        Some((cluster_id, node)) => {
            let sm_meta: SmMeta = match view.get_cf(sm, keys::SM_META).map_err(rocks_err)? {
                Some(b) => decode(&b, "state machine meta")?,
                None => SmMeta::default(),
            };
            let info = BackupInfo {
                cluster_id: cluster_id.to_string(),
                node,
                revision: sm_meta.revision,
                applied_index: last_log_id.map_or(0, |l| l.index),
                applied_term: last_log_id.map_or(0, |l| l.leader_id.term),
                taken_at_ms: sm_meta.clock_ms,
            };
            let json = serde_json::to_vec(&info).map_err(io::Error::other)?;
            writer.record(BACKUP_INFO_KEY, &json)?;
            records += 1;
            Some(info)
        }
    };
    let mut it = view.raw_iterator_cf(sm);
    it.seek_to_first();
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        writer.record(key, value)?;
        records += 1;
        it.next();
    }
    it.status().map_err(rocks_err)?;
    let path = writer.finish()?;
    Ok((meta, path, records, info))
}

/// Write a backup of the applied state (see `GET /v1/backup`): an open, already unlinked file
/// and what it holds. Blocking.
pub(crate) fn write_backup(
    db: &Db,
    cluster_id: &str,
    node: u64,
) -> io::Result<(BackupInfo, SnapshotFile)> {
    let dir = backup_dir(db);
    std::fs::create_dir_all(&dir)?;
    // A file left by a crash is useless; one being streamed is open, so removing it is harmless.
    snapshot::remove_all_but(&dir, None)?;
    let unique = rand::random::<u64>();
    let (_, path, records, info) = write_state(db, &dir, unique, Some((cluster_id, node)))?;
    let file = SnapshotFile::open(&path)?;
    std::fs::remove_file(&path)?;
    let info = info.ok_or_else(|| io::Error::other("a backup without its description"))?;
    tracing::info!(
        revision = info.revision,
        applied_index = info.applied_index,
        records,
        bytes = file.len,
        "backup written"
    );
    Ok((info, file))
}
