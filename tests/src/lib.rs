//! A test cluster of real `metrokv-node` processes on 127.0.0.1, for the end-to-end tests and the
//! failover benchmark.
//!
//! Each node gets ephemeral ports and its own temporary data directory. Processes are tracked by
//! pid: `kill` is SIGKILL, `pause` is SIGSTOP, and dropping the cluster kills every process it
//! started. When a test panics, the cluster prints the tail of every node's log first, so a
//! failure shows what the nodes saw. Fault tests can give a node environment variables (the
//! node's failpoints), wipe its data directory, wait for it to exit, and read its memory use.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Where the `metrokv-node` binary is: `$METROKV_BIN` (set by scripts/test.sh), else next to the
/// running test executable's profile directory.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("METROKV_BIN") {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    let exe = std::env::current_exe().context("current exe")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    for dir in exe.ancestors().skip(1).take(3) {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("cannot find the {name} binary: build it first (cargo build --release --workspace --bins) or set METROKV_BIN")
}

/// A free port on 127.0.0.1. The listener is closed before the node binds it; another process
/// could take it in between, which shows up as a node failing to start with a clear log line.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Options for a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    /// Zone of each node (node i gets `zones[i - 1]`); defaults to dc-a, dc-a, dc-b, dc-b, dc-b...
    pub zones: Vec<String>,
    /// Extra flags for every node (e.g. a small `--snapshot-logs-since-last`).
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 3,
            zones: vec![],
            extra_args: vec![],
        }
    }
}

pub struct Node {
    pub id: u64,
    pub zone: String,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Environment variables for the node's next start (e.g. `METROKV_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    _dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    binary: PathBuf,
    members: Vec<String>,
    extra_args: Vec<String>,
    http: reqwest::Client,
}

impl Cluster {
    /// Start the nodes and wait until the cluster has a leader and every node is ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let binary = binary("metrokv-node")?;
        let dir = tempfile::Builder::new().prefix("metrokv-test-").tempdir()?;
        let mut nodes = Vec::new();
        for i in 1..=options.nodes as u64 {
            let zone = options
                .zones
                .get(i as usize - 1)
                .cloned()
                .unwrap_or_else(|| if i <= 2 { "dc-a".into() } else { "dc-b".into() });
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(Node {
                id: i,
                zone,
                client_addr: format!("127.0.0.1:{}", free_port()),
                peer_addr: format!("127.0.0.1:{}", free_port()),
                data_dir: node_dir.join("data"),
                log_path: node_dir.join("node.log"),
                env: Vec::new(),
                child: None,
                paused: false,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}={}/{}/{}", n.id, n.zone, n.client_addr, n.peer_addr))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut cluster = Self {
            _dir: dir,
            nodes,
            binary,
            members,
            extra_args: options.extra_args,
            http,
        };
        for id in 1..=options.nodes as u64 {
            cluster.spawn(id)?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let members = self.members.clone();
        let binary = self.binary.clone();
        let extra = self.extra_args.clone();
        let node = self.node_mut(id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let mut cmd = Command::new(binary);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--zone")
            .arg(&node.zone)
            .arg("--client-addr")
            .arg(&node.client_addr)
            .arg("--peer-addr")
            .arg(&node.peer_addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--cluster-id")
            .arg("metrokv-test");
        for m in &members {
            cmd.arg("--member").arg(m);
        }
        cmd.args(&extra).env(
            "RUST_LOG",
            std::env::var("METROKV_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        );
        for (k, v) in &node.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.child = Some(cmd.spawn().context("spawn metrokv-node")?);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `id` again on its data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        self.spawn(id)
    }

    /// Start node `id` again on its data directory with `env` set (replacing earlier ones).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill(id);
        self.node_mut(id).env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn(id)
    }

    /// Remove node `id`'s data directory (the node must be stopped): a replaced disk.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        anyhow::ensure!(!self.node(id).is_running(), "n{id} is running");
        let dir = &self.node(id).data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        Ok(())
    }

    /// Wait until node `id`'s process exits by itself, at most `timeout`; its exit status.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node_mut(id);
            let child = node.child.as_mut().context("the node is not running")?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("n{id} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether node `id`'s process has exited (reaping it if so).
    pub fn has_exited(&mut self, id: u64) -> bool {
        let node = self.node_mut(id);
        match node.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => {
                node.child = None;
                true
            }
            _ => false,
        }
    }

    /// Resident memory of node `id`, in KiB (from /proc).
    pub fn rss_kib(&self, id: u64) -> Option<u64> {
        let pid = self.node(id).pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            signal(pid, Signal::SIGSTOP);
            self.node_mut(id).paused = true;
        }
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            signal(pid, Signal::SIGCONT);
            self.node_mut(id).paused = false;
        }
    }

    pub async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// The leader as reported by any running node.
    pub async fn leader(&self) -> Option<u64> {
        for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
            if let Ok(v) = self.get_json(&format!("{}/v1/cluster", node.url())).await {
                if let Some(l) = v["leader"].as_u64() {
                    return Some(l);
                }
            }
        }
        None
    }

    /// Wait until every running, unpaused node answers /ready with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut ready = true;
            for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
                match self
                    .http
                    .get(format!("{}/ready", node.url()))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        ready = false;
                        last = format!("n{} answered {}", node.id, r.status());
                    }
                    Err(e) => {
                        ready = false;
                        last = format!("n{}: {e}", node.id);
                    }
                }
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("cluster not ready after {timeout:?}; last seen: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll `f` until it returns `Some`, or fail after `timeout` with what it last saw.
    pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(seen) if Instant::now() >= deadline => {
                    bail!("{what}: not true after {timeout:?}; last seen: {seen}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail(&self.node(id).log_path, lines)
    }

    /// `PUT /v1/kv/{key}` on node `node`.
    pub async fn put(
        &self,
        node: u64,
        key: &str,
        value: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/kv/{key}", self.url(node)))
            .body(value)
            .send()
            .await
            .expect("put")
    }

    /// `GET /v1/kv/{key}` on node `node`: status, body, ETag.
    pub async fn get(&self, node: u64, key: &str) -> (reqwest::StatusCode, String, Option<String>) {
        let r = self
            .http
            .get(format!("{}/v1/kv/{key}", self.url(node)))
            .send()
            .await
            .expect("get");
        let status = r.status();
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, r.text().await.unwrap_or_default(), etag)
    }

    /// A sample of metric `name` (without labels) from node `node`'s `/metrics`.
    pub async fn metric(&self, node: u64, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url(node)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Make node `id` the leader: kill whichever other node leads, let the two others elect (a
    /// fair race; a leader restarted at once would usually win again), bring the killed one
    /// back, and repeat. Returns the number of rounds.
    pub async fn make_leader(&mut self, id: u64) -> anyhow::Result<usize> {
        const ROUNDS_MAX: usize = 30;
        for round in 0..ROUNDS_MAX {
            let c = &*self;
            let leader = Self::eventually("a leader", Duration::from_secs(30), || async {
                c.leader().await.ok_or_else(|| "none".to_string())
            })
            .await?;
            if leader == id {
                return Ok(round);
            }
            self.kill(leader);
            let c = &*self;
            Self::eventually("a new leader", Duration::from_secs(30), || async {
                match c.leader().await {
                    Some(l) if l != leader => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await?;
            self.restart(leader)?;
            self.wait_ready(Duration::from_secs(30)).await?;
        }
        bail!("n{id} did not become the leader in {ROUNDS_MAX} rounds")
    }

    /// The whole log of node `id`.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }
}

/// The status and JSON body of an answer; panics with the body if it is not JSON.
pub async fn json_of(r: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

/// Signal a process this cluster started, by pid.
fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- n{} log (last 60 lines) -----\n{}",
                    node.id,
                    tail(&node.log_path, 60)
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if node.paused {
                    signal(child.id(), Signal::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
