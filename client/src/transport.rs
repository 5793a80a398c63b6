//! Sending one logical request: attempts against nodes in preference order, under a per-attempt
//! timeout and an overall deadline, following the retry policy of `retry.rs`.
//!
//! Invariants:
//! - A write's idempotency key (or transfer id, in the body) is fixed before the first attempt
//!   and every attempt sends the same bytes, so the server can settle retries exactly once.
//! - At least one attempt is made; no attempt outlives the deadline; the loop ends after
//!   `max_attempts` attempts at most.
//! - An exhausted write that may have applied ends `Indeterminate`; every other exhausted call
//!   ends `Unavailable` (`retry::exhausted`).
//!
//! Left out: what the request means (built in `client.rs`) and node preference (`endpoints.rs`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::Rng as _;
use reqwest::header::HeaderMap;
use reqwest::header::HeaderName;
use reqwest::header::CONTENT_TYPE;
use reqwest::header::RETRY_AFTER;
use reqwest::Method;

use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::error::ErrorAnswer;
use crate::error::NodeFailure;
use crate::error::Subject;
use crate::limits::RESPONSE_BODY_BYTES_MAX;
use crate::limits::SAME_NODE_RETRIES_MAX;
use crate::retry;
use crate::retry::Decision;
use crate::retry::FailureKind;
use crate::retry::Target;
use crate::types::ServedBy;

/// Header naming the leader that served a request.
pub(crate) const LEADER_HEADER: &str = "x-metrokv-leader";
/// Header carrying a node's applied index on stale reads.
pub(crate) const APPLIED_INDEX_HEADER: &str = "x-metrokv-applied-index";
/// Header carrying a write's idempotency key.
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Whether a request reads or writes, and what makes a write safe to repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    /// A write sent with `Idempotency-Key`.
    Write {
        idempotency_key: String,
    },
    /// A transfer: the id in the body is its idempotency key.
    Transfer {
        id: String,
    },
}

/// One logical request, sent as is on every attempt.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub method: Method,
    /// Path and query, already percent-encoded, starting with `/`.
    pub path: String,
    pub body: Option<(Bytes, &'static str)>,
    pub headers: Vec<(HeaderName, String)>,
    pub kind: Kind,
    pub subject: Subject,
}

impl Call {
    pub(crate) fn read(path: String, subject: Subject) -> Self {
        Call {
            method: Method::GET,
            path,
            body: None,
            headers: Vec::new(),
            kind: Kind::Read,
            subject,
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self.kind, Kind::Read)
    }

    /// Every write this client sends is keyed; the policy still handles unkeyed ones.
    fn has_idempotency_key(&self) -> bool {
        self.is_write()
    }

    fn idempotency_key(&self) -> Option<&str> {
        match &self.kind {
            Kind::Write { idempotency_key } => Some(idempotency_key),
            Kind::Read | Kind::Transfer { .. } => None,
        }
    }

    fn transfer_id(&self) -> Option<&str> {
        match &self.kind {
            Kind::Transfer { id } => Some(id),
            Kind::Read | Kind::Write { .. } => None,
        }
    }

    /// `PUT /v1/kv/a`, for messages: the method and path without the query.
    pub(crate) fn operation(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub served_by: ServedBy,
}

/// Bounds for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    pub attempt_timeout: Duration,
    pub deadline: Duration,
    pub max_attempts: u32,
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// No usable answer: connect error, timeout, broken connection.
    Transport { kind: FailureKind, detail: String },
    /// A non-2xx answer.
    Answer {
        // Boxed: an error body is much larger than the other variants.
        answer: Box<ErrorAnswer>,
        retry_after: Option<Duration>,
    },
    /// A 2xx answer we could not read.
    BadReply { detail: String },
}

impl AttemptError {
    fn kind(&self) -> FailureKind {
        match self {
            AttemptError::Transport { kind, .. } => *kind,
            AttemptError::Answer { answer, .. } => answer.failure_kind(),
            AttemptError::BadReply { .. } => FailureKind::Protocol,
        }
    }

    fn summary(&self) -> String {
        match self {
            AttemptError::Transport { detail, .. } | AttemptError::BadReply { detail } => {
                detail.clone()
            }
            AttemptError::Answer { answer, .. } => answer.summary(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Answer { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What the attempts of one call have seen so far.
struct Progress {
    attempts: u32,
    tried: Vec<NodeFailure>,
    may_have_applied: bool,
    last_node: String,
    last_error: String,
}

impl Progress {
    fn new() -> Self {
        Progress {
            attempts: 0,
            tried: Vec::new(),
            may_have_applied: false,
            last_node: String::new(),
            last_error: String::new(),
        }
    }

    fn record(&mut self, node: &str, failure: &AttemptError) {
        self.attempts += 1;
        let summary = failure.summary();
        self.may_have_applied |= failure.kind().may_have_applied();
        match self.tried.iter_mut().find(|t| t.node == node) {
            Some(entry) => entry.error.clone_from(&summary),
            None => self.tried.push(NodeFailure {
                node: node.to_string(),
                error: summary.clone(),
            }),
        }
        self.last_node = node.to_string();
        self.last_error = summary;
    }

    fn indeterminate(self, call: &Call) -> Error {
        Error::Indeterminate {
            idempotency_key: call.idempotency_key().map(str::to_string),
            transfer_id: call.transfer_id().map(str::to_string),
            last_node: self.last_node,
            attempts: self.attempts,
            last_error: self.last_error,
        }
    }

    /// The error when the policy gives up on `failure`.
    fn give_up(self, failure: AttemptError, call: &Call) -> Error {
        if call.is_write() && failure.kind().may_have_applied() {
            return self.indeterminate(call);
        }
        match failure {
            AttemptError::Answer { answer, .. } => {
                answer.into_error(&call.subject, call.idempotency_key(), &self.last_node)
            }
            AttemptError::Transport { detail, .. } | AttemptError::BadReply { detail } => {
                Error::Protocol {
                    node: self.last_node,
                    message: detail,
                }
            }
        }
    }

    /// The error when time or attempts ran out.
    fn exhausted(self, call: &Call) -> Error {
        match retry::exhausted(call.is_write(), self.may_have_applied) {
            retry::Exhausted::Indeterminate => self.indeterminate(call),
            retry::Exhausted::Unavailable => Error::Unavailable {
                operation: call.operation(),
                tried: self.tried,
                last_error: self.last_error,
            },
        }
    }
}

/// The HTTP connection pool, the endpoints, and the RNG for jitter, shared by clones of a client.
pub(crate) struct Transport {
    pub http: reqwest::Client,
    pub endpoints: Arc<Endpoints>,
    rng: Mutex<StdRng>,
}

impl Transport {
    pub(crate) fn new(http: reqwest::Client, endpoints: Arc<Endpoints>, rng: StdRng) -> Self {
        Transport {
            http,
            endpoints,
            rng: Mutex::new(rng),
        }
    }

    fn jitter(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random::<f64>()
    }

    /// Sends `call` until it succeeds, the policy gives up, or the budget runs out.
    pub(crate) async fn execute(&self, call: &Call, budget: Budget) -> Result<Reply, Error> {
        let started = Instant::now();
        let deadline = started + budget.deadline;
        let plan = self.endpoints.plan(started);
        let mut progress = Progress::new();
        let mut position = 0;
        let mut rounds = 0;
        let mut same_node_retries = 0;
        loop {
            let index = plan[position];
            let node = self.endpoints.url(index);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = budget
                .attempt_timeout
                .min(remaining)
                .max(Duration::from_millis(1));
            let failure = match attempt(&self.http, node, call, timeout).await {
                Ok(reply) => {
                    self.endpoints.mark_ok(index);
                    return Ok(reply);
                }
                Err(failure) => failure,
            };
            tracing::debug!(node, operation = %call.operation(), error = %failure.summary(), "attempt failed");
            progress.record(node, &failure);
            let target =
                match retry::decide(failure.kind(), call.is_write(), call.has_idempotency_key()) {
                    Decision::GiveUp => return Err(progress.give_up(failure, call)),
                    Decision::Retry(target) => target,
                };
            if progress.attempts >= budget.max_attempts {
                break;
            }
            if target == Target::SameNode && same_node_retries < SAME_NODE_RETRIES_MAX {
                same_node_retries += 1;
            } else {
                self.endpoints.mark_failed(index, Instant::now());
                same_node_retries = 0;
                position = (position + 1) % plan.len();
                if position == 0 {
                    // Every node failed once more: wait before the next round.
                    rounds += 1;
                    let delay = retry::backoff_delay(rounds, failure.retry_after(), self.jitter());
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(delay.min(remaining)).await;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(progress.exhausted(call))
    }
}

/// One attempt against one node.
async fn attempt(
    http: &reqwest::Client,
    node: &str,
    call: &Call,
    timeout: Duration,
) -> Result<Reply, AttemptError> {
    let mut request = http
        .request(call.method.clone(), format!("{node}{}", call.path))
        .timeout(timeout);
    for (name, value) in &call.headers {
        request = request.header(name, value);
    }
    if let Kind::Write { idempotency_key } = &call.kind {
        request = request.header(IDEMPOTENCY_HEADER, idempotency_key);
    }
    if let Some((body, content_type)) = &call.body {
        request = request
            .header(CONTENT_TYPE, *content_type)
            .body(body.clone());
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    let body = read_body(&mut response, timeout).await?;
    if !(200..300).contains(&status) {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(AttemptError::Answer {
            answer: Box::new(ErrorAnswer::parse(status, &body)),
            retry_after,
        });
    }
    let served_by = ServedBy {
        endpoint: node.to_string(),
        leader: header_text(&headers, LEADER_HEADER),
        applied_index: header_text(&headers, APPLIED_INDEX_HEADER).and_then(|v| v.parse().ok()),
    };
    Ok(Reply {
        status,
        headers,
        body,
        served_by,
    })
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Reads the answer body, refusing to buffer more than [`RESPONSE_BODY_BYTES_MAX`].
async fn read_body(
    response: &mut reqwest::Response,
    timeout: Duration,
) -> Result<Bytes, AttemptError> {
    let too_large = || AttemptError::BadReply {
        detail: format!("the answer is larger than {RESPONSE_BODY_BYTES_MAX} bytes"),
    };
    let expected = response.content_length().unwrap_or(0);
    if expected > RESPONSE_BODY_BYTES_MAX as u64 {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    // The answer may have applied already; losing its body leaves the write's fate unknown,
    // which `transport_error` classifies as a lost connection or a timeout.
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(&e, timeout))?
    {
        if body.len() + chunk.len() > RESPONSE_BODY_BYTES_MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Classifies a reqwest failure. A connect failure (including a connect timeout) sent nothing;
/// any other failure may have sent the request.
fn transport_error(error: &reqwest::Error, timeout: Duration) -> AttemptError {
    let cause = root_cause(error);
    if error.is_builder() {
        return AttemptError::BadReply {
            detail: format!("could not build the request: {cause}"),
        };
    }
    if error.is_connect() {
        let detail = if error.is_timeout() {
            "could not connect in time".to_string()
        } else {
            format!("could not connect: {cause}")
        };
        return AttemptError::Transport {
            kind: FailureKind::ConnectFailed,
            detail,
        };
    }
    if error.is_timeout() {
        return AttemptError::Transport {
            kind: FailureKind::TimedOut,
            detail: format!("no answer within {} ms", timeout.as_millis()),
        };
    }
    AttemptError::Transport {
        kind: FailureKind::ConnectionLost,
        detail: format!("connection lost: {cause}"),
    }
}

/// The innermost error message, which is the one that says what happened (`Connection refused`).
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_name_method_and_path_without_query() {
        let call = Call::read("/v1/kv?prefix=a".into(), Subject::Other);
        assert_eq!(call.operation(), "GET /v1/kv");
        assert!(!call.is_write());
    }

    #[test]
    fn progress_keeps_one_entry_per_node_and_remembers_uncertainty() {
        let mut progress = Progress::new();
        let refused = AttemptError::Transport {
            kind: FailureKind::ConnectFailed,
            detail: "could not connect: refused".into(),
        };
        let timed_out = AttemptError::Transport {
            kind: FailureKind::TimedOut,
            detail: "no answer".into(),
        };
        progress.record("http://a:1", &refused);
        progress.record("http://b:1", &timed_out);
        progress.record("http://a:1", &refused);
        assert_eq!(progress.attempts, 3);
        assert_eq!(progress.tried.len(), 2);
        assert!(progress.may_have_applied);
        let write = Call {
            kind: Kind::Write {
                idempotency_key: "k1".into(),
            },
            ..Call::read("/v1/kv/x".into(), Subject::Key("x".into()))
        };
        match progress.exhausted(&write) {
            Error::Indeterminate {
                idempotency_key,
                last_node,
                attempts,
                ..
            } => {
                assert_eq!(idempotency_key.as_deref(), Some("k1"));
                assert_eq!(last_node, "http://a:1");
                assert_eq!(attempts, 3);
            }
            other => panic!("expected Indeterminate, got {other:?}"),
        }
    }
}
