//! The listening side of the peer transport.
//!
//! Each accepted connection must open with a valid [`Hello`] within `HANDSHAKE_TIMEOUT`. After
//! that, requests are read in a loop and handled concurrently (at most
//! [`limits::PEER_INFLIGHT_PER_CONNECTION_MAX`] at once; the reader waits for a free slot, which
//! pushes back on the sender through TCP). Answers go out through a bounded queue and one writer.
//!
//! A malformed, oversized or truncated frame closes that connection and is logged; the node and
//! its other connections carry on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

use super::codec;
use super::codec::Envelope;
use super::codec::Hello;
use super::codec::HelloReply;
use super::codec::PeerRequest;
use super::codec::PeerResponse;
use crate::limits;
use crate::raft::NodeId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handles the requests peers send. Implemented by the node's service layer.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(
        &self,
        from: NodeId,
        request: PeerRequest,
    ) -> impl std::future::Future<Output = PeerResponse> + Send;
}

/// Who this node is, for checking handshakes.
#[derive(Clone, Debug)]
pub struct Identity {
    pub me: NodeId,
    pub cluster_id: String,
}

/// Accept peer connections until the listener fails or the task is dropped.
pub async fn serve<H: PeerHandler>(listener: TcpListener, identity: Identity, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let identity = identity.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, &identity, handler).await {
                        tracing::warn!(%remote, error = %e, "peer connection closed on a protocol error");
                        metrics::counter!("metrokv_peer_protocol_errors_total").increment(1);
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::error!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Check a handshake; `Err` carries the reason sent back to the dialer.
fn check_hello(hello: &Hello, identity: &Identity) -> Result<(), String> {
    if hello.protocol_version != codec::PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not {}",
            hello.protocol_version,
            codec::PROTOCOL_VERSION
        ));
    }
    if hello.cluster_id != identity.cluster_id {
        return Err(format!(
            "cluster id {:?} is not {:?}",
            hello.cluster_id, identity.cluster_id
        ));
    }
    if hello.to != identity.me {
        return Err(format!(
            "this is node {}, not node {}",
            identity.me, hello.to
        ));
    }
    Ok(())
}

async fn serve_connection<H: PeerHandler>(
    mut stream: TcpStream,
    identity: &Identity,
    handler: Arc<H>,
) -> Result<(), codec::FrameError> {
    stream.set_nodelay(true)?;
    let hello: Hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, codec::read_value(&mut stream))
        .await
    {
        Err(_) => {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake").into())
        }
        // A dialer that gave up before saying hello (its connect timed out) is not an error.
        Ok(Err(codec::FrameError::Closed)) => return Ok(()),
        Ok(result) => result?,
    };
    if let Err(why) = check_hello(&hello, identity) {
        codec::write_value(&mut stream, &HelloReply::Refused(why.clone())).await?;
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why).into());
    }
    codec::write_value(&mut stream, &HelloReply::Accepted).await?;
    let from = hello.from;

    let (mut read_half, mut write_half) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(limits::PEER_SEND_QUEUE_FRAMES);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if write_half.write_all(&frame).await.is_err() {
                break;
            }
        }
    });

    let slots = Arc::new(Semaphore::new(limits::PEER_INFLIGHT_PER_CONNECTION_MAX));
    let mut buf = Vec::new();
    let result = loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match codec::read_frame(&mut read_half, &mut buf).await {
            Ok(()) => {}
            Err(codec::FrameError::Closed) => break Ok(()),
            Err(e) => break Err(e),
        }
        let envelope: Envelope<PeerRequest> = match codec::decode(&buf) {
            Ok(envelope) => envelope,
            Err(e) => break Err(e),
        };
        let handler = handler.clone();
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let kind = envelope.body.kind();
            let body = handler.handle(from, envelope.body).await;
            match codec::encode_frame(&Envelope {
                id: envelope.id,
                body,
            }) {
                Ok(frame) => {
                    let _ = out_tx.send(frame).await;
                }
                Err(e) => tracing::error!(error = %e, kind, "cannot encode a peer answer"),
            }
            drop(permit);
        });
    };
    drop(out_tx);
    // Let answers already queued go out before the connection closes.
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::client::CallError;
    use crate::transport::client::Dialer;
    use crate::transport::client::PeerClient;
    use crate::transport::codec::Channel;
    use crate::transport::codec::NodeStatus;

    struct Echo;

    impl PeerHandler for Echo {
        async fn handle(&self, from: NodeId, request: PeerRequest) -> PeerResponse {
            match request {
                PeerRequest::Status => PeerResponse::Status(NodeStatus {
                    id: from,
                    role: "test".into(),
                    term: 0,
                    leader: None,
                    commit_index: 0,
                    applied_index: 0,
                }),
                other => PeerResponse::Failed(other.kind().into()),
            }
        }
    }

    async fn start() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let identity = Identity {
            me: 2,
            cluster_id: "test".into(),
        };
        tokio::spawn(serve(listener, identity, Arc::new(Echo)));
        addr
    }

    fn client(addr: &str, cluster: &str, to: NodeId) -> PeerClient {
        PeerClient::new(
            Dialer {
                me: 1,
                cluster_id: cluster.into(),
            },
            to,
            addr.into(),
            Channel::Forward,
        )
    }

    #[tokio::test]
    async fn calls_are_answered_and_connections_reused() {
        let addr = start().await;
        let c = client(&addr, "test", 2);
        for _ in 0..3 {
            let r = c
                .call(PeerRequest::Status, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                matches!(r, PeerResponse::Status(NodeStatus { id: 1, .. })),
                "{r:?}"
            );
        }
        // Many concurrent calls on the one connection, answered by id.
        let calls: Vec<_> = (0..50)
            .map(|_| c.call(PeerRequest::Status, Duration::from_secs(5)))
            .collect();
        for r in futures::future::join_all(calls).await {
            assert!(matches!(r, Ok(PeerResponse::Status(_))));
        }
    }

    #[tokio::test]
    async fn wrong_cluster_or_node_is_refused() {
        let addr = start().await;
        let e = client(&addr, "other", 2)
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, CallError::Unreachable { .. }) && e.to_string().contains("cluster id"),
            "{e}"
        );
        let e = client(&addr, "test", 3)
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not node 3"), "{e}");
    }

    #[tokio::test]
    async fn garbage_closes_only_that_connection() {
        let addr = start().await;
        // A raw connection that sends a valid hello, then garbage.
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        let hello = Hello {
            protocol_version: codec::PROTOCOL_VERSION,
            cluster_id: "test".into(),
            from: 9,
            to: 2,
            channel: Channel::Forward,
        };
        codec::write_value(&mut raw, &hello).await.unwrap();
        let reply: HelloReply = codec::read_value(&mut raw).await.unwrap();
        assert_eq!(reply, HelloReply::Accepted);
        raw.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
            .await
            .unwrap();
        let mut rest = Vec::new();
        // The server closes the connection: reading ends (no hang, no crash).
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
        )
        .await;
        assert!(n.is_ok(), "server should close the connection");
        // A connection without a hello that sends garbage is closed too.
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&[0xff; 64]).await.unwrap();
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
        )
        .await;
        assert!(n.is_ok());
        // The server still serves well-behaved peers.
        let r = client(&addr, "test", 2)
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await;
        assert!(matches!(r, Ok(PeerResponse::Status(_))));
    }

    /// On a slow link (here: a handshake that takes 150 ms) a call shorter than the handshake
    /// fails, but the dial goes on, only one dial runs, and a later call uses the connection.
    #[tokio::test]
    async fn a_dial_outlives_a_short_call_and_is_shared() {
        use std::sync::atomic::AtomicUsize;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _hello: Hello = codec::read_value(&mut stream).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    codec::write_value(&mut stream, &HelloReply::Accepted)
                        .await
                        .unwrap();
                    // Answer Status requests until the dialer goes away.
                    let mut buf = Vec::new();
                    while codec::read_frame(&mut stream, &mut buf).await.is_ok() {
                        let req: Envelope<PeerRequest> = codec::decode(&buf).unwrap();
                        let body = Echo.handle(1, req.body).await;
                        let frame = codec::encode_frame(&Envelope { id: req.id, body }).unwrap();
                        stream.write_all(&frame).await.unwrap();
                    }
                });
            }
        });
        let c = client(&addr, "test", 2);
        let short = Duration::from_millis(30);
        let calls: Vec<_> = (0..5).map(|_| c.call(PeerRequest::Status, short)).collect();
        for r in futures::future::join_all(calls).await {
            assert!(
                r.unwrap_err().not_sent(),
                "a call shorter than the handshake fails unsent"
            );
        }
        // The dial finishes in the background; poll with short calls until one gets through.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(PeerResponse::Status(_)) = c.call(PeerRequest::Status, short).await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the background dial never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one dial, shared"
        );
    }

    #[tokio::test]
    async fn a_dead_peer_is_unreachable_and_a_restarted_one_is_reached_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(&addr.to_string(), "test", 2);
        let e = c
            .call(PeerRequest::Status, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.not_sent(), "{e}");
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(serve(
            listener,
            Identity {
                me: 2,
                cluster_id: "test".into(),
            },
            Arc::new(Echo),
        ));
        assert!(matches!(
            c.call(PeerRequest::Status, Duration::from_secs(5)).await,
            Ok(PeerResponse::Status(_))
        ));
    }
}
