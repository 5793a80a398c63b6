//! The typed requests and results of docs/api.md, and how results are read from the wire.
//!
//! Values are bytes ([`Bytes`]) everywhere in this API; the JSON `value`/`value_base64` split is
//! handled in `encoding.rs`. Results derive `Serialize` (the CLI's `--json` output), where values
//! are written the docs/api.md way. Each result says which node served it ([`ServedBy`]).
//!
//! Left out: the transaction types (`txn.rs`) and the calls (`client.rs`).

use bytes::Bytes;
use metrokv_api as api;
use serde::ser::SerializeMap as _;
use serde::Serialize;
use serde::Serializer;

use crate::encoding;

/// Which node answered a call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServedBy {
    /// The endpoint the client sent the request to, e.g. `http://127.0.0.1:7001`.
    pub endpoint: String,
    /// The leader that served it, from `X-Metrokv-Leader`, when the node said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// For stale reads, the node's applied index (`X-Metrokv-Applied-Index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

/// Read consistency (docs/api.md `?consistency=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began. The default.
    #[default]
    Linearizable,
    /// The answering node's applied state; no round trip to the leader, may be behind.
    Stale,
}

impl Consistency {
    /// The query value, or `None` for the server's default (linearizable).
    pub(crate) fn query_value(self) -> Option<String> {
        match self {
            Consistency::Linearizable => None,
            Consistency::Stale => Some("stale".to_string()),
        }
    }
}

/// A value with the version (revision) that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub version: u64,
    pub served_by: ServedBy,
}

impl Serialize for Versioned {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        encoding::serialize_value_field(&mut map, &self.value)?;
        map.serialize_entry("version", &self.version)?;
        map.serialize_entry("served_by", &self.served_by)?;
        map.end()
    }
}

/// Conditions and idempotency of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Compare-and-swap: apply only if the key's version is this (`If-Match`; 0 = absent).
    pub if_version: Option<u64>,
    /// Apply only if the key does not exist (`If-None-Match: *`).
    pub create_only: bool,
    /// Reused on every retry; a random one is generated when absent. Set it to settle an
    /// earlier `Indeterminate` put by resending it.
    pub idempotency_key: Option<String>,
}

/// Conditions and idempotency of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Delete only if the key's version is this (`If-Match`).
    pub if_version: Option<u64>,
    /// As [`PutOptions::idempotency_key`].
    pub idempotency_key: Option<String>,
}

/// The answer to a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PutResult {
    /// The key's new version.
    pub version: u64,
    /// The cluster revision after the write.
    pub revision: u64,
    pub served_by: ServedBy,
}

/// The answer to a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteResult {
    /// False when the key did not exist.
    pub deleted: bool,
    pub revision: u64,
    pub served_by: ServedBy,
}

/// Which page of keys to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this; empty lists everything.
    pub prefix: String,
    /// Page size; the server applies its default and cap when absent or larger.
    pub limit: Option<u32>,
    /// Start after this key (the last key of the previous page).
    pub after: Option<String>,
    pub consistency: Consistency,
}

/// One key in a list page or a txn `get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvItem {
    pub key: String,
    pub value: Bytes,
    pub version: u64,
}

impl Serialize for KvItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("key", &self.key)?;
        encoding::serialize_value_field(&mut map, &self.value)?;
        map.serialize_entry("version", &self.version)?;
        map.end()
    }
}

impl KvItem {
    /// From the wire form; `Err` says what is wrong with its value.
    pub(crate) fn from_api(item: api::kv::KvItem) -> Result<Self, String> {
        let value = item
            .bytes()
            .map_err(|e| format!("item {:?}: {e}", item.key))?;
        Ok(KvItem {
            key: item.key,
            value: Bytes::from(value),
            version: item.version,
        })
    }
}

/// One page of `GET /v1/kv`, from one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListPage {
    pub revision: u64,
    pub items: Vec<KvItem>,
    /// True when more keys follow; ask again with `after` = [`ListPage::next_after`].
    pub more: bool,
    pub served_by: ServedBy,
}

impl ListPage {
    /// The `after` for the next page, when there is one.
    pub fn next_after(&self) -> Option<&str> {
        if self.more {
            self.items.last().map(|item| item.key.as_str())
        } else {
            None
        }
    }
}

/// An account and its balance in minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: String,
    pub balance: u64,
    /// The revision that last changed the account, when the server said it.
    pub version: Option<u64>,
    pub served_by: ServedBy,
}

impl Account {
    pub(crate) fn from_api(account: api::ledger::Account, served_by: ServedBy) -> Self {
        Account {
            id: account.id,
            balance: account.balance,
            version: Some(account.version),
            served_by,
        }
    }
}

/// Which page of accounts to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountListOptions {
    pub prefix: String,
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub consistency: Consistency,
}

/// One account in a list page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountBalance {
    pub id: String,
    pub balance: u64,
}

/// One page of `GET /v1/accounts`, from one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountPage {
    pub revision: u64,
    pub accounts: Vec<AccountBalance>,
    /// The sum of the balances in this page (exact: the page is one snapshot). With all accounts
    /// in one page it is the ledger total a bank check watches.
    pub total: u128,
    pub more: bool,
    pub served_by: ServedBy,
}

impl AccountPage {
    pub(crate) fn from_api(page: api::ledger::AccountsPage, served_by: ServedBy) -> Self {
        AccountPage {
            revision: page.revision,
            accounts: page
                .accounts
                .into_iter()
                .map(|a| AccountBalance {
                    id: a.id,
                    balance: a.balance,
                })
                .collect(),
            total: page.total,
            more: page.more,
            served_by,
        }
    }
}

impl AccountPage {
    /// The `after` for the next page, when there is one.
    pub fn next_after(&self) -> Option<&str> {
        if self.more {
            self.accounts.last().map(|a| a.id.as_str())
        } else {
            None
        }
    }
}

/// A transfer to submit. The id is its idempotency key: resending the same request settles it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferRequest {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
}

impl TransferRequest {
    /// A transfer with a fresh random id (a UUID v4 from the OS RNG, never from a seed: a
    /// seeded id repeated in another run would be deduplicated against that run's transfer).
    pub fn new(from: impl Into<String>, to: impl Into<String>, amount: u64) -> Self {
        TransferRequest {
            id: uuid::Uuid::new_v4().to_string(),
            from: from.into(),
            to: to.into(),
            amount,
        }
    }

    /// The same transfer with a chosen id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// The answer to a committed transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferReceipt {
    pub id: String,
    /// `committed`.
    pub status: String,
    pub from_balance: u64,
    pub to_balance: u64,
    pub revision: u64,
    pub served_by: ServedBy,
}

impl TransferReceipt {
    pub(crate) fn from_api(receipt: api::ledger::TransferReceipt, served_by: ServedBy) -> Self {
        TransferReceipt {
            id: receipt.id,
            status: "committed".to_string(),
            from_balance: receipt.from_balance,
            to_balance: receipt.to_balance,
            revision: receipt.revision,
            served_by,
        }
    }
}

/// Why a recorded transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    InsufficientFunds,
    AccountNotFound,
    /// A code this client does not know.
    Other(String),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::InsufficientFunds => write!(f, "insufficient funds"),
            RejectReason::AccountNotFound => write!(f, "account not found"),
            RejectReason::Other(code) => write!(f, "{code}"),
        }
    }
}

/// The recorded outcome of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TransferOutcome {
    Committed {
        from_balance: u64,
        to_balance: u64,
    },
    Rejected {
        reason: RejectReason,
        message: Option<String>,
    },
    /// A status this client does not know.
    Unknown {
        reported: String,
    },
}

/// `GET /v1/transfers/{id}`: what happened to a transfer. Fields the server leaves out are
/// `None`; the whole answer is kept in `raw` for callers that need more.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransferRecord {
    pub id: String,
    pub outcome: TransferOutcome,
    pub from: Option<String>,
    pub to: Option<String>,
    pub amount: Option<u64>,
    pub revision: Option<u64>,
    pub raw: serde_json::Value,
    pub served_by: ServedBy,
}

impl TransferRecord {
    /// From the wire form.
    pub(crate) fn from_api(record: api::ledger::TransferRecord, served_by: ServedBy) -> Self {
        let raw = serde_json::to_value(&record).unwrap_or_default();
        match record {
            api::ledger::TransferRecord::Committed(r) => TransferRecord {
                id: r.id,
                outcome: TransferOutcome::Committed {
                    from_balance: r.from_balance,
                    to_balance: r.to_balance,
                },
                from: Some(r.from),
                to: Some(r.to),
                amount: Some(r.amount),
                revision: Some(r.revision),
                raw,
                served_by,
            },
            api::ledger::TransferRecord::Rejected(r) => TransferRecord {
                id: r.id,
                outcome: TransferOutcome::Rejected {
                    reason: match r.error {
                        api::ErrorCode::InsufficientFunds => RejectReason::InsufficientFunds,
                        api::ErrorCode::AccountNotFound => RejectReason::AccountNotFound,
                        other => RejectReason::Other(other.as_str().to_string()),
                    },
                    message: Some(r.message),
                },
                from: r.from,
                to: r.to,
                amount: r.amount,
                revision: None,
                raw,
                served_by,
            },
        }
    }
}

/// `GET /v1/cluster`: the cluster as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The leader's id, when one is known.
    pub leader: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<Member>,
    /// The zone-safety mode and state (see the README's "Zones").
    pub zone_safety: Option<api::cluster::ZoneSafetyView>,
    pub served_by: ServedBy,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: String,
    pub zone: String,
    /// `host:port` of its client API (no scheme).
    pub client_addr: String,
    pub peer_addr: String,
    /// `leader`, `follower`, `candidate`, `learner`, ...
    pub role: String,
    pub applied_index: u64,
    pub reachable: bool,
}

impl ClusterStatus {
    pub(crate) fn from_api(view: api::cluster::ClusterView, served_by: ServedBy) -> Self {
        ClusterStatus {
            cluster_id: view.cluster_id,
            leader: view.leader.map(|l| l.to_string()),
            term: view.term,
            commit_index: view.commit_index,
            members: view
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id.to_string(),
                    zone: m.zone,
                    client_addr: m.client_addr,
                    peer_addr: m.peer_addr,
                    role: m.role,
                    applied_index: m.applied_index.unwrap_or(0),
                    reachable: m.reachable,
                })
                .collect(),
            zone_safety: view.zone_safety,
            served_by,
        }
    }
}

impl Member {
    /// How many committed entries this member has not applied yet.
    pub fn lag(&self, commit_index: u64) -> u64 {
        commit_index.saturating_sub(self.applied_index)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn list_items_decode_both_value_forms() {
        let item = KvItem::from_api(api::kv::KvItem::new("a", b"x", 3)).expect("ok");
        assert_eq!(
            item,
            KvItem {
                key: "a".into(),
                value: Bytes::from_static(b"x"),
                version: 3
            }
        );
        let item = KvItem::from_api(api::kv::KvItem::new("b", &[0xff, 0], 4)).expect("ok");
        assert_eq!(item.value, Bytes::from_static(&[0xff, 0]));
        let no_value: api::kv::KvItem =
            serde_json::from_value(json!({"key": "c", "version": 1})).expect("shape");
        assert!(KvItem::from_api(no_value).is_err());
    }

    #[test]
    fn results_serialize_values_the_api_way() {
        let item = KvItem {
            key: "k".into(),
            value: Bytes::from_static(&[0xff]),
            version: 2,
        };
        assert_eq!(
            serde_json::to_value(&item).expect("json"),
            json!({"key": "k", "value_base64": "/w==", "version": 2})
        );
        let versioned = Versioned {
            value: Bytes::from_static(b"hi"),
            version: 5,
            served_by: ServedBy {
                endpoint: "http://n:1".into(),
                leader: None,
                applied_index: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&versioned).expect("json"),
            json!({"value": "hi", "version": 5, "served_by": {"endpoint": "http://n:1"}})
        );
    }

    #[test]
    fn transfer_records_read_both_outcomes() {
        let served = ServedBy::default();
        let committed = serde_json::from_value(json!({"id": "t1", "status": "committed",
            "from": "a", "to": "b", "amount": 5, "from_balance": 10, "to_balance": 20,
            "revision": 9}))
        .expect("shape");
        let record = TransferRecord::from_api(committed, served.clone());
        assert_eq!(
            record.outcome,
            TransferOutcome::Committed {
                from_balance: 10,
                to_balance: 20
            }
        );
        assert_eq!(record.amount, Some(5));
        let rejected = serde_json::from_value(json!({"id": "t2", "status": "rejected",
            "error": "insufficient_funds", "message": "a holds 1"}))
        .expect("shape");
        let record = TransferRecord::from_api(rejected, served);
        assert_eq!(
            record.outcome,
            TransferOutcome::Rejected {
                reason: RejectReason::InsufficientFunds,
                message: Some("a holds 1".into())
            }
        );
        assert_eq!(record.revision, None);
        assert!(serde_json::from_value::<api::ledger::TransferRecord>(
            json!({"status": "committed"})
        )
        .is_err());
    }

    #[test]
    fn cluster_status_reads_the_view() {
        let view = serde_json::from_value(json!({
            "cluster_id": "c", "node": 1, "leader": 1, "term": 3, "commit_index": 10,
            "members": [
                {"id": 1, "zone": "dc-a", "client_addr": "127.0.0.1:7001", "peer_addr": "x",
                 "role": "leader", "term": 3, "applied_index": 10, "reachable": true},
                {"id": 3, "zone": "dc-b", "client_addr": "", "peer_addr": "", "role": "unknown",
                 "term": null, "applied_index": null, "reachable": false}
            ]
        }))
        .expect("shape");
        let status = ClusterStatus::from_api(view, ServedBy::default());
        assert_eq!(status.leader.as_deref(), Some("1"));
        assert_eq!(status.members[1].lag(status.commit_index), 10);
        assert!(!status.members[1].reachable);
    }

    #[test]
    fn pages_say_where_to_continue() {
        let page = ListPage {
            revision: 1,
            items: vec![KvItem {
                key: "b".into(),
                value: Bytes::new(),
                version: 1,
            }],
            more: true,
            served_by: ServedBy::default(),
        };
        assert_eq!(page.next_after(), Some("b"));
        let last = ListPage {
            more: false,
            ..page
        };
        assert_eq!(last.next_after(), None);
    }

    #[test]
    fn transfer_ids_are_fresh() {
        let a = TransferRequest::new("a", "b", 1);
        let b = TransferRequest::new("a", "b", 1);
        assert_ne!(a.id, b.id);
        assert_eq!(a.clone().with_id("t").id, "t");
    }
}
