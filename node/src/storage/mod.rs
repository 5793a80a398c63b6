//! RocksDB storage: the Raft log and vote (`log.rs`), the state machine's data with its applied
//! log id (`state.rs`), snapshot files (`snapshot.rs`), the key layout (`keys.rs`) and the reads
//! the API serves (`read.rs`).
//!
//! One RocksDB instance holds all of it, in three column families sharing one write-ahead log.
//! That gives ordered durability: a synced write also makes every earlier write durable, so the
//! group-commit fsync of the log (see `log.rs`) covers the unsynced state machine writes before it.
//!
//! Values are postcard with a one-byte format version in front, so a future format can be told
//! apart. A value that does not decode is corruption: it is an error, never silently skipped.
//!
//! At open, before anything is served, every block of every column family is read once with
//! its checksum verified, and the current snapshot file is verified: a flipped bit on disk stops
//! the node with a message naming the file, instead of serving wrong data later. A torn write at
//! the end of the write-ahead log (a crash mid-write) is cut off by RocksDB's point-in-time
//! recovery, which keeps the longest valid prefix of writes, so the log stays without holes.
//!
//! Each data directory has a random storage id, created with it. Peers record it (see
//! `state_machine::Command::RecordStorage`), so a member whose data directory was wiped or
//! replaced is recognised as a new storage and cannot vote as if it remembered.

pub mod identity;
pub mod keys;
pub mod log;
pub mod read;
pub mod recover;
pub mod restore;
pub mod snapshot;
pub mod state;

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::ColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use identity::StorageIds;
pub use log::LogStore;
pub use read::StateReader;
pub use snapshot::SnapshotFile;
pub use state::StateStore;

use crate::clock::Clock;
use crate::limits;

/// A snapshot as openraft hands it around: its meta and our file.
pub type Snapshot =
    openraft::alias::SnapshotOf<crate::raft::types::TypeConfig, snapshot::SnapshotFile>;

/// The first byte of every stored value.
const FORMAT_V1: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Encoding into a Vec only fails for types serde cannot express, which ours are not.
    postcard::to_io(value, &mut out).expect("postcard encoding into memory");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}: {e}"))
        }),
        Some((v, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: unknown format version {v}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: empty value"),
        )),
    }
}

pub fn rocks_err(e: rocksdb::Error) -> io::Error {
    io::Error::other(e)
}

/// The opened database and the paths under the data directory.
pub struct Db {
    pub db: DB,
    pub snapshot_dir: PathBuf,
    /// Held for writing while a snapshot replaces the state, for reading while a reader creates
    /// its RocksDB view (see `state.rs`). A tokio lock: an API read that arrives during an
    /// install waits for it without parking a runtime worker.
    pub install_lock: tokio::sync::RwLock<()>,
}

impl Db {
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // The column families are created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} exists"))
    }
}

/// The node's opened storage.
pub struct Storage {
    pub log: LogStore,
    pub state: StateStore,
    /// This data directory's storage id (see the module doc).
    pub storage_id: u64,
    /// True when the directory holds no vote, no log and no state: a new node, or one whose
    /// data was lost.
    pub pristine: bool,
    /// The members' recorded storage ids, kept current by the state store.
    pub ids: Arc<StorageIds>,
}

/// Open (or create) the node's storage in `data_dir`: check every block of it, finish any
/// half-done snapshot install, and return the log store and the state machine store sharing it.
/// `clock` learns the replicated clock as entries apply.
pub fn open(data_dir: &Path, clock: Arc<Clock>) -> io::Result<Storage> {
    let db = open_db(data_dir)?;
    verify_integrity(&db)?;
    let pristine = log::is_pristine(&db)? && state::is_pristine(&db)?;
    let storage_id = log::storage_id(&db)?;
    let log = LogStore::new(db.clone())?;
    let ids = Arc::new(StorageIds::new());
    let state = StateStore::open(db, clock, ids.clone())?;
    Ok(Storage {
        log,
        state,
        storage_id,
        pristine,
        ids,
    })
}

/// Read every key of every column family with checksums verified, so corruption on disk is
/// found before the node serves anything.
fn verify_integrity(db: &Db) -> io::Result<()> {
    let started = std::time::Instant::now();
    let mut keys = 0u64;
    for name in keys::COLUMN_FAMILIES {
        let mut read = rocksdb::ReadOptions::default();
        read.set_verify_checksums(true);
        read.fill_cache(false);
        let mut it = db.db.raw_iterator_cf_opt(db.cf(name), read);
        it.seek_to_first();
        while it.valid() {
            keys += 1;
            it.next();
        }
        it.status().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the RocksDB data in {} is corrupt (column family {name}): {e}; the disk returned bad data, so this node will not serve from it",
                    db.db.path().display()
                ),
            )
        })?;
    }
    tracing::info!(
        keys,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage checksums verified"
    );
    Ok(())
}

pub fn open_db(data_dir: &Path) -> io::Result<Arc<Db>> {
    std::fs::create_dir_all(data_dir)?;
    let snapshot_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A crash mid-write leaves a torn record at the end of the write-ahead log; recover the
    // longest consistent prefix of writes rather than refuse to open. (Anything after the last
    // fsync was never acknowledged.) Corruption anywhere else still fails the open.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    opts.set_paranoid_checks(true);
    // Bound background threads on small machines; RocksDB picks sensible sizes otherwise.
    opts.increase_parallelism(2);
    let cfs = keys::COLUMN_FAMILIES.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if *name == keys::CF_SM {
            // Applying an entry looks its keys up (the record, its idempotency key, most of them
            // absent): bloom filters answer "absent" without walking the memtable's skip list or
            // reading SST blocks. In a profile under puts these lookups were ~9 % of the
            // leader's CPU.
            cf_opts.set_memtable_prefix_bloom_ratio(limits::MEMTABLE_BLOOM_RATIO);
            cf_opts.set_memtable_whole_key_filtering(true);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(limits::SST_BLOOM_BITS_PER_KEY, false);
            cf_opts.set_block_based_table_factory(&table);
        }
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, data_dir.join("rocksdb"), cfs).map_err(rocks_err)?;
    Ok(Arc::new(Db {
        db,
        snapshot_dir,
        install_lock: tokio::sync::RwLock::new(()),
    }))
}

/// Synced write options: the write is on disk when the call returns.
pub fn synced() -> rocksdb::WriteOptions {
    let mut o = rocksdb::WriteOptions::default();
    o.set_sync(true);
    o
}

/// Unsynced write options: the write reaches the OS (it survives a process crash) and becomes
/// durable with the next synced write or WAL flush.
pub fn unsynced() -> rocksdb::WriteOptions {
    rocksdb::WriteOptions::default()
}

#[cfg(test)]
mod store_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let v = (7u64, "x".to_string());
        let bytes = encode(&v);
        assert_eq!(decode::<(u64, String)>(&bytes, "t").unwrap(), v);
        assert!(decode::<(u64, String)>(&[], "t").is_err());
        assert!(decode::<(u64, String)>(&[9, 1, 2], "t").is_err());
        assert!(decode::<(u64, String)>(&bytes[..2], "t").is_err());
    }
}
