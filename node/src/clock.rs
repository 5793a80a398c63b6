//! Time for the replicated clock: what a leader stamps into the entries it proposes.
//!
//! The state machine keeps one clock, moved by the leaders' stamps (at most
//! [`crate::limits::CLOCK_STEP_MS_MAX`] per entry, never back), and expires idempotency records
//! by it. A leader must not stamp a wall clock it cannot trust: an NTP step or a resumed VM can
//! put it a day ahead, and stamping that would expire every record at once. So when a node
//! starts to lead (a new term) it takes an anchor: the replicated clock as last applied here,
//! plus the time its monotonic clock has measured since it was applied. For the rest of that
//! term it stamps its wall clock only within [anchor clock, anchor clock + monotonic time since
//! the anchor + [`STAMP_SLACK_MS`]]. A wall clock that jumped ahead is capped (and counted in
//! `/metrics`); one that is behind stalls the replicated clock until it catches up. Records may
//! live longer than 24 h of wall time, never shorter.
//!
//! The anchor is taken once per term, not after every apply: the time between stamping an entry
//! and applying it would otherwise be lost at every write, and the clock would fall further
//! behind with every write. The slack lets a leader whose clock runs a little ahead (the normal
//! skew between synchronised machines) stamp its own time.
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

/// How far past its anchor plus monotonic time a leader may stamp, in ms.
pub const STAMP_SLACK_MS: u64 = 1_000;

/// The replicated clock as this node last applied it, and the anchor of the term it leads.
#[derive(Debug, Default)]
pub struct Clock {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The replicated clock as last applied here, and when (by the monotonic clock).
    observed: Option<(u64, Instant)>,
    /// The term this node leads and the anchor taken when it started to stamp in it.
    anchor: Option<(u64, u64, Instant)>,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note the replicated clock after an apply (or at startup). Only a change moves it: while
    /// the value stays, the monotonic time since it was first seen keeps counting.
    pub fn observe(&self, clock_ms: u64) {
        let mut state = self.state();
        if state.observed.is_none_or(|(seen, _)| clock_ms > seen) {
            state.observed = Some((clock_ms, Instant::now()));
        }
    }

    /// The stamp for an entry this node proposes as the leader of `term` (see the module doc).
    pub fn stamp(&self, term: u64) -> u64 {
        let wall = wall_ms();
        let now = Instant::now();
        let mut state = self.state();
        if state.anchor.is_none_or(|(t, _, _)| t != term) {
            let anchor = state.observed.map_or(0, |(c, at)| {
                c.saturating_add(now.duration_since(at).as_millis() as u64)
            });
            state.anchor = Some((term, anchor, now));
        }
        let (_, anchor, since) = state.anchor.expect("set above");
        let floor = state.observed.map_or(0, |(c, _)| c);
        drop(state);
        let elapsed_ms = now.duration_since(since).as_millis() as u64;
        let (stamp, ahead_ms) = bounded_stamp(wall, floor, anchor, elapsed_ms);
        metrics::gauge!("metrokv_clock_wall_ahead_ms").set(ahead_ms as f64);
        if ahead_ms > 0 {
            metrics::counter!("metrokv_clock_stamps_capped_total").increment(1);
        }
        stamp
    }
}

/// The stamp for wall time `wall`: at least `floor` (the replicated clock), at most `anchor`
/// plus `elapsed_ms` plus the slack; and by how much the wall clock was past that (0 if not).
/// A cluster whose clock is still 0 takes the wall clock.
fn bounded_stamp(wall: u64, floor: u64, anchor: u64, elapsed_ms: u64) -> (u64, u64) {
    if floor == 0 {
        return (wall, 0);
    }
    let high = anchor
        .max(floor)
        .saturating_add(elapsed_ms)
        .saturating_add(STAMP_SLACK_MS);
    (wall.clamp(floor, high), wall.saturating_sub(high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_ahead_is_capped_and_one_behind_stalls() {
        let day = 86_400_000;
        let c = 1_700_000_000_000;
        let slack = STAMP_SLACK_MS;
        // In step, or a little ahead: the wall clock is used.
        assert_eq!(bounded_stamp(c + 40, c, c, 50), (c + 40, 0));
        assert_eq!(bounded_stamp(c + 50 + slack, c, c, 50), (c + 50 + slack, 0));
        // A day ahead: capped at what the monotonic clock measured, plus the slack.
        assert_eq!(
            bounded_stamp(c + day, c, c, 50),
            (c + 50 + slack, day - 50 - slack)
        );
        // Behind the replicated clock: the replicated clock is kept.
        assert_eq!(bounded_stamp(c - day, c, c, 50), (c, 0));
        // A new cluster: nothing seen yet.
        assert_eq!(bounded_stamp(c, 0, 0, 5), (c, 0));
    }

    /// Stamping never loses time between writes: a leader whose stamps apply a little later
    /// (as every entry does) keeps stamping its wall clock, it does not fall behind.
    #[test]
    fn a_long_leadership_keeps_stamping_wall_time() {
        let clock = Clock::new();
        clock.observe(wall_ms());
        for _ in 0..100 {
            let stamp = clock.stamp(7);
            // The entry applies a moment after it was stamped. Were the bound re-anchored at
            // every apply, each of these moments would be lost: 200 ms in all.
            std::thread::sleep(std::time::Duration::from_millis(2));
            clock.observe(stamp);
        }
        let behind = wall_ms().saturating_sub(clock.stamp(7));
        assert!(behind < 50, "the stamps fell {behind} ms behind");
    }

    #[test]
    fn observe_moves_only_forward() {
        let clock = Clock::new();
        clock.observe(100);
        let first = clock.state().observed.unwrap();
        clock.observe(50);
        clock.observe(100);
        assert_eq!(clock.state().observed.unwrap(), first);
        clock.observe(101);
        assert_eq!(clock.state().observed.unwrap().0, 101);
    }
}
