//! `metrokv-bench`: commands that print figures (not tests: timing depends on the machine).
//!
//!   metrokv-bench failover [--trials N] [--interval-ms MS]
//!
//! `failover` starts a local three-node cluster of real processes, keeps a stream of writes
//! going through the surviving nodes, kills the leader with SIGKILL, and reports the longest time
//! no write was acknowledged: from the kill to the first acknowledged write after it. It restarts
//! the old leader between trials and prints every trial and the min / median / max.

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
            .nodes
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Failover {
            trials,
            interval_ms,
        } => failover(trials.max(1), Duration::from_millis(interval_ms)).await,
    }
}
