//! Starting and stopping a node: bind the listeners, open storage, start Raft, decide whether a
//! node with new storage may initialize or join, serve peers and clients until shutdown.
//!
//! A node whose storage is new (no vote, no log, no state) is either a member of a cluster being
//! created, or a member that lost its data. Before it takes part in Raft it asks the other
//! members (over the peer transport, whose handshake carries storage ids): if any of them
//! remembers this node on another storage, the node lost its data and refuses to start, saying
//! so; voting as the member it was could elect a leader that lacks an acknowledged write. It
//! goes on once a majority of the members (itself included) has answered without such a
//! refusal, and initializes with the configured member list as before (openraft makes that safe
//! when the lists are identical, so no node has to go first). Until then it refuses Raft
//! requests from peers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::WatchReceiver;
use anyhow::Context;
use futures::FutureExt;
use tokio::net::TcpListener;

use crate::api;
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::raft;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::service;
use crate::service::Service;
use crate::storage;
use crate::transport::client::CallError;
use crate::transport::client::Dialer;
use crate::transport::client::Peers;
use crate::transport::codec::Channel;
use crate::transport::codec::PeerRequest;
use crate::transport::codec::PeerResponse;
use crate::transport::codec::Refusal;
use crate::transport::network::NetworkFactory;
use crate::transport::server;

/// Pause between rounds of asking the members whether this node's new storage may join.
const JOIN_CHECK_INTERVAL: Duration = Duration::from_millis(300);
/// Timeout of one such question.
const JOIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a node waiting for a majority says so in its log.
const JOIN_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Run a node until `shutdown` completes. `metrics_handle` is `None` when the caller did not
/// install a Prometheus recorder (tests that run several nodes in one process).
pub async fn run(
    config: NodeConfig,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.boxed().shared();
    // Bad certificates stop the node before it touches anything.
    let api_tls = config
        .api_tls
        .clone()
        .map(crate::tls::api_tls)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let peer_tls = config
        .peer_tls
        .clone()
        .map(crate::tls::peer_tls)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    crate::tls::spawn_reloader(api_tls.clone(), peer_tls.clone());
    // A bad auth file stops the node before it touches anything.
    let auth = match &config.auth_file {
        Some(path) => {
            let auth = Arc::new(
                api::auth::Auth::load(path, config.auth_open.clone())
                    .map_err(anyhow::Error::msg)?,
            );
            api::auth::spawn_reloader(auth.clone());
            Some(auth)
        }
        None => None,
    };
    if let Some(schedule) = &config.backups {
        std::fs::create_dir_all(&schedule.dir).with_context(|| {
            format!(
                "cannot create the backup directory {}",
                schedule.dir.display()
            )
        })?;
    }
    // Bind first: a port in use is reported before the data directory is touched.
    let peer_listener = TcpListener::bind(config.peer_addr)
        .await
        .with_context(|| format!("cannot listen for peers on {}", config.peer_addr))?;
    let client_listener = TcpListener::bind(config.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", config.client_addr))?;

    let clock = Arc::new(Clock::new());
    let storage = storage::open(&config.data_dir, clock.clone()).with_context(|| {
        format!(
            "cannot open the data directory {}",
            config.data_dir.display()
        )
    })?;
    let storage::Storage {
        log,
        state,
        storage_id,
        pristine,
        ids,
    } = storage;
    let reader = state.reader();
    let incoming_dir = state.incoming_dir();

    let peers = Peers::new(
        Dialer {
            me: config.id,
            cluster_id: config.cluster_id.clone(),
            storage_id,
            ids: ids.clone(),
            tls: peer_tls.clone(),
        },
        config.peer_routes.clone(),
    );
    let raft_config = raft::openraft_config(&config.cluster_id, &config.raft)
        .context("invalid Raft configuration")?;
    let raft = raft::Raft::new(
        config.id,
        raft_config,
        NetworkFactory::new(peers.clone()),
        log,
        state,
    )
    .await
    .context("cannot start Raft")?;

    let service = Arc::new(
        Service::new(
            service::Identity {
                id: config.id,
                cluster_id: config.cluster_id.clone(),
                storage_id,
                initial_members: config.members.clone(),
                role: config.role,
            },
            raft.clone(),
            reader,
            peers,
            config.raft.clone(),
            clock,
            ids,
            incoming_dir,
        )
        .context("cannot prepare the snapshot directory")?,
    );
    if let Some(recorded) = service.own_storage_conflict() {
        anyhow::bail!(
            "the data directory {} holds storage {storage_id:#018x}, but the cluster recorded \
             storage {recorded:#018x} for node {}: it was copied from another node or restored \
             over a newer one; refusing to start",
            config.data_dir.display(),
            config.id
        );
    }
    // A node with new storage answers its peers' questions but takes no Raft requests until it
    // knows it may join (see the module doc).
    service.set_raft_open(!pristine);

    let identity = server::Identity {
        me: config.id,
        cluster_id: config.cluster_id.clone(),
    };
    let peer_task = tokio::spawn(server::serve(
        peer_listener,
        identity,
        Arc::new(service.clone()),
        peer_tls,
    ));

    if pristine && config.join {
        // Nothing to initialize and nobody to ask: the leader adds this node as a learner and
        // replicates to it; the peer handshake still checks who dials in.
        tracing::info!("new storage joining an existing cluster: waiting to be added as a learner");
    } else if pristine {
        tokio::select! {
            checked = check_new_storage(&service, &config.members, storage_id) => {
                if let Err(e) = checked {
                    peer_task.abort();
                    let _ = raft.shutdown().await;
                    return Err(e);
                }
            }
            () = shutdown.clone() => {
                peer_task.abort();
                let _ = raft.shutdown().await;
                return Ok(());
            }
        }
        if !raft
            .is_initialized()
            .await
            .context("Raft stopped during startup")?
        {
            tracing::info!(members = ?config.members.keys().collect::<Vec<_>>(), "initializing a new cluster");
            if let Err(e) = raft.initialize(config.members.clone()).await {
                tracing::info!(error = %e, "initialize refused; the cluster already exists");
            }
        }
        service.set_raft_open(true);
    }
    service.set_raft_open(true);
    service::spawn_leader_watch(service.clone());
    service::spawn_storage_recorder(service.clone());
    service::zones::spawn_zone_watch(service.clone());

    tracing::info!(
        id = config.id,
        zone = %config.zone,
        client_addr = %config.client_addr,
        peer_addr = %config.peer_addr,
        data_dir = %config.data_dir.display(),
        storage_id = format!("{storage_id:#018x}"),
        "metrokv node serving"
    );
    let backup_slot = api::backup::backup_slot();
    if let Some(schedule) = config.backups.clone() {
        api::backup::spawn_schedule(service.clone(), backup_slot.clone(), schedule);
    }
    let app = api::router(
        service.clone(),
        metrics_handle,
        config.max_inflight_requests,
        auth,
        backup_slot,
    );
    // Stop serving on a shutdown signal, or when the Raft core stops on its own (a storage
    // failure, a broken invariant): a node that cannot apply must not keep answering.
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let fatal = fatal.clone();
        let service = service.clone();
        let metrics_rx = raft.metrics();
        // The server metrics change with the role, leader and membership only, so this wakes
        // rarely (the full metrics change on every batch of writes). Their sender lives in the
        // Raft core: when the core stops, for whatever reason, `changed` fails.
        let mut server_rx = raft.server_metrics();
        async move {
            let core_stopped = async {
                loop {
                    if let Err(e) = &metrics_rx.borrow_watched().running_state {
                        return e.to_string();
                    }
                    if server_rx.changed().await.is_err() {
                        return match &metrics_rx.borrow_watched().running_state {
                            Err(e) => e.to_string(),
                            Ok(()) => "the Raft core is gone".to_string(),
                        };
                    }
                }
            };
            tokio::select! {
                // A graceful shutdown (SIGTERM): hand leadership over while still serving,
                // then the server stops accepting and finishes the requests in progress.
                () = shutdown => service.drain().await,
                why = core_stopped => {
                    tracing::error!(reason = %why, "the Raft core stopped; shutting the node down");
                    *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                }
            }
        }
    };
    api::server::serve(client_listener, app, config.max_connections, stop, api_tls).await;

    peer_task.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "Raft did not shut down cleanly");
    }
    if let Some(why) = fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("the Raft core stopped: {why}");
    }
    Ok(())
}

/// Ask the other members about this node's new storage until a majority (this node included)
/// has answered without remembering it on another storage; fail if any member does.
async fn check_new_storage(
    service: &Service,
    members: &BTreeMap<NodeId, NodeInfo>,
    storage_id: u64,
) -> anyhow::Result<()> {
    let me = service.id();
    let needed = members.len() / 2 + 1;
    let mut last_said: Option<std::time::Instant> = None;
    loop {
        let asks = members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, node)| {
                let client = service
                    .peers()
                    .client(*id, &node.peer_addr, Channel::Forward);
                async move {
                    (
                        *id,
                        client.call(PeerRequest::Status, JOIN_CHECK_TIMEOUT).await,
                    )
                }
            });
        let mut answered = 1;
        let mut silent = Vec::new();
        for (id, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(PeerResponse::Status(_)) => answered += 1,
                Err(CallError::Refused {
                    refusal: Refusal::StorageChanged { recorded, .. },
                    ..
                }) => anyhow::bail!(
                    "this node's data directory is new (storage {storage_id:#018x}), but node {id} \
                     remembers node {me} on storage {recorded:#018x}: node {me} lost its data (a \
                     wiped or replaced disk). It must not rejoin as the voter it was, because that \
                     could elect a leader that lacks an acknowledged write. To bring it back, \
                     restore its original data directory; or remove node {me} from the cluster and \
                     add it again as a new member, which joins as a learner and is promoted once \
                     it has caught up (this version has no membership commands yet). Refusing to \
                     start."
                ),
                Ok(_) | Err(_) => silent.push(id),
            }
        }
        if answered >= needed {
            tracing::info!(
                answered,
                members = members.len(),
                "no member remembers this node's storage; joining"
            );
            return Ok(());
        }
        if last_said.is_none_or(|at| at.elapsed() >= JOIN_WAIT_LOG_INTERVAL) {
            last_said = Some(std::time::Instant::now());
            tracing::info!(answered, needed, ?silent,
                "this node's storage is new; waiting to hear from a majority of the members before it joins");
        }
        tokio::time::sleep(JOIN_CHECK_INTERVAL).await;
    }
}
