//! The retry policy, as pure functions: which failures are retried and where, how long to back
//! off, and what a call that ran out of time or attempts reports.
//!
//! The rules, from API.md:
//! - A refusal (4xx) is final: the server decided, and asking again gets the same answer.
//! - A failure that cannot have reached the state machine (connect error, 503 `unavailable`) is
//!   always safe to retry, on another node.
//! - A failure after the request may have been proposed (timeout after sending, connection lost,
//!   504 `indeterminate`) is retried for a write only if it carries an idempotency key or
//!   transfer id, because then the server applies it at most once. Reads retry freely.
//! - When time or attempts run out, a write that may have applied is `Indeterminate`; anything
//!   else is `Unavailable`.
//!
//! Left out: the loop that applies these rules (`transport.rs`) and the choice of node
//! (`endpoints.rs`).

use std::time::Duration;

use crate::limits::BACKOFF_BASE;
use crate::limits::BACKOFF_MAX;
use crate::limits::RETRY_AFTER_HONORED_MAX;

/// How one attempt failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection was made (refused, unreachable, connect timeout): nothing was sent.
    ConnectFailed,
    /// 503 `unavailable`: no leader or quorum; the request was not proposed.
    Unavailable,
    /// The attempt timed out after connecting: the request may have been sent and applied.
    TimedOut,
    /// The connection broke after the request may have been sent (reset, closed mid-answer).
    ConnectionLost,
    /// 504 `indeterminate`: proposed, fate unknown.
    Indeterminate,
    /// A 5xx other than 503/504: per API.md it changed nothing, but the node is unwell.
    ServerError,
    /// A 4xx: the server refused the request and changed nothing.
    Refused,
    /// An answer we cannot interpret.
    Protocol,
}

impl FailureKind {
    /// True when a write that failed this way may have been applied (or may still be).
    pub fn may_have_applied(self) -> bool {
        matches!(
            self,
            FailureKind::TimedOut | FailureKind::ConnectionLost | FailureKind::Indeterminate
        )
    }
}

/// Where to send the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The same node again: the failure was about one connection, not the node.
    SameNode,
    /// The next node in preference order.
    NextNode,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Retry(Target),
    GiveUp,
}

/// The retry policy. `has_idempotency_key` is true for writes that carry an `Idempotency-Key`
/// or are transfers (keyed by their id); it is ignored for reads.
pub fn decide(kind: FailureKind, is_write: bool, has_idempotency_key: bool) -> Decision {
    let unsafe_to_repeat = is_write && !has_idempotency_key;
    match kind {
        FailureKind::Refused | FailureKind::Protocol => Decision::GiveUp,
        FailureKind::ConnectFailed | FailureKind::Unavailable => Decision::Retry(Target::NextNode),
        // A write without a key could apply twice, so its uncertain outcome is returned as is.
        _ if kind.may_have_applied() && unsafe_to_repeat => Decision::GiveUp,
        // A lost connection is most often a pooled keep-alive connection the server had closed;
        // a fresh connection to the same node is the cheapest fix.
        FailureKind::ConnectionLost => Decision::Retry(Target::SameNode),
        FailureKind::TimedOut | FailureKind::Indeterminate => Decision::Retry(Target::NextNode),
        // API.md says an error changed nothing, but a write without a key is not retried on the
        // word of a node that is failing in ways we do not understand.
        FailureKind::ServerError if unsafe_to_repeat => Decision::GiveUp,
        FailureKind::ServerError => Decision::Retry(Target::NextNode),
    }
}

/// How long to wait before the next round, after `round` (>= 1) full rounds over the endpoints
/// failed. Exponential from [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], with "equal jitter"
/// (uniform in the upper half) from `jitter` in `[0, 1)`, so clients that failed together do not
/// retry together. A `Retry-After` from the last answer raises the wait, up to
/// [`RETRY_AFTER_HONORED_MAX`].
pub fn backoff_delay(round: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let doublings = round.saturating_sub(1).min(16);
    let cap = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let jitter = jitter.clamp(0.0, 1.0);
    let delay = cap / 2 + cap.mul_f64(jitter / 2.0);
    match retry_after {
        Some(asked) => delay.max(asked.min(RETRY_AFTER_HONORED_MAX)),
        None => delay,
    }
}

/// How a call that ran out of time or attempts ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// A write attempt may have applied: the caller must settle it.
    Indeterminate,
    /// Nothing can have applied: safe to retry later.
    Unavailable,
}

/// Decides how an exhausted call ends: only a write with an attempt that may have applied is
/// indeterminate; reads never are.
pub fn exhausted(is_write: bool, any_attempt_may_have_applied: bool) -> Exhausted {
    if is_write && any_attempt_may_have_applied {
        Exhausted::Indeterminate
    } else {
        Exhausted::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::GiveUp;
    use Decision::Retry;
    use FailureKind::*;
    use Target::NextNode;
    use Target::SameNode;

    /// The whole policy as a table: (kind, read, write with key, write without key).
    const TABLE: [(FailureKind, Decision, Decision, Decision); 8] = [
        (
            ConnectFailed,
            Retry(NextNode),
            Retry(NextNode),
            Retry(NextNode),
        ),
        (
            Unavailable,
            Retry(NextNode),
            Retry(NextNode),
            Retry(NextNode),
        ),
        (TimedOut, Retry(NextNode), Retry(NextNode), GiveUp),
        (ConnectionLost, Retry(SameNode), Retry(SameNode), GiveUp),
        (Indeterminate, Retry(NextNode), Retry(NextNode), GiveUp),
        (ServerError, Retry(NextNode), Retry(NextNode), GiveUp),
        (Refused, GiveUp, GiveUp, GiveUp),
        (Protocol, GiveUp, GiveUp, GiveUp),
    ];

    #[test]
    fn retry_decisions_match_the_table() {
        for (kind, read, keyed_write, unkeyed_write) in TABLE {
            assert_eq!(decide(kind, false, false), read, "{kind:?} read");
            assert_eq!(decide(kind, false, true), read, "{kind:?} read with key");
            assert_eq!(
                decide(kind, true, true),
                keyed_write,
                "{kind:?} keyed write"
            );
            assert_eq!(
                decide(kind, true, false),
                unkeyed_write,
                "{kind:?} unkeyed write"
            );
        }
    }

    #[test]
    fn refusals_are_never_retried() {
        for (is_write, has_key) in [(false, false), (true, true), (true, false)] {
            assert_eq!(decide(Refused, is_write, has_key), GiveUp);
        }
    }

    #[test]
    fn only_unknown_fates_may_have_applied() {
        let maybe: Vec<FailureKind> = TABLE
            .iter()
            .map(|row| row.0)
            .filter(|k| k.may_have_applied())
            .collect();
        assert_eq!(maybe, vec![TimedOut, ConnectionLost, Indeterminate]);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff_delay(1, None, 0.0), BACKOFF_BASE / 2);
        assert_eq!(backoff_delay(1, None, 1.0), BACKOFF_BASE);
        assert_eq!(backoff_delay(2, None, 0.0), BACKOFF_BASE);
        assert_eq!(backoff_delay(u32::MAX, None, 0.0), BACKOFF_MAX / 2);
        for round in 1..40 {
            for jitter in [0.0, 0.3, 0.7, 1.0, -5.0, 5.0] {
                let delay = backoff_delay(round, None, jitter);
                assert!(delay <= BACKOFF_MAX, "round {round} jitter {jitter}");
                assert!(delay >= BACKOFF_BASE / 2, "round {round} jitter {jitter}");
            }
        }
    }

    #[test]
    fn retry_after_raises_the_wait_but_only_so_far() {
        let small = backoff_delay(1, Some(Duration::from_millis(200)), 0.0);
        assert_eq!(small, Duration::from_millis(200));
        let huge = backoff_delay(1, Some(Duration::from_secs(120)), 0.0);
        assert_eq!(huge, RETRY_AFTER_HONORED_MAX);
        let zero = backoff_delay(3, Some(Duration::ZERO), 0.0);
        assert_eq!(zero, backoff_delay(3, None, 0.0));
    }

    #[test]
    fn exhausted_calls_are_indeterminate_only_for_writes_that_may_have_applied() {
        assert_eq!(exhausted(true, true), Exhausted::Indeterminate);
        assert_eq!(exhausted(true, false), Exhausted::Unavailable);
        assert_eq!(exhausted(false, true), Exhausted::Unavailable);
        assert_eq!(exhausted(false, false), Exhausted::Unavailable);
    }
}
