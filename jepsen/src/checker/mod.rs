//! Checkers and the composed result that becomes `results.json`.
//!
//! Owns: [`Validity`] and its merge (Invalid beats Unknown beats Valid, as in Jepsen's
//! `checker.clj`), [`Anomaly`], [`CheckerResult`], [`Results`], per-`f` op counts, the `stats`
//! checker, and [`check`], which runs the checkers a [`TestRecord`]'s workload calls for.
//!
//! Invariants: Unknown is never reported as valid; every anomaly names the op indices involved
//! (or says that it concerns the final read, which is not a history op); a checker result lists
//! at most [`ANOMALIES_PER_CHECKER_MAX`] anomalies but always counts all of them, and a checker
//! that found any anomaly is Invalid.
//!
//! Leaves out: the workload-specific logic (`bank.rs`, `linear.rs`) and file output (`report.rs`).

pub mod bank;
pub mod linear;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::history::{History, OpType, Process};
use crate::record::{TestRecord, Workload};

/// The most anomalies one checker lists in full; the rest are only counted, so a badly broken
/// run still gives a readable report of bounded size.
pub const ANOMALIES_PER_CHECKER_MAX: usize = 100;

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
}

impl AnomalyKind {
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
}

/// Checker-specific numbers for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Details {
    Stats { client_ok_ops: u64 },
    Bank(bank::BankDetails),
    Linear(linear::LinearDetails),
}

/// One checker's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckerResult {
    pub valid: Validity,
    /// At most [`ANOMALIES_PER_CHECKER_MAX`].
    pub anomalies: Vec<Anomaly>,
    /// All anomalies found, listed or not.
    pub anomaly_count: u64,
    /// Why parts of the check could not decide (budget exhausted, data missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_reasons: Vec<String>,
    pub details: Details,
}

impl CheckerResult {
    pub fn new(details: Details) -> Self {
        CheckerResult {
            valid: Validity::Valid,
            anomalies: Vec::new(),
            anomaly_count: 0,
            unknown_reasons: Vec::new(),
            details,
        }
    }

    /// Records an anomaly; the result becomes Invalid.
    pub fn push_anomaly(&mut self, mut anomaly: Anomaly) {
        self.valid = Validity::Invalid;
        self.anomaly_count += 1;
        anomaly.ops.truncate(ANOMALY_OPS_MAX);
        if self.anomalies.len() < ANOMALIES_PER_CHECKER_MAX {
            self.anomalies.push(anomaly);
        }
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
    pub checkers: BTreeMap<String, CheckerResult>,
    /// Client op outcomes per `f`.
    pub counts: BTreeMap<String, Counts>,
}

impl Results {
    pub fn new(
        checkers: BTreeMap<String, CheckerResult>,
        counts: BTreeMap<String, Counts>,
    ) -> Self {
        let valid = checkers
            .values()
            .fold(Validity::Valid, |acc, c| acc.merge(c.valid));
        Results {
            valid,
            checkers,
            counts,
        }
    }

    /// Every listed anomaly with the name of its checker.
    pub fn anomalies(&self) -> impl Iterator<Item = (&str, &Anomaly)> + '_ {
        self.checkers
            .iter()
            .flat_map(|(name, c)| c.anomalies.iter().map(move |a| (name.as_str(), a)))
    }
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
    #[error(transparent)]
    Bank(#[from] bank::BankError),
}

/// Runs `stats` and the workload's checker over `history`.
pub fn check(
    record: &TestRecord,
    history: &History,
    options: &CheckOptions,
) -> Result<Results, CheckError> {
    let mut checkers = BTreeMap::new();
    checkers.insert("stats".to_owned(), stats(history));
    match record.workload {
        Workload::Bank => {
            let bank = record.bank.as_ref().ok_or(CheckError::MissingSection {
                workload: record.workload,
                section: "bank",
            })?;
            let result = bank::check(history, &bank.input(), &options.bank)?;
            checkers.insert("bank".to_owned(), result);
        }
        Workload::Register => {
            let register = record.register.as_ref().ok_or(CheckError::MissingSection {
                workload: record.workload,
                section: "register",
            })?;
            let result = linear::check(history, register.initial, &options.linear);
            checkers.insert("linearizable".to_owned(), result);
        }
    }
    Ok(Results::new(checkers, count_ops(history)))
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
        use AnomalyKind::*;
        for kind in [
            WrongTotal,
            NegativeBalance,
            WrongAccounts,
            LostTransfer,
            FailedTransferApplied,
            DuplicateTransfer,
            UnexplainedFinalBalances,
            NotLinearizable,
            ValueNeverWritten,
        ] {
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

    #[test]
    fn anomalies_are_capped_but_counted() {
        let mut result = CheckerResult::new(Details::Stats { client_ok_ops: 1 });
        for i in 0..(ANOMALIES_PER_CHECKER_MAX as u64 + 5) {
            result.push_anomaly(Anomaly {
                kind: AnomalyKind::WrongTotal,
                ops: (0..100).map(|k| k + i).collect(),
                key: None,
                message: "x".to_owned(),
            });
        }
        assert_eq!(result.valid, Validity::Invalid);
        assert_eq!(result.anomalies.len(), ANOMALIES_PER_CHECKER_MAX);
        assert_eq!(result.anomaly_count, ANOMALIES_PER_CHECKER_MAX as u64 + 5);
        assert!(result
            .anomalies
            .iter()
            .all(|a| a.ops.len() == ANOMALY_OPS_MAX));
        // An unknown part does not hide the anomalies.
        result.push_unknown("budget".to_owned());
        assert_eq!(result.valid, Validity::Invalid);
    }
}
