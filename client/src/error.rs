//! The client's error type, and the one place that maps API.md error answers to it.
//!
//! Every API.md error code has its own variant; an unknown code becomes [`Error::Server`], an
//! answer that is not the documented shape becomes [`Error::Protocol`]. Failures that span
//! several attempts (`Unavailable`, `Indeterminate`) are built by the retry loop, not here.
//!
//! Invariants:
//! - Only [`Error::Indeterminate`] and [`Error::Protocol`] leave a write's fate open; every other
//!   variant means the request changed nothing ([`Error::is_definite_failure`]).
//! - Messages say what failed, where, and what to do next, because the CLI prints them as is.

use std::fmt;

use metrokv_api::ErrorBody;
use metrokv_api::ErrorCode;

use crate::retry::FailureKind;

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How one node failed during a call; [`Error::Unavailable`] lists one per node tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    /// The endpoint URL, e.g. `http://127.0.0.1:7001`.
    pub node: String,
    /// What went wrong on its last attempt, e.g. `connection refused` or `503 unavailable: ...`.
    pub error: String,
}

/// Everything a call can fail with. Variants map docs/api.md error codes one to one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 412 `precondition_failed`: `If-Match` or `If-None-Match: *` did not hold.
    #[error(
        "the condition on key {key:?} failed: its current version is {}; read it again and \
         decide whether to write again expecting that version",
        version_text(*current_version)
    )]
    PreconditionFailed {
        key: String,
        /// The key's version now (0 = absent), when the server said it.
        current_version: Option<u64>,
    },

    /// 404 `not_found`: the key, account or transfer does not exist.
    #[error("{what} was not found")]
    NotFound {
        /// What was looked up, e.g. `key "a"` or `transfer "t-1"`.
        what: String,
    },

    /// 404 `account_not_found`: a transfer named an account that does not exist.
    #[error(
        "account {} does not exist{}; create it first (metrokv account create)",
        optional_name(account.as_deref()),
        transfer_text(transfer_id.as_deref())
    )]
    AccountNotFound {
        account: Option<String>,
        transfer_id: Option<String>,
    },

    /// 409 `account_exists`: the account was created before (with any balance).
    #[error("account {id:?} already exists; read it with `metrokv account get {id}`")]
    AccountExists { id: String },

    /// 409 `insufficient_funds`: the transfer would take the source below zero; nothing moved.
    #[error(
        "insufficient funds: account {account:?} holds {}, less than the {amount} requested{}; \
         nothing was moved",
        balance.map_or_else(|| "less".to_string(), |b| b.to_string()),
        transfer_text(transfer_id.as_deref())
    )]
    InsufficientFunds {
        account: String,
        /// The source balance, when the server said it.
        balance: Option<u64>,
        amount: u64,
        transfer_id: Option<String>,
    },

    /// 422 `idempotency_conflict`: the key (or transfer id) was used before for another request.
    #[error(
        "the idempotency key or transfer id {key:?} was already used for a different request \
         ({message}); use a new key for a new request"
    )]
    IdempotencyConflict { key: String, message: String },

    /// 400 `invalid_request`, or an argument the client refused before sending.
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },

    /// 413 `too_large`, or a value the client refused before sending.
    #[error("too large: {message}")]
    TooLarge { message: String },

    /// 401 `unauthenticated`: no token, or one the node does not know (see
    /// `ClientBuilder::token`). Nothing was done.
    #[error("not authenticated by {node}: {message}")]
    Unauthenticated { node: String, message: String },

    /// 403 `forbidden`: the token's role or scope does not allow the request. Nothing was done.
    #[error("forbidden by {node}: {message}")]
    Forbidden { node: String, message: String },

    /// No node could serve the request before the deadline, and no attempt can have applied it:
    /// every attempt failed to connect or was answered 503 (not proposed). Safe to retry.
    #[error("{}", unavailable_text(operation, tried, last_error))]
    Unavailable {
        /// The request, e.g. `PUT /v1/kv/a`.
        operation: String,
        /// One entry per node tried, in the order first tried.
        tried: Vec<NodeFailure>,
        last_error: String,
    },

    /// The deadline (or the attempt budget) ran out while a write's fate was unknown: an attempt
    /// timed out after sending, lost its connection, or was answered 504. The write may or may
    /// not have been applied, and may still apply. Settle it by sending it again with the same
    /// idempotency key (or transfer id); the server applies it at most once.
    #[error(
        "{}",
        indeterminate_text(
            idempotency_key.as_deref(),
            transfer_id.as_deref(),
            last_node,
            *attempts,
            last_error
        )
    )]
    Indeterminate {
        /// The key to resend with (absent only for writes sent without one).
        idempotency_key: Option<String>,
        /// For transfers: the id to resend with, or to look up with `GET /v1/transfers/{id}`.
        transfer_id: Option<String>,
        /// The endpoint of the last attempt.
        last_node: String,
        attempts: u32,
        last_error: String,
    },

    /// An error code this client does not know, or a 5xx other than 503/504.
    #[error("{node} answered {status} {code}: {message}")]
    Server {
        node: String,
        status: u16,
        code: String,
        message: String,
    },

    /// An answer that does not follow API.md (bad JSON, missing header). For a write that
    /// was answered 2xx, the write did apply; only the answer could not be read.
    #[error(
        "unexpected answer from {node}: {message}; the client and server versions may not match"
    )]
    Protocol { node: String, message: String },

    /// The client was configured wrongly (no endpoints, a bad URL, ...).
    #[error("bad client configuration: {message}")]
    Config { message: String },
}

impl Error {
    /// A short name for the kind of error (the API's error codes where there is one), for
    /// counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::NotFound { .. } => "not_found",
            Error::AccountNotFound { .. } => "account_not_found",
            Error::AccountExists { .. } => "account_exists",
            Error::InsufficientFunds { .. } => "insufficient_funds",
            Error::IdempotencyConflict { .. } => "idempotency_conflict",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::TooLarge { .. } => "too_large",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::Forbidden { .. } => "forbidden",
            Error::Unavailable { .. } => "unavailable",
            Error::Indeterminate { .. } => "indeterminate",
            Error::Server { .. } => "server",
            Error::Protocol { .. } => "protocol",
            Error::Config { .. } => "config",
        }
    }

    /// The CLI exit code for this error: 1 the server refused (condition failed, insufficient
    /// funds, not found, exists, conflict, not authenticated or not allowed), 2 a usage error (invalid or too large input, bad
    /// configuration), 3 unavailable, indeterminate or an unexpected answer.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::PreconditionFailed { .. }
            | Error::NotFound { .. }
            | Error::AccountNotFound { .. }
            | Error::AccountExists { .. }
            | Error::InsufficientFunds { .. }
            | Error::IdempotencyConflict { .. }
            | Error::Unauthenticated { .. }
            | Error::Forbidden { .. } => 1,
            Error::InvalidRequest { .. } | Error::TooLarge { .. } | Error::Config { .. } => 2,
            Error::Server { status, .. } if (400..500).contains(status) => 1,
            Error::Unavailable { .. }
            | Error::Indeterminate { .. }
            | Error::Server { .. }
            | Error::Protocol { .. } => 3,
        }
    }

    /// True when the request certainly changed nothing. False for `Indeterminate` (it may apply)
    /// and `Protocol` (a write answered 2xx with an unreadable body did apply).
    pub fn is_definite_failure(&self) -> bool {
        !matches!(self, Error::Indeterminate { .. } | Error::Protocol { .. })
    }

    /// True for `Unavailable` and `Indeterminate`: the cluster, not the request, was the problem,
    /// and trying again later (with the same idempotency key for a write) is the remedy.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Indeterminate { .. }
        )
    }
}

fn version_text(version: Option<u64>) -> String {
    match version {
        Some(0) => "0 (the key does not exist)".to_string(),
        Some(v) => v.to_string(),
        None => "unknown (the server did not say)".to_string(),
    }
}

fn optional_name(name: Option<&str>) -> String {
    name.map_or_else(|| "(one of the two)".to_string(), |n| format!("{n:?}"))
}

fn transfer_text(transfer_id: Option<&str>) -> String {
    transfer_id.map_or_else(String::new, |id| format!(" (transfer {id:?})"))
}

fn unavailable_text(operation: &str, tried: &[NodeFailure], last_error: &str) -> String {
    let mut text = format!("no node could serve {operation} in time");
    if tried.is_empty() {
        text.push_str(&format!(" ({last_error})"));
    } else {
        let nodes: Vec<String> = tried
            .iter()
            .map(|t| format!("{}: {}", t.node, t.error))
            .collect();
        text.push_str(&format!(" (tried {})", nodes.join("; ")));
    }
    text.push_str(
        ". Nothing was changed. Check that the nodes run and a leader is elected \
         (metrokv cluster status), then retry.",
    );
    text
}

fn indeterminate_text(
    idempotency_key: Option<&str>,
    transfer_id: Option<&str>,
    last_node: &str,
    attempts: u32,
    last_error: &str,
) -> String {
    let mut text = format!(
        "the outcome is unknown after {attempts} attempt(s), last on {last_node} \
         ({last_error}): the write may or may not have been applied, and may still apply. "
    );
    match (transfer_id, idempotency_key) {
        (Some(id), _) => text.push_str(&format!(
            "Resend it with the same transfer id {id:?} to settle it exactly once \
             (GET /v1/transfers/{id} shows the outcome once it is recorded)."
        )),
        (None, Some(key)) => text.push_str(&format!(
            "Resend it with the same idempotency key {key:?} to settle it exactly once."
        )),
        (None, None) => text.push_str(
            "It was sent without an idempotency key, so it cannot be retried safely; read the \
             current state to find out whether it applied.",
        ),
    }
    text
}

/// What a request was about, so an error answer can name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Subject {
    Key(String),
    Account(String),
    Transfer {
        id: String,
        from: String,
        amount: u64,
    },
    /// A transfer looked up by id (`GET /v1/transfers/{id}`).
    TransferRecord(String),
    /// A cluster member, in a membership call.
    Member(u64),
    #[default]
    Other,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Key(key) => write!(f, "key {key:?}"),
            Subject::Account(id) => write!(f, "account {id:?}"),
            Subject::Transfer { id, .. } | Subject::TransferRecord(id) => {
                write!(f, "transfer {id:?}")
            }
            Subject::Member(id) => write!(f, "member {id}"),
            Subject::Other => write!(f, "the resource"),
        }
    }
}

/// A non-2xx answer, parsed: its code (when the body is the API.md shape) and what kind of
/// failure it is for the retry policy.
#[derive(Debug)]
pub(crate) struct ErrorAnswer {
    status: u16,
    body: Option<ErrorBody>,
    /// The code as sent, for codes this version does not know.
    raw_code: Option<String>,
    raw_text: String,
}

/// Just the code of an error body, as a string.
#[derive(serde::Deserialize)]
struct RawCode {
    error: String,
}

/// Bytes of a non-JSON error body quoted in messages.
const RAW_ERROR_QUOTE_BYTES_MAX: usize = 200;

impl ErrorAnswer {
    pub(crate) fn parse(status: u16, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let raw_code = serde_json::from_slice::<RawCode>(body)
            .ok()
            .map(|c| c.error);
        let mut raw_text = String::from_utf8_lossy(body).trim().to_string();
        if raw_text.len() > RAW_ERROR_QUOTE_BYTES_MAX {
            let mut end = RAW_ERROR_QUOTE_BYTES_MAX;
            while !raw_text.is_char_boundary(end) {
                end -= 1;
            }
            raw_text.truncate(end);
            raw_text.push('…');
        }
        ErrorAnswer {
            status,
            body: parsed,
            raw_code,
            raw_text,
        }
    }

    fn code(&self) -> Option<ErrorCode> {
        self.body.as_ref().map(|b| b.error)
    }

    /// How the retry policy sees this answer. The code wins over the status, except that a body
    /// we cannot read (or a code we do not know) is judged by the status alone.
    pub(crate) fn failure_kind(&self) -> FailureKind {
        let code = self.code().filter(|c| *c != ErrorCode::Unknown);
        match (code, self.status) {
            // Both 503 codes mean nothing was done: `overloaded` is a node at its load limits.
            (Some(ErrorCode::Unavailable | ErrorCode::Overloaded), _) | (None, 503) => {
                FailureKind::Unavailable
            }
            (Some(ErrorCode::Indeterminate), _) | (None, 504) => FailureKind::Indeterminate,
            (_, 400..=499) => FailureKind::Refused,
            _ => FailureKind::ServerError,
        }
    }

    /// One line for logs and `Unavailable`/`Indeterminate` messages.
    pub(crate) fn summary(&self) -> String {
        match &self.body {
            Some(body) => format!("{} {}: {}", self.status, body.error, body.message),
            None => format!("{} {}", self.status, self.raw_text),
        }
    }

    /// The error this answer means on its own (used when the retry policy gives up on it).
    pub(crate) fn into_error(
        self,
        subject: &Subject,
        idempotency: Option<&str>,
        node: &str,
    ) -> Error {
        let Some(body) = self.body else {
            if self.status >= 500 {
                return Error::Server {
                    node: node.to_string(),
                    status: self.status,
                    code: String::new(),
                    message: self.raw_text,
                };
            }
            return Error::Protocol {
                node: node.to_string(),
                message: format!(
                    "status {} without an API error body: {:?}",
                    self.status, self.raw_text
                ),
            };
        };
        map_code(self.status, body, self.raw_code, subject, idempotency, node)
    }
}

fn map_code(
    status: u16,
    body: ErrorBody,
    raw_code: Option<String>,
    subject: &Subject,
    idempotency: Option<&str>,
    node: &str,
) -> Error {
    let (transfer_id, transfer_from, transfer_amount) = match subject {
        Subject::Transfer { id, from, amount } => (Some(id.clone()), Some(from.clone()), *amount),
        _ => (None, None, 0),
    };
    let subject_name = match subject {
        Subject::Key(name) | Subject::Account(name) | Subject::TransferRecord(name) => {
            Some(name.clone())
        }
        Subject::Transfer { id, .. } => Some(id.clone()),
        Subject::Member(_) | Subject::Other => None,
    };
    match body.error {
        // The caller's own key first: it is exactly what they passed, whatever the server echoes.
        ErrorCode::PreconditionFailed => Error::PreconditionFailed {
            key: subject_name.or(body.key).unwrap_or_default(),
            current_version: body.current_version,
        },
        ErrorCode::NotFound => Error::NotFound {
            what: subject.to_string(),
        },
        ErrorCode::AccountNotFound => Error::AccountNotFound {
            account: body.account,
            transfer_id,
        },
        ErrorCode::AccountExists => Error::AccountExists {
            id: body.account.or(subject_name).unwrap_or_default(),
        },
        ErrorCode::InsufficientFunds => Error::InsufficientFunds {
            account: body.account.or(transfer_from).unwrap_or_default(),
            balance: body.balance,
            amount: body.amount.unwrap_or(transfer_amount),
            transfer_id,
        },
        ErrorCode::IdempotencyConflict => Error::IdempotencyConflict {
            key: body
                .key
                .or(transfer_id)
                .or(idempotency.map(str::to_string))
                .unwrap_or_default(),
            message: body.message,
        },
        ErrorCode::InvalidRequest => Error::InvalidRequest {
            message: body.message,
        },
        ErrorCode::TooLarge => Error::TooLarge {
            message: body.message,
        },
        ErrorCode::Unauthenticated => Error::Unauthenticated {
            node: node.to_string(),
            message: body.message,
        },
        ErrorCode::Forbidden => Error::Forbidden {
            node: node.to_string(),
            message: body.message,
        },
        code => Error::Server {
            node: node.to_string(),
            status,
            code: raw_code.unwrap_or_else(|| code.as_str().to_string()),
            message: body.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "http://127.0.0.1:7001";

    fn map(status: u16, body: &str, subject: &Subject) -> Error {
        ErrorAnswer::parse(status, body.as_bytes()).into_error(subject, Some("idem-1"), NODE)
    }

    fn transfer() -> Subject {
        Subject::Transfer {
            id: "t-1".into(),
            from: "alice".into(),
            amount: 50,
        }
    }

    #[test]
    fn every_api_code_has_its_variant() {
        let key = Subject::Key("k".into());
        assert_eq!(
            map(
                412,
                r#"{"error":"precondition_failed","message":"m","current_version":7}"#,
                &key
            ),
            Error::PreconditionFailed {
                key: "k".into(),
                current_version: Some(7)
            }
        );
        assert_eq!(
            map(404, r#"{"error":"not_found","message":"m"}"#, &key),
            Error::NotFound {
                what: "key \"k\"".into()
            }
        );
        assert_eq!(
            map(
                409,
                r#"{"error":"insufficient_funds","message":"m","balance":20}"#,
                &transfer()
            ),
            Error::InsufficientFunds {
                account: "alice".into(),
                balance: Some(20),
                amount: 50,
                transfer_id: Some("t-1".into()),
            }
        );
        assert_eq!(
            map(
                404,
                r#"{"error":"account_not_found","message":"m","account":"bob"}"#,
                &transfer()
            ),
            Error::AccountNotFound {
                account: Some("bob".into()),
                transfer_id: Some("t-1".into())
            }
        );
        assert_eq!(
            map(
                409,
                r#"{"error":"account_exists","message":"m"}"#,
                &Subject::Account("a".into())
            ),
            Error::AccountExists { id: "a".into() }
        );
        assert_eq!(
            map(
                422,
                r#"{"error":"idempotency_conflict","message":"m"}"#,
                &key
            ),
            Error::IdempotencyConflict {
                key: "idem-1".into(),
                message: "m".into()
            }
        );
        assert_eq!(
            map(400, r#"{"error":"invalid_request","message":"bad"}"#, &key),
            Error::InvalidRequest {
                message: "bad".into()
            }
        );
        assert_eq!(
            map(413, r#"{"error":"too_large","message":"big"}"#, &key),
            Error::TooLarge {
                message: "big".into()
            }
        );
        assert_eq!(
            map(401, r#"{"error":"unauthenticated","message":"m"}"#, &key),
            Error::Unauthenticated {
                node: NODE.into(),
                message: "m".into()
            }
        );
        assert_eq!(
            map(403, r#"{"error":"forbidden","message":"m"}"#, &key),
            Error::Forbidden {
                node: NODE.into(),
                message: "m".into()
            }
        );
        assert_eq!(
            map(
                418,
                r#"{"error":"teapot","message":"short and stout"}"#,
                &key
            ),
            Error::Server {
                node: NODE.into(),
                status: 418,
                code: "teapot".into(),
                message: "short and stout".into()
            }
        );
    }

    #[test]
    fn odd_bodies_become_protocol_or_server_errors() {
        assert!(matches!(
            map(400, "<html>", &Subject::Other),
            Error::Protocol { .. }
        ));
        assert!(matches!(
            map(502, "bad gateway", &Subject::Other),
            Error::Server { status: 502, .. }
        ));
        let long = "x".repeat(10_000);
        let answer = ErrorAnswer::parse(500, long.as_bytes());
        assert!(answer.summary().len() < RAW_ERROR_QUOTE_BYTES_MAX + 16);
    }

    #[test]
    fn failure_kinds_follow_code_then_status() {
        let kind = |status, body: &str| ErrorAnswer::parse(status, body.as_bytes()).failure_kind();
        assert_eq!(
            kind(503, r#"{"error":"unavailable","message":""}"#),
            FailureKind::Unavailable
        );
        assert_eq!(
            kind(503, r#"{"error":"overloaded","message":""}"#),
            FailureKind::Unavailable
        );
        assert_eq!(kind(503, "no json"), FailureKind::Unavailable);
        assert_eq!(
            kind(504, r#"{"error":"indeterminate","message":""}"#),
            FailureKind::Indeterminate
        );
        assert_eq!(kind(504, ""), FailureKind::Indeterminate);
        assert_eq!(
            kind(412, r#"{"error":"precondition_failed","message":""}"#),
            FailureKind::Refused
        );
        assert_eq!(kind(404, ""), FailureKind::Refused);
        assert_eq!(
            kind(500, r#"{"error":"internal","message":""}"#),
            FailureKind::ServerError
        );
    }

    #[test]
    fn errors_stay_small_enough_to_return_by_value() {
        // clippy's result_large_err fires at 128 bytes in every crate that returns our Error.
        assert!(
            std::mem::size_of::<Error>() < 128,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        let refused = Error::PreconditionFailed {
            key: "k".into(),
            current_version: None,
        };
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(Error::NotFound { what: "x".into() }.exit_code(), 1);
        assert_eq!(
            Error::InvalidRequest {
                message: String::new()
            }
            .exit_code(),
            2
        );
        let unavailable = Error::Unavailable {
            operation: "GET /".into(),
            tried: vec![],
            last_error: "x".into(),
        };
        assert_eq!(unavailable.exit_code(), 3);
        assert!(unavailable.is_definite_failure());
        let indeterminate = Error::Indeterminate {
            idempotency_key: None,
            transfer_id: Some("t-9".into()),
            last_node: NODE.into(),
            attempts: 3,
            last_error: "timed out".into(),
        };
        assert_eq!(indeterminate.exit_code(), 3);
        assert!(!indeterminate.is_definite_failure());
        let text = indeterminate.to_string();
        assert!(text.contains("may or may not have been applied"), "{text}");
        assert!(text.contains("GET /v1/transfers/t-9"), "{text}");
        let server = |status| Error::Server {
            node: NODE.into(),
            status,
            code: String::new(),
            message: String::new(),
        };
        assert_eq!(server(418).exit_code(), 1);
        assert_eq!(server(500).exit_code(), 3);
    }
}
