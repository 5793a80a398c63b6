//! Routing requests to the leader: writes are proposed here if this node leads, else forwarded
//! to the leader over the peer transport; linearizable reads learn the leader's read index.
//!
//! Outcomes follow docs/api.md's promise about what a client may conclude:
//! - [`WriteError::Unavailable`] (503): nothing was proposed (no leader in contact, the leader is
//!   unreachable, or it cannot hear from a quorum), so a retry cannot apply the write twice;
//! - [`WriteError::Indeterminate`] (504): the write was proposed and its fate is unknown; only a
//!   retry with the same idempotency key or transfer id is safe, and it settles the write.
//!
//! A node that knows it has no reachable leader says so quickly: when it has not heard from a
//! leader within a lease, it waits at most about one election ([`Service::no_leader_wait`]) for
//! one to appear and then answers 503, instead of sending into a partition and waiting out the
//! request's whole deadline. Every other wait is bounded by the request's deadline; retries
//! inside the deadline only happen when nothing was proposed yet.

use std::future::Future;
use std::time::Duration;

use crate::raft::WatchReceiver;
use tokio::time::Instant;

use super::Service;
use crate::raft::ClientWriteError;
use crate::raft::NodeId;
use crate::raft::RaftError;
use crate::raft::ReadPolicy;
use crate::state_machine::Command;
use crate::state_machine::Request;
use crate::state_machine::Response;
use crate::transport::client::PeerClient;
use crate::transport::codec::Channel;
use crate::transport::codec::Failure;
use crate::transport::codec::ForwardError;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;

/// Pause between attempts to reach a leader that refused a connection.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

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

/// What one attempt at the leader produced (see [`Service::at_leader`]).
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
pub(super) enum LocalWrite {
    NotLeader(Option<NodeId>),
    NoQuorum,
    Indeterminate(String),
}

impl std::fmt::Display for LocalWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalWrite::NotLeader(l) => write!(f, "not the leader (leader: {l:?})"),
            LocalWrite::NoQuorum => write!(f, "this node leads but cannot reach a quorum"),
            LocalWrite::Indeterminate(why) => write!(f, "{why}"),
        }
    }
}

impl Service {
    /// How long a request waits for a leader to be in contact before it is answered 503: about
    /// one election, enough to ride through a failover in progress.
    fn no_leader_wait(&self) -> Duration {
        Duration::from_millis(
            self.timeouts.election_timeout_ms_max + self.timeouts.heartbeat_interval_ms,
        )
    }

    /// Wait until some leader is in contact (and differs from `old`), or `until` passes.
    async fn wait_for_leader(&self, old: Option<NodeId>, until: Instant) -> Option<NodeId> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(l) = self.leader_in_contact().filter(|l| Some(*l) != old) {
                return Some(l);
            }
            // Contact comes with replication traffic; poll at the heartbeat's pace, and wake at
            // once when openraft's view changes.
            let step = Duration::from_millis(self.timeouts.heartbeat_interval_ms.max(1));
            let next = (Instant::now() + step).min(until);
            if Instant::now() >= until {
                return None;
            }
            let _ = tokio::time::timeout_at(next, metrics.changed()).await;
        }
    }

    /// Run one step at the leader, here or over the peer transport, until it produces an
    /// answer or the deadline passes. Steps that changed nothing (the leader moved, or could not
    /// be reached) are retried; `give_up` builds the error when time runs out or no leader is in
    /// contact. Returns the answer and the leader that produced it.
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
        let mut last_problem = String::from("no leader is in contact with this node");
        loop {
            if Instant::now() >= deadline {
                return Err(give_up(last_problem));
            }
            let leader = match self.leader_in_contact() {
                Some(l) => l,
                None => {
                    let until = deadline.min(Instant::now() + self.no_leader_wait());
                    match self.wait_for_leader(None, until).await {
                        Some(l) => l,
                        None => return Err(give_up(last_problem)),
                    }
                }
            };
            let step = if leader == self.id() {
                local().await
            } else {
                match self.member_addr(leader) {
                    Some(node) => {
                        let client = self.peers.client(leader, &node.peer_addr, Channel::Forward);
                        remote(
                            client,
                            leader,
                            deadline.saturating_duration_since(Instant::now()),
                        )
                        .await
                    }
                    None => Step::LeaderMoved(format!("leader {leader} is not in the membership")),
                }
            };
            match step {
                Step::Done(value) => return Ok((value, leader)),
                Step::Fail(e) => return Err(e),
                // Nothing happened: a leader that just lost (or has not quite taken) office, or
                // one we could not reach. Try again shortly, with whoever leads then; a node
                // without a leader in contact gives up after `no_leader_wait`, above.
                Step::LeaderMoved(why) | Step::Unreachable(why) => {
                    last_problem = why;
                    let pause =
                        RETRY_BACKOFF.min(deadline.saturating_duration_since(Instant::now()));
                    let changed = self.wait_for_leader(Some(leader), Instant::now() + pause);
                    let _ = changed.await;
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
                Err(e @ LocalWrite::NoQuorum) => Step::Fail(WriteError::Unavailable(e.to_string())),
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
                    // The leader did not look at the request: nothing was proposed.
                    Ok(PeerResponse::Failed(Failure::Starting(_))) => {
                        Step::LeaderMoved(format!("node {l} is starting"))
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

    /// Propose as leader, stamping the entry with this node's bounded clock (see `clock`).
    pub(super) async fn write_local(
        &self,
        command: Command,
        idempotency_key: Option<String>,
        deadline: Instant,
    ) -> Result<Response, LocalWrite> {
        if !self.has_quorum() {
            return Err(LocalWrite::NoQuorum);
        }
        let term = self.raft.metrics().borrow_watched().current_term;
        let request = Request {
            leader_time_ms: self.clock.stamp(term),
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

    /// Propose an internal command as leader, with the usual write timeout.
    pub(super) async fn write_local_now(&self, command: Command) -> Result<Response, LocalWrite> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.write_timeout_ms);
        self.write_local(command, None, deadline).await
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
            // A read may be abandoned at any time: stop as soon as the leader is out of contact
            // rather than wait out the deadline on a cut link.
            let call = client.call(PeerRequest::ReadIndex, budget);
            let lost = self.contact_lost(l);
            let answer = tokio::select! {
                answer = call => answer,
                () = lost => return Step::Fail(ReadError::Unavailable(format!(
                    "lost contact with leader {l} while confirming the read"
                ))),
            };
            match answer {
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

    /// Completes when `leader` is no longer in contact with this node.
    async fn contact_lost(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        let step = Duration::from_millis(self.timeouts.heartbeat_interval_ms.max(1));
        while self.leader_in_contact() == Some(leader) {
            let _ = tokio::time::timeout(step, metrics.changed()).await;
        }
    }

    /// As leader: confirm leadership with a quorum and return the index reads must wait for.
    pub(super) async fn read_index_local(&self, deadline: Instant) -> Result<u64, ForwardError> {
        let linearizer = tokio::time::timeout_at(
            deadline,
            self.raft.get_read_linearizer(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| ForwardError::ReadTimeout("leadership was not confirmed in time".into()))?;
        match linearizer {
            Ok(l) => Ok(l.read_log_id().index()),
            Err(RaftError::APIError(crate::raft::LinearizableReadError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader(f.leader_id))
            }
            Err(e) => Err(ForwardError::ReadTimeout(e.to_string())),
        }
    }
}
