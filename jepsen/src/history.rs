//! The op model of a test history and its JSONL form (`history.jsonl`, one op per line).
//!
//! Owns: [`Op`] (one event: an invocation or a completion), [`Call`] (the typed `f` + `value`
//! pair), [`History`] (a validated list of ops with its invoke/completion pairing) and
//! [`Recorder`] (how the runner appends ops with indices and monotonic timestamps).
//!
//! Invariants that [`History::new`] enforces (a violation is a harness bug, never an anomaly of the
//! system under test, so it is a [`HistoryError`]):
//! - `ops[i].index == i`, and `time_ns` never decreases with the index (one monotonic clock).
//! - Client processes alternate invoke → completion. A completion without an open invoke, or a
//!   second invoke while one is open, is an error. A completion repeats its invoke's `f` and
//!   request (key, written value, transfer), so the checkers may read either.
//! - After an `info` completion a process never invokes again (Jepsen's rule: its op stays open
//!   for the rest of the history, so the runner continues under a fresh process id).
//! - Nemesis ops are single `info` events with a nemesis `f`; clients never use a nemesis `f`.
//! - An invoke with no completion by the end is treated exactly like an `info` completion.
//!
//! Leaves out: what the values mean (the checkers), how ops are produced (the runner).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::nemesis::FaultEvent;

/// The most ops one history may hold. Past this the [`Recorder`] refuses new ops and the loader
/// refuses the file: a run at 500 ops/s for an hour is 1.8 M ops, so this is generous, and it
/// keeps a corrupt or runaway file from exhausting memory.
pub const HISTORY_OPS_MAX: usize = 20_000_000;

/// The longest accepted JSONL line, in bytes. A bank read of many accounts is the largest op.
pub const HISTORY_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Who performed an op: a client worker (a fresh id after each `info`) or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ProcessRepr", into = "ProcessRepr")]
pub enum Process {
    Client(u64),
    Nemesis,
}

/// The JSON shape of [`Process`]: a number, or the string `"nemesis"`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProcessRepr {
    Id(u64),
    Name(String),
}

impl TryFrom<ProcessRepr> for Process {
    type Error = String;
    fn try_from(repr: ProcessRepr) -> Result<Self, Self::Error> {
        match repr {
            ProcessRepr::Id(id) => Ok(Process::Client(id)),
            ProcessRepr::Name(name) if name == "nemesis" => Ok(Process::Nemesis),
            ProcessRepr::Name(name) => Err(format!("unknown process {name:?}")),
        }
    }
}

impl From<Process> for ProcessRepr {
    fn from(process: Process) -> Self {
        match process {
            Process::Client(id) => ProcessRepr::Id(id),
            Process::Nemesis => ProcessRepr::Name("nemesis".to_owned()),
        }
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Client(id) => write!(f, "{id}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

/// Jepsen's op types. `Ok`: it definitely happened; `Fail`: it definitely did not; `Info`: unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl OpType {
    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }
}

/// Balances by account id. Signed, so a read can show a negative balance (only possible in the
/// unsafe blind-write mode, or through a bug), which the bank checker then reports.
pub type Balances = BTreeMap<String, i64>;

/// A bank transfer as the client sent it. The id is unique per test (it is the idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
}

/// A register read: on the invoke `value` is null; on an ok completion it is what was read
/// (null = the key was absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRead {
    pub key: String,
    pub value: Option<u64>,
}

/// A blind register write of `value` to `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWrite {
    pub key: String,
    pub value: u64,
}

/// Compare-and-swap: set `key` to `to` iff it currently holds `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCas {
    pub key: String,
    pub from: u64,
    pub to: u64,
}

/// The typed `f` and `value` of an op; serialized as the two JSON fields `"f"` and `"value"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "kebab-case")]
pub enum Call {
    /// Register read (register workload).
    Read(RegisterRead),
    /// Register write.
    Write(RegisterWrite),
    /// Register compare-and-swap.
    Cas(RegisterCas),
    /// Bank transfer (or, in the unsafe mode, the client-side read-modify-write standing for one).
    Transfer(Transfer),
    /// Bank read of every balance in one snapshot: null on the invoke, the balances when ok.
    ReadAll(Option<Balances>),
    /// The nemesis started a fault.
    StartFault(FaultEvent),
    /// The nemesis healed a fault.
    StopFault(FaultEvent),
}

impl Call {
    /// The `f` name as written in the JSON.
    pub fn f(&self) -> &'static str {
        match self {
            Call::Read(_) => "read",
            Call::Write(_) => "write",
            Call::Cas(_) => "cas",
            Call::Transfer(_) => "transfer",
            Call::ReadAll(_) => "read-all",
            Call::StartFault(_) => "start-fault",
            Call::StopFault(_) => "stop-fault",
        }
    }

    pub fn is_nemesis(&self) -> bool {
        matches!(self, Call::StartFault(_) | Call::StopFault(_))
    }

    /// The register key, for register ops.
    pub fn register_key(&self) -> Option<&str> {
        match self {
            Call::Read(r) => Some(&r.key),
            Call::Write(w) => Some(&w.key),
            Call::Cas(c) => Some(&c.key),
            _ => None,
        }
    }

    /// Whether `completion` repeats this invoke's request. Reads may differ in the value read.
    fn same_request(&self, completion: &Call) -> bool {
        match (self, completion) {
            (Call::Read(a), Call::Read(b)) => a.key == b.key,
            (Call::ReadAll(_), Call::ReadAll(_)) => true,
            (a, b) => a == b,
        }
    }
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: OpType,
    #[serde(flatten)]
    pub call: Call,
    /// Nanoseconds since the test started, from one monotonic clock in the harness.
    pub time_ns: u64,
    /// The node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why a completion failed or is indeterminate (the API error code, a timeout, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A harness bug found in a history: the history cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("op at position {position} has index {index}")]
    IndexMismatch { position: usize, index: u64 },
    #[error("op {index}: time {time_ns} ns is before the previous op's {previous_ns} ns")]
    TimeWentBack {
        index: u64,
        time_ns: u64,
        previous_ns: u64,
    },
    #[error("op {index}: completion from process {process} which has no open invoke")]
    UnpairedCompletion { index: u64, process: Process },
    #[error("op {index}: process {process} invoked again while op {open} is still open")]
    DoubleInvoke {
        index: u64,
        process: Process,
        open: u64,
    },
    #[error("op {index}: process {process} invoked again after its op {info} ended as info")]
    InvokeAfterInfo {
        index: u64,
        process: Process,
        info: u64,
    },
    #[error("op {index}: completion does not repeat the request of invoke {invoke}")]
    CompletionMismatch { index: u64, invoke: u64 },
    #[error("op {index}: f {f:?} with type {kind:?} is not allowed for process {process}")]
    WrongProcessKind {
        index: u64,
        process: Process,
        f: &'static str,
        kind: OpType,
    },
    #[error("op {index}: transfer id {id:?} was already used by op {first}")]
    DuplicateTransferId { index: u64, id: String, first: u64 },
    #[error("history has more than {HISTORY_OPS_MAX} ops")]
    TooManyOps,
    #[error("history line {line}: longer than {HISTORY_LINE_BYTES_MAX} bytes")]
    LineTooLong { line: usize },
    #[error("history line {line}: {source}")]
    Parse {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("history i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("history serialization: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// An invoke and its completion, as positions in [`History::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub invoke: usize,
    /// None: the op never completed, which counts as `info`.
    pub completion: Option<usize>,
}

/// A borrowed view of a [`Pair`].
#[derive(Debug, Clone, Copy)]
pub struct PairRef<'a> {
    pub invoke: &'a Op,
    pub completion: Option<&'a Op>,
}

impl<'a> PairRef<'a> {
    /// `Ok`, `Fail` or `Info` (a missing completion is `Info`).
    pub fn outcome(&self) -> OpType {
        self.completion.map_or(OpType::Info, |c| c.kind)
    }

    /// The completion's call when there is one (it carries read results), else the invoke's.
    pub fn call(&self) -> &'a Call {
        self.completion.map_or(&self.invoke.call, |c| &c.call)
    }

    pub fn start_ns(&self) -> u64 {
        self.invoke.time_ns
    }

    /// When the op was known to have ended; None for `info`, which stays open forever.
    pub fn end_ns(&self) -> Option<u64> {
        match self.completion {
            Some(c) if c.kind != OpType::Info => Some(c.time_ns),
            _ => None,
        }
    }

    /// The completion's index, or None for an op that never completed.
    pub fn completion_index(&self) -> Option<u64> {
        self.completion.map(|c| c.index)
    }
}

/// A validated history: see the module doc for what that guarantees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
    pairs: Vec<Pair>,
}

impl History {
    /// Validates `ops` and pairs every client invoke with its completion.
    pub fn new(ops: Vec<Op>) -> Result<Self, HistoryError> {
        if ops.len() > HISTORY_OPS_MAX {
            return Err(HistoryError::TooManyOps);
        }
        let pairs = pair_ops(&ops)?;
        Ok(History { ops, pairs })
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Client invoke/completion pairs in invoke order. Nemesis ops are not paired.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    pub fn pair_refs(&self) -> impl Iterator<Item = PairRef<'_>> + '_ {
        self.pairs.iter().map(|p| PairRef {
            invoke: &self.ops[p.invoke],
            completion: p.completion.map(|c| &self.ops[c]),
        })
    }

    /// The nemesis ops, in order.
    pub fn nemesis_ops(&self) -> impl Iterator<Item = &Op> + '_ {
        self.ops.iter().filter(|op| op.process == Process::Nemesis)
    }

    /// Time of the last op (0 for an empty history).
    pub fn end_ns(&self) -> u64 {
        self.ops.last().map_or(0, |op| op.time_ns)
    }

    /// Parses JSONL (blank lines are skipped) and validates.
    pub fn read_jsonl(reader: impl BufRead) -> Result<Self, HistoryError> {
        let mut ops = Vec::new();
        for (number, line) in reader.lines().enumerate() {
            let line = line?;
            let line_number = number + 1;
            if line.len() > HISTORY_LINE_BYTES_MAX {
                return Err(HistoryError::LineTooLong { line: line_number });
            }
            if line.trim().is_empty() {
                continue;
            }
            if ops.len() == HISTORY_OPS_MAX {
                return Err(HistoryError::TooManyOps);
            }
            let op: Op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: line_number,
                source,
            })?;
            ops.push(op);
        }
        History::new(ops)
    }

    /// Writes one JSON object per line.
    pub fn write_jsonl(&self, mut writer: impl Write) -> Result<(), HistoryError> {
        for op in &self.ops {
            serde_json::to_writer(&mut writer, op).map_err(HistoryError::Serialize)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(())
    }
}

fn check_process_kind(op: &Op) -> Result<(), HistoryError> {
    let allowed = match op.process {
        Process::Nemesis => op.call.is_nemesis() && op.kind == OpType::Info,
        Process::Client(_) => !op.call.is_nemesis(),
    };
    if allowed {
        Ok(())
    } else {
        Err(HistoryError::WrongProcessKind {
            index: op.index,
            process: op.process,
            f: op.call.f(),
            kind: op.kind,
        })
    }
}

/// The per-process pairing state machine behind [`History::new`].
fn pair_ops(ops: &[Op]) -> Result<Vec<Pair>, HistoryError> {
    // Open invoke per process: its position in `ops` and its position in `pairs`.
    let mut open: HashMap<Process, (usize, usize)> = HashMap::new();
    let mut retired: HashMap<Process, u64> = HashMap::new();
    let mut transfer_ids: HashMap<&str, u64> = HashMap::new();
    let mut pairs = Vec::new();
    let mut previous_ns = 0;
    for (position, op) in ops.iter().enumerate() {
        if op.index != position as u64 {
            return Err(HistoryError::IndexMismatch {
                position,
                index: op.index,
            });
        }
        if op.time_ns < previous_ns {
            return Err(HistoryError::TimeWentBack {
                index: op.index,
                time_ns: op.time_ns,
                previous_ns,
            });
        }
        previous_ns = op.time_ns;
        check_process_kind(op)?;
        if op.process == Process::Nemesis {
            continue;
        }
        if op.kind == OpType::Invoke {
            if let Some(&info) = retired.get(&op.process) {
                return Err(HistoryError::InvokeAfterInfo {
                    index: op.index,
                    process: op.process,
                    info,
                });
            }
            if let Some(&(open_position, _)) = open.get(&op.process) {
                return Err(HistoryError::DoubleInvoke {
                    index: op.index,
                    process: op.process,
                    open: open_position as u64,
                });
            }
            if let Call::Transfer(transfer) = &op.call {
                if let Some(&first) = transfer_ids.get(transfer.id.as_str()) {
                    return Err(HistoryError::DuplicateTransferId {
                        index: op.index,
                        id: transfer.id.clone(),
                        first,
                    });
                }
                transfer_ids.insert(&transfer.id, op.index);
            }
            open.insert(op.process, (position, pairs.len()));
            pairs.push(Pair {
                invoke: position,
                completion: None,
            });
            continue;
        }
        let Some((invoke_position, pair_position)) = open.remove(&op.process) else {
            return Err(HistoryError::UnpairedCompletion {
                index: op.index,
                process: op.process,
            });
        };
        if !ops[invoke_position].call.same_request(&op.call) {
            return Err(HistoryError::CompletionMismatch {
                index: op.index,
                invoke: invoke_position as u64,
            });
        }
        pairs[pair_position].completion = Some(position);
        if op.kind == OpType::Info {
            retired.insert(op.process, op.index);
        }
    }
    Ok(pairs)
}

/// Errors of the [`Recorder`].
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("the history is full ({HISTORY_OPS_MAX} ops)")]
    Full,
    #[error("the recorder's lock was poisoned by a panicking worker")]
    Poisoned,
}

/// Appends ops from many workers. Index and timestamp are taken under one lock, so index order
/// is time order, which the linearizability checker relies on.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// Starts the test clock now.
    pub fn new() -> Self {
        Self::with_start(Instant::now())
    }

    pub fn with_start(start: Instant) -> Self {
        Recorder {
            start,
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The instant that `time_ns` counts from.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records one op and returns its index.
    pub fn record(
        &self,
        process: Process,
        kind: OpType,
        call: Call,
        node: Option<String>,
        error: Option<String>,
    ) -> Result<u64, RecorderError> {
        let mut ops = self.ops.lock().map_err(|_| RecorderError::Poisoned)?;
        if ops.len() >= HISTORY_OPS_MAX {
            return Err(RecorderError::Full);
        }
        let index = ops.len() as u64;
        // Saturate rather than wrap: u64 nanoseconds last 584 years.
        let time_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        ops.push(Op {
            index,
            process,
            kind,
            call,
            time_ns,
            node,
            error,
        });
        Ok(index)
    }

    /// Runs `f` over the ops recorded so far (under the lock: keep it short).
    pub fn with_ops<T>(&self, f: impl FnOnce(&[Op]) -> T) -> Result<T, RecorderError> {
        let ops = self.ops.lock().map_err(|_| RecorderError::Poisoned)?;
        Ok(f(&ops))
    }

    /// How many ops were recorded so far (for the progress display).
    pub fn len(&self) -> usize {
        self.ops.lock().map_or(0, |ops| ops.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends recording and validates the result.
    pub fn finish(self) -> Result<History, HistoryError> {
        let ops = self
            .ops
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        History::new(ops)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds histories by hand in tests: `time_ns` is the index times 1000.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    #[derive(Default)]
    pub struct Builder {
        pub ops: Vec<Op>,
    }

    impl Builder {
        pub fn push(&mut self, process: Process, kind: OpType, call: Call) -> u64 {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                process,
                kind,
                call,
                time_ns: index * 1000,
                node: Some("n1".to_owned()),
                error: None,
            });
            index
        }
        pub fn invoke(&mut self, process: u64, call: Call) -> u64 {
            self.push(Process::Client(process), OpType::Invoke, call)
        }
        pub fn complete(&mut self, process: u64, kind: OpType, call: Call) -> u64 {
            self.push(Process::Client(process), kind, call)
        }
        pub fn history(self) -> History {
            History::new(self.ops).expect("hand-written history is valid")
        }
    }

    pub fn read(key: &str, value: Option<u64>) -> Call {
        Call::Read(RegisterRead {
            key: key.to_owned(),
            value,
        })
    }
    pub fn write(key: &str, value: u64) -> Call {
        Call::Write(RegisterWrite {
            key: key.to_owned(),
            value,
        })
    }
    pub fn cas(key: &str, from: u64, to: u64) -> Call {
        Call::Cas(RegisterCas {
            key: key.to_owned(),
            from,
            to,
        })
    }
    pub fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Call {
        Call::Transfer(Transfer {
            id: id.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            amount,
        })
    }
    pub fn read_all(balances: &[(&str, i64)]) -> Call {
        Call::ReadAll(Some(
            balances
                .iter()
                .map(|(a, b)| ((*a).to_owned(), *b))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::nemesis::{Fault, FaultEvent, Target};

    fn sample() -> History {
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 5));
        b.invoke(1, Call::ReadAll(None));
        b.complete(0, OpType::Ok, transfer("t1", "a", "b", 5));
        b.push(
            Process::Nemesis,
            OpType::Info,
            Call::StartFault(FaultEvent {
                interval: 0,
                fault: Fault::Kill {
                    target: Target::Nodes(vec!["n2".to_owned()]),
                },
                detail: None,
                skipped: false,
            }),
        );
        b.complete(1, OpType::Ok, read_all(&[("a", 5), ("b", 5)]));
        b.invoke(2, read("k", None));
        b.complete(2, OpType::Ok, read("k", Some(3)));
        b.invoke(3, cas("k", 3, 4));
        b.complete(3, OpType::Info, cas("k", 3, 4));
        b.invoke(4, write("k", 1));
        b.history()
    }

    #[test]
    fn jsonl_round_trips() {
        let history = sample();
        let mut out = Vec::new();
        history.write_jsonl(&mut out).expect("write");
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(text.contains(r#""process":"nemesis""#), "{text}");
        assert!(text.contains(r#""f":"read-all""#), "{text}");
        assert!(text.contains(r#""type":"invoke""#), "{text}");
        let back = History::read_jsonl(out.as_slice()).expect("read");
        assert_eq!(back, history);
    }

    #[test]
    fn pairs_and_open_invokes() {
        let history = sample();
        let pairs: Vec<_> = history.pair_refs().collect();
        assert_eq!(pairs.len(), 5);
        assert_eq!(pairs[0].outcome(), OpType::Ok);
        assert_eq!(pairs[1].call(), &read_all(&[("a", 5), ("b", 5)]));
        assert_eq!(pairs[3].outcome(), OpType::Info);
        assert_eq!(pairs[3].end_ns(), None);
        // The last write never completed: it counts as info.
        assert_eq!(pairs[4].completion, None);
        assert_eq!(pairs[4].outcome(), OpType::Info);
    }

    #[test]
    fn unpaired_completion_is_a_harness_error() {
        let mut b = Builder::default();
        b.complete(7, OpType::Ok, read("k", None));
        let err = History::new(b.ops).expect_err("must fail");
        assert!(matches!(
            err,
            HistoryError::UnpairedCompletion { index: 0, .. }
        ));
    }

    #[test]
    fn double_invoke_and_reuse_after_info_are_errors() {
        let mut b = Builder::default();
        b.invoke(1, read("k", None));
        b.invoke(1, read("k", None));
        assert!(matches!(
            History::new(b.ops),
            Err(HistoryError::DoubleInvoke { .. })
        ));

        let mut b = Builder::default();
        b.invoke(1, write("k", 1));
        b.complete(1, OpType::Info, write("k", 1));
        b.invoke(1, read("k", None));
        assert!(matches!(
            History::new(b.ops),
            Err(HistoryError::InvokeAfterInfo { .. })
        ));
    }

    #[test]
    fn completion_must_repeat_the_request() {
        let mut b = Builder::default();
        b.invoke(1, write("k", 1));
        b.complete(1, OpType::Ok, write("k", 2));
        assert!(matches!(
            History::new(b.ops),
            Err(HistoryError::CompletionMismatch { .. })
        ));
    }

    #[test]
    fn duplicate_transfer_ids_and_bad_lines_are_errors() {
        let mut b = Builder::default();
        b.invoke(1, transfer("t", "a", "b", 1));
        b.complete(1, OpType::Fail, transfer("t", "a", "b", 1));
        b.invoke(1, transfer("t", "a", "b", 1));
        assert!(matches!(
            History::new(b.ops),
            Err(HistoryError::DuplicateTransferId { .. })
        ));

        let text = "{\"index\":0,\"process\":\"ghost\",\"type\":\"invoke\",\"f\":\"read\",\"value\":{\"key\":\"k\",\"value\":null},\"time_ns\":0}\n";
        assert!(matches!(
            History::read_jsonl(text.as_bytes()),
            Err(HistoryError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn time_must_not_go_back_and_indices_must_match() {
        let mut b = Builder::default();
        b.invoke(1, read("k", None));
        b.complete(1, OpType::Ok, read("k", None));
        b.ops[1].time_ns = 0;
        b.ops[0].time_ns = 5;
        assert!(matches!(
            History::new(b.ops.clone()),
            Err(HistoryError::TimeWentBack { .. })
        ));
        b.ops[0].time_ns = 0;
        b.ops[1].index = 9;
        assert!(matches!(
            History::new(b.ops),
            Err(HistoryError::IndexMismatch { .. })
        ));
    }

    #[test]
    fn recorder_assigns_indices_in_time_order() {
        let recorder = Recorder::new();
        let first = recorder
            .record(
                Process::Client(0),
                OpType::Invoke,
                write("k", 1),
                None,
                None,
            )
            .expect("record");
        let second = recorder
            .record(
                Process::Client(0),
                OpType::Ok,
                write("k", 1),
                Some("n1".into()),
                None,
            )
            .expect("record");
        assert_eq!((first, second), (0, 1));
        let history = recorder.finish().expect("valid");
        assert!(history.ops()[0].time_ns <= history.ops()[1].time_ns);
        assert_eq!(history.pairs().len(), 1);
    }
}
