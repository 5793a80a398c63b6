//! `metrokv-jepsen scenario double-spend`: the story that motivates metrokv, replayed on a
//! real cluster.
//!
//! An account holds 10,000. The link between the zones is cut. A client in dc-a spends 5,000; a
//! client in dc-b, which can only reach its own node n3, tries to spend 10,000; dc-a spends
//! 5,000 again. Then the link heals and dc-b keeps trying. The safe story uses transfers (the
//! balance check and the move happen in one replicated step, keyed by the transfer id): dc-b's
//! node is in the minority and cannot commit anything, and once healed its retry is refused for
//! insufficient funds. At most 10,000 leaves the account.
//!
//! The same story in the unsafe client mode (the negative control of `run --mode unsafe`):
//! balances are plain keys read with `?consistency=stale`, new balances are computed by the
//! client and written back with blind PUTs. dc-b reads 10,000 from its cut-off node, decides it
//! may spend it, and keeps its two writes pending; they cannot commit while the zones are cut
//! (Raft still protects the log), but after the heal they do. A blind PUT carries no version
//! check, so nothing tells the server that dc-b's "acct = 0, sink-b = 10,000" was computed from
//! a balance that no longer existed. 20,000 leaves an account that held 10,000. The bug is the
//! client's stale read-modify-write, not a split brain; the timeline says so.
//!
//! Exit codes: 0 when the safe story kept the invariant and the unsafe one overspent (the
//! demonstration worked), 1 otherwise, 2 when the harness failed.
//!
//! Leaves out: randomness. Every step waits for a condition, so the story replays the same way.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use metrokv_client::{AccountListOptions, Client, Consistency, Error, TransferRequest};
use tokio::time::Instant;

use crate::balance_keys;
use crate::cluster::{eventually, Cluster};
use crate::nemesis::{self, CutMode, Topology, ZONE_A, ZONE_B};
use crate::net::{Network, Shape};
use crate::runner::{admin_client, prepare_out_dir, zone_client, EXIT_INVALID, EXIT_VALID};
use crate::workload::error_text;

/// What the account holds at the start.
pub const OPENING_BALANCE: u64 = 10_000;
/// dc-a's spend (made twice).
pub const DC_A_SPEND: u64 = 5_000;
/// dc-b's spend.
pub const DC_B_SPEND: u64 = 10_000;
/// How often dc-b tries while cut off (it keeps trying after the heal too).
pub const DC_B_CUT_ATTEMPTS: u32 = 2;
/// Deadline (and attempt timeout) of dc-b's calls while the zones are cut: longer than the
/// node's default write timeout (5 s), so that n3's own definite answer (503: no quorum,
/// nothing proposed) arrives rather than a client-side timeout.
pub const CUT_CALL_DEADLINE_MS: u64 = 6_000;
/// Deadline of one client call otherwise.
pub const CALL_DEADLINE_MS: u64 = 10_000;
/// Attempt timeout of the dc-a client, which may try several nodes.
pub const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
/// How long to wait for a condition (a replica caught up, a leader elected, readiness).
pub const CONDITION_TIMEOUT_MS: u64 = 30_000;
/// After the heal, dc-b keeps trying while its node still answers "unavailable" (it may not
/// have heard the new term yet): at most this many tries, this far apart.
pub const HEALED_TRIES_MAX: u32 = 40;
pub const HEALED_RETRY_PAUSE_MS: u64 = 250;
/// The file the timeline is also written to.
pub const TIMELINE_FILE: &str = "timeline.txt";

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub out: PathBuf,
    pub node_bin: PathBuf,
    pub seed: u64,
    pub keep_data: bool,
    pub inter_zone_latency_ms: u64,
}

/// One line of the timeline.
#[derive(Debug, Clone)]
struct Entry {
    at: Duration,
    side: &'static str,
    action: String,
    outcome: String,
}

/// The timeline of both stories, printed as it happens.
struct Timeline {
    started: Instant,
    entries: Vec<Entry>,
}

impl Timeline {
    fn new() -> Self {
        Timeline {
            started: Instant::now(),
            entries: Vec::new(),
        }
    }

    fn heading(&mut self, title: &str) {
        println!("\n== {title} ==");
        println!("{:>8}  {:<5}  {:<58}  outcome", "time", "side", "action");
        self.entries.push(Entry {
            at: self.started.elapsed(),
            side: "",
            action: format!("== {title} =="),
            outcome: String::new(),
        });
    }

    fn note(&mut self, side: &'static str, action: impl Into<String>, outcome: impl Into<String>) {
        let entry = Entry {
            at: self.started.elapsed(),
            side,
            action: action.into(),
            outcome: outcome.into(),
        };
        println!("{}", Self::format(&entry));
        self.entries.push(entry);
    }

    fn format(entry: &Entry) -> String {
        format!(
            "{:>7.2}s  {:<5}  {:<58}  {}",
            entry.at.as_secs_f64(),
            entry.side,
            entry.action,
            entry.outcome
        )
    }

    fn text(&self) -> String {
        let mut text = String::new();
        for entry in &self.entries {
            let _ = writeln!(text, "{}", Self::format(entry));
        }
        text
    }
}

/// The running cluster, its network and the clients of the story.
struct Stage {
    cluster: Cluster,
    network: Network,
    topology: Topology,
    admin: Client,
}

impl Stage {
    /// A client in `zone` that talks to `node` only, through the zone's proxy.
    fn pinned(&self, zone: &str, node: &str, deadline_ms: u64) -> anyhow::Result<Client> {
        let url = self
            .network
            .client_url(zone, node)
            .with_context(|| format!("no proxy from {zone} to {node}"))?;
        // One node, one attempt: the attempt may use the whole deadline.
        let client = zone_client(&self.network, zone, deadline_ms, deadline_ms, 0)?;
        client
            .pinned_to(&url)
            .with_context(|| format!("pinning a client to {node}"))
    }

    fn cut_zones(&self) -> anyhow::Result<()> {
        let grudge = nemesis::zones(&self.topology);
        // Drop rather than black-hole: a cut-off caller learns at once that it is cut off,
        // which keeps the story short.
        self.network.shape(&Shape::Partition {
            grudge: &grudge,
            cut: CutMode::Drop,
        })
    }

    /// Cuts the zones apart and waits for the majority side's leader, noting both.
    async fn cut_zones_and_find_leader(&self, timeline: &mut Timeline) -> anyhow::Result<String> {
        self.cut_zones()?;
        timeline.note(
            "net",
            "cut dc-a ✗ dc-b (node links and client links)",
            "n1, n2 | n3",
        );
        let leader = self.wait_dc_a_leader().await?;
        timeline.note(
            "dc-a",
            "wait for the majority side to have a leader",
            format!("{leader} leads dc-a"),
        );
        Ok(leader)
    }

    async fn heal(&mut self) -> anyhow::Result<String> {
        self.network.sever_all();
        self.network.shape(&Shape::Healthy)?;
        self.cluster
            .wait_agreed_leader(Duration::from_millis(CONDITION_TIMEOUT_MS))
            .await
    }

    /// Waits until a dc-a node is ready and names a dc-a leader: the majority side has moved on.
    async fn wait_dc_a_leader(&self) -> anyhow::Result<String> {
        let dc_a: Vec<String> = self
            .topology
            .zones()
            .get(ZONE_A)
            .cloned()
            .unwrap_or_default();
        eventually(
            "a leader in dc-a",
            Duration::from_millis(CONDITION_TIMEOUT_MS),
            || async {
                for node in &dc_a {
                    if let Some(leader) = self.cluster.leader_seen_by(node).await {
                        if dc_a.contains(&leader) && self.cluster.is_ready(&leader).await {
                            return Ok(leader);
                        }
                    }
                }
                Err("no dc-a node names a ready dc-a leader".to_owned())
            },
        )
        .await
    }

    /// Waits until n3 (dc-b's node) has applied what the cluster committed so far, so that its
    /// later stale reads show the opening balance.
    async fn wait_dc_b_sees(&self, check: impl AsyncCheck) -> anyhow::Result<()> {
        let url = self
            .cluster
            .addrs()
            .iter()
            .find(|n| n.zone == ZONE_B)
            .map(|n| n.url())
            .context("no node in dc-b")?;
        let direct = self.admin.pinned_to(&url)?;
        eventually(
            "dc-b's node caught up",
            Duration::from_millis(CONDITION_TIMEOUT_MS),
            || check.check(&direct),
        )
        .await
    }
}

/// A condition on what a client reads.
trait AsyncCheck {
    fn check(&self, client: &Client) -> impl std::future::Future<Output = Result<(), String>>;
}

/// The account holds the opening balance (safe story).
struct AccountOpened;

impl AsyncCheck for AccountOpened {
    async fn check(&self, client: &Client) -> Result<(), String> {
        match client.get_account_with("acct", Consistency::Stale).await {
            Ok(Some(account)) if account.balance == OPENING_BALANCE => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}

/// The balance keys hold the opening balances (unsafe story).
struct KeysOpened;

impl AsyncCheck for KeysOpened {
    async fn check(&self, client: &Client) -> Result<(), String> {
        match read_keys(client, Consistency::Stale).await {
            Ok(b) if b.acct == OPENING_BALANCE as i64 && b.sink_b == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}

fn money(amount: impl Into<i128>) -> String {
    let amount: i128 = amount.into();
    let digits = amount.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if amount < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// The longest free-form error text shown in a timeline line.
const OUTCOME_TEXT_MAX: usize = 80;

fn outcome_of<T>(result: &Result<T, Error>, ok: impl FnOnce(&T) -> String) -> String {
    match result {
        Ok(value) => ok(value),
        Err(Error::Unavailable { .. }) => {
            "refused: unavailable (no quorum on this side; nothing proposed)".to_owned()
        }
        Err(Error::Indeterminate { .. }) => {
            "unknown: no answer in time (it may still apply; resend to settle)".to_owned()
        }
        Err(Error::InsufficientFunds { balance, .. }) => format!(
            "refused: insufficient funds (acct holds {})",
            balance.map_or_else(|| "too little".to_owned(), money)
        ),
        Err(error) => {
            let mut text = error_text(error);
            if text.len() > OUTCOME_TEXT_MAX {
                let mut end = OUTCOME_TEXT_MAX;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
            format!("error: {text}")
        }
    }
}

/// Repeats `call` while it is unavailable or indeterminate (a client that keeps trying, with
/// the same transfer id or idempotency key, so a repeat cannot apply twice); returns the last
/// result and how many tries it took.
async fn keep_trying<T, F, Fut>(mut call: F) -> (Result<T, Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let result = call().await;
        let again = matches!(
            result,
            Err(Error::Unavailable { .. } | Error::Indeterminate { .. })
        );
        if !again || tries >= HEALED_TRIES_MAX {
            return (result, tries);
        }
        // A retry pause, not synchronisation: the condition is the answer itself.
        tokio::time::sleep(Duration::from_millis(HEALED_RETRY_PAUSE_MS)).await;
    }
}

/// The balances of one story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Balances {
    acct: i64,
    sink_a: i64,
    sink_b: i64,
}

impl Balances {
    fn spent(&self) -> i64 {
        self.sink_a + self.sink_b
    }

    fn describe(&self) -> String {
        format!(
            "acct {}, sink-a {}, sink-b {}",
            money(self.acct),
            money(self.sink_a),
            money(self.sink_b)
        )
    }
}

/// Page size of the story's reads: it has three accounts (and three keys).
const STORY_PAGE_LIMIT: u32 = 16;

async fn read_accounts(client: &Client) -> anyhow::Result<Balances> {
    let page = client
        .list_accounts(AccountListOptions {
            prefix: String::new(),
            limit: Some(STORY_PAGE_LIMIT),
            after: None,
            consistency: Consistency::Linearizable,
        })
        .await?;
    let get = |id: &str| {
        page.accounts
            .iter()
            .find(|a| a.id == id)
            .map(|a| i64::try_from(a.balance).unwrap_or(i64::MAX))
            .with_context(|| format!("account {id} is missing"))
    };
    Ok(Balances {
        acct: get("acct")?,
        sink_a: get("sink-a")?,
        sink_b: get("sink-b")?,
    })
}

async fn read_keys(client: &Client, consistency: Consistency) -> Result<Balances, String> {
    let read = balance_keys::read(client, STORY_PAGE_LIMIT, consistency)
        .await
        .map_err(|e| match e {
            balance_keys::ReadError::Client(e) => error_text(&e),
            balance_keys::ReadError::Harness(why) => why,
        })?;
    let get = |name: &str| -> Result<i64, String> {
        read.balances
            .get(name)
            .copied()
            .ok_or_else(|| format!("{} is missing", balance_keys::key(name)))
    };
    Ok(Balances {
        acct: get("acct")?,
        sink_a: get("sink-a")?,
        sink_b: get("sink-b")?,
    })
}

/// The safe story; returns whether at most the opening balance left the account.
async fn safe_story(stage: &mut Stage, timeline: &mut Timeline) -> anyhow::Result<bool> {
    timeline.heading("safe: transfers (check and move in one replicated step)");
    for (id, balance) in [("acct", OPENING_BALANCE), ("sink-a", 0), ("sink-b", 0)] {
        stage
            .admin
            .create_account(id, balance)
            .await
            .with_context(|| format!("creating {id}"))?;
    }
    stage.wait_dc_b_sees(AccountOpened).await?;
    timeline.note(
        "setup",
        "acct holds 10,000; sink-a and sink-b hold 0",
        "n3 (dc-b) has it too",
    );
    stage.cut_zones_and_find_leader(timeline).await?;
    let dc_a = zone_client(
        &stage.network,
        ZONE_A,
        CALL_DEADLINE_MS,
        ATTEMPT_TIMEOUT_MS,
        1,
    )?;
    let dc_b = stage.pinned(ZONE_B, "n3", CUT_CALL_DEADLINE_MS)?;

    let a1 = TransferRequest::new("acct", "sink-a", DC_A_SPEND).with_id("ds-safe-a1");
    let result = dc_a.transfer(&a1).await;
    timeline.note(
        "dc-a",
        "transfer 5,000 acct → sink-a (id ds-safe-a1)",
        outcome_of(&result, |r| {
            format!("ok, acct now {}", money(r.from_balance))
        }),
    );
    let seen = dc_b.get_account_with("acct", Consistency::Stale).await;
    timeline.note(
        "dc-b",
        "read acct on n3 (stale: n3 cannot hear from dc-a)",
        outcome_of(&seen, |a| match a {
            Some(a) => format!("sees {}", money(a.balance)),
            None => "no such account".to_owned(),
        }),
    );
    let b1 = TransferRequest::new("acct", "sink-b", DC_B_SPEND).with_id("ds-safe-b1");
    for attempt in 1..=DC_B_CUT_ATTEMPTS {
        let result = dc_b.transfer(&b1).await;
        timeline.note(
            "dc-b",
            format!("transfer 10,000 acct → sink-b via n3 (ds-safe-b1, try {attempt})"),
            outcome_of(&result, |r| {
                format!("ok?! acct now {} (must not happen)", money(r.from_balance))
            }),
        );
    }
    let a2 = TransferRequest::new("acct", "sink-a", DC_A_SPEND).with_id("ds-safe-a2");
    let result = dc_a.transfer(&a2).await;
    timeline.note(
        "dc-a",
        "transfer 5,000 acct → sink-a again (id ds-safe-a2)",
        outcome_of(&result, |r| {
            format!("ok, acct now {}", money(r.from_balance))
        }),
    );
    let leader = stage.heal().await?;
    timeline.note(
        "net",
        "heal the link",
        format!("all nodes ready, all follow {leader}"),
    );
    let dc_b = stage.pinned(ZONE_B, "n3", CALL_DEADLINE_MS)?;
    let (result, tries) = keep_trying(|| dc_b.transfer(&b1)).await;
    timeline.note(
        "dc-b",
        format!("keeps trying: resend ds-safe-b1 via n3 (same id; attempts: {tries})"),
        outcome_of(&result, |r| {
            format!("ok?! acct now {} (must not happen)", money(r.from_balance))
        }),
    );
    for id in ["ds-safe-a1", "ds-safe-b1", "ds-safe-a2"] {
        let record = stage.admin.get_transfer(id).await;
        timeline.note(
            "check",
            format!("GET /v1/transfers/{id}"),
            outcome_of(&record, |r| match r {
                Some(r) => format!("{:?}", r.outcome)
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_lowercase(),
                None => "never applied".to_owned(),
            }),
        );
    }
    let balances = read_accounts(&stage.admin).await?;
    let kept = balances.acct >= 0
        && balances.spent() <= OPENING_BALANCE as i64
        && balances.acct + balances.spent() == OPENING_BALANCE as i64;
    timeline.note(
        "check",
        format!(
            "final (linearizable): {}; {} left acct",
            balances.describe(),
            money(balances.spent())
        ),
        if kept {
            "OK: at most 10,000 left the account"
        } else {
            "BROKEN: more money left than there was"
        },
    );
    Ok(kept)
}

/// The dc-b client's pending blind writes (account, new balance, idempotency key): computed once
/// from its stale read, retried until they go through.
struct PendingWrites {
    writes: Vec<(String, i64, String)>,
}

/// One read-modify-write of the unsafe mode: stale read, check, compute, blind PUTs. Returns
/// the writes it could not make (all of them once one failed, in order).
async fn blind_spend(
    client: &Client,
    sink: &str,
    amount: i64,
    key_prefix: &str,
    timeline: &mut Timeline,
    side: &'static str,
) -> anyhow::Result<PendingWrites> {
    let seen = read_keys(client, Consistency::Stale).await;
    let Ok(seen) = seen else {
        bail!("the stale read failed: {seen:?}");
    };
    timeline.note(
        side,
        "stale read of the balance keys",
        format!("sees {}", seen.describe()),
    );
    if seen.acct < amount {
        timeline.note(side, "client-side check", "not enough money: stop");
        return Ok(PendingWrites { writes: Vec::new() });
    }
    let sink_before = if sink == "sink-a" {
        seen.sink_a
    } else {
        seen.sink_b
    };
    let mut writes = vec![
        (
            "acct".to_string(),
            seen.acct - amount,
            format!("{key_prefix}-acct"),
        ),
        (
            sink.to_string(),
            sink_before + amount,
            format!("{key_prefix}-{sink}"),
        ),
    ];
    timeline.note(
        side,
        format!(
            "client-side: {} ≥ {}, so write acct={}, {sink}={}",
            money(seen.acct),
            money(amount),
            money(seen.acct - amount),
            money(sink_before + amount)
        ),
        "",
    );
    while let Some((account, value, idempotency_key)) = writes.first().cloned() {
        let result = balance_keys::write(client, &account, value, Some(idempotency_key)).await;
        let failed = result.is_err();
        timeline.note(
            side,
            format!(
                "blind PUT {} = {}",
                balance_keys::key(&account),
                money(value)
            ),
            outcome_of(&result, |_| "ok".to_owned()),
        );
        if failed {
            break;
        }
        writes.remove(0);
    }
    Ok(PendingWrites { writes })
}

/// The unsafe story; returns whether more than the opening balance left the account.
async fn unsafe_story(stage: &mut Stage, timeline: &mut Timeline) -> anyhow::Result<bool> {
    timeline.heading("unsafe: stale reads, client-side arithmetic, blind PUTs");
    for (name, value) in [("acct", OPENING_BALANCE), ("sink-a", 0), ("sink-b", 0)] {
        balance_keys::write(&stage.admin, name, i64::try_from(value)?, None)
            .await
            .with_context(|| format!("writing {}", balance_keys::key(name)))?;
    }
    stage.wait_dc_b_sees(KeysOpened).await?;
    timeline.note(
        "setup",
        "bank/acct = 10,000; bank/sink-a = bank/sink-b = 0",
        "n3 (dc-b) has it too",
    );
    let leader = stage.cut_zones_and_find_leader(timeline).await?;
    // dc-a reads from the node that acknowledged its writes, so its own view is not stale.
    let dc_a = stage.pinned(ZONE_A, &leader, CALL_DEADLINE_MS)?;
    let dc_b = stage.pinned(ZONE_B, "n3", CUT_CALL_DEADLINE_MS)?;

    let left = blind_spend(
        &dc_a,
        "sink-a",
        DC_A_SPEND as i64,
        "ds-unsafe-a1",
        timeline,
        "dc-a",
    )
    .await?;
    if !left.writes.is_empty() {
        bail!("dc-a's first unsafe spend did not go through");
    }
    let pending = blind_spend(
        &dc_b,
        "sink-b",
        DC_B_SPEND as i64,
        "ds-unsafe-b1",
        timeline,
        "dc-b",
    )
    .await?;
    let left = blind_spend(
        &dc_a,
        "sink-a",
        DC_A_SPEND as i64,
        "ds-unsafe-a2",
        timeline,
        "dc-a",
    )
    .await?;
    if !left.writes.is_empty() {
        bail!("dc-a's second unsafe spend did not go through");
    }
    let leader = stage.heal().await?;
    timeline.note(
        "net",
        "heal the link",
        format!("all nodes ready, all follow {leader}"),
    );
    let dc_b = stage.pinned(ZONE_B, "n3", CALL_DEADLINE_MS)?;
    for (account, value, idempotency_key) in &pending.writes {
        let (result, tries) = keep_trying(|| {
            balance_keys::write(&dc_b, account, *value, Some(idempotency_key.clone()))
        })
        .await;
        timeline.note(
            "dc-b",
            format!(
                "keeps trying its pending write: blind PUT {} = {} (attempts: {tries})",
                balance_keys::key(account),
                money(*value)
            ),
            outcome_of(&result, |_| "ok (nothing checks the version)".to_owned()),
        );
    }
    let balances = read_keys(&stage.admin, Consistency::Linearizable)
        .await
        .map_err(|e| anyhow::anyhow!("the final read failed: {e}"))?;
    let overspent = balances.spent() > OPENING_BALANCE as i64;
    timeline.note(
        "check",
        format!(
            "final (linearizable): {}; {} left acct",
            balances.describe(),
            money(balances.spent())
        ),
        if overspent {
            "OVERSPENT, as expected of this mode: dc-b acted on a stale read"
        } else {
            "no overspend this time"
        },
    );
    Ok(overspent)
}

/// Runs both stories; returns the exit code.
pub async fn double_spend(config: ScenarioConfig) -> anyhow::Result<u8> {
    println!("seed: {} (the story itself is not random)", config.seed);
    println!("out: {}", config.out.display());
    prepare_out_dir(&config.out)?;
    let topology = Topology::default_for(3)?;
    let mut cluster = crate::cluster::prepare(
        config.node_bin.clone(),
        &topology,
        &config.out,
        Vec::new(),
        None,
        false,
    )?;
    let network = Network::start_for(
        &mut cluster,
        &topology,
        config.inter_zone_latency_ms,
        config.seed,
    )
    .await?;
    cluster.start_all()?;
    let started = async {
        cluster
            .wait_ready(Duration::from_millis(CONDITION_TIMEOUT_MS))
            .await?;
        admin_client(&cluster, config.seed)
    }
    .await;
    let admin = match started {
        Ok(admin) => admin,
        Err(error) => {
            network.stop().await;
            return Err(error);
        }
    };
    let mut stage = Stage {
        cluster,
        network,
        topology,
        admin,
    };
    let mut timeline = Timeline::new();
    let stories = async {
        // The story is about plain majority Raft against an unsafe client; zone-safe
        // acknowledgement would stall dc-a's writes as well (see the zone tests for that).
        let off = metrokv_client::api::cluster::Settings {
            zone_safety: Some(metrokv_client::api::cluster::ZoneMode::Off),
            degrade_after_ms: None,
            preferred_leader_zone: None,
        };
        stage
            .admin
            .set_settings(&off)
            .await
            .context("setting zone_safety off")?;
        timeline.note("setup", "zone_safety off (plain Raft majority)", "");
        let kept = safe_story(&mut stage, &mut timeline).await?;
        let overspent = unsafe_story(&mut stage, &mut timeline).await?;
        anyhow::Ok((kept, overspent))
    }
    .await;
    let text = timeline.text();
    let Stage {
        mut cluster,
        network,
        ..
    } = stage;
    network.stop().await;
    cluster.stop_all();
    if !config.keep_data {
        cluster.remove_data()?;
    }
    let path = config.out.join(TIMELINE_FILE);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let (kept, overspent) = stories?;
    println!();
    println!(
        "safe transfers: {}",
        if kept {
            "at most 10,000 left the account: no double spend"
        } else {
            "DOUBLE SPEND: more than 10,000 left the account"
        }
    );
    println!(
        "unsafe blind writes: {}",
        if overspent {
            "spent more than there was (the negative control works)"
        } else {
            "did not overspend (the negative control did not show the bug)"
        }
    );
    println!("timeline: {}", path.display());
    Ok(if kept && overspent {
        EXIT_VALID
    } else {
        EXIT_INVALID
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_grouped() {
        assert_eq!(money(10_000), "10,000");
        assert_eq!(money(0), "0");
        assert_eq!(money(-1_234_567), "-1,234,567");
        assert_eq!(money(999), "999");
    }

    #[test]
    fn spent_adds_the_sinks() {
        let b = Balances {
            acct: 0,
            sink_a: 10_000,
            sink_b: 10_000,
        };
        assert_eq!(b.spent(), 20_000);
        assert!(b.describe().contains("sink-b 10,000"));
    }
}
