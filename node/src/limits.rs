//! Every bound the node enforces, in one place.
//!
//! Each constant says what happens when it is hit. Limits that clients can observe are the ones
//! `../shared/API.md` documents; the rest protect the node from a peer or a client that sends too
//! much. The const block at the end checks at compile time how the limits relate to each other
//! (the largest value fits in a peer frame, and so on), because a limit that is inconsistent with
//! another one turns into a wedged replication stream rather than a clean error.

/// Largest key, in bytes of UTF-8. A longer key is refused with 400 `invalid_request`.
pub const KEY_BYTES_MAX: usize = 1024;

/// Largest value, in bytes. A larger body is refused with 413 `too_large` before it is proposed.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Largest HTTP request body the API reads (a txn may carry up to 128 values of up to 1 MiB in
/// JSON, but we refuse anything past this with 413 rather than buffer it).
pub const REQUEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest sum of value bytes inside one txn (a bigger txn gets 413 `too_large`). Keeps one log
/// entry well under [`PEER_FRAME_BYTES_MAX`].
pub const TXN_VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most compares in a txn (400 `invalid_request` past it).
pub const TXN_COMPARES_MAX: usize = 64;

/// Most ops in one branch of a txn (400 `invalid_request` past it).
pub const TXN_OPS_MAX: usize = 128;

/// Longest `Idempotency-Key` header, in bytes (400 `invalid_request` past it).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Longest account id or transfer id, in bytes (400 `invalid_request` past it).
pub const ID_BYTES_MAX: usize = 128;

/// Default and largest page size of `GET /v1/kv` and `GET /v1/accounts`. A larger `limit` is
/// clamped to this; the answer says `more: true` when it stopped early.
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// See [`LIST_LIMIT_DEFAULT`].
pub const LIST_LIMIT_MAX: usize = 1000;

/// Most bytes of values one list page returns; the page ends early (with `more: true`) rather
/// than build a response of unbounded size.
pub const LIST_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long idempotency keys and transfer outcomes are kept, in the replicated clock (the leader
/// stamps its wall time into every entry). API.md promises at least 24 hours.
pub const DEDUP_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// Most expired dedup records one log entry removes. Expiry is spread over later entries so one
/// apply never does unbounded work.
pub const DEDUP_EXPIRE_PER_ENTRY_MAX: usize = 16;

/// Largest peer frame, in bytes. A bigger frame is a protocol error: the connection is closed and
/// the event logged; the node keeps running.
pub const PEER_FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most entry bytes the transport puts into one AppendEntries frame. When openraft hands it more,
/// it sends a prefix and reports partial success, so openraft sends the rest next.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Size of one snapshot chunk on the wire.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Most requests a peer may have in flight on one connection; further frames wait (TCP
/// back-pressure), they are not dropped.
pub const PEER_INFLIGHT_PER_CONNECTION_MAX: usize = 256;

/// Capacity of the per-connection outgoing frame queue.
pub const PEER_SEND_QUEUE_FRAMES: usize = 1024;

/// Shortest timeout of an AppendEntries that replicates entries, in ms. openraft gives every
/// replication RPC the heartbeat interval (tens of ms) as its timeout; a follower's fsync under
/// load, or a slower inter-zone link, can take longer, and a timeout restarts the replication
/// stream with a backoff. A dead peer still shows at once (connection refused), and heartbeats
/// keep openraft's own timeout.
pub const APPEND_ENTRIES_TIMEOUT_MS_MIN: u64 = 1000;

/// Most entries openraft puts into one AppendEntries request.
pub const APPEND_ENTRIES_PER_RPC_MAX: u64 = 512;

/// Most client requests one node works on at once (reads and writes). Past it the API answers
/// 503 `unavailable` at once instead of queueing without bound.
pub const API_INFLIGHT_MAX: usize = 4096;

/// Most bytes of one record in the snapshot file (key + value + framing). A larger record means
/// a corrupt file: installing it fails instead of allocating without bound.
pub const SNAPSHOT_RECORD_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;

/// Records written per RocksDB batch while installing a snapshot.
pub const SNAPSHOT_INSTALL_BATCH_RECORDS: usize = 4096;

// How the limits relate, checked at compile time.
const _: () = {
    // A put of the largest key and value fits in one AppendEntries frame with room for the
    // envelope, or replication would wedge on it.
    assert!(
        KEY_BYTES_MAX + VALUE_BYTES_MAX + IDEMPOTENCY_KEY_BYTES_MAX + 1024
            < APPEND_ENTRIES_BYTES_MAX
    );
    // So does the largest txn.
    assert!(
        TXN_VALUE_BYTES_MAX + TXN_OPS_MAX * 2 * (KEY_BYTES_MAX + 16) < APPEND_ENTRIES_BYTES_MAX
    );
    assert!(APPEND_ENTRIES_BYTES_MAX + 64 * 1024 < PEER_FRAME_BYTES_MAX);
    assert!(SNAPSHOT_CHUNK_BYTES + 64 * 1024 < PEER_FRAME_BYTES_MAX);
    assert!(SNAPSHOT_RECORD_BYTES_MAX > KEY_BYTES_MAX + VALUE_BYTES_MAX + 64);
    assert!(LIST_LIMIT_DEFAULT <= LIST_LIMIT_MAX);
    // One max-size value fits a list page.
    assert!(LIST_PAGE_BYTES_MAX >= VALUE_BYTES_MAX);
    // A value arrives raw for PUT, but base64 inside a txn (4/3 growth).
    assert!(REQUEST_BODY_BYTES_MAX >= TXN_VALUE_BYTES_MAX * 4 / 3 + 64 * 1024);
};
