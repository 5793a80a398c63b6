//! Starting and stopping a node: bind the listeners, open storage, start Raft, initialize a
//! pristine cluster, serve peers and clients until shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

use crate::api;
use crate::config::NodeConfig;
use crate::metrics;
use crate::raft;
use crate::service::Service;
use crate::storage;
use crate::transport::client::Dialer;
use crate::transport::client::Peers;
use crate::transport::network::NetworkFactory;
use crate::transport::server;

/// Run a node until `shutdown` completes. `metrics_handle` is `None` when the caller did not
/// install a Prometheus recorder (tests that run several nodes in one process).
pub async fn run(
    config: NodeConfig,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Bind first: a port in use is reported before the data directory is touched.
    let peer_listener = TcpListener::bind(config.peer_addr)
        .await
        .with_context(|| format!("cannot listen for peers on {}", config.peer_addr))?;
    let client_listener = TcpListener::bind(config.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", config.client_addr))?;

    let (log_store, state_store) = storage::open(&config.data_dir).with_context(|| {
        format!(
            "cannot open the data directory {}",
            config.data_dir.display()
        )
    })?;
    let reader = state_store.reader();
    let incoming_dir = state_store.incoming_dir();

    let peers = Peers::new(
        Dialer {
            me: config.id,
            cluster_id: config.cluster_id.clone(),
        },
        config.peer_routes.clone(),
    );
    let raft_config = raft::openraft_config(&config.cluster_id, &config.raft)
        .context("invalid Raft configuration")?;
    let raft = raft::Raft::new(
        config.id,
        raft_config,
        NetworkFactory::new(peers.clone()),
        log_store,
        state_store,
    )
    .await
    .context("cannot start Raft")?;

    if !raft
        .is_initialized()
        .await
        .context("Raft stopped during startup")?
    {
        // Every node of a new cluster initializes with the same member list; openraft makes that
        // safe (the identical first entry on each), and no node has to be started first.
        tracing::info!(members = ?config.members.keys().collect::<Vec<_>>(), "initializing a new cluster");
        if let Err(e) = raft.initialize(config.members.clone()).await {
            tracing::info!(error = %e, "initialize refused; the cluster already exists");
        }
    }

    let service = Arc::new(
        Service::new(
            config.id,
            config.cluster_id.clone(),
            raft.clone(),
            reader,
            peers,
            config.raft.clone(),
            incoming_dir,
        )
        .context("cannot prepare the snapshot directory")?,
    );
    metrics::spawn_leader_watch(service.clone());

    let identity = server::Identity {
        me: config.id,
        cluster_id: config.cluster_id.clone(),
    };
    let peer_task = tokio::spawn(server::serve(
        peer_listener,
        identity,
        Arc::new(service.clone()),
    ));

    tracing::info!(
        id = config.id,
        zone = %config.zone,
        client_addr = %config.client_addr,
        peer_addr = %config.peer_addr,
        data_dir = %config.data_dir.display(),
        "metrokv node serving"
    );
    let app = api::router(service.clone(), metrics_handle);
    // Stop serving on a shutdown signal, or when the Raft core stops on its own (a storage
    // failure, a broken invariant): a node that cannot apply must not keep answering.
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let fatal = fatal.clone();
        let mut metrics_rx = raft.metrics();
        async move {
            let core_stopped = async {
                loop {
                    if let Err(e) = &metrics_rx.borrow_watched().running_state {
                        return e.to_string();
                    }
                    if metrics_rx.changed().await.is_err() {
                        return "the Raft core is gone".to_string();
                    }
                }
            };
            tokio::select! {
                _ = shutdown => {}
                why = core_stopped => {
                    tracing::error!(reason = %why, "the Raft core stopped; shutting the node down");
                    *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                }
            }
        }
    };
    let served = axum::serve(client_listener, app)
        .with_graceful_shutdown(stop)
        .await;

    peer_task.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "Raft did not shut down cleanly");
    }
    served.context("the HTTP server failed")?;
    if let Some(why) = fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("the Raft core stopped: {why}");
    }
    Ok(())
}
