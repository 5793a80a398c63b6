//! `metrokv`: the command-line client. Parses flags, calls the library, prints the result.
//!
//! Output is for people by default and one line of JSON per result with `--json`. Errors go to
//! stderr as one paragraph (what failed, where, what to do next); with `--json` an error object
//! also goes to stdout. Exit codes: 0 ok, 1 the server refused (condition failed, insufficient
//! funds, not found), 2 usage error, 3 unavailable or indeterminate.
//!
//! Left out: anything the library does (retries, encoding); interactive prompts.

use std::fs::File;
use std::io::IsTerminal as _;
use std::io::Read;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use metrokv_client::limits::LOCAL_ENDPOINTS;
use metrokv_client::limits::REQUEST_BODY_BYTES_MAX;
use metrokv_client::limits::VALUE_BYTES_MAX;
use metrokv_client::*;
use serde_json::json;
use serde_json::Value;

/// Exit code for usage errors (bad flags, unreadable input), as clap uses.
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "metrokv",
    version,
    about = "Client for a metrokv cluster",
    max_term_width = 100
)]
struct Cli {
    /// Every node's client URL, comma-separated.
    #[arg(long, env = "METROKV_ENDPOINTS", value_delimiter = ',', global = true,
          default_values = LOCAL_ENDPOINTS)]
    endpoints: Vec<String>,
    /// Your zone: nodes in it are asked first.
    #[arg(long, env = "METROKV_ZONE", global = true)]
    zone: Option<String>,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this long, across all retries.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    deadline_ms: u64,
    /// Give up on one node after this long.
    #[arg(long, global = true, default_value_t = 2_000, value_name = "MS")]
    attempt_timeout_ms: u64,
    /// The CA certificate (PEM) that issued the nodes' certificates, for https:// endpoints.
    #[arg(long, env = "METROKV_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// A client certificate (PEM), for nodes started with --client-ca.
    #[arg(long = "cert", env = "METROKV_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// The key (PEM) of --cert.
    #[arg(long = "key", env = "METROKV_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Bearer token for nodes that require one (`metrokv-node --auth-file`).
    #[arg(long, env = "METROKV_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a key's value (raw bytes; the version goes to stderr).
    Get {
        key: String,
        /// Read this node's applied state instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Write a key: `put KEY VALUE`, `put KEY --file F`, or `put KEY -` (stdin).
    Put {
        key: String,
        /// The value; `-` reads stdin.
        value: Option<String>,
        /// Read the value from this file (`-` for stdin).
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Write only if the key is at this version (compare-and-swap; 0 = absent).
        #[arg(long)]
        if_version: Option<u64>,
        /// Write only if the key does not exist.
        #[arg(long, conflicts_with = "if_version")]
        create_only: bool,
        /// Resend an earlier indeterminate write with its key to settle it.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Delete a key.
    Del {
        key: String,
        /// Delete only if the key is at this version.
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List keys by prefix (one page).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after this key.
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        stale: bool,
    },
    /// Run a transaction given as API.md JSON: argument, `--file F`, or `-` (stdin).
    Txn {
        body: Option<String>,
        #[arg(long, conflicts_with = "body")]
        file: Option<PathBuf>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Create, read or list accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Load the cluster and print throughput, latency percentiles, errors by kind and CPU.
    Bench(BenchArgs),
    /// Move AMOUNT from FROM to TO, exactly once.
    Transfer {
        /// The transfer id (its idempotency key); generated and printed when absent.
        #[arg(long)]
        id: Option<String>,
        from: String,
        to: String,
        amount: u64,
    },
    /// Show the recorded outcome of a transfer.
    TransferStatus { id: String },
    /// Cluster information.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Save a consistent backup of the whole cluster to a file, or check one.
    #[command(subcommand)]
    Backup(BackupCommand),
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Stream a backup from the cluster into FILE (checked, then renamed into place). Every
    /// write acknowledged before it started is in it; writes go on meanwhile.
    Save { file: PathBuf },
    /// Check a backup file whole (format, record count, checksum) and say what it holds.
    Verify { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Create an account with an opening balance.
    Create {
        id: String,
        balance: u64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show an account's balance.
    Get {
        id: String,
        #[arg(long)]
        stale: bool,
    },
    /// List accounts by prefix (one page) with the total balance.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Each node's zone, role, applied index, lag and reachability, and the zone-safety state.
    Status,
    /// Show the cluster settings, or change those given (a replicated write).
    Settings {
        /// off, adaptive or strict (see the README's "Zones").
        #[arg(long, value_parser = ["off", "adaptive", "strict"])]
        zone_safety: Option<String>,
        /// How long adaptive mode waits for the other zone before it degrades, in ms.
        #[arg(long)]
        degrade_after_ms: Option<u64>,
        /// The zone the leader should sit in ("" clears it).
        #[arg(long)]
        preferred_leader_zone: Option<String>,
    },
    /// Add a node as a learner (start it first with `metrokv-node --join`).
    Add {
        id: u64,
        #[arg(long)]
        zone: String,
        /// The node's client API address, host:port.
        #[arg(long)]
        client_addr: String,
        /// The node's peer address, host:port.
        #[arg(long)]
        peer_addr: String,
    },
    /// Make a caught-up learner a voter.
    Promote { id: u64 },
    /// Remove a member (removing the leader hands leadership over first).
    Remove {
        id: u64,
        /// Remove it even if the voters left sit in one zone while zone safety is on.
        #[arg(long)]
        force: bool,
    },
    /// Hand leadership to voter N (or, without --to, the best caught-up voter).
    TransferLeader {
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// The store under load (etcd: give its client endpoints with --endpoints).
    #[arg(long, value_enum, default_value = "metrokv")]
    system: bench::System,
    #[arg(long, value_enum, default_value = "put")]
    workload: bench::Workload,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run first and not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Keys the workloads spread over (the reading ones preload up to 100,000).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Accounts of the transfer workload.
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,
    /// Open loop at this many requests per second in total (latency at a given load); without
    /// it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of gets in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A server process on this machine whose CPU time is reported per operation (repeat it).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
}

async fn bench(builder: &ClientBuilder, args: BenchArgs, json: bool) -> Outcome {
    let seconds = |s: f64, what: &str| {
        if s.is_finite() && s >= 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(Failure::Usage(format!(
                "{what} must be a number of seconds"
            )))
        }
    };
    let options = bench::BenchOptions {
        system: args.system,
        workload: args.workload,
        clients: args.clients,
        duration: seconds(args.duration, "--duration")?,
        warmup: seconds(args.warmup, "--warmup")?,
        keys: args.keys,
        value_size: args.value_size,
        accounts: args.accounts,
        rate: args.rate,
        read_ratio: args.read_ratio,
        seed: args.seed,
        server_pids: args.server_pids,
    };
    options.validate().map_err(Failure::Usage)?;
    let total = options.warmup + options.duration;
    let progress = std::sync::Arc::new(bench::Progress::default());
    let shown = progress.clone();
    let tty = std::io::stderr().is_terminal();
    let ticker = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let ok = shown.ok.load(std::sync::atomic::Ordering::Relaxed);
            let errors = shown.errors.load(std::sync::atomic::Ordering::Relaxed);
            let at = started.elapsed().as_secs_f64();
            let line = format!(
                "[{at:5.1}s of {:.0}s] ok {ok}, errors {errors}",
                total.as_secs_f64()
            );
            // One overwritten line on a terminal; a line every 5 s in a log.
            if tty {
                eprint!("\r{line}   ");
            } else if (at as u64).is_multiple_of(5) {
                eprintln!("{line}");
            }
        }
    });
    let report = bench::run(builder, options, progress).await;
    ticker.abort();
    if tty {
        eprintln!();
    }
    let report = report.map_err(|e| match e {
        bench::BenchError::Options(message) => Failure::Usage(message),
        bench::BenchError::Client(error) => Failure::Call {
            what: "bench".into(),
            error: Box::new(error),
        },
        bench::BenchError::System(message) => Failure::Unavailable(message),
    })?;
    if json {
        print_json(&report);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Why a command failed.
#[derive(Debug)]
enum Failure {
    /// The command line or its input was wrong.
    Usage(String),
    /// A call failed; `what` names it, e.g. `put "a"`.
    Call { what: String, error: Box<Error> },
    /// Another system (the benchmark's etcd) could not be reached.
    Unavailable(String),
}

type Outcome = Result<(), Failure>;

fn call_failed(what: impl Into<String>) -> impl FnOnce(Error) -> Failure {
    let what = what.into();
    move |error| Failure::Call {
        what,
        error: Box::new(error),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let builder = client_builder(&cli);
    let outcome = match (build_client(&cli), cli.command) {
        (Ok(_), Command::Bench(args)) => bench(&builder, args, json).await,
        (Ok(client), command) => run(&client, command, json).await,
        (Err(error), _) => Err(Failure::Call {
            what: "configuring the client".into(),
            error: Box::new(error),
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => ExitCode::from(report(&failure, json)),
    }
}

fn build_client(cli: &Cli) -> metrokv_client::Result<Client> {
    client_builder(cli).build()
}

fn client_builder(cli: &Cli) -> ClientBuilder {
    let mut builder = ClientBuilder::new(
        cli.endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty()),
    )
    .deadline(Duration::from_millis(cli.deadline_ms))
    .attempt_timeout(Duration::from_millis(cli.attempt_timeout_ms));
    if let Some(zone) = &cli.zone {
        builder = builder.zone(zone);
    }
    if let Some(token) = &cli.token {
        builder = builder.token(token);
    }
    if cli.cacert.is_some() || cli.tls_cert.is_some() || cli.tls_key.is_some() {
        builder = builder.tls(TlsOptions {
            ca: cli.cacert.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        });
    }
    builder
}

async fn run(client: &Client, command: Command, json: bool) -> Outcome {
    match command {
        Command::Get { key, stale } => get(client, &key, consistency(stale), json).await,
        Command::Put {
            key,
            value,
            file,
            if_version,
            create_only,
            idempotency_key,
        } => {
            let value = read_input(value, file, VALUE_BYTES_MAX, "value")?;
            let options = PutOptions {
                if_version,
                create_only,
                idempotency_key,
            };
            put(client, &key, value, options, json).await
        }
        Command::Del {
            key,
            if_version,
            idempotency_key,
        } => {
            del(
                client,
                &key,
                DeleteOptions {
                    if_version,
                    idempotency_key,
                },
                json,
            )
            .await
        }
        Command::List {
            prefix,
            limit,
            after,
            stale,
        } => {
            let options = ListOptions {
                prefix,
                limit,
                after,
                consistency: consistency(stale),
            };
            list(client, options, json).await
        }
        Command::Txn {
            body,
            file,
            idempotency_key,
        } => {
            let body = read_input(body, file, REQUEST_BODY_BYTES_MAX, "txn")?;
            txn(client, &body, idempotency_key, json).await
        }
        Command::Account(command) => account(client, command, json).await,
        // Handled before a single client is needed (it builds one per task).
        Command::Bench(_) => Err(Failure::Usage("bench is run by main".into())),
        Command::Transfer {
            id,
            from,
            to,
            amount,
        } => transfer(client, id, TransferRequest::new(from, to, amount), json).await,
        Command::TransferStatus { id } => transfer_status(client, &id, json).await,
        Command::Cluster(ClusterCommand::Status) => cluster_status(client, json).await,
        Command::Cluster(ClusterCommand::Settings {
            zone_safety,
            degrade_after_ms,
            preferred_leader_zone,
        }) => {
            cluster_settings(
                client,
                zone_safety.as_deref(),
                degrade_after_ms,
                preferred_leader_zone,
                json,
            )
            .await
        }
        Command::Cluster(ClusterCommand::Add {
            id,
            zone,
            client_addr,
            peer_addr,
        }) => {
            let member = metrokv_client::api::cluster::AddMember {
                id,
                zone,
                client_addr,
                peer_addr,
            };
            let answer = client.add_member(&member).await;
            print_membership(answer, &format!("cluster add {id}"), json)
        }
        Command::Cluster(ClusterCommand::Promote { id }) => {
            let answer = client.promote_member(id).await;
            print_membership(answer, &format!("cluster promote {id}"), json)
        }
        Command::Cluster(ClusterCommand::Remove { id, force }) => {
            let answer = client.remove_member(id, force).await;
            print_membership(answer, &format!("cluster remove {id}"), json)
        }
        Command::Backup(BackupCommand::Save { file }) => backup_save(client, &file, json).await,
        Command::Backup(BackupCommand::Verify { file }) => backup_verify(&file, json),
        Command::Cluster(ClusterCommand::TransferLeader { to }) => {
            let answer = client.transfer_leader(to).await;
            print_membership(answer, "cluster transfer-leader", json)
        }
    }
}

async fn backup_save(client: &Client, file: &std::path::Path, json: bool) -> Outcome {
    use std::io::IsTerminal;
    // A progress bar only for a person watching.
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let saved = client
        .backup_to(file, |done, total| {
            if let Some(bar) = &bar {
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(done);
            }
        })
        .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let saved = saved.map_err(call_failed("backup save"))?;
    if json {
        print_json(&json!({
            "file": saved.path,
            "bytes": saved.bytes,
            "records": saved.records,
            "node": saved.node,
            "info": saved.info,
        }));
    } else {
        println!(
            "saved {} ({} bytes, {} records) from {}: cluster {:?}, revision {}, log index {}",
            saved.path.display(),
            saved.bytes,
            saved.records,
            saved.node,
            saved.info.cluster_id,
            saved.info.revision,
            saved.info.applied_index
        );
    }
    Ok(())
}

fn backup_verify(file: &std::path::Path, json: bool) -> Outcome {
    let (info, records) =
        metrokv_client::backup::verify(file).map_err(call_failed("backup verify"))?;
    if json {
        print_json(&json!({"file": file, "valid": true, "records": records, "info": info}));
    } else {
        println!(
            "{}: intact, {records} records; cluster {:?}, revision {}, log index {} (term {}), taken by node {}",
            file.display(),
            info.cluster_id,
            info.revision,
            info.applied_index,
            info.applied_term,
            info.node
        );
    }
    Ok(())
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// Reads an input from its argument, a file, or stdin (`-` as argument or file), refusing more
/// than `max` bytes rather than reading without bound.
fn read_input(
    arg: Option<String>,
    file: Option<PathBuf>,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let source: Box<dyn Read> = match (arg, file) {
        (Some(text), _) if text != "-" => return Ok(text.into_bytes()),
        (Some(_), _) => Box::new(std::io::stdin()),
        (None, Some(path)) if path.as_os_str() == "-" => Box::new(std::io::stdin()),
        (None, Some(path)) => Box::new(File::open(&path).map_err(|e| {
            Failure::Usage(format!(
                "cannot open the {what} file {}: {e}",
                path.display()
            ))
        })?),
        (None, None) => {
            return Err(Failure::Usage(format!(
                "no {what} given: pass it as an argument, with --file FILE, or as - to read stdin"
            )))
        }
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    source
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read the {what}: {e}")))?;
    if bytes.len() > max {
        return Err(Failure::Usage(format!(
            "the {what} is larger than the {max} bytes allowed"
        )));
    }
    Ok(bytes)
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("metrokv: cannot print the result as JSON: {e}"),
    }
}

async fn get(client: &Client, key: &str, consistency: Consistency, json: bool) -> Outcome {
    let found = client
        .get_with(key, consistency)
        .await
        .map_err(call_failed(format!("get {key:?}")))?;
    let Some(read) = found else {
        let error = Error::NotFound {
            what: format!("key {key:?}"),
        };
        return Err(Failure::Call {
            what: format!("get {key:?}"),
            error: Box::new(error),
        });
    };
    if json {
        let mut value = serde_json::to_value(&read).unwrap_or_default();
        value["key"] = json!(key);
        print_json(&value);
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let mut written = stdout.write_all(&read.value);
    // A terminal gets a final newline; a pipe gets the exact bytes.
    if std::io::stdout().is_terminal() && !read.value.ends_with(b"\n") {
        written = written.and_then(|()| stdout.write_all(b"\n"));
    }
    written
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Usage(format!("cannot write the value: {e}")))?;
    eprintln!("version {} ({})", read.version, served(&read.served_by));
    Ok(())
}

async fn put(
    client: &Client,
    key: &str,
    value: Vec<u8>,
    options: PutOptions,
    json: bool,
) -> Outcome {
    let result = client
        .put_with(key, value, options)
        .await
        .map_err(call_failed(format!("put {key:?}")))?;
    if json {
        print_json(&result);
    } else {
        println!(
            "ok: {key:?} is at version {} (revision {})",
            result.version, result.revision
        );
    }
    Ok(())
}

async fn del(client: &Client, key: &str, options: DeleteOptions, json: bool) -> Outcome {
    let result = client
        .delete_with(key, options)
        .await
        .map_err(call_failed(format!("del {key:?}")))?;
    if json {
        print_json(&result);
    } else if result.deleted {
        println!("ok: {key:?} deleted (revision {})", result.revision);
    } else {
        println!("ok: {key:?} did not exist (revision {})", result.revision);
    }
    Ok(())
}

async fn list(client: &Client, options: ListOptions, json: bool) -> Outcome {
    let page = client.list(options).await.map_err(call_failed("list"))?;
    if json {
        print_json(&page);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|item| {
            vec![
                item.key.clone(),
                item.version.to_string(),
                display_value(&item.value),
            ]
        })
        .collect();
    print_table(&["KEY", "VERSION", "VALUE"], &rows);
    eprintln!("{} key(s) at revision {}", page.items.len(), page.revision);
    if let Some(after) = page.next_after() {
        eprintln!("more keys follow: continue with --after {after:?}");
    }
    Ok(())
}

/// A value for a table cell: the text when it is printable UTF-8, else base64 marked as such.
fn display_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            use base64::Engine as _;
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(value)
            )
        }
    }
}

async fn txn(client: &Client, body: &[u8], idempotency_key: Option<String>, json: bool) -> Outcome {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Usage(format!("the txn is not valid JSON: {e}")))?;
    let mut request = TxnRequest::from_json(&parsed).map_err(|e| Failure::Usage(e.to_string()))?;
    request.idempotency_key = idempotency_key;
    let response = client.txn(&request).await.map_err(call_failed("txn"))?;
    if json {
        print_json(&response);
        return Ok(());
    }
    let branch = if response.succeeded {
        "succeeded (success branch ran)"
    } else {
        "failed (failure branch ran)"
    };
    println!("txn {branch} at revision {}", response.revision);
    for (i, result) in response.results.iter().enumerate() {
        let text = match result {
            OpResult::Put { version } => format!("put: version {version}"),
            OpResult::Delete { deleted } => format!(
                "delete: {}",
                if *deleted { "deleted" } else { "did not exist" }
            ),
            OpResult::Get(None) => "get: not found".to_string(),
            OpResult::Get(Some(item)) => {
                format!(
                    "get {:?}: {} (version {})",
                    item.key,
                    display_value(&item.value),
                    item.version
                )
            }
        };
        println!("  {i}: {text}");
    }
    Ok(())
}

async fn account(client: &Client, command: AccountCommand, json: bool) -> Outcome {
    match command {
        AccountCommand::Create {
            id,
            balance,
            idempotency_key,
        } => {
            let what = format!("account create {id:?}");
            let account = client
                .create_account_with(&id, balance, idempotency_key)
                .await
                .map_err(call_failed(what))?;
            print_account(&account, json, "created");
        }
        AccountCommand::Get { id, stale } => {
            let what = format!("account get {id:?}");
            let found = client
                .get_account_with(&id, consistency(stale))
                .await
                .map_err(call_failed(&what))?;
            let Some(account) = found else {
                let error = Error::NotFound {
                    what: format!("account {id:?}"),
                };
                return Err(Failure::Call {
                    what,
                    error: Box::new(error),
                });
            };
            print_account(&account, json, "account");
        }
        AccountCommand::List {
            prefix,
            limit,
            after,
            stale,
        } => {
            let options = AccountListOptions {
                prefix,
                limit,
                after,
                consistency: consistency(stale),
            };
            let page = client
                .list_accounts(options)
                .await
                .map_err(call_failed("account list"))?;
            print_account_page(&page, json);
        }
    }
    Ok(())
}

fn print_account(account: &Account, json: bool, label: &str) {
    if json {
        print_json(account);
    } else {
        let version = account
            .version
            .map_or_else(String::new, |v| format!(" (version {v})"));
        println!(
            "{label} {:?}: balance {}{version}",
            account.id, account.balance
        );
    }
}

fn print_account_page(page: &AccountPage, json: bool) {
    if json {
        print_json(page);
        return;
    }
    let rows: Vec<Vec<String>> = page
        .accounts
        .iter()
        .map(|a| vec![a.id.clone(), a.balance.to_string()])
        .collect();
    print_table(&["ACCOUNT", "BALANCE"], &rows);
    println!("total {} at revision {}", page.total, page.revision);
    if let Some(after) = page.next_after() {
        eprintln!("more accounts follow: continue with --after {after:?}");
    }
}

async fn transfer(
    client: &Client,
    id: Option<String>,
    generated: TransferRequest,
    json: bool,
) -> Outcome {
    let request = match id {
        Some(id) => generated.with_id(id),
        None => {
            // Said before sending, so the id is known even if this process dies mid-call.
            eprintln!("transfer id: {}", generated.id);
            generated
        }
    };
    let what = format!(
        "transfer {:?} ({} from {:?} to {:?})",
        request.id, request.amount, request.from, request.to
    );
    let receipt = client.transfer(&request).await.map_err(call_failed(what))?;
    if json {
        print_json(&receipt);
    } else {
        println!(
            "transfer {:?} {}: {:?} now holds {}, {:?} holds {} (revision {})",
            receipt.id,
            receipt.status,
            request.from,
            receipt.from_balance,
            request.to,
            receipt.to_balance,
            receipt.revision
        );
    }
    Ok(())
}

async fn transfer_status(client: &Client, id: &str, json: bool) -> Outcome {
    let what = format!("transfer-status {id:?}");
    let found = client.get_transfer(id).await.map_err(call_failed(&what))?;
    let Some(record) = found else {
        let error = Error::NotFound {
            what: format!(
                "an outcome for transfer {id:?} (it has not applied yet; if it may still be in \
                 flight, resend it with the same --id to settle it)"
            ),
        };
        return Err(Failure::Call {
            what,
            error: Box::new(error),
        });
    };
    if json {
        print_json(&record.raw);
        return Ok(());
    }
    let text = match &record.outcome {
        TransferOutcome::Committed {
            from_balance,
            to_balance,
        } => {
            format!("committed; balances after it: from {from_balance}, to {to_balance}")
        }
        TransferOutcome::Rejected { reason, message } => {
            format!(
                "rejected ({reason}){}",
                message
                    .as_ref()
                    .map_or_else(String::new, |m| format!(": {m}"))
            )
        }
        TransferOutcome::Unknown { reported } => format!("status {reported:?}"),
    };
    let parties = match (&record.from, &record.to, record.amount) {
        (Some(from), Some(to), Some(amount)) => format!(" ({amount} from {from:?} to {to:?})"),
        _ => String::new(),
    };
    println!("transfer {:?}{parties}: {text}", record.id);
    Ok(())
}

fn print_membership(
    answer: metrokv_client::Result<metrokv_client::api::cluster::Membership>,
    what: &str,
    json: bool,
) -> Outcome {
    let m = answer.map_err(call_failed(what))?;
    if json {
        print_json(&m);
        return Ok(());
    }
    let ids = |v: &[u64]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|i| format!("n{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!("voters: {}", ids(&m.voters));
    println!("learners: {}", ids(&m.learners));
    println!(
        "leader: {}",
        m.leader
            .map_or_else(|| "none".to_string(), |l| format!("n{l}"))
    );
    Ok(())
}

async fn cluster_settings(
    client: &Client,
    zone_safety: Option<&str>,
    degrade_after_ms: Option<u64>,
    preferred_leader_zone: Option<String>,
    json: bool,
) -> Outcome {
    use metrokv_client::api::cluster::Settings;
    use metrokv_client::api::cluster::ZoneMode;
    let zone_safety = zone_safety.map(|m| match m {
        "off" => ZoneMode::Off,
        "strict" => ZoneMode::Strict,
        _ => ZoneMode::Adaptive,
    });
    let change = Settings {
        zone_safety,
        degrade_after_ms,
        preferred_leader_zone,
    };
    let settings = if change == Settings::default() {
        client.settings().await
    } else {
        client.set_settings(&change).await
    }
    .map_err(call_failed("cluster settings"))?;
    if json {
        print_json(&settings);
        return Ok(());
    }
    let mode = serde_json::to_value(settings.zone_safety).unwrap_or_default();
    println!("zone_safety: {}", mode.as_str().unwrap_or("?"));
    if let Some(ms) = settings.degrade_after_ms {
        println!("degrade_after_ms: {ms}");
    }
    let zone = settings.preferred_leader_zone.unwrap_or_default();
    println!(
        "preferred_leader_zone: {}",
        if zone.is_empty() { "(none)" } else { &zone }
    );
    Ok(())
}

async fn cluster_status(client: &Client, json: bool) -> Outcome {
    let status = client
        .cluster_status()
        .await
        .map_err(call_failed("cluster status"))?;
    if json {
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        for (member, out) in status
            .members
            .iter()
            .zip(value["members"].as_array_mut().into_iter().flatten())
        {
            out["lag"] = json!(member.lag(status.commit_index));
        }
        print_json(&value);
        return Ok(());
    }
    let leader = status
        .leader
        .as_deref()
        .unwrap_or("none (election in progress or no quorum)");
    println!(
        "cluster {}: leader {leader}, term {}, commit index {} ({})",
        status.cluster_id,
        status.term,
        status.commit_index,
        served(&status.served_by)
    );
    if let Some(z) = &status.zone_safety {
        let mut line = format!(
            "zone safety: {}, {}",
            serde_json::to_value(z.mode)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            serde_json::to_value(z.state)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        );
        if let (Some(index), Some(lag)) = (z.zone_safe_index, z.lag_entries) {
            line += &format!(" (zone-safe index {index}, {lag} entries behind the commit index)");
        }
        if let Some(at) = z.degraded_at_index {
            line += &format!("; degraded: acknowledgements above index {at} rest on one zone");
        }
        println!("{line}");
    }
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.zone.clone(),
                m.role.clone(),
                status.term.to_string(),
                m.applied_index.to_string(),
                m.lag(status.commit_index).to_string(),
                if m.reachable { "yes" } else { "NO" }.to_string(),
                m.client_addr.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "ZONE",
            "ROLE",
            "TERM",
            "APPLIED",
            "LAG",
            "REACHABLE",
            "ADDRESS",
        ],
        &rows,
    );
    Ok(())
}

fn served(served_by: &ServedBy) -> String {
    match &served_by.leader {
        Some(leader) => format!("served by {} via leader {leader}", served_by.endpoint),
        None => format!("served by {}", served_by.endpoint),
    }
}

/// Prints left-aligned columns, each as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a failure (stderr, and stdout as JSON with `--json`) and returns the exit code.
fn report(failure: &Failure, json: bool) -> u8 {
    match failure {
        Failure::Usage(message) => {
            eprintln!("metrokv: {message}");
            if json {
                print_json(&json!({"error": "usage", "message": message, "exit_code": EXIT_USAGE}));
            }
            EXIT_USAGE
        }
        Failure::Unavailable(message) => {
            eprintln!("metrokv: {message}");
            if json {
                print_json(&json!({"error": "unavailable", "message": message, "exit_code": 3}));
            }
            3
        }
        Failure::Call { what, error } => {
            let code = u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE);
            eprintln!("metrokv: {what} failed: {error}");
            if json {
                print_json(&error_json(error, code));
            }
            code
        }
    }
}

/// A machine-readable error: the API.md code (or the client's own), the message and its fields.
fn error_json(error: &Error, exit_code: u8) -> Value {
    let (code, mut fields) = match error {
        Error::PreconditionFailed {
            key,
            current_version,
        } => (
            "precondition_failed",
            json!({"key": key, "current_version": current_version}),
        ),
        Error::NotFound { what } => ("not_found", json!({"what": what})),
        Error::AccountNotFound {
            account,
            transfer_id,
        } => (
            "account_not_found",
            json!({"account": account, "transfer_id": transfer_id}),
        ),
        Error::AccountExists { id } => ("account_exists", json!({"id": id})),
        Error::InsufficientFunds {
            account,
            balance,
            amount,
            transfer_id,
        } => (
            "insufficient_funds",
            json!({"account": account, "balance": balance, "amount": amount, "transfer_id": transfer_id}),
        ),
        Error::IdempotencyConflict { key, .. } => ("idempotency_conflict", json!({"key": key})),
        Error::InvalidRequest { .. } => ("invalid_request", json!({})),
        Error::TooLarge { .. } => ("too_large", json!({})),
        Error::Unauthenticated { node, .. } => ("unauthenticated", json!({"node": node})),
        Error::Forbidden { node, .. } => ("forbidden", json!({"node": node})),
        Error::Unavailable { tried, .. } => {
            let tried: Vec<Value> = tried
                .iter()
                .map(|t| json!({"node": t.node, "error": t.error}))
                .collect();
            ("unavailable", json!({"tried": tried}))
        }
        Error::Indeterminate {
            idempotency_key,
            transfer_id,
            last_node,
            attempts,
            ..
        } => (
            "indeterminate",
            json!({"idempotency_key": idempotency_key, "transfer_id": transfer_id,
                   "last_node": last_node, "attempts": attempts}),
        ),
        Error::Server {
            node, status, code, ..
        } => (
            "server_error",
            json!({"node": node, "status": status, "server_code": code}),
        ),
        Error::Protocol { node, .. } => ("protocol", json!({"node": node})),
        Error::Config { .. } => ("config", json!({})),
    };
    fields["error"] = json!(code);
    fields["message"] = json!(error.to_string());
    fields["exit_code"] = json!(exit_code);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "metrokv",
            "--zone",
            "dc-a",
            "put",
            "k",
            "--if-version",
            "3",
            "v",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Put {
                if_version: Some(3),
                ..
            }
        ));
        assert_eq!(cli.zone.as_deref(), Some("dc-a"));
        let cli =
            Cli::try_parse_from(["metrokv", "transfer", "--id", "t1", "a", "b", "5", "--json"])
                .expect("parses");
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Transfer { amount: 5, .. }));
        assert!(Cli::try_parse_from([
            "metrokv",
            "put",
            "k",
            "v",
            "--if-version",
            "1",
            "--create-only"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["metrokv", "put", "k", "v", "--file", "f"]).is_err());
        let cli = Cli::try_parse_from(["metrokv", "--endpoints", "a:1,b:2", "cluster", "status"])
            .expect("parses");
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
    }

    #[test]
    fn inputs_come_from_arguments_and_are_bounded() {
        assert_eq!(
            read_input(Some("v".into()), None, 10, "value").expect("ok"),
            b"v"
        );
        assert!(matches!(
            read_input(None, None, 10, "value"),
            Err(Failure::Usage(_))
        ));
        let missing = Some(PathBuf::from("/nonexistent/metrokv-input"));
        assert!(matches!(
            read_input(None, missing, 10, "value"),
            Err(Failure::Usage(_))
        ));
        let dir = std::env::temp_dir().join(format!("metrokv-cli-test-{}", std::process::id()));
        std::fs::write(&dir, b"0123456789abc").expect("write temp file");
        let too_big = read_input(None, Some(dir.clone()), 10, "value");
        let fits = read_input(None, Some(dir.clone()), 13, "value");
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(too_big, Err(Failure::Usage(_))));
        assert_eq!(fits.expect("ok"), b"0123456789abc");
    }

    #[test]
    fn values_display_as_text_or_marked_base64() {
        assert_eq!(display_value(b"hello"), "hello");
        assert_eq!(display_value(&[0xff]), "base64:/w==");
        assert_eq!(display_value(b"a\nb"), "base64:YQpi");
    }

    #[test]
    fn errors_report_their_exit_code_and_fields() {
        let error = Error::Indeterminate {
            idempotency_key: Some("idem".into()),
            transfer_id: None,
            last_node: "http://n:1".into(),
            attempts: 2,
            last_error: "no answer".into(),
        };
        let value = error_json(&error, 3);
        assert_eq!(value["error"], "indeterminate");
        assert_eq!(value["idempotency_key"], "idem");
        assert_eq!(value["exit_code"], 3);
        assert_eq!(report(&Failure::Usage("x".into()), false), EXIT_USAGE);
        let refused = Failure::Call {
            what: "get".into(),
            error: Box::new(Error::NotFound { what: "key".into() }),
        };
        assert_eq!(report(&refused, false), 1);
    }
}
