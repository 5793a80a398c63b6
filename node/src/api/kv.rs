//! `/v1/kv`: get, put, delete (with `If-Match` / `If-None-Match: *`) and prefix listing.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde_json::json;

use super::check_key;
use super::idempotency_key;
use super::path_tail;
use super::read_barrier;
use super::read_body;
use super::unexpected;
use super::value_json;
use super::with_headers;
use super::write;
use super::ApiError;
use super::AppState;
use super::Consistency;
use super::Query;
use crate::limits;
use crate::state_machine::Command;
use crate::state_machine::Condition;
use crate::state_machine::Success;

const KEY_PREFIX: &str = "/v1/kv/";

fn key_from(uri: &Uri) -> Result<String, ApiError> {
    let key = path_tail(uri, KEY_PREFIX)?;
    check_key(&key)?;
    Ok(key)
}

/// `If-Match: "<version>"` or `If-None-Match: *`.
fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
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

pub async fn get(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let query = Query::parse(raw.as_deref(), &["consistency"])?;
    let consistency = query.consistency()?;
    let leader = read_barrier(&state.service, consistency).await?;
    let applied = super::applied_index(&state.service);
    let Some(record) = state.service.reader().kv(&key).await? else {
        let err = ApiError::NotFound(format!("key {key:?} does not exist")).into_response();
        return Ok(with_headers(err, leader, Some(applied)));
    };
    let mut response = record.value.into_response();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", record.version)) {
        headers.insert("etag", etag);
    }
    Ok(with_headers(response, leader, Some(applied)))
}

pub async fn put(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    Query::parse(raw.as_deref(), &[])?;
    let condition = condition(&headers)?;
    let idempotency_key = idempotency_key(&headers)?;
    let value = read_body(body, limits::VALUE_BYTES_MAX).await?.to_vec();
    let served = write(
        &state.service,
        Command::Put {
            key,
            value,
            condition,
        },
        idempotency_key,
    )
    .await?;
    let Success::Put { version, revision } = served.value else {
        return Err(unexpected(served.value));
    };
    Ok(with_headers(
        Json(json!({ "version": version, "revision": revision })).into_response(),
        served.leader,
        None,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    Query::parse(raw.as_deref(), &[])?;
    let condition = condition(&headers)?;
    let idempotency_key = idempotency_key(&headers)?;
    let served = write(
        &state.service,
        Command::Delete { key, condition },
        idempotency_key,
    )
    .await?;
    let Success::Delete { deleted, revision } = served.value else {
        return Err(unexpected(served.value));
    };
    Ok(with_headers(
        Json(json!({ "deleted": deleted, "revision": revision })).into_response(),
        served.leader,
        None,
    ))
}

pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["prefix", "limit", "after", "consistency"])?;
    let prefix = query.get("prefix").unwrap_or("");
    if prefix.len() > limits::KEY_BYTES_MAX {
        return Err(ApiError::InvalidRequest(
            "prefix is longer than a key can be".into(),
        ));
    }
    let after = query.get("after");
    let limit = query.limit()?;
    let consistency: Consistency = query.consistency()?;
    let leader = read_barrier(&state.service, consistency).await?;
    let applied = super::applied_index(&state.service);
    let page = state.service.reader().list_kv(prefix, after, limit).await?;
    let items: Vec<_> = page
        .items
        .iter()
        .map(|item| {
            let mut m = serde_json::Map::new();
            m.insert("key".into(), item.key.clone().into());
            value_json(&mut m, &item.record.value);
            m.insert("version".into(), item.record.version.into());
            serde_json::Value::Object(m)
        })
        .collect();
    let body = json!({ "revision": page.revision, "items": items, "more": page.more });
    Ok(with_headers(
        Json(body).into_response(),
        leader,
        Some(applied),
    ))
}

#[cfg(test)]
mod tests {
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
}
