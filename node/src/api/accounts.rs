//! The ledger: `/v1/accounts` and `/v1/transfers`. The bodies of the two writes are checked in
//! `create_command` and `transfer_command`, which the handlers and the fuzz targets share.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use metrokv_api::ledger::Account;
use metrokv_api::ledger::AccountsPage;
use metrokv_api::ledger::CreateAccount;
use metrokv_api::ledger::TransferReceipt as ReceiptBody;
use metrokv_api::ledger::TransferRecord;
use metrokv_api::ledger::TransferRejected;
use metrokv_api::ledger::TransferRequest;

use super::auth::Caller;
use super::check_id;
use super::extract::AccountId;
use super::extract::Fresh;
use super::extract::IdempotencyKey;
use super::extract::JsonBody;
use super::extract::Listing;
use super::extract::NoQuery;
use super::extract::TransferId;
use super::unexpected;
use super::write;
use super::ApiError;
use super::AppState;
use crate::limits;
use crate::state_machine::Command;
use crate::state_machine::Success;
use crate::state_machine::Transfer;
use crate::state_machine::TransferReceipt;

/// The command a create-account body asks for, once its id is checked.
pub(crate) fn create_command(body: CreateAccount) -> Result<Command, ApiError> {
    let CreateAccount { id, balance } = body;
    check_id("account id", &id)?;
    Ok(Command::CreateAccount { id, balance })
}

/// The command a transfer body asks for, once its ids and amount are checked. The state machine
/// would refuse a zero amount or a transfer to the same account too, but as an answer stored
/// under the transfer id; refusing here keeps the id free for a corrected request.
pub(crate) fn transfer_command(body: TransferRequest) -> Result<Command, ApiError> {
    let TransferRequest {
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
    caller: Caller,
    _: NoQuery,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    JsonBody(body): JsonBody<CreateAccount>,
) -> Result<Response, ApiError> {
    caller.account(&body.id)?;
    let command = create_command(body)?;
    let served = write(&state.service, command, idempotency_key).await?;
    let Success::AccountCreated {
        id,
        balance,
        version,
    } = &served.value
    else {
        return Err(unexpected(served.value));
    };
    let account = Account {
        id: id.clone(),
        balance: *balance,
        version: *version,
    };
    Ok(served.answer((StatusCode::CREATED, Json(account))))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    fresh: Fresh,
) -> Result<Response, ApiError> {
    caller.account(&id)?;
    let Some(account) = state.service.reader().account(&id).await? else {
        return fresh
            .answer(
                &state,
                ApiError::NotFound(format!("account {id:?} does not exist")),
            )
            .await;
    };
    fresh
        .answer(
            &state,
            Json(Account {
                id,
                balance: account.balance,
                version: account.version,
            }),
        )
        .await
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    list: Listing<{ limits::ID_BYTES_MAX }>,
) -> Result<Response, ApiError> {
    caller.account_listing(&list.prefix)?;
    let page = state
        .service
        .reader()
        .list_accounts(&list.prefix, list.after.as_deref(), list.limit)
        .await?;
    // The total is over this page; it is exact because the page is one snapshot.
    let total: u128 = page
        .items
        .iter()
        .map(|a| u128::from(a.record.balance))
        .sum();
    let accounts = page.items.iter().map(|a| Account {
        id: a.id.clone(),
        balance: a.record.balance,
        version: a.record.version,
    });
    list.fresh
        .answer(
            &state,
            Json(AccountsPage {
                revision: page.revision,
                accounts: accounts.collect(),
                total,
                more: page.more,
            }),
        )
        .await
}

fn receipt_body(r: &TransferReceipt) -> TransferRecord {
    TransferRecord::Committed(ReceiptBody {
        id: r.id.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
        amount: r.amount,
        from_balance: r.from_balance,
        to_balance: r.to_balance,
        revision: r.revision,
    })
}

pub async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    JsonBody(body): JsonBody<TransferRequest>,
) -> Result<Response, ApiError> {
    caller.account(&body.from)?;
    caller.account(&body.to)?;
    let command = transfer_command(body)?;
    // The transfer id is the idempotency key; an Idempotency-Key header is not needed.
    let served = write(&state.service, command, None).await?;
    let Success::Transfer(receipt) = &served.value else {
        return Err(unexpected(served.value));
    };
    Ok(served.answer(Json(receipt_body(receipt))))
}

pub async fn get_transfer(
    State(state): State<AppState>,
    caller: Caller,
    TransferId(id): TransferId,
    fresh: Fresh,
) -> Result<Response, ApiError> {
    let Some(record) = state.service.reader().transfer(&id).await? else {
        return fresh
            .answer(
                &state,
                ApiError::NotFound(format!(
                    "no outcome is recorded for transfer {id:?}: it never applied"
                )),
            )
            .await;
    };
    let body = match &record.response {
        Ok(Success::Transfer(receipt)) => receipt_body(receipt),
        Ok(other) => return Err(unexpected(other.clone())),
        Err(rejection) => {
            let err = ApiError::Rejected(rejection.clone());
            let asked = record.transfer.as_ref();
            TransferRecord::Rejected(TransferRejected {
                id,
                error: err.code(),
                message: err.to_string(),
                from: asked.map(|t| t.from.clone()),
                to: asked.map(|t| t.to.clone()),
                amount: asked.map(|t| t.amount),
            })
        }
    };
    // A scoped token sees the records of transfers between its own accounts only.
    let (from, to) = match &body {
        TransferRecord::Committed(r) => (Some(r.from.as_str()), Some(r.to.as_str())),
        TransferRecord::Rejected(r) => (r.from.as_deref(), r.to.as_deref()),
    };
    caller.account(from.unwrap_or_default())?;
    caller.account(to.unwrap_or_default())?;
    fresh.answer(&state, Json(body)).await
}
