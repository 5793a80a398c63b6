//! openraft's network traits on top of [`PeerClient`].
//!
//! Replication, heartbeats and snapshots use separate connections to the same peer (see
//! [`Channel`]). AppendEntries requests are capped in bytes: when openraft hands over more than
//! [`limits::APPEND_ENTRIES_BYTES_MAX`], only a prefix is sent and a success is reported as partial,
//! so openraft sends the rest next. Snapshots stream in chunks of [`limits::SNAPSHOT_CHUNK_BYTES`]
//! read from the file, never loaded whole.
//!
//! Errors map onto openraft's: a connect failure is `Unreachable` (openraft backs off), a broken
//! connection is `Network`, an expired call is `Timeout`.

use std::future::Future;
use std::time::Duration;

use openraft::error::NetworkError;
use openraft::error::ReplicationClosed;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::RPCTypes;
use openraft::RaftNetworkV2;

use super::client::CallError;
use super::client::PeerClient;
use super::client::Peers;
use super::codec::Channel;
use super::codec::PeerRequest;
use super::codec::PeerResponse;
use super::codec::SnapshotChunk;
use crate::limits;
use crate::raft::types::AppendEntriesRequest;
use crate::raft::types::AppendEntriesResponse;
use crate::raft::types::NodeId;
use crate::raft::types::NodeInfo;
use crate::raft::types::RpcError;
use crate::raft::types::SnapshotResponse;
use crate::raft::types::StreamingError;
use crate::raft::types::TransferLeaderRequest;
use crate::raft::types::TransferLeaderResponse;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;
use crate::raft::types::VoteRequest;
use crate::raft::types::VoteResponse;
use crate::storage::Snapshot;
use crate::storage::SnapshotFile;

/// Creates a [`PeerNetwork`] per replication stream; openraft calls it.
#[derive(Clone)]
pub struct NetworkFactory {
    peers: Peers,
}

impl NetworkFactory {
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }

    fn network(&self, target: NodeId, node: &NodeInfo, channel: Channel) -> PeerNetwork {
        PeerNetwork {
            me: self.peers.me(),
            client: self.peers.client(target, &node.peer_addr, channel),
            channel,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        self.network(target, node, Channel::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        self.network(target, node, Channel::Heartbeat)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        self.network(target, node, Channel::Snapshot)
    }
}

pub struct PeerNetwork {
    me: NodeId,
    client: PeerClient,
    channel: Channel,
}

fn rpc_error(e: CallError, me: NodeId, action: RPCTypes) -> RpcError {
    match e {
        // A refused handshake backs off like a dead peer: retrying at once cannot help.
        CallError::Unreachable { .. } | CallError::Refused { .. } => {
            RpcError::Unreachable(Unreachable::from_string(e.to_string()))
        }
        CallError::Lost { .. } => RpcError::Network(NetworkError::from_string(e.to_string())),
        CallError::Timeout { target, timeout } => RpcError::Timeout(openraft::error::Timeout {
            action,
            id: me,
            target,
            timeout,
        }),
    }
}

fn unexpected(response: PeerResponse) -> RpcError {
    let msg = match response {
        PeerResponse::Failed(why) => why.to_string(),
        other => format!("unexpected answer {other:?}"),
    };
    RpcError::Network(NetworkError::from_string(msg))
}

/// Serialized size of an entry, for the AppendEntries byte cap.
fn entry_bytes(entry: &crate::raft::types::Entry) -> usize {
    postcard::experimental::serialized_size(entry).unwrap_or(usize::MAX)
}

impl PeerNetwork {
    async fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
        action: RPCTypes,
    ) -> Result<PeerResponse, RpcError> {
        self.client
            .call(request, timeout)
            .await
            .map_err(|e| rpc_error(e, self.me, action))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        let mut total = 0usize;
        let keep = rpc
            .entries
            .iter()
            .take_while(|e| {
                total = total.saturating_add(entry_bytes(e));
                total <= limits::APPEND_ENTRIES_BYTES_MAX
            })
            .count()
            .max(1);
        let truncated = keep < rpc.entries.len();
        if truncated {
            rpc.entries.truncate(keep);
        }
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let had_prev = rpc.prev_log_id.is_some();
        let timeout = match self.channel {
            Channel::Replication => option
                .hard_ttl()
                .max(Duration::from_millis(limits::APPEND_ENTRIES_TIMEOUT_MS_MIN)),
            _ => option.hard_ttl(),
        };
        match self
            .call(
                PeerRequest::AppendEntries(rpc),
                timeout,
                RPCTypes::AppendEntries,
            )
            .await?
        {
            PeerResponse::AppendEntries(AppendEntriesResponse::Success) if truncated => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            // openraft unwraps the request's prev_log_id on a conflict, and only our own layer
            // makes partial successes: a peer that answers these is broken, not in conflict.
            PeerResponse::AppendEntries(AppendEntriesResponse::Conflict) if !had_prev => {
                Err(RpcError::Network(NetworkError::from_string(
                    "a conflict answered to an append without a previous log id".to_string(),
                )))
            }
            PeerResponse::AppendEntries(AppendEntriesResponse::PartialSuccess(_)) => {
                Err(RpcError::Network(NetworkError::from_string(
                    "a partial success from a peer".to_string(),
                )))
            }
            PeerResponse::AppendEntries(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        match self
            .call(PeerRequest::Vote(rpc), option.hard_ttl(), RPCTypes::Vote)
            .await?
        {
            PeerResponse::Vote(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        match self
            .call(PeerRequest::PreVote(rpc), option.hard_ttl(), RPCTypes::Vote)
            .await?
        {
            PeerResponse::Vote(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RpcError> {
        match self
            .call(
                PeerRequest::TransferLeader(req),
                option.hard_ttl(),
                RPCTypes::TransferLeader,
            )
            .await?
        {
            PeerResponse::TransferLeader(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = self.stream_snapshot(vote, snapshot, option) => result,
        }
    }
}

impl PeerNetwork {
    async fn stream_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        let transfer_id = rand::random::<u64>();
        // Positioned reads on the handle openraft gave us: the file may be unlinked by a newer
        // snapshot meanwhile, and the handle keeps it readable.
        let mut file = snapshot.snapshot;
        let len = file.len;
        let mut offset = 0u64;
        tracing::info!(target_node = self.client.target(), len, meta = %snapshot.meta, "sending snapshot");
        loop {
            let (data, f) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; limits::SNAPSHOT_CHUNK_BYTES];
                let n = crate::storage::snapshot::read_at(&file.file, offset, &mut buf)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>((buf, file))
            })
            .await
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            file = f;
            let n = data.len() as u64;
            if n == 0 && offset < len {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "snapshot file ended at {offset} of {len} bytes"
                ))));
            }
            let done = offset + n >= len;
            let chunk = SnapshotChunk {
                vote,
                transfer_id,
                offset,
                data,
                done,
            };
            let response = self
                .client
                .call(PeerRequest::SnapshotChunk(chunk), option.hard_ttl())
                .await
                .map_err(|e| match rpc_error(e, self.me, RPCTypes::InstallSnapshot) {
                    RpcError::Unreachable(u) => StreamingError::Unreachable(u),
                    RpcError::Timeout(t) => StreamingError::Timeout(t),
                    RpcError::Network(n) => StreamingError::Network(n),
                    RpcError::RemoteError(r) => {
                        StreamingError::Network(NetworkError::from_string(r.to_string()))
                    }
                })?;
            match response {
                PeerResponse::SnapshotChunk(Some(resp)) if done => return Ok(resp),
                PeerResponse::SnapshotChunk(None) if !done => {}
                other => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "snapshot chunk at offset {offset} refused: {other:?}"
                    ))))
                }
            }
            offset += n;
        }
    }
}
