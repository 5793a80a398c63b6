//! Membership changes, on the leader: a new node joins as a learner (it copies the log or a
//! snapshot and votes on nothing), and becomes a voter only once it has caught up, so adding a
//! member never leaves the cluster waiting on a node that has nothing.
//!
//! Left out: removing members, and forwarding from a follower (the answer names the leader).

use std::collections::BTreeSet;

use super::Service;
use crate::limits;
use crate::raft::ChangeMembers;
use crate::raft::NodeId;
use crate::raft::NodeInfo;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("membership changes are made on the leader; this node is not it (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a learner of this cluster")]
    NotALearner(NodeId),
    #[error("node {id} has entries up to {matched:?} of the leader's {last}; promote it once it has caught up")]
    NotCaughtUp {
        id: NodeId,
        matched: Option<u64>,
        last: u64,
    },
    #[error("{0}")]
    Raft(String),
}

impl Service {
    fn lead_membership(&self) -> Result<(), MembershipError> {
        match self.leader_in_contact() {
            Some(l) if l == self.id() => Ok(()),
            other => Err(MembershipError::NotLeader(other)),
        }
    }

    /// Add `id` as a learner. Returns once the change is committed; the learner then catches
    /// up in the background.
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), MembershipError> {
        self.lead_membership()?;
        if self.members().contains_key(&id) {
            return Err(MembershipError::AlreadyMember(id));
        }
        self.raft
            .add_learner(id, info, false)
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Raft(e.to_string()))
    }

    /// Make learner `id` a voter, if it has caught up with the leader's log (within
    /// [`limits::PROMOTE_LAG_ENTRIES_MAX`]).
    pub async fn promote(&self, id: NodeId) -> Result<(), MembershipError> {
        self.lead_membership()?;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if !membership.learner_ids().any(|l| l == id) {
            return Err(MembershipError::NotALearner(id));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index());
        if matched.is_none_or(|i| i + limits::PROMOTE_LAG_ENTRIES_MAX < last) {
            return Err(MembershipError::NotCaughtUp { id, matched, last });
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Raft(e.to_string()))
    }

    /// The voters and the learners, as Raft knows them now.
    pub fn membership_ids(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    }
}
