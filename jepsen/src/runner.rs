//! `metrokv-jepsen run`: one test from start to verdict.
//!
//! Phases (the progress bar names the current one):
//! 1. **setup**: plan the fault schedule from the seed (printed first), start a proxy for every
//!    directed link and the node processes behind them, wait until every node is ready, create
//!    the accounts, write `test.json`.
//! 2. **run**: `--concurrency` workers, spread over the zones (and split between the workloads
//!    when there are several), issue ops at `--rate` in total through their zone's proxies,
//!    while the nemesis applies the schedule; for `--time-limit` seconds. With `--kill-loop N`
//!    the nemesis kills N times instead and the run ends when it is done (the time limit
//!    still bounds it). A worker whose op ends `info` continues as a new process.
//! 3. **heal**: sever every connection (so nothing held during a fault is delivered late),
//!    restore the healthy network, put every node's clock back, resume paused and restart
//!    stopped nodes.
//! 4. **settle**: wait until every node is ready and names the same leader, then until no
//!    write that entered a node before the heal can still be proposed (the node's write
//!    timeout bounds it), then commit a barrier write through the leader. From here on no transfer's fate can change: an entry
//!    committed after the barrier would need a request that arrived after the heal, and there
//!    are none.
//! 5. **final reads**: bank: one linearizable read of all balances and the server's record of
//!    every transfer id in the history; register: a read of every key, recorded in the history.
//! 6. **check** and **report**: the same checkers as `check DIR`; `history.jsonl`,
//!    `results.json`, `report.html`, `test.json`; node logs stay in `nodes/nN/node.log`.
//!
//! Exit codes: [`EXIT_VALID`], [`EXIT_INVALID`], [`EXIT_HARNESS`] (also for an unknown
//! verdict, which is never a pass).
//!
//! Leaves out: the processes (`cluster.rs`), the links (`net.rs`), applying faults
//! (`faults.rs`), the ops (`workload.rs`), the display (`progress.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use metrokv_client::{Client, ClientBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checker::bank::BankMode;
use crate::checker::{self, CheckOptions, Results, Validity};
use crate::cluster::Cluster;
use crate::faults::{self, sleep_or_stop, KillLoopReport};
use crate::history::{Call, History, OpType, Process, Recorder, RegisterRead};
use crate::nemesis::{self, FaultInterval, KillStep, NemesisKind, ScheduleOptions, Topology};
use crate::net::{NetMode, Network, Shape, TestNet};
use crate::netns::NetnsNetwork;
use crate::progress::Progress;
use crate::record::{
    BankRecord, RegisterFinalRead, RegisterRecord, RunOptions, TestRecord, Workload,
};
use crate::report;
use crate::workload::{self, WorkloadSpec, BARRIER_KEY};

/// The history is valid.
pub const EXIT_VALID: u8 = 0;
/// Anomalies were found.
pub const EXIT_INVALID: u8 = 1;
/// The harness failed, or the verdict is unknown.
pub const EXIT_HARNESS: u8 = 2;

/// The longest test accepted (a day): the history and the outcome lookups grow with it.
pub const TIME_LIMIT_S_MAX: u64 = 24 * 3600;
/// The most client workers.
pub const CONCURRENCY_MAX: usize = 256;
/// The highest total op rate accepted, ops/s (a two-core machine manages far less).
pub const RATE_MAX: f64 = 10_000.0;
/// How long the nodes get to elect a leader and become ready at the start.
pub const SETUP_READY_TIMEOUT_MS: u64 = 60_000;
/// How long the healed cluster gets to become ready again.
pub const SETTLE_READY_TIMEOUT_MS: u64 = 60_000;
/// Added to the node write timeout when waiting out writes that entered before the heal
/// (scheduling slack on a loaded machine).
pub const SETTLE_MARGIN_MS: u64 = 1_000;
/// Deadline of one control call (setup, barrier, final reads), across the client's retries.
pub const ADMIN_DEADLINE_MS: u64 = 15_000;
/// Attempt timeout of control calls.
pub const ADMIN_ATTEMPT_TIMEOUT_MS: u64 = 3_000;
/// Transfer outcome lookups in flight at once after the test.
pub const OUTCOME_LOOKUPS_IN_FLIGHT: usize = 32;
/// The harness's own bound on one op beyond the client's deadline: past it the op is given up
/// (`info` for writes), so a worker can never hang.
pub const OP_GUARD_SLACK_MS: u64 = 2_000;
/// How often the lag monitor wakes; its lateness is the harness's scheduling lag (CPU
/// starvation shows up here before it shows up as elections).
const LAG_PROBE_MS: u64 = 100;

/// Everything `run` needs, already validated by the CLI.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// One or more workloads; the workers are split between them.
    pub workloads: Vec<Workload>,
    pub bank_mode: BankMode,
    pub topology: Topology,
    pub nemeses: Vec<NemesisKind>,
    /// `--kill-loop N`: N kills one after another instead of a timed schedule.
    pub kill_loop: Option<u32>,
    pub time_limit_s: u64,
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub node_bin: PathBuf,
    pub keep_data: bool,
    pub accounts: usize,
    pub initial_balance: u64,
    pub transfer_amount_max: u64,
    pub keys: usize,
    /// How long one generation of register keys lasts.
    pub register_generation_ms: u64,
    pub inter_zone_latency_ms: u64,
    /// Passed to the nodes as `--write-timeout-ms`; the settle phase waits it out.
    pub write_timeout_ms: u64,
    /// A client op's deadline, across its retries.
    pub op_deadline_ms: u64,
    /// One attempt's timeout within an op.
    pub op_attempt_timeout_ms: u64,
    /// Extra flags for every node.
    pub node_args: Vec<String>,
    /// Proxies on loopback, or network namespaces.
    pub net: NetMode,
    /// TLS on both ports of every node (`--tls`): HTTPS for the clients, mutual TLS between
    /// members, certificates from a throwaway CA (`metrokv-node certs`).
    pub tls: bool,
    /// Set on the cluster before the workload starts (`None`: the cluster's default).
    pub zone_safety: Option<metrokv_client::api::cluster::ZoneMode>,
    pub check: CheckOptions,
}

impl RunConfig {
    /// Refuses options outside the named limits.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.time_limit_s == 0 || self.time_limit_s > TIME_LIMIT_S_MAX {
            bail!("--time-limit must be 1..={TIME_LIMIT_S_MAX} s");
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            bail!("--concurrency must be 1..={CONCURRENCY_MAX}");
        }
        if !(self.rate > 0.0 && self.rate <= RATE_MAX) {
            bail!("--rate must be above 0 and at most {RATE_MAX}");
        }
        if self.op_deadline_ms == 0 || self.op_attempt_timeout_ms == 0 {
            bail!("op deadlines must be positive");
        }
        if self.workloads.is_empty() {
            bail!("--workload needs bank, register or both");
        }
        if !self.workloads.contains(&Workload::Bank) && self.bank_mode == BankMode::BlindWrites {
            bail!("--mode unsafe applies to the bank workload only");
        }
        if self.concurrency < self.workloads.len() {
            bail!("--concurrency must give every workload at least one worker");
        }
        if self.kill_loop.is_some() && self.nemeses != [NemesisKind::Kill] {
            bail!("--kill-loop needs --nemesis kill (and no other nemesis)");
        }
        Ok(())
    }

    /// One spec per workload, in the order of `workloads`.
    fn workload_specs(&self) -> anyhow::Result<Vec<WorkloadSpec>> {
        self.workloads
            .iter()
            .map(|workload| match workload {
                Workload::Bank => WorkloadSpec::bank(
                    self.bank_mode,
                    self.accounts,
                    self.initial_balance,
                    self.transfer_amount_max,
                ),
                Workload::Register => {
                    WorkloadSpec::register(self.keys, self.register_generation_ms)
                }
            })
            .collect()
    }

    fn node_args(&self) -> Vec<String> {
        let mut args = vec![
            "--write-timeout-ms".to_owned(),
            self.write_timeout_ms.to_string(),
        ];
        args.extend(self.node_args.iter().cloned());
        args
    }

    /// The flags that the record's fixed fields do not hold, for reproducing the run.
    fn settings(&self) -> BTreeMap<String, String> {
        let mut settings = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            settings.insert(k.to_owned(), v);
        };
        put("mode", mode_name(self.bank_mode).to_owned());
        put("accounts", self.accounts.to_string());
        put("initial_balance", self.initial_balance.to_string());
        put("transfer_amount_max", self.transfer_amount_max.to_string());
        put("keys", self.keys.to_string());
        put(
            "register_generation_ms",
            self.register_generation_ms.to_string(),
        );
        if let Some(kills) = self.kill_loop {
            put("kill_loop", kills.to_string());
        }
        put(
            "inter_zone_latency_ms",
            self.inter_zone_latency_ms.to_string(),
        );
        put("write_timeout_ms", self.write_timeout_ms.to_string());
        put("op_deadline_ms", self.op_deadline_ms.to_string());
        put(
            "op_attempt_timeout_ms",
            self.op_attempt_timeout_ms.to_string(),
        );
        put("node_args", self.node_args.join(" "));
        put("node_bin", self.node_bin.display().to_string());
        put("net", self.net.as_str().to_owned());
        if self.tls {
            put("tls", "true".to_owned());
        }
        settings
    }
}

/// `safe` or `unsafe`, as the CLI spells the bank mode.
pub fn mode_name(mode: BankMode) -> &'static str {
    match mode {
        BankMode::Transfers => "safe",
        BankMode::BlindWrites => "unsafe",
    }
}

/// Removes a previous run's files from `out` (only names this harness writes) and creates it.
pub fn prepare_out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in [
        report::HISTORY_FILE,
        report::RESULTS_FILE,
        report::REPORT_FILE,
        report::TEST_FILE,
    ] {
        let path = out.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old {}", path.display()))?;
        }
    }
    let nodes = out.join("nodes");
    if nodes.exists() {
        std::fs::remove_dir_all(&nodes)
            .with_context(|| format!("removing the old {}", nodes.display()))?;
    }
    Ok(())
}

/// A client over the nodes' own addresses (the control plane: never faulted).
pub fn admin_client(cluster: &Cluster, seed: u64) -> anyhow::Result<Client> {
    let urls: Vec<String> = cluster.addrs().iter().map(|n| n.url()).collect();
    trusting(ClientBuilder::new(urls), cluster.api_ca())
        .learn_zones(false)
        .deadline(Duration::from_millis(ADMIN_DEADLINE_MS))
        .attempt_timeout(Duration::from_millis(ADMIN_ATTEMPT_TIMEOUT_MS))
        .seed(seed)
        .build()
        .context("building the control client")
}

/// `builder`, trusting `api_ca` for the nodes' HTTPS when there is one (`--tls`).
fn trusting(builder: ClientBuilder, api_ca: Option<&std::path::Path>) -> ClientBuilder {
    match api_ca {
        Some(ca) => builder.tls(metrokv_client::TlsOptions {
            ca: Some(ca.to_path_buf()),
            ..Default::default()
        }),
        None => builder,
    }
}

/// A client in `zone` that reaches every node through that zone's proxies, preferring its own
/// zone's nodes.
pub fn zone_client(
    network: &Network,
    zone: &str,
    deadline_ms: u64,
    attempt_timeout_ms: u64,
    seed: u64,
) -> anyhow::Result<Client> {
    zone_client_at(
        &network.client_endpoints(zone),
        network.api_ca(),
        zone,
        deadline_ms,
        attempt_timeout_ms,
        seed,
    )
}

/// A client in `zone` over these endpoints: (URL, node, node zone).
pub fn zone_client_at(
    endpoints: &[(String, String, String)],
    api_ca: Option<&std::path::Path>,
    zone: &str,
    deadline_ms: u64,
    attempt_timeout_ms: u64,
    seed: u64,
) -> anyhow::Result<Client> {
    let builder = ClientBuilder::new(endpoints.iter().map(|(url, _, _)| url.clone()));
    let mut builder = trusting(builder, api_ca)
        .zone(zone)
        .learn_zones(false)
        .deadline(Duration::from_millis(deadline_ms))
        .attempt_timeout(Duration::from_millis(attempt_timeout_ms))
        .seed(seed);
    for (url, _, node_zone) in endpoints {
        builder = builder.endpoint_zone(url.clone(), node_zone.clone());
    }
    builder
        .build()
        .with_context(|| format!("building the client of zone {zone}"))
}

/// What the run phase shares between workers and the nemesis.
struct RunContext<'a> {
    config: &'a RunConfig,
    /// One per workload; worker `i` runs `specs[workload_of(i)]`.
    specs: &'a [WorkloadSpec],
    recorder: &'a Recorder,
    progress: &'a Progress,
    /// Maps a client endpoint URL to its node's name.
    endpoint_names: BTreeMap<String, String>,
    /// The next unused process id (workers take a new one after an `info`).
    next_process: AtomicU64,
    started: Instant,
    stop: watch::Sender<bool>,
}

impl RunContext<'_> {
    fn node_of(&self, endpoint: Option<&str>) -> Option<String> {
        let endpoint = endpoint?.trim_end_matches('/');
        Some(
            self.endpoint_names
                .get(endpoint)
                .cloned()
                .unwrap_or_else(|| endpoint.to_owned()),
        )
    }

    fn fresh_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }
}

/// Which workload worker `index` of `concurrency` runs, of `workloads`: contiguous blocks, so
/// that each workload's workers still cycle through the zones (which go round-robin by index).
pub fn workload_of(index: usize, concurrency: usize, workloads: usize) -> usize {
    (index * workloads / concurrency.max(1)).min(workloads.saturating_sub(1))
}

/// Per-worker seeds are drawn from the run seed, so that workers differ but stay reproducible.
fn worker_seed(seed: u64, worker: usize) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0FC1_1E47);
    let mut value = 0;
    for _ in 0..=worker {
        value = rng.random();
    }
    value
}

/// One client worker: issues ops until stopped, at its share of the rate. Closed loop: an op
/// that takes longer than the interval delays the next one (no catching up after a fault).
async fn worker(
    context: &RunContext<'_>,
    client: Client,
    index: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = context.config;
    let spec = &context.specs[workload_of(index, config.concurrency, context.specs.len())];
    let mut rng = ChaCha8Rng::seed_from_u64(worker_seed(config.seed, index));
    let interval = Duration::from_secs_f64(config.concurrency as f64 / config.rate);
    let guard = Duration::from_millis(config.op_deadline_ms + OP_GUARD_SLACK_MS);
    let mut process = index as u64;
    // Staggered start, so that workers do not fire in lockstep.
    let mut next = Instant::now() + interval.mul_f64(rng.random_range(0.0..1.0));
    let mut seq = 0u64;
    while sleep_or_stop(next, &mut stop).await {
        let elapsed_ms = u64::try_from(context.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let call = spec.generate(&mut rng, index, seq, elapsed_ms);
        seq += 1;
        context.recorder.record(
            Process::Client(process),
            OpType::Invoke,
            call.clone(),
            None,
            None,
        )?;
        let done = spec.execute(&client, &call, guard).await;
        let node = context.node_of(done.endpoint.as_deref());
        context.recorder.record(
            Process::Client(process),
            done.kind,
            done.call,
            node,
            done.error,
        )?;
        context.progress.count(done.kind);
        if done.kind == OpType::Info {
            // Jepsen's rule: the info op stays open forever, so this process is done.
            process = context.fresh_process();
        }
        next += interval.mul_f64(rng.random_range(0.5..1.5));
        next = next.max(Instant::now());
    }
    Ok(())
}

/// Measures how late the harness's own timers fire; returns the worst lateness seen.
async fn lag_monitor(mut stop: watch::Receiver<bool>) -> Duration {
    let mut worst = Duration::ZERO;
    loop {
        let due = Instant::now() + Duration::from_millis(LAG_PROBE_MS);
        if !sleep_or_stop(due, &mut stop).await {
            return worst;
        }
        worst = worst.max(Instant::now().saturating_duration_since(due));
    }
}

/// Raises `stop` when the time limit is reached.
async fn timer(stop: &watch::Sender<bool>, until: Instant) {
    let mut receiver = stop.subscribe();
    if sleep_or_stop(until, &mut receiver).await {
        stop.send_replace(true);
    }
}

/// What the nemesis plans: a timed schedule, or the kill loop's steps.
#[derive(Debug, Clone)]
enum Plan {
    Schedule(Vec<FaultInterval>),
    KillLoop(Vec<KillStep>),
}

/// What the run phase measured.
#[derive(Debug, Default)]
struct RunFigures {
    lag: Duration,
    kill_loop: Option<KillLoopReport>,
}

/// Runs the workers and the nemesis for the time limit (or until the kill loop is done). Any
/// error raises `stop`, so that the rest winds down (bounded by the op guard) before the error
/// is returned.
async fn run_phase(
    context: &RunContext<'_>,
    clients: Vec<Client>,
    plan: &Plan,
    cluster: &mut Cluster,
    network: &TestNet,
) -> anyhow::Result<RunFigures> {
    let stop_on_error = |result: anyhow::Result<()>| {
        if result.is_err() {
            context.stop.send_replace(true);
        }
        result
    };
    let workers = futures::future::join_all(clients.into_iter().enumerate().map(
        |(index, client)| async move {
            stop_on_error(worker(context, client, index, context.stop.subscribe()).await)
        },
    ));
    let nemesis = async {
        let nemesis = faults::Nemesis {
            topology: &context.config.topology,
            recorder: context.recorder,
            progress: context.progress,
            started: context.started,
        };
        match plan {
            Plan::Schedule(schedule) => stop_on_error(
                faults::run(
                    &nemesis,
                    schedule,
                    cluster,
                    network,
                    context.stop.subscribe(),
                )
                .await,
            )
            .map(|()| None),
            Plan::KillLoop(steps) => {
                let report =
                    faults::run_kill_loop(&nemesis, steps, cluster, context.stop.subscribe()).await;
                // The run lasts as long as the kills do.
                context.stop.send_replace(true);
                report.map(Some)
            }
        }
    };
    let until = context.started + Duration::from_secs(context.config.time_limit_s);
    let (worker_results, nemesis_result, (), lag) = tokio::join!(
        workers,
        nemesis,
        timer(&context.stop, until),
        lag_monitor(context.stop.subscribe())
    );
    for result in worker_results {
        result?;
    }
    let kill_loop = nemesis_result?;
    Ok(RunFigures { lag, kill_loop })
}

/// Heal and settle (see the module doc); returns the notes worth reporting.
async fn heal_and_settle(
    config: &RunConfig,
    cluster: &mut Cluster,
    network: &TestNet,
    admin: &Client,
    progress: &Progress,
) -> anyhow::Result<Vec<String>> {
    progress.phase("heal");
    let mut notes = Vec::new();
    network.sever_all()?;
    network.shape(&Shape::Healthy)?;
    let crashed = cluster.unexpected_exits();
    if !crashed.is_empty() {
        let note = format!(
            "nodes exited on their own during the run (see their node.log): {}",
            crashed.join("; ")
        );
        progress.line(&format!("WARNING: {note}"));
        notes.push(note);
    }
    cluster.reset_clocks()?;
    cluster.revive_all()?;
    // No request can reach a node from here on: the workers are done and every connection
    // that held one was severed. A write already inside a node can still be proposed until
    // its write timeout runs out.
    let quiet_from = Instant::now();
    progress.phase("settle");
    cluster
        .wait_agreed_leader(Duration::from_millis(SETTLE_READY_TIMEOUT_MS))
        .await
        .context("settling after the heal")?;
    // Waiting out a node-side timeout: there is no condition to poll for "no write is pending
    // inside a node".
    tokio::time::sleep_until(
        quiet_from + Duration::from_millis(config.write_timeout_ms + SETTLE_MARGIN_MS),
    )
    .await;
    admin
        .put(BARRIER_KEY, format!("seed {}", config.seed))
        .await
        .context("the write barrier after the heal failed")?;
    Ok(notes)
}

/// Looks up every transfer id of the history (bank, safe mode).
async fn transfer_outcomes(
    admin: &Client,
    history: &History,
) -> (
    BTreeMap<String, crate::checker::bank::TransferOutcome>,
    Vec<String>,
) {
    let ids: BTreeSet<String> = history
        .pair_refs()
        .filter_map(|pair| match &pair.invoke.call {
            Call::Transfer(t) => Some(t.id.clone()),
            _ => None,
        })
        .collect();
    let lookups = futures::stream::iter(ids)
        .map(|id| async move {
            let outcome = workload::transfer_outcome(admin, &id).await;
            (id, outcome)
        })
        .buffer_unordered(OUTCOME_LOOKUPS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut outcomes = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, outcome) in lookups {
        match outcome {
            Ok(Some(outcome)) => {
                outcomes.insert(id, outcome);
            }
            Ok(None) => problems.push(format!("transfer {id}: unknown status")),
            Err(error) => problems.push(format!("transfer {id}: {error}")),
        }
    }
    (outcomes, problems)
}

/// Records a final read of every register key the workers used, each by a fresh process;
/// returns what each read saw and its op index.
async fn final_register_reads(
    admin: &Client,
    spec: &WorkloadSpec,
    keys: &BTreeSet<String>,
    recorder: &Recorder,
    mut next_process: u64,
    config: &RunConfig,
) -> anyhow::Result<BTreeMap<String, RegisterFinalRead>> {
    let mut reads = BTreeMap::new();
    let guard = Duration::from_millis(ADMIN_DEADLINE_MS + OP_GUARD_SLACK_MS);
    for key in keys {
        let call = Call::Read(RegisterRead {
            key: key.clone(),
            value: None,
        });
        let process = Process::Client(next_process);
        next_process += 1;
        let op = recorder.record(process, OpType::Invoke, call.clone(), None, None)?;
        let done = spec.execute(admin, &call, guard).await;
        let node = done.endpoint.clone();
        let value = match &done.call {
            Call::Read(read) => read.value,
            _ => None,
        };
        recorder.record(process, done.kind, done.call, node, done.error)?;
        if done.kind != OpType::Ok {
            bail!("the final read of {key} failed (seed {})", config.seed);
        }
        reads.insert(key.clone(), RegisterFinalRead { op, value });
    }
    Ok(reads)
}

/// The result of a finished run.
#[derive(Debug)]
pub struct RunOutcome {
    pub results: Results,
    pub exit_code: u8,
}

/// What the nemesis will do, printed before the run.
fn plan(config: &RunConfig) -> anyhow::Result<Plan> {
    if let Some(kills) = config.kill_loop {
        let steps = nemesis::kill_loop(&config.topology, kills, config.seed)?;
        let leader = steps
            .iter()
            .filter(|s| s.target == nemesis::Target::Leader)
            .count();
        println!(
            "kill loop: {kills} kills, one node at a time ({leader} of them the leader), each \
             restarted and ready before the next; time limit {} s",
            config.time_limit_s
        );
        return Ok(Plan::KillLoop(steps));
    }
    let schedule = nemesis::schedule(
        &config.topology,
        &config.nemeses,
        &ScheduleOptions::for_time_limit(config.time_limit_s * 1000),
        config.seed,
    )?;
    println!("schedule: {} faults", schedule.len());
    for (i, interval) in schedule.iter().enumerate() {
        println!(
            "  #{i} {:>6.1}s..{:>6.1}s {}",
            interval.start_ms as f64 / 1000.0,
            interval.stop_ms as f64 / 1000.0,
            interval.fault.describe()
        );
    }
    Ok(Plan::Schedule(schedule))
}

/// Runs one test; see the module doc. Errors are harness failures (exit 2).
pub async fn run(config: RunConfig) -> anyhow::Result<RunOutcome> {
    config.validate()?;
    println!("seed: {}", config.seed);
    let specs = config.workload_specs()?;
    println!(
        "{} workload{}, {} nodes, {} s, {} ops/s, {} workers, out: {}",
        Workload::list(&config.workloads),
        if config.workloads.contains(&Workload::Bank) {
            format!(" (bank {})", mode_name(config.bank_mode))
        } else {
            String::new()
        },
        config.topology.nodes.len(),
        config.time_limit_s,
        config.rate,
        config.concurrency,
        config.out.display()
    );
    let plan = plan(&config)?;
    prepare_out_dir(&config.out)?;
    let progress = Progress::new(config.time_limit_s);
    progress.phase("setup");
    let (mut cluster, network) = build_network(&config).await?;
    if let Some(why) = network.latency_unavailable() {
        progress.line(&format!(
            "note: no latency in this network ({why}); latency faults will be skipped and the \
             healthy inter-zone latency is 0"
        ));
    }
    let started = run_started(&config, &specs, &plan, &mut cluster, &network, &progress).await;
    // Tear down before checking: the nodes are done, and the checkers want the CPU. The nodes
    // go first: their namespaces are removed after.
    cluster.stop_all();
    network.stop().await?;
    if !config.keep_data {
        cluster.remove_data()?;
    }
    let (record, history) = started?;
    progress.phase("check");
    let results = checker::check(&record, &history, &config.check)?;
    report::write_results(&config.out, &results)?;
    report::write_report(&config.out, &record, &history, &results)?;
    progress.finish();
    print!("{}", report::summary(&results));
    println!("report: {}", config.out.join(report::REPORT_FILE).display());
    let exit_code = exit_code(results.valid);
    Ok(RunOutcome { results, exit_code })
}

/// The nodes (not started) and the network between them, of the configured kind.
async fn build_network(config: &RunConfig) -> anyhow::Result<(Cluster, TestNet)> {
    match config.net {
        NetMode::Proxy => {
            let mut cluster = crate::cluster::prepare(
                config.node_bin.clone(),
                &config.topology,
                &config.out,
                config.node_args(),
                None,
                config.tls,
            )?;
            let network = Network::start_for(
                &mut cluster,
                &config.topology,
                config.inter_zone_latency_ms,
                config.seed,
            )
            .await?;
            Ok((cluster, TestNet::Proxies(network)))
        }
        NetMode::Netns => {
            crate::netns::install_tools()?;
            let mut network = NetnsNetwork::create(&config.topology, config.inter_zone_latency_ms)?;
            println!(
                "network namespaces: {}-*, 10.{}.{}.0/24, root interface {}",
                network.layout().tag,
                network.layout().subnet.0,
                network.layout().subnet.1,
                network.layout().host_if
            );
            let cluster = crate::cluster::prepare(
                config.node_bin.clone(),
                &config.topology,
                &config.out,
                config.node_args(),
                Some(&network.placement()),
                config.tls,
            )?;
            network.set_api_ca(cluster.api_ca().map(std::path::Path::to_path_buf));
            network.start_relays(config.seed).await?;
            let network = TestNet::Netns(network);
            network.shape(&Shape::Healthy)?;
            Ok((cluster, network))
        }
    }
}

/// `test.json` as known before the first op.
fn initial_record(config: &RunConfig, specs: &[WorkloadSpec], plan: &Plan) -> TestRecord {
    let bank = specs.iter().find_map(|spec| match spec {
        WorkloadSpec::Bank { mode, .. } => Some(BankRecord {
            mode: *mode,
            initial_balances: spec.initial_balances(),
            final_read: None,
            transfer_outcomes: BTreeMap::new(),
        }),
        WorkloadSpec::Register { .. } => None,
    });
    let register = specs.iter().find_map(|spec| match spec {
        WorkloadSpec::Register { .. } => Some(RegisterRecord {
            keys: Vec::new(),
            initial: None,
            final_reads: BTreeMap::new(),
        }),
        WorkloadSpec::Bank { .. } => None,
    });
    let (schedule, kill_loop) = match plan {
        Plan::Schedule(schedule) => (schedule.clone(), Vec::new()),
        Plan::KillLoop(steps) => (Vec::new(), steps.clone()),
    };
    TestRecord {
        format: crate::record::TEST_RECORD_FORMAT,
        workloads: config.workloads.clone(),
        seed: config.seed,
        options: RunOptions {
            nodes: config.topology.nodes.len(),
            time_limit_s: config.time_limit_s,
            rate: config.rate,
            concurrency: config.concurrency,
            nemeses: config.nemeses.clone(),
            settings: config.settings(),
        },
        git_sha: option_env!("METROKV_GIT_SHA").map(str::to_owned),
        topology: config.topology.clone(),
        schedule,
        kill_loop,
        bank,
        register,
    }
}

/// One client per worker, in the zones round-robin.
fn worker_clients(config: &RunConfig, network: &TestNet) -> anyhow::Result<Vec<Client>> {
    let zones: Vec<String> = config.topology.zones().into_keys().collect();
    (0..config.concurrency)
        .map(|index| {
            let zone = &zones[index % zones.len()];
            zone_client_at(
                &network.client_endpoints(zone),
                network.api_ca(),
                zone,
                config.op_deadline_ms,
                config.op_attempt_timeout_ms,
                worker_seed(config.seed, index),
            )
        })
        .collect()
}

/// Bank: the final balances and (safe mode) the server's record of every transfer id.
async fn final_bank_state(
    admin: &Client,
    spec: &WorkloadSpec,
    history: &History,
    record: &mut TestRecord,
    progress: &Progress,
) -> anyhow::Result<()> {
    let (Some(bank), WorkloadSpec::Bank { mode, .. }) = (record.bank.as_mut(), spec) else {
        return Ok(());
    };
    bank.final_read = Some(spec.final_balances(admin).await?);
    if *mode == BankMode::Transfers {
        let (outcomes, problems) = transfer_outcomes(admin, history).await;
        for problem in problems {
            progress.line(&format!("outcome lookup: {problem}"));
        }
        bank.transfer_outcomes = outcomes;
    }
    Ok(())
}

/// Prints and records what the kill loop did.
fn note_kill_loop(report: &KillLoopReport, record: &mut TestRecord, progress: &Progress) {
    let mut recovery = report.recovery_ms.clone();
    recovery.sort_unstable();
    let median = recovery.get(recovery.len() / 2).copied().unwrap_or(0);
    let worst = recovery.last().copied().unwrap_or(0);
    progress.line(&format!(
        "kill loop: {} of {} kills; restarted node ready after {median} ms (median), {worst} ms \
         (worst)",
        report.kills, report.planned
    ));
    let settings = &mut record.options.settings;
    settings.insert("kill_loop_kills".to_owned(), report.kills.to_string());
    settings.insert(
        "kill_loop_recovery_ms_median".to_owned(),
        median.to_string(),
    );
    settings.insert("kill_loop_recovery_ms_max".to_owned(), worst.to_string());
    if let Some(why) = &report.ended_early {
        progress.line(&format!("WARNING: the kill loop ended early: {why}"));
        settings.insert("kill_loop_ended_early".to_owned(), why.clone());
    }
}

/// The final-read phase: every register key the workers used, recorded in the history (which
/// then ends and is written); the bank's final balances and every transfer's outcome.
async fn final_reads(
    config: &RunConfig,
    specs: &[WorkloadSpec],
    admin: &Client,
    recorder: Recorder,
    next_process: u64,
    record: &mut TestRecord,
    progress: &Progress,
) -> anyhow::Result<History> {
    if let Some(spec) = specs
        .iter()
        .find(|s| matches!(s, WorkloadSpec::Register { .. }))
    {
        let keys = recorder.with_ops(|ops| {
            ops.iter()
                .filter_map(|op| op.call.register_key().map(str::to_owned))
                .collect::<BTreeSet<String>>()
        })?;
        let reads =
            final_register_reads(admin, spec, &keys, &recorder, next_process, config).await?;
        if let Some(register) = record.register.as_mut() {
            register.keys = keys.into_iter().collect();
            register.final_reads = reads;
        }
    }
    let history = recorder
        .finish()
        .context("the recorded history is malformed")?;
    report::write_history(&config.out, &history)?;
    if let Some(spec) = specs
        .iter()
        .find(|s| matches!(s, WorkloadSpec::Bank { .. }))
    {
        final_bank_state(admin, spec, &history, record, progress).await?;
    }
    Ok(history)
}

/// Everything after the proxies exist; the caller tears down whatever happens here.
async fn run_started(
    config: &RunConfig,
    specs: &[WorkloadSpec],
    plan: &Plan,
    cluster: &mut Cluster,
    network: &TestNet,
    progress: &Progress,
) -> anyhow::Result<(TestRecord, History)> {
    cluster.start_all()?;
    cluster
        .wait_ready(Duration::from_millis(SETUP_READY_TIMEOUT_MS))
        .await
        .context("starting the cluster")?;
    let admin = admin_client(cluster, config.seed)?;
    if let Some(mode) = config.zone_safety {
        let settings = metrokv_client::api::cluster::Settings {
            zone_safety: Some(mode),
            ..Default::default()
        };
        admin
            .set_settings(&settings)
            .await
            .context("setting zone_safety")?;
        progress.line(&format!("zone_safety: {mode:?}"));
    }
    for spec in specs {
        spec.setup(&admin).await?;
    }
    let mut record = initial_record(config, specs, plan);
    record.write(&config.out.join(report::TEST_FILE))?;

    let clients = worker_clients(config, network)?;
    let recorder = Recorder::new();
    let (stop, _) = watch::channel(false);
    let context = RunContext {
        config,
        specs,
        recorder: &recorder,
        progress,
        endpoint_names: network.endpoint_names(),
        next_process: AtomicU64::new(config.concurrency as u64),
        started: Instant::now(),
        stop,
    };
    progress.phase("run");
    let figures = run_phase(&context, clients, plan, cluster, network).await?;
    progress.line(&format!(
        "harness scheduling lag: worst {} ms",
        figures.lag.as_millis()
    ));
    if let Some(report) = &figures.kill_loop {
        note_kill_loop(report, &mut record, progress);
    }
    let next_process = context.next_process.load(Ordering::Relaxed);
    drop(context);

    let notes = heal_and_settle(config, cluster, network, &admin, progress).await?;
    progress.phase("final reads");
    let history = final_reads(
        config,
        specs,
        &admin,
        recorder,
        next_process,
        &mut record,
        progress,
    )
    .await?;
    record.options.settings.insert(
        "harness_lag_ms_max".to_owned(),
        figures.lag.as_millis().to_string(),
    );
    for (i, note) in notes.iter().enumerate() {
        record
            .options
            .settings
            .insert(format!("note_{i}"), note.clone());
    }
    record.write(&config.out.join(report::TEST_FILE))?;
    Ok((record, history))
}

/// The exit code of a verdict.
pub fn exit_code(valid: Validity) -> u8 {
    match valid {
        Validity::Valid => EXIT_VALID,
        Validity::Invalid => EXIT_INVALID,
        Validity::Unknown => EXIT_HARNESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_split_in_blocks_and_every_workload_gets_some() {
        let split: Vec<usize> = (0..6).map(|i| workload_of(i, 6, 2)).collect();
        assert_eq!(split, [0, 0, 0, 1, 1, 1]);
        let split: Vec<usize> = (0..5).map(|i| workload_of(i, 5, 2)).collect();
        assert_eq!(split, [0, 0, 0, 1, 1]);
        assert!((0..7).all(|i| workload_of(i, 7, 1) == 0));
        // With 2 zones round-robin, each workload still has workers in both zones.
        for workload in 0..2 {
            let zones: BTreeSet<usize> = (0..6)
                .filter(|&i| workload_of(i, 6, 2) == workload)
                .map(|i| i % 2)
                .collect();
            assert_eq!(zones.len(), 2);
        }
    }

    #[test]
    fn worker_seeds_differ_and_repeat() {
        assert_eq!(worker_seed(7, 3), worker_seed(7, 3));
        assert_ne!(worker_seed(7, 3), worker_seed(7, 4));
        assert_ne!(worker_seed(7, 3), worker_seed(8, 3));
    }

    #[test]
    fn out_dir_preparation_removes_only_our_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(report::HISTORY_FILE), "x").expect("write");
        std::fs::write(dir.path().join("mine.txt"), "keep").expect("write");
        std::fs::create_dir_all(dir.path().join("nodes/n1")).expect("mkdir");
        prepare_out_dir(dir.path()).expect("prepare");
        assert!(!dir.path().join(report::HISTORY_FILE).exists());
        assert!(!dir.path().join("nodes").exists());
        assert!(dir.path().join("mine.txt").exists());
    }

    #[test]
    fn verdicts_map_to_exit_codes() {
        assert_eq!(exit_code(Validity::Valid), 0);
        assert_eq!(exit_code(Validity::Invalid), 1);
        assert_eq!(exit_code(Validity::Unknown), 2);
    }
}
