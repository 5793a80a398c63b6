//! The ledger: accounts and transfers (`/v1/accounts`, `/v1/transfers`).

use serde::Deserialize;
use serde::Serialize;

use crate::error::ErrorCode;

/// `POST /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub id: String,
    pub balance: u64,
}

/// An account: `POST /v1/accounts` (201) and `GET /v1/accounts/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub balance: u64,
    /// The revision that last changed the account.
    pub version: u64,
}

/// `GET /v1/accounts?prefix=&limit=&after=`: one page from one consistent view, with the sum of
/// its balances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsPage {
    pub revision: u64,
    pub accounts: Vec<Account>,
    pub total: u128,
    pub more: bool,
}

/// `POST /v1/transfers`. The id is the transfer's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
}

/// A transfer that moved the money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReceipt {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub from_balance: u64,
    pub to_balance: u64,
    pub revision: u64,
}

/// A transfer the ledger refused (insufficient funds, a missing account): it moved nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRejected {
    pub id: String,
    pub error: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
}

/// A transfer's recorded outcome: `GET /v1/transfers/{id}`; `POST /v1/transfers` answers the
/// committed form (a refusal there is an error answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TransferRecord {
    Committed(TransferReceipt),
    Rejected(TransferRejected),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_md_examples_round_trip() {
        let create: CreateAccount =
            serde_json::from_str(r#"{"id":"alice","balance":10000}"#).unwrap();
        assert_eq!(create.balance, 10_000);
        let text = r#"{"status":"committed","id":"t-1","from":"alice","to":"bob","amount":5000,"from_balance":5000,"to_balance":5000,"revision":4}"#;
        let record: TransferRecord = serde_json::from_str(text).unwrap();
        assert!(matches!(&record, TransferRecord::Committed(r) if r.to_balance == 5000));
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
        let text = r#"{"status":"rejected","id":"t-2","error":"insufficient_funds","message":"m","from":"alice","to":"bob","amount":10000}"#;
        let record: TransferRecord = serde_json::from_str(text).unwrap();
        assert!(
            matches!(&record, TransferRecord::Rejected(r) if r.error == ErrorCode::InsufficientFunds)
        );
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
        let page = AccountsPage {
            revision: 5,
            accounts: vec![Account {
                id: "alice".into(),
                balance: 5000,
                version: 4,
            }],
            total: u128::from(u64::MAX) * 2,
            more: false,
        };
        let text = serde_json::to_string(&page).unwrap();
        assert!(text.contains("\"total\":36893488147419103230"), "{text}");
        assert_eq!(serde_json::from_str::<AccountsPage>(&text).unwrap(), page);
        assert!(serde_json::from_str::<TransferRequest>(
            r#"{"id":"t","from":"a","to":"b","amount":1,"x":2}"#
        )
        .is_err());
    }
}
