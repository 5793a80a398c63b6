//! The HTTP server loop: accepts client connections and serves the API router on each, with
//! the bounds a server on an open port needs.
//!
//! - At most `max_connections` connections are open; one past it is closed at once, before
//!   anything is read, and counted in `metrokv_http_connections_refused_total`.
//! - A client has [`limits::HTTP_HEADER_READ_TIMEOUT_MS`] to send a request's headers, counted
//!   from when the node starts waiting for them (so an idle keep-alive connection is closed
//!   after that long too): a slowloris client is disconnected. Bodies have their own timeout
//!   (`api::read_body`).
//! - On shutdown the node stops accepting, lets the requests in progress finish, and closes
//!   idle connections.
//!
//! axum's own `serve` offers neither a connection cap nor a header timeout, so the loop is
//! written here, on hyper, which axum runs on too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits;
use crate::tls::ApiTls;

/// How long shutdown waits for requests in progress before it closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown` completes, with at most `max_connections` open
/// and the node's header timeout.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<ApiTls>>,
) {
    let header_timeout = Duration::from_millis(limits::HTTP_HEADER_READ_TIMEOUT_MS);
    serve_with(
        listener,
        app,
        max_connections,
        header_timeout,
        shutdown,
        tls,
    )
    .await
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<ApiTls>>,
) {
    let open = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::error!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            metrics::counter!("metrokv_http_connections_refused_total").increment(1);
            tracing::debug!(%remote, "client connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        match &tls {
            None => {
                let connection =
                    graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%remote, error = %e, "client connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Some(tls) => {
                // The handshake runs in the connection's task, bounded like the headers: a
                // slow or plaintext client holds only its own slot. Plaintext to a TLS port
                // fails the handshake and is closed.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let http = http.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection =
                                watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                            if let Err(e) = connection.await {
                                tracing::debug!(%remote, error = %e, "client connection ended with an error");
                            }
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("metrokv_http_tls_refused_total").increment(1);
                            tracing::debug!(%remote, error = %e, "client TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("metrokv_http_tls_refused_total").increment(1);
                            tracing::debug!(%remote, "client TLS handshake timed out");
                        }
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress at shutdown were cut off");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    async fn start(max_connections: usize, header_timeout: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve_with(
            listener,
            app,
            max_connections,
            header_timeout,
            std::future::pending(),
            None,
        ));
        addr
    }

    /// Read until the server closes the connection; `None` if it is still open after 10 s.
    async fn closed(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .ok()
            .map(|_| got)
    }

    async fn get_health(s: &mut TcpStream) -> String {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    /// Slowloris: a client that sends its headers a byte at a time is disconnected once the
    /// header timeout passes, without an answer.
    #[tokio::test]
    async fn a_client_that_sends_headers_too_slowly_is_disconnected() {
        let addr = start(16, Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .unwrap();
        let trickle = async {
            loop {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
        let rest = closed(&mut s)
            .await
            .expect("the slow client was disconnected");
        assert!(
            !String::from_utf8_lossy(&rest).contains("200"),
            "no answer for half a request"
        );
        // A prompt client is still served.
        let mut ok = TcpStream::connect(&addr).await.unwrap();
        assert!(get_health(&mut ok).await.starts_with("HTTP/1.1 200"));
    }

    /// Connections past the cap are closed at once, while those within it are served.
    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let addr = start(4, Duration::from_secs(30)).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            assert!(get_health(&mut s).await.starts_with("HTTP/1.1 200"));
            held.push(s);
        }
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(
            closed(&mut extra).await,
            Some(vec![]),
            "closed before a byte is read"
        );
        // Closing one frees its slot.
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = s
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .await;
            let mut buf = vec![0u8; 64];
            if let Ok(n) = s.read(&mut buf).await {
                if buf[..n].starts_with(b"HTTP/1.1 200") {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the freed slot is never reused"
            );
            tokio::task::yield_now().await;
        }
    }
}
