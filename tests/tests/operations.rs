//! End-to-end tests of running a cluster: graceful stops and rolling restarts, on real node
//! processes.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use metrokv_client::AccountListOptions;
use metrokv_client::Client;
use metrokv_client::Error;
use metrokv_client::ListOptions;
use metrokv_client::TransferOutcome;
use metrokv_client::TransferRequest;
use metrokv_tests::Cluster;
use metrokv_tests::Options;

/// Each account of a bank load starts with this much.
const BALANCE: u64 = 1_000_000;

/// What a load had acknowledged: a put of `value` at `key`, or a committed transfer; with the
/// revision the answer named and when it came.
#[derive(Clone, Debug)]
struct Acked {
    write: Write,
    revision: u64,
    at: Instant,
}

#[derive(Clone, Debug)]
enum Write {
    Put { key: String, value: String },
    Transfer { id: String, from: usize, to: usize },
}

/// A load through the client library (leader discovery, retries) until stopped: each task
/// alternates a put of a new key and a transfer of 1 to the next task's account; what was
/// acknowledged, and what failed.
struct Bank {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    accounts: usize,
}

impl Bank {
    async fn start(client: &Client, accounts: usize) -> Self {
        for a in 0..accounts {
            client
                .create_account(&format!("acct-{a}"), BALANCE)
                .await
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..accounts)
            .map(|a| {
                let (client, stop, acked, failed) =
                    (client.clone(), stop.clone(), acked.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let outcome = if i.is_multiple_of(2) {
                            let (key, value) = (format!("k-{a}-{i}"), format!("v{i}"));
                            client
                                .put(&key, value.clone())
                                .await
                                .map(|r| (Write::Put { key, value }, r.revision))
                        } else {
                            let to = (a + 1) % accounts;
                            let request =
                                TransferRequest::new(format!("acct-{a}"), format!("acct-{to}"), 1);
                            // An indeterminate answer is settled the documented way: the same
                            // transfer again (its id makes the retry safe).
                            let mut outcome = client.transfer(&request).await;
                            for _ in 0..5 {
                                if !matches!(outcome, Err(Error::Indeterminate { .. })) {
                                    break;
                                }
                                outcome = client.transfer(&request).await;
                            }
                            outcome.map(|r| {
                                let id = request.id.clone();
                                (Write::Transfer { id, from: a, to }, r.revision)
                            })
                        };
                        match outcome {
                            Ok((write, revision)) => acked.lock().unwrap().push(Acked {
                                write,
                                revision,
                                at: Instant::now(),
                            }),
                            Err(e) => failed.lock().unwrap().push(format!("task {a} #{i}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            failed,
            tasks,
            accounts,
        }
    }

    fn acked_since(&self, t: Instant) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at > t)
            .count()
    }

    async fn wait_acked_since(&self, t: Instant, n: usize) {
        Cluster::eventually(
            "transfers acknowledged",
            Duration::from_secs(60),
            || async {
                let acked = self.acked_since(t);
                (acked >= n)
                    .then_some(())
                    .ok_or(format!("{acked} acknowledged"))
            },
        )
        .await
        .unwrap();
    }

    /// Stop the load; what was acknowledged (in order), what failed, and the longest time
    /// without an acknowledgement.
    async fn stop(self) -> (Vec<Acked>, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut acked = self.acked.lock().unwrap().clone();
        acked.sort_by_key(|a| a.at);
        let gap = acked
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        let failed = self.failed.lock().unwrap().clone();
        (acked, failed, gap)
    }
}

/// `client`'s cluster holds exactly the acknowledged writes with a revision up to `upto` (all
/// of them when `None`) and none above: every put's key with its value and version, every
/// transfer committed, the balances they add up to, and no other key.
async fn check_state(client: &Client, acked: &[Acked], accounts: usize, upto: Option<u64>) {
    let upto = upto.unwrap_or(u64::MAX);
    let mut balances = vec![BALANCE as i64; accounts];
    let mut keys = 0;
    for a in acked {
        let held = a.revision <= upto;
        match &a.write {
            Write::Put { key, value } => {
                let got = client.get(key).await.unwrap();
                if held {
                    keys += 1;
                    let got =
                        got.unwrap_or_else(|| panic!("{key} (revision {}) is missing", a.revision));
                    assert_eq!(got.value, value.as_bytes(), "{key}");
                    assert_eq!(got.version, a.revision, "{key}");
                } else {
                    assert!(
                        got.is_none(),
                        "{key} (revision {}) is past {upto}",
                        a.revision
                    );
                }
            }
            Write::Transfer { id, from, to } => {
                let record = client.get_transfer(id).await.unwrap();
                if held {
                    let record = record.unwrap_or_else(|| panic!("transfer {id} is missing"));
                    assert!(
                        matches!(record.outcome, TransferOutcome::Committed { .. }),
                        "{id}: {:?}",
                        record.outcome
                    );
                    balances[*from] -= 1;
                    balances[*to] += 1;
                } else {
                    assert!(
                        record.is_none(),
                        "transfer {id} (revision {}) is past {upto}",
                        a.revision
                    );
                }
            }
        }
    }
    let page = client
        .list_accounts(AccountListOptions::default())
        .await
        .unwrap();
    assert_eq!(page.accounts.len(), accounts);
    assert_eq!(
        page.total,
        u128::from(BALANCE) * accounts as u128,
        "ledger total"
    );
    for account in &page.accounts {
        let n: usize = account.id.trim_start_matches("acct-").parse().unwrap();
        assert_eq!(account.balance as i64, balances[n], "{}", account.id);
    }
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = client
            .list(ListOptions {
                prefix: "k-".into(),
                after: after.take(),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        listed += page.items.len();
        match page.next_after() {
            Some(next) if page.more => after = Some(next.to_string()),
            _ => break,
        }
    }
    assert_eq!(listed, keys, "no key but the acknowledged ones");
}

/// SIGTERM on a leader: it hands leadership over before it stops (no election), finishes the
/// requests in progress and exits 0. A rolling restart of every node of a 2+2+1 cluster, one
/// at a time, under a load of puts and transfers through the client library fails no write,
/// loses none, and leaves no gap without an acknowledged write longer than an election would
/// take. (In a 2+1 layout, stopping the lone node of the second zone holds writes until
/// adaptive zone safety degrades, by design: see the README's rolling restart runbook.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_a_bank_load_loses_nothing() {
    let mut c = Cluster::start(Options::three_sites()).await.unwrap();
    let client = c
        .client_builder()
        .deadline(Duration::from_secs(10))
        .seed(3)
        .build()
        .unwrap();
    let bank = Bank::start(&client, 6).await;
    bank.wait_acked_since(Instant::now(), 50).await;
    let mut leader_stopped = false;
    for id in 1..=5 {
        let was_leader = c.leader().await == Some(id);
        let status = c.terminate(id, Duration::from_secs(30)).await.unwrap();
        assert!(status.success(), "n{id} exited with {status} on SIGTERM");
        let log = c.log(id);
        if was_leader {
            leader_stopped = true;
            assert!(
                log.contains("leadership handed over before shutting down"),
                "the stopping leader handed over: {}",
                c.log_tail(id, 30)
            );
        }
        // Writes go on while it is down, then it comes back and catches up.
        bank.wait_acked_since(Instant::now(), 20).await;
        c.start_node(id).unwrap();
        c.wait_ready(Duration::from_secs(60)).await.unwrap();
        bank.wait_acked_since(Instant::now(), 20).await;
    }
    assert!(leader_stopped, "the leader was among the nodes restarted");
    let accounts = bank.accounts;
    let (acked, failed, gap) = bank.stop().await;
    eprintln!(
        "rolling restart: {} writes acknowledged, {} failed, longest gap {} ms",
        acked.len(),
        failed.len(),
        gap.as_millis()
    );
    assert!(failed.is_empty(), "failed transfers: {failed:?}");
    // An election after a crash takes the election timeout (120-240 ms) plus a vote round; a
    // gap of a second means a stop was not graceful. (Generous for a loaded machine.)
    assert!(
        gap < Duration::from_secs(1),
        "no write acknowledged for {} ms",
        gap.as_millis()
    );
    check_state(&client, &acked, accounts, None).await;
}

/// A backup taken with `metrokv backup save` while puts and transfers go on restores, with
/// `metrokv-node restore`, to a new one-node cluster that holds exactly the source's state at
/// the backup's revision: every acknowledged write up to it (keys with values and versions,
/// transfer records, the balances they add up to) and nothing after it. `backup verify` passes
/// the file and refuses a copy with one flipped bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_the_state_at_its_revision() {
    let source = Cluster::start(Options::default()).await.unwrap();
    let client = source
        .client_builder()
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let bank = Bank::start(&client, 4).await;
    bank.wait_acked_since(Instant::now(), 200).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(metrokv_tests::binary("metrokv").unwrap())
            .arg("--endpoints")
            .arg(source.urls().join(","))
            .args(source.cli_tls_args())
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "not JSON: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    };
    let started = Instant::now();
    let (ok, saved) = cli(&["backup", "save", file.to_str().unwrap()]);
    assert!(ok, "{saved}");
    let revision = saved["info"]["revision"].as_u64().unwrap();
    // Writes went on during the backup and after it.
    bank.wait_acked_since(Instant::now(), 100).await;
    let (acked, failed, _) = bank.stop().await;
    assert!(failed.is_empty(), "failed writes: {failed:?}");
    let before = acked.iter().filter(|a| a.at < started).count();
    let held = acked.iter().filter(|a| a.revision <= revision).count();
    eprintln!(
        "backup at revision {revision}: {} bytes, {} of {} acknowledged writes in it",
        saved["bytes"],
        held,
        acked.len()
    );
    assert!(
        held >= before,
        "every write acknowledged before the backup began is in it"
    );
    assert!(held < acked.len(), "writes after the backup are not in it");

    let (ok, verified) = cli(&["backup", "verify", file.to_str().unwrap()]);
    assert!(ok, "{verified}");
    assert_eq!(verified["info"]["revision"].as_u64(), Some(revision));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let corrupt = dir.path().join("corrupt.backup");
    std::fs::write(&corrupt, &bytes).unwrap();
    let (ok, answer) = cli(&["backup", "verify", corrupt.to_str().unwrap()]);
    assert!(!ok, "a flipped bit passed verify: {answer}");

    let (_restored, restored_client) = restore(&file).await;
    check_state(&restored_client, &acked, 4, Some(revision)).await;
    // The source keeps everything, and the new cluster takes writes of its own.
    check_state(&client, &acked, 4, None).await;
    restored_client.put("after-restore", "x").await.unwrap();
    drop(source);
}

/// `--backup-dir` with a short `--backup-interval`: backups appear on schedule while a load goes
/// on, only the newest `--backup-keep` stay, each is whole (it verifies, readable by the node's
/// user only), and the newest restores to exactly the source's state at its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_keep_the_newest_and_restore() {
    const KEEP: usize = 2;
    let backups = tempfile::tempdir().unwrap();
    // The node creates the directory.
    let dir = backups.path().join("n2");
    let (mut source, client) = start_with_client(Options {
        node_args: vec![(
            2,
            vec![
                "--backup-dir".into(),
                dir.display().to_string(),
                "--backup-interval".into(),
                "1s".into(),
                "--backup-keep".into(),
                KEEP.to_string(),
            ],
        )],
        ..Options::default()
    })
    .await;
    let bank = Bank::start(&client, 4).await;
    let files = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // More backups taken than kept, and at that moment the directory holds just the kept ones.
    Cluster::eventually(
        "scheduled backups pruned to the newest",
        Duration::from_secs(60),
        || async {
            let ok = source
                .metric(2, "metrokv_scheduled_backups_total{result=\"ok\"}")
                .await
                .unwrap_or(0.0);
            let names = files(&dir);
            (ok >= (KEEP + 2) as f64 && names.len() == KEEP)
                .then_some(())
                .ok_or(format!("{ok} taken; {names:?}"))
        },
    )
    .await
    .unwrap();
    let (acked, failed, _) = bank.stop().await;
    assert!(failed.is_empty(), "failed writes: {failed:?}");
    // Stopped, the node writes no more: what is in the directory stays put.
    let status = source.terminate(2, Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
    let names: Vec<String> = files(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".backup"))
        .collect();
    assert!(names.len() == KEEP || names.len() == KEEP + 1, "{names:?}");
    let mut revisions = Vec::new();
    for name in &names {
        let path = dir.join(name);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        let (info, _) = metrokv_client::backup::verify(&path).unwrap();
        assert_eq!((info.cluster_id.as_str(), info.node), ("metrokv-test", 2));
        assert!(name.contains(&format!("r{:020}", info.revision)), "{name}");
        revisions.push(info.revision);
    }
    assert!(
        revisions.windows(2).all(|w| w[0] <= w[1]),
        "names sort oldest first: {revisions:?}"
    );
    let newest = dir.join(names.last().unwrap());
    let revision = *revisions.last().unwrap();
    eprintln!(
        "scheduled backups kept: {names:?}; the newest at revision {revision} of {} acknowledged writes",
        acked.len()
    );
    let (_restored, restored_client) = restore(&newest).await;
    check_state(&restored_client, &acked, 4, Some(revision)).await;
}

/// A new one-node cluster restored from `backup` (`metrokv-node restore`), and a client of it.
async fn restore(backup: &std::path::Path) -> (Cluster, Client) {
    start_with_client(Options {
        nodes: 1,
        restore_from: Some(backup.to_path_buf()),
        ..Options::default()
    })
    .await
}

/// A cluster and a client of it with a 10 s deadline.
async fn start_with_client(options: Options) -> (Cluster, Client) {
    let cluster = Cluster::start(options).await.unwrap();
    let client = cluster
        .client_builder()
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    (cluster, client)
}
