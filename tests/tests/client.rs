//! End-to-end tests of the client library and the `metrokv` command-line tool against real
//! three-node clusters.

use std::collections::BTreeMap;
use std::process::Command;
use std::process::Output;
use std::time::Duration;

use metrokv_client::AccountListOptions;
use metrokv_client::Error;
use metrokv_client::TransferRequest;
use metrokv_tests::Cluster;
use metrokv_tests::Options;
use rand::Rng;
use rand::SeedableRng;

fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    let bin = metrokv_tests::binary("metrokv").expect("metrokv binary");
    Command::new(bin)
        .arg("--endpoints")
        .arg(cluster.urls().join(","))
        .args(cluster.cli_tls_args())
        .args(args)
        .output()
        .expect("run metrokv")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_round_trips() {
    let c = Cluster::start(Options::default()).await.unwrap();
    ok_stdout(&cli(&c, &["put", "greeting", "hello"]));
    assert_eq!(ok_stdout(&cli(&c, &["get", "greeting"])), "hello");
    let json: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&c, &["--json", "get", "greeting"]))).unwrap();
    let version = json["version"].as_u64().expect("version in --json output");

    // A failed condition is a refusal (exit 1), a good one goes through.
    assert_eq!(
        cli(&c, &["put", "greeting", "x", "--if-version", "999"])
            .status
            .code(),
        Some(1)
    );
    ok_stdout(&cli(
        &c,
        &[
            "put",
            "greeting",
            "bonjour",
            "--if-version",
            &version.to_string(),
        ],
    ));
    assert_eq!(
        cli(&c, &["put", "greeting", "x", "--create-only"])
            .status
            .code(),
        Some(1)
    );
    assert!(ok_stdout(&cli(&c, &["list", "--prefix", "gree"])).contains("greeting"));
    ok_stdout(&cli(&c, &["del", "greeting"]));
    assert_eq!(
        cli(&c, &["get", "greeting"]).status.code(),
        Some(1),
        "a missing key is a refusal"
    );

    let txn = r#"{"compare": [{"key": "t", "target": "exists", "op": "==", "exists": false}],
                  "success": [{"put": {"key": "t", "value": "1"}}], "failure": []}"#;
    let out: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&c, &["--json", "txn", txn]))).unwrap();
    assert_eq!(out["succeeded"], true, "{out}");

    ok_stdout(&cli(&c, &["account", "create", "alice", "100"]));
    ok_stdout(&cli(&c, &["account", "create", "bob", "0"]));
    assert_eq!(
        cli(&c, &["account", "create", "bob", "5"]).status.code(),
        Some(1)
    );
    assert!(ok_stdout(&cli(&c, &["account", "get", "alice"])).contains("100"));
    ok_stdout(&cli(&c, &["transfer", "--id", "t1", "alice", "bob", "30"]));
    ok_stdout(&cli(&c, &["transfer", "--id", "t1", "alice", "bob", "30"]));
    assert_eq!(
        cli(&c, &["transfer", "--id", "t2", "alice", "bob", "1000"])
            .status
            .code(),
        Some(1)
    );
    assert!(ok_stdout(&cli(&c, &["transfer-status", "t1"])).contains("committed"));
    let list: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&c, &["--json", "account", "list"]))).unwrap();
    assert_eq!(list["total"], 100, "{list}");
    let balances: BTreeMap<String, u64> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["balance"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        balances,
        BTreeMap::from([("alice".into(), 70), ("bob".into(), 30)]),
        "the retried transfer moved money once"
    );

    let status = ok_stdout(&cli(&c, &["cluster", "status"]));
    assert!(
        status.contains("leader") && status.contains("dc-b"),
        "{status}"
    );

    // Usage errors exit 2; no reachable node exits 3.
    assert_eq!(cli(&c, &["transfer", "alice"]).status.code(), Some(2));
    let dead = format!("http://127.0.0.1:{}", metrokv_tests::free_port());
    let bin = metrokv_tests::binary("metrokv").unwrap();
    let out = Command::new(bin)
        .args(["--endpoints", &dead, "--deadline-ms", "1000", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Transfers through the library keep going while the leader is killed and restarted; at the end
/// the balances are exactly what the reported outcomes say, and no transfer applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_leader_failover_exactly_once() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let client = c
        .client_builder()
        .zone("dc-a")
        .deadline(Duration::from_secs(10))
        .seed(7)
        .build()
        .unwrap();
    let accounts = ["a", "b", "c", "d"];
    for id in accounts {
        client.create_account(id, 1_000).await.unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut committed: Vec<TransferRequest> = Vec::new();
    let mut rejected: Vec<TransferRequest> = Vec::new();
    let mut unsettled: Vec<TransferRequest> = Vec::new();
    let mut killed = None;
    for i in 0..240 {
        if i == 60 {
            let leader = c.leader().await.expect("leader");
            c.kill(leader);
            killed = Some(leader);
        }
        if i == 160 {
            c.restart(killed.take().unwrap()).unwrap();
        }
        let from = accounts[rng.random_range(0..4)];
        let to = accounts
            .iter()
            .copied()
            .filter(|a| *a != from)
            .nth(rng.random_range(0..3))
            .unwrap();
        let request = TransferRequest::new(from, to, rng.random_range(1..400));
        match client.transfer(&request).await {
            Ok(receipt) => {
                assert_eq!(receipt.id, request.id);
                committed.push(request);
            }
            Err(Error::InsufficientFunds { .. }) => rejected.push(request),
            Err(Error::Indeterminate { .. }) => unsettled.push(request),
            Err(e) => panic!("transfer {i} failed in a way a failover must not cause: {e}"),
        }
    }
    // Settle the indeterminate ones the documented way: resend the same transfer.
    for request in unsettled {
        match client.transfer(&request).await {
            Ok(_) => committed.push(request),
            Err(Error::InsufficientFunds { .. }) => rejected.push(request),
            Err(e) => panic!("settling {} failed: {e}", request.id),
        }
    }
    assert!(
        committed.len() > 100,
        "too few transfers committed: {}",
        committed.len()
    );

    let mut expected: BTreeMap<&str, i64> = accounts.iter().map(|a| (*a, 1_000)).collect();
    for t in &committed {
        *expected.get_mut(t.from.as_str()).unwrap() -= t.amount as i64;
        *expected.get_mut(t.to.as_str()).unwrap() += t.amount as i64;
    }
    let page = client
        .list_accounts(AccountListOptions::default())
        .await
        .unwrap();
    let actual: BTreeMap<&str, i64> = page
        .accounts
        .iter()
        .map(|a| (a.id.as_str(), a.balance as i64))
        .collect();
    assert_eq!(
        actual, expected,
        "balances must be exactly the committed transfers, each once"
    );
    assert_eq!(page.total, 4_000);
    // The server's record agrees with what the library reported, for every transfer.
    for t in committed.iter().take(40).chain(rejected.iter().take(20)) {
        let record = client
            .get_transfer(&t.id)
            .await
            .unwrap()
            .expect("a recorded outcome");
        let was_committed = committed.iter().any(|x| x.id == t.id);
        assert_eq!(
            matches!(
                record.outcome,
                metrokv_client::TransferOutcome::Committed { .. }
            ),
            was_committed,
            "{}",
            t.id
        );
    }
}

/// The CI smoke of `metrokv bench`: a short run of each workload against a real cluster prints
/// a JSON report that parses, with operations done and no errors, and the servers' CPU per
/// operation when given their pids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_workload_without_errors() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let pids: Vec<String> = (1..=3)
        .filter_map(|id| c.pid(id))
        .map(|p| p.to_string())
        .collect();
    for workload in ["put", "get", "get-stale", "cas", "txn", "transfer", "mixed"] {
        let mut args = vec![
            "--json",
            "bench",
            "--workload",
            workload,
            "--clients",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--keys",
            "200",
            "--accounts",
            "20",
        ];
        for p in &pids {
            args.extend(["--server-pid", p.as_str()]);
        }
        let out = ok_stdout(&cli(&c, &args));
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!("{workload}: not JSON ({e}): {out}");
        });
        assert!(report["ok"].as_u64().unwrap() > 0, "{workload}: {report}");
        assert_eq!(
            report["errors"],
            serde_json::json!({}),
            "{workload}: {report}"
        );
        assert!(
            report["latency"]["p99_us"].as_u64().unwrap() > 0,
            "{report}"
        );
        assert!(report["bench_cpu_cores"].as_f64().is_some(), "{report}");
        assert!(
            report["server_cpu_us_per_op"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    // Open loop: never faster than the rate asked for (slower only if the cluster is slow).
    let out = ok_stdout(&cli(
        &c,
        &[
            "--json",
            "bench",
            "--rate",
            "100",
            "--clients",
            "4",
            "--duration",
            "2",
            "--warmup",
            "0",
        ],
    ));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rate = report["ops_per_sec"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 105.0, "{rate} ops/s at --rate 100");
    // Bad options are a usage error.
    assert_eq!(cli(&c, &["bench", "--clients", "0"]).status.code(), Some(2));
}

/// The etcd adapter of `metrokv bench`, against a real one-member etcd (fsync on) when etcd is
/// installed (`scripts/test.sh` installs it as root): every workload runs without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_etcd_when_it_is_installed() {
    let Ok(etcd) = which("etcd") else {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (metrokv_tests::free_port(), metrokv_tests::free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let child = Command::new(etcd)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id().to_string();
    let _guard = KillOnDrop(child);
    let bin = metrokv_tests::binary("metrokv").unwrap();
    let run = |workload: &str| {
        Command::new(&bin)
            .args([
                "--endpoints",
                &client_url,
                "--json",
                "bench",
                "--system",
                "etcd",
            ])
            .args(["--workload", workload, "--clients", "4", "--duration", "1"])
            .args(["--warmup", "0.2", "--keys", "100", "--accounts", "20"])
            .args(["--server-pid", &pid])
            .output()
            .unwrap()
    };
    // etcd takes a moment to serve: the first run may find it not listening yet.
    let first = Cluster::eventually("etcd serves", Duration::from_secs(30), || async {
        let out = run("put");
        if out.status.success() {
            Ok(out)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    })
    .await
    .unwrap();
    let mut outputs = vec![("put", first)];
    for workload in ["get", "get-stale", "cas", "txn", "transfer", "mixed"] {
        outputs.push((workload, run(workload)));
    }
    for (workload, out) in outputs {
        let text = ok_stdout(&out);
        let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(report["options"]["system"], "etcd");
        assert!(report["ok"].as_u64().unwrap() > 0, "{workload}: {report}");
        assert_eq!(
            report["errors"],
            serde_json::json!({}),
            "{workload}: {report}"
        );
        assert!(
            report["server_cpu_us_per_op"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}

/// Where `name` is on PATH.
fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// The smoke of `metrokv-bench scale` on a small cluster: every chore it times is done (the
/// new member catches up by snapshot, the backup restores with the last key, the killed node
/// comes back) and its loads see no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_bench_does_every_chore_it_times() {
    let report = metrokv_tests::scale::run(&metrokv_tests::scale::ScaleOptions {
        keys: 3_000,
        value_size: 100,
        clients: 32,
        seconds: 0.5,
    })
    .await
    .unwrap();
    assert!(report.catch_up_snapshots >= 1.0, "{report:?}");
    assert!(report.backup_bytes > 3_000 * 100, "{report:?}");
    assert_eq!(report.loads.len(), 4, "{report:?}");
    for load in &report.loads {
        assert!(load.ops_per_sec > 0.0, "{load:?}");
        assert!(load.errors.is_empty(), "{load:?}");
    }
    let markdown = metrokv_tests::scale::markdown(&report);
    assert!(
        markdown.contains("| restart of a killed node until ready |"),
        "{markdown}"
    );
}
