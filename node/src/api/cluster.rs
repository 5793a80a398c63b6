//! Cluster and operations endpoints: `/v1/cluster`, `/health`, `/ready`, `/metrics`.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use metrokv_api::cluster::ClusterView;
use metrokv_api::cluster::Health;
use metrokv_api::cluster::MemberView;
use metrokv_api::cluster::Ready;

use super::ApiError;
use super::AppState;

pub async fn cluster(State(state): State<AppState>) -> Result<Response, ApiError> {
    let service = &state.service;
    let me = service.status();
    let members: Vec<_> = service
        .cluster()
        .await
        .into_iter()
        .map(|(id, node, status)| MemberView {
            id,
            zone: node.zone,
            client_addr: node.client_addr,
            peer_addr: node.peer_addr,
            role: status
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |s| s.role.clone()),
            term: status.as_ref().map(|s| s.term),
            applied_index: status.as_ref().map(|s| s.applied_index),
            reachable: status.is_some(),
        })
        .collect();
    let body = ClusterView {
        cluster_id: service.cluster_id().to_string(),
        node: me.id,
        leader: me.leader,
        term: me.term,
        commit_index: me.commit_index,
        members,
    };
    Ok(super::with_headers(
        Json(body).into_response(),
        me.leader,
        None,
    ))
}

pub async fn health() -> Response {
    Json(Health {
        status: "ok".into(),
    })
    .into_response()
}

/// Ready when a leader is known and this node has applied everything it knows is committed.
pub async fn ready(State(state): State<AppState>) -> Response {
    let s = state.service.status();
    let ready = s.leader.is_some() && s.applied_index >= s.commit_index;
    let body = Ready {
        ready,
        leader: s.leader,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
    };
    if ready {
        Json(body).into_response()
    } else {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        r
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return ApiError::NotFound("metrics are not enabled on this node".into()).into_response();
    };
    let service = &state.service;
    crate::metrics::record_scrape(&service.metrics(), service.id(), &service.reader().sizes());
    let mut r = handle.render().into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
