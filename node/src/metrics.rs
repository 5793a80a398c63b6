//! Prometheus metrics. Request counters and latency histograms are recorded by the API
//! middleware as requests pass; Raft and RocksDB figures are sampled when `/metrics` is scraped
//! (from what the caller hands over, so this module depends on nothing above it); leader changes
//! are counted by `service`'s leader watch.

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::raft::types::NodeId;
use crate::raft::types::RaftMetrics;

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

/// Sample Raft and storage figures into gauges, just before rendering: `m` is node `me`'s
/// openraft view, `sizes` the on-disk size of each column family.
pub fn record_scrape(m: &RaftMetrics, me: NodeId, sizes: &[(&'static str, u64)]) {
    metrics::gauge!("metrokv_raft_term").set(m.current_term as f64);
    metrics::gauge!("metrokv_raft_is_leader").set(if m.current_leader == Some(me) {
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
    for (cf, bytes) in sizes {
        metrics::gauge!("metrokv_rocksdb_sst_bytes", "column_family" => *cf).set(*bytes as f64);
    }
}
