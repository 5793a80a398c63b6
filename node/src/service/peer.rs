//! The handler for requests from peers.
//!
//! A connection is admitted only from a member (of the membership Raft knows, or of the
//! configured list before it knows one) whose storage id is the one recorded for it. Every Raft
//! request is checked by `transport::validate` before it reaches openraft, and refused with a
//! typed failure if it breaks Raft's rules. While this node's new storage is still being checked
//! (`Service::set_raft_open`), Raft requests are refused altogether: a node that lost its data
//! must not vote before it knows it did.

use std::sync::Arc;
use std::time::Duration;

use crate::raft::WatchReceiver;
use tokio::time::Instant;

use super::lock;
use super::route::LocalWrite;
use super::Service;
use crate::raft::AppendEntriesResponse;
use crate::raft::NodeId;
use crate::transport::codec::Failure;
use crate::transport::codec::ForwardError;
use crate::transport::codec::Hello;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;
use crate::transport::codec::Refusal;
use crate::transport::server::PeerHandler;
use crate::transport::validate;

impl Service {
    fn refuse_invalid(&self, from: NodeId, kind: &str, e: validate::Invalid) -> PeerResponse {
        metrics::counter!("metrokv_peer_requests_invalid_total", "kind" => kind.to_string())
            .increment(1);
        tracing::warn!(from, kind, error = %e, "refused an invalid peer request");
        PeerResponse::Failed(Failure::Invalid(e.0))
    }

    /// Whether `candidate` may bypass the leader lease: our leader asked for a transfer to it
    /// within the last election timeout.
    fn transfer_allowed(&self, candidate: NodeId) -> bool {
        lock(&self.transfer_hint)
            .is_some_and(|(to, at)| to == candidate && at.elapsed() <= self.lease())
    }

    async fn handle_raft(&self, from: NodeId, request: PeerRequest) -> PeerResponse {
        let raft_failed = |e: String| PeerResponse::Failed(Failure::Raft(e));
        let kind = request.kind();
        match request {
            PeerRequest::AppendEntries(rpc) => {
                if let Err(e) = validate::append_entries(&rpc, from, self.id()) {
                    return self.refuse_invalid(from, kind, e);
                }
                match self.raft.append_entries(rpc).await {
                    Ok(r) => {
                        // Only a current leader gets anything but "higher vote" back.
                        if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                            self.touch_leader(from);
                        }
                        PeerResponse::AppendEntries(r)
                    }
                    Err(e) => raft_failed(e.to_string()),
                }
            }
            PeerRequest::Vote(rpc) | PeerRequest::PreVote(rpc) => {
                let pre = kind == "pre_vote";
                let candidate = rpc.vote.leader_id.node_id;
                let rpc =
                    match validate::vote(rpc, from, self.id(), self.transfer_allowed(candidate)) {
                        Ok(rpc) => rpc,
                        Err(e) => return self.refuse_invalid(from, kind, e),
                    };
                let answer = if pre {
                    self.raft.pre_vote(rpc).await
                } else {
                    self.raft.vote(rpc).await
                };
                match answer {
                    Ok(r) => PeerResponse::Vote(r),
                    Err(e) => raft_failed(e.to_string()),
                }
            }
            PeerRequest::TransferLeader(rpc) => {
                let membership = self.metrics().membership_config.membership().clone();
                if let Err(e) = validate::transfer_leader(&rpc, from, self.id(), &membership) {
                    return self.refuse_invalid(from, kind, e);
                }
                if *rpc.to_node_id() == self.id()
                    && crate::failpoint::refuse_first(crate::failpoint::TRANSFER_LEADER_REFUSE)
                {
                    let e = crate::failpoint::injected(crate::failpoint::TRANSFER_LEADER_REFUSE);
                    tracing::warn!(from, error = %e, "refused a leader transfer to this node");
                    return raft_failed(e.to_string());
                }
                *lock(&self.transfer_hint) = Some((*rpc.to_node_id(), Instant::now()));
                match self.raft.handle_transfer_leader(rpc).await {
                    Ok(r) => PeerResponse::TransferLeader(r),
                    Err(e) => raft_failed(e.to_string()),
                }
            }
            PeerRequest::SnapshotChunk(chunk) => self.receive_snapshot_chunk(from, chunk).await,
            _ => unreachable!("handle_raft is called for Raft requests only"),
        }
    }
}

impl PeerHandler for Arc<Service> {
    fn admit(&self, hello: &Hello) -> Result<u64, Refusal> {
        if !self.members().contains_key(&hello.from) {
            return Err(Refusal::NotAMember { from: hello.from });
        }
        self.ids
            .check(hello.from, hello.storage_id)
            .map_err(|c| {
                metrics::counter!("metrokv_peer_handshakes_refused_total").increment(1);
                tracing::error!(node = c.node, recorded = format!("{:#018x}", c.recorded),
                    presented = format!("{:#018x}", c.presented),
                    "refused a member whose storage changed: it lost its data and must rejoin as a new member");
                Refusal::StorageChanged {
                    node: c.node,
                    recorded: c.recorded,
                    presented: c.presented,
                }
            })?;
        Ok(self.identity.storage_id)
    }

    async fn handle(&self, from: NodeId, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::AppendEntries(_)
            | PeerRequest::Vote(_)
            | PeerRequest::PreVote(_)
            | PeerRequest::TransferLeader(_)
            | PeerRequest::SnapshotChunk(_) => {
                if !self.raft_is_open() {
                    return PeerResponse::Failed(Failure::Starting(self.id()));
                }
                self.handle_raft(from, request).await
            }
            PeerRequest::ClientWrite {
                command,
                idempotency_key,
            } => {
                let deadline =
                    Instant::now() + Duration::from_millis(self.timeouts.write_timeout_ms);
                let result = self
                    .write_local(command, idempotency_key, deadline, true)
                    .await
                    .map_err(|e| match e {
                        LocalWrite::NotLeader(l) => ForwardError::NotLeader(l),
                        LocalWrite::NoQuorum => ForwardError::NoQuorum,
                        LocalWrite::Indeterminate(why) => ForwardError::Indeterminate(why),
                    });
                PeerResponse::ClientWrite(result)
            }
            PeerRequest::ReadIndex => {
                let deadline =
                    Instant::now() + Duration::from_millis(self.timeouts.read_timeout_ms);
                PeerResponse::ReadIndex(self.read_index_local(deadline).await)
            }
            PeerRequest::Status => PeerResponse::Status(self.status()),
            PeerRequest::Membership(call) => {
                let deadline =
                    Instant::now() + Duration::from_millis(self.timeouts.write_timeout_ms * 2);
                PeerResponse::Membership(self.membership_local(call, deadline).await)
            }
        }
    }
}

impl Service {
    /// This node's committed log id, for the snapshot checks.
    pub(super) fn local_committed(&self) -> Option<crate::raft::LogId> {
        self.raft.data_metrics().borrow_watched().local_committed
    }
}
