//! `/v1/kv`: get, put, delete (with `If-Match` / `If-None-Match: *`) and prefix listing.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use metrokv_api::kv::DeleteAnswer;
use metrokv_api::kv::KvItem;
use metrokv_api::kv::KvPage;
use metrokv_api::kv::PutAnswer;

use super::auth::Caller;
use super::extract::Fresh;
use super::extract::IdempotencyKey;
use super::extract::KvKey;
use super::extract::Listing;
use super::extract::NoQuery;
use super::extract::ValueBody;
use super::extract::WriteCondition;
use super::unexpected;
use super::write;
use super::ApiError;
use super::AppState;
use crate::limits;
use crate::state_machine::Command;
use crate::state_machine::Success;

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    KvKey(key): KvKey,
    fresh: Fresh,
) -> Result<Response, ApiError> {
    caller.key(&key)?;
    let Some(record) = state.service.reader().kv(&key).await? else {
        return fresh
            .answer(
                &state,
                ApiError::NotFound(format!("key {key:?} does not exist")),
            )
            .await;
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
    fresh.answer(&state, response).await
}

pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    KvKey(key): KvKey,
    _: NoQuery,
    WriteCondition(condition): WriteCondition,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ValueBody(value): ValueBody,
) -> Result<Response, ApiError> {
    caller.key(&key)?;
    let command = Command::Put {
        key,
        value,
        condition,
    };
    let served = write(&state.service, command, idempotency_key).await?;
    let Success::Put { version, revision } = served.value else {
        return Err(unexpected(served.value));
    };
    Ok(served.answer(Json(PutAnswer { version, revision })))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    KvKey(key): KvKey,
    _: NoQuery,
    WriteCondition(condition): WriteCondition,
    IdempotencyKey(idempotency_key): IdempotencyKey,
) -> Result<Response, ApiError> {
    caller.key(&key)?;
    let command = Command::Delete { key, condition };
    let served = write(&state.service, command, idempotency_key).await?;
    let Success::Delete { deleted, revision } = served.value else {
        return Err(unexpected(served.value));
    };
    Ok(served.answer(Json(DeleteAnswer { deleted, revision })))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    list: Listing<{ limits::KEY_BYTES_MAX }>,
) -> Result<Response, ApiError> {
    caller.key_listing(&list.prefix)?;
    let page = state
        .service
        .reader()
        .list_kv(&list.prefix, list.after.as_deref(), list.limit)
        .await?;
    let items = page.items.iter();
    list.fresh
        .answer(
            &state,
            Json(KvPage {
                revision: page.revision,
                items: items
                    .map(|item| {
                        KvItem::new(item.key.as_str(), &item.record.value, item.record.version)
                    })
                    .collect(),
                more: page.more,
            }),
        )
        .await
}
