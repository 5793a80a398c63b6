//! The replicated vocabulary: what goes into a log entry ([`Request`]), what applying it answers
//! ([`Response`]), and the records the state machine keeps.
//!
//! Everything here is serialized into the Raft log or the state store with postcard, so a change
//! to a type is a change to the on-disk format: append new enum variants at the end, never
//! reorder them.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// One replicated write, as the leader proposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The proposing leader's wall clock, in ms since the Unix epoch. The state machine's only
    /// notion of time (idempotency retention); it never reads a clock itself.
    pub leader_time_ms: u64,
    /// `Idempotency-Key` of the HTTP request. Transfers are keyed by their id instead.
    pub idempotency_key: Option<String>,
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command.kind())?;
        if let Some(key) = &self.idempotency_key {
            write!(f, " idem={key}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: Vec<u8>,
        condition: Condition,
    },
    Delete {
        key: String,
        condition: Condition,
    },
    Txn(Txn),
    CreateAccount {
        id: String,
        balance: u64,
    },
    Transfer(Transfer),
    /// Records which storage (data directory) a member runs on, the first time a leader meets
    /// it. Peers refuse a member that later presents another storage id: that member lost its
    /// data and must not vote or acknowledge as if it remembered (see `transport`). Proposed by
    /// the leader only, never by a client.
    RecordStorage {
        node: u64,
        storage_id: u64,
    },
    /// Set the zone-safety mode and the adaptive mode's patience (`None` leaves a field as it
    /// is). Leaving adaptive mode ends a degraded period.
    ZoneSettings {
        mode: Option<ZoneSafety>,
        degrade_after_ms: Option<u64>,
        /// `Some("")` clears the preference.
        preferred_leader_zone: Option<String>,
    },
    /// The leader's decision, in adaptive mode, to acknowledge on a majority alone because the
    /// other zone has not confirmed anything for `degrade_after_ms`: entries above
    /// `zone_safe_index` may now be acknowledged without a second zone. Proposed by the leader
    /// only. Being in the log, it tells a recovery which acknowledgements were zone-safe.
    ZoneDegrade {
        zone_safe_index: u64,
    },
    /// The other zone has caught up: acknowledgements wait for two zones again.
    ZoneRestore {
        zone_safe_index: u64,
    },
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Txn(_) => "txn",
            Command::CreateAccount { .. } => "create_account",
            Command::Transfer(_) => "transfer",
            Command::RecordStorage { .. } => "record_storage",
            Command::ZoneSettings { .. } => "zone_settings",
            Command::ZoneDegrade { .. } => "zone_degrade",
            Command::ZoneRestore { .. } => "zone_restore",
        }
    }
}

/// A precondition on the current version of a key (`If-Match` / `If-None-Match: *`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Always,
    /// The key's version must equal this; 0 means "absent".
    IfVersion(u64),
    /// The key must not exist.
    IfAbsent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(u64),
    /// The key's value, compared bytewise. Every comparison with an absent key is false.
    Value(Vec<u8>),
    /// Whether the key exists; only `==` and `!=` are meaningful.
    Exists(bool),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    Get { key: String },
}

impl Txn {
    /// True when no branch writes: such a txn is served as a read and never enters the log.
    pub fn is_read_only(&self) -> bool {
        !self
            .success
            .iter()
            .chain(&self.failure)
            .any(TxnOp::is_write)
    }
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, TxnOp::Get { .. })
    }
}

/// What applying a [`Request`] answers. Refusals are answers too: they are deterministic, so
/// every replica computes the same one, and a retried request gets the first one back.
pub type Response = Result<Success, Rejection>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Success {
    Put {
        version: u64,
        revision: u64,
    },
    Delete {
        deleted: bool,
        revision: u64,
    },
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
        revision: u64,
    },
    AccountCreated {
        id: String,
        balance: u64,
        version: u64,
    },
    Transfer(TransferReceipt),
    /// The answer to an entry without a client-visible result: a leader's blank entry, a
    /// membership change, internal bookkeeping ([`Command::RecordStorage`]).
    Noop,
    /// The zone settings after a [`Command::ZoneSettings`].
    ZoneSettings(ZoneRecord),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put { version: u64 },
    Delete { deleted: bool },
    Get(Option<TxnGot>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnGot {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
}

/// A committed transfer as the state machine stores it (postcard, in the log, dedup records and
/// snapshots). The same fields as `metrokv_api::ledger::TransferReceipt`, deliberately a
/// separate type: that one is the JSON a client sees and may grow fields; this one is a disk
/// format and changes only with a format version.
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

/// A request the state machine refused; it changed nothing (beyond recording the refusal for
/// idempotent retries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("precondition failed on key {key:?}: its current version is {current_version}")]
    PreconditionFailed { key: String, current_version: u64 },
    #[error("account {id:?} already exists")]
    AccountExists { id: String },
    #[error("account {id:?} does not exist")]
    AccountNotFound { id: String },
    #[error("account {account:?} holds {balance}, less than the {amount} requested")]
    InsufficientFunds {
        account: String,
        balance: u64,
        amount: u64,
    },
    #[error("the key {key:?} was already used for a different request")]
    IdempotencyConflict { key: String },
    #[error("invalid request: {0}")]
    Invalid(Invalid),
    /// The txn's reads would return more than its answer budget; it changed nothing.
    #[error("the txn would read {bytes} bytes of keys and values; a txn may read at most {max} (read fewer or smaller keys per txn)")]
    AnswerTooLarge { bytes: u64, max: u64 },
    /// A different storage id is already recorded for this member.
    #[error("node {node} already runs on storage {recorded:#018x}")]
    StorageConflict { node: u64, recorded: u64 },
}

/// Why the state machine found a command malformed. The API refuses these before proposing, so
/// seeing one applied means a client bypassed the API's validation; the state machine still
/// refuses them the same way on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Invalid {
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("a transfer needs two different accounts")]
    SameAccount,
    #[error("the destination balance would overflow")]
    BalanceOverflow,
    #[error("a key is written more than once in one txn branch")]
    DuplicateTxnWrite,
    #[error("exists can only be compared with == or !=")]
    ExistsOrdering,
    #[error("degrade_after_ms must be between {min} and {max}", min = crate::limits::ZONE_DEGRADE_AFTER_MS_MIN, max = crate::limits::ZONE_DEGRADE_AFTER_MS_MAX)]
    DegradeAfter,
    #[error("only adaptive mode degrades")]
    NotAdaptive,
    #[error("a zone name is at most {max} bytes", max = crate::limits::ZONE_BYTES_MAX)]
    ZoneName,
}

/// A stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    /// The revision that last wrote the key; never 0 for a stored key.
    pub version: u64,
    pub value: Vec<u8>,
}

/// A stored account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub balance: u64,
    /// The revision that last changed the account.
    pub version: u64,
}

/// Which namespace a deduplication record lives in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DedupKey {
    Idempotency(String),
    Transfer(String),
}

impl DedupKey {
    /// Whether the record expires after [`crate::limits::DEDUP_RETENTION_MS`]. Idempotency keys
    /// do; a transfer's outcome is the ledger and is kept for ever, so a transfer id can never
    /// apply twice, whatever any clock says.
    pub fn expires(&self) -> bool {
        matches!(self, DedupKey::Idempotency(_))
    }
}

/// The first outcome of an idempotent request: kept for [`crate::limits::DEDUP_RETENTION_MS`]
/// for an idempotency key, for ever for a transfer (see [`DedupKey::expires`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// FNV-1a of the encoded command: a repeat with another body is a conflict, not a retry.
    pub fingerprint: u64,
    /// The replicated clock when the request first applied.
    pub recorded_ms: u64,
    pub response: Response,
    /// For transfers, what was asked, so a refused transfer can still be described.
    pub transfer: Option<Transfer>,
}

/// How acknowledgements relate to zones (see `service::zones`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZoneSafety {
    /// Plain Raft: acknowledged once a majority has the entry.
    Off,
    /// As strict, but degrades to a majority after the other zone was silent for a while.
    #[default]
    Adaptive,
    /// Acknowledged (and visible to linearizable reads) only once voters of two zones have it.
    Strict,
}

/// The cluster's zone settings and state, one record in the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRecord {
    pub mode: ZoneSafety,
    pub degrade_after_ms: u64,
    /// The zone the leader should sit in when a caught-up voter there can take over (clients
    /// in that zone then write with one round trip less).
    pub preferred_leader_zone: Option<String>,
    /// While adaptive mode acknowledges on a majority alone: since when (replicated clock) and
    /// the zone-safe index at the decision.
    pub degraded: Option<Degraded>,
}

impl Default for ZoneRecord {
    fn default() -> Self {
        Self {
            mode: ZoneSafety::default(),
            degrade_after_ms: crate::limits::ZONE_DEGRADE_AFTER_MS_DEFAULT,
            preferred_leader_zone: None,
            degraded: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    pub since_ms: u64,
    pub zone_safe_index: u64,
}

/// State that is not per key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    /// Count of committed mutating requests.
    pub revision: u64,
    /// The replicated clock: moved forward by the leaders' stamps, at most
    /// [`crate::limits::CLOCK_STEP_MS_MAX`] per entry, never back. 0 until the first stamp.
    pub clock_ms: u64,
}
