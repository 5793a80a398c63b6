//! The one place that assembles openraft: the type configuration, openraft's `Config` built from
//! ours, and the names of the openraft types the rest of the node uses.
//!
//! openraft is pinned to an exact 0.10 alpha (see README, "Design notes"); its API still moves
//! between alphas. Other modules import openraft items through the aliases and re-exports here,
//! so an upgrade is mostly a change to this file (the trait impls in `storage` and `transport`
//! follow the traits' signatures and move with them).

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

use crate::config::RaftTimeouts;
use crate::limits;
use crate::state_machine::Request;
use crate::state_machine::Response;

pub use openraft::error::ClientWriteError;
pub use openraft::error::RaftError;
pub use openraft::storage::IOFlushed;
pub use openraft::storage::LogState;
pub use openraft::storage::RaftLogReader;
pub use openraft::storage::RaftLogStorage;
pub use openraft::storage::RaftSnapshotBuilder;
pub use openraft::storage::RaftStateMachine;
pub use openraft::ReadPolicy;
pub use openraft::ServerState;

/// A node id. Nodes are numbered from 1; the scripts call node 1 `n1`.
pub type NodeId = u64;

/// What the cluster knows about a member, replicated in the membership config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub zone: String,
    /// host:port of the HTTP API.
    pub client_addr: String,
    /// host:port of the peer transport.
    pub peer_addr: String,
}

openraft::declare_raft_types!(
    /// metrokv's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateStore>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<Request, NodeId, NodeInfo>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::storage::SnapshotFile>;
pub type EntryResponder = openraft::storage::EntryResponder<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
pub type RpcError = openraft::error::RPCError<TypeConfig>;
pub type StreamingError = openraft::error::StreamingError<TypeConfig>;
pub type Fatal = openraft::error::Fatal<TypeConfig>;

/// openraft's `Config` from ours. The units live in our names; openraft keeps them in docs.
pub fn openraft_config(
    cluster_name: &str,
    t: &RaftTimeouts,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_ms_min,
        election_timeout_max: t.election_timeout_ms_max,
        install_snapshot_timeout: t.install_snapshot_timeout_ms,
        max_payload_entries: limits::APPEND_ENTRIES_PER_RPC_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
        // Followers further behind than this get a snapshot instead of log entries.
        replication_lag_threshold: t.snapshot_logs_since_last.saturating_mul(2),
        purge_batch_size: 1,
        // A restarted or cut-off node must not disrupt a healthy leader with higher terms.
        enable_pre_vote: Some(true),
        // A restarted leader goes through an election: its state machine may lag what it
        // acknowledged before the restart.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
