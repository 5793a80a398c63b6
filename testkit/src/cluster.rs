//! A cluster of real `metrokv-node` processes, started, killed, paused and resumed by pid: the
//! one way the end-to-end tests, the benchmarks and the partition harness run nodes.
//!
//! Owns: finding the node binary, choosing ports, each node's directory (`nodes/nN/data` for
//! RocksDB, `nodes/nN/node.log` for its stdout and stderr, appended across restarts,
//! `nodes/nN/failpoints`, the fault-injection file the node re-reads within 100 ms of a change:
//! a clock fault writes `clock-offset-ms=<ms>` there, an empty file means none), the command
//! line (members, `--peer-route` through proxies, timeouts, per-node environment), and
//! control-plane requests (`/ready`, `/v1/cluster`) that go straight to a node, never through a
//! proxy: the test is the control node, outside every partition.
//!
//! Invariants:
//! - Every process this module starts is a [`Child`] it owns; it signals only those pids, never
//!   processes found by name. Dropping the [`Cluster`] resumes paused nodes and SIGKILLs and
//!   reaps every node, so an error or a panic leaves nothing running.
//! - Each node gets `PR_SET_PDEATHSIG = SIGKILL`, so even a harness killed with SIGKILL takes
//!   its nodes with it. The signal follows the thread that spawned the node; the runner
//!   therefore runs on one thread (a current-thread runtime), which lives as long as the
//!   process.
//! - A node keeps its ports and data directory across restarts.
//! - In network namespaces (`--net netns`) a node is started as `ip netns exec <ns> <node>`;
//!   `ip` execs the node, so the child's pid is the node's. The harness waits until
//!   `/proc/<pid>/exe` is the node binary after each start and checks it again before every
//!   signal, so it never signals anything but the node.
//!
//! Leaves out: the network between nodes and when to fault them (the harness's `net` and
//! `runner`), and the API calls a test makes (its own).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use metrokv_api::cluster::ClusterView;
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// The node binary's file name.
pub const NODE_BINARY: &str = "metrokv-node";
/// Node log level, unless the cluster's log environment variable says otherwise.
pub const NODE_LOG_FILTER_DEFAULT: &str = "info,openraft=warn";
/// Timeout of one control-plane request to a node. A node that does not answer within it is
/// treated as not ready or not knowing a leader.
pub const CONTROL_TIMEOUT_MS: u64 = 1_000;
/// How often readiness is polled.
pub const READY_POLL_MS: u64 = 100;
/// The environment variable naming a node's fault-injection file (read by the node).
pub const FAILPOINTS_FILE_ENV: &str = "METROKV_FAILPOINTS_FILE";
/// The name of that file in the node's directory.
pub const FAILPOINTS_FILE: &str = "failpoints";
/// The failpoint that shifts the node's wall clock, in ms.
pub const CLOCK_OFFSET_FAILPOINT: &str = "clock-offset-ms";
/// Lines of a node's log quoted in a harness error.
pub const LOG_TAIL_LINES: usize = 20;
/// Where `scripts/lib.sh` builds by default, relative to `$HOME`: the last place searched for
/// the node binary.
const SCRIPTS_TARGET_DIR: &str = ".cache/metrokv/target";

/// Finds `metrokv-node`: the explicit path if given; else as [`find_binary`].
pub fn find_node_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--node-bin {}: no such file", path.display());
    }
    find_binary(NODE_BINARY)
}

/// Finds one of the workspace's binaries: `$METROKV_BIN/<name>` (set by `scripts/test.sh`);
/// else beside this executable or up to two directories above it (cargo puts test executables
/// in `target/<profile>/deps`); else the release directory of `$CARGO_TARGET_DIR` and of the
/// scripts' default target directory.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("METROKV_BIN") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join(name));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release").join(name));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(
            PathBuf::from(home)
                .join(SCRIPTS_TARGET_DIR)
                .join("release")
                .join(name),
        );
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "cannot find {name} (tried {}); build it (cargo build --release --workspace --bins) or \
         set METROKV_BIN",
        tried.join(", ")
    )
}

/// A node of the cluster to be: its name (`n<id>`) and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub zone: String,
    /// Flags for this node only (e.g. `--witness`), after the cluster's own.
    pub args: Vec<String>,
}

impl NodeSpec {
    pub fn new(id: u64, zone: &str) -> Self {
        Self {
            name: format!("n{id}"),
            zone: zone.to_string(),
            args: Vec::new(),
        }
    }
}

/// Where a node runs when it is not on loopback: a network namespace and its addresses there.
#[derive(Debug, Clone)]
pub struct Placement {
    pub netns: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
}

/// What every node of a cluster shares.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--cluster-id` of every node.
    pub cluster_id: String,
    /// Flags added to every node's command line (timeouts, user extras).
    pub extra_args: Vec<String>,
    /// An environment variable that, when set, overrides [`NODE_LOG_FILTER_DEFAULT`].
    pub log_env: String,
    /// The CA (PEM) of nodes that serve their API over HTTPS: set, the control plane speaks
    /// https and trusts it.
    pub api_ca: Option<PathBuf>,
}

/// Where one node lives.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    /// `n1`, `n2`, ...: the topology's name.
    pub name: String,
    /// The numeric id the node is started with (`n3` is 3).
    pub id: u64,
    pub zone: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `nodes/<name>` under the output directory.
    pub dir: PathBuf,
    /// The network namespace it runs in (`--net netns`), if any.
    pub netns: Option<String>,
    /// Whether its API is HTTPS.
    pub https: bool,
}

impl NodeAddrs {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn failpoints_path(&self) -> PathBuf {
        self.dir.join(FAILPOINTS_FILE)
    }

    /// The node's own HTTP address (control plane; workloads use the proxies).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }
}

/// A node name must be `n<id>`, the id being what `--id` takes.
fn node_id(name: &str) -> anyhow::Result<u64> {
    name.strip_prefix('n')
        .and_then(|digits| digits.parse::<u64>().ok())
        .filter(|id| *id > 0)
        .with_context(|| format!("node name {name:?} must be n<number>, like n1"))
}

/// Ports chosen for the nodes, held open until the nodes start so that nothing else on this
/// machine (a proxy, another test) is given them first.
#[derive(Debug)]
pub struct PortReservation {
    listeners: Vec<TcpListener>,
}

impl PortReservation {
    /// Frees the ports, right before the nodes bind them.
    fn release(self) {
        drop(self.listeners);
    }
}

struct NodeProcess {
    addrs: NodeAddrs,
    /// `--peer-route` values: how this node dials each peer.
    routes: Vec<String>,
    /// Environment variables for the node's next starts.
    env: Vec<(String, String)>,
    /// The node's own flags (`NodeSpec::args`).
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
    /// How often the process was started (1 + restarts).
    starts: u32,
}

/// The node processes of one test.
pub struct Cluster {
    binary: PathBuf,
    /// The binary's canonical path: what `/proc/<pid>/exe` of a node shows.
    binary_real: PathBuf,
    nodes: Vec<NodeProcess>,
    /// `--member` values, identical on every node.
    members: Vec<String>,
    options: ClusterOptions,
    reservation: Option<PortReservation>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("binary", &self.binary)
            .field("nodes", &self.addrs())
            .finish()
    }
}

impl Cluster {
    /// Chooses ports and directories (under `base_dir/nodes`) for `nodes` on loopback; starts
    /// nothing.
    pub fn prepare(
        binary: PathBuf,
        nodes: &[NodeSpec],
        base_dir: &Path,
        options: ClusterOptions,
    ) -> anyhow::Result<Cluster> {
        Cluster::prepare_in(binary, nodes, base_dir, options, None)
    }

    /// Like [`Cluster::prepare`]; with `placements`, each node runs in its namespace on its own
    /// address there (fixed ports: the address is the run's alone), instead of on loopback.
    pub fn prepare_in(
        binary: PathBuf,
        specs: &[NodeSpec],
        base_dir: &Path,
        options: ClusterOptions,
        placements: Option<&BTreeMap<String, Placement>>,
    ) -> anyhow::Result<Cluster> {
        let binary_real = std::fs::canonicalize(&binary)
            .with_context(|| format!("resolving {}", binary.display()))?;
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for spec in specs {
            let placed = match placements {
                Some(map) => Some(
                    map.get(&spec.name)
                        .with_context(|| format!("no namespace for {}", spec.name))?,
                ),
                None => None,
            };
            let (client_addr, peer_addr, netns) = match placed {
                Some(p) => (p.client_addr, p.peer_addr, Some(p.netns.clone())),
                None => {
                    let (client_addr, client_listener) = crate::ports::reserve_port()?;
                    let (peer_addr, peer_listener) = crate::ports::reserve_port()?;
                    listeners.push(client_listener);
                    listeners.push(peer_listener);
                    (client_addr, peer_addr, None)
                }
            };
            let dir = base_dir.join("nodes").join(&spec.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_atomically(&dir.join(FAILPOINTS_FILE), "")?;
            nodes.push(NodeProcess {
                addrs: NodeAddrs {
                    name: spec.name.clone(),
                    id: node_id(&spec.name)?,
                    zone: spec.zone.clone(),
                    client_addr,
                    peer_addr,
                    dir,
                    netns,
                    https: options.api_ca.is_some(),
                },
                routes: Vec::new(),
                env: Vec::new(),
                args: spec.args.clone(),
                child: None,
                paused: false,
                starts: 0,
            });
        }
        let members = nodes
            .iter()
            .map(|n| {
                format!(
                    "{}={}/{}/{}",
                    n.addrs.id, n.addrs.zone, n.addrs.client_addr, n.addrs.peer_addr
                )
            })
            .collect();
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(CONTROL_TIMEOUT_MS));
        if let Some(ca) = &options.api_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let http = http
            .build()
            .context("building the control-plane HTTP client")?;
        Ok(Cluster {
            binary,
            binary_real,
            nodes,
            members,
            options,
            reservation: Some(PortReservation { listeners }),
            http,
        })
    }

    /// The CA the nodes' API certificates come from, when their API speaks HTTPS.
    pub fn api_ca(&self) -> Option<&Path> {
        self.options.api_ca.as_deref()
    }

    /// Every node's addresses, in topology order.
    pub fn addrs(&self) -> Vec<NodeAddrs> {
        self.nodes.iter().map(|n| n.addrs.clone()).collect()
    }

    fn node(&self, name: &str) -> anyhow::Result<&NodeProcess> {
        self.nodes
            .iter()
            .find(|n| n.addrs.name == name)
            .with_context(|| format!("no node {name:?} in the cluster"))
    }

    fn node_mut(&mut self, name: &str) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .iter_mut()
            .find(|n| n.addrs.name == name)
            .with_context(|| format!("no node {name:?} in the cluster"))
    }

    /// Makes `from` dial each peer at the given address (its proxy) instead of directly.
    pub fn set_routes(
        &mut self,
        from: &str,
        routes: &BTreeMap<String, SocketAddr>,
    ) -> anyhow::Result<()> {
        let mut values = Vec::new();
        for (peer, addr) in routes {
            let id = node_id(peer)?;
            values.push(format!("{id}={addr}"));
        }
        self.node_mut(from)?.routes = values;
        Ok(())
    }

    /// Starts every node (each one initializes the cluster from the same member list).
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        if let Some(reservation) = self.reservation.take() {
            reservation.release();
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.addrs.name.clone()).collect();
        for name in names {
            self.start(&name)?;
        }
        Ok(())
    }

    /// Starts `name` (again) on its data directory. Does nothing if it runs.
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let binary_real = self.binary_real.clone();
        let members = self.members.clone();
        let extra = self.options.extra_args.clone();
        let cluster_id = self.options.cluster_id.clone();
        let log_env = self.options.log_env.clone();
        let node = self.node_mut(name)?;
        if node.child.is_some() {
            return Ok(());
        }
        let log_path = node.addrs.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("duplicating {}", log_path.display()))?;
        let mut command = match &node.addrs.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .arg("--id")
            .arg(node.addrs.id.to_string())
            .arg("--zone")
            .arg(&node.addrs.zone)
            .arg("--client-addr")
            .arg(node.addrs.client_addr.to_string())
            .arg("--peer-addr")
            .arg(node.addrs.peer_addr.to_string())
            .arg("--data-dir")
            .arg(node.addrs.data_dir())
            .arg("--cluster-id")
            .arg(&cluster_id);
        for member in &members {
            command.arg("--member").arg(member);
        }
        for route in &node.routes {
            command.arg("--peer-route").arg(route);
        }
        command.args(&extra).args(&node.args);
        let filter = std::env::var(&log_env).unwrap_or_else(|_| NODE_LOG_FILTER_DEFAULT.to_owned());
        command
            .env(FAILPOINTS_FILE_ENV, node.addrs.failpoints_path())
            .env("RUST_LOG", filter)
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} as {name}", binary.display()))?;
        if node.addrs.netns.is_some() {
            if let Err(error) = wait_for_exec(&mut child, &binary_real) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error.context(format!("starting {name} in its namespace")));
            }
        }
        node.child = Some(child);
        node.paused = false;
        node.starts += 1;
        Ok(())
    }

    /// SIGKILL `name` and reap it. Does nothing if it is not running.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let binary_real = self.binary_real.clone();
        let node = self.node_mut(name)?;
        if let Some(child) = node.child.as_mut() {
            ensure_node(child, &binary_real).with_context(|| format!("kill -9 {name}"))?;
        }
        if let Some(mut child) = node.child.take() {
            // A stopped process dies of SIGKILL too; no SIGCONT needed.
            child
                .kill()
                .with_context(|| format!("kill -9 {name} (pid {})", child.id()))?;
            child
                .wait()
                .with_context(|| format!("reaping {name} (pid {})", child.id()))?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGTERM `name` (a graceful stop); [`Cluster::wait_exit`] reaps it. Does nothing if it is
    /// not running.
    pub fn terminate(&mut self, name: &str) -> anyhow::Result<()> {
        let binary_real = self.binary_real.clone();
        let node = self.node_mut(name)?;
        if let Some(child) = node.child.as_mut() {
            ensure_node(child, &binary_real).with_context(|| format!("stopping {name}"))?;
            if node.paused {
                signal(child, Signal::SIGCONT).with_context(|| format!("resuming {name}"))?;
                node.paused = false;
            }
            signal(child, Signal::SIGTERM).with_context(|| format!("stopping {name}"))?;
        }
        Ok(())
    }

    /// SIGSTOP `name`.
    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        let binary_real = self.binary_real.clone();
        let node = self.node_mut(name)?;
        if let Some(child) = node.child.as_mut() {
            ensure_node(child, &binary_real).with_context(|| format!("pausing {name}"))?;
            signal(child, Signal::SIGSTOP).with_context(|| format!("pausing {name}"))?;
            node.paused = true;
        }
        Ok(())
    }

    /// SIGCONT `name`.
    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        let binary_real = self.binary_real.clone();
        let node = self.node_mut(name)?;
        if let Some(child) = node.child.as_mut() {
            if node.paused {
                ensure_node(child, &binary_real).with_context(|| format!("resuming {name}"))?;
                signal(child, Signal::SIGCONT).with_context(|| format!("resuming {name}"))?;
            }
        }
        node.paused = false;
        Ok(())
    }

    /// Sets the environment variables `name` is started with from its next start on.
    pub fn set_env(&mut self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.node_mut(name)?.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(())
    }

    /// Removes `name`'s data directory (it must be stopped): a replaced disk.
    pub fn wipe(&self, name: &str) -> anyhow::Result<()> {
        let node = self.node(name)?;
        anyhow::ensure!(node.child.is_none(), "{name} is running");
        let data = node.addrs.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
        Ok(())
    }

    /// Waits until `name` exits by itself, at most `timeout`; its exit status.
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node_mut(name)?;
            let child = node.child.as_mut().context("the node is not running")?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{name} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS / 2)).await;
        }
    }

    /// Whether `name`'s process has exited (reaping it if so) or was never started.
    pub fn has_exited(&mut self, name: &str) -> bool {
        let Ok(node) = self.node_mut(name) else {
            return true;
        };
        match node.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => {
                node.child = None;
                true
            }
            _ => false,
        }
    }

    /// The pid of `name`'s process, if it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.node(name).ok()?.child.as_ref().map(Child::id)
    }

    /// Resident memory of `name`, in KiB (from /proc).
    pub fn rss_kib(&self, name: &str) -> Option<u64> {
        let pid = self.pid(name)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Resumes every paused node and starts every stopped one: the process half of a heal.
    pub fn revive_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.addrs.name.clone()).collect();
        for name in names {
            self.resume(&name)?;
            self.start(&name)?;
        }
        Ok(())
    }

    /// Shifts `name`'s wall clock by `offset_ms` (0: no shift) through its failpoint file. A node
    /// that is down reads it when it starts.
    pub fn set_clock_offset(&mut self, name: &str, offset_ms: i64) -> anyhow::Result<()> {
        let path = self.node(name)?.addrs.failpoints_path();
        write_atomically(&path, &clock_failpoints(offset_ms))
    }

    /// Puts every node's clock back (the clock half of a heal).
    pub fn reset_clocks(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.addrs.name.clone()).collect();
        for name in names {
            self.set_clock_offset(&name, 0)?;
        }
        Ok(())
    }

    /// Whether `name` runs and is not paused (it can answer).
    pub fn is_live(&self, name: &str) -> bool {
        self.node(name)
            .is_ok_and(|n| n.child.is_some() && !n.paused)
    }

    /// Exits of nodes that died on their own (not killed by the harness), as `name: status`.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut exits = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                exits.push(format!("{}: {status}", node.addrs.name));
                node.child = None;
            }
        }
        exits
    }

    /// How often each node was started.
    pub fn starts(&self) -> BTreeMap<String, u32> {
        self.nodes
            .iter()
            .map(|n| (n.addrs.name.clone(), n.starts))
            .collect()
    }

    /// Resumes paused nodes, SIGKILLs and reaps every node. Idempotent.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if node.paused {
                    let _ = signal(&child, Signal::SIGCONT);
                }
                // Errors mean it already exited; it is reaped either way.
                let _ = child.kill();
                let _ = child.wait();
            }
            node.paused = false;
        }
    }

    /// Removes every node's data directory (logs stay).
    pub fn remove_data(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let data = node.addrs.data_dir();
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("removing {}", data.display()))?;
            }
        }
        Ok(())
    }

    /// Whether `name` answers `GET /ready` with 200 right now.
    async fn ready(&self, node: &NodeAddrs) -> Result<(), String> {
        match self.http.get(format!("{}/ready", node.url())).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("{} answered {}", node.name, response.status())),
            Err(error) => Err(format!("{}: {error}", node.name)),
        }
    }

    /// Waits until every live node answers `/ready` (a leader is known and it has caught up),
    /// or fails after `timeout` with what it last saw and the tail of the laggards' logs.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let exits = self.unexpected_exits();
            if !exits.is_empty() {
                let mut text = format!("nodes exited on their own: {}", exits.join("; "));
                for node in &self.nodes {
                    if exits
                        .iter()
                        .any(|e| e.starts_with(&format!("{}:", node.addrs.name)))
                    {
                        text.push_str(&format!(
                            "\n  last log lines of {}:\n{}",
                            node.addrs.name,
                            log_tail(&node.addrs.log_path(), LOG_TAIL_LINES)
                        ));
                    }
                }
                bail!(text);
            }
            let mut problems = Vec::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
                if let Err(problem) = self.ready(&node.addrs).await {
                    problems.push((node.addrs.clone(), problem));
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut text = format!("the cluster was not ready after {timeout:?}:");
                for (node, problem) in &problems {
                    text.push_str(&format!(
                        "\n  {problem}; last log lines of {}:\n{}",
                        node.name,
                        log_tail(&node.log_path(), LOG_TAIL_LINES)
                    ));
                }
                bail!(text);
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }

    /// Waits until every live node is ready and names the same leader: after a heal, an old
    /// leader on the minority side can still call itself ready until it hears the new term.
    pub async fn wait_agreed_leader(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        self.wait_ready(timeout).await?;
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.addrs.name.clone())
            .collect();
        let remaining = deadline.saturating_duration_since(Instant::now());
        eventually("all nodes agree on the leader", remaining, || async {
            let mut seen = Vec::new();
            for name in &names {
                seen.push(self.leader_seen_by(name).await);
            }
            match seen.first() {
                Some(Some(leader)) if seen.iter().all(|s| s.as_ref() == Some(leader)) => {
                    Ok(leader.clone())
                }
                _ => Err(format!("leaders seen by {names:?}: {seen:?}")),
            }
        })
        .await
    }

    /// The leader, as the live node with the highest term knows it (an isolated old leader may
    /// still believe it leads; a newer term wins). None when no live node names one.
    pub async fn leader(&self) -> Option<String> {
        let mut best: Option<(u64, String)> = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
            let url = format!("{}/v1/cluster", node.addrs.url());
            let Ok(response) = self.http.get(url).send().await else {
                continue;
            };
            let Ok(view) = response.json::<ClusterView>().await else {
                continue;
            };
            let Some(leader) = view.leader else {
                continue;
            };
            if best.as_ref().is_none_or(|(term, _)| view.term > *term) {
                best = Some((view.term, format!("n{leader}")));
            }
        }
        best.map(|(_, name)| name)
    }

    /// The leader as node `name` sees it right now (None: it names none, or does not answer).
    pub async fn leader_seen_by(&self, name: &str) -> Option<String> {
        let node = self.node(name).ok()?;
        let url = format!("{}/v1/cluster", node.addrs.url());
        let view = self
            .http
            .get(url)
            .send()
            .await
            .ok()?
            .json::<ClusterView>()
            .await
            .ok()?;
        view.leader.map(|id| format!("n{id}"))
    }

    /// Whether node `name` answers `/ready` with 200 right now.
    pub async fn is_ready(&self, name: &str) -> bool {
        match self.node(name) {
            Ok(node) => self.ready(&node.addrs).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Makes `name` the leader: kill whichever other node leads, let the others elect (a fair
    /// race; a leader restarted at once would usually win again), start the killed one again,
    /// and repeat. Returns the number of rounds.
    pub async fn make_leader(&mut self, name: &str) -> anyhow::Result<usize> {
        const ROUNDS_MAX: usize = 30;
        let timeout = Duration::from_secs(30);
        for round in 0..ROUNDS_MAX {
            let leader = self
                .wait_leader(timeout)
                .await
                .context("no leader to move away from")?;
            if leader == name {
                return Ok(round);
            }
            self.kill(&leader)?;
            let cluster = &*self;
            eventually("a new leader", timeout, || async {
                match cluster.leader().await {
                    Some(l) if l != leader => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await?;
            self.start(&leader)?;
            self.wait_ready(timeout).await?;
        }
        bail!("{name} did not become the leader in {ROUNDS_MAX} rounds")
    }

    /// Polls [`Cluster::leader`] until one is known or `timeout` passes.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Polls `check` until it returns `Ok`, or fails after `timeout` with what it last saw.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                bail!("{what}: not true after {timeout:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await,
        }
    }
}

/// Sends `signal` to the child's pid (only ever a child this module started and has not reaped,
/// so the pid cannot have been reused).
fn signal(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("kill({pid}, {signal})"))
}

/// How long a node started through `ip netns exec` gets to become the node (`ip` execs it
/// right after entering the namespace).
pub const EXEC_TIMEOUT_MS: u64 = 5_000;

/// What `/proc/<pid>/exe` of the child points at, without a " (deleted)" suffix.
fn child_exe(child: &Child) -> std::io::Result<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{}/exe", child.id()))?;
    let text = link.to_string_lossy();
    Ok(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text).to_owned(),
    ))
}

/// Polls until the child (started as `ip netns exec ... <node>`) has exec'd the node binary.
fn wait_for_exec(child: &mut Child, binary_real: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_millis(EXEC_TIMEOUT_MS);
    loop {
        if let Some(status) = child.try_wait().context("waiting for the node")? {
            bail!("exited before it became the node: {status}");
        }
        if child_exe(child).is_ok_and(|exe| exe == binary_real) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "pid {} did not become {} within {EXEC_TIMEOUT_MS} ms",
                child.id(),
                binary_real.display()
            );
        }
        // A bounded poll of a condition that holds within microseconds.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Refuses to signal a child that is not the node binary (a wrapper that did not exec).
/// A child that already exited is fine: signalling an unreaped zombie does nothing.
fn ensure_node(child: &mut Child, binary_real: &Path) -> anyhow::Result<()> {
    match child_exe(child) {
        Ok(exe) if exe == binary_real => Ok(()),
        Ok(exe) => bail!(
            "pid {} runs {}, not the node {}; not signalling it",
            child.id(),
            exe.display(),
            binary_real.display()
        ),
        Err(_) if child.try_wait().ok().flatten().is_some() => Ok(()),
        Err(error) => Err(error).context(format!("reading /proc/{}/exe", child.id())),
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it ends (see the module
/// doc), and refuses to start if the harness is already gone.
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The failpoint file's text for a clock offset: empty for none.
pub fn clock_failpoints(offset_ms: i64) -> String {
    if offset_ms == 0 {
        String::new()
    } else {
        format!("{CLOCK_OFFSET_FAILPOINT}={offset_ms}\n")
    }
}

/// Replaces `path` with `text` by a rename, so a node polling it never reads half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// The last `lines` lines of a log file ("" if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_carry_their_ids() {
        assert_eq!(node_id("n1").expect("id"), 1);
        assert_eq!(node_id("n12").expect("id"), 12);
        assert!(node_id("x1").is_err());
        assert!(node_id("n0").is_err());
        assert!(node_id("n").is_err());
    }

    fn three() -> Vec<NodeSpec> {
        vec![
            NodeSpec::new(1, "dc-a"),
            NodeSpec::new(2, "dc-a"),
            NodeSpec::new(3, "dc-b"),
        ]
    }

    fn options() -> ClusterOptions {
        ClusterOptions {
            cluster_id: "test".into(),
            extra_args: vec![],
            log_env: "METROKV_TESTKIT_NODE_LOG".into(),
            api_ca: None,
        }
    }

    #[test]
    fn prepare_lays_out_directories_and_distinct_ports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = Cluster::prepare(PathBuf::from("/bin/true"), &three(), dir.path(), options())
            .expect("prepare");
        let addrs = cluster.addrs();
        assert_eq!(addrs.len(), 3);
        let mut ports: Vec<u16> = addrs
            .iter()
            .flat_map(|a| [a.client_addr.port(), a.peer_addr.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6, "every port distinct");
        assert!(addrs[2].dir.ends_with("nodes/n3"));
        assert!(addrs[2].dir.is_dir());
        assert_eq!(addrs[2].zone, "dc-b");
        assert!(cluster.members[0].starts_with("1=dc-a/127.0.0.1:"));
    }

    #[test]
    fn every_node_gets_its_failpoint_file_in_its_environment_and_clock_jumps_go_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A stand-in node that ignores its flags and stays up.
        let fake = dir.path().join("fake-node");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").expect("script");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut cluster = Cluster::prepare(fake, &three(), dir.path(), options()).expect("prepare");
        let n2 = cluster.addrs()[1].clone();
        let file = n2.failpoints_path();
        assert_eq!(std::fs::read_to_string(&file).expect("created"), "");
        cluster.start("n2").expect("start");
        let pid = cluster
            .node("n2")
            .expect("n2")
            .child
            .as_ref()
            .expect("child")
            .id();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let expected = format!("{FAILPOINTS_FILE_ENV}={}", file.display());
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|entry| entry == expected.as_bytes()),
            "the node is started with {expected}"
        );
        cluster.set_clock_offset("n2", -86_400_000).expect("jump");
        // (The fake is a shell script, not the node binary, so `kill` would refuse to signal
        // it; stopping everything does not check.)
        cluster.stop_all();
        cluster
            .set_env("n2", &[("METROKV_EXTRA", "1")])
            .expect("env");
        cluster.start("n2").expect("start");
        let pid = cluster.pid("n2").expect("runs");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(environ.split(|b| *b == 0).any(|e| e == b"METROKV_EXTRA=1"));
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "clock-offset-ms=-86400000\n"
        );
        assert_eq!(
            std::fs::read_to_string(cluster.addrs()[0].failpoints_path()).expect("n1"),
            ""
        );
        cluster.reset_clocks().expect("reset");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "");
        cluster.stop_all();
        assert_eq!(clock_failpoints(5), "clock-offset-ms=5\n");
        assert_eq!(clock_failpoints(0), "");
    }

    #[test]
    fn an_explicit_missing_binary_is_an_error() {
        let err =
            find_node_binary(Some(Path::new("/nonexistent/metrokv-node"))).expect_err("missing");
        assert!(err.to_string().contains("--node-bin"), "{err}");
    }
}
