//! `metrokv-node recover --force-new-cluster`: turn the data directory of a surviving node into
//! a one-node cluster that keeps all its data, after the other members are gone for good (a
//! zone lost with its disks).
//!
//! Raft cannot do this by itself: with the majority gone, no leader can be elected, and the
//! entries the survivor holds beyond the commit index it knows cannot be committed. The tool
//! appends, offline, one membership entry naming only this node, in a term above every term the
//! directory has seen, and records this node's vote for that term. At the next start openraft
//! finds itself the only voter, elects itself and commits everything in its log: every write
//! the survivor persisted (with zone-safe acknowledgement: every acknowledged write) is kept.
//! New members then join it as learners.
//!
//! It is only safe when the old members will never come back with their data: two clusters
//! would then accept writes under the same name. The binary probes the old members first and
//! refuses while any of them answers (see `bin/metrokv-node.rs`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;

use super::decode;
use super::encode;
use super::keys;
use super::rocks_err;
use super::synced;
use super::Db;
use crate::raft::types::Entry;
use crate::raft::types::EntryPayload;
use crate::raft::types::LeaderId;
use crate::raft::types::LogId;
use crate::raft::types::Membership;
use crate::raft::types::NodeId;
use crate::raft::types::NodeInfo;
use crate::raft::types::RaftLeaderId as _;
use crate::raft::types::StoredMembership;
use crate::raft::types::Vote;
use crate::state_machine::ZoneRecord;

/// What the data directory held, and what the recovery wrote.
#[derive(Debug)]
pub struct Recovered {
    /// The members the directory knew before.
    pub old_members: BTreeMap<NodeId, NodeInfo>,
    /// The last entry of the log before the recovery, and the last applied one.
    pub last_log_id: Option<LogId>,
    pub applied: Option<LogId>,
    /// The membership entry written: this node alone.
    pub new_entry: LogId,
    /// The zone record as of the last applied entry: if it says degraded, acknowledgements
    /// above its index rested on one zone.
    pub zones: ZoneRecord,
}

/// The members the directory knows: the latest membership entry of its log, else the applied
/// membership.
pub fn known_members(db: &Db) -> io::Result<BTreeMap<NodeId, NodeInfo>> {
    let cf = db.cf(keys::CF_LOG);
    let mut it = db.db.raw_iterator_cf(cf);
    it.seek_to_last();
    while let Some(bytes) = it.value() {
        let entry: Entry = decode(bytes, "log entry")?;
        if let EntryPayload::Membership(m) = &entry.payload {
            return Ok(nodes_of(m));
        }
        it.prev();
    }
    it.status().map_err(rocks_err)?;
    let stored: StoredMembership = match db
        .db
        .get_pinned_cf(db.cf(keys::CF_SM), keys::SM_MEMBERSHIP)
        .map_err(rocks_err)?
    {
        Some(b) => decode(&b, "membership")?,
        None => StoredMembership::default(),
    };
    Ok(nodes_of(stored.membership()))
}

fn nodes_of(m: &Membership) -> BTreeMap<NodeId, NodeInfo> {
    m.nodes().map(|(id, n)| (*id, n.clone())).collect()
}

fn get<T: serde::de::DeserializeOwned>(
    db: &Db,
    cf: &str,
    key: &[u8],
    what: &str,
) -> io::Result<Option<T>> {
    match db.db.get_pinned_cf(db.cf(cf), key).map_err(rocks_err)? {
        Some(b) => Ok(Some(decode(&b, what)?)),
        None => Ok(None),
    }
}

/// Make `me` the only voter of the cluster stored in `db`, keeping every entry (see the module
/// comment). Written with one synced batch: after a crash either nothing or all of it happened.
pub fn force_new_cluster(db: &Db, me: NodeId) -> io::Result<Recovered> {
    let old_members = known_members(db)?;
    let Some(info) = old_members.get(&me).cloned() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("node {me} is not a member of the cluster this data directory belongs to"),
        ));
    };
    let vote: Option<Vote> = get(db, keys::CF_RAFT, keys::RAFT_VOTE, "vote")?;
    let purged: Option<LogId> = get(db, keys::CF_RAFT, keys::RAFT_PURGED, "purged log id")?;
    let applied: Option<LogId> =
        get::<Option<LogId>>(db, keys::CF_SM, keys::SM_APPLIED, "applied log id")?.flatten();
    let mut it = db.db.raw_iterator_cf(db.cf(keys::CF_LOG));
    it.seek_to_last();
    it.status().map_err(rocks_err)?;
    let last_entry = match it.value() {
        Some(bytes) => Some(decode::<Entry>(bytes, "log entry")?.log_id),
        None => None,
    };
    drop(it);
    let last_log_id = last_entry.or(purged).or(applied);
    let last_index = [last_log_id, applied]
        .iter()
        .flatten()
        .map(|l| l.index)
        .max();
    let terms = [
        vote.as_ref().map(|v| v.leader_id.term),
        last_log_id.as_ref().map(|l| l.leader_id.term),
        applied.as_ref().map(|l| l.leader_id.term),
    ];
    let term = terms.into_iter().flatten().max().unwrap_or(0) + 1;
    let index = last_index.map_or(0, |i| i + 1);
    let membership = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, info.clone())]),
    )
    .map_err(|e| io::Error::other(format!("cannot build the new membership: {e}")))?;
    let new_entry = LogId::new(LeaderId::new(term, me), index);
    let entry = Entry {
        log_id: new_entry,
        payload: EntryPayload::Membership(membership),
    };
    let zones: ZoneRecord =
        get(db, keys::CF_SM, keys::SM_ZONES, "zone record")?.unwrap_or_default();
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        db.cf(keys::CF_LOG),
        keys::log_key(new_entry.index),
        encode(&entry),
    );
    batch.put_cf(
        db.cf(keys::CF_RAFT),
        keys::RAFT_VOTE,
        encode(&Vote::new(term, me)),
    );
    db.db.write_opt(batch, &synced()).map_err(rocks_err)?;
    Ok(Recovered {
        old_members,
        last_log_id,
        applied,
        new_entry,
        zones,
    })
}
