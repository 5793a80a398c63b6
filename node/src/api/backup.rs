//! `GET /v1/backup`: the whole state as one consistent snapshot file, streamed while writes go
//! on (see `docs/api.md`). The file is a Raft snapshot with a description record first
//! (`metrokv_api::snapshot_file`), written from one RocksDB view after a linearizable barrier:
//! every write acknowledged before the request began is in it.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use futures::StreamExt;

use super::read_barrier;
use super::with_headers;
use super::ApiError;
use super::AppState;
use super::Consistency;

/// Bytes read from the backup file per chunk of the answer.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;

pub async fn backup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let service = &state.service;
    // One at a time per node: a backup is a full copy of the state on disk until it is sent.
    let slot = state.backup_slot.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(
            "this node is already writing a backup; try again when it is done, or ask another node"
                .into(),
        )
    })?;
    let barrier = read_barrier(service, Consistency::Linearizable).await?;
    barrier.settle(service).await?;
    let (info, file) = service
        .reader()
        .backup(service.cluster_id().to_string(), service.id())
        .await
        .map_err(|e| ApiError::Internal(format!("cannot write the backup: {e}")))?;
    metrics::counter!("metrokv_backups_total").increment(1);
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
    Ok(with_headers(
        response,
        barrier.leader,
        Some(info.applied_index),
    ))
}
