//! The ledger: `/v1/accounts` and `/v1/transfers`. The bodies of the two writes are checked in
//! `create_command` and `transfer_command`, which the handlers and the fuzz targets share.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::check_id;
use super::idempotency_key;
use super::path_tail;
use super::read_barrier;
use super::read_json;
use super::unexpected;
use super::with_headers;
use super::write;
use super::ApiError;
use super::AppState;
use super::Query;
use crate::state_machine::Command;
use crate::state_machine::Success;
use crate::state_machine::Transfer;
use crate::state_machine::TransferReceipt;

/// The body of `POST /v1/accounts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAccount {
    id: String,
    balance: u64,
}

/// The body of `POST /v1/transfers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferJson {
    id: String,
    from: String,
    to: String,
    amount: u64,
}

/// The command a create-account body asks for, once its id is checked.
pub(crate) fn create_command(body: CreateAccount) -> Result<Command, ApiError> {
    let CreateAccount { id, balance } = body;
    check_id("account id", &id)?;
    Ok(Command::CreateAccount { id, balance })
}

/// The command a transfer body asks for, once its ids and amount are checked. The state machine
/// would refuse a zero amount or a transfer to the same account too, but as an answer stored
/// under the transfer id; refusing here keeps the id free for a corrected request.
pub(crate) fn transfer_command(body: TransferJson) -> Result<Command, ApiError> {
    let TransferJson {
        id,
        from,
        to,
        amount,
    } = body;
    check_id("transfer id", &id)?;
    check_id("account id", &from)?;
    check_id("account id", &to)?;
    if amount == 0 {
        return Err(ApiError::InvalidRequest(
            "amount must be greater than zero".into(),
        ));
    }
    if from == to {
        return Err(ApiError::InvalidRequest(
            "from and to must be different accounts".into(),
        ));
    }
    Ok(Command::Transfer(Transfer {
        id,
        from,
        to,
        amount,
    }))
}

pub async fn create(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Query::parse(raw.as_deref(), &[])?;
    let idempotency_key = idempotency_key(&headers)?;
    let command = create_command(read_json(body).await?)?;
    let served = write(&state.service, command, idempotency_key).await?;
    let Success::AccountCreated {
        id,
        balance,
        version,
    } = served.value
    else {
        return Err(unexpected(served.value));
    };
    let body = Json(json!({ "id": id, "balance": balance, "version": version }));
    Ok(with_headers(
        (StatusCode::CREATED, body).into_response(),
        served.leader,
        None,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = path_tail(&uri, "/v1/accounts/")?;
    check_id("account id", &id)?;
    let query = Query::parse(raw.as_deref(), &["consistency"])?;
    let leader = read_barrier(&state.service, query.consistency()?).await?;
    let applied = super::applied_index(&state.service);
    let Some(account) = state.service.reader().account(&id).await? else {
        return Ok(with_headers(
            ApiError::NotFound(format!("account {id:?} does not exist")).into_response(),
            leader,
            Some(applied),
        ));
    };
    let body = Json(json!({ "id": id, "balance": account.balance, "version": account.version }));
    Ok(with_headers(body.into_response(), leader, Some(applied)))
}

pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["prefix", "limit", "after", "consistency"])?;
    let prefix = query.get("prefix").unwrap_or("");
    if prefix.len() > crate::limits::ID_BYTES_MAX {
        return Err(ApiError::InvalidRequest(
            "prefix is longer than an id can be".into(),
        ));
    }
    let limit = query.limit()?;
    let leader = read_barrier(&state.service, query.consistency()?).await?;
    let applied = super::applied_index(&state.service);
    let page = state
        .service
        .reader()
        .list_accounts(prefix, query.get("after"), limit)
        .await?;
    // The total is over this page; it is exact because the page is one snapshot.
    let total: u128 = page
        .items
        .iter()
        .map(|a| u128::from(a.record.balance))
        .sum();
    let accounts: Vec<Value> = page
        .items
        .iter()
        .map(|a| json!({ "id": a.id, "balance": a.record.balance, "version": a.record.version }))
        .collect();
    let body = json!({ "revision": page.revision, "accounts": accounts, "total": total, "more": page.more });
    Ok(with_headers(
        Json(body).into_response(),
        leader,
        Some(applied),
    ))
}

fn receipt_json(r: &TransferReceipt) -> Value {
    json!({
        "id": r.id, "status": "committed", "from": r.from, "to": r.to, "amount": r.amount,
        "from_balance": r.from_balance, "to_balance": r.to_balance, "revision": r.revision,
    })
}

pub async fn transfer(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Query::parse(raw.as_deref(), &[])?;
    let command = transfer_command(read_json(body).await?)?;
    // The transfer id is the idempotency key; an Idempotency-Key header is not needed.
    let served = write(&state.service, command, None).await?;
    let Success::Transfer(receipt) = &served.value else {
        return Err(unexpected(served.value));
    };
    Ok(with_headers(
        Json(receipt_json(receipt)).into_response(),
        served.leader,
        None,
    ))
}

pub async fn get_transfer(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = path_tail(&uri, "/v1/transfers/")?;
    check_id("transfer id", &id)?;
    let query = Query::parse(raw.as_deref(), &["consistency"])?;
    let leader = read_barrier(&state.service, query.consistency()?).await?;
    let applied = super::applied_index(&state.service);
    let Some(record) = state.service.reader().transfer(&id).await? else {
        let msg = format!("no outcome is recorded for transfer {id:?} (never applied, or older than the retention period)");
        return Ok(with_headers(
            ApiError::NotFound(msg).into_response(),
            leader,
            Some(applied),
        ));
    };
    let body = match &record.response {
        Ok(Success::Transfer(receipt)) => receipt_json(receipt),
        Ok(other) => return Err(unexpected(other.clone())),
        Err(rejection) => {
            let err = ApiError::Rejected(rejection.clone());
            let (_, code) = err.status_and_code();
            let mut body = json!({ "id": id, "status": "rejected", "error": code, "message": err.to_string() });
            if let (Some(t), Some(obj)) = (&record.transfer, body.as_object_mut()) {
                obj.insert("from".into(), t.from.clone().into());
                obj.insert("to".into(), t.to.clone().into());
                obj.insert("amount".into(), t.amount.into());
            }
            body
        }
    };
    Ok(with_headers(
        Json(body).into_response(),
        leader,
        Some(applied),
    ))
}
