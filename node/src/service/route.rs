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
use crate::transport::client::CallError;
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
#[derive(Debug)]
pub(super) enum Step<T, E> {
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

/// What a write forwarded to leader `l` came to. This is where a retry is decided, so it is
/// where a write could be applied twice: only an answer that says nothing was proposed
/// (another node leads, the leader is starting) or a request that never left this node may be
/// tried again; anything that may have reached the Raft log is final, and indeterminate unless
/// the leader said otherwise.
fn forwarded_write(
    l: NodeId,
    answer: Result<PeerResponse, CallError>,
) -> Step<Response, WriteError> {
    match answer {
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

/// What a read index asked of leader `l` came to. A read changes nothing, so any failure is
/// 503; only "not the leader" and "not sent" are worth another try inside the deadline.
fn forwarded_read(l: NodeId, answer: Result<PeerResponse, CallError>) -> Step<u64, ReadError> {
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
    pub(super) async fn at_leader<T, E, L, LF, R, RF>(
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
                .write_local(command.clone(), idempotency_key.clone(), deadline, true)
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
            async move { forwarded_write(l, client.call(request, budget).await) }
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

    /// Propose as leader, stamping the entry with this node's bounded clock (see `clock`). With
    /// `zone_gate`, the answer waits until the entry is zone-safe when the gate is closed (see
    /// `zones`): a client write; internal entries do not wait.
    pub(super) async fn write_local(
        &self,
        command: Command,
        idempotency_key: Option<String>,
        deadline: Instant,
        zone_gate: bool,
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
            Ok(Ok(written)) => {
                if zone_gate && self.zone_gated().await {
                    let index = written.log_id.index();
                    match self.wait_zone_safe(index, deadline).await {
                        Ok(()) => {}
                        Err(e) if e.stepped_down => self
                            .confirm_zone_safe_at_leader(index, deadline)
                            .await
                            .map_err(|why| {
                                LocalWrite::Indeterminate(format!(
                                    "{e}; this node stopped leading and the next leader did not confirm it: {why}"
                                ))
                            })?,
                        Err(e) => return Err(LocalWrite::Indeterminate(e.to_string())),
                    }
                }
                Ok(written.data)
            }
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
        self.write_local(command, None, deadline, false).await
    }

    /// Make the next read from the local state machine linearizable: learn the leader's commit
    /// index (confirmed with a quorum, and zone-safe when the zone gate is closed) and wait until
    /// this node has applied it. Returns the leader and the confirmed index (for
    /// [`Service::settle_read`]).
    pub async fn linearize(&self) -> Result<(Option<NodeId>, u64), ReadError> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.read_timeout_ms);
        let (index, leader) = self.read_index(deadline).await?;
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
        Ok((Some(leader), index))
    }

    /// The leader's confirmed read index, here or over the peer transport.
    pub(super) async fn read_index(&self, deadline: Instant) -> Result<(u64, NodeId), ReadError> {
        let local = || async {
            match self.read_index_local(deadline).await {
                Ok(index) => Step::Done(index),
                Err(ForwardError::NotLeader(_)) => Step::LeaderMoved("leadership moved".into()),
                Err(e) => Step::Fail(ReadError::Unavailable(e.to_string())),
            }
        };
        let remote = |client: PeerClient, l: NodeId, budget: Duration| async move {
            // A read may be abandoned at any time: stop as soon as the leader is out of contact
            // rather than wait out the deadline on a cut link. Asking changes nothing, so the
            // next leader is asked (a write that outlived its leader is confirmed this way while
            // leadership moves on); with no leader in contact, `at_leader` gives up after about
            // one election.
            let call = client.call(PeerRequest::ReadIndex, budget);
            let lost = self.contact_lost(l);
            let answer = tokio::select! {
                answer = call => answer,
                () = lost => return Step::Unreachable(format!(
                    "lost contact with leader {l} while confirming the read"
                )),
            };
            forwarded_read(l, answer)
        };
        let give_up = |problem: String| {
            ReadError::Unavailable(format!(
                "the read could not be confirmed with a leader: {problem}"
            ))
        };
        self.at_leader(deadline, local, remote, give_up).await
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
        let index = match linearizer {
            Ok(l) => l.read_log_id().index(),
            Err(RaftError::APIError(crate::raft::LinearizableReadError::ForwardToLeader(f))) => {
                return Err(ForwardError::NotLeader(f.leader_id))
            }
            Err(e) => return Err(ForwardError::ReadTimeout(e.to_string())),
        };
        // Readers see only what a zone loss cannot take back (see `zones`).
        if self.zone_gated().await {
            self.wait_zone_safe(index, deadline)
                .await
                .map_err(|e| ForwardError::ReadTimeout(e.to_string()))?;
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    //! The retry decisions of forwarding, against a fake leader on a real socket: what it
    //! answers, or how it fails, decides whether the write may be sent again.

    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::limits;
    use crate::state_machine::Rejection;
    use crate::storage::StorageIds;
    use crate::transport::client::Dialer;
    use crate::transport::codec;
    use crate::transport::codec::Envelope;
    use crate::transport::codec::Hello;
    use crate::transport::codec::HelloReply;
    use crate::transport::codec::Refusal;

    /// How the fake leader treats a request.
    #[derive(Clone, Copy)]
    enum Leader {
        /// Answers with this.
        Answers(fn() -> PeerResponse),
        /// Reads the request, then closes the connection without answering.
        HangsUp,
        /// Reads the request and never answers.
        Silent,
        /// Refuses the handshake.
        Refuses,
    }

    /// A fake leader on 127.0.0.1; returns its address.
    async fn fake_leader(leader: Leader) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let hello: Hello = codec::read_hello(&mut stream).await.unwrap();
                    if let Leader::Refuses = leader {
                        let refusal = Refusal::NotAMember { from: hello.from };
                        let _ =
                            codec::write_value(&mut stream, &HelloReply::Refused(refusal)).await;
                        return;
                    }
                    let accepted = HelloReply::Accepted { storage_id: 22 };
                    codec::write_value(&mut stream, &accepted).await.unwrap();
                    let mut buf = Vec::new();
                    while codec::read_frame(&mut stream, &mut buf, limits::PEER_FRAME_BYTES_MAX)
                        .await
                        .is_ok()
                    {
                        let request: Envelope<PeerRequest> = codec::decode(&buf).unwrap();
                        match leader {
                            Leader::Answers(answer) => {
                                let reply = Envelope {
                                    id: request.id,
                                    body: answer(),
                                };
                                codec::write_value(&mut stream, &reply).await.unwrap();
                            }
                            Leader::HangsUp => return,
                            Leader::Silent | Leader::Refuses => {}
                        }
                    }
                });
            }
        });
        addr
    }

    fn client(addr: String) -> PeerClient {
        let dialer = Dialer {
            me: 1,
            cluster_id: "c".into(),
            storage_id: 11,
            ids: Arc::new(StorageIds::new()),
            tls: None,
        };
        PeerClient::new(dialer, 2, addr, Channel::Forward)
    }

    fn write_request() -> PeerRequest {
        PeerRequest::ClientWrite {
            command: Command::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                condition: crate::state_machine::Condition::Always,
            },
            idempotency_key: None,
        }
    }

    async fn forward_write_to(leader: Leader) -> Step<Response, WriteError> {
        let addr = fake_leader(leader).await;
        let answer = client(addr)
            .call(write_request(), Duration::from_millis(300))
            .await;
        forwarded_write(2, answer)
    }

    #[tokio::test]
    async fn a_write_is_retried_only_when_nothing_was_proposed() {
        // Answers that say nothing was proposed: try again (with whoever leads by then).
        let not_leader = || PeerResponse::ClientWrite(Err(ForwardError::NotLeader(Some(3))));
        assert!(matches!(
            forward_write_to(Leader::Answers(not_leader)).await,
            Step::LeaderMoved(_)
        ));
        let starting = || PeerResponse::Failed(Failure::Starting(2));
        assert!(matches!(
            forward_write_to(Leader::Answers(starting)).await,
            Step::LeaderMoved(_)
        ));
        // Never sent: a refused handshake, a closed port.
        assert!(matches!(
            forward_write_to(Leader::Refuses).await,
            Step::Unreachable(_)
        ));
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let answer = client(addr)
            .call(write_request(), Duration::from_millis(300))
            .await;
        assert!(matches!(forwarded_write(2, answer), Step::Unreachable(_)));

        // A leader without a quorum proposed nothing either, but retrying cannot help: 503.
        let no_quorum = || PeerResponse::ClientWrite(Err(ForwardError::NoQuorum));
        assert!(matches!(
            forward_write_to(Leader::Answers(no_quorum)).await,
            Step::Fail(WriteError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_write_that_may_have_reached_the_leader_is_never_retried() {
        for leader in [Leader::HangsUp, Leader::Silent] {
            assert!(matches!(
                forward_write_to(leader).await,
                Step::Fail(WriteError::Indeterminate(_))
            ));
        }
        let unknown = || PeerResponse::ClientWrite(Err(ForwardError::Indeterminate("x".into())));
        assert!(matches!(
            forward_write_to(Leader::Answers(unknown)).await,
            Step::Fail(WriteError::Indeterminate(_))
        ));
        // An answer of the wrong kind is a bug somewhere; the write may have applied.
        let wrong = || PeerResponse::ReadIndex(Ok(5));
        assert!(matches!(
            forward_write_to(Leader::Answers(wrong)).await,
            Step::Fail(WriteError::Indeterminate(_))
        ));
        // A refusal by the state machine is an answer, passed on as it is.
        let refused = || {
            PeerResponse::ClientWrite(Ok(Err(Rejection::PreconditionFailed {
                key: "k".into(),
                current_version: 4,
            })))
        };
        assert!(matches!(
            forward_write_to(Leader::Answers(refused)).await,
            Step::Done(Err(Rejection::PreconditionFailed { .. }))
        ));
    }

    #[tokio::test]
    async fn a_read_index_is_retried_only_on_a_leader_change_or_when_not_sent() {
        let read = |leader| async move {
            let addr = fake_leader(leader).await;
            let answer = client(addr)
                .call(PeerRequest::ReadIndex, Duration::from_millis(300))
                .await;
            forwarded_read(2, answer)
        };
        let index = || PeerResponse::ReadIndex(Ok(42));
        assert!(matches!(read(Leader::Answers(index)).await, Step::Done(42)));
        let moved = || PeerResponse::ReadIndex(Err(ForwardError::NotLeader(None)));
        assert!(matches!(
            read(Leader::Answers(moved)).await,
            Step::LeaderMoved(_)
        ));
        assert!(matches!(read(Leader::Refuses).await, Step::Unreachable(_)));
        for leader in [Leader::HangsUp, Leader::Silent] {
            assert!(matches!(
                read(leader).await,
                Step::Fail(ReadError::Unavailable(_))
            ));
        }
    }
}
