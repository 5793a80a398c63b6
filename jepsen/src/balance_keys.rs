//! The unsafe bank's storage: balances kept as plain keys (`bank/<account>` = decimal text),
//! read in one page and overwritten with blind PUTs. The negative control (`workload`, mode
//! `unsafe`) and the double-spend story (`scenario`) both drive money this way, which is exactly
//! what the ledger API exists to prevent; they share this one implementation.

use std::collections::BTreeMap;

use metrokv_client::{Client, Consistency, ListOptions, PutOptions, PutResult};

/// Every balance key starts with this.
pub const PREFIX: &str = "bank/";

/// The key holding `account`'s balance.
pub fn key(account: &str) -> String {
    format!("{PREFIX}{account}")
}

/// What one read of every balance key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub balances: BTreeMap<String, i64>,
    /// The endpoint that answered.
    pub endpoint: String,
}

/// Why a read of the balance keys did not give balances.
#[derive(Debug)]
pub enum ReadError {
    /// The request failed (a client error, with its own outcome).
    Client(metrokv_client::Error),
    /// The keys hold something no blind write of ours put there: a harness error.
    Harness(String),
}

/// Read every balance key in one page of at most `limit` keys, at `consistency`.
pub async fn read(
    client: &Client,
    limit: u32,
    consistency: Consistency,
) -> Result<Read, ReadError> {
    let page = client
        .list(ListOptions {
            prefix: PREFIX.to_owned(),
            limit: Some(limit),
            after: None,
            consistency,
        })
        .await
        .map_err(ReadError::Client)?;
    if page.more {
        return Err(ReadError::Harness(
            "harness: the balances did not fit a page".into(),
        ));
    }
    let mut balances = BTreeMap::new();
    for item in page.items {
        let account = item
            .key
            .strip_prefix(PREFIX)
            .unwrap_or(&item.key)
            .to_owned();
        let balance = std::str::from_utf8(&item.value)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| ReadError::Harness(format!("harness: {} is not a number", item.key)))?;
        balances.insert(account, balance);
    }
    Ok(Read {
        balances,
        endpoint: page.served_by.endpoint,
    })
}

/// Overwrite `account`'s balance with `value`, unconditionally (a blind PUT). With an
/// idempotency key, a retry inside the client cannot apply it twice; without one it is as
/// blind as a write gets.
pub async fn write(
    client: &Client,
    account: &str,
    value: i64,
    idempotency_key: Option<String>,
) -> Result<PutResult, metrokv_client::Error> {
    let options = PutOptions {
        idempotency_key,
        ..PutOptions::default()
    };
    client
        .put_with(&key(account), value.to_string(), options)
        .await
}
