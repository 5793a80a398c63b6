//! What a node does with a client request, independent of HTTP: propose a write (here if this
//! node leads, else forwarded to the leader), make a read linearizable, report the cluster. Also
//! the handler for requests from peers.
//!
//! Outcomes follow API.md's promise about what a client may conclude:
//! - [`WriteError::Unavailable`] (503): nothing was proposed (no leader, the leader is unreachable,
//!   or it cannot hear from a quorum), so a retry cannot apply the write twice;
//! - [`WriteError::Indeterminate`] (504): the write was proposed and its fate is unknown; only a
//!   retry with the same idempotency key or transfer id is safe, and it settles the write.
//!
//! Every wait is bounded by the request's deadline; retries inside the deadline only happen when
//! nothing was proposed yet.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;
use tokio::time::Instant;

use crate::config::RaftTimeouts;
use crate::raft::AppendEntriesResponse;
use crate::raft::ClientWriteError;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::Raft;
use crate::raft::RaftError;
use crate::raft::RaftMetrics;
use crate::raft::ReadPolicy;
use crate::raft::ServerState;
use crate::state_machine::Command;
use crate::state_machine::Request;
use crate::state_machine::Response;
use crate::storage::snapshot;
use crate::storage::SnapshotFile;
use crate::storage::StateReader;
use crate::transport::client::PeerClient;
use crate::transport::client::Peers;
use crate::transport::codec::Channel;
use crate::transport::codec::ForwardError;
use crate::transport::codec::NodeStatus;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;
use crate::transport::codec::SnapshotChunk;
use crate::transport::server::PeerHandler;

/// Pause between attempts to reach a leader that refused a connection.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// How long a status query to a peer may take before the peer is reported unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Indeterminate(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Unavailable(String),
}

/// A result and the leader that handled it (for the `X-Metrokv-Leader` header).
#[derive(Debug)]
pub struct Served<T> {
    pub value: T,
    pub leader: Option<NodeId>,
}

pub struct Service {
    id: NodeId,
    cluster_id: String,
    raft: Raft,
    reader: StateReader,
    peers: Peers,
    timeouts: RaftTimeouts,
    incoming_dir: PathBuf,
    /// Snapshot transfers being received, one per sending leader.
    incoming: Mutex<HashMap<NodeId, Incoming>>,
    /// The last leader that replicated to this node, and when.
    leader_contact: Mutex<Option<(NodeId, Instant)>>,
}

struct Incoming {
    transfer_id: u64,
    path: PathBuf,
    file: std::fs::File,
    written: u64,
}

/// What one attempt at the leader produced (see `Service::at_leader`).
enum Step<T, E> {
    Done(T),
    /// A final error: nothing more to try.
    Fail(E),
    /// Nothing was proposed or read; the leader moved away from the one we tried.
    LeaderMoved(String),
    /// Nothing was sent: the leader could not be reached.
    Unreachable(String),
}

/// Why a local proposal did not produce an answer.
enum LocalWrite {
    NotLeader(Option<NodeId>),
    NoQuorum,
    Indeterminate(String),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Service {
    pub fn new(
        id: NodeId,
        cluster_id: String,
        raft: Raft,
        reader: StateReader,
        peers: Peers,
        timeouts: RaftTimeouts,
        incoming_dir: PathBuf,
    ) -> std::io::Result<Self> {
        // Partial transfers from before a restart are useless: their senders start over.
        std::fs::create_dir_all(&incoming_dir)?;
        snapshot::remove_all_but(&incoming_dir, None)?;
        Ok(Self {
            id,
            cluster_id,
            raft,
            reader,
            peers,
            timeouts,
            incoming_dir,
            incoming: Mutex::default(),
            leader_contact: Mutex::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn timeouts(&self) -> &RaftTimeouts {
        &self.timeouts
    }

    fn member_addr(&self, id: NodeId) -> Option<NodeInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Wait until some leader is known, or the leader differs from `old`, within `deadline`.
    async fn wait_for_leader(&self, old: Option<NodeId>, deadline: Instant) {
        let budget = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .raft
            .wait(Some(budget))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != old,
                "a new leader",
            )
            .await;
    }

    /// How long to look for a leader before answering 503: a few election rounds.
    fn leader_wait(&self) -> Duration {
        Duration::from_millis(self.timeouts.election_timeout_ms_max * 4)
    }

    /// Run one step at the leader, here or over the peer transport, until it produces an
    /// answer or the deadline passes. Steps that changed nothing (the leader moved, or could not
    /// be reached) are retried; `give_up` builds the error when time runs out. Returns the answer
    /// and the leader that produced it.
    async fn at_leader<T, E, L, LF, R, RF>(
        &self,
        deadline: Instant,
        local: L,
        remote: R,
        give_up: impl Fn(String) -> E,
    ) -> Result<(T, NodeId), E>
    where
        L: Fn() -> LF,
        LF: Future<Output = Step<T, E>>,
        R: Fn(PeerClient, NodeId, Duration) -> RF,
        RF: Future<Output = Step<T, E>>,
    {
        let leader_deadline = Instant::now() + self.leader_wait();
        let mut last_problem = String::from("no leader is known");
        loop {
            let leader = self.raft.metrics().borrow_watched().current_leader;
            let now = Instant::now();
            if now >= deadline || (now >= leader_deadline && leader.is_none()) {
                return Err(give_up(last_problem));
            }
            let Some(l) = leader else {
                self.wait_for_leader(None, deadline.min(leader_deadline))
                    .await;
                continue;
            };
            let step = if l == self.id {
                local().await
            } else {
                match self.member_addr(l) {
                    Some(node) => {
                        let client = self.peers.client(l, &node.peer_addr, Channel::Forward);
                        remote(
                            client,
                            l,
                            deadline.saturating_duration_since(Instant::now()),
                        )
                        .await
                    }
                    None => Step::LeaderMoved(format!("leader {l} is not in the membership")),
                }
            };
            match step {
                Step::Done(value) => return Ok((value, l)),
                Step::Fail(e) => return Err(e),
                Step::LeaderMoved(why) => {
                    last_problem = why;
                    self.wait_for_leader(Some(l), deadline.min(leader_deadline))
                        .await;
                }
                Step::Unreachable(why) => {
                    last_problem = why;
                    let pause =
                        RETRY_BACKOFF.min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Propose `command` and return its answer.
    pub async fn write(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<Served<Response>, WriteError> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.write_timeout_ms);
        let local = || async {
            match self
                .write_local(command.clone(), idempotency_key.clone(), deadline)
                .await
            {
                Ok(response) => Step::Done(response),
                Err(LocalWrite::NotLeader(_)) => Step::LeaderMoved("leadership moved".into()),
                Err(LocalWrite::NoQuorum) => Step::Fail(WriteError::Unavailable(
                    "this node leads but cannot reach a quorum".into(),
                )),
                Err(LocalWrite::Indeterminate(why)) => Step::Fail(WriteError::Indeterminate(why)),
            }
        };
        let remote = |client: PeerClient, l: NodeId, budget: Duration| {
            let request = PeerRequest::ClientWrite {
                command: command.clone(),
                idempotency_key: idempotency_key.clone(),
            };
            async move {
                match client.call(request, budget).await {
                    Ok(PeerResponse::ClientWrite(Ok(response))) => Step::Done(response),
                    Ok(PeerResponse::ClientWrite(Err(ForwardError::NotLeader(_)))) => {
                        Step::LeaderMoved(format!("node {l} is no longer the leader"))
                    }
                    Ok(PeerResponse::ClientWrite(Err(ForwardError::NoQuorum))) => Step::Fail(
                        WriteError::Unavailable(format!("leader {l} cannot reach a quorum")),
                    ),
                    Ok(PeerResponse::ClientWrite(Err(e))) => {
                        Step::Fail(WriteError::Indeterminate(format!("leader {l}: {e}")))
                    }
                    Ok(other) => Step::Fail(WriteError::Indeterminate(format!(
                        "leader {l} answered {other:?}"
                    ))),
                    Err(e) if e.not_sent() => Step::Unreachable(e.to_string()),
                    Err(e) => Step::Fail(WriteError::Indeterminate(format!(
                        "forwarded to leader {l}: {e}"
                    ))),
                }
            }
        };
        let give_up = |problem: String| {
            WriteError::Unavailable(format!("no leader could take the write: {problem}"))
        };
        let (value, leader) = self.at_leader(deadline, local, remote, give_up).await?;
        Ok(Served {
            value,
            leader: Some(leader),
        })
    }

    /// False when this node, as leader, has not heard from a quorum for a whole lease period:
    /// proposing then would only produce a 504 later. A leader elected a moment ago has no
    /// acknowledgement yet; it just won a quorum's votes, so it may propose.
    fn has_quorum(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.last_quorum_acked
            .as_ref()
            .is_none_or(|t| t.elapsed() <= self.lease())
    }

    /// The longest silence from the leader (or, for a leader, from a quorum) after which this
    /// node no longer claims to know who leads.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.timeouts.election_timeout_ms_max)
    }

    /// The leader, if this node is in touch with it: a leader that heard from a quorum within a
    /// lease, or a follower that heard from its leader within one. A node cut off from the
    /// others keeps openraft's last known leader for a while (with pre-vote, its term does not
    /// even move); this is what it reports instead, so `/ready` and `/v1/cluster` do not vouch
    /// for a leader it cannot reach.
    pub fn leader_in_contact(&self) -> Option<NodeId> {
        let m = self.metrics();
        let leader = m.current_leader?;
        let in_contact = if leader == self.id {
            m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| t.elapsed() <= self.lease())
        } else {
            lock(&self.leader_contact)
                .is_some_and(|(who, at)| who == leader && at.elapsed() <= self.lease())
        };
        in_contact.then_some(leader)
    }

    async fn write_local(
        &self,
        command: Command,
        idempotency_key: Option<String>,
        deadline: Instant,
    ) -> Result<Response, LocalWrite> {
        if !self.has_quorum() {
            return Err(LocalWrite::NoQuorum);
        }
        let request = Request {
            leader_time_ms: now_ms(),
            idempotency_key,
            command,
        };
        match tokio::time::timeout_at(deadline, self.raft.client_write(request)).await {
            Err(_) => Err(LocalWrite::Indeterminate(
                "the write was proposed but did not commit in time".into(),
            )),
            Ok(Ok(written)) => Ok(written.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LocalWrite::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(e))) => Err(LocalWrite::Indeterminate(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(LocalWrite::Indeterminate(format!(
                "the Raft core stopped: {e}"
            ))),
        }
    }

    /// Make the next read from the local state machine linearizable: learn the leader's commit
    /// index (confirmed with a quorum) and wait until this node has applied it.
    pub async fn linearize(&self) -> Result<Option<NodeId>, ReadError> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.read_timeout_ms);
        let local = || async {
            match self.read_index_local(deadline).await {
                Ok(index) => Step::Done(index),
                Err(ForwardError::NotLeader(_)) => Step::LeaderMoved("leadership moved".into()),
                Err(e) => Step::Fail(ReadError::Unavailable(e.to_string())),
            }
        };
        let remote = |client: PeerClient, l: NodeId, budget: Duration| async move {
            match client.call(PeerRequest::ReadIndex, budget).await {
                Ok(PeerResponse::ReadIndex(Ok(index))) => Step::Done(index),
                Ok(PeerResponse::ReadIndex(Err(ForwardError::NotLeader(_)))) => {
                    Step::LeaderMoved(format!("node {l} is no longer the leader"))
                }
                Ok(other) => Step::Fail(ReadError::Unavailable(format!(
                    "leader {l} answered {other:?}"
                ))),
                Err(e) if e.not_sent() => Step::Unreachable(e.to_string()),
                Err(e) => Step::Fail(ReadError::Unavailable(format!("leader {l}: {e}"))),
            }
        };
        let give_up = |problem: String| {
            ReadError::Unavailable(format!(
                "the read could not be confirmed with a leader: {problem}"
            ))
        };
        let (index, leader) = self.at_leader(deadline, local, remote, give_up).await?;
        let budget = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(budget))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                ReadError::Unavailable(format!(
                    "this node did not catch up with the leader in time: {e}"
                ))
            })?;
        Ok(Some(leader))
    }

    /// As leader: confirm leadership with a quorum and return the index reads must wait for.
    async fn read_index_local(&self, deadline: Instant) -> Result<u64, ForwardError> {
        let linearizer = tokio::time::timeout_at(
            deadline,
            self.raft.get_read_linearizer(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| ForwardError::ReadTimeout("leadership was not confirmed in time".into()))?;
        match linearizer {
            Ok(l) => Ok(l.read_log_id().index()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(ForwardError::NotLeader(f.leader_id)),
            Err(e) => Err(ForwardError::ReadTimeout(e.to_string())),
        }
    }

    /// This node's own view, as reported to peers and in `/v1/cluster`.
    pub fn status(&self) -> NodeStatus {
        let m = self.metrics();
        NodeStatus {
            id: self.id,
            role: role_name(&m.state).to_string(),
            term: m.current_term,
            leader: self.leader_in_contact(),
            commit_index: m.local_committed.as_ref().map_or(0, |id| id.index),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index),
        }
    }

    /// Every member with its status, asking the others in parallel.
    pub async fn cluster(&self) -> Vec<(NodeId, NodeInfo, Option<NodeStatus>)> {
        let members: Vec<(NodeId, NodeInfo)> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect()
        };
        let queries = members.into_iter().map(|(id, node)| async move {
            if id == self.id {
                return (id, node, Some(self.status()));
            }
            let client = self.peers.client(id, &node.peer_addr, Channel::Forward);
            let status = match client.call(PeerRequest::Status, STATUS_TIMEOUT).await {
                Ok(PeerResponse::Status(s)) => Some(s),
                _ => None,
            };
            (id, node, status)
        });
        futures::future::join_all(queries).await
    }

    async fn receive_snapshot_chunk(&self, from: NodeId, chunk: SnapshotChunk) -> PeerResponse {
        match self.receive_chunk(from, chunk).await {
            Ok(r) => PeerResponse::SnapshotChunk(r),
            Err(e) => {
                tracing::warn!(from, error = %e, "snapshot chunk refused");
                PeerResponse::Failed(e)
            }
        }
    }

    async fn receive_chunk(
        &self,
        from: NodeId,
        chunk: SnapshotChunk,
    ) -> Result<Option<crate::raft::SnapshotResponse>, String> {
        let previous = lock(&self.incoming).remove(&from);
        let mut incoming = match previous {
            Some(inc) if inc.transfer_id == chunk.transfer_id => inc,
            stale => {
                if let Some(stale) = stale {
                    let _ = std::fs::remove_file(&stale.path);
                }
                if chunk.offset != 0 {
                    return Err(format!(
                        "chunk at offset {} of an unknown transfer; start over",
                        chunk.offset
                    ));
                }
                let path = self
                    .incoming_dir
                    .join(format!("from-{from}-{:016x}.snap", chunk.transfer_id));
                let file = std::fs::File::create(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                Incoming {
                    transfer_id: chunk.transfer_id,
                    path,
                    file,
                    written: 0,
                }
            }
        };
        if chunk.offset != incoming.written {
            let _ = std::fs::remove_file(&incoming.path);
            return Err(format!(
                "chunk at offset {} but {} bytes were received; start over",
                chunk.offset, incoming.written
            ));
        }
        let done = chunk.done;
        let vote = chunk.vote;
        let data = chunk.data;
        let mut incoming = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            incoming.file.write_all(&data)?;
            incoming.written += data.len() as u64;
            if done {
                incoming.file.sync_all()?;
            }
            Ok::<_, std::io::Error>(incoming)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write the snapshot: {e}"))?;
        if !done {
            lock(&self.incoming).insert(from, incoming);
            return Ok(None);
        }
        let path = std::mem::take(&mut incoming.path);
        drop(incoming);
        let checked = path.clone();
        let meta = tokio::task::spawn_blocking(move || snapshot::verify(&checked))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("received snapshot is invalid: {e}"))?;
        let file = SnapshotFile::open(&path).map_err(|e| e.to_string())?;
        let snapshot = crate::raft::Snapshot {
            meta,
            snapshot: file,
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())?;
        // A refused install (stale vote) leaves the file behind; it is not ours to keep.
        let _ = std::fs::remove_file(&path);
        Ok(Some(response))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn role_name(state: &ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl PeerHandler for Arc<Service> {
    async fn handle(&self, from: NodeId, request: PeerRequest) -> PeerResponse {
        let fatal = |e: String| PeerResponse::Failed(e);
        match request {
            PeerRequest::AppendEntries(rpc) => match self.raft.append_entries(rpc).await {
                Ok(r) => {
                    // Only a current leader gets anything but "higher vote" back.
                    if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                        *lock(&self.leader_contact) = Some((from, Instant::now()));
                    }
                    PeerResponse::AppendEntries(r)
                }
                Err(e) => fatal(e.to_string()),
            },
            PeerRequest::Vote(rpc) => match self.raft.vote(rpc).await {
                Ok(r) => PeerResponse::Vote(r),
                Err(e) => fatal(e.to_string()),
            },
            PeerRequest::PreVote(rpc) => match self.raft.pre_vote(rpc).await {
                Ok(r) => PeerResponse::Vote(r),
                Err(e) => fatal(e.to_string()),
            },
            PeerRequest::TransferLeader(rpc) => match self.raft.handle_transfer_leader(rpc).await {
                Ok(r) => PeerResponse::TransferLeader(r),
                Err(e) => fatal(e.to_string()),
            },
            PeerRequest::SnapshotChunk(chunk) => self.receive_snapshot_chunk(from, chunk).await,
            PeerRequest::ClientWrite {
                command,
                idempotency_key,
            } => {
                let deadline =
                    Instant::now() + Duration::from_millis(self.timeouts.write_timeout_ms);
                let result = self
                    .write_local(command, idempotency_key, deadline)
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
        }
    }
}
