//! What every handler would otherwise repeat, as axum extractors: strict query strings, the key
//! or id in the path, the write headers (`Idempotency-Key`, `If-Match`), JSON and raw bodies,
//! and the read barrier with the headers a read answers with. A handler names what it needs in
//! its arguments, in the order the checks must run (a bad key is refused before the barrier
//! waits for the leader), and is left with the call and its answer.
//!
//! Each extractor refuses with an [`ApiError`], so a refused request gets the same JSON error as
//! any other and nothing is proposed.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::check_id;
use super::check_key;
use super::path_tail;
use super::read_barrier;
use super::read_body;
use super::read_json;
use super::with_headers;
use super::ApiError;
use super::AppState;
use super::Barrier;
use super::Query;
use crate::limits;
use crate::service::Served;
use crate::state_machine::Condition;

/// A request that takes no query parameters (every write): any parameter is refused, so a typo
/// such as `?consistncy=stale` on a write is an error, not silently ignored.
pub struct NoQuery;

impl FromRequestParts<AppState> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Query::parse(parts.uri.query(), &[])?;
        Ok(NoQuery)
    }
}

/// A read's `?consistency=` (the only parameter it takes), with the barrier already passed: the
/// local state is now as fresh as the consistency promises. Carries what the answer's headers
/// say: the leader that confirmed, and the applied index the read sees at least.
pub struct Fresh {
    barrier: Barrier,
    pub applied_index: u64,
}

impl Fresh {
    async fn after_barrier(state: &AppState, query: &Query) -> Result<Self, ApiError> {
        let barrier = read_barrier(&state.service, query.consistency()?).await?;
        Ok(Fresh {
            barrier,
            applied_index: state.service.applied_index(),
        })
    }

    /// `answer` with `X-Metrokv-Leader` and `X-Metrokv-Applied-Index`, once the read has
    /// settled (a linearizable read shows nothing a zone loss could take back, see
    /// `service::zones`).
    pub async fn answer(
        &self,
        state: &AppState,
        answer: impl IntoResponse,
    ) -> Result<Response, ApiError> {
        self.barrier.settle(&state.service).await?;
        Ok(with_headers(
            answer.into_response(),
            self.barrier.leader,
            Some(self.applied_index),
        ))
    }
}

impl FromRequestParts<AppState> for Fresh {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = Query::parse(parts.uri.query(), &["consistency"])?;
        Fresh::after_barrier(state, &query).await
    }
}

/// A listing's parameters (`prefix`, `after`, `limit`, `consistency`), checked, then the read
/// barrier. `PREFIX_MAX` is the longest prefix that can match anything (a key, an id).
pub struct Listing<const PREFIX_MAX: usize> {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
    pub fresh: Fresh,
}

impl<const PREFIX_MAX: usize> FromRequestParts<AppState> for Listing<PREFIX_MAX> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = Query::parse(
            parts.uri.query(),
            &["prefix", "limit", "after", "consistency"],
        )?;
        let prefix = query.get("prefix").unwrap_or("").to_string();
        if prefix.len() > PREFIX_MAX {
            return Err(ApiError::InvalidRequest(format!(
                "the prefix is {} bytes; nothing listed here is longer than {PREFIX_MAX}",
                prefix.len()
            )));
        }
        let limit = query.limit()?;
        let after = query.get("after").map(str::to_string);
        let fresh = Fresh::after_barrier(state, &query).await?;
        Ok(Listing {
            prefix,
            after,
            limit,
            fresh,
        })
    }
}

/// The key of `/v1/kv/{key}`, percent-decoded and checked.
pub struct KvKey(pub String);

impl<S: Sync> FromRequestParts<S> for KvKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let key = path_tail(&parts.uri, "/v1/kv/")?;
        check_key(&key)?;
        Ok(KvKey(key))
    }
}

/// The id of `/v1/accounts/{id}`, checked.
pub struct AccountId(pub String);

impl<S: Sync> FromRequestParts<S> for AccountId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = path_tail(&parts.uri, "/v1/accounts/")?;
        check_id("account id", &id)?;
        Ok(AccountId(id))
    }
}

/// The id of `/v1/transfers/{id}`, checked.
pub struct TransferId(pub String);

impl<S: Sync> FromRequestParts<S> for TransferId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = path_tail(&parts.uri, "/v1/transfers/")?;
        check_id("transfer id", &id)?;
        Ok(TransferId(id))
    }
}

/// The `Idempotency-Key` header of a write, if any, checked.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(IdempotencyKey(super::idempotency_key(&parts.headers)?))
    }
}

/// The condition of a key write: `If-Match: "<version>"`, `If-None-Match: *`, or none.
pub struct WriteCondition(pub Condition);

impl<S: Sync> FromRequestParts<S> for WriteCondition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(WriteCondition(condition(&parts.headers)?))
    }
}

/// `If-Match: "<version>"` or `If-None-Match: *`.
pub fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    let if_match = headers.get("if-match");
    let if_none_match = headers.get("if-none-match");
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "give If-Match or If-None-Match, not both".into(),
        )),
        (Some(v), None) => {
            let text = v.to_str().unwrap_or("").trim();
            let unquoted = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(text);
            unquoted
                .parse::<u64>()
                .map(Condition::IfVersion)
                .map_err(|_| {
                    ApiError::InvalidRequest(format!(
                        "If-Match must be a version like \"12\", not {text:?}"
                    ))
                })
        }
        (None, Some(v)) if v.as_bytes() == b"*" => Ok(Condition::IfAbsent),
        (None, Some(_)) => Err(ApiError::InvalidRequest(
            "If-None-Match supports only *".into(),
        )),
        (None, None) => Ok(Condition::Always),
    }
}

/// A JSON body of at most [`limits::REQUEST_BODY_BYTES_MAX`] bytes, parsed strictly (see
/// [`super::parse_json`]).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        Ok(JsonBody(read_json(request.into_body()).await?))
    }
}

/// A key's value as the raw body, at most [`limits::VALUE_BYTES_MAX`] bytes.
pub struct ValueBody(pub Vec<u8>);

impl<S: Sync> FromRequest<S> for ValueBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = read_body(request.into_body(), limits::VALUE_BYTES_MAX).await?;
        Ok(ValueBody(bytes.to_vec()))
    }
}

impl<T> Served<T> {
    /// `answer` with the `X-Metrokv-Leader` of the leader that served the write.
    pub fn answer(&self, answer: impl IntoResponse) -> Response {
        with_headers(answer.into_response(), self.leader, None)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn conditions_parse() {
        assert_eq!(condition(&headers(&[])).unwrap(), Condition::Always);
        assert_eq!(
            condition(&headers(&[("if-match", "\"7\"")])).unwrap(),
            Condition::IfVersion(7)
        );
        assert_eq!(
            condition(&headers(&[("if-match", "7")])).unwrap(),
            Condition::IfVersion(7)
        );
        assert_eq!(
            condition(&headers(&[("if-none-match", "*")])).unwrap(),
            Condition::IfAbsent
        );
        assert!(condition(&headers(&[("if-match", "\"x\"")])).is_err());
        assert!(condition(&headers(&[("if-none-match", "\"3\"")])).is_err());
        assert!(condition(&headers(&[("if-match", "1"), ("if-none-match", "*")])).is_err());
    }

    async fn parts_of(uri: &str) -> Parts {
        let (parts, _) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[tokio::test]
    async fn paths_and_queries_are_checked_before_anything_runs() {
        let mut parts = parts_of("/v1/kv/a%2Fb").await;
        let KvKey(key) = KvKey::from_request_parts(&mut parts, &()).await.unwrap();
        assert_eq!(key, "a/b");
        let mut parts = parts_of("/v1/kv/").await;
        assert!(KvKey::from_request_parts(&mut parts, &()).await.is_err());
        let mut parts = parts_of("/v1/accounts/bad%20id").await;
        assert!(AccountId::from_request_parts(&mut parts, &())
            .await
            .is_err());
        let mut parts = parts_of("/v1/transfers/t-1").await;
        let TransferId(id) = TransferId::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(id, "t-1");
    }
}
