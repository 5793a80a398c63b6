//! Time for the replicated clock: what a leader stamps into the entries it proposes.
//!
//! The state machine keeps one clock, moved by the leaders' stamps (at most
//! [`crate::limits::CLOCK_STEP_MS_MAX`] per entry, never back), and expires idempotency records
//! by it. A leader must not stamp a wall clock it cannot trust: an NTP step or a resumed VM can
//! put it a day ahead, and stamping that would expire every record at once. So a leader stamps
//! its wall clock only within what it has seen: never below the replicated clock as last applied
//! here, and never above that value plus the time its monotonic clock has measured since it was
//! applied. A wall clock that jumped ahead is capped (and counted in `/metrics`); one that is
//! behind stalls the replicated clock until it catches up. Records may live longer than 24 h of
//! wall time, never shorter.
//!
//! Caveat: the replicated clock does not advance while the whole cluster is down, so after an
//! outage it runs behind wall time by the outage's length (records then live longer still).
//! The first stamp of a new cluster, when the replicated clock is still 0, is the wall clock.

use std::sync::Mutex;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::failpoint;

/// This machine's wall clock in ms since the Unix epoch, shifted by the `clock-offset-ms`
/// failpoint when a fault test sets one.
pub fn wall_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match failpoint::value(failpoint::CLOCK_OFFSET_MS) {
        Some(offset) => now.saturating_add_signed(offset),
        None => now,
    }
}

/// The replicated clock as this node last applied it, and when (by the monotonic clock).
#[derive(Debug, Default)]
pub struct Clock {
    observed: Mutex<Option<(u64, Instant)>>,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Note the replicated clock after an apply (or at startup). Only a change moves the anchor:
    /// while the value stays, the monotonic time since it was first seen keeps counting.
    pub fn observe(&self, clock_ms: u64) {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if observed.is_none_or(|(seen, _)| clock_ms > seen) {
            *observed = Some((clock_ms, Instant::now()));
        }
    }

    /// The stamp for an entry this node proposes as leader (see the module doc).
    pub fn stamp(&self) -> u64 {
        let wall = wall_ms();
        let observed = *self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let (stamp, ahead_ms) = bounded_stamp(
            wall,
            observed.map(|(c, at)| (c, at.elapsed().as_millis() as u64)),
        );
        metrics::gauge!("metrokv_clock_wall_ahead_ms").set(ahead_ms as f64);
        if ahead_ms > 0 {
            metrics::counter!("metrokv_clock_stamps_capped_total").increment(1);
        }
        stamp
    }
}

/// The stamp for wall time `wall`, given the replicated clock `c` seen `elapsed_ms` ago; and by
/// how much the wall clock was ahead of what could be justified (0 if it was not).
fn bounded_stamp(wall: u64, observed: Option<(u64, u64)>) -> (u64, u64) {
    match observed {
        None | Some((0, _)) => (wall, 0),
        Some((c, elapsed_ms)) => {
            let high = c.saturating_add(elapsed_ms);
            (wall.clamp(c, high), wall.saturating_sub(high))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_ahead_is_capped_and_one_behind_stalls() {
        let day = 86_400_000;
        let c = 1_700_000_000_000;
        // In step: the wall clock is used.
        assert_eq!(bounded_stamp(c + 40, Some((c, 50))), (c + 40, 0));
        // A day ahead: capped at what the monotonic clock measured.
        assert_eq!(bounded_stamp(c + day, Some((c, 50))), (c + 50, day - 50));
        // Behind the replicated clock: the replicated clock is kept.
        assert_eq!(bounded_stamp(c - day, Some((c, 50))), (c, 0));
        // A new cluster: nothing seen yet.
        assert_eq!(bounded_stamp(c, None), (c, 0));
        assert_eq!(bounded_stamp(c, Some((0, 5))), (c, 0));
    }

    #[test]
    fn observe_moves_the_anchor_only_forward() {
        let clock = Clock::new();
        clock.observe(100);
        let first = clock.observed.lock().unwrap().unwrap();
        clock.observe(50);
        clock.observe(100);
        assert_eq!(clock.observed.lock().unwrap().unwrap(), first);
        clock.observe(101);
        assert_eq!(clock.observed.lock().unwrap().unwrap().0, 101);
    }
}
