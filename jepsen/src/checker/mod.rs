//! Checkers and the composed result that becomes `results.json`.
//!
//! Owns: [`Validity`] and its merge (Invalid beats Unknown beats Valid, as in Jepsen's
//! `checker.clj`), [`Anomaly`] and [`AnomalyGroup`], [`CheckerResult`], [`Results`] with its
//! [`Summary`] (ops, faults, acknowledged writes lost, the bank's accounting), per-`f` op
//! counts, the `stats` and `nemesis` checkers, and [`check`], which runs the checkers of every
//! workload a [`TestRecord`] names.
//!
//! Invariants: Unknown is never reported as valid; every anomaly names the op indices involved
//! (or says that it concerns the final read, which is not a history op); a checker keeps, per
//! kind of anomaly, its count, the first one and the worst one (Jepsen's bank checker reports
//! the same), so results stay small however broken a long run is; a checker that found any
//! anomaly is Invalid.
//!
//! Leaves out: the workload-specific logic (`bank.rs`, `linear.rs`) and file output (`report.rs`).

pub mod bank;
pub mod linear;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::history::{Call, History, OpType, Process};
use crate::nemesis::NemesisKind;
use crate::record::{TestRecord, Workload};

/// The most op indices one anomaly names.
pub const ANOMALY_OPS_MAX: usize = 32;

/// Whether a history passed. Serialized as Jepsen does: `true`, `false` or `"unknown"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid,
    Unknown,
}

impl Validity {
    /// Invalid > Unknown > Valid.
    pub fn merge(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Invalid => "invalid",
            Validity::Unknown => "unknown",
        }
    }
}

impl Serialize for Validity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Valid => serializer.serialize_bool(true),
            Validity::Invalid => serializer.serialize_bool(false),
            Validity::Unknown => serializer.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bool(bool),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Bool(true) => Ok(Validity::Valid),
            Repr::Bool(false) => Ok(Validity::Invalid),
            Repr::Text(text) if text == "unknown" => Ok(Validity::Unknown),
            Repr::Text(text) => Err(serde::de::Error::custom(format!(
                "validity must be true, false or \"unknown\", not {text:?}"
            ))),
        }
    }
}

/// What kind of wrong a checker saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// A read's balances do not add up to the initial total.
    WrongTotal,
    /// A read shows a balance below zero.
    NegativeBalance,
    /// A read lacks an account, or shows one that was never created.
    WrongAccounts,
    /// An acknowledged transfer is not applied (server outcome or final balances say so).
    LostTransfer,
    /// A transfer that definitely failed is applied.
    FailedTransferApplied,
    /// A transfer is applied more than once.
    DuplicateTransfer,
    /// The final balances are not initial + the applied transfers, for any choice of the
    /// indeterminate ones.
    UnexplainedFinalBalances,
    /// No linearization of a key's ops exists.
    NotLinearizable,
    /// A read returned a value that no (possibly) successful write wrote.
    ValueNeverWritten,
    /// An acknowledged register write is gone from the key's final read, and no write that
    /// could have come after it explains the value read.
    LostWrite,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 10] = [
        AnomalyKind::WrongTotal,
        AnomalyKind::NegativeBalance,
        AnomalyKind::WrongAccounts,
        AnomalyKind::LostTransfer,
        AnomalyKind::FailedTransferApplied,
        AnomalyKind::DuplicateTransfer,
        AnomalyKind::UnexplainedFinalBalances,
        AnomalyKind::NotLinearizable,
        AnomalyKind::ValueNeverWritten,
        AnomalyKind::LostWrite,
    ];

    /// The name used in `results.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::WrongTotal => "wrong-total",
            AnomalyKind::NegativeBalance => "negative-balance",
            AnomalyKind::WrongAccounts => "wrong-accounts",
            AnomalyKind::LostTransfer => "lost-transfer",
            AnomalyKind::FailedTransferApplied => "failed-transfer-applied",
            AnomalyKind::DuplicateTransfer => "duplicate-transfer",
            AnomalyKind::UnexplainedFinalBalances => "unexplained-final-balances",
            AnomalyKind::NotLinearizable => "not-linearizable",
            AnomalyKind::ValueNeverWritten => "value-never-written",
            AnomalyKind::LostWrite => "lost-write",
        }
    }
}

/// One thing found wrong, naming the ops involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// Op indices (invocations first, where the anomaly is about a whole op). Empty only for
    /// anomalies of the final read, which is not part of the history.
    pub ops: Vec<u64>,
    /// The register key, for per-key anomalies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub message: String,
    /// How bad it is, comparable within a kind (money off the total, how far below zero, the
    /// amount of a lost transfer); the group keeps the worst.
    #[serde(default)]
    pub badness: u64,
}

/// Every anomaly of one kind that one checker found: how many, the first and the worst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyGroup {
    pub kind: AnomalyKind,
    pub count: u64,
    pub first: Anomaly,
    /// The highest badness (the earliest among equals; the first when all are equal).
    pub worst: Anomaly,
}

/// Checker-specific numbers for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Details {
    Stats { client_ok_ops: u64 },
    Nemesis(NemesisDetails),
    Bank(bank::BankDetails),
    Linear(linear::LinearDetails),
}

/// One checker's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckerResult {
    pub valid: Validity,
    /// One group per kind found, in kind order.
    pub anomalies: Vec<AnomalyGroup>,
    /// All anomalies found.
    pub anomaly_count: u64,
    /// Why parts of the check could not decide (budget exhausted, data missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_reasons: Vec<String>,
    pub details: Details,
    /// Every anomaly pushed, in order: unit tests look at exactly what a checker emitted.
    #[cfg(test)]
    #[serde(skip)]
    pub(crate) emitted: Vec<Anomaly>,
}

/// Equal when everything `results.json` holds is equal.
impl PartialEq for CheckerResult {
    fn eq(&self, other: &Self) -> bool {
        self.valid == other.valid
            && self.anomalies == other.anomalies
            && self.anomaly_count == other.anomaly_count
            && self.unknown_reasons == other.unknown_reasons
            && self.details == other.details
    }
}

impl CheckerResult {
    pub fn new(details: Details) -> Self {
        CheckerResult {
            valid: Validity::Valid,
            anomalies: Vec::new(),
            anomaly_count: 0,
            unknown_reasons: Vec::new(),
            details,
            #[cfg(test)]
            emitted: Vec::new(),
        }
    }

    /// Whether an anomaly of `kind` with `badness` would be kept (as the first or the worst of
    /// its kind): lets a checker skip the work of naming ops for one that would only be counted.
    pub fn keeps(&self, kind: AnomalyKind, badness: u64) -> bool {
        self.anomalies
            .iter()
            .find(|g| g.kind == kind)
            .is_none_or(|g| badness > g.worst.badness)
    }

    /// Records an anomaly; the result becomes Invalid.
    pub fn push_anomaly(&mut self, mut anomaly: Anomaly) {
        self.valid = Validity::Invalid;
        self.anomaly_count += 1;
        anomaly.ops.truncate(ANOMALY_OPS_MAX);
        #[cfg(test)]
        self.emitted.push(anomaly.clone());
        match self.anomalies.iter_mut().find(|g| g.kind == anomaly.kind) {
            Some(group) => {
                group.count += 1;
                if anomaly.badness > group.worst.badness {
                    group.worst = anomaly;
                }
            }
            None => {
                let position = self.anomalies.partition_point(|g| g.kind < anomaly.kind);
                self.anomalies.insert(
                    position,
                    AnomalyGroup {
                        kind: anomaly.kind,
                        count: 1,
                        first: anomaly.clone(),
                        worst: anomaly,
                    },
                );
            }
        }
    }

    /// How many anomalies of `kind` were found.
    pub fn count_of(&self, kind: AnomalyKind) -> u64 {
        self.anomalies
            .iter()
            .find(|g| g.kind == kind)
            .map_or(0, |g| g.count)
    }

    /// Records that part of the check could not decide; the result becomes at least Unknown.
    pub fn push_unknown(&mut self, reason: String) {
        self.valid = self.valid.merge(Validity::Unknown);
        self.unknown_reasons.push(reason);
    }
}

/// Completions of one `f`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    /// Includes invokes that never completed.
    pub info: u64,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub valid: Validity,
    /// The figures of the run at a glance.
    pub summary: Summary,
    pub checkers: BTreeMap<String, CheckerResult>,
    /// Client op outcomes per `f`.
    pub counts: BTreeMap<String, Counts>,
}

impl Results {
    pub fn new(
        checkers: BTreeMap<String, CheckerResult>,
        counts: BTreeMap<String, Counts>,
        history: &History,
    ) -> Self {
        let valid = checkers
            .values()
            .fold(Validity::Valid, |acc, c| acc.merge(c.valid));
        let summary = Summary::new(valid, &checkers, &counts, history);
        Results {
            valid,
            summary,
            checkers,
            counts,
        }
    }

    /// The first and (when it differs) the worst anomaly of each kind, with the name of its
    /// checker.
    pub fn anomalies(&self) -> impl Iterator<Item = (&str, &Anomaly)> + '_ {
        self.checkers.iter().flat_map(|(name, c)| {
            c.anomalies.iter().flat_map(move |g| {
                let worst = (g.worst != g.first).then_some(&g.worst);
                std::iter::once((name.as_str(), &g.first)).chain(worst.map(|w| (name.as_str(), w)))
            })
        })
    }
}

/// The bank's books after the run: the money at the start and the end, and where every
/// transfer went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccounting {
    pub initial_total: i128,
    /// None when the final read could not be taken.
    pub final_total: Option<i128>,
    pub transfers: Counts,
    /// Indeterminate transfers by the server's record of them.
    pub info_committed: u64,
    pub info_not_applied: u64,
    pub info_outcome_unknown: u64,
    /// Indeterminate transfers without a record that the final balances show applied.
    pub unknown_transfers_applied: u64,
    /// Whether the final balances are exactly initial + every applied transfer.
    pub exact: bool,
}

/// The figures of a run: what was done, what was injected, what was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub valid: Validity,
    /// Client operations (invocations), the final reads included.
    pub client_ops: u64,
    /// Their outcomes.
    pub outcomes: Counts,
    /// Events in the history (invocations, completions, nemesis ops).
    pub history_events: u64,
    /// Faults applied, by nemesis kind.
    pub faults: BTreeMap<String, u64>,
    /// Planned faults that were skipped (no leader to target).
    pub faults_skipped: u64,
    /// Acknowledged writes (transfers, register writes) that the final state does not hold.
    pub acknowledged_writes_lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<BankAccounting>,
}

impl Summary {
    fn new(
        valid: Validity,
        checkers: &BTreeMap<String, CheckerResult>,
        counts: &BTreeMap<String, Counts>,
        history: &History,
    ) -> Self {
        let mut outcomes = Counts::default();
        for c in counts.values() {
            outcomes.ok += c.ok;
            outcomes.fail += c.fail;
            outcomes.info += c.info;
        }
        let mut summary = Summary {
            valid,
            client_ops: outcomes.ok + outcomes.fail + outcomes.info,
            outcomes,
            history_events: history.ops().len() as u64,
            faults: BTreeMap::new(),
            faults_skipped: 0,
            acknowledged_writes_lost: 0,
            bank: None,
        };
        for checker in checkers.values() {
            match &checker.details {
                Details::Nemesis(nemesis) => {
                    summary.faults = nemesis.applied.clone();
                    summary.faults_skipped = nemesis.skipped;
                }
                Details::Bank(bank) => {
                    summary.acknowledged_writes_lost += bank.acknowledged_lost;
                    summary.bank = Some(BankAccounting {
                        initial_total: bank.initial_total,
                        final_total: bank.final_total,
                        transfers: bank.transfers,
                        info_committed: bank.info_committed,
                        info_not_applied: bank.info_not_applied,
                        info_outcome_unknown: bank.info_outcome_unknown,
                        unknown_transfers_applied: bank.unknown_transfers_applied.len() as u64,
                        exact: bank.final_explained,
                    });
                }
                Details::Linear(linear) => {
                    summary.acknowledged_writes_lost += linear.acknowledged_lost
                }
                Details::Stats { .. } => {}
            }
        }
        summary
    }
}

/// What the nemesis did, from its ops in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisDetails {
    /// Faults in the plan (the timed schedule, or the kill loop's kills).
    pub planned: u64,
    /// Faults applied, by kind.
    pub applied: BTreeMap<String, u64>,
    /// Planned faults skipped when they came up (no leader known).
    pub skipped: u64,
}

/// The `nemesis` checker: counts the faults applied. A kill loop that performed fewer kills
/// than it planned (the time limit ran out, a node never came back) did not test what it was
/// asked to, so it is Unknown; a timed schedule may end early with the run.
pub fn nemesis(record: &TestRecord, history: &History) -> CheckerResult {
    let mut details = NemesisDetails {
        planned: if record.kill_loop.is_empty() {
            record.schedule.len()
        } else {
            record.kill_loop.len()
        } as u64,
        applied: BTreeMap::new(),
        skipped: 0,
    };
    for op in history.nemesis_ops() {
        if let Call::StartFault(event) = &op.call {
            if event.skipped {
                details.skipped += 1;
            } else {
                *details
                    .applied
                    .entry(event.fault.kind().as_str().to_owned())
                    .or_default() += 1;
            }
        }
    }
    let kills = details
        .applied
        .get(NemesisKind::Kill.as_str())
        .copied()
        .unwrap_or(0);
    let planned = details.planned;
    let mut result = CheckerResult::new(Details::Nemesis(details));
    if !record.kill_loop.is_empty() && kills < planned {
        result.push_unknown(format!(
            "the kill loop performed {kills} of its {planned} kills (see the nemesis ops)"
        ));
    }
    result
}

/// Counts ok/fail/info completions of client ops per `f`.
pub fn count_ops(history: &History) -> BTreeMap<String, Counts> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for pair in history.pair_refs() {
        let entry = counts.entry(pair.invoke.call.f().to_owned()).or_default();
        match pair.outcome() {
            OpType::Ok => entry.ok += 1,
            OpType::Fail => entry.fail += 1,
            OpType::Info | OpType::Invoke => entry.info += 1,
        }
    }
    counts
}

/// Jepsen's stats checker, reduced: a test in which no client op succeeded proves nothing, so it
/// is Unknown rather than Valid.
pub fn stats(history: &History) -> CheckerResult {
    let client_ok_ops = history
        .pair_refs()
        .filter(|p| p.outcome() == OpType::Ok && matches!(p.invoke.process, Process::Client(_)))
        .count() as u64;
    let mut result = CheckerResult::new(Details::Stats { client_ok_ops });
    if client_ok_ops == 0 {
        result.push_unknown("no client op completed ok, so the run shows nothing".to_owned());
    }
    result
}

/// Budgets for all checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckOptions {
    pub bank: bank::BankOptions,
    pub linear: linear::LinearOptions,
}

/// The inputs do not allow a check: a harness error (exit code 2), never an anomaly.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("test.json has workload {workload:?} but no {section:?} section")]
    MissingSection {
        workload: Workload,
        section: &'static str,
    },
    #[error("test.json names no workload")]
    NoWorkload,
    #[error(transparent)]
    Bank(#[from] bank::BankError),
}

/// Runs `stats`, `nemesis` and the checker of every workload over `history`.
pub fn check(
    record: &TestRecord,
    history: &History,
    options: &CheckOptions,
) -> Result<Results, CheckError> {
    if record.workloads.is_empty() {
        return Err(CheckError::NoWorkload);
    }
    let mut checkers = BTreeMap::new();
    checkers.insert("stats".to_owned(), stats(history));
    checkers.insert("nemesis".to_owned(), nemesis(record, history));
    for &workload in &record.workloads {
        match workload {
            Workload::Bank => {
                let bank = record.bank.as_ref().ok_or(CheckError::MissingSection {
                    workload,
                    section: "bank",
                })?;
                let result = bank::check(history, &bank.input(), &options.bank)?;
                checkers.insert("bank".to_owned(), result);
            }
            Workload::Register => {
                let register = record.register.as_ref().ok_or(CheckError::MissingSection {
                    workload,
                    section: "register",
                })?;
                let result = linear::check(
                    history,
                    register.initial,
                    &register.final_reads,
                    &options.linear,
                );
                checkers.insert("linearizable".to_owned(), result);
            }
        }
    }
    let counts = count_ops(history);
    Ok(Results::new(checkers, counts, history))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;

    #[test]
    fn merge_prefers_invalid_then_unknown() {
        use Validity::*;
        assert_eq!(Valid.merge(Valid), Valid);
        assert_eq!(Valid.merge(Unknown), Unknown);
        assert_eq!(Unknown.merge(Valid), Unknown);
        assert_eq!(Unknown.merge(Invalid), Invalid);
        assert_eq!(Invalid.merge(Valid), Invalid);
    }

    #[test]
    fn validity_serializes_like_jepsen() {
        let json = serde_json::to_string(&[Validity::Valid, Validity::Invalid, Validity::Unknown])
            .expect("json");
        assert_eq!(json, r#"[true,false,"unknown"]"#);
        let back: Vec<Validity> = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back,
            [Validity::Valid, Validity::Invalid, Validity::Unknown]
        );
        assert!(serde_json::from_str::<Validity>(r#""maybe""#).is_err());
    }

    #[test]
    fn anomaly_names_match_their_json() {
        for kind in AnomalyKind::ALL {
            let json = serde_json::to_value(kind).expect("json");
            assert_eq!(json.as_str(), Some(kind.as_str()));
        }
    }

    #[test]
    fn counts_and_stats() {
        let mut b = Builder::default();
        b.invoke(0, write("k", 1));
        b.complete(0, crate::history::OpType::Fail, write("k", 1));
        b.invoke(1, read("k", None));
        let history = b.history();
        let counts = count_ops(&history);
        assert_eq!(
            counts["write"],
            Counts {
                ok: 0,
                fail: 1,
                info: 0
            }
        );
        assert_eq!(
            counts["read"],
            Counts {
                ok: 0,
                fail: 0,
                info: 1
            }
        );
        // Nothing succeeded: unknown, never valid.
        assert_eq!(stats(&history).valid, Validity::Unknown);
    }

    /// A long history of bank and register ops from 16 simulated workers against a correct
    /// store (each op takes effect when it completes), with indeterminate ops.
    fn long_history(client_ops: usize, seed: u64) -> (TestRecord, History) {
        use crate::checker::bank::{FinalRead, TransferOutcome};
        use crate::history::{Balances, Op};
        use crate::record::{RegisterFinalRead, RegisterRecord};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let accounts: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
        let mut balances: Balances = accounts.iter().map(|a| (a.clone(), 100)).collect();
        let mut registers: BTreeMap<String, u64> = BTreeMap::new();
        let mut outcomes = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        let push = |ops: &mut Vec<Op>, process, kind, call| {
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
        let workers = 16;
        let mut open: Vec<Option<(u64, Call)>> = vec![None; workers];
        // Each worker's process id; a fresh one after an info op (Jepsen's rule).
        let mut process_of: Vec<u64> = (0..workers as u64).collect();
        let mut next_process = workers as u64;
        let mut done = 0;
        let mut invoked = 0;
        while done < client_ops {
            let w = rng.random_range(0..workers);
            match open[w].take() {
                None if invoked < client_ops => {
                    let call = if w < workers / 2 {
                        if rng.random_bool(0.5) {
                            let from = rng.random_range(0..5);
                            let to = (from + rng.random_range(1..5)) % 5;
                            Call::Transfer(crate::history::Transfer {
                                id: format!("t{invoked}"),
                                from: accounts[from].clone(),
                                to: accounts[to].clone(),
                                amount: rng.random_range(1..=30),
                            })
                        } else {
                            Call::ReadAll(None)
                        }
                    } else {
                        let key = format!("reg/{}/{}", invoked / 2_000, rng.random_range(0..5));
                        match rng.random_range(0..4) {
                            0 | 1 => read(&key, None),
                            2 => write(&key, rng.random_range(0..5)),
                            _ => cas(&key, rng.random_range(0..5), rng.random_range(0..5)),
                        }
                    };
                    invoked += 1;
                    let process = process_of[w];
                    push(&mut ops, process, OpType::Invoke, call.clone());
                    open[w] = Some((process, call));
                }
                None => {}
                Some((process, call)) => {
                    done += 1;
                    // Effect at the completion; one op in 500 ends info, applied or not.
                    let info = !matches!(call, Call::Read(_) | Call::ReadAll(_))
                        && rng.random_ratio(1, 500);
                    let apply = !info || rng.random_bool(0.5);
                    let (kind, completion) = match &call {
                        Call::Transfer(t) => {
                            let funded = balances[&t.from] >= t.amount as i64;
                            let applied = apply && funded;
                            if applied {
                                *balances.get_mut(&t.from).expect("from") -= t.amount as i64;
                                *balances.get_mut(&t.to).expect("to") += t.amount as i64;
                            }
                            outcomes.insert(
                                t.id.clone(),
                                if applied {
                                    TransferOutcome::Committed
                                } else if funded {
                                    TransferOutcome::NotFound
                                } else {
                                    TransferOutcome::Rejected
                                },
                            );
                            let kind = match (info, funded) {
                                (true, _) => OpType::Info,
                                (false, true) => OpType::Ok,
                                (false, false) => OpType::Fail,
                            };
                            (kind, call.clone())
                        }
                        Call::ReadAll(_) => (OpType::Ok, Call::ReadAll(Some(balances.clone()))),
                        Call::Read(r) => (OpType::Ok, read(&r.key, registers.get(&r.key).copied())),
                        Call::Write(w) => {
                            if apply {
                                registers.insert(w.key.clone(), w.value);
                            }
                            (if info { OpType::Info } else { OpType::Ok }, call.clone())
                        }
                        Call::Cas(c) => {
                            let matches = registers.get(&c.key) == Some(&c.from);
                            if matches && apply {
                                registers.insert(c.key.clone(), c.to);
                            }
                            let kind = match (info, matches) {
                                (true, _) => OpType::Info,
                                (false, true) => OpType::Ok,
                                (false, false) => OpType::Fail,
                            };
                            (kind, call.clone())
                        }
                        _ => unreachable!("client ops only"),
                    };
                    push(&mut ops, process, kind, completion);
                    if kind == OpType::Info {
                        process_of[w] = next_process;
                        next_process += 1;
                    }
                }
            }
        }
        // The final reads of every register key.
        let keys: std::collections::BTreeSet<String> = ops
            .iter()
            .filter_map(|op| op.call.register_key().map(str::to_owned))
            .collect();
        let mut final_reads = BTreeMap::new();
        for (process, key) in (next_process..).zip(&keys) {
            let value = registers.get(key).copied();
            let op = ops.len() as u64;
            push(&mut ops, process, OpType::Invoke, read(key, None));
            push(&mut ops, process, OpType::Ok, read(key, value));
            final_reads.insert(key.clone(), RegisterFinalRead { op, value });
        }
        let mut record = crate::record::tests::bank_record();
        record.workloads = vec![Workload::Bank, Workload::Register];
        let bank = record.bank.as_mut().expect("bank");
        bank.initial_balances = accounts.iter().map(|a| (a.clone(), 100)).collect();
        bank.final_read = Some(FinalRead {
            balances,
            node: None,
        });
        bank.transfer_outcomes = outcomes;
        record.register = Some(RegisterRecord {
            keys: keys.into_iter().collect(),
            initial: None,
            final_reads,
        });
        (record, History::new(ops).expect("a well-formed history"))
    }

    /// 200,000 client ops of both workloads check valid; breaking 1,000 reads gives one group
    /// of 1,000 (first and worst named). The time taken is printed, not asserted.
    #[test]
    fn long_histories_check_in_one_pass_and_group_their_anomalies() {
        let (record, history) = long_history(200_000, 11);
        let started = std::time::Instant::now();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        eprintln!(
            "checked {} history events in {:?}",
            history.ops().len(),
            started.elapsed()
        );
        assert_eq!(results.valid, Validity::Valid, "{:?}", results.summary);
        assert_eq!(
            results.summary.client_ops,
            200_000 + record.register.as_ref().map_or(0, |r| r.keys.len() as u64)
        );
        assert!(results.summary.bank.as_ref().is_some_and(|b| b.exact));
        assert!(
            results.summary.outcomes.info > 0,
            "indeterminate ops were simulated"
        );

        let mut ops = history.ops().to_vec();
        let mut broken = 0;
        for op in ops.iter_mut() {
            if let (OpType::Ok, Call::ReadAll(Some(balances))) = (op.kind, &mut op.call) {
                if broken < 1_000 {
                    *balances.values_mut().next().expect("an account") += 1 + broken;
                    broken += 1;
                }
            }
        }
        let history = History::new(ops).expect("still well-formed");
        let started = std::time::Instant::now();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        eprintln!("checked the broken copy in {:?}", started.elapsed());
        assert_eq!(results.valid, Validity::Invalid);
        let bank = &results.checkers["bank"];
        assert_eq!(bank.count_of(AnomalyKind::WrongTotal), 1_000);
        let group = &bank.anomalies[0];
        assert_eq!(group.kind, AnomalyKind::WrongTotal);
        assert_eq!(group.first.badness, 1);
        assert_eq!(group.worst.badness, 1_000, "the worst is the read most off");
        assert!(group.worst.ops.len() > 1, "the worst names its suspects");
        assert!(serde_json::to_string(&results).expect("json").len() < 64 * 1024);
    }

    #[test]
    fn a_kill_loop_short_of_its_kills_is_unknown_and_faults_are_counted() {
        use crate::nemesis::{Fault, FaultEvent, KillStep, Target};
        let mut record = crate::record::tests::bank_record();
        record.schedule.clear();
        record.kill_loop = vec![
            KillStep {
                target: Target::Leader,
                hold_ms: 0,
                gap_ms: 0,
            };
            3
        ];
        let kill = |interval, skipped| {
            Call::StartFault(FaultEvent {
                interval,
                fault: Fault::Kill {
                    target: Target::Nodes(vec!["n1".to_owned()]),
                },
                detail: None,
                skipped,
            })
        };
        let mut b = Builder::default();
        b.push(Process::Nemesis, OpType::Info, kill(0, false));
        b.push(Process::Nemesis, OpType::Info, kill(1, true));
        b.push(Process::Nemesis, OpType::Info, kill(2, false));
        let history = b.history();
        let result = nemesis(&record, &history);
        assert_eq!(result.valid, Validity::Unknown, "2 of 3 kills");
        let Details::Nemesis(details) = &result.details else {
            panic!("nemesis details")
        };
        assert_eq!(details.applied[NemesisKind::Kill.as_str()], 2);
        assert_eq!((details.planned, details.skipped), (3, 1));
        let mut b = Builder::default();
        for interval in 0..3 {
            b.push(Process::Nemesis, OpType::Info, kill(interval, false));
        }
        assert_eq!(nemesis(&record, &b.history()).valid, Validity::Valid);
    }

    #[test]
    fn anomalies_are_grouped_by_kind_with_the_first_and_the_worst() {
        let mut result = CheckerResult::new(Details::Stats { client_ok_ops: 1 });
        let anomaly = |kind, i: u64, badness| Anomaly {
            kind,
            ops: (0..100).map(|k| k + i).collect(),
            key: None,
            message: format!("#{i}"),
            badness,
        };
        for i in 0..1_000u64 {
            let kind = AnomalyKind::WrongTotal;
            let badness = if i == 700 { 50 } else { i % 7 };
            // Badness climbs 0..=6 over the first seven, then only #700 is worse.
            assert_eq!(result.keeps(kind, badness), i <= 6 || i == 700, "{i}");
            result.push_anomaly(anomaly(kind, i, badness));
        }
        result.push_anomaly(anomaly(AnomalyKind::LostTransfer, 5, 1));
        assert_eq!(result.valid, Validity::Invalid);
        assert_eq!(result.anomaly_count, 1_001);
        assert_eq!(result.anomalies.len(), 2, "one group per kind");
        let group = &result.anomalies[0];
        assert_eq!((group.kind, group.count), (AnomalyKind::WrongTotal, 1_000));
        assert_eq!(group.first.message, "#0");
        assert_eq!(group.worst.message, "#700");
        assert_eq!(
            group.first.ops.len(),
            ANOMALY_OPS_MAX,
            "op lists are capped"
        );
        assert_eq!(result.count_of(AnomalyKind::LostTransfer), 1);
        assert_eq!(result.count_of(AnomalyKind::LostWrite), 0);
        // An unknown part does not hide the anomalies.
        result.push_unknown("budget".to_owned());
        assert_eq!(result.valid, Validity::Invalid);
    }
}
