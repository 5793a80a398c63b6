//! The bank checker: money is conserved, never negative, and every transfer is applied exactly
//! when the history and the server say so.
//!
//! Inputs: the history (`transfer` and `read-all` ops), the initial balances, the final read
//! taken after healing, and the server's recorded outcome of each transfer id it was asked about
//! (`GET /v1/transfers/{id}`: committed, rejected or not found).
//!
//! Checks, each anomaly naming op indices:
//! - every ok read: the initial accounts, exactly; the initial total; no negative balance. Reads
//!   that break the total also name the "suspects": transfers in flight between the last good
//!   read and the bad one (this is what names the double spends of the unsafe mode);
//! - an ok transfer must be recorded committed; a failed one must not be;
//! - the final balances must equal initial + net(ok transfers ∪ info transfers recorded
//!   committed) + net(S) for some subset S of the info transfers with no recorded outcome. The
//!   subset search is bounded ([`BankOptions::subset_steps_max`]) and ends in Unknown past it.
//!   When no subset fits and the difference is exactly one transfer (missing, doubled, or a
//!   failed one applied) the anomaly says so;
//! - a transfer id applied twice shows up as such a doubled difference (the history itself may
//!   not reuse an id: `History::new` rejects that).
//!
//! In [`BankMode::BlindWrites`] (the negative control: read stale balances, compute new ones
//! client-side, write them back blindly) transfers are not atomic and the server records no
//! outcomes, so only the read checks and the final total and signs apply; those are what catch
//! the double spend.
//!
//! Leaves out: read-your-writes checks on reads (a balance snapshot cannot show which transfers
//! it includes without a per-account ledger, which the API does not expose yet).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::checker::{Anomaly, AnomalyKind, CheckerResult, Counts, Details};
use crate::history::{Balances, Call, History, OpType, Transfer};

/// Default step budget of the search for a subset of indeterminate transfers that explains the
/// final balances. A step is one include/exclude decision; 2 M steps take well under a second.
pub const SUBSET_STEPS_MAX_DEFAULT: u64 = 2_000_000;

/// The most suspect transfers named for a bad read (the most recent ones are kept).
pub const SUSPECTS_MAX: usize = 16;

/// The most transfers named when unexplained final balances cannot be pinned on one transfer.
pub const UNEXPLAINED_OPS_MAX: usize = 16;

/// How the clients move money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BankMode {
    /// `POST /v1/transfers` with the transfer id as idempotency key; reads are consistent
    /// snapshots.
    Transfers,
    /// The unsafe negative control: stale reads and blind writes of computed balances.
    BlindWrites,
}

/// The server's record of a transfer id after the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferOutcome {
    /// 200: applied (exactly once).
    Committed,
    /// Recorded as refused (e.g. insufficient funds): nothing moved.
    Rejected,
    /// 404: the server never applied it.
    NotFound,
}

/// The consistent read of all balances taken after healing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRead {
    pub balances: Balances,
    /// The node that served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Everything the bank checker needs besides the history.
#[derive(Debug, Clone, Copy)]
pub struct BankInput<'a> {
    pub mode: BankMode,
    pub initial: &'a BTreeMap<String, u64>,
    pub final_read: Option<&'a FinalRead>,
    pub outcomes: &'a BTreeMap<String, TransferOutcome>,
}

/// Budgets of the bank checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankOptions {
    pub subset_steps_max: u64,
}

impl Default for BankOptions {
    fn default() -> Self {
        BankOptions {
            subset_steps_max: SUBSET_STEPS_MAX_DEFAULT,
        }
    }
}

/// The inputs contradict each other: a harness error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BankError {
    #[error(
        "op {index}: transfer names account {account:?}, which is not among the initial accounts"
    )]
    UnknownAccount { index: u64, account: String },
}

/// Numbers for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankDetails {
    pub mode: BankMode,
    pub accounts: usize,
    pub initial_total: i128,
    pub reads_ok: u64,
    pub transfers: Counts,
    /// Indeterminate transfers by what the server recorded.
    pub info_committed: u64,
    pub info_not_applied: u64,
    pub info_outcome_unknown: u64,
    /// Ok transfers the runner could not look up.
    pub ok_outcome_missing: u64,
    pub final_total: Option<i128>,
    /// Indeterminate transfers (invoke indices) that the explanation of the final balances
    /// assumes were applied.
    pub unknown_transfers_applied: Vec<u64>,
    /// Acknowledged transfers that the server does not record as committed or that the final
    /// balances lack (distinct ops).
    #[serde(default)]
    pub acknowledged_lost: u64,
    /// The final balances are exactly initial + the applied transfers.
    #[serde(default)]
    pub final_explained: bool,
}

/// One transfer op with its place in the history (indices are positions: time order).
#[derive(Debug, Clone, Copy)]
struct TransferOp<'a> {
    transfer: &'a Transfer,
    invoke: u64,
    completion: Option<u64>,
    outcome: OpType,
}

impl TransferOp<'_> {
    /// The op may have taken effect somewhere in `[start, end]` (end None = open forever).
    fn overlaps(&self, start: u64, end: Option<u64>) -> bool {
        let ends_before = match self.outcome {
            OpType::Info => false,
            _ => self.completion.is_some_and(|c| c < start),
        };
        !ends_before && end.is_none_or(|e| self.invoke <= e)
    }
}

/// An ok `read-all`.
#[derive(Debug, Clone, Copy)]
struct ReadOp<'a> {
    balances: &'a Balances,
    invoke: u64,
    completion: u64,
}

/// Runs the bank checks described in the module doc.
pub fn check(
    history: &History,
    input: &BankInput<'_>,
    options: &BankOptions,
) -> Result<CheckerResult, BankError> {
    let (transfers, reads) = collect(history, input)?;
    let initial_total: i128 = input.initial.values().map(|&b| i128::from(b)).sum();
    let mut details = BankDetails {
        mode: input.mode,
        accounts: input.initial.len(),
        initial_total,
        reads_ok: reads.len() as u64,
        transfers: Counts::default(),
        info_committed: 0,
        info_not_applied: 0,
        info_outcome_unknown: 0,
        ok_outcome_missing: 0,
        final_total: None,
        unknown_transfers_applied: Vec::new(),
        acknowledged_lost: 0,
        final_explained: false,
    };
    for t in &transfers {
        match t.outcome {
            OpType::Ok => details.transfers.ok += 1,
            OpType::Fail => details.transfers.fail += 1,
            _ => details.transfers.info += 1,
        }
    }
    let mut result = CheckerResult::new(Details::Bank(details.clone()));
    let good_read_ends = check_reads(&reads, &transfers, input, initial_total, &mut result);
    let mut unknown = Vec::new();
    // Acknowledged transfers found lost, by invoke index (the server's record and the final
    // balances may both say so of one transfer).
    let mut lost = BTreeSet::new();
    if input.mode == BankMode::Transfers {
        check_outcomes(
            &transfers,
            input.outcomes,
            &mut details,
            &mut result,
            &mut lost,
        );
    }
    match input.final_read {
        None => unknown.push("no final read: the final-state checks did not run".to_owned()),
        Some(final_read) => {
            details.final_total = Some(final_read.balances.values().map(|&b| i128::from(b)).sum());
            let last_good = good_read_ends.last().copied().unwrap_or(0);
            let problems = balance_problems(&final_read.balances, input.initial, initial_total);
            for (kind, what, badness) in &problems {
                let mut ops = Vec::new();
                if *kind != AnomalyKind::WrongAccounts {
                    ops = suspects(&transfers, last_good, None);
                }
                result.push_anomaly(Anomaly {
                    kind: *kind,
                    ops,
                    key: None,
                    message: format!("final read: {what}"),
                    badness: *badness,
                });
            }
            let accounts_match = !problems
                .iter()
                .any(|(k, _, _)| *k == AnomalyKind::WrongAccounts);
            if input.mode == BankMode::Transfers && accounts_match {
                let verdict = explain_final(&transfers, input, final_read, options);
                match verdict {
                    FinalVerdict::Explained(applied) => {
                        details.unknown_transfers_applied = applied;
                        details.final_explained = true;
                    }
                    FinalVerdict::Unknown(reason) => unknown.push(reason),
                    FinalVerdict::Anomaly(anomaly) => {
                        if anomaly.kind == AnomalyKind::LostTransfer {
                            lost.extend(anomaly.ops.first().copied());
                        }
                        result.push_anomaly(anomaly)
                    }
                }
            }
        }
    }
    for reason in unknown {
        result.push_unknown(reason);
    }
    details.acknowledged_lost = lost.len() as u64;
    result.details = Details::Bank(details);
    Ok(result)
}

/// Splits the history into transfers and ok reads, checking accounts.
fn collect<'a>(
    history: &'a History,
    input: &BankInput<'_>,
) -> Result<(Vec<TransferOp<'a>>, Vec<ReadOp<'a>>), BankError> {
    let mut transfers = Vec::new();
    let mut reads = Vec::new();
    for pair in history.pair_refs() {
        match (&pair.invoke.call, pair.call()) {
            (Call::Transfer(transfer), _) => {
                for account in [&transfer.from, &transfer.to] {
                    if !input.initial.contains_key(account) {
                        return Err(BankError::UnknownAccount {
                            index: pair.invoke.index,
                            account: account.clone(),
                        });
                    }
                }
                transfers.push(TransferOp {
                    transfer,
                    invoke: pair.invoke.index,
                    completion: pair.completion_index(),
                    outcome: pair.outcome(),
                });
            }
            (Call::ReadAll(_), Call::ReadAll(Some(balances))) if pair.outcome() == OpType::Ok => {
                if let Some(completion) = pair.completion_index() {
                    reads.push(ReadOp {
                        balances,
                        invoke: pair.invoke.index,
                        completion,
                    });
                }
            }
            _ => {}
        }
    }
    Ok((transfers, reads))
}

/// What is wrong with one set of balances: wrong accounts, negative balances, wrong total;
/// each with a message and its badness (accounts off, how far below zero, money off).
fn balance_problems(
    balances: &Balances,
    initial: &BTreeMap<String, u64>,
    initial_total: i128,
) -> Vec<(AnomalyKind, String, u64)> {
    let mut problems = Vec::new();
    let missing: Vec<&str> = initial
        .keys()
        .filter(|a| !balances.contains_key(*a))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = balances
        .keys()
        .filter(|a| !initial.contains_key(*a))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        problems.push((
            AnomalyKind::WrongAccounts,
            format!("missing accounts {missing:?}, unexpected accounts {extra:?}"),
            (missing.len() + extra.len()) as u64,
        ));
    }
    let negative: Vec<String> = balances
        .iter()
        .filter(|(_, &b)| b < 0)
        .map(|(a, b)| format!("{a}={b}"))
        .collect();
    if !negative.is_empty() {
        let lowest = balances.values().copied().min().unwrap_or(0);
        problems.push((
            AnomalyKind::NegativeBalance,
            format!("negative balances {}", negative.join(", ")),
            lowest.unsigned_abs(),
        ));
    }
    let total: i128 = balances.values().map(|&b| i128::from(b)).sum();
    if total != initial_total {
        problems.push((
            AnomalyKind::WrongTotal,
            format!("total {total}, expected {initial_total}"),
            saturating_u64((total - initial_total).unsigned_abs()),
        ));
    }
    problems
}

fn saturating_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Transfers that may have taken effect in `[start, end]`, the most recent first kept, listed in
/// history order. Definitely failed transfers are never suspects. Linear in the transfers, so
/// callers only ask for anomalies that are kept.
fn suspects(transfers: &[TransferOp<'_>], start: u64, end: Option<u64>) -> Vec<u64> {
    let mut found: Vec<u64> = transfers
        .iter()
        .filter(|t| t.outcome != OpType::Fail && t.overlaps(start, end))
        .map(|t| t.invoke)
        .collect();
    if found.len() > SUSPECTS_MAX {
        found.drain(..found.len() - SUSPECTS_MAX);
    }
    found
}

/// Checks every ok read; returns the completion indices of the reads without problems, sorted.
/// Suspects are named only for the anomalies the result keeps (the first and the worst of each
/// kind), which keeps a badly broken long run near-linear to check.
fn check_reads(
    reads: &[ReadOp<'_>],
    transfers: &[TransferOp<'_>],
    input: &BankInput<'_>,
    initial_total: i128,
    result: &mut CheckerResult,
) -> Vec<u64> {
    let mut good_ends = Vec::new();
    let mut bad = Vec::new();
    for read in reads {
        let problems = balance_problems(read.balances, input.initial, initial_total);
        if problems.is_empty() {
            good_ends.push(read.completion);
        } else {
            bad.push((read, problems));
        }
    }
    good_ends.sort_unstable();
    for (read, problems) in bad {
        // The last read that was still right and had completed before this one began.
        let before = good_ends.partition_point(|&end| end < read.invoke);
        let window_start = before.checked_sub(1).map_or(0, |i| good_ends[i]);
        for (kind, what, badness) in problems {
            let mut ops = vec![read.invoke];
            if kind != AnomalyKind::WrongAccounts && result.keeps(kind, badness) {
                ops.extend(suspects(transfers, window_start, Some(read.completion)));
            }
            result.push_anomaly(Anomaly {
                kind,
                ops,
                key: None,
                message: format!(
                    "read #{} (completed #{}): {what}; the other ops are the transfers in flight since op #{window_start}",
                    read.invoke, read.completion
                ),
                badness,
            });
        }
    }
    good_ends
}

/// Compares the history's outcomes with the server's records; adds the acknowledged transfers
/// found lost to `lost`.
fn check_outcomes(
    transfers: &[TransferOp<'_>],
    outcomes: &BTreeMap<String, TransferOutcome>,
    details: &mut BankDetails,
    result: &mut CheckerResult,
    lost: &mut BTreeSet<u64>,
) {
    for t in transfers {
        let recorded = outcomes.get(&t.transfer.id).copied();
        match (t.outcome, recorded) {
            (OpType::Ok, None) => details.ok_outcome_missing += 1,
            (OpType::Ok, Some(TransferOutcome::Committed)) => {}
            (OpType::Ok, Some(other)) => {
                lost.insert(t.invoke);
                result.push_anomaly(Anomaly {
                    kind: AnomalyKind::LostTransfer,
                    ops: vec![t.invoke],
                    key: None,
                    message: format!(
                        "transfer {} (op #{}) was acknowledged ok, but the server records it as {other:?}",
                        t.transfer.id, t.invoke
                    ),
                    badness: t.transfer.amount,
                })
            }
            (OpType::Fail, Some(TransferOutcome::Committed)) => result.push_anomaly(Anomaly {
                kind: AnomalyKind::FailedTransferApplied,
                ops: vec![t.invoke],
                key: None,
                message: format!(
                    "transfer {} (op #{}) failed definitely, but the server records it as committed",
                    t.transfer.id, t.invoke
                ),
                badness: t.transfer.amount,
            }),
            (OpType::Fail, _) => {}
            (_, Some(TransferOutcome::Committed)) => details.info_committed += 1,
            (_, Some(_)) => details.info_not_applied += 1,
            (_, None) => details.info_outcome_unknown += 1,
        }
    }
}

/// The result of comparing the final balances with the transfers.
enum FinalVerdict {
    /// Explained, assuming these indeterminate transfers (invoke indices) were applied.
    Explained(Vec<u64>),
    Unknown(String),
    Anomaly(Anomaly),
}

/// Per-account vectors over the initial accounts, in key order.
struct Ledger<'a> {
    index: BTreeMap<&'a str, usize>,
}

impl<'a> Ledger<'a> {
    fn new(initial: &'a BTreeMap<String, u64>) -> Self {
        Ledger {
            index: initial
                .keys()
                .enumerate()
                .map(|(i, a)| (a.as_str(), i))
                .collect(),
        }
    }

    /// (from, to, amount) as positions; accounts were checked in `collect`.
    fn legs(&self, t: &Transfer) -> Option<(usize, usize, i128)> {
        Some((
            *self.index.get(t.from.as_str())?,
            *self.index.get(t.to.as_str())?,
            i128::from(t.amount),
        ))
    }
}

/// Whether the final balances are initial + the applied transfers (see the module doc).
fn explain_final(
    transfers: &[TransferOp<'_>],
    input: &BankInput<'_>,
    final_read: &FinalRead,
    options: &BankOptions,
) -> FinalVerdict {
    let ledger = Ledger::new(input.initial);
    let outcome_of = |t: &TransferOp<'_>| input.outcomes.get(&t.transfer.id).copied();
    // `diff` = final - (initial + net of the transfers known to be applied).
    let mut diff: Vec<i128> = input
        .initial
        .iter()
        .map(|(account, &initial)| {
            final_read
                .balances
                .get(account)
                .map_or(0, |&b| i128::from(b))
                - i128::from(initial)
        })
        .collect();
    let mut unknown: Vec<(TransferOp<'_>, (usize, usize, i128))> = Vec::new();
    for t in transfers {
        let Some(legs) = ledger.legs(t.transfer) else {
            continue;
        };
        let applied = match (t.outcome, outcome_of(t)) {
            (OpType::Ok, _) => true,
            (OpType::Fail, _) => false,
            (_, Some(TransferOutcome::Committed)) => true,
            (_, Some(_)) => false,
            (_, None) => {
                unknown.push((*t, legs));
                continue;
            }
        };
        if applied {
            let (from, to, amount) = legs;
            diff[from] += amount;
            diff[to] -= amount;
        }
    }
    // Larger amounts first: the capacity bound prunes sooner.
    unknown.sort_by(|a, b| b.1 .2.cmp(&a.1 .2).then(a.0.invoke.cmp(&b.0.invoke)));
    let legs: Vec<(usize, usize, i128)> = unknown.iter().map(|(_, l)| *l).collect();
    match find_subset(&diff, &legs, options.subset_steps_max) {
        Subset::Found(chosen) => {
            let mut applied: Vec<u64> = chosen.iter().map(|&i| unknown[i].0.invoke).collect();
            applied.sort_unstable();
            FinalVerdict::Explained(applied)
        }
        Subset::Budget => FinalVerdict::Unknown(format!(
            "the final balances differ from the determinate transfers, and no subset of the {} \
             indeterminate transfers was found to explain it within {} steps",
            legs.len(),
            options.subset_steps_max
        )),
        Subset::None => FinalVerdict::Anomaly(unexplained(transfers, input, &ledger, &diff)),
    }
}

/// Names the transfer behind an unexplainable difference, when one transfer accounts for it.
fn unexplained(
    transfers: &[TransferOp<'_>],
    input: &BankInput<'_>,
    ledger: &Ledger<'_>,
    diff: &[i128],
) -> Anomaly {
    let accounts: Vec<&str> = ledger.index.keys().copied().collect();
    let describe = accounts
        .iter()
        .zip(diff)
        .filter(|(_, d)| **d != 0)
        .map(|(a, d)| format!("{a}{d:+}"))
        .collect::<Vec<_>>()
        .join(", ");
    let net_is = |legs: (usize, usize, i128), sign: i128| {
        let (from, to, amount) = legs;
        diff.iter().enumerate().all(|(i, d)| {
            let expected = if i == from {
                -amount * sign
            } else if i == to {
                amount * sign
            } else {
                0
            };
            *d == expected
        })
    };
    for t in transfers {
        let Some(legs) = ledger.legs(t.transfer) else {
            continue;
        };
        let recorded = input.outcomes.get(&t.transfer.id).copied();
        let counted = t.outcome == OpType::Ok
            || (t.outcome != OpType::Fail && recorded == Some(TransferOutcome::Committed));
        let (kind, why) = if counted && net_is(legs, -1) {
            (AnomalyKind::LostTransfer, "is missing from them")
        } else if counted && net_is(legs, 1) {
            (AnomalyKind::DuplicateTransfer, "is applied twice in them")
        } else if !counted && net_is(legs, 1) {
            (
                AnomalyKind::FailedTransferApplied,
                "is applied in them, though it failed or was recorded as not applied",
            )
        } else {
            continue;
        };
        return Anomaly {
            kind,
            badness: t.transfer.amount,
            ops: vec![t.invoke],
            key: None,
            message: format!(
                "final balances differ from the transfers by {describe}: transfer {} (op #{}, {}) {why}",
                t.transfer.id,
                t.invoke,
                t.outcome.as_str()
            ),
        };
    }
    let touched: Vec<u64> = transfers
        .iter()
        .filter(|t| {
            ledger
                .legs(t.transfer)
                .is_some_and(|(from, to, _)| diff[from] != 0 || diff[to] != 0)
        })
        .map(|t| t.invoke)
        .take(UNEXPLAINED_OPS_MAX)
        .collect();
    Anomaly {
        kind: AnomalyKind::UnexplainedFinalBalances,
        badness: saturating_u64(diff.iter().map(|d| d.unsigned_abs()).sum()),
        ops: touched,
        key: None,
        message: format!(
            "final balances differ from initial + applied transfers by {describe}, and no choice of \
             the indeterminate transfers explains it; the ops are transfers touching those accounts"
        ),
    }
}

enum Subset {
    /// Positions of the chosen items.
    Found(Vec<usize>),
    None,
    Budget,
}

/// Finds a subset of `items` (from, to, amount) whose net equals `target`: each chosen item
/// adds `amount` to `to` and takes it from `from`. Depth-first, include before exclude,
/// iterative (no recursion depth limit), pruned by the remaining capacity: items `i..` can
/// change the L1 norm of what remains by at most 2 × their amounts.
fn find_subset(target: &[i128], items: &[(usize, usize, i128)], steps_max: u64) -> Subset {
    let mut remaining = target.to_vec();
    let mut l1: i128 = remaining.iter().map(|d| d.abs()).sum();
    let mut capacity = vec![0i128; items.len() + 1];
    for i in (0..items.len()).rev() {
        capacity[i] = capacity[i + 1] + 2 * items[i].2;
    }
    let apply =
        |remaining: &mut Vec<i128>, l1: &mut i128, item: (usize, usize, i128), sign: i128| {
            let (from, to, amount) = item;
            for (account, delta) in [(from, -amount * sign), (to, amount * sign)] {
                *l1 -= remaining[account].abs();
                remaining[account] -= delta;
                *l1 += remaining[account].abs();
            }
        };
    // decisions[i] = whether item i is included, for the items decided so far.
    let mut decisions: Vec<bool> = Vec::with_capacity(items.len());
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > steps_max {
            return Subset::Budget;
        }
        if l1 == 0 {
            let chosen = decisions
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| d.then_some(i))
                .collect();
            return Subset::Found(chosen);
        }
        let next = decisions.len();
        if next < items.len() && l1 <= capacity[next] {
            apply(&mut remaining, &mut l1, items[next], 1);
            decisions.push(true);
            continue;
        }
        // Backtrack to the last included item and exclude it instead.
        loop {
            match decisions.pop() {
                None => return Subset::None,
                Some(true) => {
                    let i = decisions.len();
                    apply(&mut remaining, &mut l1, items[i], -1);
                    decisions.push(false);
                    break;
                }
                Some(false) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::*;
    use crate::history::OpType::{Fail, Info, Ok};

    fn initial(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), *b)).collect()
    }

    fn final_read(pairs: &[(&str, i64)]) -> FinalRead {
        FinalRead {
            balances: pairs.iter().map(|(a, b)| ((*a).to_owned(), *b)).collect(),
            node: None,
        }
    }

    fn outcomes(pairs: &[(&str, TransferOutcome)]) -> BTreeMap<String, TransferOutcome> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), *b)).collect()
    }

    fn run(
        history: &History,
        mode: BankMode,
        initial: &BTreeMap<String, u64>,
        final_read: Option<&FinalRead>,
        outcomes: &BTreeMap<String, TransferOutcome>,
    ) -> CheckerResult {
        let input = BankInput {
            mode,
            initial,
            final_read,
            outcomes,
        };
        check(history, &input, &BankOptions::default()).expect("check")
    }

    fn kinds(result: &CheckerResult) -> Vec<AnomalyKind> {
        result.emitted.iter().map(|a| a.kind).collect()
    }

    /// Concurrent transfers and reads, an info transfer the server committed, one with no
    /// recorded outcome, and a definite failure.
    fn valid_history() -> History {
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 3));
        b.invoke(1, Call::ReadAll(None));
        b.invoke(2, transfer("t2", "b", "c", 5));
        b.complete(0, Ok, transfer("t1", "a", "b", 3));
        b.invoke(3, transfer("t3", "a", "c", 2));
        b.complete(1, Ok, read_all(&[("a", 7), ("b", 13), ("c", 0)]));
        b.invoke(4, transfer("t4", "c", "a", 100));
        b.complete(4, Fail, transfer("t4", "c", "a", 100));
        b.complete(2, Info, transfer("t2", "b", "c", 5));
        b.invoke(5, Call::ReadAll(None));
        b.complete(5, Ok, read_all(&[("a", 5), ("b", 8), ("c", 7)]));
        b.complete(3, Info, transfer("t3", "a", "c", 2));
        b.history()
    }

    #[test]
    fn a_valid_history_with_concurrency_and_info_ops_passes() {
        let history = valid_history();
        let init = initial(&[("a", 10), ("b", 10), ("c", 0)]);
        let recorded = outcomes(&[
            ("t1", TransferOutcome::Committed),
            ("t3", TransferOutcome::Committed),
            ("t4", TransferOutcome::Rejected),
        ]);
        // t2 has no recorded outcome; the final balances say it was applied.
        let fin = final_read(&[("a", 5), ("b", 8), ("c", 7)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(result.valid, Validity::Valid, "{result:?}");
        let Details::Bank(details) = &result.details else {
            panic!("bank details")
        };
        assert_eq!(details.unknown_transfers_applied, vec![2]);
        assert!(details.final_explained);
        assert_eq!(details.acknowledged_lost, 0);
        assert_eq!(details.info_committed, 1);
        assert_eq!(details.info_outcome_unknown, 1);

        // Equally valid if t2 never happened.
        let fin = final_read(&[("a", 5), ("b", 13), ("c", 2)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(result.valid, Validity::Valid, "{result:?}");
    }

    #[test]
    fn double_spend_is_detected_by_reads_and_final_state() {
        // a holds 10 and both transfers of 10 are acknowledged.
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 10));
        b.invoke(1, transfer("t2", "a", "c", 10));
        b.complete(0, Ok, transfer("t1", "a", "b", 10));
        b.complete(1, Ok, transfer("t2", "a", "c", 10));
        b.invoke(2, Call::ReadAll(None));
        b.complete(2, Ok, read_all(&[("a", -10), ("b", 10), ("c", 10)]));
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 0), ("c", 0)]);
        let recorded = outcomes(&[
            ("t1", TransferOutcome::Committed),
            ("t2", TransferOutcome::Committed),
        ]);
        let fin = final_read(&[("a", -10), ("b", 10), ("c", 10)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(result.valid, Validity::Invalid);
        let read_anomaly = &result.emitted[0];
        assert_eq!(read_anomaly.kind, AnomalyKind::NegativeBalance);
        assert_eq!(
            read_anomaly.ops,
            vec![4, 0, 1],
            "the read, then both transfers"
        );
        assert!(
            kinds(&result)
                .iter()
                .filter(|k| **k == AnomalyKind::NegativeBalance)
                .count()
                == 2
        );
    }

    #[test]
    fn blind_write_double_spend_breaks_the_total_and_names_the_writers() {
        // Both clients read a=10 (stale) and write back a=0 plus their credit.
        let mut b = Builder::default();
        b.invoke(0, Call::ReadAll(None));
        b.complete(0, Ok, read_all(&[("a", 10), ("b", 0), ("c", 0)]));
        b.invoke(1, transfer("t1", "a", "b", 10));
        b.invoke(2, transfer("t2", "a", "c", 10));
        b.complete(1, Ok, transfer("t1", "a", "b", 10));
        b.complete(2, Ok, transfer("t2", "a", "c", 10));
        b.invoke(0, Call::ReadAll(None));
        b.complete(0, Ok, read_all(&[("a", 0), ("b", 10), ("c", 10)]));
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 0), ("c", 0)]);
        let fin = final_read(&[("a", 0), ("b", 10), ("c", 10)]);
        let none = BTreeMap::new();
        let result = run(&history, BankMode::BlindWrites, &init, Some(&fin), &none);
        assert_eq!(result.valid, Validity::Invalid);
        assert_eq!(
            kinds(&result),
            vec![AnomalyKind::WrongTotal, AnomalyKind::WrongTotal]
        );
        assert_eq!(result.emitted[0].ops, vec![6, 2, 3]);
        assert_eq!(
            result.emitted[1].ops,
            vec![2, 3],
            "final read names the suspects"
        );
    }

    #[test]
    fn lost_acknowledged_transfer_is_detected() {
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 5));
        b.complete(0, Ok, transfer("t1", "a", "b", 5));
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 10)]);
        let fin = final_read(&[("a", 10), ("b", 10)]);
        let recorded = outcomes(&[("t1", TransferOutcome::NotFound)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(
            kinds(&result),
            vec![AnomalyKind::LostTransfer, AnomalyKind::LostTransfer]
        );
        assert!(result.emitted.iter().all(|a| a.ops == vec![0]));
        let Details::Bank(details) = &result.details else {
            panic!("bank details")
        };
        assert_eq!(
            details.acknowledged_lost, 1,
            "one transfer, found lost twice"
        );
        assert!(!details.final_explained);

        // Even without the outcome lookup, the final balances give it away.
        let result = run(
            &history,
            BankMode::Transfers,
            &init,
            Some(&fin),
            &BTreeMap::new(),
        );
        assert_eq!(kinds(&result), vec![AnomalyKind::LostTransfer]);
    }

    #[test]
    fn failed_transfer_applied_and_doubled_transfer_are_detected() {
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 4));
        b.complete(0, Fail, transfer("t1", "a", "b", 4));
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 10)]);
        let fin = final_read(&[("a", 6), ("b", 14)]);
        let recorded = outcomes(&[("t1", TransferOutcome::Committed)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(
            kinds(&result),
            vec![
                AnomalyKind::FailedTransferApplied,
                AnomalyKind::FailedTransferApplied
            ]
        );

        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 3));
        b.complete(0, Ok, transfer("t1", "a", "b", 3));
        let history = b.history();
        let fin = final_read(&[("a", 4), ("b", 16)]);
        let recorded = outcomes(&[("t1", TransferOutcome::Committed)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &recorded);
        assert_eq!(kinds(&result), vec![AnomalyKind::DuplicateTransfer]);
        assert_eq!(result.emitted[0].ops, vec![0]);
    }

    #[test]
    fn unexplainable_final_balances_are_invalid_and_budget_gives_unknown() {
        let mut b = Builder::default();
        for (p, id) in ["t0", "t1", "t2", "t3"].iter().enumerate() {
            b.invoke(p as u64, transfer(id, "a", "b", 2));
            b.complete(p as u64, Info, transfer(id, "a", "b", 2));
        }
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 10)]);
        // Moving 3 is not a sum of 2s.
        let fin = final_read(&[("a", 7), ("b", 13)]);
        let none = BTreeMap::new();
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &none);
        assert_eq!(kinds(&result), vec![AnomalyKind::UnexplainedFinalBalances]);
        assert_eq!(result.emitted[0].ops, vec![0, 2, 4, 6]);

        // Moving 4: two of them.
        let fin = final_read(&[("a", 6), ("b", 14)]);
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &none);
        assert_eq!(result.valid, Validity::Valid);

        // The same question with too small a budget is unknown, never valid.
        let fin = final_read(&[("a", 7), ("b", 13)]);
        let input = BankInput {
            mode: BankMode::Transfers,
            initial: &init,
            final_read: Some(&fin),
            outcomes: &none,
        };
        let tiny = BankOptions {
            subset_steps_max: 2,
        };
        let result = check(&history, &input, &tiny).expect("check");
        assert_eq!(result.valid, Validity::Unknown);
    }

    #[test]
    fn missing_final_read_is_unknown_and_unknown_accounts_are_errors() {
        let history = valid_history();
        let init = initial(&[("a", 10), ("b", 10), ("c", 0)]);
        let none = BTreeMap::new();
        let result = run(&history, BankMode::Transfers, &init, None, &none);
        assert_eq!(result.valid, Validity::Unknown);

        let init = initial(&[("a", 10), ("b", 10)]);
        let input = BankInput {
            mode: BankMode::Transfers,
            initial: &init,
            final_read: None,
            outcomes: &none,
        };
        assert!(matches!(
            check(&history, &input, &BankOptions::default()),
            Err(BankError::UnknownAccount { .. })
        ));
    }

    #[test]
    fn reads_with_wrong_accounts_are_flagged() {
        let mut b = Builder::default();
        b.invoke(0, Call::ReadAll(None));
        b.complete(0, Ok, read_all(&[("a", 10), ("z", 10)]));
        let history = b.history();
        let init = initial(&[("a", 10), ("b", 10)]);
        let fin = final_read(&[("a", 10), ("b", 10)]);
        let none = BTreeMap::new();
        let result = run(&history, BankMode::Transfers, &init, Some(&fin), &none);
        assert_eq!(kinds(&result), vec![AnomalyKind::WrongAccounts]);
        assert_eq!(result.emitted[0].ops, vec![0]);
    }

    #[test]
    fn subset_search_finds_exact_combinations() {
        // Accounts 0,1,2. Items move 5 (0→1), 3 (1→2), 2 (0→2).
        let items = [(0, 1, 5), (1, 2, 3), (0, 2, 2)];
        let target = [-7, 5, 2]; // 5 + 2
        match find_subset(&target, &items, 1_000) {
            Subset::Found(chosen) => assert_eq!(chosen, vec![0, 2]),
            _ => panic!("must find"),
        }
        assert!(matches!(
            find_subset(&[-1, 1, 0], &items, 1_000),
            Subset::None
        ));
        assert!(matches!(find_subset(&[0, 0, 0], &items, 1), Subset::Found(c) if c.is_empty()));
    }
}
