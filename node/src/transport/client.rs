//! The dialing side of the peer transport: one persistent, multiplexed connection per
//! (peer, channel), shared by every caller.
//!
//! A [`PeerClient`] connects lazily, performs the handshake, and then keeps a writer task (fed by a
//! bounded queue) and a reader task that routes answers to waiting callers by request id. When the
//! connection breaks, every caller waiting on it gets [`CallError::Lost`] and the next call dials
//! again. Each call has a timeout; an expired call's late answer is dropped.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::tls::PeerTls;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;

use super::codec;
use super::codec::Channel;
use super::codec::Envelope;
use super::codec::Hello;
use super::codec::HelloReply;
use super::codec::PeerRequest;
use super::codec::PeerResponse;
use super::codec::Refusal;
use crate::limits;
use crate::raft::types::NodeId;
use crate::storage::StorageIds;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect: the request was not sent.
    #[error("cannot reach node {target} at {addr}: {reason}")]
    Unreachable {
        target: NodeId,
        addr: String,
        reason: String,
    },
    /// The connection broke after the request may have been sent.
    #[error("connection to node {target} lost: {reason}")]
    Lost { target: NodeId, reason: String },
    #[error("node {target} did not answer within {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    /// The handshake was refused, by the peer or by us (its storage is not the recorded one):
    /// the request was not sent.
    #[error("node {target} refused the connection: {refusal}")]
    Refused { target: NodeId, refusal: Refusal },
}

impl CallError {
    /// True when the request certainly did not reach the peer.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. } | CallError::Refused { .. }
        )
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>>;

#[derive(Clone)]
struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    /// Set by the reader task when the connection ends.
    dead: Arc<AtomicBool>,
}

/// The connection, or the dial that will produce it. At most one dial runs at a time; callers
/// that arrive meanwhile wait on its outcome instead of dialing again.
#[derive(Default)]
struct ConnState {
    live: Option<Conn>,
    /// Set while a dial runs; carries its outcome once it is done.
    dialing: Option<watch::Receiver<Option<Result<(), DialFailure>>>>,
}

/// Why a dial failed, as shared with every caller waiting on it.
#[derive(Clone, Debug)]
enum DialFailure {
    Unreachable(String),
    Refused(Refusal),
}

impl Conn {
    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.frames.is_closed()
    }
}

/// Identity this node presents when it dials, and the records it checks the peer against.
#[derive(Clone, Debug)]
pub struct Dialer {
    pub me: NodeId,
    pub cluster_id: String,
    pub storage_id: u64,
    pub ids: Arc<StorageIds>,
    /// Mutual TLS to every peer, when configured.
    pub tls: Option<Arc<PeerTls>>,
}

/// A dialed peer connection, plain or TLS.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> PeerIo for T {}

#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    target: NodeId,
    addr: String,
    channel: Channel,
    state: Mutex<ConnState>,
    next_id: AtomicU64,
    refusal_logged: Mutex<Option<std::time::Instant>>,
}

/// Least time between two log lines about the same refused peer.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl PeerClient {
    pub fn new(dialer: Dialer, target: NodeId, addr: String, channel: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer,
                target,
                addr,
                channel,
                state: Mutex::default(),
                next_id: AtomicU64::new(1),
                refusal_logged: Mutex::default(),
            }),
        }
    }

    pub fn target(&self) -> NodeId {
        self.inner.target
    }

    /// Send `request` and wait for its answer, at most `timeout` in all.
    pub async fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame =
            codec::encode_frame(&Envelope { id, body: request }).map_err(|e| CallError::Lost {
                target: inner.target,
                reason: format!("cannot encode request: {e}"),
            })?;
        let deadline = tokio::time::Instant::now() + timeout;

        let Conn {
            frames,
            pending,
            dead,
        } = self.connection(deadline).await?;

        let (tx, rx) = oneshot::channel();
        lock(&pending).insert(id, tx);
        if dead.load(Ordering::Acquire) {
            lock(&pending).remove(&id);
            return Err(CallError::Lost {
                target: inner.target,
                reason: "connection closed".into(),
            });
        }
        let sent = tokio::time::timeout_at(deadline, frames.send(frame)).await;
        let result = match sent {
            Err(_) => Err(CallError::Timeout {
                target: inner.target,
                timeout,
            }),
            Ok(Err(_)) => Err(CallError::Lost {
                target: inner.target,
                reason: "connection closed".into(),
            }),
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(_)) => Err(CallError::Lost {
                    target: inner.target,
                    reason: "connection closed".into(),
                }),
                Err(_) => Err(CallError::Timeout {
                    target: inner.target,
                    timeout,
                }),
            },
        };
        if result.is_err() {
            lock(&pending).remove(&id);
        }
        result
    }

    /// The live connection, waiting at most until `deadline` for a dial. The dial itself is
    /// bounded by [`limits::PEER_CONNECT_TIMEOUT_MS`], not by the caller: when a short call (a
    /// 30 ms heartbeat) gives up on a slow link, the dial goes on and the next call finds the
    /// connection.
    async fn connection(&self, deadline: tokio::time::Instant) -> Result<Conn, CallError> {
        let inner = &self.inner;
        let unreachable = |reason: String| CallError::Unreachable {
            target: inner.target,
            addr: inner.addr.clone(),
            reason,
        };
        let mut outcome = {
            let mut state = lock(&inner.state);
            if let Some(conn) = state.live.as_ref().filter(|c| c.is_alive()) {
                return Ok(conn.clone());
            }
            match &state.dialing {
                Some(outcome) => outcome.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.dialing = Some(rx.clone());
                    let client = self.clone();
                    tokio::spawn(async move {
                        let result = client.dial().await;
                        if let Err(CallError::Refused { target, refusal }) = &result {
                            client.log_refusal(*target, refusal);
                        }
                        let mut state = lock(&client.inner.state);
                        state.dialing = None;
                        let outcome = match result {
                            Ok(conn) => {
                                state.live = Some(conn);
                                Ok(())
                            }
                            Err(CallError::Unreachable { reason, .. }) => {
                                Err(DialFailure::Unreachable(reason))
                            }
                            Err(CallError::Refused { refusal, .. }) => {
                                Err(DialFailure::Refused(refusal))
                            }
                            Err(other) => Err(DialFailure::Unreachable(other.to_string())),
                        };
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let done = tokio::time::timeout_at(deadline, outcome.wait_for(Option::is_some))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|_| unreachable("the dial was abandoned".into()))?
            .clone();
        match done {
            Some(Ok(())) => lock(&inner.state)
                .live
                .clone()
                .ok_or_else(|| unreachable("the new connection closed at once".into())),
            Some(Err(DialFailure::Unreachable(reason))) => Err(unreachable(reason)),
            Some(Err(DialFailure::Refused(refusal))) => Err(CallError::Refused {
                target: inner.target,
                refusal,
            }),
            None => Err(unreachable("the dial was abandoned".into())),
        }
    }

    /// Log a refused handshake, at most every [`REFUSAL_LOG_INTERVAL`] per peer and channel: a
    /// refused peer is dialed again on every heartbeat.
    fn log_refusal(&self, target: NodeId, refusal: &Refusal) {
        metrics::counter!("metrokv_peer_handshakes_refused_total").increment(1);
        let mut last = lock(&self.inner.refusal_logged);
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
            *last = Some(std::time::Instant::now());
            tracing::error!(target_node = target, channel = ?self.inner.channel, %refusal, "peer handshake refused");
        }
    }

    async fn dial(&self) -> Result<Conn, CallError> {
        let inner = &self.inner;
        let unreachable = |reason: String| CallError::Unreachable {
            target: inner.target,
            addr: inner.addr.clone(),
            reason,
        };
        let handshake = async {
            let tcp = TcpStream::connect(&inner.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tcp.set_nodelay(true)
                .map_err(|e| unreachable(e.to_string()))?;
            let mut stream: Box<dyn PeerIo> = match &inner.dialer.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    // The peer must hold the certificate of the member we meant to reach.
                    let name = rustls::pki_types::ServerName::try_from(crate::tls::member_name(
                        inner.target,
                    ))
                    .map_err(|e| unreachable(e.to_string()))?;
                    let connector = tokio_rustls::TlsConnector::from(tls.current().client.clone());
                    Box::new(
                        connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| unreachable(format!("TLS handshake: {e}")))?,
                    )
                }
            };
            let hello = Hello {
                protocol_version: codec::PROTOCOL_VERSION,
                cluster_id: inner.dialer.cluster_id.clone(),
                from: inner.dialer.me,
                to: inner.target,
                channel: inner.channel,
                storage_id: inner.dialer.storage_id,
            };
            codec::write_value(&mut stream, &hello)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let refused = |refusal| CallError::Refused {
                target: inner.target,
                refusal,
            };
            match codec::read_hello::<_, HelloReply>(&mut stream)
                .await
                .map_err(|e| unreachable(e.to_string()))?
            {
                HelloReply::Accepted { storage_id } => {
                    // The peer must be on the storage the cluster recorded for it.
                    inner
                        .dialer
                        .ids
                        .check(inner.target, storage_id)
                        .map_err(|c| {
                            refused(Refusal::StorageChanged {
                                node: c.node,
                                recorded: c.recorded,
                                presented: c.presented,
                            })
                        })?;
                    Ok(stream)
                }
                HelloReply::Refused(refusal) => Err(refused(refusal)),
            }
        };
        let connect = Duration::from_millis(limits::PEER_CONNECT_TIMEOUT_MS);
        let stream = tokio::time::timeout(connect, handshake)
            .await
            .map_err(|_| unreachable("connect timed out".into()))??;

        let (read_half, mut write_half) = tokio::io::split(stream);
        let mut read_half =
            tokio::io::BufReader::with_capacity(limits::PEER_READ_BUFFER_BYTES, read_half);
        let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(limits::PEER_SEND_QUEUE_FRAMES);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (stop_writer, mut writer_stopped) = oneshot::channel::<()>();

        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                tokio::select! {
                    frame = frames_rx.recv() => match frame {
                        Some(frame) => {
                            if codec::write_queued(&mut write_half, frame, &mut frames_rx, &mut buf)
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = &mut writer_stopped => break,
                }
            }
        });

        let reader_pending = pending.clone();
        let reader_dead = dead.clone();
        let target = inner.target;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let reason = loop {
                if let Err(e) =
                    codec::read_frame(&mut read_half, &mut buf, limits::PEER_FRAME_BYTES_MAX).await
                {
                    break e;
                }
                match codec::decode::<Envelope<PeerResponse>>(&buf) {
                    Ok(envelope) => {
                        if let Some(waiter) = lock(&reader_pending).remove(&envelope.id) {
                            let _ = waiter.send(envelope.body);
                        }
                    }
                    Err(e) => break e,
                }
            };
            tracing::debug!(target_node = target, error = %reason, "peer connection closed");
            // Marking the connection dead makes the next call dial again; dropping the waiters
            // wakes every caller with `Lost`.
            reader_dead.store(true, Ordering::Release);
            lock(&reader_pending).clear();
            let _ = stop_writer.send(());
        });
        Ok(Conn {
            frames: frames_tx,
            pending,
            dead,
        })
    }
}

/// Lock a std mutex; a poisoned lock only means another task panicked while holding it, and the
/// map it guards is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client per (peer, dialed address, channel).
type ClientMap = HashMap<(NodeId, String, Channel), PeerClient>;

/// The shared registry of peer clients, so every part of the node reuses the same connections.
#[derive(Clone)]
pub struct Peers {
    dialer: Dialer,
    /// Addresses that override a peer's advertised one (see `NodeConfig::peer_routes`).
    routes: Arc<std::collections::BTreeMap<NodeId, String>>,
    clients: Arc<Mutex<ClientMap>>,
}

impl Peers {
    pub fn new(dialer: Dialer, routes: std::collections::BTreeMap<NodeId, String>) -> Self {
        Self {
            dialer,
            routes: Arc::new(routes),
            clients: Arc::default(),
        }
    }

    pub fn me(&self) -> NodeId {
        self.dialer.me
    }

    /// The client for `target`, advertised at `addr` (unless a route overrides it).
    pub fn client(&self, target: NodeId, addr: &str, channel: Channel) -> PeerClient {
        let addr = self.routes.get(&target).map_or(addr, String::as_str);
        let mut clients = lock(&self.clients);
        clients
            .entry((target, addr.to_string(), channel))
            .or_insert_with(|| {
                PeerClient::new(self.dialer.clone(), target, addr.to_string(), channel)
            })
            .clone()
    }
}
