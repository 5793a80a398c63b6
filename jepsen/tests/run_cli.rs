//! `metrokv-jepsen run` and `scenario` end to end, on real `metrokv-node` processes: the smoke
//! run that must come out valid, the negative control that must come out invalid, a short
//! register run, and the double-spend story.
//!
//! The tests share the machine with the rest of the suite (two cores in CI), so they take a
//! lock and run one cluster at a time. The harness bounds each run itself (`--time-limit` and
//! its settle and final-read deadlines); [`HANG_GUARD`] only catches a harness that hangs, far
//! beyond any run's length, after which the harness gets SIGTERM (it stops its nodes) and then
//! SIGKILL (its nodes die with it through PR_SET_PDEATHSIG). How long a run took is printed,
//! never asserted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrokv_jepsen::checker::bank::TransferOutcome;
use metrokv_jepsen::checker::{Results, Validity};
use metrokv_jepsen::history::{Call, History, OpType, Process};
use metrokv_jepsen::nemesis::{Fault, Target};
use metrokv_jepsen::record::TestRecord;
use metrokv_jepsen::report;

/// A run that has not ended after this is hung (the runs here last well under a minute): it
/// is a guard against a test that never ends, not a performance threshold.
const HANG_GUARD: Duration = Duration::from_secs(600);
/// Grace period between SIGTERM and SIGKILL on timeout.
const TERM_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// One cluster at a time: four 3-node clusters at once would starve a two-core machine into
/// elections that prove nothing.
static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the harness with `args`, bounded by [`HANG_GUARD`].
fn harness(args: &[&str]) -> Finished {
    let _guard = CLUSTER_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir for output");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrokv-jepsen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn metrokv-jepsen");
    let deadline = started + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            std::thread::sleep(TERM_GRACE);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "metrokv-jepsen {args:?} did not finish within {HANG_GUARD:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    let finished = Finished {
        code: status.code().expect("exit code, not a signal"),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    eprintln!(
        "metrokv-jepsen {args:?}: exit {} after {:.1} s\n{}{}",
        finished.code,
        finished.elapsed.as_secs_f64(),
        finished.stdout,
        finished.stderr
    );
    finished
}

fn results(dir: &Path) -> Results {
    let text = std::fs::read_to_string(dir.join(report::RESULTS_FILE)).expect("results.json");
    serde_json::from_str(&text).expect("results.json parses")
}

fn record(dir: &Path) -> TestRecord {
    TestRecord::read(&dir.join(report::TEST_FILE)).expect("test.json")
}

fn history(dir: &Path) -> History {
    let file = std::fs::File::open(dir.join(report::HISTORY_FILE)).expect("history.jsonl");
    History::read_jsonl(std::io::BufReader::new(file)).expect("history.jsonl is valid")
}

/// Asserts the files a run leaves behind.
fn assert_outputs(dir: &Path, nodes: usize) {
    for file in [
        report::HISTORY_FILE,
        report::RESULTS_FILE,
        report::REPORT_FILE,
        report::TEST_FILE,
    ] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    for n in 1..=nodes {
        let log = dir.join(format!("nodes/n{n}/node.log"));
        assert!(log.is_file(), "{} kept", log.display());
        assert!(
            !dir.join(format!("nodes/n{n}/data")).exists(),
            "data removed without --keep-data"
        );
    }
    let html = std::fs::read_to_string(dir.join(report::REPORT_FILE)).expect("report");
    assert!(html.contains("<svg"), "plots drawn");
}

#[test]
fn smoke_bank_run_with_zone_partition_leader_isolation_and_kill_is_valid() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let dir_text = dir.to_str().expect("utf-8 path");
    // Seed 149 schedules all three faults within 20 s: a zone partition (black-holed), the
    // leader isolated (dropped), the leader killed.
    let run = harness(&smoke_args(dir_text));
    assert!(
        run.stdout.starts_with("seed: 149\n"),
        "the seed comes first: {}",
        run.stdout
    );
    assert_eq!(
        run.code, 0,
        "the safe bank must be valid; a failure here is a real bug: re-run with --seed 149 and \
         read {dir_text}/results.json"
    );
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Valid);
    assert_eq!(results.checkers["bank"].anomaly_count, 0);
    assert!(
        results.counts["transfer"].ok > 50,
        "{:?}",
        results.counts["transfer"]
    );
    assert!(results.counts["read-all"].ok > 50);
    assert_outputs(&dir, 3);
    // The faults happened, as planned.
    let history = history(&dir);
    let applied: Vec<String> = history
        .nemesis_ops()
        .filter_map(|op| match &op.call {
            Call::StartFault(event) => Some(event.fault.kind().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(applied, ["partition-zones", "isolate-leader", "kill"]);
    assert_bank_final_state(&dir, &history);
}

/// The bank's final phase happened: the final read holds every account and the initial total,
/// and the server's outcome of every transfer id was looked up and agrees with the history.
fn assert_bank_final_state(dir: &Path, history: &History) {
    let record = record(dir);
    let bank = record.bank.expect("bank section");
    let final_read = bank.final_read.as_ref().expect("the final read was taken");
    assert_eq!(
        final_read.balances.keys().collect::<Vec<_>>(),
        bank.initial_balances.keys().collect::<Vec<_>>(),
        "the final read shows exactly the accounts"
    );
    let initial_total: u64 = bank.initial_balances.values().sum();
    let final_total: i64 = final_read.balances.values().sum();
    assert_eq!(final_total, i64::try_from(initial_total).expect("total"));
    assert!(final_read.balances.values().all(|&b| b >= 0));
    let mut transfers = 0;
    for pair in history.pair_refs() {
        let Call::Transfer(transfer) = &pair.invoke.call else {
            continue;
        };
        transfers += 1;
        let outcome = bank
            .transfer_outcomes
            .get(&transfer.id)
            .unwrap_or_else(|| panic!("no outcome looked up for {}", transfer.id));
        if pair.outcome() == OpType::Ok {
            assert_eq!(*outcome, TransferOutcome::Committed, "{}", transfer.id);
        }
    }
    assert!(transfers > 0);
    assert_eq!(bank.transfer_outcomes.len(), transfers);
}

#[test]
fn negative_control_unsafe_bank_under_zone_partitions_is_invalid_and_names_the_ops() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let run = harness(&[
        "run",
        "--workload",
        "bank",
        "--mode",
        "unsafe",
        "--nemesis",
        "partition-zones",
        "--time-limit",
        "12",
        "--seed",
        "2",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 1, "the unsafe mode must be caught");
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Invalid);
    let bank = &results.checkers["bank"];
    assert!(bank.anomaly_count > 0);
    // Anomalies are grouped by kind, each group counting its members; the first and the worst
    // anomaly of a read name that read and the transfers suspected of breaking it, and those
    // are real ops of the history.
    assert_eq!(
        bank.anomalies.iter().map(|g| g.count).sum::<u64>(),
        bank.anomaly_count
    );
    let mut kinds: Vec<_> = bank.anomalies.iter().map(|g| g.kind).collect();
    kinds.dedup();
    assert_eq!(kinds.len(), bank.anomalies.len(), "one group per kind");
    let history = history(&dir);
    let named: Vec<&Vec<u64>> = bank
        .anomalies
        .iter()
        .flat_map(|g| [&g.first.ops, &g.worst.ops])
        .filter(|ops| !ops.is_empty())
        .collect();
    assert!(!named.is_empty(), "offending ops are named");
    for ops in named {
        for &index in ops {
            let op = &history.ops()[usize::try_from(index).expect("index")];
            assert!(matches!(op.process, Process::Client(_)));
            assert_eq!(op.kind, OpType::Invoke, "anomalies name invocations");
            assert!(matches!(op.call, Call::Transfer(_) | Call::ReadAll(_)));
        }
    }
    assert!(
        run.stdout.contains("wrong-total"),
        "the summary shows the anomalies"
    );
    assert_outputs(&dir, 3);
}

#[test]
fn short_register_run_is_linearizable() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let run = harness(&[
        "run",
        "--workload",
        "register",
        "--nemesis",
        "partition-zones,pause",
        "--time-limit",
        "10",
        "--seed",
        "7",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0);
    let results = results(&dir);
    assert_eq!(results.checkers["linearizable"].valid, Validity::Valid);
    assert!(results.counts["read"].ok > 20);
    let history = history(&dir);
    assert_register_final_reads(&dir, &history);
    assert_outputs(&dir, 3);
}

/// The final-read phase happened: every key was read once more after the workers stopped, the
/// reads are in the history as ok reads, and each saw a value that a write or cas of that key
/// may have written (never "absent" once a write of the key was acknowledged).
fn assert_register_final_reads(dir: &Path, history: &History) {
    let record = record(dir);
    let register = record.register.expect("register section");
    assert!(!register.keys.is_empty());
    assert_eq!(
        register.final_reads.keys().collect::<Vec<_>>(),
        register.keys.iter().collect::<Vec<_>>(),
        "one final read per key"
    );
    let final_ops: Vec<u64> = register.final_reads.values().map(|r| r.op).collect();
    let last_worker_invoke = history
        .pair_refs()
        .filter(|p| !final_ops.contains(&p.invoke.index))
        .map(|p| p.invoke.index)
        .max()
        .expect("the workers ran");
    for (key, final_read) in &register.final_reads {
        let pair = history
            .pair_refs()
            .find(|p| p.invoke.index == final_read.op)
            .unwrap_or_else(|| panic!("final read of {key} (op {}) in the history", final_read.op));
        assert!(
            final_read.op > last_worker_invoke,
            "the final read of {key} comes after the workload"
        );
        assert_eq!(pair.outcome(), OpType::Ok, "final read of {key}");
        match pair.call() {
            Call::Read(read) => {
                assert_eq!(&read.key, key);
                assert_eq!(
                    read.value, final_read.value,
                    "test.json agrees with the history"
                );
            }
            other => panic!("final read of {key} is {other:?}"),
        }
        // Values possibly written to the key (ok or indeterminate writes and cas), and whether
        // one was acknowledged.
        let mut possible = Vec::new();
        let mut acknowledged = false;
        for p in history.pair_refs().filter(|p| p.outcome() != OpType::Fail) {
            let written = match &p.invoke.call {
                Call::Write(w) if &w.key == key => w.value,
                Call::Cas(c) if &c.key == key => c.to,
                _ => continue,
            };
            possible.push(written);
            acknowledged |= p.outcome() == OpType::Ok;
        }
        match final_read.value {
            Some(value) => assert!(
                possible.contains(&value),
                "final read of {key} saw {value}, which no write or cas wrote"
            ),
            None => assert!(
                !acknowledged,
                "{key} is absent at the end, but a write of it was acknowledged"
            ),
        }
    }
}

#[test]
fn kill_loop_under_bank_and_register_loses_nothing_and_counts_every_kill() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let run = harness(&[
        "run",
        "--workload",
        "bank,register",
        "--nemesis",
        "kill",
        "--kill-loop",
        "20",
        "--rate",
        "100",
        "--seed",
        "3",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0, "the kill loop must come out valid");
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Valid);
    for checker in ["bank", "linearizable", "nemesis", "stats"] {
        assert_eq!(
            results.checkers[checker].valid,
            Validity::Valid,
            "{checker}"
        );
    }
    let summary = &results.summary;
    assert_eq!(summary.faults.get("kill"), Some(&20), "{summary:?}");
    assert_eq!(summary.faults.len(), 1, "only kills");
    assert_eq!(summary.acknowledged_writes_lost, 0);
    let bank = summary.bank.as_ref().expect("bank accounting");
    assert_eq!(bank.final_total, Some(bank.initial_total));
    assert!(bank.exact, "{bank:?}");
    assert!(bank.transfers.ok > 0);
    assert!(results.counts["write"].ok + results.counts["cas"].ok > 0);
    assert!(
        run.stdout.contains("faults: 20 (kill 20)"),
        "{}",
        run.stdout
    );
    // One node per kill, the leader among them, each restarted before the next kill.
    let history = history(&dir);
    let mut down: Option<String> = None;
    let mut leader_kills = 0;
    for op in history.nemesis_ops() {
        match &op.call {
            Call::StartFault(event) => {
                assert!(down.is_none(), "a kill while {down:?} is down");
                let Fault::Kill {
                    target: Target::Nodes(nodes),
                } = &event.fault
                else {
                    panic!("not a kill of named nodes: {event:?}");
                };
                assert_eq!(nodes.len(), 1);
                down = Some(nodes[0].clone());
                if event
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("the leader was"))
                {
                    leader_kills += 1;
                }
            }
            Call::StopFault(_) => down = None,
            _ => {}
        }
    }
    assert!(leader_kills > 0, "the leader was killed too");
    assert_bank_final_state(&dir, &history);
    assert_register_final_reads(&dir, &history);
}

/// The smoke run's arguments, for either network.
/// The kinds of the faults the nemesis applied (not those it skipped), in order.
fn applied_faults(history: &History) -> Vec<String> {
    history
        .nemesis_ops()
        .filter_map(|op| match &op.call {
            Call::StartFault(event) if !event.skipped => Some(event.fault.kind().to_string()),
            _ => None,
        })
        .collect()
}

fn smoke_args(dir: &str) -> Vec<&str> {
    vec![
        "run",
        "--workload",
        "bank",
        "--nemesis",
        "partition-zones,isolate-leader,kill",
        "--time-limit",
        "20",
        "--rate",
        "40",
        "--concurrency",
        "6",
        "--nodes",
        "3",
        "--seed",
        "149",
        "--out",
        dir,
    ]
}

/// Why the network-namespace runs cannot happen here (they need root, ip, nft and ss), as
/// `metrokv-jepsen netns-tools` reports it; None when they can.
fn netns_unavailable() -> Option<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_metrokv-jepsen"))
        .arg("netns-tools")
        .output()
        .expect("run netns-tools");
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).trim().to_owned())
}

/// The namespaces' tag a netns run printed (`network namespaces: mkvj<pid>-*, ...`).
fn netns_tag(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("network namespaces: "))
        .expect("the run names its namespaces");
    line.split("-*").next().expect("tag").to_owned()
}

/// Nothing of a finished netns run is left: no namespace, no root-namespace interface.
fn assert_netns_removed(tag: &str) {
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces
            .lines()
            .any(|l| l.starts_with(&format!("{tag}-"))),
        "namespaces of {tag} left behind: {namespaces}"
    );
    let link = Command::new("ip")
        .args(["link", "show", &format!("{tag}h")])
        .output()
        .expect("ip link show");
    assert!(!link.status.success(), "interface {tag}h left behind");
}

#[test]
fn netns_smoke_run_on_the_smoke_seed_is_valid_and_leaves_nothing_behind() {
    if let Some(why) = netns_unavailable() {
        eprintln!("SKIPPED (network namespaces): {why}");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let dir_text = dir.to_str().expect("utf-8 path");
    let mut args = smoke_args(dir_text);
    args.extend(["--net", "netns"]);
    let run = harness(&args);
    assert_eq!(
        run.code, 0,
        "the proxy smoke run's seed must be valid in network namespaces too"
    );
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Valid);
    let history = history(&dir);
    let applied = applied_faults(&history);
    assert_eq!(applied, ["partition-zones", "isolate-leader", "kill"]);
    assert_eq!(record(&dir).options.settings["net"], "netns");
    assert_bank_final_state(&dir, &history);
    assert_outputs(&dir, 3);
    assert_netns_removed(&netns_tag(&run.stdout));
}

/// The smoke run with TLS on both ports of every node: in network namespaces (real packet
/// drops cut TLS sessions mid-record) when this machine has them, else through the proxies.
/// Members reconnect over mutual TLS after every fault, and the bank stays exact.
#[test]
fn smoke_run_with_tls_on_every_port_is_valid() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let dir_text = dir.to_str().expect("utf-8 path");
    let mut args = smoke_args(dir_text);
    args.push("--tls");
    let netns = netns_unavailable().is_none();
    if netns {
        args.extend(["--net", "netns"]);
    }
    let run = harness(&args);
    assert_eq!(
        run.code, 0,
        "the smoke seed must be valid with TLS too: re-run with --seed 149 --tls and read \
         {dir_text}/results.json"
    );
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Valid);
    assert!(
        results.counts["transfer"].ok > 50,
        "{:?}",
        results.counts["transfer"]
    );
    let history = history(&dir);
    let applied = applied_faults(&history);
    assert_eq!(applied, ["partition-zones", "isolate-leader", "kill"]);
    let settings = record(&dir).options.settings;
    assert_eq!(settings.get("tls").map(String::as_str), Some("true"));
    // The nodes really served TLS: each was given its certificate.
    assert!(dir.join("certs/ca.pem").exists(), "the run's CA");
    assert_bank_final_state(&dir, &history);
    assert_outputs(&dir, 3);
    if netns {
        assert_netns_removed(&netns_tag(&run.stdout));
    }
}

#[test]
fn netns_one_way_ring_cuts_under_the_register_are_linearizable() {
    if let Some(why) = netns_unavailable() {
        eprintln!("SKIPPED (network namespaces): {why}");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let run = harness(&[
        "run",
        "--net",
        "netns",
        "--workload",
        "register",
        "--nemesis",
        "ring",
        "--time-limit",
        "15",
        "--seed",
        "8",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0);
    let results = results(&dir);
    assert_eq!(results.checkers["linearizable"].valid, Validity::Valid);
    // On 3 nodes the ring is one-way cuts: some cut link whose reverse is not cut.
    let history = history(&dir);
    let one_way = history.nemesis_ops().any(|op| match &op.call {
        Call::StartFault(event) => match &event.fault {
            Fault::Partition { grudge, .. } => grudge
                .cuts
                .iter()
                .any(|link| !grudge.is_cut(&link.to, &link.from)),
            _ => false,
        },
        _ => false,
    });
    assert!(one_way, "a one-way cut was applied");
    assert_register_final_reads(&dir, &history);
    assert_netns_removed(&netns_tag(&run.stdout));
}

#[test]
fn clock_jumps_with_kills_keep_the_bank_exact() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("run");
    let run = harness(&[
        "run",
        "--workload",
        "bank,register",
        "--nemesis",
        "clock,kill",
        "--time-limit",
        "15",
        "--rate",
        "100",
        "--seed",
        "4",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0);
    let results = results(&dir);
    assert_eq!(results.valid, Validity::Valid);
    assert!(
        results.summary.faults.get("clock").is_some_and(|&n| n > 0),
        "{:?}",
        results.summary.faults
    );
    assert_eq!(results.summary.acknowledged_writes_lost, 0);
    let history = history(&dir);
    assert_bank_final_state(&dir, &history);
    assert_register_final_reads(&dir, &history);
    // Healed: every node's failpoint file is empty again.
    for n in 1..=3 {
        let file = dir.join(format!("nodes/n{n}/failpoints"));
        assert_eq!(std::fs::read_to_string(&file).expect("failpoint file"), "");
    }
}

#[test]
fn double_spend_scenario_keeps_the_money_and_the_unsafe_mode_overspends() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("scenario");
    let run = harness(&[
        "scenario",
        "double-spend",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout
            .contains("final (linearizable): acct 0, sink-a 10,000, sink-b 0; 10,000 left acct"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("sink-b 10,000; 20,000 left acct"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("insufficient funds"));
    let timeline = std::fs::read_to_string(dir.join("timeline.txt")).expect("timeline");
    assert!(timeline.contains("dc-b"));
    assert!(dir.join("nodes/n3/node.log").is_file());
}
