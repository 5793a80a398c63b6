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

pub mod keys;
pub mod log;
pub mod read;
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

pub use log::LogStore;
pub use read::StateReader;
pub use snapshot::SnapshotFile;
pub use state::StateStore;

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
    /// its RocksDB view (see `state.rs`).
    pub install_lock: std::sync::RwLock<()>,
}

impl Db {
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // The column families are created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} exists"))
    }
}

/// Open (or create) the node's storage in `data_dir`, finish any half-done snapshot install, and
/// return the log store and the state machine store sharing it.
pub fn open(data_dir: &Path) -> io::Result<(LogStore, StateStore)> {
    let db = open_db(data_dir)?;
    let log = LogStore::new(db.clone())?;
    let state = StateStore::open(db)?;
    Ok((log, state))
}

pub fn open_db(data_dir: &Path) -> io::Result<Arc<Db>> {
    std::fs::create_dir_all(data_dir)?;
    let snapshot_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bound background threads on small machines; RocksDB picks sensible sizes otherwise.
    opts.increase_parallelism(2);
    let cfs = keys::COLUMN_FAMILIES.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, data_dir.join("rocksdb"), cfs).map_err(rocks_err)?;
    Ok(Arc::new(Db {
        db,
        snapshot_dir,
        install_lock: std::sync::RwLock::new(()),
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
