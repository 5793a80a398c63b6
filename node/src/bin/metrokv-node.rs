//! `metrokv-node`: flags, logging, start. Everything else lives in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use metrokv_node::config;
use metrokv_node::config::FileConfig;
use metrokv_node::config::NodeConfig;
use metrokv_node::failpoint;
use metrokv_node::limits;

/// A metrokv node: one member of a Raft-replicated key-value and balance store.
///
/// Settings come from flags or a TOML file (--config) using the same names in snake_case
/// (id, zone, client_addr, peer_addr, data_dir, cluster_id, members, and a [raft] table for the
/// timeouts). Flags win over the file. A restarted node recovers from its data directory; the
/// member list is used only to create a new cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML file with settings (flags override it).
    #[arg(long, env = "METROKV_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1, 2, ...); must be one of the members.
    #[arg(long)]
    id: Option<u64>,
    /// The zone (data center) this node runs in, e.g. dc-a.
    #[arg(long)]
    zone: Option<String>,
    /// Address for the HTTP API, e.g. 127.0.0.1:7001.
    #[arg(long)]
    client_addr: Option<std::net::SocketAddr>,
    /// Address for peer (Raft) traffic, e.g. 127.0.0.1:7101.
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
    /// Directory for RocksDB and snapshots; created if missing.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name shared by all members; peers from another cluster are refused.
    #[arg(long)]
    cluster_id: Option<String>,
    /// A member of the initial cluster, as ID=ZONE/CLIENT_ADDR/PEER_ADDR. Repeat for each member,
    /// this node included.
    #[arg(long = "member")]
    members: Vec<String>,
    /// Dial peer ID at HOST:PORT instead of its advertised peer address, as ID=HOST:PORT (for
    /// proxies and NAT). Repeatable.
    #[arg(long = "peer-route")]
    peer_routes: Vec<String>,
    /// Leader heartbeat interval (ms). Default 30.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Lower bound of the randomized election timeout (ms). Default 120.
    #[arg(long)]
    election_timeout_ms_min: Option<u64>,
    /// Upper bound of the randomized election timeout (ms). Default 240.
    #[arg(long)]
    election_timeout_ms_max: Option<u64>,
    /// How long a write may wait to commit before the answer is 504 indeterminate (ms). Default 5000.
    #[arg(long)]
    write_timeout_ms: Option<u64>,
    /// How long a linearizable read may wait for confirmation (ms). Default 3000.
    #[arg(long)]
    read_timeout_ms: Option<u64>,
    /// Take a snapshot after this many log entries. Default 100000.
    #[arg(long)]
    snapshot_logs_since_last: Option<u64>,
    /// Log entries kept behind the latest snapshot. Default 1000.
    #[arg(long)]
    logs_kept_after_snapshot: Option<u64>,
    /// Most client requests in flight at once; past it the node answers 503 overloaded.
    /// Default 1024.
    #[arg(long)]
    max_inflight_requests: Option<usize>,
    /// Most client connections open at once; past it new connections are closed. Default 4096.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Log format: text or json. The level comes from RUST_LOG (default info).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Join a running cluster as a new member instead of creating one: start with empty
    /// storage, list the current members (and this node) with --member, and add it from the
    /// leader with `POST /v1/cluster/members`; it is a learner until promoted.
    #[arg(long)]
    join: bool,
    /// This member is a witness (the small third site of a 2+2+1 layout): it votes and keeps
    /// the log, serves no client requests, and hands leadership to another member at once.
    #[arg(long, conflicts_with = "learner")]
    witness: bool,
    /// This member is a learner for good (a copy in another city for backups and stale reads):
    /// the leader refuses to promote it, so it never joins the write quorum. Start it with
    /// --join and add it with `POST /v1/cluster/members`.
    #[arg(long)]
    learner: bool,
    /// Require a bearer token on every request but /health: the tokens, their roles and scopes
    /// are in this TOML file (see the README's "Running in production"), reread when it
    /// changes. Without it every request is allowed.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Paths served without a token besides /health, comma-separated. Default: /ready.
    #[arg(long, value_delimiter = ',')]
    auth_open: Option<Vec<String>>,
    /// Serve the client API over HTTPS with this certificate chain (PEM); needs --tls-key. A
    /// node with TLS refuses plaintext. Reread on SIGHUP and when the file changes.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on the client API.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Mutual TLS between members: this node's certificate (PEM), which must carry the DNS
    /// name node-<id>; needs --peer-tls-key and --peer-ca.
    #[arg(long)]
    peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long)]
    peer_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): a peer must present a certificate it issued, naming its member id.
    #[arg(long)]
    peer_ca: Option<PathBuf>,
    /// Take a backup into this directory every --backup-interval (the same file as
    /// `metrokv backup save`, named by cluster, node, revision and time), keeping the newest
    /// --backup-keep. Created if missing.
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// How often to take a scheduled backup: a duration such as 90s, 15m or 1h. Default 1h.
    #[arg(long)]
    backup_interval: Option<String>,
    /// How many scheduled backups of this node to keep in --backup-dir. Default 24.
    #[arg(long)]
    backup_keep: Option<usize>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Turn the data directory of a surviving node into a one-node cluster that keeps all its
    /// data, once the other members are lost for good (a zone lost with its disks). Run it with
    /// the node stopped, then start the node as before; new nodes join it afterwards. Refuses
    /// while any old member still answers on its peer address.
    Recover(RecoverArgs),
    /// Create the first node of a new cluster from a backup (`metrokv backup save`) in a new
    /// data directory. Then start the node with the same id, data directory and addresses; it
    /// elects itself and serves the backup's state, and new members join it as usual.
    Restore(RestoreArgs),
    /// Write a throwaway CA and certificates for members 1..=N (and a client) into a
    /// directory: for the local cluster's `--tls`, never for production.
    Certs {
        /// Where to write ca.pem, node-<id>.pem/.key, client.pem/.key.
        #[arg(long)]
        dir: PathBuf,
        /// Members 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// An address clients reach the nodes at besides 127.0.0.1, put in every node's
        /// certificate (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
    },
    /// Make a new random API token: prints the token (give it to the client) and the
    /// `[[token]]` entry for the auth file (which holds only its hash).
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// A name for logs and metrics.
    #[arg(long)]
    name: String,
    /// read, write or admin.
    #[arg(long, value_parser = ["read", "write", "admin"])]
    role: String,
    /// Only keys starting with this (repeatable).
    #[arg(long = "key-prefix")]
    key_prefixes: Vec<String>,
    /// Only accounts starting with this (repeatable).
    #[arg(long = "account-prefix")]
    account_prefixes: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The new node's data directory (must not exist yet or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The new node, as ID=ZONE/CLIENT_ADDR/PEER_ADDR (as for starting a node).
    #[arg(long)]
    member: String,
}

#[derive(clap::Args, Debug)]
struct RecoverArgs {
    /// The surviving node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The surviving node's id.
    #[arg(long)]
    id: u64,
    /// Required: say that the other members are gone and a new cluster starts from this node.
    #[arg(long, required = true)]
    force_new_cluster: bool,
    /// Recover even though an old member answers (only when it is certain to be wiped or off
    /// for good: two clusters with one name would both take writes).
    #[arg(long)]
    even_if_reachable: bool,
}

/// `metrokv-node recover`: see [`Sub::Recover`] and `storage::recover`.
fn recover(args: &RecoverArgs) -> anyhow::Result<()> {
    use metrokv_node::storage;
    if !args.data_dir.join("rocksdb").is_dir() {
        anyhow::bail!(
            "{} holds no metrokv data (no rocksdb directory)",
            args.data_dir.display()
        );
    }
    let db = storage::open_db(&args.data_dir).with_context(|| {
        format!(
            "cannot open {} (is the node still running?)",
            args.data_dir.display()
        )
    })?;
    let members = storage::recover::known_members(&db)?;
    if !members.contains_key(&args.id) {
        anyhow::bail!(
            "node {} is not a member of this data directory's cluster (members: {:?})",
            args.id,
            members.keys().collect::<Vec<_>>()
        );
    }
    let timeout = std::time::Duration::from_millis(limits::PEER_CONNECT_TIMEOUT_MS);
    let answering: Vec<String> = members
        .iter()
        .filter(|(id, _)| **id != args.id)
        .filter(|(_, node)| {
            use std::net::ToSocketAddrs;
            node.peer_addr
                .to_socket_addrs()
                .ok()
                .into_iter()
                .flatten()
                .any(|addr| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
        })
        .map(|(id, node)| format!("n{id} at {}", node.peer_addr))
        .collect();
    if !answering.is_empty() && !args.even_if_reachable {
        anyhow::bail!(
            "old members still answer: {}. A new cluster beside a live old one would take writes twice; stop or wipe them first (or, if they are certainly gone for good, pass --even-if-reachable)",
            answering.join(", ")
        );
    }
    let r = storage::recover::force_new_cluster(&db, args.id)?;
    println!(
        "recovered {}: node {} is now the only member of the cluster.",
        args.data_dir.display(),
        args.id
    );
    println!(
        "  old members: {}",
        r.old_members
            .iter()
            .map(|(id, n)| format!("n{id} ({})", n.zone))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  last log entry: {}",
        r.last_log_id
            .map_or_else(|| "none".to_string(), |l| l.to_string())
    );
    println!(
        "  last applied entry: {}",
        r.applied
            .map_or_else(|| "none".to_string(), |l| l.to_string())
    );
    println!(
        "  written: the membership entry {} (this node alone) and this node's vote for its term",
        r.new_entry
    );
    match r.zones.degraded {
        Some(d) => println!("  zone safety: {:?}, DEGRADED since {} ms (replicated clock): acknowledgements above index {} rested on one zone and may be missing", r.zones.mode, d.since_ms, d.zone_safe_index),
        None => println!("  zone safety: {:?}, not degraded as of the last applied entry: with strict or adaptive mode every acknowledged write is in this log", r.zones.mode),
    }
    println!("Start the node as before: it elects itself, commits everything in its log and serves. Then add new members.");
    Ok(())
}

/// `metrokv-node restore`: see [`Sub::Restore`] and `storage::restore`.
fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let (id, info) = config::parse_member(&args.member)?;
    let r = metrokv_node::storage::restore::restore(&args.data_dir, &args.from, id, info)?;
    println!(
        "restored {} into {}: node {id} is the only member of a new cluster.",
        args.from.display(),
        args.data_dir.display()
    );
    match &r.info {
        Some(info) => println!(
            "  backup of cluster {:?} taken by node {} at revision {} (log index {}, term {})",
            info.cluster_id, info.node, info.revision, info.applied_index, info.applied_term
        ),
        None => println!("  a Raft snapshot file without a backup description"),
    }
    println!("  state records: {}", r.records);
    println!(
        "  last applied entry: {}",
        r.applied
            .map_or_else(|| "none".to_string(), |l| l.to_string())
    );
    println!("Start the node with --id {id}, this data directory and these addresses; then add new members.");
    Ok(())
}

fn build_config(args: &Args) -> Result<NodeConfig, config::ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut raft = file.raft.clone().unwrap_or_default();
    let overrides = [
        (args.heartbeat_interval_ms, &mut raft.heartbeat_interval_ms),
        (
            args.election_timeout_ms_min,
            &mut raft.election_timeout_ms_min,
        ),
        (
            args.election_timeout_ms_max,
            &mut raft.election_timeout_ms_max,
        ),
        (args.write_timeout_ms, &mut raft.write_timeout_ms),
        (args.read_timeout_ms, &mut raft.read_timeout_ms),
        (
            args.snapshot_logs_since_last,
            &mut raft.snapshot_logs_since_last,
        ),
        (
            args.logs_kept_after_snapshot,
            &mut raft.logs_kept_after_snapshot,
        ),
    ];
    for (flag, field) in overrides {
        if let Some(v) = flag {
            *field = v;
        }
    }
    let members = if args.members.is_empty() {
        file.members.clone().unwrap_or_default()
    } else {
        args.members.clone()
    };
    NodeConfig {
        id: args
            .id
            .or(file.id)
            .ok_or(config::ConfigError::Missing("id"))?,
        zone: args
            .zone
            .clone()
            .or(file.zone)
            .ok_or(config::ConfigError::Missing("zone"))?,
        client_addr: args
            .client_addr
            .or(file.client_addr)
            .ok_or(config::ConfigError::Missing("client_addr"))?,
        peer_addr: args
            .peer_addr
            .or(file.peer_addr)
            .ok_or(config::ConfigError::Missing("peer_addr"))?,
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .ok_or(config::ConfigError::Missing("data_dir"))?,
        cluster_id: args
            .cluster_id
            .clone()
            .or(file.cluster_id)
            .unwrap_or_else(|| "metrokv".to_string()),
        members: config::parse_members(&members)?,
        peer_routes: config::parse_peer_routes(if args.peer_routes.is_empty() {
            file.peer_routes.as_deref().unwrap_or_default()
        } else {
            &args.peer_routes
        })?,
        raft,
        max_inflight_requests: args
            .max_inflight_requests
            .or(file.max_inflight_requests)
            .unwrap_or(limits::API_INFLIGHT_DEFAULT),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(limits::HTTP_CONNECTIONS_DEFAULT),
        join: args.join,
        auth_file: args.auth_file.clone().or(file.auth_file),
        auth_open: args
            .auth_open
            .clone()
            .or(file.auth_open)
            .unwrap_or_else(|| vec!["/ready".to_string()]),
        api_tls: tls_files(
            "--tls-cert",
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.client_ca.clone().or(file.client_ca),
        )?,
        peer_tls: tls_files(
            "--peer-tls-cert",
            args.peer_tls_cert.clone().or(file.peer_tls_cert),
            args.peer_tls_key.clone().or(file.peer_tls_key),
            args.peer_ca.clone().or(file.peer_ca),
        )?,
        backups: config::backup_schedule(
            args.backup_dir.clone().or(file.backup_dir),
            args.backup_interval
                .as_deref()
                .or(file.backup_interval.as_deref()),
            args.backup_keep.or(file.backup_keep),
        )?,
        role: if args.witness {
            config::NodeRole::Witness
        } else if args.learner {
            config::NodeRole::Learner
        } else {
            config::NodeRole::Voter
        },
    }
    .validate()
}

/// A certificate and its key, both or neither (a CA alone is not TLS).
fn tls_files(
    what: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<metrokv_node::tls::TlsFiles>, config::ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(metrokv_node::tls::TlsFiles { cert, key, ca })),
        (None, None) if ca.is_none() => Ok(None),
        _ => Err(config::ConfigError::Tls(format!(
            "{what} and its key are given together, and a CA only with them"
        ))),
    }
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colour only on a terminal: a log file must not fill with escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Raise the open-file limit to its hard limit: every client and peer connection is a file, and
/// the common default soft limit (1024) is below the default connection cap.
fn raise_file_limit(wanted: u64) {
    use nix::sys::resource::getrlimit;
    use nix::sys::resource::setrlimit;
    use nix::sys::resource::Resource;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the open-file limit");
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    if now < wanted {
        tracing::warn!(
            limit = now,
            wanted,
            "the open-file limit is below the connection cap plus peers; connections past it fail"
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Sub::Recover(recover_args)) => {
            if let Err(e) = recover(recover_args) {
                eprintln!("metrokv-node recover: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Some(Sub::Restore(restore_args)) => {
            if let Err(e) = restore(restore_args) {
                eprintln!("metrokv-node restore: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Some(Sub::Certs { dir, nodes, ips }) => {
            let ids: Vec<u64> = (1..=*nodes).collect();
            match metrokv_node::tls::write_dev_certs(dir, &ids, ips) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("metrokv-node certs: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(Sub::Token(t)) => {
            let (token, hash) = metrokv_node::api::auth::new_token();
            let list = |v: &[String]| {
                v.iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("token: {token}");
            println!("# for the auth file:");
            println!(
                "[[token]]\nname = {:?}\nhash = {hash:?}\nrole = {:?}",
                t.name, t.role
            );
            if !t.key_prefixes.is_empty() {
                println!("key_prefixes = [{}]", list(&t.key_prefixes));
            }
            if !t.account_prefixes.is_empty() {
                println!("account_prefixes = [{}]", list(&t.account_prefixes));
            }
            return Ok(());
        }
        None => {}
    }
    let config = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("metrokv-node: {e}\nRun `metrokv-node --help` for the settings.");
            std::process::exit(2);
        }
    };
    init_logging(&args.log_format);
    match failpoint::init_from_env() {
        Ok(None) => {}
        Ok(Some(active)) => {
            tracing::warn!(%active, "FAULT INJECTION IS ON: failpoints are for fault tests, never for a deployment")
        }
        Err(e) => {
            eprintln!("metrokv-node: {e}");
            std::process::exit(2);
        }
    }
    raise_file_limit(config.max_connections as u64 + 1024);
    let metrics_handle =
        metrokv_node::metrics::install().context("cannot install the metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(metrokv_node::node::run(
        config,
        Some(metrics_handle),
        shutdown_signal(),
    ))
}
