//! `metrokv bench`: a load generator on this library, for users to point at their own cluster.
//!
//! Each client task has its own [`Client`] (so its own keep-alive connection), starting at a
//! different endpoint so the load spreads over the nodes. Closed loop: a task sends its next
//! request when the last is answered. Open loop (`rate`): the tasks together start `rate`
//! requests per second on a fixed schedule, and latency is measured from when a request was due,
//! not when it was sent, so a stalled server shows as latency instead of silently lowering the
//! load (coordinated omission).
//!
//! Every task draws its keys from its own generator seeded from `seed`, so a run is repeatable.
//! What is measured starts after the warm-up. The report has throughput, latency percentiles
//! (hdrhistogram, µs), errors by kind, and CPU: the tool's own (`/proc/self/stat`) and, given
//! the servers' pids, theirs per operation.
//!
//! `--system etcd` drives etcd through its own gRPC API (`etcd`), with the same workloads, key
//! and value shapes and seed, written the way an etcd user must write them.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::Client;
use crate::ClientBuilder;
use crate::Compare;
use crate::CompareOp;
use crate::Consistency;
use crate::Error;
use crate::Op;
use crate::PutOptions;
use crate::TransferRequest;
use crate::TxnRequest;

#[cfg(feature = "etcd")]
mod etcd;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Client(#[from] Error),
    /// The other system could not be reached or prepared.
    #[error("{0}")]
    System(String),
}

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put a random key (a 16-byte key, `value_size` bytes).
    Put,
    /// Linearizable get of a random key (preloaded).
    Get,
    /// Stale get: the answering node's state, no leader round trip.
    GetStale,
    /// Compare-and-swap on the task's own keys (each put names the version it replaces).
    Cas,
    /// A transaction: if the task's key exists, put it and get another key.
    Txn,
    /// A transfer of 1..=100 between two random accounts.
    Transfer,
    /// Gets and puts; `read_ratio` of them gets.
    Mixed,
}

/// The store under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Metrokv,
    /// etcd v3 over gRPC (`get-stale` is a serializable read; a transfer reads both accounts
    /// and writes both balances in a Txn that compares their mod revisions, retried on
    /// conflict).
    Etcd,
}

/// A run's settings.
#[derive(Clone, Debug, Serialize)]
pub struct BenchOptions {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time at the start that is run but not counted.
    pub warmup: Duration,
    /// Keys the put, get and mixed workloads spread over.
    pub keys: u64,
    pub value_size: usize,
    /// Accounts of the transfer workload.
    pub accounts: u64,
    /// Open loop at this many requests per second in total; closed loop when `None`.
    pub rate: Option<f64>,
    /// Share of gets in the mixed workload, 0..=1.
    pub read_ratio: f64,
    pub seed: u64,
    /// Server processes whose CPU time is reported per operation (this machine's pids).
    pub server_pids: Vec<u32>,
}

/// Largest settings a run accepts: beyond them the tool measures itself, not the cluster.
pub const CLIENTS_MAX: usize = 4096;
pub const VALUE_SIZE_MAX: usize = crate::limits::VALUE_BYTES_MAX;
/// Keys preloaded for the reading workloads at most (they read only preloaded keys).
pub const PRELOAD_KEYS_MAX: u64 = 100_000;

impl BenchOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!("clients must be 1..={CLIENTS_MAX}"));
        }
        if self.value_size > VALUE_SIZE_MAX {
            return Err(format!("value size must be at most {VALUE_SIZE_MAX} bytes"));
        }
        if self.keys == 0 || self.accounts < 2 {
            return Err("keys must be at least 1 and accounts at least 2".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("read ratio must be between 0 and 1".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("rate must be a positive number of requests per second".into());
        }
        if self.duration.is_zero() {
            return Err("duration must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn reads_preloaded(&self) -> bool {
        matches!(
            self.workload,
            Workload::Get | Workload::GetStale | Workload::Mixed | Workload::Txn
        )
    }

    /// The keys preloaded for reading workloads.
    pub(crate) fn preload_keys(&self) -> u64 {
        self.keys.min(PRELOAD_KEYS_MAX)
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub options: BenchOptions,
    /// The measured window, in seconds.
    pub seconds: f64,
    pub ok: u64,
    pub ops_per_sec: f64,
    pub latency: Latency,
    /// Failed requests by error kind (`unavailable`, `indeterminate`, `precondition_failed`...).
    pub errors: BTreeMap<String, u64>,
    /// The tool's own CPU over the window, in cores (1.0: one core busy throughout).
    pub bench_cpu_cores: Option<f64>,
    /// The servers' CPU time per successful operation over the window, in µs.
    pub server_cpu_us_per_op: Option<f64>,
    /// The longest time in the window without a successful request, in ms (a failover shows
    /// here: kill the leader during a run).
    pub longest_gap_ms: f64,
    /// Attempts that lost a compare and were retried (etcd transfers; 0 for metrokv, whose
    /// transfers are one request).
    pub conflicts: u64,
}

impl BenchReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let o = &self.options;
        let mode = match o.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".into(),
        };
        let l = &self.latency;
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let mut out = format!(
            "{:?} {:?} ({mode}), {} clients, {:.1} s measured after {:.1} s warm-up\n\
             ok: {} ({:.0} ops/s)\n\
             latency: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}\n",
            o.system,
            o.workload,
            o.clients,
            self.seconds,
            o.warmup.as_secs_f64(),
            self.ok,
            self.ops_per_sec,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
        );
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            out.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        if let Some(cores) = self.bench_cpu_cores {
            out.push_str(&format!("bench CPU: {cores:.2} cores\n"));
        }
        if let Some(us) = self.server_cpu_us_per_op {
            out.push_str(&format!("server CPU per op: {us:.0} µs\n"));
        }
        out.push_str(&format!(
            "longest gap without a success: {:.1} ms\n",
            self.longest_gap_ms
        ));
        if self.conflicts > 0 {
            out.push_str(&format!("conflicts retried: {}\n", self.conflicts));
        }
        out
    }
}

/// Percentiles of `hist` (µs).
pub fn latency_of(hist: &hdrhistogram::Histogram<u64>) -> Latency {
    if hist.is_empty() {
        return Latency::default();
    }
    Latency {
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    }
}

/// `/proc` reports CPU times in USER_HZ, which Linux fixes at 100 for user space.
const PROC_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of process `pid` ("self" for this one), in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

/// The CPU seconds in a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`: utime and stime are fields 14, 15.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0], so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / PROC_TICKS_PER_SEC)
}

/// A small, seedable generator (xorshift64*): the key choice must not cost more than the request.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        // Never zero, different per task.
        Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 / ((1u64 << 53) as f64);
        unit < p
    }
}

/// A 16-byte key.
pub(crate) fn key(i: u64) -> String {
    format!("bench-{i:010}")
}

pub(crate) fn account(i: u64) -> String {
    format!("bench-acct-{i:06}")
}

/// Each account starts with this much: transfers of at most 100 never run it dry in a run.
pub(crate) const ACCOUNT_BALANCE: u64 = 1_000_000_000;

/// Writers that preload the reading workloads' keys (one by one, 100,000 would take minutes).
pub(crate) const PRELOAD_WRITERS: u64 = 32;

/// How long a task pauses after a failed request before its next one.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Counters the progress line reads while the run goes.
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// When the last request succeeded, in µs since the run started.
    last_ok_us: AtomicU64,
    /// The longest time without a successful request in the measured window, in µs.
    longest_gap_us: AtomicU64,
}

impl Progress {
    /// A request succeeded `at_us` after the start; `measured` when inside the window.
    fn succeeded(&self, at_us: u64, measured: bool) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let previous = self.last_ok_us.fetch_max(at_us, Ordering::Relaxed);
        if measured {
            self.longest_gap_us
                .fetch_max(at_us.saturating_sub(previous), Ordering::Relaxed);
        }
    }
}

/// What one task is doing, across requests.
struct Task {
    client: Client,
    rng: Rng,
    value: bytes::Bytes,
    /// The cas workload: the version last written to each of the task's keys.
    versions: BTreeMap<String, u64>,
    id: usize,
}

impl Task {
    async fn one(&mut self, o: &BenchOptions) -> Result<(), Error> {
        match o.workload {
            Workload::Put => self
                .client
                .put(&key(self.rng.below(o.keys)), self.value.clone())
                .await
                .map(drop),
            Workload::Get => self.get(o, Consistency::Linearizable).await,
            Workload::GetStale => self.get(o, Consistency::Stale).await,
            Workload::Mixed if self.rng.chance(o.read_ratio) => {
                self.get(o, Consistency::Linearizable).await
            }
            Workload::Mixed => self
                .client
                .put(&key(self.rng.below(o.preload_keys())), self.value.clone())
                .await
                .map(drop),
            Workload::Cas => {
                // The task's own keys, so only its own writes move their versions.
                let k = format!("bench-cas-{}-{}", self.id, self.rng.below(16));
                let current = self.versions.get(&k).copied().unwrap_or(0);
                let options = PutOptions {
                    if_version: Some(current),
                    ..PutOptions::default()
                };
                let put = self
                    .client
                    .put_with(&k, self.value.clone(), options)
                    .await?;
                self.versions.insert(k, put.version);
                Ok(())
            }
            Workload::Txn => {
                let mine = key(self.rng.below(o.preload_keys()));
                let other = key(self.rng.below(o.preload_keys()));
                let txn = TxnRequest::new()
                    .when(Compare::version(mine.clone(), CompareOp::Gt, 0))
                    .then(Op::put(mine, self.value.clone()))
                    .then(Op::get(other));
                self.client.txn(&txn).await.map(drop)
            }
            Workload::Transfer => {
                let from = self.rng.below(o.accounts);
                let to = (from + 1 + self.rng.below(o.accounts - 1)) % o.accounts;
                let amount = 1 + self.rng.below(100);
                let request = TransferRequest::new(account(from), account(to), amount);
                self.client.transfer(&request).await.map(drop)
            }
        }
    }

    async fn get(&mut self, o: &BenchOptions, consistency: Consistency) -> Result<(), Error> {
        let k = key(self.rng.below(o.preload_keys()));
        self.client.get_with(&k, consistency).await.map(drop)
    }
}

/// A task's connection to the system under load.
enum Driver {
    Metrokv(Task),
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdTask),
}

impl Driver {
    /// One request; an error is its kind.
    async fn one(&mut self, o: &BenchOptions) -> Result<(), String> {
        match self {
            Driver::Metrokv(t) => t.one(o).await.map_err(|e| e.kind().to_string()),
            #[cfg(feature = "etcd")]
            Driver::Etcd(t) => t.one(o).await,
        }
    }

    fn conflicts(&self) -> u64 {
        match self {
            Driver::Metrokv(_) => 0,
            #[cfg(feature = "etcd")]
            Driver::Etcd(t) => t.conflicts,
        }
    }
}

/// Connect task `id` (to `endpoints` rotated so that the tasks spread over the nodes).
async fn driver(
    builder: &ClientBuilder,
    o: &BenchOptions,
    id: usize,
    value: &bytes::Bytes,
) -> Result<Driver, BenchError> {
    let mut endpoints = builder.endpoint_list();
    let first = id % endpoints.len().max(1);
    endpoints.rotate_left(first);
    let rng = Rng::new(o.seed, id as u64);
    match o.system {
        System::Metrokv => {
            let client = builder
                .clone()
                .with_endpoints(endpoints)
                .seed(o.seed ^ id as u64)
                .build()?;
            Ok(Driver::Metrokv(Task {
                client,
                rng,
                value: value.clone(),
                versions: BTreeMap::new(),
                id,
            }))
        }
        #[cfg(feature = "etcd")]
        System::Etcd => {
            // Every member, starting at another one per task (etcd's client balances over them
            // and moves on from a dead one, as a user's would).
            let kv = etcd::connect(&endpoints)
                .await
                .map_err(BenchError::System)?;
            Ok(Driver::Etcd(etcd::EtcdTask {
                kv,
                rng,
                value: value.to_vec(),
                id,
                versions: BTreeMap::new(),
                conflicts: 0,
            }))
        }
        #[cfg(not(feature = "etcd"))]
        System::Etcd => Err(BenchError::Options(
            "this build has no etcd adapter: build metrokv-client with the etcd feature".into(),
        )),
    }
}

/// Write what the reading workloads read, and the accounts of the transfer workload.
async fn prepare_system(
    builder: &ClientBuilder,
    o: &BenchOptions,
    value: &bytes::Bytes,
) -> Result<(), BenchError> {
    match o.system {
        System::Metrokv => Ok(prepare(&builder.clone().build()?, o, value).await?),
        #[cfg(feature = "etcd")]
        System::Etcd => {
            let mut kv = etcd::connect(&builder.endpoint_list())
                .await
                .map_err(BenchError::System)?;
            etcd::prepare(&mut kv, o, value)
                .await
                .map_err(BenchError::System)
        }
        #[cfg(not(feature = "etcd"))]
        System::Etcd => Err(BenchError::Options(
            "this build has no etcd adapter: build metrokv-client with the etcd feature".into(),
        )),
    }
}

async fn prepare(client: &Client, o: &BenchOptions, value: &bytes::Bytes) -> Result<(), Error> {
    if o.workload == Workload::Transfer {
        for i in 0..o.accounts {
            match client.create_account(&account(i), ACCOUNT_BALANCE).await {
                Ok(_) | Err(Error::AccountExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    } else if o.reads_preloaded() {
        let keys = o.preload_keys();
        // Preloaded already (an earlier run on this cluster): the last key is there.
        if client.get(&key(keys - 1)).await?.is_some() {
            return Ok(());
        }
        let writers = PRELOAD_WRITERS.min(keys);
        let mut jobs = tokio::task::JoinSet::new();
        for w in 0..writers {
            let (client, value) = (client.clone(), value.clone());
            jobs.spawn(async move {
                let mut i = w;
                while i < keys {
                    client.put(&key(i), value.clone()).await?;
                    i += writers;
                }
                Ok::<(), Error>(())
            });
        }
        while let Some(done) = jobs.join_next().await {
            done.map_err(|e| Error::Config {
                message: format!("a preload task failed: {e}"),
            })??;
        }
    }
    Ok(())
}

/// Run the benchmark: prepare, warm up, measure. `builder` has the endpoints and the client
/// settings; `progress` is updated as requests complete.
pub async fn run(
    builder: &ClientBuilder,
    options: BenchOptions,
    progress: Arc<Progress>,
) -> Result<BenchReport, BenchError> {
    options.validate().map_err(BenchError::Options)?;
    let value = bytes::Bytes::from(vec![b'v'; options.value_size]);
    prepare_system(builder, &options, &value).await?;
    let mut drivers = Vec::with_capacity(options.clients);
    for id in 0..options.clients {
        drivers.push(driver(builder, &options, id, &value).await?);
    }
    let started = Instant::now();
    let measure_from = started + options.warmup;
    let end = measure_from + options.duration;
    let interval = options
        .rate
        .map(|r| Duration::from_secs_f64(options.clients as f64 / r));
    let options = Arc::new(options);
    let mut tasks = tokio::task::JoinSet::new();
    for (id, mut task) in drivers.into_iter().enumerate() {
        let (options, progress) = (options.clone(), progress.clone());
        tasks.spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            // Open loop: this task's share of the schedule, offset so tasks do not fire at once.
            let mut due = interval.map(|i| started + i.mul_f64(id as f64 / options.clients as f64));
            loop {
                let sent = match (due, interval) {
                    (Some(at), Some(step)) => {
                        tokio::time::sleep_until(at).await;
                        due = Some(at + step);
                        at
                    }
                    _ => Instant::now(),
                };
                if sent >= end {
                    break;
                }
                let result = task.one(&options).await;
                let done = Instant::now();
                let counted = sent >= measure_from && done <= end;
                match result {
                    Ok(()) => {
                        let at_us = (done - started).as_micros() as u64;
                        progress.succeeded(at_us, counted);
                        if counted {
                            let us = (done - sent).as_micros().max(1) as u64;
                            let _ = hist.record(us);
                        }
                    }
                    Err(e) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        if counted {
                            *errors.entry(e).or_default() += 1;
                        }
                        // A refused request comes back at once; do not spin on a dead node.
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            (hist, errors, task.conflicts())
        });
    }
    // CPU over the measured window.
    tokio::time::sleep_until(measure_from).await;
    let cpu_at = |pids: &[u32]| -> Option<f64> {
        pids.iter()
            .map(|p| cpu_seconds(&p.to_string()))
            .sum::<Option<f64>>()
    };
    let bench_cpu_start = cpu_seconds("self");
    let server_cpu_start = cpu_at(&options.server_pids);
    let window_start = Instant::now();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut window_end = None;
    let mut conflicts = 0;
    while let Some(done) = tasks.join_next().await {
        // The first task to finish marks the end of the window for the CPU readings.
        if window_end.is_none() {
            window_end = Some((
                Instant::now(),
                cpu_seconds("self"),
                cpu_at(&options.server_pids),
            ));
        }
        let (hist, errs, task_conflicts) =
            done.map_err(|e| BenchError::System(format!("a bench task failed: {e}")))?;
        conflicts += task_conflicts;
        let _ = all.add(hist);
        for (k, n) in errs {
            *errors.entry(k).or_default() += n;
        }
    }
    let (window_stop, bench_cpu_end, server_cpu_end) =
        window_end.unwrap_or((Instant::now(), None, None));
    let window = (window_stop - window_start).as_secs_f64().max(1e-9);
    let seconds = options.duration.as_secs_f64();
    let ok = all.len();
    let bench_cpu_cores = match (bench_cpu_start, bench_cpu_end) {
        (Some(a), Some(b)) => Some((b - a) / window),
        _ => None,
    };
    let server_cpu_us_per_op = match (server_cpu_start, server_cpu_end) {
        // The CPU window is the measured one, give or take the tasks' last requests.
        (Some(a), Some(b)) if !options.server_pids.is_empty() && ok > 0 => {
            Some((b - a) * 1e6 / ok as f64)
        }
        _ => None,
    };
    Ok(BenchReport {
        options: (*options).clone(),
        seconds,
        ok,
        ops_per_sec: ok as f64 / seconds,
        latency: latency_of(&all),
        errors,
        bench_cpu_cores,
        server_cpu_us_per_op,
        longest_gap_ms: progress.longest_gap_us.load(Ordering::Relaxed) as f64 / 1000.0,
        conflicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let line = "1234 (metrokv (node) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_seconds(line), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        assert!(cpu_seconds("self").is_some());
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        assert_eq!(latency_of(&h), Latency::default());
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = latency_of(&h);
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.max_us),
            (500, 900, 990, 1000)
        );
        assert!(l.p999_us >= 999);
    }

    fn options() -> BenchOptions {
        BenchOptions {
            system: System::Metrokv,
            workload: Workload::Put,
            clients: 4,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            keys: 10,
            value_size: 100,
            accounts: 10,
            rate: None,
            read_ratio: 0.5,
            seed: 1,
            server_pids: vec![],
        }
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(options().validate().is_ok());
        for bad in [
            BenchOptions {
                clients: 0,
                ..options()
            },
            BenchOptions {
                read_ratio: 1.5,
                ..options()
            },
            BenchOptions {
                rate: Some(0.0),
                ..options()
            },
            BenchOptions {
                accounts: 1,
                ..options()
            },
            BenchOptions {
                value_size: VALUE_SIZE_MAX + 1,
                ..options()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_report_names_every_error_kind_and_parses_as_json() {
        let report = BenchReport {
            options: options(),
            seconds: 2.0,
            ok: 100,
            ops_per_sec: 50.0,
            latency: Latency {
                p50_us: 1000,
                p90_us: 2000,
                p99_us: 3000,
                p999_us: 4000,
                max_us: 5000,
            },
            errors: BTreeMap::from([("unavailable".to_string(), 3)]),
            bench_cpu_cores: Some(0.25),
            server_cpu_us_per_op: None,
            longest_gap_ms: 3.5,
            conflicts: 0,
        };
        assert_eq!(report.error_count(), 3);
        let text = report.text();
        assert!(text.contains("ok: 100 (50 ops/s)"), "{text}");
        assert!(text.contains("p99 3.00 ms"), "{text}");
        assert!(text.contains("errors: unavailable 3"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["options"]["workload"], "put");
        assert_eq!(json["latency"]["p999_us"], 4000);
    }

    #[test]
    fn the_key_choice_is_repeatable_per_seed_and_differs_per_task() {
        let draw = |seed, task| {
            let mut r = Rng::new(seed, task);
            (0..5).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 1), draw(7, 1));
        assert_ne!(draw(7, 1), draw(7, 2));
        assert_eq!(key(42).len(), 16);
    }
}
