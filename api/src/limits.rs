//! The limits a client can observe, as `docs/api.md` states them. The node enforces them (its
//! `limits.rs` re-exports these and checks how they relate to its own); the client checks the
//! cheap ones before sending, so a bad argument fails without a round trip.

/// Largest key, in bytes of UTF-8. A longer key is refused with 400 `invalid_request`.
pub const KEY_BYTES_MAX: usize = 1024;

/// Largest value, in bytes. A larger one is refused with 413 `too_large`.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Largest request body the API reads (a txn carries up to 4 MiB of values, base64 in JSON);
/// a larger body is refused with 413 `too_large` before it is read in full.
pub const REQUEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest sum of value bytes inside one txn, compare values and put values together (413
/// `too_large` past it).
pub const TXN_VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most key and value bytes the `get` ops of one txn may return: its answer budget. A txn
/// whose chosen branch would read more is refused whole with 413 `too_large`.
pub const TXN_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most compares in a txn (400 `invalid_request` past it).
pub const TXN_COMPARES_MAX: usize = 64;

/// Most ops in one branch of a txn (400 `invalid_request` past it).
pub const TXN_OPS_MAX: usize = 128;

/// Longest `Idempotency-Key`, in bytes (400 `invalid_request` past it).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Longest account id or transfer id, in bytes (400 `invalid_request` past it).
pub const ID_BYTES_MAX: usize = 128;

/// Default and largest page size of `GET /v1/kv` and `GET /v1/accounts`. A larger `limit` is
/// clamped to this; the answer says `more: true` when it stopped early.
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// See [`LIST_LIMIT_DEFAULT`].
pub const LIST_LIMIT_MAX: usize = 1000;

/// Most bytes of values one list page returns; the page ends early (with `more: true`).
pub const LIST_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long idempotency keys are kept, in ms of the cluster's replicated clock (at least 24 h
/// of real time). Transfer ids are kept for ever.
pub const DEDUP_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

const _: () = {
    assert!(LIST_LIMIT_DEFAULT <= LIST_LIMIT_MAX);
    assert!(LIST_PAGE_BYTES_MAX >= VALUE_BYTES_MAX);
    assert!(TXN_VALUE_BYTES_MAX >= VALUE_BYTES_MAX);
    // A txn's values arrive base64 in JSON (4/3 growth).
    assert!(REQUEST_BODY_BYTES_MAX >= TXN_VALUE_BYTES_MAX * 4 / 3 + 64 * 1024);
    assert!(TXN_ANSWER_BYTES_MAX >= KEY_BYTES_MAX + VALUE_BYTES_MAX);
};
