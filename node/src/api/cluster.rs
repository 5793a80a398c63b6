//! Cluster and operations endpoints: `/v1/cluster`, `/health`, `/ready`, `/metrics`.

use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use metrokv_api::cluster::AddMember;
use metrokv_api::cluster::ClusterView;
use metrokv_api::cluster::Health;
use metrokv_api::cluster::MemberView;
use metrokv_api::cluster::Membership;
use metrokv_api::cluster::Ready;
use metrokv_api::cluster::Settings;
use metrokv_api::cluster::TransferLeader;
use metrokv_api::cluster::ZoneMode;
use metrokv_api::cluster::ZoneSafetyView;
use metrokv_api::cluster::ZoneState;

use super::extract::Fresh;
use super::extract::JsonBody;
use super::extract::NoQuery;
use super::unexpected;
use super::write;
use super::ApiError;
use super::AppState;
use super::Query;
use crate::service::membership::MembershipCall;
use crate::service::membership::MembershipError;
use crate::service::membership::MembershipState;
use crate::service::zones::ZoneStatus;
use crate::state_machine::Command;
use crate::state_machine::Success;
use crate::state_machine::ZoneRecord;
use crate::state_machine::ZoneSafety;

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
        zone_safety: Some(zone_view(&service.zone_status().await)),
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
    let ready =
        s.leader.is_some() && s.applied_index >= s.commit_index && !state.service.is_draining();
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

fn mode_of(mode: ZoneSafety) -> ZoneMode {
    match mode {
        ZoneSafety::Off => ZoneMode::Off,
        ZoneSafety::Adaptive => ZoneMode::Adaptive,
        ZoneSafety::Strict => ZoneMode::Strict,
    }
}

fn settings_of(record: &ZoneRecord) -> Settings {
    Settings {
        zone_safety: Some(mode_of(record.mode)),
        degrade_after_ms: Some(record.degrade_after_ms),
        preferred_leader_zone: Some(record.preferred_leader_zone.clone().unwrap_or_default()),
    }
}

fn zone_view(status: &ZoneStatus) -> ZoneSafetyView {
    let record = &status.record;
    let state = if status.single_zone {
        ZoneState::SingleZone
    } else {
        match (record.mode, record.degraded) {
            (ZoneSafety::Off, _) => ZoneState::Off,
            (ZoneSafety::Adaptive, Some(d))
                if status
                    .zone_safe_index
                    .is_some_and(|z| z > d.zone_safe_index) =>
            {
                ZoneState::Recovering
            }
            (ZoneSafety::Adaptive, Some(_)) => ZoneState::Degraded,
            _ => ZoneState::ZoneSafe,
        }
    };
    let zone_safe_index = status
        .is_leader
        .then(|| status.zone_safe_index.unwrap_or(0));
    ZoneSafetyView {
        mode: mode_of(record.mode),
        state,
        degrade_after_ms: record.degrade_after_ms,
        zone_safe_index,
        lag_entries: zone_safe_index.map(|z| status.commit_index.saturating_sub(z)),
        degraded_since_ms: record.degraded.map(|d| d.since_ms),
        degraded_at_index: record.degraded.map(|d| d.zone_safe_index),
    }
}

fn membership_error(e: MembershipError) -> ApiError {
    use MembershipError as E;
    match e {
        E::NotLeader(_)
        | E::NoLeader(_)
        | E::Raft(_)
        | E::NoTransferTarget(_)
        | E::TransferTimedOut(..) => ApiError::Unavailable(e.to_string()),
        E::Invalid(_)
        | E::AlreadyMember(_)
        | E::NotALearner(_)
        | E::NotCaughtUp { .. }
        | E::RemoteLearner(_)
        | E::LastVoter(_)
        | E::BreaksZoneSafety { .. }
        | E::CannotLead(..) => ApiError::InvalidRequest(e.to_string()),
        E::NotAMember(_) => ApiError::NotFound(e.to_string()),
    }
}

/// Make a membership call (at the leader, forwarded from here if need be) and answer with the
/// membership that results.
async fn membership(state: &AppState, call: MembershipCall) -> Result<Response, ApiError> {
    let MembershipState {
        voters,
        learners,
        leader,
    } = state
        .service
        .membership(call)
        .await
        .map_err(membership_error)?;
    Ok(super::with_headers(
        Json(Membership {
            voters,
            learners,
            leader,
        })
        .into_response(),
        leader,
        None,
    ))
}

fn node_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::InvalidRequest(format!("{id:?} is not a node id")))
}

/// `POST /v1/cluster/members`: add a node as a learner.
pub async fn add_member(
    State(state): State<AppState>,
    _: NoQuery,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<Response, ApiError> {
    let AddMember {
        id,
        zone,
        client_addr,
        peer_addr,
    } = body;
    let spec = format!("{id}={zone}/{client_addr}/{peer_addr}");
    let (id, info) =
        crate::config::parse_member(&spec).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    membership(&state, MembershipCall::AddLearner { id, info }).await
}

/// `POST /v1/cluster/members/{id}/promote`: make a caught-up learner a voter.
pub async fn promote_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    membership(&state, MembershipCall::Promote { id }).await
}

/// `DELETE /v1/cluster/members/{id}[?force=true]`.
pub async fn remove_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    let query = Query::parse(uri.query(), &["force"])?;
    let force = match query.get("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "force must be true or false, not {other:?}"
            )))
        }
    };
    membership(&state, MembershipCall::Remove { id, force }).await
}

/// `POST /v1/cluster/transfer-leader`.
pub async fn transfer_leader(
    State(state): State<AppState>,
    _: NoQuery,
    JsonBody(body): JsonBody<TransferLeader>,
) -> Result<Response, ApiError> {
    membership(&state, MembershipCall::TransferLeader { to: body.to }).await
}

/// `GET /v1/cluster/settings`.
pub async fn settings(State(state): State<AppState>, fresh: Fresh) -> Result<Response, ApiError> {
    let record = state.service.reader().zones().await?;
    fresh.answer(&state, Json(settings_of(&record))).await
}

/// `PUT /v1/cluster/settings`: a replicated command, so every node agrees.
pub async fn put_settings(
    State(state): State<AppState>,
    _: NoQuery,
    JsonBody(body): JsonBody<Settings>,
) -> Result<Response, ApiError> {
    let mode = body.zone_safety.map(|m| match m {
        ZoneMode::Off => ZoneSafety::Off,
        ZoneMode::Adaptive => ZoneSafety::Adaptive,
        ZoneMode::Strict => ZoneSafety::Strict,
    });
    let command = Command::ZoneSettings {
        mode,
        degrade_after_ms: body.degrade_after_ms,
        preferred_leader_zone: body.preferred_leader_zone,
    };
    let served = write(&state.service, command, None).await?;
    let Success::ZoneSettings(record) = &served.value else {
        return Err(unexpected(served.value));
    };
    Ok(served.answer(Json(settings_of(record))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::Degraded;

    fn status(mode: ZoneSafety, degraded_at: Option<u64>, zone_safe: Option<u64>) -> ZoneStatus {
        ZoneStatus {
            record: ZoneRecord {
                mode,
                degraded: degraded_at.map(|i| Degraded {
                    since_ms: 1,
                    zone_safe_index: i,
                }),
                ..ZoneRecord::default()
            },
            single_zone: false,
            zone_safe_index: zone_safe,
            commit_index: 100,
            is_leader: true,
        }
    }

    #[test]
    fn the_zone_state_says_whether_the_other_zone_is_catching_up() {
        let state = |s: ZoneStatus| zone_view(&s).state;
        use ZoneSafety::*;
        assert_eq!(
            state(status(Adaptive, None, Some(100))),
            ZoneState::ZoneSafe
        );
        assert_eq!(state(status(Strict, None, Some(40))), ZoneState::ZoneSafe);
        assert_eq!(state(status(Off, None, None)), ZoneState::Off);
        // Degraded at 40; the other zone is still at 40: degraded.
        assert_eq!(
            state(status(Adaptive, Some(40), Some(40))),
            ZoneState::Degraded
        );
        // It persisted entries past 40 since: catching up.
        assert_eq!(
            state(status(Adaptive, Some(40), Some(70))),
            ZoneState::Recovering
        );
        // A follower does not know the zone-safe index.
        assert_eq!(state(status(Adaptive, Some(40), None)), ZoneState::Degraded);
        let mut one = status(Strict, None, None);
        one.single_zone = true;
        assert_eq!(state(one), ZoneState::SingleZone);
    }
}
