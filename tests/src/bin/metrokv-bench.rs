//! `metrokv-bench`: commands that print figures (not tests: timing depends on the machine).
//!
//!   metrokv-bench failover [--trials N] [--interval-ms MS]
//!   metrokv-bench zone-loss [--layout 2+2+1|2+1] [--witness] [--trials N]
//!   metrokv-bench report DIR
//!   metrokv-bench load [--workload put|get|get-stale|transfer] [--clients N] [--seconds S]
//!   metrokv-bench scale [--keys N] [--value-size B] [--clients N] [--seconds S] [--json FILE]
//!
//! `failover` starts a local three-node cluster of real processes, keeps a stream of writes
//! going through the surviving nodes, kills the leader with SIGKILL, and reports the longest time
//! no write was acknowledged: from the kill to the first acknowledged write after it. It restarts
//! the old leader between trials and prints every trial and the min / median / max.
//!
//! `zone-loss` measures RPO and RTO when a whole zone is lost: writes flow (sequentially, each
//! with an idempotency key) through the nodes of the zones that survive, the leader is moved
//! into dc-a, and both dc-a nodes are SIGKILLed at once. It prints, per trial, the writes
//! acknowledged, how many of them the survivors no longer have (RPO, in writes), and the longest
//! time without an acknowledged write from the loss on (RTO). On 2+2+1 the survivors carry on by
//! themselves; on 2+1 the README's runbook is run by the tool (`recover --force-new-cluster` on
//! n3, restart) and the RTO includes it, but not a human's reaction time.
//!
//! `report` turns `DIR/results.jsonl` (written by `scripts/bench.sh`) into `DIR/report.md`,
//! `DIR/chart.svg` and `DIR/results.json`.
//!
//! `load` runs closed-loop clients (each sends its next request when the last one is answered)
//! against a fresh local cluster, or `--endpoints`, and prints throughput and latency.
//!
//! `scale` fills a fresh cluster with `--keys` keys and measures what that costs: see
//! `metrokv_tests::scale`.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use metrokv_tests::Cluster;
use metrokv_tests::Options;

#[derive(Parser)]
#[command(about = "metrokv benchmarks that print figures")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Leader-failover gap: how long writes are refused after the leader is killed.
    Failover {
        /// Number of kills.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Pause between writes, in ms.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
    },
    /// The side-by-side report from DIR/results.jsonl (see scripts/bench.sh).
    Report { dir: std::path::PathBuf },
    /// RPO and RTO when a whole zone (dc-a, with the leader) is lost.
    ZoneLoss {
        #[arg(long, default_value = "2+2+1", value_parser = ["2+2+1", "2+1"])]
        layout: String,
        /// On 2+2+1: n5 (dc-c) is a witness.
        #[arg(long)]
        witness: bool,
        /// Zone losses (2+1 runs one: its recovery leaves a one-node cluster).
        #[arg(long, default_value_t = 3)]
        trials: usize,
        /// off, adaptive or strict (default: the cluster's default, adaptive).
        #[arg(long, value_parser = ["off", "adaptive", "strict"])]
        zone_safety: Option<String>,
    },
    /// One cluster holding many keys: fill rate, resident memory, backup and restore, a
    /// crashed node's restart, a new member's catch-up by snapshot, many clients, zone modes.
    Scale {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Clients of the many-clients row.
        #[arg(long, default_value_t = 1_024)]
        clients: usize,
        /// Measured seconds of each load row.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Closed-loop load: CLIENTS concurrent clients for SECONDS, spread over the nodes.
    Load {
        /// put (16-byte keys, 100-byte values), get (linearizable), get-stale, or transfer
        /// (1,000 accounts).
        #[arg(long, default_value = "put", value_parser = ["put", "get", "get-stale", "transfer"])]
        workload: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Use these endpoints instead of starting a cluster (comma-separated URLs).
        #[arg(long)]
        endpoints: Option<String>,
    },
}

/// Accounts the transfer workload spreads over.
const LOAD_ACCOUNTS: usize = 1000;

async fn load(
    workload: &str,
    clients: usize,
    seconds: u64,
    endpoints: Option<String>,
) -> anyhow::Result<()> {
    let cluster = match endpoints {
        Some(_) => None,
        None => Some(
            Cluster::start(Options::default())
                .await
                .context("start cluster")?,
        ),
    };
    let urls: Vec<String> = match (&endpoints, &cluster) {
        (Some(e), _) => e.split(',').map(str::to_string).collect(),
        (None, Some(c)) => c.urls(),
        (None, None) => unreachable!("a cluster is started when no endpoints are given"),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(clients)
        .build()?;
    let value = "v".repeat(100);
    if workload == "transfer" {
        for i in 0..LOAD_ACCOUNTS {
            let r = http
                .post(format!("{}/v1/accounts", urls[i % urls.len()]))
                .header("idempotency-key", format!("bench-acct-{i}"))
                .json(&serde_json::json!({"id": format!("acct-{i:04}"), "balance": 1_000_000}))
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success() || r.status() == 409,
                "creating accounts: {}",
                r.status()
            );
        }
    } else if workload.starts_with("get") {
        for i in 0..100 {
            http.put(format!("{}/v1/kv/bench-{i:010}", urls[0]))
                .body(value.clone())
                .send()
                .await?
                .error_for_status()?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, value, workload) = (
            http.clone(),
            urls[c % urls.len()].clone(),
            value.clone(),
            workload.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            let mut i = 0u64;
            let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = Instant::now();
                let request = match workload.as_str() {
                    "put" => http
                        .put(format!("{url}/v1/kv/bench-{:010}", x % 100_000))
                        .body(value.clone()),
                    "get" => http.get(format!("{url}/v1/kv/bench-{:010}", x % 100)),
                    "get-stale" => http.get(format!(
                        "{url}/v1/kv/bench-{:010}?consistency=stale",
                        x % 100
                    )),
                    _ => {
                        let from = (x % LOAD_ACCOUNTS as u64) as usize;
                        let to =
                            (from + 1 + (x >> 20) as usize % (LOAD_ACCOUNTS - 1)) % LOAD_ACCOUNTS;
                        http.post(format!("{url}/v1/transfers")).json(&serde_json::json!({
                            "id": format!("bench-{c}-{i}-{x:x}"), "from": format!("acct-{from:04}"),
                            "to": format!("acct-{to:04}"), "amount": 1 + x % 100,
                        }))
                    }
                };
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        hist.record(t.elapsed().as_micros() as u64)
                            .expect("record latency");
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (hist, errors)
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        all.add(h)?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{workload}: {clients} clients, {secs:.1} s: {:.0} ok/s, {errors} errors; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len() as f64 / secs,
        ms(all.value_at_quantile(0.5)),
        ms(all.value_at_quantile(0.99)),
        ms(all.max())
    );
    Ok(())
}

/// How long one trial may wait for writes to resume before it counts as a failure.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(20);

async fn failover(trials: usize, interval: Duration) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Options::default())
        .await
        .context("start cluster")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()?;
    let mut gaps = Vec::new();
    println!(
        "trial  killed  new-leader  gap-ms  (writes every {} ms, to the survivors)",
        interval.as_millis()
    );
    for trial in 1..=trials {
        let leader = cluster.leader().await.context("no leader")?;
        let survivors: Vec<String> = cluster
            .nodes()
            .iter()
            .filter(|n| n.id != leader)
            .map(|n| n.url())
            .collect();
        // Warm up: writes flow before the kill.
        for i in 0..20 {
            let url = &survivors[i % survivors.len()];
            http.put(format!("{url}/v1/kv/bench-warm"))
                .body("x")
                .send()
                .await?
                .error_for_status()?;
        }
        let killed_at = Instant::now();
        cluster.kill(leader);
        let mut i = 0usize;
        let gap = loop {
            let url = &survivors[i % survivors.len()];
            i += 1;
            let ok = http
                .put(format!("{url}/v1/kv/bench-{trial}-{i}"))
                .header("idempotency-key", format!("bench-{trial}-{i}"))
                .body("x")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > TRIAL_TIMEOUT {
                anyhow::bail!("trial {trial}: writes did not resume within {TRIAL_TIMEOUT:?}");
            }
            tokio::time::sleep(interval).await;
        };
        let new_leader = cluster.leader().await.map_or("?".into(), |l| l.to_string());
        println!(
            "{trial:>5}  n{leader:<5}  n{new_leader:<9}  {:>6}",
            gap.as_millis()
        );
        gaps.push(gap);
        cluster.restart(leader)?;
        cluster.wait_ready(Duration::from_secs(30)).await?;
    }
    gaps.sort();
    let ms = |d: Duration| d.as_millis();
    println!(
        "failover gap over {} trials: min {} ms, median {} ms, max {} ms",
        gaps.len(),
        ms(gaps[0]),
        ms(gaps[gaps.len() / 2]),
        ms(gaps[gaps.len() - 1])
    );
    Ok(())
}

/// One sequential writer through `urls` (round robin) until `stop`: the keys acknowledged, and
/// when each was.
async fn write_until(
    http: &reqwest::Client,
    urls: &[String],
    prefix: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, Instant)> {
    let mut acked = Vec::new();
    let mut i = 0usize;
    while !*stop.borrow() {
        let key = format!("{prefix}-{i}");
        let url = &urls[i % urls.len()];
        i += 1;
        let ok = http
            .put(format!("{url}/v1/kv/{key}"))
            .header("idempotency-key", key.clone())
            .body("x")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            acked.push((key, Instant::now()));
        }
    }
    acked
}

async fn zone_loss(
    layout: &str,
    witness: bool,
    trials: usize,
    zone_safety: Option<String>,
) -> anyhow::Result<()> {
    let three_sites = layout == "2+2+1";
    let mut options = if three_sites {
        Options::three_sites()
    } else {
        Options::default()
    };
    if three_sites && witness {
        options.node_args = vec![(5, vec!["--witness".to_string()])];
    }
    let mut cluster = Cluster::start(options).await.context("start cluster")?;
    if let Some(mode) = &zone_safety {
        let (status, body) = cluster
            .set_settings(&serde_json::json!({ "zone_safety": mode }))
            .await;
        anyhow::ensure!(status.is_success(), "settings: {status} {body}");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()?;
    let lost: Vec<u64> = cluster
        .nodes()
        .iter()
        .filter(|n| n.zone == "dc-a")
        .map(|n| n.id)
        .collect();
    let survivors: Vec<u64> = cluster
        .nodes()
        .iter()
        .filter(|n| n.zone != "dc-a" && !(witness && n.id == 5))
        .map(|n| n.id)
        .collect();
    let urls: Vec<String> = survivors.iter().map(|id| cluster.url(*id)).collect();
    let trials = if three_sites { trials } else { 1 };
    println!(
        "layout {layout}{}, zone_safety {}: dc-a (n{}) lost with the leader; writes through {}",
        if witness { " (n5 a witness)" } else { "" },
        zone_safety.as_deref().unwrap_or("adaptive"),
        lost.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", n"),
        urls.join(", ")
    );
    println!("trial  acked  lost(RPO)  write-gap-ms(RTO)  new-leader");
    let mut gaps = Vec::new();
    for trial in 1..=trials {
        // Into dc-a; a node restarted a moment ago may still be catching up (400 until then).
        let to = lost[0];
        let asked = Instant::now();
        loop {
            let moved = http
                .post(format!("{}/v1/cluster/transfer-leader", urls[0]))
                .json(&serde_json::json!({ "to": to }))
                .timeout(Duration::from_secs(15))
                .send()
                .await?;
            let status = moved.status();
            if status.is_success() {
                break;
            }
            let body = moved.text().await.unwrap_or_default();
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(30),
                "transfer-leader to n{to}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = {
            let (http, urls, stop) = (http.clone(), urls.clone(), stop_rx.clone());
            tokio::spawn(
                async move { write_until(&http, &urls, &format!("zl{trial}"), &stop).await },
            )
        };
        // Half a second of writes before the loss (a load phase, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lost_at = Instant::now();
        for id in &lost {
            cluster.kill(*id);
        }
        if !three_sites {
            // The runbook: n3 stops, is recovered as a one-node cluster, starts again.
            cluster.kill(3);
            cluster.recover_force_new_cluster(3)?;
            cluster.restart(3)?;
        }
        // Until a write after the loss is acknowledged, then a little more.
        loop {
            if lost_at.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("trial {trial}: no write acknowledged within 60 s of the loss");
            }
            let leader = cluster.leader().await;
            if leader.is_some_and(|l| !lost.contains(&l)) {
                let r = http
                    .get(format!("{}/ready", urls[0]))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if r {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_tx.send(true)?;
        let acked = writer.await?;
        // The longest silence from the loss on: a write in flight at the kill may still be
        // acknowledged a moment after it, before the gap.
        let mut gap = None;
        let mut last = lost_at;
        for at in acked.iter().map(|(_, at)| *at).filter(|at| *at > lost_at) {
            gap = Some(gap.unwrap_or(Duration::ZERO).max(at - last));
            last = at;
        }
        let mut missing = 0;
        for (key, _) in &acked {
            let r = http.get(format!("{}/v1/kv/{key}", urls[0])).send().await?;
            if !r.status().is_success() {
                missing += 1;
            }
        }
        let new_leader = cluster
            .leader()
            .await
            .map_or("?".into(), |l| format!("n{l}"));
        println!(
            "{trial:>5}  {:>5}  {missing:>9}  {:>17}  {new_leader}",
            acked.len(),
            gap.map_or_else(|| "none".to_string(), |g| g.as_millis().to_string()),
        );
        if let Some(g) = gap {
            gaps.push(g);
        }
        if three_sites {
            for id in &lost {
                cluster.restart(*id)?;
            }
            cluster.wait_ready(Duration::from_secs(30)).await?;
        }
    }
    gaps.sort();
    if !gaps.is_empty() {
        println!(
            "RTO (longest write gap from the loss on) over {} trials: min {} ms, median {} ms, max {} ms",
            gaps.len(),
            gaps[0].as_millis(),
            gaps[gaps.len() / 2].as_millis(),
            gaps[gaps.len() - 1].as_millis()
        );
    }
    Ok(())
}

fn report(dir: &std::path::Path) -> anyhow::Result<()> {
    use metrokv_tests::report;
    let source = dir.join("results.jsonl");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let rows = report::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
    let title = format!(
        "metrokv and etcd side by side ({})",
        dir.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().to_string())
    );
    let mut markdown = report::markdown(&rows, &title);
    // `metrokv-bench scale`'s figures, when the run took them.
    let scale = dir.join("scale.json");
    if scale.exists() {
        let text = std::fs::read_to_string(&scale)
            .with_context(|| format!("reading {}", scale.display()))?;
        let figures: metrokv_tests::scale::ScaleReport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", scale.display()))?;
        markdown.push('\n');
        markdown.push_str(&metrokv_tests::scale::markdown(&figures));
    }
    std::fs::write(dir.join("report.md"), markdown)?;
    std::fs::write(dir.join("chart.svg"), report::svg(&rows))?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!(
        "wrote {}, {} and {}",
        dir.join("report.md").display(),
        dir.join("chart.svg").display(),
        dir.join("results.json").display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Failover {
            trials,
            interval_ms,
        } => failover(trials.max(1), Duration::from_millis(interval_ms)).await,
        Cmd::Report { dir } => report(&dir),
        Cmd::ZoneLoss {
            layout,
            witness,
            trials,
            zone_safety,
        } => zone_loss(&layout, witness, trials.max(1), zone_safety).await,
        Cmd::Scale {
            keys,
            value_size,
            clients,
            seconds,
            json,
        } => {
            let options = metrokv_tests::scale::ScaleOptions {
                keys: keys.max(1),
                value_size,
                clients: clients.max(1),
                seconds,
            };
            let report = metrokv_tests::scale::run(&options).await?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Cmd::Load {
            workload,
            clients,
            seconds,
            endpoints,
        } => load(&workload, clients.max(1), seconds.max(1), endpoints).await,
    }
}
