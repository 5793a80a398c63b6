//! The HTTP API of `docs/api.md`, on axum: one file per area (`kv`, `txn`, `accounts`,
//! `cluster`), error mapping in `error`, the extractors every handler is built from in
//! `extract`. The shapes of bodies and answers are `metrokv-api`'s. What handlers share is here:
//! parsing and validating input, the consistency barrier before reads, proposing writes and
//! stamping the `X-Metrokv-Leader` header, plus middleware for metrics and the load limits: at most
//! `max_inflight_requests` requests at once and [`limits::API_BODY_BYTES_INFLIGHT_MAX`] bytes of
//! request bodies, past which the answer is 503 `overloaded` at once, never a queue. `/health`
//! and `/ready` are exempt, so a loaded node still says it is alive. `server` is the connection
//! loop (connection cap, header timeout).
//!
//! Every input is checked before anything is proposed, so a refused request changes nothing.

pub mod accounts;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod error;
pub mod extract;
pub mod kv;
pub mod server;
pub mod txn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use metrokv_api::validate;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

pub use error::ApiError;

use crate::config::NodeRole;
use crate::limits;
use crate::raft::NodeId;
use crate::service::Served;
use crate::service::Service;
use crate::state_machine::Command;
use crate::state_machine::Response as SmResponse;
use crate::state_machine::Success;
use auth::Auth;
use auth::Caller;
use auth::Role;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub metrics: Option<PrometheusHandle>,
    inflight: Arc<Semaphore>,
    inflight_max: usize,
    /// One permit per byte of request body held in memory.
    body_bytes: Arc<Semaphore>,
    /// One backup at a time, shared with the scheduled ones.
    backup_slot: backup::BackupSlot,
    /// Tokens, when `--auth-file` is given; `None` allows every request.
    auth: Option<Arc<Auth>>,
}

pub fn router(
    service: Arc<Service>,
    metrics: Option<PrometheusHandle>,
    max_inflight_requests: usize,
    auth: Option<Arc<Auth>>,
    backup_slot: backup::BackupSlot,
) -> Router {
    let state = AppState {
        service,
        metrics,
        inflight: Arc::new(Semaphore::new(max_inflight_requests)),
        inflight_max: max_inflight_requests,
        body_bytes: Arc::new(Semaphore::new(limits::API_BODY_BYTES_INFLIGHT_MAX)),
        backup_slot,
        auth,
    };
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", post(txn::txn))
        .route("/v1/accounts", post(accounts::create).get(accounts::list))
        .route("/v1/accounts/{*id}", get(accounts::get))
        .route("/v1/transfers", post(accounts::transfer))
        .route("/v1/transfers/{*id}", get(accounts::get_transfer))
        .route("/v1/cluster", get(cluster::cluster))
        .route(
            "/v1/cluster/settings",
            get(cluster::settings).put(cluster::put_settings),
        )
        .route("/v1/cluster/members", post(cluster::add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member),
        )
        .route(
            "/v1/cluster/members/{id}/promote",
            post(cluster::promote_member),
        )
        .route(
            "/v1/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route("/v1/backup", get(backup::backup))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not supported on {}",
        request.method(),
        request.uri().path()
    ))
}

/// Count and time every request by route and status; refuse past the load limits.
async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let exempt = matches!(route.as_str(), "/health" | "/ready");
    let response = if state.service.role() == NodeRole::Witness && serves_data(&route) {
        let leader = state.service.leader_in_contact();
        with_headers(
            ApiError::Unavailable(format!(
                "node {} is a witness: it votes and keeps the log but serves no data requests; send them to another member{}",
                state.service.id(),
                leader.map_or_else(String::new, |l| format!(" (the leader is node {l})"))
            ))
            .into_response(),
            leader,
            None,
        )
    } else {
        match authorize(&state, &route, &mut request) {
            Err(e) => e.into_response(),
            Ok(()) if exempt => next.run(request).await,
            Ok(()) => match admit(&state, &request) {
                Ok(_permits) => next.run(request).await,
                Err(e) => {
                    metrics::counter!("metrokv_http_overloaded_total").increment(1);
                    e.into_response()
                }
            },
        }
    };
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("metrokv_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status.clone()).increment(1);
    metrics::histogram!("metrokv_http_request_duration_seconds", "route" => route, "method" => method, "status" => status).record(elapsed);
    response
}

/// With auth on: find the caller's token (401 without a known one) and check its role for the
/// route (403), and leave the caller for the handlers, which check scopes. Open paths pass.
fn authorize(state: &AppState, route: &str, request: &mut Request) -> Result<(), ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(());
    };
    if auth.is_open(request.uri().path()) {
        return Ok(());
    }
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = auth.authenticate(header)?;
    let what = format!("{} {route}", request.method());
    principal.need(required_role(request.method(), route), &what)?;
    request.extensions_mut().insert(Caller(Some(principal)));
    Ok(())
}

/// The least role a route needs (see `auth`): admin for operations, write for changes, read for
/// the rest. A txn needs read here; its handler asks for write when it writes.
fn required_role(method: &axum::http::Method, route: &str) -> Role {
    if route == "/v1/backup" || route.starts_with("/v1/cluster/") {
        Role::Admin
    } else if method == axum::http::Method::GET || route == "/v1/txn" {
        Role::Read
    } else {
        Role::Write
    }
}

/// Whether `route` reads or writes data (a witness refuses those; it answers the cluster and
/// operations endpoints).
fn serves_data(route: &str) -> bool {
    route.starts_with("/v1/") && !route.starts_with("/v1/cluster")
}

/// Take a request slot and room for its body, or refuse with 503 `overloaded`. A body's size
/// is its `Content-Length`, or the largest a body may be when it is sent in chunks; the slot
/// and the room are held until the answer is made.
fn admit(
    state: &AppState,
    request: &Request,
) -> Result<
    (
        tokio::sync::OwnedSemaphorePermit,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    ApiError,
> {
    let slot = state.inflight.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(format!(
            "this node is working on {} requests, its limit; try again shortly or another node",
            state.inflight_max
        ))
    })?;
    let headers = request.headers();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    let bytes = match (declared, chunked) {
        (Some(n), _) => n.min(limits::REQUEST_BODY_BYTES_MAX),
        (None, true) => limits::REQUEST_BODY_BYTES_MAX,
        (None, false) => 0,
    };
    if bytes == 0 {
        return Ok((slot, None));
    }
    let room = state
        .body_bytes
        .clone()
        .try_acquire_many_owned(bytes as u32)
        .map_err(|_| {
            ApiError::Overloaded(
                "this node holds as many request bodies as it may; try again shortly".into(),
            )
        })?;
    Ok((slot, Some(room)))
}

// ---------------------------------------------------------------------------------------------
// Input.

/// Query parameters, strictly: an unknown or repeated parameter is an error.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown query parameter {k:?} (allowed: {})",
                    allowed.join(", ")
                )));
            }
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::InvalidRequest(format!(
                    "query parameter {k:?} given twice"
                )));
            }
        }
        Ok(Self(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.get("consistency") {
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("stale") => Ok(Consistency::Stale),
            Some(other) => Err(ApiError::InvalidRequest(format!(
                "consistency must be linearizable or stale, not {other:?}"
            ))),
        }
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(limits::LIST_LIMIT_DEFAULT),
            Some(v) => match v.parse::<usize>() {
                Ok(0) | Err(_) => Err(ApiError::InvalidRequest(format!(
                    "limit must be a positive integer, not {v:?}"
                ))),
                Ok(n) => Ok(n.min(limits::LIST_LIMIT_MAX)),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Stale,
}

/// Read a body of at most `max` bytes, within [`limits::HTTP_BODY_READ_TIMEOUT_MS`].
pub async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let timeout = std::time::Duration::from_millis(limits::HTTP_BODY_READ_TIMEOUT_MS);
    let limited = http_body_util::Limited::new(body, max);
    let collected = tokio::time::timeout(timeout, limited.collect())
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "the request body did not arrive within {} ms",
                limits::HTTP_BODY_READ_TIMEOUT_MS
            ))
        })?;
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge(format!(
                "the request body is larger than {max} bytes"
            )))
        }
        Err(e) => Err(ApiError::InvalidRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Read a JSON body of at most [`limits::REQUEST_BODY_BYTES_MAX`] bytes into `T` (see
/// [`parse_json`]).
pub async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, limits::REQUEST_BODY_BYTES_MAX).await?;
    parse_json(&bytes)
}

/// Parse a JSON body into `T`, refusing unknown fields and wrong types with a message that names
/// the problem. Separate from [`read_json`] so the fuzz targets parse bodies exactly as the
/// handlers do. Every body of the API is a JSON object: serde would also read a struct from an
/// array of its fields in order (`["alice", 10]`), a form the API does not document, so anything
/// but an object is refused before serde sees it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "malformed JSON body: the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON body: {e}")))
}

/// The path after `prefix`, percent-decoded, as UTF-8.
pub fn path_tail(uri: &axum::http::Uri, prefix: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    String::from_utf8(bytes).map_err(|_| {
        ApiError::InvalidRequest("the key is not valid UTF-8 after percent-decoding".into())
    })
}

/// A key, by the rule clients check too (`metrokv_api::validate`).
pub fn check_key(key: &str) -> Result<(), ApiError> {
    Ok(validate::key(key)?)
}

/// An account or transfer id, by the rule clients check too; `what` names it in the message.
pub fn check_id(what: &'static str, id: &str) -> Result<(), ApiError> {
    Ok(validate::id(what, id)?)
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(metrokv_api::HEADER_IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| validate::Invalid::IdempotencyKey)?;
    validate::idempotency_key(key)?;
    Ok(Some(key.to_string()))
}

/// A value from a JSON body: `value` (UTF-8) or `value_base64`, exactly one of them, at most
/// [`limits::VALUE_BYTES_MAX`] bytes. `what` says where it was, for the message.
pub fn json_value(
    value: Option<&str>,
    value_base64: Option<&str>,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    let bytes = metrokv_api::value::bytes(value, value_base64)
        .map_err(|e| ApiError::InvalidRequest(format!("{what}: {e}")))?;
    if bytes.len() > limits::VALUE_BYTES_MAX {
        return Err(ApiError::TooLarge(format!(
            "{what}: the value is {} bytes; values are at most {} bytes",
            bytes.len(),
            limits::VALUE_BYTES_MAX
        )));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Reads and writes.

/// What a read barrier established: the leader that confirmed it, and for a linearizable read
/// the index it confirmed (the answer settles against it, see [`Barrier::settle`]).
pub struct Barrier {
    pub leader: Option<NodeId>,
    confirmed: Option<u64>,
}

impl Barrier {
    /// Before answering: make sure the answer shows nothing a zone loss could take back
    /// (`Service::settle_read`). Stale reads promise nothing of the kind.
    pub async fn settle(&self, service: &Service) -> Result<(), ApiError> {
        if let Some(confirmed) = self.confirmed {
            service.settle_read(confirmed).await?;
        }
        Ok(())
    }
}

/// Make a read at `consistency` safe to serve from local state.
pub async fn read_barrier(
    service: &Service,
    consistency: Consistency,
) -> Result<Barrier, ApiError> {
    match consistency {
        Consistency::Linearizable => {
            let (leader, confirmed) = service.linearize().await?;
            Ok(Barrier {
                leader,
                confirmed: Some(confirmed),
            })
        }
        Consistency::Stale => Ok(Barrier {
            leader: service.metrics().current_leader,
            confirmed: None,
        }),
    }
}

/// Propose a command and turn refusals into errors.
pub async fn write(
    service: &Service,
    command: Command,
    idempotency_key: Option<String>,
) -> Result<Served<Success>, ApiError> {
    let Served { value, leader } = service.write(command, idempotency_key).await?;
    let value: SmResponse = value;
    Ok(Served {
        value: value?,
        leader,
    })
}

/// Add `X-Metrokv-Leader` (and for stale reads the applied index) to a response.
pub fn with_headers(
    mut response: Response,
    leader: Option<NodeId>,
    applied_index: Option<u64>,
) -> Response {
    if let Some(leader) = leader {
        response
            .headers_mut()
            .insert(metrokv_api::HEADER_LEADER, HeaderValue::from(leader));
    }
    if let Some(applied) = applied_index {
        response.headers_mut().insert(
            metrokv_api::HEADER_APPLIED_INDEX,
            HeaderValue::from(applied),
        );
    }
    response
}

/// A response for a success the route did not expect: a bug, reported rather than hidden.
pub fn unexpected(success: Success) -> ApiError {
    ApiError::Internal(format!("unexpected state machine answer {success:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_query_parsing() {
        let q = Query::parse(Some("prefix=a%2Fb&limit=5"), &["prefix", "limit"]).unwrap();
        assert_eq!(q.get("prefix"), Some("a/b"));
        assert_eq!(q.limit().unwrap(), 5);
        assert!(Query::parse(Some("bogus=1"), &["prefix"]).is_err());
        assert!(Query::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        assert!(Query::parse(Some("limit=0"), &["limit"])
            .unwrap()
            .limit()
            .is_err());
        assert!(Query::parse(Some("limit=x"), &["limit"])
            .unwrap()
            .limit()
            .is_err());
        assert_eq!(
            Query::parse(Some("limit=999999"), &["limit"])
                .unwrap()
                .limit()
                .unwrap(),
            limits::LIST_LIMIT_MAX
        );
        assert!(Query::parse(Some("consistency=weird"), &["consistency"])
            .unwrap()
            .consistency()
            .is_err());
        assert_eq!(
            Query::parse(None, &[]).unwrap().consistency().unwrap(),
            Consistency::Linearizable
        );
    }

    #[test]
    fn ids_and_keys_are_checked() {
        assert!(check_id("account", "alice-1_b.c:d").is_ok());
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(check_id("account", bad).is_err(), "{bad:?}");
        }
        assert!(check_key("k").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(limits::KEY_BYTES_MAX)).is_ok());
        assert!(check_key(&"k".repeat(limits::KEY_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn json_values_decode_one_way_only() {
        assert_eq!(json_value(Some("hi"), None, "op").unwrap(), b"hi");
        assert_eq!(json_value(None, Some("AAE="), "op").unwrap(), vec![0, 1]);
        assert!(json_value(None, None, "op").is_err());
        assert!(json_value(Some("a"), Some("AA=="), "op").is_err());
        assert!(json_value(None, Some("!!"), "op").is_err());
        let big = "v".repeat(limits::VALUE_BYTES_MAX + 1);
        assert!(matches!(
            json_value(Some(&big), None, "op"),
            Err(ApiError::TooLarge(_))
        ));
    }

    #[test]
    fn bodies_must_be_json_objects() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Two {
            a: String,
            b: u64,
        }
        assert!(parse_json::<Two>(br#" {"a": "x", "b": 1}"#).is_ok());
        // serde reads a struct from a sequence of its fields; the API does not.
        for bad in [&br#"["x", 1]"#[..], b"null", b"1", b"", b"  "] {
            assert!(
                matches!(parse_json::<Two>(bad), Err(ApiError::InvalidRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn path_tails_are_percent_decoded() {
        let uri: axum::http::Uri = "/v1/kv/a%2Fb/c%20d".parse().unwrap();
        assert_eq!(path_tail(&uri, "/v1/kv/").unwrap(), "a/b/c d");
        let uri: axum::http::Uri = "/v1/kv/%ff".parse().unwrap();
        assert!(path_tail(&uri, "/v1/kv/").is_err());
    }
}
