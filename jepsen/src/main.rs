//! `metrokv-jepsen`: the command line.
//!
//! - `run`: start a cluster of real `metrokv-node` processes behind fault-injecting proxies, run
//!   a workload while the nemesis injects faults, heal, settle, check, report.
//! - `check DIR`: re-check a saved run offline.
//! - `scenario double-spend`: the motivating story, safe and unsafe.
//!
//! Exit codes (documented in `--help`): 0 the history is valid; 1 anomalies were found; 2 the
//! harness failed (a cluster that would not start, unreadable files, a history that breaks the
//! op rules, Ctrl-C) or the checkers could not decide (a budget ran out, the final read is
//! missing). Unknown is never reported as a pass; the message says what was undecided.
//!
//! The harness runs on one thread (a current-thread runtime): node processes die with the
//! thread that started them (see `cluster.rs`), and one thread is plenty for the proxies and
//! clients at the rates a shared machine allows.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use metrokv_jepsen::checker::bank::{BankMode, BankOptions, SUBSET_STEPS_MAX_DEFAULT};
use metrokv_jepsen::checker::linear::{
    LinearOptions, CACHE_BYTES_MAX_DEFAULT, KEY_STEPS_MAX_DEFAULT, KEY_TIME_BUDGET_MS_DEFAULT,
};
use metrokv_jepsen::checker::{self, CheckOptions};
use metrokv_jepsen::cluster::find_node_binary;
use metrokv_jepsen::history::History;
use metrokv_jepsen::nemesis::{NemesisKind, NodeSpec, Topology, INTER_ZONE_LATENCY_MS_BASE};
use metrokv_jepsen::net::NetMode;
use metrokv_jepsen::netns;
use metrokv_jepsen::record::{TestRecord, Workload};
use metrokv_jepsen::report;
use metrokv_jepsen::runner::{self, RunConfig, EXIT_HARNESS};
use metrokv_jepsen::scenario::{self, ScenarioConfig};
use metrokv_jepsen::workload::REGISTER_GENERATION_MS_DEFAULT;

/// The node's own default write timeout (ms); the harness passes it explicitly because the
/// settle phase waits it out.
const WRITE_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// The default `--rate`, ops/s over all workers. On two shared cores a 3-node cluster under
/// `--nemesis all` completed ~320 ops/s at a target of 400 with 16 workers (README); 300 leaves
/// headroom, so that CPU starvation does not cause elections of its own.
const RATE_DEFAULT: f64 = 300.0;
/// The default `--concurrency`: enough workers that ops stuck in a fault (up to the op
/// deadline) do not starve the rate.
const CONCURRENCY_DEFAULT: usize = 16;
/// The default `--time-limit`, s.
const TIME_LIMIT_S_DEFAULT: u64 = 60;
/// The default `--time-limit` of a kill loop, per kill (a kill, a restart and a recovery take a
/// few seconds; this is the bound, not the expectation).
const KILL_LOOP_TIME_LIMIT_S_PER_KILL: u64 = 30;

/// Shown after `--help` of the program and of `run`.
const AFTER_HELP: &str = "Exit codes: 0 valid, 1 anomalies found, 2 harness failure or unknown \
    result.\n\nLinks: every directed link has its own proxy. Node A reaches node B through the \
    proxy of A→B, which carries A's requests and B's answers to them; cutting A→B stops A from \
    using B while B can still use A over B→A (a one-way partition). A client in zone Z reaches \
    node N through the proxy Z→N, cut when no node of Z reaches N. With --net netns (root) the \
    same cuts are nftables rules in the nodes' network namespaces. See jepsen/README.md.";

#[derive(Debug, Parser)]
#[command(
    name = "metrokv-jepsen",
    version,
    about = "Jepsen-style partition tests of metrokv on one machine",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    Bank,
    Register,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Transfers and consistent snapshots.
    Safe,
    /// The negative control: stale reads and blind PUTs of client-computed balances.
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetArg {
    /// A fault-injecting TCP proxy on every directed link, on loopback (no privileges).
    Proxy,
    /// A network namespace per node; cuts are nftables rules inside them, latency tc netem
    /// (root; see `metrokv-jepsen netns-tools`).
    Netns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    DoubleSpend,
}

/// Budgets of the checkers (shared by `run` and `check`).
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Wall-clock budget of the linearizability search, per key.
    #[arg(long, default_value_t = KEY_TIME_BUDGET_MS_DEFAULT)]
    key_time_budget_ms: u64,
    /// Step budget of the linearizability search, per key.
    #[arg(long, default_value_t = KEY_STEPS_MAX_DEFAULT)]
    key_steps_max: u64,
    /// Step budget of the bank checker's search for indeterminate transfers that explain
    /// the final balances.
    #[arg(long, default_value_t = SUBSET_STEPS_MAX_DEFAULT)]
    subset_steps_max: u64,
}

impl CheckArgs {
    fn options(&self) -> CheckOptions {
        CheckOptions {
            bank: BankOptions {
                subset_steps_max: self.subset_steps_max,
            },
            linear: LinearOptions {
                key_steps_max: self.key_steps_max,
                key_time_budget_ms: self.key_time_budget_ms,
                cache_bytes_max: CACHE_BYTES_MAX_DEFAULT,
            },
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// What the clients do: bank, register, or both (bank,register: the workers are split
    /// between them and each is checked by its own checker).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bank")]
    workload: Vec<WorkloadArg>,
    /// Faults, comma-separated: partition-zones, isolate-leader, halves, ring, bridge, kill,
    /// pause, latency; or all, none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Instead of a timed schedule, kill -9 this many times, one node at a time (the leader
    /// included), each restarted and ready before the next; the run lasts as long as the kills
    /// (bounded by --time-limit). Needs --nemesis kill.
    #[arg(long)]
    kill_loop: Option<u32>,
    /// Seconds of workload and faults (default 60; with --kill-loop, an upper bound of
    /// 30 s per kill).
    #[arg(long)]
    time_limit: Option<u64>,
    /// Target ops per second over all workers (each worker is a closed loop: a slow op delays
    /// its next one, so under faults fewer happen).
    #[arg(long, default_value_t = RATE_DEFAULT)]
    rate: f64,
    /// Client workers, spread round-robin over the zones.
    #[arg(long, default_value_t = CONCURRENCY_DEFAULT)]
    concurrency: usize,
    /// Cluster size with the default layout (3: n1, n2 in dc-a, n3 in dc-b; 5: n1..n3 in dc-a,
    /// n4, n5 in dc-b).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// A layout instead of --nodes: a preset, 2+1 (n1, n2 in dc-a, n3 in dc-b), 2+2+1 (n1, n2
    /// in dc-a, n3, n4 in dc-b, n5 in dc-c) or 2+2+1-witness (n5 a witness), or your own, e.g.
    /// n1=dc-a,n2=dc-b,n3=dc-c (names n<id>).
    #[arg(long)]
    layout: Option<String>,
    /// Seed of the schedule and the workload (random when absent; printed first either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (default: a directory under the system temp dir named after the run).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bank client mode: safe (transfers) or unsafe (the negative control).
    #[arg(long, value_enum, default_value = "safe")]
    mode: ModeArg,
    /// Bank accounts.
    #[arg(long, default_value_t = 5)]
    accounts: usize,
    /// Opening balance of each account.
    #[arg(long, default_value_t = 100)]
    initial_balance: u64,
    /// Largest transfer amount (each transfer moves 1..=this).
    #[arg(long, default_value_t = 30)]
    max_transfer: u64,
    /// Register keys in use at a time.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Every this many ms the register workers move on to fresh keys (short per-key histories
    /// keep the linearizability check small).
    #[arg(long, default_value_t = REGISTER_GENERATION_MS_DEFAULT)]
    key_generation_ms: u64,
    /// The metrokv-node binary (default: $METROKV_BIN, beside this program, or the scripts'
    /// release build).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Keep the nodes' data directories (logs are always kept).
    #[arg(long)]
    keep_data: bool,
    /// Latency added in each direction of every link between zones while it is healthy.
    #[arg(long, default_value_t = INTER_ZONE_LATENCY_MS_BASE)]
    inter_zone_latency_ms: u64,
    /// The nodes' write timeout (passed to them); settling waits it out.
    #[arg(long, default_value_t = WRITE_TIMEOUT_MS_DEFAULT)]
    write_timeout_ms: u64,
    /// A client op's deadline across its retries; after it a write is indeterminate (info).
    #[arg(long, default_value_t = 2_000)]
    op_deadline_ms: u64,
    /// One attempt's timeout within an op.
    #[arg(long, default_value_t = 1_000)]
    op_attempt_timeout_ms: u64,
    /// An extra flag for every node, e.g. --node-arg=--election-timeout-ms-max=400
    /// (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// TLS on both ports of every node: HTTPS for the clients, mutual TLS between members,
    /// with a throwaway CA (`metrokv-node certs`) under the output directory.
    #[arg(long)]
    tls: bool,
    /// The test network: proxies on loopback, or network namespaces with nftables (root).
    #[arg(long, value_enum, default_value = "proxy")]
    net: NetArg,
    /// Zone safety for the run (off, adaptive, strict); absent: the cluster's default
    /// (adaptive).
    #[arg(long, value_parser = ["off", "adaptive", "strict"])]
    zone_safety: Option<String>,
    #[command(flatten)]
    check: CheckArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a test against a fresh cluster and check it.
    #[command(after_help = AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Re-check a saved run: reads DIR/test.json and DIR/history.jsonl, rewrites
    /// DIR/results.json and DIR/report.html.
    Check {
        dir: PathBuf,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// What `--net netns` needs (root; ip, nft, ss; tc netem for latency): say what is
    /// missing, install it with apt (--install), or remove a crashed run's namespaces (--clean).
    NetnsTools {
        #[arg(long)]
        install: bool,
        #[arg(long)]
        clean: bool,
    },
    /// Replay a scripted story on a fresh cluster.
    Scenario {
        #[arg(value_enum)]
        name: ScenarioName,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        node_bin: Option<PathBuf>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        keep_data: bool,
        #[arg(long, default_value_t = INTER_ZONE_LATENCY_MS_BASE)]
        inter_zone_latency_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { dir, check } => check_dir(&dir, &check.options()),
        Command::NetnsTools { install, clean } => netns_tools(install, clean),
        Command::Run(args) => run_config(*args).and_then(|config| {
            block_on_interruptible(async move { runner::run(config).await.map(|o| o.exit_code) })
        }),
        Command::Scenario {
            name: ScenarioName::DoubleSpend,
            out,
            node_bin,
            seed,
            keep_data,
            inter_zone_latency_ms,
        } => scenario_config(out, node_bin, seed, keep_data, inter_zone_latency_ms)
            .and_then(|config| block_on_interruptible(scenario::double_spend(config))),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("metrokv-jepsen: harness error: {error:#}");
            ExitCode::from(EXIT_HARNESS)
        }
    }
}

/// Runs `work` on a current-thread runtime until it ends or Ctrl-C/SIGTERM arrives. On a
/// signal the work is dropped, which kills every node it started.
fn block_on_interruptible(
    work: impl std::future::Future<Output = anyhow::Result<u8>>,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("watching SIGTERM")?;
        tokio::select! {
            result = work => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted (Ctrl-C); the nodes were stopped"),
            _ = terminate.recv() => bail!("terminated (SIGTERM); the nodes were stopped"),
        }
    })
}

fn random_seed() -> u64 {
    rand::random()
}

fn default_out(name: &str) -> PathBuf {
    std::env::temp_dir().join("metrokv-jepsen").join(name)
}

/// Parses a preset (`2+1`, `2+2+1`, `2+2+1-witness`) or `n1=dc-a,n2=dc-a,n3=dc-b`.
fn parse_layout(layout: &str) -> anyhow::Result<Topology> {
    match layout {
        "2+1" => return Ok(Topology::default_for(3)?),
        "2+2+1" => return Ok(Topology::three_sites(false)),
        "2+2+1-witness" => return Ok(Topology::three_sites(true)),
        _ => {}
    }
    let mut nodes = Vec::new();
    for item in layout.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, zone)) = item.split_once('=') else {
            bail!("--layout item {item:?} is not NAME=ZONE");
        };
        nodes.push(NodeSpec {
            name: name.trim().to_owned(),
            zone: zone.trim().to_owned(),
            witness: false,
        });
    }
    Ok(Topology::new(nodes)?)
}

fn run_config(args: RunArgs) -> anyhow::Result<RunConfig> {
    let topology = match &args.layout {
        Some(layout) => parse_layout(layout)?,
        None => Topology::default_for(args.nodes)?,
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut workloads: Vec<Workload> = args
        .workload
        .iter()
        .map(|w| match w {
            WorkloadArg::Bank => Workload::Bank,
            WorkloadArg::Register => Workload::Register,
        })
        .collect();
    workloads.sort();
    workloads.dedup();
    let bank_mode = match args.mode {
        ModeArg::Safe => BankMode::Transfers,
        ModeArg::Unsafe => BankMode::BlindWrites,
    };
    let out = args.out.unwrap_or_else(|| {
        let mut name = Workload::list(&workloads).replace(',', "-");
        if workloads.contains(&Workload::Bank) {
            name = format!("{name}-{}", runner::mode_name(bank_mode));
        }
        default_out(&format!("{name}-seed-{seed}"))
    });
    let time_limit_s = match (args.time_limit, args.kill_loop) {
        (Some(limit), _) => limit,
        (None, Some(kills)) => {
            (u64::from(kills) * KILL_LOOP_TIME_LIMIT_S_PER_KILL).min(runner::TIME_LIMIT_S_MAX)
        }
        (None, None) => TIME_LIMIT_S_DEFAULT,
    };
    let config = RunConfig {
        workloads,
        bank_mode,
        topology,
        nemeses: NemesisKind::parse_list(&args.nemesis)?,
        kill_loop: args.kill_loop,
        time_limit_s,
        rate: args.rate,
        concurrency: args.concurrency,
        seed,
        out,
        node_bin: find_node_binary(args.node_bin.as_deref())?,
        keep_data: args.keep_data,
        accounts: args.accounts,
        initial_balance: args.initial_balance,
        transfer_amount_max: args.max_transfer,
        keys: args.keys,
        register_generation_ms: args.key_generation_ms,
        inter_zone_latency_ms: args.inter_zone_latency_ms,
        write_timeout_ms: args.write_timeout_ms,
        op_deadline_ms: args.op_deadline_ms,
        op_attempt_timeout_ms: args.op_attempt_timeout_ms,
        node_args: args.node_args,
        tls: args.tls,
        zone_safety: args.zone_safety.as_deref().map(|m| match m {
            "off" => metrokv_client::api::cluster::ZoneMode::Off,
            "strict" => metrokv_client::api::cluster::ZoneMode::Strict,
            _ => metrokv_client::api::cluster::ZoneMode::Adaptive,
        }),
        net: match args.net {
            NetArg::Proxy => NetMode::Proxy,
            NetArg::Netns => NetMode::Netns,
        },
        check: args.check.options(),
    };
    config.validate()?;
    Ok(config)
}

fn scenario_config(
    out: Option<PathBuf>,
    node_bin: Option<PathBuf>,
    seed: Option<u64>,
    keep_data: bool,
    inter_zone_latency_ms: u64,
) -> anyhow::Result<ScenarioConfig> {
    let seed = seed.unwrap_or_else(random_seed);
    Ok(ScenarioConfig {
        out: out.unwrap_or_else(|| default_out(&format!("double-spend-{seed}"))),
        node_bin: find_node_binary(node_bin.as_deref())?,
        seed,
        keep_data,
        inter_zone_latency_ms,
    })
}

/// `netns-tools`: 0 when a netns run can start here, 2 otherwise (the reason on stderr).
fn netns_tools(install: bool, clean: bool) -> anyhow::Result<u8> {
    if install {
        netns::install_tools()?;
    }
    if clean {
        for removed in netns::remove_stale()? {
            println!("removed {removed}");
        }
    }
    match netns::unavailable() {
        Ok(()) => {
            println!("--net netns can run here");
            Ok(0)
        }
        Err(why) => {
            eprintln!("--net netns cannot run here: {why}");
            Ok(EXIT_HARNESS)
        }
    }
}

/// Re-checks `dir` and returns the exit code.
fn check_dir(dir: &Path, options: &CheckOptions) -> anyhow::Result<u8> {
    let record = TestRecord::read(&dir.join(report::TEST_FILE))?;
    let history_path = dir.join(report::HISTORY_FILE);
    let file =
        File::open(&history_path).with_context(|| format!("opening {}", history_path.display()))?;
    let history = History::read_jsonl(BufReader::new(file))
        .with_context(|| format!("reading {}", history_path.display()))?;
    let results = checker::check(&record, &history, options)?;
    report::write_results(dir, &results)?;
    report::write_report(dir, &record, &history, &results)?;
    print!("{}", report::summary(&results));
    if results.valid == checker::Validity::Unknown {
        eprintln!(
            "metrokv-jepsen: the result is unknown (see the undecided reasons above); \
             this is not a pass"
        );
    }
    Ok(runner::exit_code(results.valid))
}
