//! Every bound and default the client uses, in one place.
//!
//! The API's own limits (key and value sizes, id lengths) come from `metrokv_api::limits` and
//! are checked before a request is sent, so a bad argument fails fast with a typed error instead
//! of a round trip; the server checks them again and stays the authority. The rest bound the
//! client's own work: how long it waits, how often it retries, how much of an answer it reads.

use std::time::Duration;

/// The local three-node cluster that `scripts/cluster.sh` starts; the CLI's default endpoints.
pub const LOCAL_ENDPOINTS: [&str; 3] = [
    "http://127.0.0.1:7001",
    "http://127.0.0.1:7002",
    "http://127.0.0.1:7003",
];

/// The limits the API states (key, value and id sizes, ...), from the one place they are
/// defined; the client checks them before sending, and the node again.
pub use metrokv_api::limits::*;

/// Largest answer body the client reads, in bytes. A list page carries at most 4 MiB of values,
/// which base64 and JSON framing grow by about a half; past this cap the answer is treated as a
/// protocol error instead of being buffered without bound.
pub const RESPONSE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most endpoints one client accepts; more is a configuration error (a metro cluster has 3-7).
pub const ENDPOINTS_MAX: usize = 64;

/// Default time one attempt may take, from connecting to reading the whole answer.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// Default time a whole call may take, across all its attempts and backoffs. When it passes the
/// call ends with `Unavailable` or, for a write whose fate is unknown, `Indeterminate`.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);

/// Default time to establish a TCP connection. Nodes are ~1 ms apart, so a connection that takes
/// longer than this is better abandoned for another node; clamped to the attempt timeout.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(500);

/// Default cap on attempts per call. The deadline is what normally ends retries; this only
/// bounds the work when every node refuses connections instantly.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 64;

/// Largest `max_attempts` the builder accepts.
pub const ATTEMPTS_MAX_LIMIT: u32 = 10_000;

/// Retries on the same node in a row (after a connection was lost mid-request, usually a
/// keep-alive connection the server had closed) before the client moves to the next node.
pub const SAME_NODE_RETRIES_MAX: u32 = 1;

/// First backoff after every endpoint of a call has failed once; it doubles per further round.
pub const BACKOFF_BASE: Duration = Duration::from_millis(20);

/// Largest backoff between rounds. Leader elections in a metro cluster take a few hundred ms,
/// so waiting longer would only add latency.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Largest `Retry-After` the client honours; a longer one is cut to this, because another node
/// may well answer sooner than the one that asked us to wait.
pub const RETRY_AFTER_HONORED_MAX: Duration = Duration::from_millis(500);

/// How long a node that failed (connect error, timeout, 503, 504) is moved to the back of the
/// preference order. After this it is preferred again if its zone says so.
pub const ENDPOINT_COOLDOWN: Duration = Duration::from_secs(2);

/// Least time between two attempts to learn the nodes' zones from `GET /v1/cluster`.
pub const ZONE_LEARN_INTERVAL: Duration = Duration::from_secs(30);

/// Longest one zone-learning request may take; it delays the first call, so keep it short.
pub const ZONE_LEARN_TIMEOUT: Duration = Duration::from_millis(500);

/// How long an idle keep-alive connection stays in the pool. Shorter than the node's idle
/// timeout (30 s, its header read timeout), so the client closes an idle connection before the
/// node does and never sends a request into one the node is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Most idle connections kept per node.
pub const POOL_IDLE_PER_HOST_MAX: usize = 32;

/// TCP keepalive probe interval on pooled connections, so a dead peer is noticed while idle.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

// How the size and count limits relate, checked at compile time: one default within the accepted
// range, and an answer cap that holds a full list page of values, base64-encoded (4/3) with JSON
// framing.
const _: () = {
    assert!(ATTEMPTS_MAX_DEFAULT >= 1);
    assert!(ATTEMPTS_MAX_DEFAULT <= ATTEMPTS_MAX_LIMIT);
    assert!(LOCAL_ENDPOINTS.len() <= ENDPOINTS_MAX);
    assert!(RESPONSE_BODY_BYTES_MAX > 4 * 1024 * 1024 * 4 / 3 + 64 * 1024);
    assert!(RESPONSE_BODY_BYTES_MAX > VALUE_BYTES_MAX);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_ordered() {
        assert!(CONNECT_TIMEOUT_DEFAULT <= ATTEMPT_TIMEOUT_DEFAULT);
        assert!(ATTEMPT_TIMEOUT_DEFAULT <= DEADLINE_DEFAULT);
        assert!(ZONE_LEARN_TIMEOUT <= ATTEMPT_TIMEOUT_DEFAULT);
        assert!(BACKOFF_BASE <= BACKOFF_MAX);
        assert!(RETRY_AFTER_HONORED_MAX < DEADLINE_DEFAULT);
    }
}
