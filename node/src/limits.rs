//! Every bound the node enforces, in one place.
//!
//! Each constant says what happens when it is hit. Limits that clients can observe are the ones
//! `docs/api.md` documents; the rest protect the node from a peer or a client that sends too
//! much. The const block at the end checks at compile time how the limits relate to each other,
//! along every path a record travels: the largest request becomes the largest log entry, which
//! must fit an AppendEntries frame; the largest record the state machine writes (a stored
//! idempotent answer included) must fit a snapshot record; the largest answer must fit a peer
//! frame on its way back from the leader. A limit that is inconsistent with another one turns
//! into a wedged replication stream or a node that cannot build a snapshot, not a clean error.
//! `state_machine`'s and `storage`'s tests check the same relations on encoded values.

// ---------------------------------------------------------------------------------------------
// What a client may send and see: defined once, in `metrokv-api` (docs/api.md), and re-exported
// here so that every relation below is checked against the numbers clients are told.

pub use metrokv_api::limits::DEDUP_RETENTION_MS;
pub use metrokv_api::limits::IDEMPOTENCY_KEY_BYTES_MAX;
pub use metrokv_api::limits::ID_BYTES_MAX;
pub use metrokv_api::limits::KEY_BYTES_MAX;
pub use metrokv_api::limits::LIST_LIMIT_DEFAULT;
pub use metrokv_api::limits::LIST_LIMIT_MAX;
pub use metrokv_api::limits::LIST_PAGE_BYTES_MAX;
pub use metrokv_api::limits::REQUEST_BODY_BYTES_MAX;
pub use metrokv_api::limits::TXN_ANSWER_BYTES_MAX;
pub use metrokv_api::limits::TXN_COMPARES_MAX;
pub use metrokv_api::limits::TXN_OPS_MAX;
pub use metrokv_api::limits::TXN_VALUE_BYTES_MAX;
pub use metrokv_api::limits::VALUE_BYTES_MAX;

// ---------------------------------------------------------------------------------------------
// The replicated clock and deduplication (the retention period is above, with the API's limits).

/// Most expired dedup records one log entry removes. Expiry is spread over later entries so one
/// apply never does unbounded work.
pub const DEDUP_EXPIRE_PER_ENTRY_MAX: usize = 16;

/// Most one entry's leader stamp moves the replicated clock forward, in ms. A leader whose wall
/// clock jumped ahead (an NTP step, a resumed VM) can age the dedup records by at most this much
/// per entry, and the leader itself never stamps faster than its monotonic clock runs (see
/// `service`), so a jump alone never expires a record early.
pub const CLOCK_STEP_MS_MAX: u64 = 10 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Zones (see `service::zones`).

/// How long, in ms, adaptive mode waits for the other zone to confirm an entry before it
/// acknowledges on a majority alone; settable per cluster within the bounds below.
pub const ZONE_DEGRADE_AFTER_MS_DEFAULT: u64 = 10_000;
/// See [`ZONE_DEGRADE_AFTER_MS_DEFAULT`]: shorter would degrade on an ordinary GC pause or a
/// slow fsync in the other zone.
pub const ZONE_DEGRADE_AFTER_MS_MIN: u64 = 200;
/// See [`ZONE_DEGRADE_AFTER_MS_DEFAULT`].
pub const ZONE_DEGRADE_AFTER_MS_MAX: u64 = 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Cluster shape and configuration strings.

/// A learner is promoted to voter only when it is at most this many entries behind the
/// leader's log, so a new voter never holds up commits while it copies the log.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 100;

/// How long a node stopping on SIGTERM tries to hand leadership over before it stops anyway
/// (ms).
pub const DRAIN_HANDOVER_MS: u64 = 3_000;

/// Leadership is handed only to a voter at most this many entries behind the leader. Under
/// load no follower is ever exactly level; openraft's transfer stops new proposals and the
/// target waits until it holds the leader's last entry, so a short lag costs a millisecond or
/// two, a long one would stall writes while it copies.
pub const TRANSFER_LAG_ENTRIES_MAX: u64 = 256;

/// How often a node with `--backup-dir` takes a scheduled backup when `--backup-interval` is
/// not given (s).
pub const BACKUP_INTERVAL_S_DEFAULT: u64 = 60 * 60;
/// The shortest `--backup-interval` (s): each backup is a full copy of the state.
pub const BACKUP_INTERVAL_S_MIN: u64 = 1;
/// How many scheduled backups a node keeps in `--backup-dir` when `--backup-keep` is not given:
/// a day's worth at the default interval.
pub const BACKUP_KEEP_DEFAULT: usize = 24;

/// Most members (voters and learners) a cluster may have; a longer member list is refused at
/// startup. Bounds the membership record and the number of peer connections.
pub const CLUSTER_MEMBERS_MAX: usize = 15;

/// Longest zone name and cluster id, in bytes (refused at startup past it).
pub const ZONE_BYTES_MAX: usize = 64;
/// See [`ZONE_BYTES_MAX`].
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// Longest advertised address (`host:port`) of a member, in bytes.
pub const ADDR_BYTES_MAX: usize = 256;

// ---------------------------------------------------------------------------------------------
// The peer transport.

/// Largest peer frame, in bytes. A bigger frame is a protocol error: the connection is closed and
/// the event logged; the node keeps running. Buffers grow as bytes arrive, so announcing a large
/// frame commits no memory.
pub const PEER_FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest handshake frame (a `Hello` or its reply), in bytes. A connection that announces more
/// is closed before anything else is read.
pub const PEER_HELLO_BYTES_MAX: usize = 1024;

/// How many bytes a frame buffer grows by at a time while a frame arrives.
pub const PEER_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Read buffer of a peer connection, in bytes: a busy connection's small frames (forwarded
/// writes, their answers, heartbeats) arrive many per read call.
pub const PEER_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Most bytes of queued small frames a peer connection coalesces into one write call.
pub const PEER_WRITE_COALESCE_BYTES: usize = 64 * 1024;

/// How long a dialed connection may take to send its hello, in ms; past it the connection is
/// closed.
pub const PEER_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// How long dialing a peer plus the handshake may take, in ms, before the peer counts as
/// unreachable.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// Most peer connections a node holds open at once (before and after the handshake). A
/// connection past it is closed at once and counted in `/metrics`. Every other member opens four
/// (one per channel), so this leaves room for reconnects.
pub const PEER_CONNECTIONS_MAX: usize = 256;

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

/// How long a status query to a peer (for `GET /v1/cluster`) may take, in ms, before the peer is
/// reported unreachable.
pub const PEER_STATUS_TIMEOUT_MS: u64 = 300;

// ---------------------------------------------------------------------------------------------
// The HTTP API.

/// Default for `--max-inflight-requests`: most client requests one node works on at once. Past
/// it the API answers 503 `overloaded` (with `Retry-After`) at once instead of queueing.
pub const API_INFLIGHT_DEFAULT: usize = 1024;

/// Default for `--max-connections`: most client connections a node holds open. A connection past
/// it is closed at once, before its request is read.
pub const HTTP_CONNECTIONS_DEFAULT: usize = 4096;

/// Most request body bytes all requests of a node may hold in memory at once. A body that would
/// go past it is refused with 503 `overloaded`; with [`REQUEST_BODY_BYTES_MAX`] per request this
/// bounds the memory bodies take, whatever the number of connections.
pub const API_BODY_BYTES_INFLIGHT_MAX: usize = 256 * 1024 * 1024;

/// How long a client may take to send a request's headers, in ms, counted from when the node
/// starts waiting for them; a slower client (slowloris) is disconnected. On a keep-alive
/// connection the wait starts when the previous answer is sent, so this is also how long an
/// idle connection is kept (the Rust client drops idle connections sooner, after 20 s).
pub const HTTP_HEADER_READ_TIMEOUT_MS: u64 = 30_000;

/// How long a client may take to send a request body, in ms; past it the request is refused with
/// 408 `timeout`.
pub const HTTP_BODY_READ_TIMEOUT_MS: u64 = 30_000;

// ---------------------------------------------------------------------------------------------
// Storage.

/// Most callbacks waiting for the log's fsync thread. `append` waits (asynchronously) past it,
/// which slows openraft down to the disk's pace instead of queueing without bound.
pub const FSYNC_QUEUE_MAX: usize = 4096;

/// The memtable bloom filter of the state machine's column family, as a fraction of the
/// memtable's size (RocksDB's `memtable_prefix_bloom_size_ratio`; 64 MiB memtables: 6.4 MiB).
pub const MEMTABLE_BLOOM_RATIO: f64 = 0.1;

/// Bits per key of the bloom filters in the state machine's SST files: 10 gives about a 1 %
/// false-positive rate (one needless block read in a hundred lookups of an absent key).
pub const SST_BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Most entries applied into one RocksDB write (see `storage::state`). openraft hands over up
/// to its `max_append_entries` (4,096) at once after a catch-up; this keeps such a batch from
/// holding its answers back long.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;

/// Most bytes of keys and values applied into one RocksDB write: a batch of large values is
/// written when it reaches this, so pending writes stay a bounded copy.
pub const APPLY_BATCH_BYTES_MAX: usize = 16 << 20;

/// Records written per RocksDB batch while installing a snapshot.
pub const SNAPSHOT_INSTALL_BATCH_RECORDS: usize = 4096;

/// Largest snapshot meta (openraft's `SnapshotMeta`: last log id and membership), in bytes. A
/// file whose header announces more is corrupt. Part of the file format, so the format's.
pub use metrokv_api::snapshot_file::META_BYTES_MAX as SNAPSHOT_META_BYTES_MAX;

// ---------------------------------------------------------------------------------------------
// Derived bounds: the largest encoded forms, with generous room for postcard's framing (varint
// lengths and enum tags are at most 10 bytes each; 32 per small item covers them).

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Largest encoded [`crate::state_machine::Request`]: the txn with the most keys and values.
pub const REQUEST_ENCODED_BYTES_MAX: usize = TXN_VALUE_BYTES_MAX
    + (TXN_COMPARES_MAX + 2 * TXN_OPS_MAX) * (KEY_BYTES_MAX + 32)
    + IDEMPOTENCY_KEY_BYTES_MAX
    + 256;

/// Largest encoded answer ([`crate::state_machine::Response`]) of one request: a txn that spends
/// its whole read budget. Other answers (a receipt, a refusal naming a key) are far smaller.
pub const ANSWER_ENCODED_BYTES_MAX: usize = TXN_ANSWER_BYTES_MAX + 2 * TXN_OPS_MAX * 32 + 4096;

/// Largest record (encoded key plus encoded value) the state machine writes: a key with the
/// largest value, or a stored idempotent answer. Checked on real encodings by
/// `storage::state`'s tests.
pub const SM_RECORD_BYTES_MAX: usize = max(
    (KEY_BYTES_MAX + 1) + (VALUE_BYTES_MAX + 32),
    (IDEMPOTENCY_KEY_BYTES_MAX + 1) + ANSWER_ENCODED_BYTES_MAX + 64,
);

/// Most bytes of one record in the snapshot file (key, value and the two length words). Larger
/// means a corrupt file: reading it fails instead of allocating without bound.
pub const SNAPSHOT_RECORD_BYTES_MAX: usize = SM_RECORD_BYTES_MAX + 8;

// How the limits relate, checked at compile time.
const _: () = {
    // A put of the largest key and value is a smaller entry than the largest txn.
    assert!(
        KEY_BYTES_MAX + VALUE_BYTES_MAX + IDEMPOTENCY_KEY_BYTES_MAX + 256
            <= REQUEST_ENCODED_BYTES_MAX
    );
    // The largest entry fits one AppendEntries frame with room for the envelope, or replication
    // would wedge on it; and the frame fits the peer frame cap.
    assert!(REQUEST_ENCODED_BYTES_MAX + 1024 < APPEND_ENTRIES_BYTES_MAX);
    assert!(APPEND_ENTRIES_BYTES_MAX + 64 * 1024 < PEER_FRAME_BYTES_MAX);
    // A forwarded write and its answer each fit one frame.
    assert!(REQUEST_ENCODED_BYTES_MAX + 1024 < PEER_FRAME_BYTES_MAX);
    assert!(ANSWER_ENCODED_BYTES_MAX + 1024 < PEER_FRAME_BYTES_MAX);
    // So does a snapshot chunk.
    assert!(SNAPSHOT_CHUNK_BYTES + 64 * 1024 < PEER_FRAME_BYTES_MAX);
    // Coalescing never holds more than one frame's worth of bytes.
    assert!(PEER_WRITE_COALESCE_BYTES <= PEER_FRAME_BYTES_MAX);
    // Every record the state machine writes fits a snapshot record.
    assert!(SNAPSHOT_RECORD_BYTES_MAX >= SM_RECORD_BYTES_MAX + 8);
    assert!(SNAPSHOT_RECORD_BYTES_MAX < u32::MAX as usize);
    // A membership of the most members fits the snapshot meta.
    assert!(
        CLUSTER_MEMBERS_MAX * (ZONE_BYTES_MAX + 2 * ADDR_BYTES_MAX + 64) + 1024
            < SNAPSHOT_META_BYTES_MAX
    );
    // A hello names the cluster; it fits the hello cap.
    assert!(CLUSTER_ID_BYTES_MAX + 128 < PEER_HELLO_BYTES_MAX);
    // Every member's four channels fit the peer connection cap, twice over (reconnects).
    assert!(CLUSTER_MEMBERS_MAX * 4 * 2 < PEER_CONNECTIONS_MAX);
    assert!(LIST_LIMIT_DEFAULT <= LIST_LIMIT_MAX);
    // One max-size value fits a list page.
    assert!(LIST_PAGE_BYTES_MAX >= VALUE_BYTES_MAX);
    // A value arrives raw for PUT, but base64 inside a txn (4/3 growth).
    assert!(REQUEST_BODY_BYTES_MAX >= TXN_VALUE_BYTES_MAX * 4 / 3 + 64 * 1024);
    assert!(REQUEST_BODY_BYTES_MAX >= VALUE_BYTES_MAX);
    // Many requests with the largest body fit the body budget at once.
    assert!(API_BODY_BYTES_INFLIGHT_MAX >= 16 * REQUEST_BODY_BYTES_MAX);
    // A read budget larger than a value: one txn can always read one value.
    assert!(TXN_ANSWER_BYTES_MAX >= KEY_BYTES_MAX + VALUE_BYTES_MAX);
    // The clock may catch up an idle day within a few hundred entries.
    assert!(CLOCK_STEP_MS_MAX > 0 && CLOCK_STEP_MS_MAX < DEDUP_RETENTION_MS / 100);
    assert!(ZONE_DEGRADE_AFTER_MS_MIN <= ZONE_DEGRADE_AFTER_MS_DEFAULT);
    assert!(ZONE_DEGRADE_AFTER_MS_DEFAULT <= ZONE_DEGRADE_AFTER_MS_MAX);
};
