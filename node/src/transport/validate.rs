//! Checks on the Raft requests peers send, before openraft sees them.
//!
//! openraft trusts a request once its vote is at least the local one: a well-formed but invalid
//! request (entries that do not follow `prev_log_id`, terms above the sender's vote, a commit
//! index that contradicts the entries, an index at `u64::MAX`) reaches an `assert!`, an `unwrap`
//! or an overflow check inside it, and the Raft core stops; or it silently corrupts the core's
//! view of the log. The rules below make every such path unreachable; they were derived from
//! openraft 0.10.0-alpha.37's source (engine, following handler, vote handler, log id list) and
//! must be re-checked when openraft is upgraded. A request that breaks one is refused with a
//! typed failure and logged; the node carries on.
//!
//! `from` is the sender's id from the handshake. It is self-declared until peer authentication
//! exists, so these rules stop buggy, confused or stale peers, not an attacker who is a member.
//!
//! Left out: rules that need the local log (openraft checks `prev_log_id` against it), and the
//! lease, which openraft enforces.

use std::cmp::Ordering;

use crate::raft::types::AppendEntriesRequest;
use crate::raft::types::EntryPayload;
use crate::raft::types::LeaderId;
use crate::raft::types::LogId;
use crate::raft::types::Membership;
use crate::raft::types::NodeId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::TransferLeaderRequest;
use crate::raft::types::Vote;
use crate::raft::types::VoteRequest;

/// Every term and index a peer sends stays below this, so openraft's `term + 1` and `index + 1`
/// never overflow (2^62 entries is far beyond any real log).
pub const BOUND: u64 = 1 << 62;

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

fn leader_ok(l: &LeaderId) -> bool {
    l.term < BOUND
}

fn log_id_ok(x: &LogId) -> bool {
    x.index < BOUND && leader_ok(&x.leader_id)
}

/// Index order and leader order of two log ids do not contradict each other (openraft orders
/// log ids by leader, then index, and assumes a later leader never has a smaller index).
fn consistent(a: &LogId, b: &LogId) -> bool {
    match a.index.cmp(&b.index) {
        Ordering::Less => a.leader_id <= b.leader_id,
        Ordering::Equal => a == b,
        Ordering::Greater => a.leader_id >= b.leader_id,
    }
}

/// A membership openraft can work with: one or two (joint) configs, none empty, every voter
/// with a node entry.
fn membership_ok(m: &Membership) -> Result<(), Invalid> {
    let configs = m.get_joint_config();
    if !(1..=2).contains(&configs.len()) || configs.iter().any(|c| c.is_empty()) {
        return Err(invalid(format!(
            "a membership needs one or two non-empty configs, not {configs:?}"
        )));
    }
    if let Some(id) = configs.iter().flatten().find(|id| m.get_node(id).is_none()) {
        return Err(invalid(format!(
            "voter {id} has no node entry in the membership"
        )));
    }
    Ok(())
}

/// The sender speaks for itself, not for us, and is a leader or candidate under its own id.
fn sender_ok(vote: &Vote, from: NodeId, me: NodeId) -> Result<(), Invalid> {
    if !leader_ok(&vote.leader_id) {
        return Err(invalid(format!(
            "term {} is out of range",
            vote.leader_id.term
        )));
    }
    if vote.leader_id.node_id != from {
        return Err(invalid(format!(
            "node {from} sent a vote for node {}",
            vote.leader_id.node_id
        )));
    }
    if from == me {
        return Err(invalid("a request from this node's own id"));
    }
    Ok(())
}

/// AppendEntries. `local_committed` is this node's committed log id, if known.
pub fn append_entries(req: &AppendEntriesRequest, from: NodeId, me: NodeId) -> Result<(), Invalid> {
    sender_ok(&req.vote, from, me)?;
    if !req.vote.committed {
        return Err(invalid("entries under a vote that is not committed"));
    }
    let leader = &req.vote.leader_id;
    if let Some(prev) = &req.prev_log_id {
        if !log_id_ok(prev) || prev.leader_id > *leader {
            return Err(invalid(format!("prev_log_id {prev} is out of range")));
        }
    }
    let first = req.prev_log_id.map_or(Some(0), |p| p.index.checked_add(1));
    let mut last_leader = req.prev_log_id.map(|p| p.leader_id);
    for (i, entry) in req.entries.iter().enumerate() {
        let want = first.and_then(|f| f.checked_add(i as u64));
        if !log_id_ok(&entry.log_id) || Some(entry.log_id.index) != want {
            return Err(invalid(format!(
                "entry {i} has log id {} where index {want:?} follows",
                entry.log_id
            )));
        }
        if last_leader.is_some_and(|l| entry.log_id.leader_id < l)
            || entry.log_id.leader_id > *leader
        {
            return Err(invalid(format!(
                "entry {} goes back in term or is ahead of the sender's vote",
                entry.log_id
            )));
        }
        last_leader = Some(entry.log_id.leader_id);
        if let EntryPayload::Membership(m) = &entry.payload {
            membership_ok(m)?;
        }
    }
    if let Some(commit) = &req.leader_commit {
        if !log_id_ok(commit) || commit.leader_id > *leader {
            return Err(invalid(format!("leader_commit {commit} is out of range")));
        }
        let covered = req.entries.iter().find(|e| e.log_id.index == commit.index);
        match covered {
            Some(e) if e.log_id != *commit => {
                return Err(invalid(format!(
                    "leader_commit {commit} contradicts entry {}",
                    e.log_id
                )))
            }
            Some(_) => {}
            None => {
                let contradicts = req
                    .prev_log_id
                    .iter()
                    .chain(req.entries.last().map(|e| &e.log_id))
                    .any(|x| !consistent(commit, x));
                if contradicts {
                    return Err(invalid(format!(
                        "leader_commit {commit} contradicts the entries sent"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Vote and PreVote. Returns the request to pass on: `leadership_transfer` (which bypasses the
/// leader lease) is kept only when `transfer_allowed` says our leader asked for this election.
pub fn vote(
    mut req: VoteRequest,
    from: NodeId,
    me: NodeId,
    transfer_allowed: bool,
) -> Result<VoteRequest, Invalid> {
    sender_ok(&req.vote, from, me)?;
    if req.vote.committed {
        return Err(invalid("a vote request with a committed vote"));
    }
    if req.vote.leader_id.term == 0 {
        return Err(invalid("a candidate at term 0"));
    }
    if let Some(last) = &req.last_log_id {
        if !log_id_ok(last) || last.leader_id >= req.vote.leader_id {
            return Err(invalid(format!(
                "the candidate's last log id {last} is not below its vote"
            )));
        }
    }
    if req.leadership_transfer && !transfer_allowed {
        req.leadership_transfer = false;
    }
    Ok(req)
}

/// TransferLeader: from our leader, for a voter of `membership`.
pub fn transfer_leader(
    req: &TransferLeaderRequest,
    from: NodeId,
    me: NodeId,
    membership: &Membership,
) -> Result<(), Invalid> {
    let vote = req.from_leader();
    sender_ok(vote, from, me)?;
    if !vote.committed {
        return Err(invalid(
            "a leader transfer from a vote that is not committed",
        ));
    }
    let to = *req.to_node_id();
    if !membership.voter_ids().any(|v| v == to) {
        return Err(invalid(format!("node {to} is not a voter")));
    }
    if let Some(last) = req.last_log_id() {
        if !log_id_ok(last) || last.leader_id > vote.leader_id {
            return Err(invalid(format!("last_log_id {last} is out of range")));
        }
    }
    Ok(())
}

/// A snapshot chunk's vote, checked on every chunk before anything is written: the sender's own,
/// committed, with a term in range. The whole snapshot is checked by [`snapshot`] once it has
/// arrived.
pub fn snapshot_chunk(vote: &Vote, from: NodeId, me: NodeId) -> Result<(), Invalid> {
    if vote.leader_id.node_id != from
        || from == me
        || !vote.committed
        || !leader_ok(&vote.leader_id)
    {
        return Err(invalid(format!(
            "a snapshot chunk from node {from} under vote {vote}"
        )));
    }
    Ok(())
}

/// A complete snapshot sent under `vote`. `local_committed` is this node's committed log id.
pub fn snapshot(
    vote: &Vote,
    meta: &SnapshotMeta,
    from: NodeId,
    me: NodeId,
    local_committed: Option<LogId>,
) -> Result<(), Invalid> {
    sender_ok(vote, from, me)?;
    if !vote.committed {
        return Err(invalid("a snapshot under a vote that is not committed"));
    }
    let Some(last) = &meta.last_log_id else {
        return Err(invalid("a snapshot without a last log id"));
    };
    if !log_id_ok(last) || last.leader_id > vote.leader_id {
        return Err(invalid(format!(
            "snapshot last log id {last} is out of range"
        )));
    }
    let Some(m) = meta.last_membership.log_id() else {
        return Err(invalid("a snapshot whose membership has no log id"));
    };
    if !log_id_ok(m) || m.index > last.index || !consistent(m, last) {
        return Err(invalid(format!(
            "the snapshot's membership log id {m} is not at or before its last log id {last}"
        )));
    }
    membership_ok(meta.last_membership.membership())?;
    if let Some(c) = local_committed {
        if last.index <= c.index && *last > c {
            return Err(invalid(format!(
                "snapshot {last} contradicts the committed log id {c} of this node"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use super::*;
    use crate::raft::types::Entry;
    use crate::raft::types::NodeInfo;
    use crate::raft::types::StoredMembership;

    fn lid(term: u64, node: u64, index: u64) -> LogId {
        openraft::testing::log_id::<crate::raft::types::TypeConfig>(term, node, index)
    }

    fn blank(log_id: LogId) -> Entry {
        Entry {
            log_id,
            payload: EntryPayload::Blank,
        }
    }

    fn members() -> Membership {
        let nodes: BTreeMap<u64, NodeInfo> = (1..=3).map(|i| (i, NodeInfo::default())).collect();
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap()
    }

    fn append(
        prev: Option<LogId>,
        entries: Vec<Entry>,
        commit: Option<LogId>,
    ) -> AppendEntriesRequest {
        AppendEntriesRequest {
            vote: Vote::new_committed(5, 1),
            prev_log_id: prev,
            entries,
            leader_commit: commit,
        }
    }

    #[test]
    fn a_valid_append_and_heartbeat_pass() {
        let ok = append(
            Some(lid(4, 1, 9)),
            vec![blank(lid(4, 1, 10)), blank(lid(5, 1, 11))],
            Some(lid(4, 1, 10)),
        );
        assert_eq!(append_entries(&ok, 1, 2), Ok(()));
        // A heartbeat to a lagging follower: the commit is ahead of prev, and consistent.
        let hb = append(Some(lid(3, 1, 4)), vec![], Some(lid(5, 1, 50)));
        assert_eq!(append_entries(&hb, 1, 2), Ok(()));
        assert_eq!(append_entries(&append(None, vec![], None), 1, 2), Ok(()));
    }

    #[test]
    fn invalid_appends_are_refused() {
        let cases = [
            // Entries that do not follow prev, or skip an index.
            append(Some(lid(4, 1, 9)), vec![blank(lid(4, 1, 11))], None),
            append(None, vec![blank(lid(4, 1, 3))], None),
            append(
                Some(lid(4, 1, 9)),
                vec![blank(lid(4, 1, 10)), blank(lid(4, 1, 12))],
                None,
            ),
            // A term that goes back, or is above the vote.
            append(
                Some(lid(4, 1, 9)),
                vec![blank(lid(4, 1, 10)), blank(lid(3, 1, 11))],
                None,
            ),
            append(Some(lid(4, 1, 9)), vec![blank(lid(6, 1, 10))], None),
            append(Some(lid(6, 1, 9)), vec![], None),
            // An index where +1 overflows.
            append(Some(lid(4, 1, u64::MAX)), vec![], None),
            append(
                Some(lid(4, 1, BOUND)),
                vec![blank(lid(4, 1, BOUND + 1))],
                None,
            ),
            // A commit with a lower term but a higher index than the entries (openraft would
            // apply entries that do not exist).
            append(
                Some(lid(5, 1, 9)),
                vec![blank(lid(5, 1, 10))],
                Some(lid(4, 1, 50)),
            ),
            // A commit that contradicts an entry it covers.
            append(
                Some(lid(4, 1, 9)),
                vec![blank(lid(5, 1, 10))],
                Some(lid(4, 1, 10)),
            ),
        ];
        for (i, req) in cases.iter().enumerate() {
            assert!(
                append_entries(req, 1, 2).is_err(),
                "case {i} should be refused"
            );
        }
        let mut uncommitted = append(None, vec![], None);
        uncommitted.vote = Vote::new(5, 1);
        assert!(append_entries(&uncommitted, 1, 2).is_err());
        // Someone else's vote, or our own.
        assert!(append_entries(&append(None, vec![], None), 3, 2).is_err());
        assert!(append_entries(&append(None, vec![], None), 1, 1).is_err());
        let mut huge = append(None, vec![], None);
        huge.vote = Vote::new_committed(u64::MAX, 1);
        assert!(append_entries(&huge, 1, 2).is_err());
        // A membership entry whose voter has no node (openraft's own constructor refuses to
        // build one, but decoding a peer's bytes does not).
        #[derive(serde::Serialize)]
        struct RawMembership {
            configs: Vec<BTreeSet<u64>>,
            nodes: BTreeMap<u64, NodeInfo>,
        }
        let raw = RawMembership {
            configs: vec![BTreeSet::from([1, 9])],
            nodes: BTreeMap::new(),
        };
        let bad: Membership = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
        let req = append(
            None,
            vec![Entry {
                log_id: lid(5, 1, 0),
                payload: EntryPayload::Membership(bad),
            }],
            None,
        );
        assert!(append_entries(&req, 1, 2).is_err());
    }

    #[test]
    fn votes_are_checked_and_unauthorised_transfers_downgraded() {
        let req = |term, committed, last: Option<LogId>, transfer| VoteRequest {
            vote: if committed {
                Vote::new_committed(term, 3)
            } else {
                Vote::new(term, 3)
            },
            last_log_id: last,
            leadership_transfer: transfer,
        };
        assert!(vote(req(6, false, Some(lid(5, 1, 9)), false), 3, 2, false).is_ok());
        assert!(vote(req(6, true, None, false), 3, 2, false).is_err());
        assert!(vote(req(0, false, None, false), 3, 2, false).is_err());
        assert!(vote(req(6, false, Some(lid(6, 3, 9)), false), 3, 2, false).is_err());
        assert!(vote(req(u64::MAX, false, None, false), 3, 2, false).is_err());
        assert!(vote(req(6, false, None, false), 1, 2, false).is_err());
        let passed = vote(req(6, false, None, true), 3, 2, false).unwrap();
        assert!(!passed.leadership_transfer);
        assert!(
            vote(req(6, false, None, true), 3, 2, true)
                .unwrap()
                .leadership_transfer
        );
    }

    #[test]
    fn snapshot_chunk_votes_are_checked() {
        assert!(snapshot_chunk(&Vote::new_committed(5, 1), 1, 2).is_ok());
        // Not committed, someone else's, our own, or a term out of range.
        assert!(snapshot_chunk(&Vote::new(5, 1), 1, 2).is_err());
        assert!(snapshot_chunk(&Vote::new_committed(5, 3), 1, 2).is_err());
        assert!(snapshot_chunk(&Vote::new_committed(5, 2), 2, 2).is_err());
        assert!(snapshot_chunk(&Vote::new_committed(BOUND, 1), 1, 2).is_err());
    }

    #[test]
    fn snapshots_are_checked() {
        let meta = |last: Option<LogId>, m: Option<LogId>| SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(m, members()),
        };
        let v = Vote::new_committed(5, 1);
        assert!(snapshot(
            &v,
            &meta(Some(lid(5, 1, 20)), Some(lid(1, 1, 0))),
            1,
            2,
            None
        )
        .is_ok());
        // Ahead of the vote (an assert in openraft), or the membership after the last log id.
        assert!(snapshot(
            &v,
            &meta(Some(lid(6, 1, 20)), Some(lid(1, 1, 0))),
            1,
            2,
            None
        )
        .is_err());
        assert!(snapshot(
            &v,
            &meta(Some(lid(5, 1, 20)), Some(lid(5, 1, 21))),
            1,
            2,
            None
        )
        .is_err());
        assert!(snapshot(&v, &meta(None, None), 1, 2, None).is_err());
        // A higher term at an index this node already committed (another openraft assert).
        let committed = Some(lid(4, 1, 30));
        assert!(snapshot(
            &v,
            &meta(Some(lid(5, 1, 20)), Some(lid(1, 1, 0))),
            1,
            2,
            committed
        )
        .is_err());
        assert!(snapshot(
            &Vote::new(5, 1),
            &meta(Some(lid(5, 1, 20)), None),
            1,
            2,
            None
        )
        .is_err());
    }
}
