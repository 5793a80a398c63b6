//! A fault-injecting TCP proxy for one directed link (for example n1 → n3, or a client → n2).
//!
//! Owns: [`Proxy`] (listens on an ephemeral loopback port and forwards each connection to one
//! target) and [`ProxyHandle`] (a cheap, cloneable switch of the [`LinkMode`], and
//! [`ProxyHandle::sever`], which aborts the connections open now without changing the mode).
//!
//! Modes, applied to new and existing connections as soon as they change (every connection
//! watches the mode while it waits to read or write):
//! - `Pass`: forward bytes both ways.
//! - `Drop`: close every connection (FIN), and close new ones right after accepting them.
//! - `Reset`: like `Drop`, but abort with RST (SO_LINGER 0).
//! - `Blackhole`: accept, but forward nothing and answer nothing; nothing is read either, so the
//!   sender stalls once the kernel buffers fill, as behind a dead route. After a heal, what was
//!   held is delivered (like TCP retransmission), and new connections are made upstream.
//! - `Delay`: forward each chunk `latency_ms` + uniform `0..=jitter_ms` after it was read,
//!   never reordering a connection's bytes.
//!
//! Severing exists for the end of a test: a black-holed or delayed connection holds bytes that
//! a heal would deliver late (a request whose client gave up long ago), so the runner severs
//! every connection before it heals, and nothing sent during a fault arrives after it.
//!
//! Invariants: memory per connection is bounded ([`CHUNK_BYTES_MAX`] × [`DELAY_QUEUE_CHUNKS`]
//! per direction), connections are bounded ([`CONNECTIONS_MAX`]), and every task belongs to
//! the proxy's accept task, so stopping or dropping the [`Proxy`] ends all of them. Jitter comes
//! from a seed.
//!
//! Leaves out: which links to cut (see `nemesis.rs`) and per-direction faults inside one
//! connection; a one-way cut is a cut of one directed link's proxy.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Largest chunk read and forwarded at once.
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks queued per direction while they wait out their delay; when full, the proxy stops
/// reading and TCP backpressure reaches the sender.
pub const DELAY_QUEUE_CHUNKS: usize = 64;
/// Open connections per proxy; past this, new connections are closed at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// How long to wait for the target to accept; on timeout the client's connection is reset, as
/// if the target were down.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// The largest latency or jitter accepted (a minute): larger values are surely mistakes and
/// would hold connections past any test.
pub const DELAY_MS_MAX: u64 = 60_000;

/// What the link does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkMode {
    Pass,
    Drop,
    Blackhole,
    Reset,
    Delay { latency_ms: u64, jitter_ms: u64 },
}

impl LinkMode {
    /// Bytes may flow.
    fn forwards(self) -> bool {
        matches!(self, LinkMode::Pass | LinkMode::Delay { .. })
    }

    /// Connections must be closed, and how.
    fn cut(self) -> Option<Cut> {
        match self {
            LinkMode::Drop => Some(Cut::Close),
            LinkMode::Reset => Some(Cut::Reset),
            _ => None,
        }
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy to {target}: cannot listen: {source}")]
    Bind {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("delay of {0} ms is above the limit of {DELAY_MS_MAX} ms")]
    DelayTooLarge(u64),
}

/// Changes the mode of one proxy; clones share the same switch.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    mode: Arc<watch::Sender<LinkMode>>,
    /// Bumped by [`ProxyHandle::sever`]; each connection aborts when it changes.
    generation: Arc<watch::Sender<u64>>,
}

impl ProxyHandle {
    /// Switches the mode; every connection sees it at its next read or write.
    pub fn set_mode(&self, mode: LinkMode) -> Result<(), ProxyError> {
        if let LinkMode::Delay {
            latency_ms,
            jitter_ms,
        } = mode
        {
            let largest = latency_ms.max(jitter_ms);
            if largest > DELAY_MS_MAX {
                return Err(ProxyError::DelayTooLarge(largest));
            }
        }
        self.mode.send_replace(mode);
        Ok(())
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Aborts (RST) every connection open now, discarding what it holds; later connections are
    /// unaffected and the mode stays as it is.
    pub fn sever(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }
}

/// A running proxy. Dropping it stops it too (without waiting), ending every connection.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    handle: ProxyHandle,
    /// Asks the accept task to close everything and finish.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards to `target`, starting in `Pass`.
    /// `seed` drives the delay jitter.
    pub async fn start(target: SocketAddr, seed: u64) -> Result<Proxy, ProxyError> {
        Proxy::start_from(target, seed, None).await
    }

    /// Like [`Proxy::start`], but the connections to `target` leave from `source` (an address
    /// of this host) when given: the netns relays use it to give each zone's clients their own
    /// source address.
    pub async fn start_from(
        target: SocketAddr,
        seed: u64,
        source: Option<IpAddr>,
    ) -> Result<Proxy, ProxyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| ProxyError::Bind { target, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { target, source })?;
        let (sender, receiver) = watch::channel(LinkMode::Pass);
        let (generation, generation_receiver) = watch::channel(0u64);
        let (shutdown, shutdown_receiver) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            Upstream { target, source },
            Watches {
                mode: receiver,
                generation: generation_receiver,
            },
            seed,
            shutdown_receiver,
        ));
        Ok(Proxy {
            local_addr,
            target,
            handle: ProxyHandle {
                mode: Arc::new(sender),
                generation: Arc::new(generation),
            },
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Where clients connect instead of the target.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// Stops listening and closes every connection; returns once all of them are closed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // An error means the accept task is already gone.
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Where connections go, and from which local address.
#[derive(Debug, Clone, Copy)]
struct Upstream {
    target: SocketAddr,
    source: Option<IpAddr>,
}

impl Upstream {
    async fn connect(self) -> io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(self.target).await;
        };
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.target).await
    }
}

/// What every connection watches: the mode, and the sever generation.
#[derive(Debug, Clone)]
struct Watches {
    mode: watch::Receiver<LinkMode>,
    generation: watch::Receiver<u64>,
}

/// Accepts connections and owns their tasks (dropping the JoinSet aborts them all).
async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    watches: Watches,
    seed: u64,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let mut connection_count: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(error) => {
                        // Out of descriptors or similar; refusing one connection is the fault
                        // the caller would see anyway.
                        tracing::warn!(target = %upstream.target, %error, "proxy accept failed");
                        continue;
                    }
                };
                if connections.len() >= CONNECTIONS_MAX {
                    tracing::warn!(target = %upstream.target, "proxy connection limit reached, closing");
                    continue;
                }
                connection_count += 1;
                // Each connection gets its own jitter stream derived from the seed.
                let connection_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(connection_count);
                let mut generation = watches.generation.clone();
                // Only severs after this accept concern the new connection.
                generation.borrow_and_update();
                connections.spawn(connection(socket, upstream, watches.mode.clone(), generation, connection_seed));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => {
                // Aborts every connection task and waits until their sockets are closed.
                connections.shutdown().await;
                return;
            }
        }
    }
}

/// How a cut closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Close,
    Reset,
}

/// Waits while blackholed; returns None when bytes may flow, or the cut to apply.
async fn wait_until_open(mode: &mut watch::Receiver<LinkMode>) -> Option<Cut> {
    loop {
        let current = *mode.borrow_and_update();
        if current.forwards() {
            return None;
        }
        if let Some(cut) = current.cut() {
            return Some(cut);
        }
        if mode.changed().await.is_err() {
            return Some(Cut::Close);
        }
    }
}

/// Resolves when the mode says to cut connections.
async fn wait_for_cut(mut mode: watch::Receiver<LinkMode>) -> Cut {
    loop {
        if let Some(cut) = mode.borrow_and_update().cut() {
            return cut;
        }
        if mode.changed().await.is_err() {
            return Cut::Close;
        }
    }
}

/// Waits until bytes may flow; pends during a cut (the connection's cut watcher ends it).
async fn wait_forwarding(mode: &mut watch::Receiver<LinkMode>) -> io::Result<()> {
    loop {
        if mode.borrow_and_update().forwards() {
            return Ok(());
        }
        if mode.changed().await.is_err() {
            return Err(io::Error::other("proxy stopped"));
        }
    }
}

fn abort(stream: &TcpStream) {
    // Best effort: the socket is closed right after either way.
    let _ = stream.set_zero_linger();
}

/// One proxied connection, from accept to close. A change of `generation` (a sever) aborts it
/// with RST at any point.
async fn connection(
    mut client: TcpStream,
    upstream_to: Upstream,
    mut mode: watch::Receiver<LinkMode>,
    mut generation: watch::Receiver<u64>,
    seed: u64,
) {
    let opened = tokio::select! {
        opened = wait_until_open(&mut mode) => opened,
        _ = generation.changed() => Some(Cut::Reset),
    };
    match opened {
        Some(Cut::Close) => return,
        Some(Cut::Reset) => return abort(&client),
        None => {}
    }
    let connect = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        upstream_to.connect(),
    );
    let mut upstream = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            _ => return abort(&client),
        },
        _ = generation.changed() => return abort(&client),
    };
    // Latency comes from the mode, not from Nagle's algorithm.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let cut = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let forward = pump(
            client_read,
            upstream_write,
            mode.clone(),
            seed.wrapping_mul(2),
        );
        let backward = pump(
            upstream_read,
            client_write,
            mode.clone(),
            seed.wrapping_mul(2) + 1,
        );
        tokio::select! {
            // Either direction failing ends both; a clean EOF half-closes and waits for the other.
            _ = async { tokio::try_join!(forward, backward) } => None,
            cut = wait_for_cut(mode) => Some(cut),
            _ = generation.changed() => Some(Cut::Reset),
        }
    };
    if cut == Some(Cut::Reset) {
        abort(&client);
        abort(&upstream);
    }
}

/// Copies one direction: reads chunks while the link forwards, delays them per the mode, and
/// writes them in order. Ends at EOF (after shutting down the write side) or on an error.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    mode: watch::Receiver<LinkMode>,
    seed: u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (sender, mut receiver) = mpsc::channel::<(Vec<u8>, Instant)>(DELAY_QUEUE_CHUNKS);
    let mut read_mode = mode.clone();
    let mut write_mode = mode;
    let read_side = async move {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        let mut last_due = Instant::now();
        loop {
            wait_forwarding(&mut read_mode).await?;
            let read = tokio::select! {
                read = reader.read(&mut buffer) => read?,
                changed = read_mode.changed() => {
                    changed.map_err(|_| io::Error::other("proxy stopped"))?;
                    continue;
                }
            };
            if read == 0 {
                return Ok::<(), io::Error>(());
            }
            let delay_ms = match *read_mode.borrow() {
                LinkMode::Delay {
                    latency_ms,
                    jitter_ms,
                } => latency_ms + rng.random_range(0..=jitter_ms),
                _ => 0,
            };
            // Never before an earlier chunk: per-connection order is kept.
            let due = (Instant::now() + Duration::from_millis(delay_ms)).max(last_due);
            last_due = due;
            if sender.send((buffer[..read].to_vec(), due)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write_side = async move {
        while let Some((chunk, due)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            wait_forwarding(&mut write_mode).await?;
            writer.write_all(&chunk).await?;
        }
        writer.shutdown().await
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;
    use tokio::time::timeout;

    /// Every wait in these tests is bounded by this.
    const TEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long "nothing arrives" is watched for.
    const SILENCE: Duration = Duration::from_millis(300);

    /// An echo server on an ephemeral port; it ends with the test's runtime.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn connect(proxy: &Proxy) -> TcpStream {
        timeout(TEST_TIMEOUT, TcpStream::connect(proxy.local_addr()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write");
        let mut back = vec![0u8; message.len()];
        timeout(TEST_TIMEOUT, stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read");
        back
    }

    /// Reads until EOF or error; returns the error kind, if any.
    async fn read_until_closed(stream: &mut TcpStream) -> Option<io::ErrorKind> {
        let mut buffer = [0u8; 64];
        loop {
            match timeout(TEST_TIMEOUT, stream.read(&mut buffer))
                .await
                .expect("closed in time")
            {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(error.kind()),
            }
        }
    }

    async fn assert_silent(stream: &mut TcpStream) {
        let mut buffer = [0u8; 16];
        assert!(
            timeout(SILENCE, stream.read(&mut buffer)).await.is_err(),
            "nothing may arrive"
        );
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        let big = vec![7u8; 3 * CHUNK_BYTES_MAX + 5];
        assert_eq!(round_trip(&mut stream, &big).await, big);
    }

    #[tokio::test]
    async fn drop_closes_existing_and_new_connections_and_heal_restores() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let handle = proxy.handle();
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, b"a").await, b"a");
        handle.set_mode(LinkMode::Drop).expect("mode");
        read_until_closed(&mut existing).await;
        let mut fresh = connect(&proxy).await;
        read_until_closed(&mut fresh).await;
        handle.set_mode(LinkMode::Pass).expect("mode");
        let mut healed = connect(&proxy).await;
        assert_eq!(round_trip(&mut healed, b"b").await, b"b");
    }

    #[tokio::test]
    async fn reset_aborts_connections() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, b"a").await, b"a");
        proxy.handle().set_mode(LinkMode::Reset).expect("mode");
        assert_eq!(
            read_until_closed(&mut existing).await,
            Some(io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn blackhole_forwards_nothing_until_healed() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let handle = proxy.handle();
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, b"a").await, b"a");
        handle.set_mode(LinkMode::Blackhole).expect("mode");
        existing.write_all(b"held").await.expect("write");
        assert_silent(&mut existing).await;
        // New connections are accepted but never answered.
        let mut fresh = connect(&proxy).await;
        fresh.write_all(b"new").await.expect("write");
        assert_silent(&mut fresh).await;
        // After the heal, what was held arrives, as TCP would retransmit it.
        handle.set_mode(LinkMode::Pass).expect("mode");
        let mut back = [0u8; 4];
        timeout(TEST_TIMEOUT, existing.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&back, b"held");
        let mut back = [0u8; 3];
        timeout(TEST_TIMEOUT, fresh.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&back, b"new");
    }

    #[tokio::test]
    async fn delay_adds_at_least_the_latency_and_keeps_order() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let mut stream = connect(&proxy).await;
        proxy
            .handle()
            .set_mode(LinkMode::Delay {
                latency_ms: 100,
                jitter_ms: 30,
            })
            .expect("mode");
        let started = StdInstant::now();
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let chunk = [i; 10];
            stream.write_all(&chunk).await.expect("write");
            expected.extend_from_slice(&chunk);
        }
        let mut back = vec![0u8; expected.len()];
        timeout(TEST_TIMEOUT, stream.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(back, expected, "order is preserved under jitter");
        assert!(proxy
            .handle()
            .set_mode(LinkMode::Delay {
                latency_ms: DELAY_MS_MAX + 1,
                jitter_ms: 0
            })
            .is_err());
    }

    #[tokio::test]
    async fn a_one_way_cut_leaves_the_other_direction_working() {
        let echo = echo_server().await;
        let a_to_b = Proxy::start(echo, 1).await.expect("proxy");
        let b_to_a = Proxy::start(echo, 2).await.expect("proxy");
        a_to_b.handle().set_mode(LinkMode::Blackhole).expect("mode");
        let mut cut = connect(&a_to_b).await;
        cut.write_all(b"x").await.expect("write");
        assert_silent(&mut cut).await;
        let mut open = connect(&b_to_a).await;
        assert_eq!(round_trip(&mut open, b"y").await, b"y");
    }

    #[tokio::test]
    async fn sever_resets_open_connections_and_discards_what_they_hold() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let handle = proxy.handle();
        let mut open = connect(&proxy).await;
        assert_eq!(round_trip(&mut open, b"a").await, b"a");
        handle.set_mode(LinkMode::Blackhole).expect("mode");
        let mut held = connect(&proxy).await;
        held.write_all(b"late").await.expect("write");
        assert_silent(&mut held).await;
        handle.sever();
        assert_eq!(
            read_until_closed(&mut open).await,
            Some(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(
            read_until_closed(&mut held).await,
            Some(io::ErrorKind::ConnectionReset),
            "the held request is dropped, not delivered at the heal"
        );
        assert_eq!(handle.mode(), LinkMode::Blackhole, "the mode is unchanged");
        handle.set_mode(LinkMode::Pass).expect("mode");
        let mut fresh = connect(&proxy).await;
        assert_eq!(round_trip(&mut fresh, b"b").await, b"b");
    }

    #[tokio::test]
    async fn upstream_connections_leave_from_the_given_source() {
        // A server that answers with the address the connection came from.
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let target = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, peer)) = listener.accept().await {
                let _ = socket.write_all(peer.ip().to_string().as_bytes()).await;
            }
        });
        let source: IpAddr = "127.0.0.2".parse().expect("ip");
        let proxy = timeout(TEST_TIMEOUT, Proxy::start_from(target, 1, Some(source)))
            .await
            .expect("in time")
            .expect("start");
        let mut stream = connect(&proxy).await;
        assert_eq!(read_until_closed_text(&mut stream).await, "127.0.0.2");
        let plain = Proxy::start(target, 1).await.expect("start");
        let mut stream = connect(&plain).await;
        assert_eq!(read_until_closed_text(&mut stream).await, "127.0.0.1");
    }

    async fn read_until_closed_text(stream: &mut TcpStream) -> String {
        let mut text = Vec::new();
        timeout(TEST_TIMEOUT, stream.read_to_end(&mut text))
            .await
            .expect("in time")
            .expect("read");
        String::from_utf8(text).expect("utf-8")
    }

    #[tokio::test]
    async fn stopping_closes_everything() {
        let proxy = Proxy::start(echo_server().await, 1).await.expect("proxy");
        let addr = proxy.local_addr();
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, b"a").await, b"a");
        timeout(TEST_TIMEOUT, proxy.stop())
            .await
            .expect("stops in time");
        read_until_closed(&mut existing).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
