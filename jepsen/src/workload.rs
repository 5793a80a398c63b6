//! Workloads: which ops a client worker issues, how it performs them with the client library,
//! and how each outcome becomes a history completion.
//!
//! Owns: [`WorkloadSpec`] (bank in the safe or unsafe mode, or register), op generation from a
//! seeded RNG, [`WorkloadSpec::execute`], and the setup and final-state calls.
//!
//! Outcome rules (Jepsen's, applied to the client's typed errors):
//! - success → `ok`;
//! - a write that certainly changed nothing (`Unavailable`, a refusal such as 409 or 412) →
//!   `fail`;
//! - a write whose fate is unknown (`Indeterminate`, an unreadable 2xx, any other 5xx, or the
//!   harness's own guard timeout) → `info`;
//! - a read that failed for any reason → `fail`: reads change nothing, so there is nothing to
//!   be unsure about (Jepsen's advice, which keeps the linearizability search small).
//!
//! The bank workload in [`BankMode::Transfers`] moves money with `POST /v1/transfers` (the
//! transfer id is the idempotency key) and reads every balance with one consistent
//! `GET /v1/accounts` snapshot. [`BankMode::BlindWrites`] is the negative control: balances
//! are plain keys `bank/<account>` holding decimal numbers, read with `?consistency=stale`, and
//! a transfer is a client-side read-modify-write with two blind PUTs. It is meant to fail.
//!
//! Leaves out: pacing, processes and recording (`runner.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use metrokv_client::{
    AccountListOptions, Client, Compare, CompareOp, Consistency, Error, Op,
    TransferOutcome as ClientOutcome, TransferRequest, TxnRequest,
};
use rand::Rng;

use crate::balance_keys;
use crate::checker::bank::{BankMode, FinalRead, TransferOutcome};
use crate::history::{Balances, Call, OpType, RegisterCas, RegisterRead, RegisterWrite, Transfer};

/// Prefix of the bank's account ids (safe mode).
pub const ACCOUNT_PREFIX: &str = "acct-";
/// Prefix of the register keys: `reg/<generation>/<k>`.
pub const REGISTER_PREFIX: &str = "reg/";
/// Default length of one register key generation: every this many ms of the run, the register
/// workers move on to fresh keys. Each key's sub-history then stays short (Jepsen's
/// `independent`), so the linearizability search per key stays small however long the run is,
/// and the indeterminate writes of one fault burden only the keys in use during it.
pub const REGISTER_GENERATION_MS_DEFAULT: u64 = 10_000;
/// The key written by the settle phase's write barrier.
pub const BARRIER_KEY: &str = "jepsen/barrier";
/// Register values are drawn from `0..=REGISTER_VALUE_MAX` (Jepsen uses 0..4: few values make
/// cas succeed often and keep reads ambiguous enough to be interesting).
pub const REGISTER_VALUE_MAX: u64 = 4;
/// The most accounts or keys a workload may use: a read of all balances must fit one page.
pub const WORKLOAD_ITEMS_MAX: usize = 500;
/// The longest error text kept in a history op.
pub const ERROR_TEXT_BYTES_MAX: usize = 240;
/// Share of bank ops that are transfers (the rest read every balance).
const BANK_TRANSFER_SHARE: f64 = 0.5;
/// Shares of register reads and writes (the rest are cas).
const REGISTER_READ_SHARE: f64 = 0.5;
const REGISTER_WRITE_SHARE: f64 = 0.25;

/// What the clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadSpec {
    Bank {
        mode: BankMode,
        /// Account ids, in order.
        accounts: Vec<String>,
        initial_balance: u64,
        /// Transfers move 1..=this.
        transfer_amount_max: u64,
    },
    Register {
        /// Keys in use at once (each generation has this many).
        keys: usize,
        /// How long one generation of keys lasts.
        generation_ms: u64,
    },
}

/// An op's completion, before the runner records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub kind: OpType,
    pub call: Call,
    /// The endpoint URL that answered or was tried last.
    pub endpoint: Option<String>,
    pub error: Option<String>,
}

impl Completion {
    fn ok(call: Call, endpoint: Option<String>) -> Self {
        Completion {
            kind: OpType::Ok,
            call,
            endpoint,
            error: None,
        }
    }

    fn failed(kind: OpType, call: Call, error: &Error) -> Self {
        Completion {
            kind,
            call,
            endpoint: error_endpoint(error),
            error: Some(error_text(error)),
        }
    }

    fn refused(call: Call, endpoint: Option<String>, why: &str) -> Self {
        Completion {
            kind: OpType::Fail,
            call,
            endpoint,
            error: Some(why.to_owned()),
        }
    }
}

/// `fail` when the write certainly changed nothing, else `info`.
pub fn write_outcome(error: &Error) -> OpType {
    match error {
        Error::Indeterminate { .. } | Error::Protocol { .. } => OpType::Info,
        // A 500 from a write says nothing about whether it applied.
        Error::Server { status, .. } if *status >= 500 => OpType::Info,
        other if other.is_definite_failure() => OpType::Fail,
        _ => OpType::Info,
    }
}

/// The endpoint an error names, if any.
fn error_endpoint(error: &Error) -> Option<String> {
    match error {
        Error::Indeterminate { last_node, .. } => Some(last_node.clone()),
        Error::Unavailable { tried, .. } => tried.last().map(|t| t.node.clone()),
        Error::Server { node, .. } | Error::Protocol { node, .. } => Some(node.clone()),
        _ => None,
    }
}

/// A short code and the message, capped at [`ERROR_TEXT_BYTES_MAX`].
pub fn error_text(error: &Error) -> String {
    // The client's kind names, in the history's dashed style.
    let code = error.kind().replace('_', "-");
    truncate(format!("{code}: {error}"))
}

fn truncate(mut text: String) -> String {
    if text.len() > ERROR_TEXT_BYTES_MAX {
        let mut end = ERROR_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl WorkloadSpec {
    /// The bank workload over `count` accounts `acct-0`, `acct-1`, ...
    pub fn bank(
        mode: BankMode,
        count: usize,
        initial_balance: u64,
        transfer_amount_max: u64,
    ) -> anyhow::Result<Self> {
        if !(2..=WORKLOAD_ITEMS_MAX).contains(&count) {
            anyhow::bail!("the bank needs 2..={WORKLOAD_ITEMS_MAX} accounts, not {count}");
        }
        if transfer_amount_max == 0 {
            anyhow::bail!("the largest transfer must be at least 1");
        }
        Ok(WorkloadSpec::Bank {
            mode,
            accounts: (0..count).map(|i| format!("{ACCOUNT_PREFIX}{i}")).collect(),
            initial_balance,
            transfer_amount_max,
        })
    }

    /// The register workload over `count` keys at a time, `reg/<generation>/0` ...
    /// `reg/<generation>/<count - 1>`, a new generation every `generation_ms`.
    pub fn register(count: usize, generation_ms: u64) -> anyhow::Result<Self> {
        if !(1..=WORKLOAD_ITEMS_MAX).contains(&count) {
            anyhow::bail!("the register needs 1..={WORKLOAD_ITEMS_MAX} keys, not {count}");
        }
        if generation_ms == 0 {
            anyhow::bail!("a register key generation must last at least 1 ms");
        }
        Ok(WorkloadSpec::Register {
            keys: count,
            generation_ms,
        })
    }

    /// The name of register key `k` of `generation`.
    pub fn register_key(generation: u64, k: usize) -> String {
        format!("{REGISTER_PREFIX}{generation}/{k}")
    }

    /// The balances created before the first op (bank only).
    pub fn initial_balances(&self) -> BTreeMap<String, u64> {
        match self {
            WorkloadSpec::Bank {
                accounts,
                initial_balance,
                ..
            } => accounts
                .iter()
                .map(|a| (a.clone(), *initial_balance))
                .collect(),
            WorkloadSpec::Register { .. } => BTreeMap::new(),
        }
    }

    /// Creates the accounts (or balance keys). Register keys start absent.
    pub async fn setup(&self, client: &Client) -> anyhow::Result<()> {
        let WorkloadSpec::Bank {
            mode,
            accounts,
            initial_balance,
            ..
        } = self
        else {
            return Ok(());
        };
        for account in accounts {
            match mode {
                BankMode::Transfers => {
                    match client.create_account(account, *initial_balance).await {
                        // A retry after a lost answer finds the account already there.
                        Ok(_) | Err(Error::AccountExists { .. }) => {}
                        Err(e) => {
                            return Err(anyhow::Error::from(e)
                                .context(format!("creating account {account}")))
                        }
                    }
                }
                BankMode::BlindWrites => {
                    let balance = i64::try_from(*initial_balance).unwrap_or(i64::MAX);
                    balance_keys::write(client, account, balance, None)
                        .await
                        .map_err(|e| {
                            anyhow::Error::from(e)
                                .context(format!("writing the balance of {account}"))
                        })?;
                }
            }
        }
        Ok(())
    }

    /// The next op's invocation, `elapsed_ms` into the run (it picks the register keys' generation).
    /// Transfer ids are `t<worker>-<seq>`, unique within a run (each run has a fresh cluster).
    pub fn generate(&self, rng: &mut impl Rng, worker: usize, seq: u64, elapsed_ms: u64) -> Call {
        match self {
            WorkloadSpec::Bank {
                accounts,
                transfer_amount_max,
                ..
            } => {
                if !rng.random_bool(BANK_TRANSFER_SHARE) {
                    return Call::ReadAll(None);
                }
                let from = rng.random_range(0..accounts.len());
                // Distinct accounts: pick among the others.
                let mut to = rng.random_range(0..accounts.len() - 1);
                if to >= from {
                    to += 1;
                }
                Call::Transfer(Transfer {
                    id: format!("t{worker}-{seq}"),
                    from: accounts[from].clone(),
                    to: accounts[to].clone(),
                    amount: rng.random_range(1..=*transfer_amount_max),
                })
            }
            WorkloadSpec::Register {
                keys,
                generation_ms,
            } => {
                let key =
                    Self::register_key(elapsed_ms / generation_ms, rng.random_range(0..*keys));
                let draw: f64 = rng.random();
                if draw < REGISTER_READ_SHARE {
                    Call::Read(RegisterRead { key, value: None })
                } else if draw < REGISTER_READ_SHARE + REGISTER_WRITE_SHARE {
                    let value = rng.random_range(0..=REGISTER_VALUE_MAX);
                    Call::Write(RegisterWrite { key, value })
                } else {
                    let from = rng.random_range(0..=REGISTER_VALUE_MAX);
                    let to = rng.random_range(0..=REGISTER_VALUE_MAX);
                    Call::Cas(RegisterCas { key, from, to })
                }
            }
        }
    }

    /// Performs `call` once, bounded by `guard` (the client's deadline plus slack): past it,
    /// the harness gives up on the op itself (`info` for writes, `fail` for reads).
    pub async fn execute(&self, client: &Client, call: &Call, guard: Duration) -> Completion {
        let run = self.execute_unguarded(client, call);
        match tokio::time::timeout(guard, run).await {
            Ok(completion) => completion,
            Err(_) => {
                let kind = match call {
                    Call::Read(_) | Call::ReadAll(_) => OpType::Fail,
                    _ => OpType::Info,
                };
                Completion {
                    kind,
                    call: call.clone(),
                    endpoint: None,
                    error: Some(format!("harness guard: no answer within {guard:?}")),
                }
            }
        }
    }

    async fn execute_unguarded(&self, client: &Client, call: &Call) -> Completion {
        match (self, call) {
            (WorkloadSpec::Bank { mode, accounts, .. }, Call::ReadAll(_)) => match mode {
                BankMode::Transfers => read_accounts(client, accounts.len()).await,
                BankMode::BlindWrites => read_balance_keys(client, accounts.len()).await,
            },
            (WorkloadSpec::Bank { mode, accounts, .. }, Call::Transfer(transfer)) => match mode {
                BankMode::Transfers => transfer_safely(client, transfer).await,
                BankMode::BlindWrites => transfer_blindly(client, transfer, accounts.len()).await,
            },
            (WorkloadSpec::Register { .. }, Call::Read(read)) => register_read(client, read).await,
            (WorkloadSpec::Register { .. }, Call::Write(write)) => {
                register_write(client, write).await
            }
            (WorkloadSpec::Register { .. }, Call::Cas(cas)) => register_cas(client, cas).await,
            (_, other) => Completion::refused(
                other.clone(),
                None,
                "harness: this workload does not perform this op",
            ),
        }
    }

    /// The final consistent read of every balance (bank), through `client` (linearizable).
    pub async fn final_balances(&self, client: &Client) -> anyhow::Result<FinalRead> {
        let WorkloadSpec::Bank { mode, accounts, .. } = self else {
            anyhow::bail!("only the bank has final balances");
        };
        let completion = match mode {
            BankMode::Transfers => read_accounts(client, accounts.len()).await,
            BankMode::BlindWrites => {
                read_balance_keys_with(client, accounts.len(), Consistency::Linearizable).await
            }
        };
        match (completion.kind, completion.call) {
            (OpType::Ok, Call::ReadAll(Some(balances))) => Ok(FinalRead {
                balances,
                node: completion.endpoint,
            }),
            _ => anyhow::bail!(
                "the final read failed: {}",
                completion.error.unwrap_or_default()
            ),
        }
    }
}

/// Looks up what the server recorded for a transfer id (linearizable). `Ok(None)`: the server
/// reported a status this harness does not know.
pub async fn transfer_outcome(client: &Client, id: &str) -> Result<Option<TransferOutcome>, Error> {
    Ok(match client.get_transfer(id).await? {
        None => Some(TransferOutcome::NotFound),
        Some(record) => match record.outcome {
            ClientOutcome::Committed { .. } => Some(TransferOutcome::Committed),
            ClientOutcome::Rejected { .. } => Some(TransferOutcome::Rejected),
            ClientOutcome::Unknown { .. } => None,
        },
    })
}

async fn read_accounts(client: &Client, count: usize) -> Completion {
    let options = AccountListOptions {
        prefix: ACCOUNT_PREFIX.to_owned(),
        limit: Some(page_limit(count)),
        after: None,
        consistency: Consistency::Linearizable,
    };
    let invoke = Call::ReadAll(None);
    let page = match client.list_accounts(options).await {
        Ok(page) => page,
        Err(e) => return Completion::failed(OpType::Fail, invoke, &e),
    };
    let endpoint = Some(page.served_by.endpoint.clone());
    if page.more {
        return Completion::refused(invoke, endpoint, "harness: the accounts did not fit a page");
    }
    let mut balances = Balances::new();
    for account in page.accounts {
        let Ok(balance) = i64::try_from(account.balance) else {
            return Completion::refused(invoke, endpoint, "harness: balance beyond i64");
        };
        balances.insert(account.id, balance);
    }
    Completion::ok(Call::ReadAll(Some(balances)), endpoint)
}

/// A page that holds every item (one more, so that a stray item shows up as `more`).
fn page_limit(count: usize) -> u32 {
    u32::try_from(count + 1).unwrap_or(u32::MAX)
}

async fn read_balance_keys(client: &Client, count: usize) -> Completion {
    read_balance_keys_with(client, count, Consistency::Stale).await
}

/// Reads `bank/*` as balances.
async fn read_balance_keys_with(
    client: &Client,
    count: usize,
    consistency: Consistency,
) -> Completion {
    let invoke = Call::ReadAll(None);
    match balance_keys::read(client, page_limit(count), consistency).await {
        Ok(read) => {
            let balances: Balances = read.balances.into_iter().collect();
            Completion::ok(Call::ReadAll(Some(balances)), Some(read.endpoint))
        }
        Err(balance_keys::ReadError::Client(e)) => Completion::failed(OpType::Fail, invoke, &e),
        Err(balance_keys::ReadError::Harness(why)) => Completion::refused(invoke, None, &why),
    }
}

async fn transfer_safely(client: &Client, transfer: &Transfer) -> Completion {
    let call = Call::Transfer(transfer.clone());
    let request =
        TransferRequest::new(&transfer.from, &transfer.to, transfer.amount).with_id(&transfer.id);
    match client.transfer(&request).await {
        Ok(receipt) => Completion::ok(call, Some(receipt.served_by.endpoint)),
        Err(e) => Completion::failed(write_outcome(&e), call, &e),
    }
}

/// The unsafe transfer: stale read, client-side arithmetic, two blind PUTs.
async fn transfer_blindly(client: &Client, transfer: &Transfer, accounts: usize) -> Completion {
    let call = Call::Transfer(transfer.clone());
    let read = read_balance_keys(client, accounts).await;
    let (OpType::Ok, Call::ReadAll(Some(balances))) = (read.kind, &read.call) else {
        return Completion {
            kind: OpType::Fail,
            call,
            endpoint: read.endpoint,
            error: read.error,
        };
    };
    let (Some(&from), Some(&to)) = (balances.get(&transfer.from), balances.get(&transfer.to))
    else {
        return Completion::refused(call, read.endpoint, "harness: an account key is missing");
    };
    let Ok(amount) = i64::try_from(transfer.amount) else {
        return Completion::refused(call, read.endpoint, "harness: amount beyond i64");
    };
    if from < amount {
        return Completion::refused(
            call,
            read.endpoint,
            "insufficient-funds (client-side check on a stale read)",
        );
    }
    if let Err(e) = balance_keys::write(client, &transfer.from, from - amount, None).await {
        return Completion::failed(write_outcome(&e), call, &e);
    }
    match balance_keys::write(client, &transfer.to, to + amount, None).await {
        Ok(result) => Completion::ok(call, Some(result.served_by.endpoint)),
        // The debit is written already: whatever happened to the credit, the transfer is
        // half-done, so its effect is unknown.
        Err(e) => Completion::failed(OpType::Info, call, &e),
    }
}

async fn register_read(client: &Client, read: &RegisterRead) -> Completion {
    let invoke = Call::Read(RegisterRead {
        key: read.key.clone(),
        value: None,
    });
    let found = match client.get(&read.key).await {
        Ok(found) => found,
        Err(e) => return Completion::failed(OpType::Fail, invoke, &e),
    };
    let Some(versioned) = found else {
        return Completion::ok(invoke, None);
    };
    let endpoint = Some(versioned.served_by.endpoint.clone());
    let parsed = std::str::from_utf8(&versioned.value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    match parsed {
        Some(value) => Completion::ok(
            Call::Read(RegisterRead {
                key: read.key.clone(),
                value: Some(value),
            }),
            endpoint,
        ),
        None => Completion::refused(invoke, endpoint, "harness: the value is not a number"),
    }
}

async fn register_write(client: &Client, write: &RegisterWrite) -> Completion {
    let call = Call::Write(write.clone());
    match client.put(&write.key, write.value.to_string()).await {
        Ok(result) => Completion::ok(call, Some(result.served_by.endpoint)),
        Err(e) => Completion::failed(write_outcome(&e), call, &e),
    }
}

/// Compare-and-swap on the value, as one transaction: put `to` if the value is `from`.
async fn register_cas(client: &Client, cas: &RegisterCas) -> Completion {
    let call = Call::Cas(cas.clone());
    let request = TxnRequest::new()
        .when(Compare::value(
            &cas.key,
            CompareOp::Eq,
            cas.from.to_string(),
        ))
        .then(Op::put(&cas.key, cas.to.to_string()));
    match client.txn(&request).await {
        Ok(response) if response.succeeded => Completion::ok(call, None),
        Ok(_) => Completion::refused(call, None, "cas: the value differed"),
        Err(e) => Completion::failed(write_outcome(&e), call, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;

    #[test]
    fn write_outcomes_follow_the_jepsen_rules() {
        let indeterminate = Error::Indeterminate {
            idempotency_key: Some("k".into()),
            transfer_id: None,
            last_node: "http://n".into(),
            attempts: 2,
            last_error: "504".into(),
        };
        assert_eq!(write_outcome(&indeterminate), OpType::Info);
        let unavailable = Error::Unavailable {
            operation: "PUT".into(),
            tried: vec![],
            last_error: "503".into(),
        };
        assert_eq!(write_outcome(&unavailable), OpType::Fail);
        let refused = Error::InsufficientFunds {
            account: "a".into(),
            balance: Some(1),
            amount: 5,
            transfer_id: None,
        };
        assert_eq!(write_outcome(&refused), OpType::Fail);
        let crashed = Error::Server {
            node: "http://n".into(),
            status: 500,
            code: "internal".into(),
            message: "m".into(),
        };
        assert_eq!(write_outcome(&crashed), OpType::Info);
        let unreadable = Error::Protocol {
            node: "http://n".into(),
            message: "m".into(),
        };
        assert_eq!(write_outcome(&unreadable), OpType::Info);
        assert_eq!(error_endpoint(&indeterminate).as_deref(), Some("http://n"));
        assert!(error_text(&refused).starts_with("insufficient-funds: "));
    }

    #[test]
    fn errors_are_capped() {
        let long = Error::InvalidRequest {
            message: "é".repeat(400),
        };
        let text = error_text(&long);
        assert!(text.len() <= ERROR_TEXT_BYTES_MAX + '…'.len_utf8());
    }

    #[test]
    fn bank_ops_use_distinct_accounts_and_bounded_amounts() {
        let spec = WorkloadSpec::bank(BankMode::Transfers, 3, 100, 7).expect("spec");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut transfers = 0;
        for seq in 0..500 {
            match spec.generate(&mut rng, 2, seq, 0) {
                Call::Transfer(t) => {
                    transfers += 1;
                    assert_ne!(t.from, t.to);
                    assert!((1..=7).contains(&t.amount));
                    assert_eq!(t.id, format!("t2-{seq}"));
                }
                Call::ReadAll(None) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((150..350).contains(&transfers), "{transfers}");
        assert!(WorkloadSpec::bank(BankMode::Transfers, 1, 100, 7).is_err());
        assert!(WorkloadSpec::bank(BankMode::Transfers, 3, 100, 0).is_err());
        assert_eq!(spec.initial_balances().values().sum::<u64>(), 300);
    }

    #[test]
    fn register_ops_cover_read_write_and_cas() {
        let spec = WorkloadSpec::register(3, 1_000).expect("spec");
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (mut reads, mut writes, mut cas) = (0, 0, 0);
        let mut keys = BTreeSet::new();
        for seq in 0..400 {
            let call = spec.generate(&mut rng, 0, seq, seq * 10);
            keys.extend(call.register_key().map(str::to_owned));
            match call {
                Call::Read(r) => {
                    assert!(r.value.is_none());
                    reads += 1;
                }
                Call::Write(w) => {
                    assert!(w.value <= REGISTER_VALUE_MAX);
                    writes += 1;
                }
                Call::Cas(c) => {
                    assert!(c.from <= REGISTER_VALUE_MAX && c.to <= REGISTER_VALUE_MAX);
                    assert!(c.key.starts_with(REGISTER_PREFIX));
                    cas += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            reads > 150 && writes > 60 && cas > 60,
            "{reads} {writes} {cas}"
        );
        // 4 s of ops: 4 generations of 3 keys, and nothing else.
        let expected: BTreeSet<String> = (0..4)
            .flat_map(|g| (0..3).map(move |k| WorkloadSpec::register_key(g, k)))
            .collect();
        assert_eq!(keys, expected);
        assert!(WorkloadSpec::register(3, 0).is_err());
        assert!(WorkloadSpec::register(0, 10).is_err());
    }
}
