//! `metrokv-bench scale`: what one cluster holding many keys costs and how long its chores take
//! (the performance issue's "metrokv alone" rows, and the backup issue's 1M-key figures): fill
//! rate, resident memory, backup and restore, a crashed node's restart, a new member's catch-up
//! by snapshot, 1,024 clients at once, and puts under each zone-safety mode. Figures, not a
//! test: they depend on the machine.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use metrokv_client::bench;
use metrokv_client::Op;
use metrokv_client::TxnRequest;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;

use crate::Cluster;
use crate::Options;

/// Puts per fill transaction: the most one transaction may carry.
const FILL_BATCH: u64 = metrokv_client::api::limits::TXN_OPS_MAX as u64;
/// Concurrent fill transactions.
const FILL_WRITERS: u64 = 16;
/// How long any one chore may take before the run gives up.
const CHORE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub keys: u64,
    pub value_size: usize,
    /// Clients of the many-clients row.
    pub clients: usize,
    /// Measured seconds of each load row.
    pub seconds: f64,
}

/// One load row: ops/s, latency and errors of a `metrokv bench` run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadRow {
    pub what: String,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Everything `scale` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleReport {
    pub keys: u64,
    pub value_size: usize,
    pub fill_keys_per_sec: f64,
    /// Resident memory of each node after the fill (KiB), by node id.
    pub rss_kib_after_fill: Vec<(u64, u64)>,
    pub backup_seconds: f64,
    pub backup_bytes: u64,
    /// `metrokv-node restore` plus the start of the restored node until it is ready.
    pub restore_to_ready_seconds: f64,
    /// SIGKILL of a follower, start, until `/ready`.
    pub restart_to_ready_seconds: f64,
    /// From the add of a new, empty member until the leader accepts its promotion (it is within
    /// the promotion lag of the leader's log).
    pub catch_up_seconds: f64,
    /// Snapshots the new member installed on the way (1: it caught up by snapshot).
    pub catch_up_snapshots: f64,
    pub loads: Vec<LoadRow>,
    /// Resident memory of each node after the loads (KiB).
    pub rss_kib_after_loads: Vec<(u64, u64)>,
}

pub async fn run(o: &ScaleOptions) -> anyhow::Result<ScaleReport> {
    // Snapshots at the old default pace, so the catch-up below goes by snapshot after a fill of
    // any size without first writing 100,000 more entries.
    let mut c = Cluster::start(Options {
        extra_args: vec!["--snapshot-logs-since-last".into(), "10000".into()],
        ..Options::default()
    })
    .await
    .context("start cluster")?;
    let client = c
        .client_builder()
        .deadline(Duration::from_secs(30))
        .build()?;
    let value = bytes::Bytes::from(vec![b'v'; o.value_size]);

    // Fill: every key once, in the largest transactions there are.
    let started = Instant::now();
    let batches = o.keys.div_ceil(FILL_BATCH);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..FILL_WRITERS.min(batches) {
        let (client, value, keys) = (client.clone(), value.clone(), o.keys);
        writers.spawn(async move {
            let mut b = w;
            while b < batches {
                let mut txn = TxnRequest::new();
                for k in b * FILL_BATCH..((b + 1) * FILL_BATCH).min(keys) {
                    txn = txn.then(Op::put(key(k), value.clone()));
                }
                client.txn(&txn).await?;
                b += FILL_WRITERS;
            }
            Ok::<(), metrokv_client::Error>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("a fill task")?.context("a fill transaction")?;
    }
    let fill = started.elapsed();
    let fill_keys_per_sec = o.keys as f64 / fill.as_secs_f64();
    say(format!(
        "filled {} keys of {} bytes in {:.1} s: {fill_keys_per_sec:.0} keys/s",
        o.keys,
        o.value_size,
        fill.as_secs_f64()
    ));
    // Writes until every node has a snapshot, so that the log behind it is purged and a new
    // member must catch up by snapshot.
    let mut i = 0u64;
    Cluster::eventually("every node has a snapshot", CHORE_TIMEOUT, || {
        i += 1;
        let (c, client) = (&c, &client);
        let round = i;
        async move {
            let keys: Vec<String> = (0..256).map(|j| format!("pad-{round}-{j}")).collect();
            let puts = keys.iter().map(|k| client.put(k, "x"));
            for r in futures::future::join_all(puts).await {
                r.map_err(|e| e.to_string())?;
            }
            for n in c.nodes() {
                if c.metric(n.id, "metrokv_snapshots_built_total")
                    .await
                    .unwrap_or(0.0)
                    < 1.0
                {
                    return Err(format!("n{} has built no snapshot yet", n.id));
                }
            }
            Ok(())
        }
    })
    .await?;
    let rss_kib_after_fill = rss(&c);
    say(format!(
        "resident memory after the fill (KiB): {rss_kib_after_fill:?}"
    ));

    // Backup and restore.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("scale.backup");
    let started = Instant::now();
    let saved = client.backup_to(&file, |_, _| {}).await?;
    let backup_seconds = started.elapsed().as_secs_f64();
    say(format!(
        "backup of revision {}: {} bytes, {} records in {backup_seconds:.2} s",
        saved.info.revision, saved.bytes, saved.records
    ));
    let started = Instant::now();
    let restored = Cluster::start(Options {
        nodes: 1,
        restore_from: Some(file.clone()),
        ..Options::default()
    })
    .await
    .context("restore")?;
    let restore_to_ready_seconds = started.elapsed().as_secs_f64();
    let last = key(o.keys - 1);
    let (status, body, _) = restored.get(1, &last).await;
    anyhow::ensure!(status == 200, "{last} after the restore: {status} {body}");
    drop(restored);
    say(format!(
        "restored into a new one-node cluster, ready in {restore_to_ready_seconds:.2} s"
    ));

    // A follower's crash and restart.
    let leader = c.leader().await.context("no leader")?;
    let follower = c
        .nodes()
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .context("no follower")?;
    c.kill(follower);
    let started = Instant::now();
    c.start_node(follower)?;
    let url = format!("{}/ready", c.url(follower));
    Cluster::eventually("the restarted node is ready", CHORE_TIMEOUT, || async {
        match c.http().get(&url).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let restart_to_ready_seconds = started.elapsed().as_secs_f64();
    say(format!(
        "n{follower} killed and started again: ready in {restart_to_ready_seconds:.2} s"
    ));

    // Loads on the full cluster.
    let mut loads = Vec::new();
    for mode in ["off", "adaptive", "strict"] {
        let (status, body) = c.set_settings(&json!({ "zone_safety": mode })).await;
        anyhow::ensure!(status == 200, "zone_safety {mode}: {status} {body}");
        loads.push(load(&c, &format!("put, 64 clients, zone_safety {mode}"), 64, o).await?);
    }
    loads.push(load(&c, &format!("put, {} clients", o.clients), o.clients, o).await?);
    let rss_kib_after_loads = rss(&c);
    say(format!(
        "resident memory after the loads (KiB): {rss_kib_after_loads:?}"
    ));

    // A new member with empty storage catches up.
    let id = c.nodes().len() as u64 + 1;
    let known: Vec<u64> = c.nodes().iter().map(|n| n.id).collect();
    let (joiner, body) = c.start_joiner(id, "dc-b", &known, &[]);
    let members = format!("{}/v1/cluster/members", c.url(leader));
    post_until_ok(c.http(), &members, Some(&body), "the new member is added").await?;
    let started = Instant::now();
    let promote = format!("{}/v1/cluster/members/{id}/promote", c.url(leader));
    post_until_ok(c.http(), &promote, None, "the new member is caught up").await?;
    let catch_up_seconds = started.elapsed().as_secs_f64();
    let catch_up_snapshots = c
        .metric_at(&joiner.url, "metrokv_snapshots_installed_total")
        .await
        .unwrap_or(0.0);
    say(format!(
        "n{id} (empty) added and caught up in {catch_up_seconds:.2} s, {catch_up_snapshots} snapshot(s) installed"
    ));
    Ok(ScaleReport {
        keys: o.keys,
        value_size: o.value_size,
        fill_keys_per_sec,
        rss_kib_after_fill,
        backup_seconds,
        backup_bytes: saved.bytes,
        restore_to_ready_seconds,
        restart_to_ready_seconds,
        catch_up_seconds,
        catch_up_snapshots,
        loads,
        rss_kib_after_loads,
    })
}

/// The "metrokv alone" section of the benchmark report, with the performance issue's targets.
pub fn markdown(r: &ScaleReport) -> String {
    let mib = |kib: &[(u64, u64)]| {
        kib.iter()
            .map(|(id, k)| format!("n{id} {} MiB", k / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut out = format!(
        "## metrokv alone: one cluster holding {} keys of {} bytes (`metrokv-bench scale`)\n\n\
         | what | measured | target |\n|---|---|---|\n",
        r.keys, r.value_size
    );
    let mut line = |what: &str, measured: String, goal: &str| {
        out.push_str(&format!("| {what} | {measured} | {goal} |\n"));
    };
    line(
        "fill (transactions of 128 puts, 16 at a time)",
        format!("{:.0} keys/s", r.fill_keys_per_sec),
        "",
    );
    line(
        "resident memory after the fill",
        mib(&r.rss_kib_after_fill),
        "",
    );
    line(
        "restart of a killed node until ready",
        format!("{:.2} s", r.restart_to_ready_seconds),
        &format!("<= 2 s: {}", target(r.restart_to_ready_seconds <= 2.0)),
    );
    line(
        "a new, empty member: added until caught up",
        format!(
            "{:.2} s ({} snapshot installed)",
            r.catch_up_seconds, r.catch_up_snapshots
        ),
        &format!("<= 10 s: {}", target(r.catch_up_seconds <= 10.0)),
    );
    line(
        "backup (`GET /v1/backup` to a file)",
        format!(
            "{:.2} s, {} MiB",
            r.backup_seconds,
            r.backup_bytes / (1024 * 1024)
        ),
        "",
    );
    line(
        "restore into a new node until ready",
        format!("{:.2} s", r.restore_to_ready_seconds),
        "",
    );
    for l in &r.loads {
        let errors: u64 = l.errors.values().sum();
        line(
            &l.what,
            format!(
                "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {errors} errors {:?}",
                l.ops_per_sec, l.p50_ms, l.p99_ms, l.errors
            ),
            "",
        );
    }
    line(
        "resident memory after the loads",
        mib(&r.rss_kib_after_loads),
        "",
    );
    out
}

/// POSTs `body` to `url` until the answer is 200 (at most [`CHORE_TIMEOUT`]).
async fn post_until_ok(
    http: &reqwest::Client,
    url: &str,
    body: Option<&serde_json::Value>,
    what: &str,
) -> anyhow::Result<()> {
    Cluster::eventually(what, CHORE_TIMEOUT, || async {
        let mut request = http.post(url);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

fn key(k: u64) -> String {
    format!("scale-{k:010}")
}

fn say(line: String) {
    eprintln!("{line}");
}

fn rss(c: &Cluster) -> Vec<(u64, u64)> {
    c.nodes()
        .iter()
        .map(|n| (n.id, c.rss_kib(n.id).unwrap_or(0)))
        .collect()
}

/// A closed-loop put load through `metrokv bench`'s engine.
async fn load(
    c: &Cluster,
    what: &str,
    clients: usize,
    o: &ScaleOptions,
) -> anyhow::Result<LoadRow> {
    let options = bench::BenchOptions {
        system: bench::System::Metrokv,
        workload: bench::Workload::Put,
        clients,
        duration: Duration::from_secs_f64(o.seconds),
        warmup: Duration::from_secs(1),
        keys: o.keys,
        value_size: o.value_size,
        accounts: 1_000,
        rate: None,
        read_ratio: 0.9,
        seed: 1,
        server_pids: Vec::new(),
    };
    let report = bench::run(
        &c.client_builder(),
        options,
        Arc::new(bench::Progress::default()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let row = LoadRow {
        what: what.to_string(),
        ops_per_sec: report.ops_per_sec,
        p50_ms: report.latency.p50_us as f64 / 1000.0,
        p99_ms: report.latency.p99_us as f64 / 1000.0,
        errors: report.errors,
    };
    say(format!(
        "{what}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, errors {:?}",
        row.ops_per_sec, row.p50_ms, row.p99_ms, row.errors
    ));
    Ok(row)
}
