//! metrokv-api: the HTTP API of `docs/api.md` as types. Every request body, answer and error
//! body is defined here once, with serde, and used by the node's handlers, the client library,
//! the CLI and the partition harness, so a shape cannot drift between them. The limits a client
//! can observe live here too (`limits`), with the checks both sides run on keys and ids
//! (`validate`).
//!
//! The types are the wire form: a value is `value` (UTF-8) or `value_base64` (anything else),
//! exactly one of them (`value`); ids and counters are JSON numbers. Each module's tests round
//! trip the examples of `docs/api.md`.
//!
//! Left out: URLs and query strings (the client builds them, the node's router reads them) and
//! any behaviour.

pub mod cluster;
pub mod error;
pub mod kv;
pub mod ledger;
pub mod limits;
pub mod snapshot_file;
pub mod txn;
pub mod validate;
pub mod value;

pub use error::ErrorBody;
pub use error::ErrorCode;

/// The leader that served a request (a node id), on every answer that went through one.
pub const HEADER_LEADER: &str = "x-metrokv-leader";
/// The node's applied index, on reads (the state read was at least this fresh).
pub const HEADER_APPLIED_INDEX: &str = "x-metrokv-applied-index";
/// The revision a backup holds (`GET /v1/backup`).
pub const HEADER_BACKUP_REVISION: &str = "x-metrokv-backup-revision";
/// The idempotency key of a write.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
