//! The Raft vocabulary: metrokv's openraft type configuration and the names of the openraft
//! types and traits the rest of the node uses. It imports nothing of the node but the state
//! machine's request and response, so storage and transport (which implement openraft's traits)
//! can use it without depending on the assembly in `raft/mod.rs`.
//!
//! openraft is pinned to an exact 0.10 alpha (see README, "Design notes"); its API still moves
//! between alphas. Other modules import openraft items through the aliases and re-exports here,
//! so an upgrade is mostly a change to this module (the trait impls in `storage` and `transport`
//! follow the traits' signatures and move with them).

use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::Request;
use crate::state_machine::Response;

pub use openraft::async_runtime::WatchReceiver;
pub use openraft::error::ClientWriteError;
pub use openraft::error::LinearizableReadError;
pub use openraft::error::RaftError;
pub use openraft::storage::IOFlushed;
pub use openraft::storage::LogState;
pub use openraft::storage::RaftLogReader;
pub use openraft::storage::RaftLogStorage;
pub use openraft::storage::RaftSnapshotBuilder;
pub use openraft::storage::RaftStateMachine;
pub use openraft::vote::RaftLeaderId;
pub use openraft::ChangeMembers;
pub use openraft::Instant as RaftInstant;
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

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<Request, NodeId, NodeInfo>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
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
