//! `metrokv-node restore --from FILE`: make a new data directory the first node of a new
//! cluster holding a backup's state (`GET /v1/backup`). Others join it as new members.
//!
//! Offline, into an empty directory: the file is checked whole first (framing, count,
//! checksum), then its records become the state machine, with three changes, because the state
//! describes the cluster it came from:
//! - the membership is this node alone (the old members are another cluster's machines);
//! - the storage ids recorded for the old members are dropped (a new member with an old id is a
//!   new storage, not one that lost its data);
//! - the log starts after the backup's last applied entry (recorded as purged), and this node
//!   votes for itself in the next term, so at start it elects itself and serves.
//!
//! A snapshot of the restored state is written too, so a joining member copies it in one go.
//! Everything is in synced RocksDB writes, the vote and purge point last. A restore cut short
//! (a crash, a full disk) leaves a directory the next restore refuses: remove it and restore
//! again.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::io::BufReader;
use std::path::Path;

use metrokv_api::snapshot_file::BackupInfo;
use metrokv_api::snapshot_file::BACKUP_INFO_KEY;
use rocksdb::WriteBatch;

use super::encode;
use super::keys;
use super::rocks_err;
use super::snapshot::SnapshotReader;
use super::synced;
use super::unsynced;
use crate::limits;
use crate::raft::types::LogId;
use crate::raft::types::Membership;
use crate::raft::types::NodeId;
use crate::raft::types::NodeInfo;
use crate::raft::types::StoredMembership;
use crate::raft::types::Vote;

/// What a restore read and wrote.
#[derive(Debug)]
pub struct Restored {
    /// The backup's description (`None` for a plain Raft snapshot file).
    pub info: Option<BackupInfo>,
    /// State records written.
    pub records: u64,
    /// The last entry applied to the restored state.
    pub applied: Option<LogId>,
}

/// Restore `from` into the empty data directory `data_dir` as node `me` with `info`.
pub fn restore(data_dir: &Path, from: &Path, me: NodeId, info: NodeInfo) -> io::Result<Restored> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display())))
    };
    // Whole file first: nothing is written from a file that is not intact.
    let scanned = metrokv_api::snapshot_file::scan(open(from)?, limits::SNAPSHOT_RECORD_BYTES_MAX)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} is not a valid backup: {e}", from.display()),
            )
        })?;
    if data_dir.join("rocksdb").exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already holds a data directory; restore only into a new one",
                data_dir.display()
            ),
        ));
    }
    let db = super::open_db(data_dir)?;
    let (meta, mut reader) = SnapshotReader::new(open(from)?)?;
    let sm = db.cf(keys::CF_SM);
    let mut batch = WriteBatch::default();
    let mut records = 0u64;
    while let Some((key, value)) = reader.next_record()? {
        let skip = key == BACKUP_INFO_KEY
            || key == keys::SM_INSTALLING
            || keys::member_storage_node(&key).is_some();
        if skip {
            continue;
        }
        batch.put_cf(sm, key, value);
        records += 1;
        if batch.len() >= limits::SNAPSHOT_INSTALL_BATCH_RECORDS {
            db.db
                .write_opt(std::mem::take(&mut batch), &unsynced())
                .map_err(rocks_err)?;
        }
    }
    let membership = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, info)]))
        .map_err(|e| io::Error::other(format!("cannot build the new membership: {e}")))?;
    let applied = meta.last_log_id;
    batch.put_cf(sm, keys::SM_APPLIED, encode(&applied));
    batch.put_cf(
        sm,
        keys::SM_MEMBERSHIP,
        encode(&StoredMembership::new(applied, membership)),
    );
    db.db.write_opt(batch, &synced()).map_err(rocks_err)?;
    super::state::build(&db, 0)?;
    let term = applied.map_or(0, |l| l.leader_id.term) + 1;
    let mut batch = WriteBatch::default();
    let raft = db.cf(keys::CF_RAFT);
    if let Some(applied) = applied {
        batch.put_cf(raft, keys::RAFT_PURGED, encode(&applied));
        batch.put_cf(raft, keys::RAFT_COMMITTED, encode(&Some(applied)));
    }
    batch.put_cf(raft, keys::RAFT_VOTE, encode(&Vote::new(term, me)));
    db.db.write_opt(batch, &synced()).map_err(rocks_err)?;
    Ok(Restored {
        info: scanned.info,
        records,
        applied,
    })
}
