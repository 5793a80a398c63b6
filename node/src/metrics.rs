//! Prometheus metrics. Request counters and latency histograms are recorded by the API
//! middleware as requests pass; Raft and RocksDB figures are sampled when `/metrics` is scraped,
//! and leader changes are counted by a task watching openraft's metrics.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::async_runtime::WatchReceiver;

use crate::service::Service;

/// Buckets for request latency, in seconds: sub-millisecond to the write timeout.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Install the process-wide recorder. Call once, before serving.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
            LATENCY_BUCKETS_SECONDS,
        )?
        .install_recorder()
}

/// Sample Raft and storage figures into gauges, just before rendering.
pub fn record_scrape(service: &Service) {
    let m = service.metrics();
    metrics::gauge!("metrokv_raft_term").set(m.current_term as f64);
    metrics::gauge!("metrokv_raft_is_leader").set(if m.current_leader == Some(service.id()) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("metrokv_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("metrokv_raft_commit_index")
        .set(m.local_committed.as_ref().map_or(0, |id| id.index) as f64);
    metrics::gauge!("metrokv_raft_applied_index")
        .set(m.last_applied.as_ref().map_or(0, |id| id.index) as f64);
    metrics::gauge!("metrokv_raft_snapshot_index")
        .set(m.snapshot.as_ref().map_or(0, |id| id.index) as f64);
    metrics::gauge!("metrokv_raft_purged_index")
        .set(m.purged.as_ref().map_or(0, |id| id.index) as f64);
    if let Some(replication) = &m.replication {
        let last = m.last_log_index.unwrap_or(0);
        for (peer, matched) in replication {
            let lag = last.saturating_sub(matched.as_ref().map_or(0, |id| id.index));
            metrics::gauge!("metrokv_raft_replication_lag_entries", "peer" => peer.to_string())
                .set(lag as f64);
        }
    }
    for (cf, bytes) in service.reader().sizes() {
        metrics::gauge!("metrokv_rocksdb_sst_bytes", "column_family" => cf).set(bytes as f64);
    }
}

/// Count leader changes and log them, until the Raft node shuts down.
pub fn spawn_leader_watch(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut rx = service.raft().metrics();
        let mut leader = rx.borrow_watched().current_leader;
        while rx.changed().await.is_ok() {
            let now = rx.borrow_watched().current_leader;
            if now != leader {
                tracing::info!(from = ?leader, to = ?now, term = rx.borrow_watched().current_term, "leader changed");
                metrics::counter!("metrokv_raft_leader_changes_total").increment(1);
                leader = now;
            }
        }
    });
}
