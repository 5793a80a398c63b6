//! Membership changes and leader transfers. They are made by the leader; a follower forwards
//! them over the peer transport (as it does writes), so any member takes them.
//!
//! - A new node joins as a learner (it copies the log or a snapshot and votes on nothing), and
//!   becomes a voter only once it has caught up, so adding a member never leaves the cluster
//!   waiting on a node that has nothing. A node started with `--learner` is never promoted.
//! - Removing a voter is refused when the voters left would sit in fewer zones than zone safety
//!   needs (unless forced), or when none would be left. Removing the leader hands leadership to
//!   a caught-up voter first, and the new leader makes the change: no election gap.
//! - A transfer moves leadership to a caught-up voter, never to a witness.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::route::Step;
use super::Service;
use crate::config::NodeRole;
use crate::limits;
use crate::raft::ChangeMembers;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::ServerState;
use crate::raft::WatchReceiver as _;
use crate::state_machine::ZoneSafety;
use crate::transport::client::PeerClient;
pub use crate::transport::codec::MembershipCall;
pub use crate::transport::codec::MembershipError;
pub use crate::transport::codec::MembershipState;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;

/// How long a membership call may take: a change commits twice (joint, then final).
fn call_budget(service: &Service) -> Duration {
    Duration::from_millis(service.timeouts.write_timeout_ms * 2)
}

impl Service {
    /// Make `call` at the leader, here or forwarded.
    pub async fn membership(
        &self,
        call: MembershipCall,
    ) -> Result<MembershipState, MembershipError> {
        let deadline = Instant::now() + call_budget(self);
        let local = || async {
            match self.membership_local(call.clone(), deadline).await {
                Ok(state) => Step::Done(state),
                Err(e) if e.leader_moved() => Step::LeaderMoved(e.to_string()),
                Err(e) => Step::Fail(e),
            }
        };
        let remote = |client: PeerClient, l: NodeId, budget: Duration| {
            let request = PeerRequest::Membership(call.clone());
            async move {
                match client.call(request, budget).await {
                    Ok(PeerResponse::Membership(Ok(state))) => Step::Done(state),
                    Ok(PeerResponse::Membership(Err(e))) if e.leader_moved() => {
                        Step::LeaderMoved(e.to_string())
                    }
                    Ok(PeerResponse::Membership(Err(e))) => Step::Fail(e),
                    Ok(other) => Step::Fail(MembershipError::Raft(format!(
                        "leader {l} answered {other:?}"
                    ))),
                    Err(e) if e.not_sent() => Step::Unreachable(e.to_string()),
                    Err(e) => Step::Fail(MembershipError::Raft(format!(
                        "forwarded to leader {l}: {e}; the change may or may not have been made, GET /v1/cluster shows which"
                    ))),
                }
            }
        };
        let (state, _) = self
            .at_leader(deadline, local, remote, MembershipError::NoLeader)
            .await?;
        Ok(state)
    }

    /// Make `call` as leader (a follower answers `NotLeader`).
    pub(super) async fn membership_local(
        &self,
        call: MembershipCall,
        deadline: Instant,
    ) -> Result<MembershipState, MembershipError> {
        if self.leader_in_contact() != Some(self.id()) {
            return Err(MembershipError::NotLeader(self.leader_in_contact()));
        }
        match call {
            MembershipCall::AddLearner { id, info } => self.add_learner(id, info).await?,
            MembershipCall::Promote { id } => self.promote(id).await?,
            MembershipCall::Remove { id, force } => self.remove(id, force, deadline).await?,
            MembershipCall::TransferLeader { to: Some(to) } if to == self.id() => {
                if self.role() == NodeRole::Witness {
                    return Err(MembershipError::CannotLead(
                        to,
                        "it is a witness (it serves no clients)".into(),
                    ));
                }
            }
            MembershipCall::TransferLeader { to } => self.transfer_leader(to, deadline).await?,
        }
        Ok(self.membership_state())
    }

    async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), MembershipError> {
        if self.members().contains_key(&id) {
            return Err(MembershipError::AlreadyMember(id));
        }
        // A forwarded call comes from a peer: check it as the API checks a posted member.
        crate::config::check_member(id, &info)
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        self.raft
            .add_learner(id, info, false)
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Raft(e.to_string()))
    }

    /// How far member `id`'s log matches the leader's, and the leader's last index.
    fn matched(&self, id: NodeId) -> (Option<u64>, u64) {
        let m = self.metrics();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index());
        (matched, last)
    }

    /// Make learner `id` a voter, if it has caught up with the leader's log (within
    /// [`limits::PROMOTE_LAG_ENTRIES_MAX`]) and was not started as a remote learner.
    async fn promote(&self, id: NodeId) -> Result<(), MembershipError> {
        let (_, learners) = self.membership_ids();
        if !learners.contains(&id) {
            return Err(MembershipError::NotALearner(id));
        }
        if self.role_of(id).await == Some(NodeRole::Learner) {
            return Err(MembershipError::RemoteLearner(id));
        }
        let (matched, last) = self.matched(id);
        if matched.is_none_or(|i| i + limits::PROMOTE_LAG_ENTRIES_MAX < last) {
            return Err(MembershipError::NotCaughtUp { id, matched, last });
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Remove member `id` (see the module doc for what is refused).
    async fn remove(
        &self,
        id: NodeId,
        force: bool,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let (voters, learners) = self.membership_ids();
        if learners.contains(&id) {
            return self
                .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await;
        }
        if !voters.contains(&id) {
            return Err(MembershipError::NotAMember(id));
        }
        let left: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if left.is_empty() {
            return Err(MembershipError::LastVoter(id));
        }
        if !force {
            self.check_zones_after_removal(id, &left).await?;
        }
        if id == self.id() {
            // The next leader removes us: hand over, then the call goes there.
            self.transfer_leader(None, deadline).await?;
            return Err(MembershipError::NotLeader(self.leader_in_contact()));
        }
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await
    }

    /// Commit a membership change (joint, then final configuration).
    async fn change(&self, change: ChangeMembers<NodeId, NodeInfo>) -> Result<(), MembershipError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Raft(e.to_string()))
    }

    /// Refuse a removal after which the voters span one zone while zone safety is on and they
    /// span two or more now.
    async fn check_zones_after_removal(
        &self,
        id: NodeId,
        left: &[NodeId],
    ) -> Result<(), MembershipError> {
        let record = self.reader.zones().await.unwrap_or_default();
        if record.mode == ZoneSafety::Off || self.single_zone() {
            return Ok(());
        }
        let members = self.members();
        let zones: BTreeSet<&str> = left
            .iter()
            .filter_map(|v| members.get(v).map(|n| n.zone.as_str()))
            .collect();
        match zones.iter().next() {
            Some(zone) if zones.len() == 1 => Err(MembershipError::BreaksZoneSafety {
                id,
                zone: zone.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// As leader: hand leadership to `requested` (or, given `None`, the best candidate), and
    /// wait until it took it.
    ///
    /// A transfer can miss: the target may refuse it (its log not flushed in time), and while
    /// this leader stops heartbeating for the hand-over, another voter's election may win, or
    /// this node may win again. So the outcome is read from who leads afterwards: the target
    /// (done), another node (done if any target would do, else `NotLeader`, and the call is
    /// retried at that leader), or this node in a later term (the transfer is made again).
    pub(super) async fn transfer_leader(
        &self,
        requested: Option<NodeId>,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let mut metrics = self.raft.metrics();
        'transfer: loop {
            let to = match requested {
                Some(to) => {
                    self.check_can_lead(to).await?;
                    to
                }
                None => self.transfer_target(None).await?,
            };
            let term = self.metrics().current_term;
            tracing::info!(to, term, "handing leadership over");
            self.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
            loop {
                let m = self.metrics();
                match (m.state == ServerState::Leader, m.current_leader) {
                    (false, Some(l)) if l == to || (requested.is_none() && l != self.id()) => {
                        return Ok(())
                    }
                    (false, Some(l)) if l != self.id() => {
                        return Err(MembershipError::NotLeader(Some(l)))
                    }
                    (true, _) if m.current_term > term => {
                        tracing::info!(
                            to,
                            term = m.current_term,
                            "won leadership again during a hand-over; handing over again"
                        );
                        continue 'transfer;
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    return Err(MembershipError::TransferTimedOut(to, self.id()));
                }
                let step = Duration::from_millis(self.timeouts.heartbeat_interval_ms.max(1));
                let next = (Instant::now() + step).min(deadline);
                let _ = tokio::time::timeout_at(next, metrics.changed()).await;
            }
        }
    }

    /// The first step of a graceful shutdown: say not ready, and as leader hand leadership to a
    /// caught-up voter, so the cluster does not wait an election timeout for a new leader. The
    /// node still serves meanwhile (writes reach the new leader by forwarding). A hand-over that
    /// cannot be made (no other voter caught up) is logged and the node stops anyway: the others
    /// elect a leader as after a crash.
    pub async fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        if self.metrics().state != ServerState::Leader {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(limits::DRAIN_HANDOVER_MS);
        // A voter that just restarted may still be catching up: try until the deadline.
        loop {
            let error = match self.transfer_leader(None, deadline).await {
                Ok(()) => {
                    tracing::info!(
                        leader = ?self.metrics().current_leader,
                        "leadership handed over before shutting down"
                    );
                    return;
                }
                Err(e) => e,
            };
            let retry = matches!(error, MembershipError::NoTransferTarget(_))
                && self.metrics().state == ServerState::Leader;
            if !retry || Instant::now() >= deadline {
                tracing::warn!(error = %error, "could not hand leadership over before shutting down; the others will elect a leader");
                return;
            }
            tokio::time::sleep(Duration::from_millis(
                self.timeouts.heartbeat_interval_ms.max(1),
            ))
            .await;
        }
    }

    /// Whether voter `to` may take leadership now: a voter, not a witness, with every entry.
    async fn check_can_lead(&self, to: NodeId) -> Result<(), MembershipError> {
        let (voters, _) = self.membership_ids();
        if !voters.contains(&to) {
            return Err(MembershipError::CannotLead(to, "it is not a voter".into()));
        }
        let (matched, last) = self.matched(to);
        if matched.is_none_or(|i| i + limits::TRANSFER_LAG_ENTRIES_MAX < last) {
            return Err(MembershipError::CannotLead(
                to,
                format!("it has entries up to {matched:?} of the leader's {last}"),
            ));
        }
        if self.role_of(to).await == Some(NodeRole::Witness) {
            return Err(MembershipError::CannotLead(
                to,
                "it is a witness (it serves no clients)".into(),
            ));
        }
        Ok(())
    }

    /// The voter to hand leadership to: caught up and not a witness, in `zone` if given and
    /// possible, else in this leader's zone, else anywhere.
    pub(super) async fn transfer_target(
        &self,
        zone: Option<&str>,
    ) -> Result<NodeId, MembershipError> {
        let (voters, _) = self.membership_ids();
        let members = self.members();
        let my_zone = members.get(&self.id()).map(|n| n.zone.clone());
        let mut best: Option<(u8, NodeId)> = None;
        for v in voters.into_iter().filter(|v| *v != self.id()) {
            if self.check_can_lead(v).await.is_err() {
                continue;
            }
            let z = members.get(&v).map(|n| n.zone.as_str());
            let rank = if zone.is_some() && z == zone {
                0
            } else if z == my_zone.as_deref() {
                1
            } else {
                2
            };
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, v));
            }
        }
        best.map(|(_, v)| v).ok_or_else(|| {
            MembershipError::NoTransferTarget(
                "no other voter is reachable, caught up and able to serve".into(),
            )
        })
    }

    /// A member's role, from its own status (`None` when it does not answer).
    async fn role_of(&self, id: NodeId) -> Option<NodeRole> {
        if id == self.id() {
            return Some(self.role());
        }
        let node = self.member_addr(id)?;
        self.peer_status(id, &node)
            .await
            .map(|s| role_of_status(&s.role))
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

    pub fn membership_state(&self) -> MembershipState {
        let (voters, learners) = self.membership_ids();
        MembershipState {
            voters,
            learners,
            leader: self.metrics().current_leader,
        }
    }
}

/// The role a member's status names (see `status::role_name`).
fn role_of_status(role: &str) -> NodeRole {
    match role {
        super::status::WITNESS => NodeRole::Witness,
        super::status::REMOTE_LEARNER => NodeRole::Learner,
        _ => NodeRole::Voter,
    }
}
