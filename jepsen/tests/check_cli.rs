//! `metrokv-jepsen check DIR` end to end: files in, exit code and rewritten files out.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metrokv_jepsen::checker::bank::{BankMode, FinalRead, TransferOutcome};
use metrokv_jepsen::checker::Results;
use metrokv_jepsen::history::{
    Call, History, Op, OpType, Process, RegisterRead, RegisterWrite, Transfer,
};
use metrokv_jepsen::nemesis::Topology;
use metrokv_jepsen::record::{
    BankRecord, RegisterRecord, RunOptions, TestRecord, Workload, TEST_RECORD_FORMAT,
};
use metrokv_jepsen::report;

/// A check of these tiny histories that has not ended after this is hung: a guard against a
/// test that never ends, not a performance threshold.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(20);

/// Runs the binary and returns its exit code, killing it past the timeout.
fn run_check(dir: &Path) -> i32 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrokv-jepsen"))
        .arg("check")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + CHECK_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().expect("exit code");
        }
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("check did not finish within {CHECK_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn op(index: u64, process: u64, kind: OpType, call: Call) -> Op {
    Op {
        index,
        process: Process::Client(process),
        kind,
        call,
        time_ns: index * 1_000_000,
        node: Some("n1".to_owned()),
        error: None,
    }
}

fn transfer(id: &str, amount: u64) -> Call {
    Call::Transfer(Transfer {
        id: id.to_owned(),
        from: "a".to_owned(),
        to: "b".to_owned(),
        amount,
    })
}

fn record(workload: Workload) -> TestRecord {
    TestRecord {
        format: TEST_RECORD_FORMAT,
        workloads: vec![workload],
        seed: 1,
        options: RunOptions {
            nodes: 3,
            time_limit_s: 1,
            rate: 10.0,
            concurrency: 2,
            nemeses: Vec::new(),
            settings: BTreeMap::new(),
        },
        git_sha: None,
        topology: Topology::default_for(3).expect("topology"),
        schedule: Vec::new(),
        kill_loop: Vec::new(),
        bank: None,
        register: None,
    }
}

fn bank_record(final_balances: Option<[i64; 2]>) -> TestRecord {
    let mut record = record(Workload::Bank);
    record.bank = Some(BankRecord {
        mode: BankMode::Transfers,
        initial_balances: [("a".to_owned(), 10), ("b".to_owned(), 0)].into(),
        final_read: final_balances.map(|[a, b]| FinalRead {
            balances: [("a".to_owned(), a), ("b".to_owned(), b)].into(),
            node: None,
        }),
        transfer_outcomes: [
            ("t1".to_owned(), TransferOutcome::Committed),
            ("t2".to_owned(), TransferOutcome::Committed),
        ]
        .into(),
    });
    record
}

/// Two transfers of 10 from an account holding 10, both acknowledged.
fn bank_history(amount: u64) -> History {
    History::new(vec![
        op(0, 0, OpType::Invoke, transfer("t1", amount)),
        op(1, 1, OpType::Invoke, transfer("t2", amount)),
        op(2, 0, OpType::Ok, transfer("t1", amount)),
        op(3, 1, OpType::Ok, transfer("t2", amount)),
    ])
    .expect("history")
}

fn save(dir: &Path, record: &TestRecord, history: &History) {
    record
        .write(&dir.join(report::TEST_FILE))
        .expect("test.json");
    report::write_history(dir, history).expect("history.jsonl");
}

#[test]
fn valid_bank_run_exits_0_and_writes_results_and_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    save(dir.path(), &bank_record(Some([0, 10])), &bank_history(5));
    assert_eq!(run_check(dir.path()), 0);
    let text = std::fs::read_to_string(dir.path().join(report::RESULTS_FILE)).expect("results");
    let results: Results = serde_json::from_str(&text).expect("parse");
    assert_eq!(results.counts["transfer"].ok, 2);
    assert!(dir.path().join(report::REPORT_FILE).exists());
}

#[test]
fn double_spend_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    save(dir.path(), &bank_record(Some([-10, 20])), &bank_history(10));
    assert_eq!(run_check(dir.path()), 1);
}

#[test]
fn unknown_exits_2() {
    // No final read: the final-state checks cannot run.
    let dir = tempfile::tempdir().expect("tempdir");
    save(dir.path(), &bank_record(None), &bank_history(5));
    assert_eq!(run_check(dir.path()), 2);
}

#[test]
fn harness_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(run_check(dir.path()), 2, "no files");
    bank_record(Some([0, 10]))
        .write(&dir.path().join(report::TEST_FILE))
        .expect("test.json");
    // A completion with no invoke.
    let line = serde_json::to_string(&op(0, 3, OpType::Ok, transfer("t1", 5))).expect("json");
    std::fs::write(dir.path().join(report::HISTORY_FILE), line + "\n").expect("write");
    assert_eq!(run_check(dir.path()), 2);
}

#[test]
fn stale_register_read_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut record = record(Workload::Register);
    record.register = Some(RegisterRecord {
        keys: vec!["k".to_owned()],
        initial: None,
        final_reads: BTreeMap::new(),
    });
    let write = |v| {
        Call::Write(RegisterWrite {
            key: "k".to_owned(),
            value: v,
        })
    };
    let read = |v| {
        Call::Read(RegisterRead {
            key: "k".to_owned(),
            value: v,
        })
    };
    let history = History::new(vec![
        op(0, 0, OpType::Invoke, write(1)),
        op(1, 0, OpType::Ok, write(1)),
        op(2, 0, OpType::Invoke, write(2)),
        op(3, 0, OpType::Ok, write(2)),
        op(4, 1, OpType::Invoke, read(None)),
        op(5, 1, OpType::Ok, read(Some(1))),
    ])
    .expect("history");
    save(dir.path(), &record, &history);
    assert_eq!(run_check(dir.path()), 1);
    let text = std::fs::read_to_string(dir.path().join(report::RESULTS_FILE)).expect("results");
    let results: Results = serde_json::from_str(&text).expect("parse");
    let anomalies: BTreeMap<_, _> = results
        .anomalies()
        .map(|(c, a)| (c, a.ops.clone()))
        .collect();
    assert_eq!(anomalies["linearizable"], vec![4, 0, 2]);
}
