//! What a node says about itself and the cluster (`/v1/cluster`, `/ready`, peers' status
//! queries), and the background tasks that watch the cluster: leader changes, and the leader
//! recording members' storage ids.

use std::sync::Arc;
use std::time::Duration;

use super::Service;
use super::STORAGE_RECORD_INTERVAL;
use crate::config::NodeRole;
use crate::limits;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::ServerState;
use crate::raft::WatchReceiver as _;
use crate::state_machine::Command;
use crate::transport::codec::Channel;
use crate::transport::codec::NodeStatus;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;

impl Service {
    /// This node's own view, as reported to peers and in `/v1/cluster`.
    pub fn status(&self) -> NodeStatus {
        let m = self.metrics();
        NodeStatus {
            id: self.id(),
            role: role_name(&m.state, self.role()).to_string(),
            term: m.current_term,
            leader: self.leader_in_contact(),
            commit_index: m.local_committed.as_ref().map_or(0, |id| id.index),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index),
            initialized: self.raft_is_open()
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some(),
        }
    }

    /// Every member with its status, asking the others in parallel.
    pub async fn cluster(&self) -> Vec<(NodeId, NodeInfo, Option<NodeStatus>)> {
        let queries = self.members().into_iter().map(|(id, node)| async move {
            if id == self.id() {
                return (id, node, Some(self.status()));
            }
            let status = self.peer_status(id, &node).await;
            (id, node, status)
        });
        futures::future::join_all(queries).await
    }

    /// Member `id`'s own status, or `None` when it does not answer in time.
    pub(super) async fn peer_status(&self, id: NodeId, node: &NodeInfo) -> Option<NodeStatus> {
        let client = self.peers.client(id, &node.peer_addr, Channel::Forward);
        let timeout = Duration::from_millis(limits::PEER_STATUS_TIMEOUT_MS);
        match client.call(PeerRequest::Status, timeout).await {
            Ok(PeerResponse::Status(s)) => Some(s),
            _ => None,
        }
    }
}

/// The role a witness reports while it does not lead.
pub const WITNESS: &str = "witness";
/// The role a node started with `--learner` reports while it is a learner.
pub const REMOTE_LEARNER: &str = "remote_learner";

/// The role a node reports: its Raft state, or what it was started as.
pub fn role_name(state: &ServerState, role: NodeRole) -> &'static str {
    match (state, role) {
        (ServerState::Leader, _) => "leader",
        (ServerState::Shutdown, _) => "shutdown",
        (_, NodeRole::Witness) => WITNESS,
        (ServerState::Learner, NodeRole::Learner) => REMOTE_LEARNER,
        (ServerState::Follower, _) => "follower",
        (ServerState::Candidate, _) => "candidate",
        (ServerState::Learner, _) => "learner",
    }
}

/// While this node leads, record the storage ids of members met in handshakes that have no
/// record yet (see `storage::identity`). Runs until the Raft node shuts down.
pub fn spawn_storage_recorder(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_RECORD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if service.metrics().state == ServerState::Shutdown {
                return;
            }
            if service.leader_in_contact() != Some(service.id()) {
                continue;
            }
            let members = service.members();
            for (node, storage_id) in service.ids.unrecorded() {
                if !members.contains_key(&node) {
                    continue;
                }
                let command = Command::RecordStorage { node, storage_id };
                match service.write_local_now(command).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(refused)) => {
                        tracing::error!(node, %refused, "recording a member's storage id was refused")
                    }
                    Err(e) => {
                        tracing::debug!(node, error = %e, "recording a member's storage id will be retried")
                    }
                }
            }
        }
    });
}

/// Count leader changes and log them, until the Raft node shuts down.
pub fn spawn_leader_watch(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut rx = service.raft().metrics();
        let mut leader = rx.borrow_watched().current_leader;
        while rx.changed().await.is_ok() {
            let now = rx.borrow_watched().current_leader;
            if now != leader {
                tracing::info!(from = ?leader, to = ?now, term = rx.borrow_watched().current_term, "leader changed");
                metrics::counter!("metrokv_raft_leader_changes_total").increment(1);
                leader = now;
            }
        }
    });
}
