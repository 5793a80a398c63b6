//! Linearizability of the register workload: a Wing–Gong/Lowe search with memoization (the
//! algorithm of Porcupine and Knossos' `:wgl`), run per key.
//!
//! Model: one register per key holding `Option<u64>` (None = absent, the initial state unless
//! the test says otherwise). `read` must return the current value; `write(v)` sets it;
//! `cas(from, to)` sets `to` iff the value is `from` and is ok exactly then.
//!
//! How the history is read:
//! - P-compositionality: a history is linearizable iff each key's sub-history is, so keys are
//!   checked one by one, each with its own budget.
//! - Op order comes from history indices (they are recorded in time order under one lock):
//!   an op can be linearized anywhere between its invoke and its completion.
//! - `fail` ops definitely did not happen and are dropped (a failed cas is dropped too, which
//!   loses the fact "the value was not `from`" but stays sound). Info and never-completed reads
//!   are dropped (a read changes nothing). Info writes and cas stay open until +infinity
//!   (Porcupine's convention): linearizing them last is the same as their never happening.
//! - Before the search, a cheap sanity check flags reads of values that no ok or info write or
//!   cas ever wrote (and that are not the initial value).
//! - Acknowledged writes lost: each key's final read (taken after the run, named by
//!   `test.json`) must show the value of every ok write or cas of the key, unless some other
//!   write or cas of the value read could have taken effect after it (it did not complete
//!   before the ok one was invoked). Sound, linear, and it names the lost write; the search
//!   would also reject such a history, but this says what happened.
//!
//! Search (Lowe, "Testing for linearizability", 2017): entries are call and return events in a
//! doubly linked list; repeatedly linearize the first call whose step is legal and whose
//! (linearized set, state) pair is new, lifting it out of the list; on reaching a return whose op
//! is not linearized, backtrack. Bounded by steps, cache entries and wall time per key; running
//! out gives Unknown, never Valid.
//!
//! On a violation it reports the key, the op that could not be linearized, and the longest
//! linearizable prefix found with the state it leaves.
//!
//! Leaves out: multi-key transactions (the bank is checked by `bank.rs`, not by a model).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checker::{Anomaly, AnomalyKind, CheckerResult, Details, Validity};
use crate::history::{Call, History, OpType};
use crate::record::RegisterFinalRead;

/// Default search steps per key before giving up with Unknown.
pub const KEY_STEPS_MAX_DEFAULT: u64 = 20_000_000;
/// Default wall-clock budget per key.
pub const KEY_TIME_BUDGET_MS_DEFAULT: u64 = 30_000;
/// Default memory for the memoized (linearized set, state) pairs of one key. Each entry holds a
/// bitset of one bit per op of the key, so long keys fill it with fewer entries.
pub const CACHE_BYTES_MAX_DEFAULT: usize = 512 * 1024 * 1024;
/// Estimated bytes per cache entry besides its bitset (hash table slot, Vec header, state).
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 64;
/// The clock is read once per this many steps.
const CLOCK_CHECK_STEPS: u64 = 4096;
/// The most ops of the longest linearizable prefix kept in the details.
pub const PREFIX_OPS_REPORTED_MAX: usize = 64;
/// The most prefix ops named (after the offending op) in an anomaly.
pub const PREFIX_OPS_NAMED_MAX: usize = 8;

/// Budgets per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearOptions {
    pub key_steps_max: u64,
    pub key_time_budget_ms: u64,
    pub cache_bytes_max: usize,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            key_steps_max: KEY_STEPS_MAX_DEFAULT,
            key_time_budget_ms: KEY_TIME_BUDGET_MS_DEFAULT,
            cache_bytes_max: CACHE_BYTES_MAX_DEFAULT,
        }
    }
}

/// What happened for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDetails {
    pub valid: Validity,
    /// Ops checked (after dropping failed ops and indeterminate reads).
    pub ops: usize,
    /// Of those, ops open until the end (info or never completed).
    pub open_ops: usize,
    pub steps: u64,
    pub elapsed_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
    /// For a violation: the longest linearizable prefix found (invoke indices, capped at
    /// [`PREFIX_OPS_REPORTED_MAX`], the last ones kept) and the value it leaves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub longest_prefix: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_after_prefix: Option<Option<u64>>,
}

/// Per-key details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearDetails {
    pub keys: BTreeMap<String, KeyDetails>,
    /// Keys whose final read was checked for lost acknowledged writes.
    #[serde(default)]
    pub final_reads_checked: u64,
    /// Acknowledged writes and cas that the final reads lost.
    #[serde(default)]
    pub acknowledged_lost: u64,
}

/// What an op did to the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// An ok read that saw this value.
    Read(Option<u64>),
    Write(u64),
    /// `ok`: the cas succeeded; false: it is open (info) and either outcome is possible.
    Cas {
        from: u64,
        to: u64,
        ok: bool,
    },
}

/// One op of a key, as the search sees it.
#[derive(Debug, Clone, Copy)]
struct KeyOp {
    /// History index of the invoke (what reports name).
    invoke: u64,
    /// History index of the completion; None = open until +infinity.
    complete: Option<u64>,
    action: Action,
}

/// The register's step function: the state after `action`, or None if `action` is illegal here.
fn step(state: Option<u64>, action: Action) -> Option<Option<u64>> {
    match action {
        Action::Read(seen) => (seen == state).then_some(state),
        Action::Write(v) => Some(Some(v)),
        Action::Cas { from, to, ok: true } => (state == Some(from)).then_some(Some(to)),
        Action::Cas {
            from,
            to,
            ok: false,
        } => Some(if state == Some(from) { Some(to) } else { state }),
    }
}

fn describe(action: Action) -> String {
    let show = |v: Option<u64>| v.map_or("nil".to_owned(), |v| v.to_string());
    match action {
        Action::Read(v) => format!("read → {}", show(v)),
        Action::Write(v) => format!("write {v}"),
        Action::Cas { from, to, ok } => {
            format!("cas {from}→{to}{}", if ok { "" } else { " (info)" })
        }
    }
}

/// Groups the register ops by key, dropping what cannot matter (see the module doc).
fn ops_by_key(history: &History) -> BTreeMap<String, Vec<KeyOp>> {
    let mut keys: BTreeMap<String, Vec<KeyOp>> = BTreeMap::new();
    for pair in history.pair_refs() {
        let Some(key) = pair.invoke.call.register_key() else {
            continue;
        };
        let open = matches!(pair.outcome(), OpType::Info | OpType::Invoke);
        let action = match (pair.outcome(), pair.call()) {
            (OpType::Fail, _) => None,
            (OpType::Ok, Call::Read(r)) => Some(Action::Read(r.value)),
            (_, Call::Read(_)) => None,
            (_, Call::Write(w)) => Some(Action::Write(w.value)),
            (_, Call::Cas(c)) => Some(Action::Cas {
                from: c.from,
                to: c.to,
                ok: !open,
            }),
            _ => None,
        };
        // Register every key seen, even if all its ops were dropped, so the report lists it.
        let entry = keys.entry(key.to_owned()).or_default();
        if let Some(action) = action {
            entry.push(KeyOp {
                invoke: pair.invoke.index,
                complete: if open { None } else { pair.completion_index() },
                action,
            });
        }
    }
    keys
}

/// Failed writes and cas per (key, value written): the first such op's invoke index.
type FailedWrites = HashMap<(String, u64), u64>;

fn failed_writes(history: &History) -> FailedWrites {
    let mut failed = FailedWrites::new();
    for pair in history.pair_refs().filter(|p| p.outcome() == OpType::Fail) {
        let written = match &pair.invoke.call {
            Call::Write(w) => (w.key.clone(), w.value),
            Call::Cas(c) => (c.key.clone(), c.to),
            _ => continue,
        };
        failed.entry(written).or_insert(pair.invoke.index);
    }
    failed
}

/// Reads of values nobody (possibly) wrote. Failed writes count as not written.
fn never_written(
    key: &str,
    ops: &[KeyOp],
    initial: Option<u64>,
    failed: &FailedWrites,
) -> Vec<Anomaly> {
    let written: BTreeSet<u64> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Write(v) => Some(v),
            Action::Cas { to, .. } => Some(to),
            Action::Read(_) => None,
        })
        .collect();
    ops.iter()
        .filter_map(|op| match op.action {
            Action::Read(Some(v)) if Some(v) != initial && !written.contains(&v) => {
                let mut ids = vec![op.invoke];
                let mut message = format!(
                    "key {key}: read #{} saw {v}, which no write or cas wrote",
                    op.invoke
                );
                // Name a failed write of the value as the likely source.
                if let Some(&writer) = failed.get(&(key.to_owned(), v)) {
                    ids.push(writer);
                    message.push_str(&format!(" (only op #{writer}, which failed, tried to)"));
                }
                Some(Anomaly {
                    kind: AnomalyKind::ValueNeverWritten,
                    ops: ids,
                    key: Some(key.to_owned()),
                    message,
                    badness: 0,
                })
            }
            _ => None,
        })
        .collect()
}

/// The result of searching one key.
#[derive(Debug)]
enum Search {
    Linearizable,
    Violation {
        /// Positions in the key's op list.
        prefix: Vec<usize>,
        blocked: usize,
        state: Option<u64>,
    },
    Unknown(String),
}

/// A fixed-size bitset over a key's ops.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(bits: usize) -> Self {
        BitSet(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The call/return event list with O(1) lift and unlift (dancing links).
struct Events {
    /// Per entry: the op and whether it is the call.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// Per call entry: its return entry.
    matching: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

/// Sentinel entry before the first event.
const HEAD: usize = 0;

impl Events {
    fn new(ops: &[KeyOp]) -> Self {
        // (time, is_return, op): completions of open ops sort after everything.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, false, i));
            events.push((op.complete.unwrap_or(u64::MAX), true, i));
        }
        events.sort_unstable();
        let count = events.len() + 2; // head and tail sentinels
        let tail = count - 1;
        let mut list = Events {
            op: vec![usize::MAX; count],
            is_call: vec![false; count],
            matching: vec![usize::MAX; count],
            next: (1..=count).collect(),
            prev: (0..count).map(|i| i.saturating_sub(1)).collect(),
        };
        list.next[tail] = tail;
        let mut call_entry = vec![usize::MAX; ops.len()];
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let entry = position + 1;
            list.op[entry] = op;
            list.is_call[entry] = !is_return;
            if is_return {
                list.matching[call_entry[op]] = entry;
            } else {
                call_entry[op] = entry;
            }
        }
        list
    }

    fn tail(&self) -> usize {
        self.op.len() - 1
    }

    fn is_empty(&self) -> bool {
        self.next[HEAD] == self.tail()
    }

    fn remove(&mut self, entry: usize) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn restore(&mut self, entry: usize) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = entry;
        self.prev[n] = entry;
    }

    fn lift(&mut self, call: usize) {
        self.remove(call);
        self.remove(self.matching[call]);
    }

    /// Undoes the matching `lift`; lifts are undone in reverse order.
    fn unlift(&mut self, call: usize) {
        self.restore(self.matching[call]);
        self.restore(call);
    }
}

/// The WGL search for one key.
fn search(ops: &[KeyOp], initial: Option<u64>, options: &LinearOptions, steps: &mut u64) -> Search {
    let started = Instant::now();
    let deadline = Duration::from_millis(options.key_time_budget_ms);
    let mut events = Events::new(ops);
    let mut linearized = BitSet::new(ops.len());
    let mut cache: HashSet<(BitSet, Option<u64>)> = HashSet::new();
    let entry_bytes = linearized.0.len() * 8 + CACHE_ENTRY_OVERHEAD_BYTES;
    let cache_entries_max = options.cache_bytes_max / entry_bytes;
    // (call entry, state before it) for each op linearized so far, in order.
    let mut calls: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state = initial;
    let mut entry = events.next[HEAD];
    let mut best: Option<(Vec<usize>, usize, Option<u64>)> = None;
    while !events.is_empty() {
        *steps += 1;
        if *steps > options.key_steps_max {
            return Search::Unknown(format!(
                "step budget of {} exhausted",
                options.key_steps_max
            ));
        }
        if steps.is_multiple_of(CLOCK_CHECK_STEPS) && started.elapsed() > deadline {
            return Search::Unknown(format!(
                "time budget of {} ms exhausted",
                options.key_time_budget_ms
            ));
        }
        if cache.len() > cache_entries_max {
            return Search::Unknown(format!(
                "cache of {} bytes ({cache_entries_max} entries) exhausted",
                options.cache_bytes_max
            ));
        }
        if entry != events.tail() && events.is_call[entry] {
            let op = events.op[entry];
            if let Some(next_state) = step(state, ops[op].action) {
                linearized.set(op);
                if cache.insert((linearized.clone(), next_state)) {
                    calls.push((entry, state));
                    state = next_state;
                    events.lift(entry);
                    entry = events.next[HEAD];
                    continue;
                }
                linearized.clear(op);
            }
            entry = events.next[entry];
            continue;
        }
        // A return (or the end) of an op not yet linearized: this branch is dead.
        if entry != events.tail()
            && best
                .as_ref()
                .is_none_or(|(prefix, _, _)| calls.len() > prefix.len())
        {
            let prefix = calls.iter().map(|&(call, _)| events.op[call]).collect();
            best = Some((prefix, events.op[entry], state));
        }
        let Some((call, previous)) = calls.pop() else {
            let (prefix, blocked, state) = best.unwrap_or((Vec::new(), 0, initial));
            return Search::Violation {
                prefix,
                blocked,
                state,
            };
        };
        state = previous;
        linearized.clear(events.op[call]);
        events.unlift(call);
        entry = events.next[call];
    }
    Search::Linearizable
}

/// Checks one key: the sanity check, then the search.
fn check_key(
    key: &str,
    ops: &[KeyOp],
    initial: Option<u64>,
    options: &LinearOptions,
    failed: &FailedWrites,
) -> (KeyDetails, Vec<Anomaly>) {
    let started = Instant::now();
    let mut details = KeyDetails {
        valid: Validity::Valid,
        ops: ops.len(),
        open_ops: ops.iter().filter(|op| op.complete.is_none()).count(),
        steps: 0,
        elapsed_ms: 0,
        unknown_reason: None,
        longest_prefix: Vec::new(),
        state_after_prefix: None,
    };
    let mut anomalies = never_written(key, ops, initial, failed);
    if anomalies.is_empty() {
        match search(ops, initial, options, &mut details.steps) {
            Search::Linearizable => {}
            Search::Unknown(reason) => {
                details.valid = Validity::Unknown;
                details.unknown_reason = Some(format!("key {key}: {reason}"));
            }
            Search::Violation {
                prefix,
                blocked,
                state,
            } => {
                let prefix_ids: Vec<u64> = prefix.iter().map(|&i| ops[i].invoke).collect();
                let blocked_op = ops[blocked];
                let mut named = vec![blocked_op.invoke];
                named.extend(prefix_ids.iter().rev().take(PREFIX_OPS_NAMED_MAX).rev());
                let show = state.map_or("nil".to_owned(), |v| v.to_string());
                anomalies.push(Anomaly {
                    kind: AnomalyKind::NotLinearizable,
                    badness: 0,
                    ops: named,
                    key: Some(key.to_owned()),
                    message: format!(
                        "key {key}: op #{} ({}) cannot be linearized; the longest linearizable \
                         prefix has {} ops{} and leaves the register at {show}",
                        blocked_op.invoke,
                        describe(blocked_op.action),
                        prefix_ids.len(),
                        prefix_ids
                            .last()
                            .map_or(String::new(), |last| format!(", ending with op #{last}")),
                    ),
                });
                let skip = prefix_ids.len().saturating_sub(PREFIX_OPS_REPORTED_MAX);
                details.longest_prefix = prefix_ids[skip..].to_vec();
                details.state_after_prefix = Some(state);
            }
        }
    }
    if !anomalies.is_empty() {
        details.valid = Validity::Invalid;
    }
    details.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    (details, anomalies)
}

/// Acknowledged writes of `key` that its final read lost (see the module doc): for each ok
/// write or cas whose value differs from the final one, some other non-failed write or cas of
/// the final value must not have completed before the ok one was invoked.
fn lost_writes(key: &str, ops: &[KeyOp], final_read: &RegisterFinalRead) -> Vec<Anomaly> {
    let written = |op: &KeyOp| match op.action {
        Action::Write(v) => Some(v),
        Action::Cas { to, .. } => Some(to),
        Action::Read(_) => None,
    };
    // The latest completion (None = open forever) of a write of the final value, excluding
    // the final read itself (it is a read and writes nothing).
    let mut latest_final_writer: Option<Option<u64>> = None;
    for op in ops {
        if written(op).is_some() && written(op) == final_read.value {
            latest_final_writer = Some(match (latest_final_writer, op.complete) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
    }
    let show = |v: Option<u64>| v.map_or("nothing (absent)".to_owned(), |v| v.to_string());
    ops.iter()
        .filter(|op| op.complete.is_some() && !matches!(op.action, Action::Cas { ok: false, .. }))
        .filter_map(|op| {
            let value = written(op)?;
            if Some(value) == final_read.value {
                return None;
            }
            let explained = match latest_final_writer {
                Some(None) => true,
                Some(Some(complete)) => complete > op.invoke,
                None => false,
            };
            (!explained).then(|| Anomaly {
                kind: AnomalyKind::LostWrite,
                ops: vec![op.invoke, final_read.op],
                key: Some(key.to_owned()),
                message: format!(
                    "key {key}: {} (op #{}) was acknowledged, but the final read (op #{}) saw {} \
                     and no write of that value could have come after it",
                    describe(op.action),
                    op.invoke,
                    final_read.op,
                    show(final_read.value)
                ),
                badness: 0,
            })
        })
        .collect()
}

/// Checks every key of the register ops in `history`; `initial` is every key's starting value,
/// `final_reads` the reads taken after the run (by key), checked for lost acknowledged writes.
pub fn check(
    history: &History,
    initial: Option<u64>,
    final_reads: &BTreeMap<String, RegisterFinalRead>,
    options: &LinearOptions,
) -> CheckerResult {
    let mut keys = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut unknown = Vec::new();
    let failed = failed_writes(history);
    let mut final_reads_checked = 0;
    let mut acknowledged_lost = 0;
    for (key, ops) in ops_by_key(history) {
        if let Some(final_read) = final_reads.get(&key) {
            final_reads_checked += 1;
            let lost = lost_writes(&key, &ops, final_read);
            acknowledged_lost += lost.len() as u64;
            anomalies.extend(lost);
        }
        let (details, found) = check_key(&key, &ops, initial, options, &failed);
        anomalies.extend(found);
        unknown.extend(details.unknown_reason.clone());
        keys.insert(key, details);
    }
    let mut result = CheckerResult::new(Details::Linear(LinearDetails {
        keys,
        final_reads_checked,
        acknowledged_lost,
    }));
    for anomaly in anomalies {
        result.push_anomaly(anomaly);
    }
    for reason in unknown {
        result.push_unknown(reason);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;
    use crate::history::OpType::{Fail, Info};
    use crate::history::{Op, Process};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn run(history: &History) -> CheckerResult {
        check(history, None, &BTreeMap::new(), &LinearOptions::default())
    }

    fn kinds(result: &CheckerResult) -> Vec<AnomalyKind> {
        result.emitted.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_valid_concurrent_history_with_info_ops_passes() {
        let mut b = Builder::default();
        b.invoke(0, write("x", 1));
        b.invoke(1, read("x", None));
        b.complete(0, OpType::Ok, write("x", 1));
        b.complete(1, OpType::Ok, read("x", None)); // concurrent with the write: may see nothing
        b.invoke(2, cas("x", 1, 2));
        b.invoke(3, write("x", 3));
        b.complete(3, Info, write("x", 3)); // may or may not happen, any time from now on
        b.complete(2, OpType::Ok, cas("x", 1, 2));
        b.invoke(4, read("x", None));
        b.complete(4, OpType::Ok, read("x", Some(3)));
        b.invoke(5, read("x", None));
        b.complete(5, OpType::Ok, read("x", Some(3)));
        b.invoke(6, cas("x", 7, 8));
        b.complete(6, Fail, cas("x", 7, 8));
        b.invoke(7, read("y", None));
        b.complete(7, OpType::Ok, read("y", None));
        let result = run(&b.history());
        assert_eq!(result.valid, Validity::Valid, "{result:?}");
        let Details::Linear(details) = &result.details else {
            panic!("linear details")
        };
        assert_eq!(details.keys.len(), 2);
        assert_eq!(details.keys["x"].open_ops, 1);
    }

    #[test]
    fn stale_read_is_detected() {
        let mut b = Builder::default();
        b.invoke(0, write("x", 1));
        b.complete(0, OpType::Ok, write("x", 1));
        b.invoke(0, write("x", 2));
        b.complete(0, OpType::Ok, write("x", 2));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", Some(1)));
        let result = run(&b.history());
        assert_eq!(kinds(&result), vec![AnomalyKind::NotLinearizable]);
        let anomaly = &result.emitted[0];
        assert_eq!(anomaly.key.as_deref(), Some("x"));
        assert_eq!(
            anomaly.ops,
            vec![4, 0, 2],
            "the stale read, then the prefix"
        );
        let Details::Linear(details) = &result.details else {
            panic!("linear details")
        };
        assert_eq!(details.keys["x"].longest_prefix, vec![0, 2]);
        assert_eq!(details.keys["x"].state_after_prefix, Some(Some(2)));
    }

    #[test]
    fn lost_acknowledged_write_is_detected() {
        let mut b = Builder::default();
        b.invoke(0, write("x", 5));
        b.complete(0, OpType::Ok, write("x", 5));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", None));
        let result = run(&b.history());
        assert_eq!(kinds(&result), vec![AnomalyKind::NotLinearizable]);
        assert_eq!(result.emitted[0].ops, vec![2, 0]);
    }

    #[test]
    fn final_reads_name_lost_acknowledged_writes() {
        let final_read =
            |op, value| BTreeMap::from([("x".to_owned(), RegisterFinalRead { op, value })]);
        let check_with =
            |history: &History, finals| check(history, None, &finals, &LinearOptions::default());
        // write 1 ok, then write 2 ok, then the final read sees 1: write 2 is lost.
        let mut b = Builder::default();
        b.invoke(0, write("x", 1));
        b.complete(0, OpType::Ok, write("x", 1));
        b.invoke(0, write("x", 2));
        b.complete(0, OpType::Ok, write("x", 2));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", Some(1)));
        let history = b.history();
        let result = check_with(&history, final_read(4, Some(1)));
        assert!(
            kinds(&result).contains(&AnomalyKind::LostWrite),
            "{result:?}"
        );
        let lost: Vec<&Anomaly> = result
            .emitted
            .iter()
            .filter(|a| a.kind == AnomalyKind::LostWrite)
            .collect();
        assert_eq!(lost.len(), 1);
        assert_eq!(
            lost[0].ops,
            vec![2, 4],
            "the lost write, then the final read"
        );
        let Details::Linear(details) = &result.details else {
            panic!("linear details")
        };
        assert_eq!(
            (details.final_reads_checked, details.acknowledged_lost),
            (1, 1)
        );

        // The same final value is fine when a write of 1 overlaps write 2 (it may come last).
        let mut b = Builder::default();
        b.invoke(0, write("x", 2));
        b.invoke(1, write("x", 1));
        b.complete(0, OpType::Ok, write("x", 2));
        b.complete(1, Info, write("x", 1));
        b.invoke(2, read("x", None));
        b.complete(2, OpType::Ok, read("x", Some(1)));
        let result = check_with(&b.history(), final_read(4, Some(1)));
        assert_eq!(result.valid, Validity::Valid, "{result:?}");

        // An acknowledged write and an absent key at the end: lost (nothing deletes).
        let mut b = Builder::default();
        b.invoke(0, cas("x", 0, 3));
        b.complete(0, Fail, cas("x", 0, 3));
        b.invoke(0, write("x", 3));
        b.complete(0, OpType::Ok, write("x", 3));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", None));
        let result = check_with(&b.history(), final_read(4, None));
        assert_eq!(result.count_of(AnomalyKind::LostWrite), 1);
    }

    #[test]
    fn read_of_a_value_never_written_is_detected() {
        let mut b = Builder::default();
        b.invoke(0, write("x", 1));
        b.complete(0, Fail, write("x", 1));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", Some(1)));
        b.invoke(2, read("x", None));
        b.complete(2, OpType::Ok, read("x", Some(9)));
        let result = run(&b.history());
        assert_eq!(
            kinds(&result),
            vec![
                AnomalyKind::ValueNeverWritten,
                AnomalyKind::ValueNeverWritten
            ]
        );
        assert_eq!(result.emitted[0].ops, vec![2, 0], "names the failed write");
        assert_eq!(result.emitted[1].ops, vec![4]);
        // The initial value counts as written.
        let mut b = Builder::default();
        b.invoke(0, read("x", None));
        b.complete(0, OpType::Ok, read("x", Some(4)));
        assert_eq!(
            check(
                &b.history(),
                Some(4),
                &BTreeMap::new(),
                &LinearOptions::default()
            )
            .valid,
            Validity::Valid
        );
    }

    #[test]
    fn info_write_may_take_effect_late_but_not_before_its_invoke() {
        // An info write can explain a read that follows it...
        let mut b = Builder::default();
        b.invoke(0, write("x", 1));
        b.complete(0, Info, write("x", 1));
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", Some(1)));
        b.invoke(2, read("x", None));
        b.complete(2, OpType::Ok, read("x", Some(1)));
        assert_eq!(run(&b.history()).valid, Validity::Valid);
        // ...but not a read that finished before it was invoked.
        let mut b = Builder::default();
        b.invoke(1, read("x", None));
        b.complete(1, OpType::Ok, read("x", Some(1)));
        b.invoke(0, write("x", 1));
        b.complete(0, Info, write("x", 1));
        assert_eq!(
            kinds(&run(&b.history())),
            vec![AnomalyKind::NotLinearizable]
        );
    }

    #[test]
    fn budget_exhaustion_is_unknown_never_valid() {
        let mut b = Builder::default();
        for p in 0..12 {
            b.invoke(p, write("x", p));
        }
        for p in 0..12 {
            b.complete(p, OpType::Ok, write("x", p));
        }
        let history = b.history();
        let tiny = LinearOptions {
            key_steps_max: 5,
            ..LinearOptions::default()
        };
        let result = check(&history, None, &BTreeMap::new(), &tiny);
        assert_eq!(result.valid, Validity::Unknown);
        assert_eq!(result.unknown_reasons.len(), 1);
        let no_memory = LinearOptions {
            cache_bytes_max: 1,
            ..LinearOptions::default()
        };
        assert_eq!(
            check(&history, None, &BTreeMap::new(), &no_memory).valid,
            Validity::Unknown
        );
        assert_eq!(run(&history).valid, Validity::Valid);
    }

    /// A worker of the simulation: its current process id and its pending op, if any.
    struct Worker {
        process: u64,
        call: Option<Call>,
        /// Set once the op took effect: the completion to record.
        done: Option<(Call, OpType)>,
    }

    /// Simulates clients against atomic registers: each op takes effect at one point between its
    /// invoke and its completion, so every generated history is linearizable. With `faults`,
    /// some ops end as info, applied or not, and their process retires.
    fn simulated_history(
        seed: u64,
        ops_total: usize,
        processes: u64,
        keys: &[&str],
        faults: bool,
    ) -> History {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut registers: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        let mut workers: Vec<Worker> = (0..processes)
            .map(|process| Worker {
                process,
                call: None,
                done: None,
            })
            .collect();
        let mut next_process = processes;
        let mut invoked = 0;
        let push = |ops: &mut Vec<Op>, process: u64, kind: OpType, call: Call| {
            let index = ops.len() as u64;
            ops.push(Op {
                index,
                process: Process::Client(process),
                kind,
                call,
                time_ns: index,
                node: None,
                error: None,
            });
        };
        // Each op needs three visits; the random choice of worker makes that finish long before.
        let iterations_max = (ops_total + 1) * processes as usize * 200;
        for _ in 0..iterations_max {
            if invoked >= ops_total && workers.iter().all(|w| w.call.is_none()) {
                return History::new(ops).expect("simulated history is well formed");
            }
            let w = &mut workers[rng.random_range(0..processes as usize)];
            let retire = faults && rng.random_bool(0.05);
            match (w.call.clone(), w.done.take()) {
                (None, _) if invoked < ops_total => {
                    let key = keys[rng.random_range(0..keys.len())];
                    let call = match rng.random_range(0..3) {
                        0 => read(key, None),
                        1 => write(key, rng.random_range(0..4)),
                        _ => cas(key, rng.random_range(0..4), rng.random_range(0..4)),
                    };
                    push(&mut ops, w.process, OpType::Invoke, call.clone());
                    w.call = Some(call);
                    invoked += 1;
                }
                (None, _) => {}
                (Some(call), None) if retire => {
                    // Abandoned before it took effect.
                    push(&mut ops, w.process, Info, call);
                    *w = Worker {
                        process: next_process,
                        call: None,
                        done: None,
                    };
                    next_process += 1;
                }
                (Some(call), None) => {
                    // The linearization point.
                    let key = call.register_key().unwrap_or_default().to_owned();
                    let value = registers.entry(key.clone()).or_insert(None);
                    w.done = Some(match call {
                        Call::Read(_) => (read(&key, *value), OpType::Ok),
                        Call::Write(ref wr) => {
                            *value = Some(wr.value);
                            (call, OpType::Ok)
                        }
                        Call::Cas(ref c) if *value == Some(c.from) => {
                            *value = Some(c.to);
                            (call, OpType::Ok)
                        }
                        other => (other, Fail),
                    });
                }
                (Some(_), Some((call, kind))) => {
                    let kind = if retire { Info } else { kind };
                    push(&mut ops, w.process, kind, call);
                    w.call = None;
                    if kind == Info {
                        w.process = next_process;
                        next_process += 1;
                    }
                }
            }
        }
        panic!("simulation of seed {seed} did not finish in {iterations_max} iterations");
    }

    #[test]
    fn simulated_concurrent_histories_are_linearizable() {
        let (mut open_ops, mut overlapping) = (0, 0);
        for seed in 0..40 {
            let history = simulated_history(seed, 60, 4, &["a", "b"], true);
            let result = run(&history);
            assert_eq!(
                result.valid,
                Validity::Valid,
                "seed {seed}: {:?}",
                result.emitted
            );
            let pairs: Vec<_> = history.pair_refs().collect();
            open_ops += pairs.iter().filter(|p| p.outcome() == Info).count();
            overlapping += pairs
                .windows(2)
                .filter(|w| w[0].completion.is_none_or(|c| c.index > w[1].invoke.index))
                .count();
        }
        // The generator really produces concurrency and indeterminate ops.
        assert!(open_ops > 40, "open ops: {open_ops}");
        assert!(overlapping > 400, "overlapping neighbours: {overlapping}");
    }

    #[test]
    fn wgl_and_brute_force_agree_on_both_outcomes() {
        let (mut valid, mut invalid) = (0, 0);
        for seed in 0..300u64 {
            let history = simulated_history(seed, 7, 3, &["k"], true);
            let mut ops = history.ops().to_vec();
            // Corrupt the first ok read of every other seed.
            if seed % 2 == 0 {
                let first_read = ops
                    .iter_mut()
                    .find(|op| op.kind == OpType::Ok && matches!(op.call, Call::Read(_)));
                if let Some(op) = first_read {
                    op.call = read("k", Some(seed % 4));
                }
            }
            let history = History::new(ops).expect("well formed");
            let key_ops = ops_by_key(&history).remove("k").unwrap_or_default();
            let expected = brute_force(&key_ops, &mut vec![false; key_ops.len()], None);
            let verdict = run(&history).valid;
            assert_eq!(
                verdict == Validity::Valid,
                expected,
                "seed {seed}: {:?}",
                history.ops()
            );
            if expected {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(
            valid >= 30 && invalid >= 30,
            "valid {valid}, invalid {invalid}"
        );
    }

    /// Tries every order consistent with real time; exponential, for tiny histories only.
    fn brute_force(ops: &[KeyOp], done: &mut [bool], state: Option<u64>) -> bool {
        if done.iter().all(|d| *d) {
            return true;
        }
        for a in 0..ops.len() {
            // `a` may go next iff no other pending op completed before `a` was invoked.
            let blocked = (0..ops.len())
                .any(|b| !done[b] && b != a && ops[b].complete.is_some_and(|c| c < ops[a].invoke));
            if done[a] || blocked {
                continue;
            }
            if let Some(next) = step(state, ops[a].action) {
                done[a] = true;
                if brute_force(ops, done, next) {
                    return true;
                }
                done[a] = false;
            }
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Sequential histories (one op at a time) of a real register are linearizable, and
        /// changing the value of any read makes them not.
        #[test]
        fn random_sequential_histories(
            seed in any::<u64>(),
            len in 1usize..40,
            corrupt in any::<prop::sample::Index>(),
            other_value in 0usize..5,
        ) {
            let history = simulated_history(seed, len, 1, &["k"], false);
            let result = run(&history);
            prop_assert_eq!(result.valid, Validity::Valid, "{:?}", result.emitted);

            let mut ops = history.ops().to_vec();
            let reads: Vec<usize> = ops.iter().enumerate()
                .filter(|(_, op)| op.kind == OpType::Ok && matches!(op.call, Call::Read(_)))
                .map(|(i, _)| i).collect();
            if !reads.is_empty() {
                let i = reads[corrupt.index(reads.len())];
                let (key, value) = match &ops[i].call {
                    Call::Read(r) => (r.key.clone(), r.value),
                    other => unreachable!("filtered reads, got {other:?}"),
                };
                // Any other value (values are 0..4) must be caught: in a sequential history
                // without info ops the order of the ops is forced.
                let candidates: Vec<Option<u64>> = [None, Some(0), Some(1), Some(2), Some(3), Some(4)]
                    .into_iter()
                    .filter(|v| *v != value)
                    .collect();
                let changed = candidates[other_value % candidates.len()];
                ops[i].call = read(&key, changed);
                let corrupted = History::new(ops).expect("still well formed");
                prop_assert_eq!(run(&corrupted).valid, Validity::Invalid);
            }
        }

        /// On small concurrent histories with info ops and some corrupted reads, the WGL search
        /// agrees with trying every order.
        #[test]
        fn agrees_with_brute_force(
            seed in any::<u64>(),
            len in 1usize..8,
            corrupt in prop::collection::vec((any::<prop::sample::Index>(), 0u64..5), 0..3),
        ) {
            let history = simulated_history(seed, len, 3, &["k"], true);
            let mut ops = history.ops().to_vec();
            let reads: Vec<usize> = ops.iter().enumerate()
                .filter(|(_, op)| op.kind == OpType::Ok && matches!(op.call, Call::Read(_)))
                .map(|(i, _)| i).collect();
            if !reads.is_empty() {
                for (which, value) in corrupt {
                    let i = reads[which.index(reads.len())];
                    // 4 stands for "absent".
                    ops[i].call = read("k", (value < 4).then_some(value));
                }
            }
            let history = History::new(ops).expect("still well formed");
            let key_ops = ops_by_key(&history).remove("k").unwrap_or_default();
            let expected = brute_force(&key_ops, &mut vec![false; key_ops.len()], None);
            let verdict = run(&history).valid;
            prop_assert_eq!(verdict == Validity::Valid, expected, "{:?}", history.ops());
            prop_assert_ne!(verdict, Validity::Unknown);
        }
    }
}
