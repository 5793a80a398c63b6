//! The only place that maps errors to HTTP: every refusal becomes a status and a JSON body
//! `{"error": "<code>", "message": "<text>"}` (plus fields that help, such as the current version
//! of a key), with the codes of docs/api.md.

use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use metrokv_api::ErrorBody;
use metrokv_api::ErrorCode;

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
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
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

impl From<metrokv_api::validate::Invalid> for ApiError {
    fn from(e: metrokv_api::validate::Invalid) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// The documented code of this error; its HTTP status comes with it ([`ErrorCode::status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Indeterminate(_) => ErrorCode::Indeterminate,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Rejected(r) => match r {
                Rejection::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
                Rejection::AccountExists { .. } => ErrorCode::AccountExists,
                Rejection::AccountNotFound { .. } => ErrorCode::AccountNotFound,
                Rejection::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
                Rejection::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
                Rejection::Invalid(_) => ErrorCode::InvalidRequest,
                Rejection::AnswerTooLarge { .. } => ErrorCode::TooLarge,
                // Only the leader proposes storage records; a client never sees this.
                Rejection::StorageConflict { .. } => ErrorCode::Internal,
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code()
            .status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body, with the fields a client needs to act on the error.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), self.to_string());
        if let ApiError::Rejected(r) = self {
            match r {
                Rejection::PreconditionFailed {
                    key,
                    current_version,
                } => {
                    body.key = Some(key.clone());
                    body.current_version = Some(*current_version);
                }
                Rejection::InsufficientFunds {
                    account,
                    balance,
                    amount,
                } => {
                    body.account = Some(account.clone());
                    body.balance = Some(*balance);
                    body.amount = Some(*amount);
                }
                Rejection::AccountNotFound { id } | Rejection::AccountExists { id } => {
                    body.account = Some(id.clone());
                }
                Rejection::IdempotencyConflict { key } => body.key = Some(key.clone()),
                Rejection::AnswerTooLarge { bytes, max } => {
                    body.answer_bytes = Some(*bytes);
                    body.answer_bytes_max = Some(*max);
                }
                Rejection::Invalid(_) | Rejection::StorageConflict { .. } => {}
            }
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
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
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.code().as_str(), code);
            let body = serde_json::to_value(e.body()).unwrap();
            assert_eq!(body["error"], code);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let e = ApiError::Rejected(Rejection::PreconditionFailed {
            key: "k".into(),
            current_version: 3,
        });
        assert_eq!(e.body().current_version, Some(3));
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
            ApiError::Overloaded("x".into()).body().error,
            ErrorCode::Overloaded
        );
        let e = ApiError::Rejected(Rejection::AnswerTooLarge { bytes: 5, max: 4 });
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.body().answer_bytes_max, Some(4));
    }
}
