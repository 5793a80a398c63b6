//! The one place that assembles openraft: the Raft node type over our storage, and openraft's
//! `Config` built from ours. The vocabulary (type configuration, aliases, re-exports) is in
//! `types`, below storage and transport; this file is above them.

pub mod types;

use std::sync::Arc;

pub use types::*;

use crate::config::RaftTimeouts;
use crate::limits;

/// A Raft node of metrokv: openraft over our RocksDB storage.
pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateStore>;

/// openraft's `Config` from ours. The units live in our names; openraft keeps them in docs.
pub fn openraft_config(
    cluster_name: &str,
    t: &RaftTimeouts,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_ms_min,
        election_timeout_max: t.election_timeout_ms_max,
        install_snapshot_timeout: t.install_snapshot_timeout_ms,
        max_payload_entries: limits::APPEND_ENTRIES_PER_RPC_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
        // Followers further behind than this get a snapshot instead of log entries.
        replication_lag_threshold: t.snapshot_logs_since_last.saturating_mul(2),
        purge_batch_size: 1,
        // A restarted or cut-off node must not disrupt a healthy leader with higher terms.
        enable_pre_vote: Some(true),
        // A restarted leader goes through an election: its state machine may lag what it
        // acknowledged before the restart.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
