//! The only place that maps errors to HTTP: every refusal becomes a status and a JSON body
//! `{"error": "<code>", "message": "<text>"}` (plus fields that help, such as the current version
//! of a key), with the codes of docs/api.md.

use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use serde_json::Value;

use crate::service::ReadError;
use crate::service::WriteError;
use crate::state_machine::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The node is at its load limits; nothing was done. Retry shortly or on another node.
    #[error("{0}")]
    Overloaded(String),
    /// The client did not send its request body in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Indeterminate(String),
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A storage failure on a read; the node keeps serving other requests.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Unavailable(m) => ApiError::Unavailable(m),
            WriteError::Indeterminate(m) => ApiError::Indeterminate(format!(
                "{m}; the write may still apply: resend it with the same Idempotency-Key (or transfer id) to settle it"
            )),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::Indeterminate(_) => (StatusCode::GATEWAY_TIMEOUT, "indeterminate"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Rejected(r) => match r {
                Rejection::PreconditionFailed { .. } => {
                    (StatusCode::PRECONDITION_FAILED, "precondition_failed")
                }
                Rejection::AccountExists { .. } => (StatusCode::CONFLICT, "account_exists"),
                Rejection::AccountNotFound { .. } => (StatusCode::NOT_FOUND, "account_not_found"),
                Rejection::InsufficientFunds { .. } => (StatusCode::CONFLICT, "insufficient_funds"),
                Rejection::IdempotencyConflict { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict")
                }
                Rejection::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                Rejection::AnswerTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                // Only the leader proposes storage records; a client never sees this.
                Rejection::StorageConflict { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
        }
    }

    /// The JSON body, with the fields a client needs to act on the error.
    pub fn body(&self) -> Value {
        let (_, code) = self.status_and_code();
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let ApiError::Rejected(r) = self {
            let extra = match r {
                Rejection::PreconditionFailed {
                    key,
                    current_version,
                } => json!({ "key": key, "current_version": current_version }),
                Rejection::InsufficientFunds {
                    account,
                    balance,
                    amount,
                } => {
                    json!({ "account": account, "balance": balance, "amount": amount })
                }
                Rejection::AccountNotFound { id } | Rejection::AccountExists { id } => {
                    json!({ "account": id })
                }
                Rejection::IdempotencyConflict { key } => json!({ "key": key }),
                Rejection::AnswerTooLarge { bytes, max } => {
                    json!({ "answer_bytes": bytes, "answer_bytes_max": max })
                }
                Rejection::Invalid(_) | Rejection::StorageConflict { .. } => json!({}),
            };
            if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
                body.extend(extra);
            }
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let mut response = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Both 503s changed nothing; `Retry-After` is in whole seconds, the smallest is 1.
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        if let ApiError::Rejected(Rejection::PreconditionFailed {
            current_version, ..
        }) = &self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("\"{current_version}\"")) {
                response.headers_mut().insert("etag", v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_a_documented_code() {
        let cases = [
            (
                Rejection::PreconditionFailed {
                    key: "k".into(),
                    current_version: 3,
                },
                412,
                "precondition_failed",
            ),
            (
                Rejection::AccountExists { id: "a".into() },
                409,
                "account_exists",
            ),
            (
                Rejection::AccountNotFound { id: "a".into() },
                404,
                "account_not_found",
            ),
            (
                Rejection::InsufficientFunds {
                    account: "a".into(),
                    balance: 1,
                    amount: 2,
                },
                409,
                "insufficient_funds",
            ),
            (
                Rejection::IdempotencyConflict { key: "k".into() },
                422,
                "idempotency_conflict",
            ),
        ];
        for (rejection, status, code) in cases {
            let e = ApiError::Rejected(rejection);
            assert_eq!(
                e.status_and_code(),
                (StatusCode::from_u16(status).unwrap(), code)
            );
            assert_eq!(e.body()["error"], code);
            assert!(e.body()["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let e = ApiError::Rejected(Rejection::PreconditionFailed {
            key: "k".into(),
            current_version: 3,
        });
        assert_eq!(e.body()["current_version"], 3);
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = ApiError::Unavailable("x".into()).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let r = ApiError::from(WriteError::Indeterminate("x".into())).into_response();
        assert_eq!(r.status(), 504);
        let r = ApiError::Overloaded("x".into()).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(
            ApiError::Overloaded("x".into()).body()["error"],
            "overloaded"
        );
        let e = ApiError::Rejected(Rejection::AnswerTooLarge { bytes: 5, max: 4 });
        assert_eq!(
            e.status_and_code(),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
    }
}
