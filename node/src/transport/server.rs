//! The listening side of the peer transport.
//!
//! At most [`limits::PEER_CONNECTIONS_MAX`] connections are open at once; one past it is closed
//! at once. Each accepted connection must open with a valid [`Hello`] of at most
//! [`limits::PEER_HELLO_BYTES_MAX`] bytes within [`limits::PEER_HANDSHAKE_TIMEOUT_MS`], from a
//! member whose storage id is the one recorded for it ([`PeerHandler::admit`]). After that,
//! requests are read in a loop and handled concurrently (at most
//! [`limits::PEER_INFLIGHT_PER_CONNECTION_MAX`] at once; the reader waits for a free slot, which
//! pushes back on the sender through TCP). Answers go out through a bounded queue and one writer.
//!
//! Every request gets an answer frame: an answer that cannot be encoded into a frame becomes a
//! [`Failure::AnswerTooLarge`] frame instead of silence, so the caller learns of it at once.
//!
//! A malformed, oversized or truncated frame closes that connection and is logged; the node and
//! its other connections carry on.

use std::sync::Arc;
use std::time::Duration;

use crate::tls::PeerConfigs;
use crate::tls::PeerTls;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

use super::codec;
use super::codec::Envelope;
use super::codec::Failure;
use super::codec::Hello;
use super::codec::HelloReply;
use super::codec::PeerRequest;
use super::codec::PeerResponse;
use super::codec::Refusal;
use crate::limits;
use crate::raft::types::NodeId;

/// Handles the requests peers send. Implemented by the node's service layer.
pub trait PeerHandler: Send + Sync + 'static {
    /// Whether the dialer of `hello` (already known to speak our protocol, for our cluster, to
    /// us) may connect: a member, with the storage recorded for it. `Ok` carries this node's
    /// storage id for the reply.
    fn admit(&self, hello: &Hello) -> Result<u64, Refusal>;

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
pub async fn serve<H: PeerHandler>(
    listener: TcpListener,
    identity: Identity,
    handler: Arc<H>,
    tls: Option<Arc<PeerTls>>,
) {
    let open = Arc::new(Semaphore::new(limits::PEER_CONNECTIONS_MAX));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let Ok(slot) = open.clone().try_acquire_owned() else {
                    // Closing at once costs nothing; the dialer sees a reset and backs off.
                    metrics::counter!("metrokv_peer_connections_refused_total").increment(1);
                    tracing::debug!(%remote, "peer connection refused: too many open");
                    drop(stream);
                    continue;
                };
                let identity = identity.clone();
                let handler = handler.clone();
                let tls = tls.as_ref().map(|t| t.current());
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let served = match tls {
                        None => serve_connection(stream, &identity, handler, None).await,
                        Some(tls) => match accept_tls(stream, &tls).await {
                            Ok((stream, named)) => {
                                serve_connection(stream, &identity, handler, Some(named)).await
                            }
                            Err(e) => {
                                metrics::counter!("metrokv_peer_tls_refused_total").increment(1);
                                tracing::warn!(%remote, error = %e, "peer connection refused in the TLS handshake");
                                drop(slot);
                                return;
                            }
                        },
                    };
                    if let Err(e) = served {
                        tracing::warn!(%remote, error = %e, "peer connection closed on a protocol error");
                        metrics::counter!("metrokv_peer_protocol_errors_total").increment(1);
                    }
                    drop(slot);
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

/// Check the parts of a handshake that do not depend on the cluster's state.
pub(crate) fn check_hello(hello: &Hello, identity: &Identity) -> Result<(), Refusal> {
    if hello.protocol_version != codec::PROTOCOL_VERSION {
        return Err(Refusal::Version {
            got: hello.protocol_version,
            want: codec::PROTOCOL_VERSION,
        });
    }
    if hello.cluster_id != identity.cluster_id {
        return Err(Refusal::Cluster {
            got: hello.cluster_id.clone(),
            want: identity.cluster_id.clone(),
        });
    }
    if hello.to != identity.me {
        return Err(Refusal::WrongNode {
            me: identity.me,
            to: hello.to,
        });
    }
    Ok(())
}

/// The TLS handshake of a peer connection (bounded like ours): the stream and the member ids
/// the dialer's certificate names. A dialer without a certificate from the cluster CA fails
/// here, before a frame is read.
async fn accept_tls(
    stream: TcpStream,
    tls: &PeerConfigs,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Vec<NodeId>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let handshake = Duration::from_millis(limits::PEER_HANDSHAKE_TIMEOUT_MS);
    let stream = tokio::time::timeout(handshake, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake"))??;
    let named = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(crate::tls::member_ids)
        .unwrap_or_default();
    Ok((stream, named))
}

async fn serve_connection<H: PeerHandler, S>(
    mut stream: S,
    identity: &Identity,
    handler: Arc<H>,
    certificate_names: Option<Vec<NodeId>>,
) -> Result<(), codec::FrameError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = Duration::from_millis(limits::PEER_HANDSHAKE_TIMEOUT_MS);
    let hello: Hello = match tokio::time::timeout(handshake, codec::read_hello(&mut stream)).await {
        Err(_) => {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake").into())
        }
        // A dialer that gave up before saying hello (its connect timed out) is not an error.
        Ok(Err(codec::FrameError::Closed)) => return Ok(()),
        Ok(result) => result?,
    };
    let admitted = check_hello(&hello, identity)
        .and_then(|()| match &certificate_names {
            Some(named) if !named.contains(&hello.from) => Err(Refusal::Certificate {
                from: hello.from,
                named: named.clone(),
            }),
            _ => Ok(()),
        })
        .and_then(|()| handler.admit(&hello));
    let storage_id = match admitted {
        Ok(storage_id) => storage_id,
        Err(why) => {
            codec::write_value(&mut stream, &HelloReply::Refused(why.clone())).await?;
            return Err(
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string()).into(),
            );
        }
    };
    codec::write_value(&mut stream, &HelloReply::Accepted { storage_id }).await?;
    let from = hello.from;

    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut read_half =
        tokio::io::BufReader::with_capacity(limits::PEER_READ_BUFFER_BYTES, read_half);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(limits::PEER_SEND_QUEUE_FRAMES);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(frame) = out_rx.recv().await {
            if codec::write_queued(&mut write_half, frame, &mut out_rx, &mut buf)
                .await
                .is_err()
            {
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
        match codec::read_frame(&mut read_half, &mut buf, limits::PEER_FRAME_BYTES_MAX).await {
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
            let frame = answer_frame(envelope.id, body, kind);
            let _ = out_tx.send(frame).await;
            drop(permit);
        });
    };
    drop(out_tx);
    // Let answers already queued go out before the connection closes.
    let _ = writer.await;
    result
}

/// The frame answering request `id`. Answers are bounded to fit a frame (see `limits`); should
/// one not fit, the caller still gets an answer: a [`Failure::AnswerTooLarge`] frame.
fn answer_frame(id: u64, body: PeerResponse, kind: &'static str) -> Vec<u8> {
    match codec::encode_frame(&Envelope { id, body }) {
        Ok(frame) => frame,
        Err(e) => {
            let bytes = match e {
                codec::FrameError::TooLarge { len, .. } => len,
                _ => 0,
            };
            tracing::error!(error = %e, kind, "a peer answer does not fit a frame; answering with an error");
            metrics::counter!("metrokv_peer_answers_too_large_total").increment(1);
            let failure = PeerResponse::Failed(Failure::AnswerTooLarge { bytes });
            codec::encode_frame(&Envelope { id, body: failure })
                .expect("a small failure frame always encodes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::client::CallError;
    use crate::transport::client::Dialer;
    use crate::transport::client::PeerClient;
    use crate::transport::codec::Channel;
    use crate::transport::codec::NodeStatus;
    use tokio::io::AsyncWriteExt;

    struct Echo;

    impl PeerHandler for Echo {
        fn admit(&self, hello: &Hello) -> Result<u64, Refusal> {
            match hello.from {
                66 => Err(Refusal::NotAMember { from: 66 }),
                _ => Ok(0x2222),
            }
        }

        async fn handle(&self, from: NodeId, request: PeerRequest) -> PeerResponse {
            match request {
                PeerRequest::Status => PeerResponse::Status(NodeStatus {
                    id: from,
                    role: "test".into(),
                    term: 0,
                    leader: None,
                    commit_index: 0,
                    applied_index: 0,
                    initialized: true,
                }),
                // An answer far larger than a frame, as a handler bug would produce.
                PeerRequest::ReadIndex => PeerResponse::Failed(Failure::Raft(
                    "x".repeat(limits::PEER_FRAME_BYTES_MAX + 1),
                )),
                other => PeerResponse::Failed(Failure::Raft(other.kind().into())),
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
        tokio::spawn(serve(listener, identity, Arc::new(Echo), None));
        addr
    }

    fn client(addr: &str, cluster: &str, to: NodeId) -> PeerClient {
        client_from(addr, cluster, to, 1)
    }

    fn client_from(addr: &str, cluster: &str, to: NodeId, me: NodeId) -> PeerClient {
        PeerClient::new(
            Dialer {
                me,
                cluster_id: cluster.into(),
                storage_id: 0x1111,
                ids: Arc::new(crate::storage::StorageIds::new()),
                tls: None,
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
            matches!(
                e,
                CallError::Refused {
                    refusal: Refusal::Cluster { .. },
                    ..
                }
            ) && e.not_sent(),
            "{e}"
        );
        let e = client(&addr, "test", 3)
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not node 3"), "{e}");
        let e = client_from(&addr, "test", 2, 66)
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                CallError::Refused {
                    refusal: Refusal::NotAMember { from: 66 },
                    ..
                }
            ),
            "{e}"
        );
    }

    /// The review's second defect: an answer too big for one frame was dropped, and the caller
    /// waited out its whole timeout (a 504 for a write that had committed). Now an answer always
    /// comes back, at once.
    #[tokio::test]
    async fn an_answer_too_large_for_a_frame_comes_back_as_an_error_at_once() {
        let addr = start().await;
        let r = client(&addr, "test", 2)
            .call(PeerRequest::ReadIndex, Duration::from_secs(30))
            .await;
        assert!(
            matches!(r, Ok(PeerResponse::Failed(Failure::AnswerTooLarge { bytes })) if bytes > limits::PEER_FRAME_BYTES_MAX),
            "{r:?}"
        );
    }

    /// A dialer whose storage id differs from the one recorded for its target is refused by the
    /// dialing side too.
    #[tokio::test]
    async fn a_peer_presenting_another_storage_than_recorded_is_refused() {
        let addr = start().await;
        let ids = Arc::new(crate::storage::StorageIds::new());
        ids.set_recorded(2, 0x9999);
        let c = PeerClient::new(
            Dialer {
                me: 1,
                cluster_id: "test".into(),
                storage_id: 0x1111,
                ids: ids.clone(),
                tls: None,
            },
            2,
            addr.clone(),
            Channel::Forward,
        );
        let e = c
            .call(PeerRequest::Status, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                CallError::Refused {
                    refusal: Refusal::StorageChanged {
                        node: 2,
                        recorded: 0x9999,
                        presented: 0x2222
                    },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.not_sent());
    }

    /// The review's seventh defect, on a real socket: a connection that announces a huge hello
    /// is closed, and connections past the cap are closed at once while those within it are
    /// served.
    #[tokio::test]
    async fn handshakes_are_bounded_and_connections_capped() {
        let addr = start().await;
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&(limits::PEER_FRAME_BYTES_MAX as u32).to_be_bytes())
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
        )
        .await;
        assert!(closed.is_ok(), "an oversized hello closes the connection");
        drop(raw);

        // Fill every slot with an accepted connection.
        let hello = Hello {
            protocol_version: codec::PROTOCOL_VERSION,
            cluster_id: "test".into(),
            from: 1,
            to: 2,
            channel: Channel::Forward,
            storage_id: 1,
        };
        let mut held = Vec::new();
        while held.len() < limits::PEER_CONNECTIONS_MAX {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            codec::write_value(&mut s, &hello).await.unwrap();
            // The slot of the closed oversized-hello connection may take a moment to free.
            match codec::read_hello::<_, HelloReply>(&mut s).await {
                Ok(reply) => {
                    assert_eq!(reply, HelloReply::Accepted { storage_id: 0x2222 });
                    held.push(s);
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        // Past the cap, a connection is closed without a reply.
        for _ in 0..20 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = codec::write_value(&mut s, &hello).await;
            let reply = codec::read_hello::<_, HelloReply>(&mut s).await;
            assert!(
                reply.is_err(),
                "a connection past the cap is refused: {reply:?}"
            );
        }
        // A freed slot serves a member again.
        held.pop();
        let c = client(&addr, "test", 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(
            c.call(PeerRequest::Status, Duration::from_secs(1)).await,
            Ok(PeerResponse::Status(_))
        ) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a freed slot is never reused"
            );
            tokio::task::yield_now().await;
        }
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
            storage_id: 1,
        };
        codec::write_value(&mut raw, &hello).await.unwrap();
        let reply: HelloReply = codec::read_hello(&mut raw).await.unwrap();
        assert_eq!(reply, HelloReply::Accepted { storage_id: 0x2222 });
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
                    let _hello: Hello = codec::read_hello(&mut stream).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    codec::write_value(&mut stream, &HelloReply::Accepted { storage_id: 5 })
                        .await
                        .unwrap();
                    // Answer Status requests until the dialer goes away.
                    let mut buf = Vec::new();
                    while codec::read_frame(&mut stream, &mut buf, limits::PEER_FRAME_BYTES_MAX)
                        .await
                        .is_ok()
                    {
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
            None,
        ));
        assert!(matches!(
            c.call(PeerRequest::Status, Duration::from_secs(5)).await,
            Ok(PeerResponse::Status(_))
        ));
    }
}
