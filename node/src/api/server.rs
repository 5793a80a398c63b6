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

/// How long shutdown waits for requests in progress before it closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits::HTTP_HEADER_READ_TIMEOUT_MS))
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
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "client connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress at shutdown were cut off");
    }
}
