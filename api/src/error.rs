//! Error bodies: `{"error": "<code>", "message": "<text>"}` plus the fields that help a client
//! act on a refusal (the current version of a key, the balance that was short, ...). Every error
//! changed nothing, except 504 `indeterminate` (see `docs/api.md`).

use serde::Deserialize;
use serde::Serialize;

/// The error codes of `docs/api.md`, each with its HTTP status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    NotFound,
    TooLarge,
    PreconditionFailed,
    AccountExists,
    AccountNotFound,
    InsufficientFunds,
    IdempotencyConflict,
    /// No leader or no quorum: nothing was proposed.
    Unavailable,
    /// The node is at its load limits: nothing was done.
    Overloaded,
    /// The request body did not arrive in time: nothing was done.
    Timeout,
    /// Proposed, fate unknown: resend with the same idempotency key or transfer id.
    Indeterminate,
    MethodNotAllowed,
    /// No token, or one the node does not know: nothing was done.
    Unauthenticated,
    /// The token's role or scope does not allow this request: nothing was done.
    Forbidden,
    #[default]
    Internal,
    /// A code this version does not know (a newer server); judge it by its status.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status that carries this code (`None` for [`ErrorCode::Unknown`]).
    pub fn status(self) -> Option<u16> {
        Some(match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::AccountNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::AccountExists | ErrorCode::InsufficientFunds => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::TooLarge => 413,
            ErrorCode::IdempotencyConflict => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::Overloaded => 503,
            ErrorCode::Indeterminate => 504,
            ErrorCode::Unknown => return None,
        })
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::AccountNotFound => "account_not_found",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Indeterminate => "indeterminate",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Every known code, for tests and documentation.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::PreconditionFailed,
        ErrorCode::AccountExists,
        ErrorCode::AccountNotFound,
        ErrorCode::InsufficientFunds,
        ErrorCode::IdempotencyConflict,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Indeterminate,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer's body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    /// `precondition_failed`, `idempotency_conflict`: the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `precondition_failed`: the key's version now (0: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// `insufficient_funds`, `account_exists`, `account_not_found`: the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `insufficient_funds`: its balance and the amount asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// `too_large` for a txn's reads: what it would read, and the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_bytes_max: Option<u64>,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_carry_their_status() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!(code.status().is_some());
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"brand_new\"").unwrap(),
            ErrorCode::Unknown
        );
    }

    #[test]
    fn the_api_md_example_round_trips() {
        let text = r#"{"error":"precondition_failed","message":"...","key":"greeting","current_version":2}"#;
        let body: ErrorBody = serde_json::from_str(text).unwrap();
        assert_eq!(body.error, ErrorCode::PreconditionFailed);
        assert_eq!(body.current_version, Some(2));
        assert_eq!(serde_json::to_string(&body).unwrap(), text);
        // Fields a newer server adds are ignored.
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"overloaded","message":"m","retry_in":3}"#).unwrap();
        assert_eq!(body.error, ErrorCode::Overloaded);
    }
}
