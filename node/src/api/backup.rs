//! Backups this node takes: `GET /v1/backup`, the whole state as one consistent snapshot file
//! streamed while writes go on (see `docs/api.md`), and the scheduled ones of `--backup-dir`.
//! The file is a Raft snapshot with a description record first (`metrokv_api::snapshot_file`),
//! written from one RocksDB view after a linearizable barrier: every write acknowledged before
//! the backup began is in it.

use std::io;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use futures::StreamExt;
use metrokv_api::snapshot_file::BackupInfo;
use tokio::sync::Semaphore;

use super::read_barrier;
use super::with_headers;
use super::ApiError;
use super::AppState;
use super::Consistency;
use crate::config::BackupSchedule;
use crate::service::Service;
use crate::storage::SnapshotFile;

/// Bytes read from the backup file per chunk of the answer.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;

/// One backup at a time per node, asked for or scheduled: a backup is a full copy of the state
/// on disk until it is sent or saved.
pub type BackupSlot = Arc<Semaphore>;

pub fn backup_slot() -> BackupSlot {
    Arc::new(Semaphore::new(1))
}

/// A backup file of this node's state as of a linearizable barrier, and the leader that
/// confirmed it.
async fn take(
    service: &Service,
) -> Result<(BackupInfo, SnapshotFile, Option<crate::raft::NodeId>), ApiError> {
    let barrier = read_barrier(service, Consistency::Linearizable).await?;
    barrier.settle(service).await?;
    let (info, file) = service
        .reader()
        .backup(service.cluster_id().to_string(), service.id())
        .await
        .map_err(|e| ApiError::Internal(format!("cannot write the backup: {e}")))?;
    metrics::counter!("metrokv_backups_total").increment(1);
    Ok((info, file, barrier.leader))
}

pub async fn backup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let slot = state.backup_slot.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(
            "this node is already writing a backup; try again when it is done, or ask another node"
                .into(),
        )
    })?;
    let (info, file, leader) = take(&state.service).await?;
    let len = file.len;
    let stream = tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file.file),
        BACKUP_CHUNK_BYTES,
    )
    // The slot is held until the last byte is sent (or the client goes away).
    .map(move |chunk| {
        let _held = &slot;
        chunk
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        metrokv_api::HEADER_BACKUP_REVISION,
        HeaderValue::from(info.revision),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!(
            "attachment; filename=\"metrokv-{}-r{}.backup\"",
            info.cluster_id, info.revision
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    Ok(with_headers(response, leader, Some(info.applied_index)))
}

/// Takes a backup into `schedule.dir` every `schedule.interval` (the first one interval after
/// start) until the node stops, keeping the newest `schedule.keep`. A backup that fails (no
/// leader to confirm the barrier, a full disk) is logged and counted, and the next one is tried
/// on time; nothing it leaves behind is mistaken for a backup.
pub fn spawn_schedule(service: Arc<Service>, slot: BackupSlot, schedule: BackupSchedule) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + schedule.interval,
            schedule.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // A backup the API is sending goes first; this one waits for it.
            let Ok(_held) = slot.clone().acquire_owned().await else {
                return;
            };
            match scheduled_backup(&service, &schedule).await {
                Ok((info, path)) => {
                    metrics::counter!("metrokv_scheduled_backups_total", "result" => "ok")
                        .increment(1);
                    metrics::gauge!("metrokv_scheduled_backup_revision").set(info.revision as f64);
                    metrics::gauge!("metrokv_scheduled_backup_taken_at_seconds")
                        .set(info.taken_at_ms as f64 / 1000.0);
                    tracing::info!(
                        path = %path.display(),
                        revision = info.revision,
                        "scheduled backup written"
                    );
                }
                Err(e) => {
                    metrics::counter!("metrokv_scheduled_backups_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(
                        dir = %schedule.dir.display(),
                        error = %e,
                        "scheduled backup failed; the next one is tried on time"
                    );
                }
            }
        }
    });
}

/// One scheduled backup: taken, saved whole under its final name, then the old ones pruned.
async fn scheduled_backup(
    service: &Service,
    schedule: &BackupSchedule,
) -> anyhow::Result<(BackupInfo, PathBuf)> {
    let (info, file, _) = take(service).await.map_err(anyhow::Error::msg)?;
    let dir = schedule.dir.clone();
    let keep = schedule.keep;
    let saved = info.clone();
    let path = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
        let path = save(&dir, &saved, file)?;
        prune(&dir, &saved.cluster_id, saved.node, keep)?;
        Ok(path)
    })
    .await??;
    Ok((info, path))
}

/// The start of every scheduled backup file name of this cluster's node `node`.
fn file_prefix(cluster_id: &str, node: u64) -> String {
    format!("metrokv-{cluster_id}-node{node}-")
}

const FILE_SUFFIX: &str = ".backup";
const PARTIAL_SUFFIX: &str = ".partial";

/// `metrokv-<cluster>-node<id>-r<revision, 20 digits>-<UTC time>.backup`: the revision first,
/// zero-padded, so names sort oldest first whatever the wall clock did.
fn file_name(info: &BackupInfo) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(info.taken_at_ms);
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!(
        "{}r{:020}-{stamp}{FILE_SUFFIX}",
        file_prefix(&info.cluster_id, info.node),
        info.revision
    )
}

/// Copies the backup into `dir` as `.partial`, syncs it, renames it to its final name and syncs
/// the directory: a crash leaves a whole backup or a `.partial` that the next prune removes.
fn save(dir: &Path, info: &BackupInfo, mut backup: SnapshotFile) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = file_name(info);
    let path = dir.join(&name);
    let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // A backup holds every key and balance: readable by the node's user only.
        .mode(0o600)
        .open(&partial)?;
    let copied = io::copy(&mut backup.file, &mut out)?;
    if copied != backup.len {
        let _ = std::fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "copied {copied} of the backup's {} bytes",
            backup.len
        )));
    }
    out.flush()?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Removes this node's scheduled backups in `dir` but the newest `keep`, and any `.partial` it
/// left (the only one being written is written by the caller, who holds the slot and is done).
/// Files of other nodes or clusters, and anything else in `dir`, are left alone.
fn prune(dir: &Path, cluster_id: &str, node: u64, keep: usize) -> io::Result<()> {
    let prefix = file_prefix(cluster_id, node);
    let mut backups = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        if name.ends_with(PARTIAL_SUFFIX) {
            std::fs::remove_file(dir.join(name))?;
        } else if name.ends_with(FILE_SUFFIX) {
            backups.push(name.to_string());
        }
    }
    backups.sort();
    let old = backups.len().saturating_sub(keep);
    for name in &backups[..old] {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(revision: u64, taken_at_ms: u64) -> BackupInfo {
        BackupInfo {
            cluster_id: "c1".into(),
            node: 2,
            revision,
            applied_index: revision,
            applied_term: 1,
            taken_at_ms,
        }
    }

    #[test]
    fn names_sort_by_revision_even_when_the_clock_went_back() {
        let a = file_name(&info(9, 1_800_000_000_000));
        let b = file_name(&info(10, 1_700_000_000_000));
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(
            b,
            "metrokv-c1-node2-r00000000000000000010-20231114T221320Z.backup"
        );
    }

    #[test]
    fn prune_keeps_the_newest_and_leaves_other_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
        for rev in [3, 1, 7, 5] {
            touch(&file_name(&info(rev, 1_000)));
        }
        touch(&format!("{}{PARTIAL_SUFFIX}", file_name(&info(8, 1_000))));
        let other_node = file_name(&BackupInfo {
            node: 3,
            ..info(1, 1_000)
        });
        touch(&other_node);
        touch("notes.txt");
        prune(dir.path(), "c1", 2, 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![
            file_name(&info(5, 1_000)),
            file_name(&info(7, 1_000)),
            other_node,
            "notes.txt".to_string(),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }
}
