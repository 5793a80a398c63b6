//! The etcd side of `metrokv bench --system etcd`: the same workloads over etcd's own gRPC API,
//! written the way an etcd user has to write them.
//!
//! - `get` is etcd's default (linearizable) range read, `get-stale` a serializable one.
//! - `cas` reads nothing: like the metrokv workload it remembers the version it wrote last and
//!   puts in a Txn that compares it.
//! - `transfer` reads both accounts (one Txn of two ranges), then writes both balances in a Txn
//!   that compares both mod revisions, and starts over when the compare fails (a conflict,
//!   counted). An account is a key holding its balance in decimal.

use std::collections::BTreeMap;

use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::GetOptions;
use etcd_client::KvClient;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;

use super::account;
use super::key;
use super::BenchOptions;
use super::Rng;
use super::Workload;
use super::ACCOUNT_BALANCE;

/// An etcd error's kind: the gRPC status code, or what failed.
fn kind(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("etcd_{:?}", status.code()).to_lowercase()
        }
        etcd_client::Error::TransportError(_) => "etcd_transport".into(),
        _ => "etcd".into(),
    }
}

pub(super) async fn connect(endpoints: &[String]) -> Result<KvClient, String> {
    let client = etcd_client::Client::connect(endpoints, None)
        .await
        .map_err(|e| format!("cannot connect to etcd at {}: {e}", endpoints.join(", ")))?;
    Ok(client.kv_client())
}

/// Write the keys the reading workloads read and the transfer workload's accounts.
pub(super) async fn prepare(
    kv: &mut KvClient,
    o: &BenchOptions,
    value: &[u8],
) -> Result<(), String> {
    let fail = |e: etcd_client::Error| format!("preparing etcd: {e}");
    if o.workload == Workload::Transfer {
        for i in 0..o.accounts {
            kv.put(account(i), ACCOUNT_BALANCE.to_string(), None)
                .await
                .map_err(fail)?;
        }
    } else if o.reads_preloaded() {
        let keys = o.preload_keys();
        // Preloaded already (an earlier run on this cluster): the last key is there.
        let last = kv.get(key(keys - 1), None).await.map_err(fail)?;
        if !last.kvs().is_empty() {
            return Ok(());
        }
        let writers = super::PRELOAD_WRITERS.min(keys);
        let mut jobs = tokio::task::JoinSet::new();
        for w in 0..writers {
            let (mut kv, value) = (kv.clone(), value.to_vec());
            jobs.spawn(async move {
                let mut i = w;
                while i < keys {
                    kv.put(key(i), value.clone(), None).await?;
                    i += writers;
                }
                Ok::<(), etcd_client::Error>(())
            });
        }
        while let Some(done) = jobs.join_next().await {
            done.map_err(|e| format!("a preload task failed: {e}"))?
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// One client task against etcd.
pub(super) struct EtcdTask {
    pub kv: KvClient,
    pub rng: Rng,
    pub value: Vec<u8>,
    pub id: usize,
    /// The cas workload: the version last written to each of the task's keys.
    pub versions: BTreeMap<String, i64>,
    pub conflicts: u64,
}

impl EtcdTask {
    pub(super) async fn one(&mut self, o: &BenchOptions) -> Result<(), String> {
        let value = self.value.clone();
        match o.workload {
            Workload::Put => {
                let k = key(self.rng.below(o.keys));
                self.kv
                    .put(k, value, None)
                    .await
                    .map(drop)
                    .map_err(|e| kind(&e))
            }
            Workload::Get => self.get(o, false).await,
            Workload::GetStale => self.get(o, true).await,
            Workload::Mixed if self.rng.chance(o.read_ratio) => self.get(o, false).await,
            Workload::Mixed => {
                let k = key(self.rng.below(o.preload_keys()));
                self.kv
                    .put(k, value, None)
                    .await
                    .map(drop)
                    .map_err(|e| kind(&e))
            }
            Workload::Cas => {
                let k = format!("bench-cas-{}-{}", self.id, self.rng.below(16));
                let current = self.versions.get(&k).copied().unwrap_or(0);
                let txn = Txn::new()
                    .when([Compare::version(k.clone(), CompareOp::Equal, current)])
                    .and_then([TxnOp::put(k.clone(), value, None)]);
                let answer = self.kv.txn(txn).await.map_err(|e| kind(&e))?;
                if !answer.succeeded() {
                    return Err("precondition_failed".into());
                }
                self.versions.insert(k, current + 1);
                Ok(())
            }
            Workload::Txn => {
                let mine = key(self.rng.below(o.preload_keys()));
                let other = key(self.rng.below(o.preload_keys()));
                let txn = Txn::new()
                    .when([Compare::version(mine.clone(), CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(mine, value, None), TxnOp::get(other, None)]);
                self.kv.txn(txn).await.map(drop).map_err(|e| kind(&e))
            }
            Workload::Transfer => self.transfer(o).await,
        }
    }

    async fn get(&mut self, o: &BenchOptions, serializable: bool) -> Result<(), String> {
        let k = key(self.rng.below(o.preload_keys()));
        let options = serializable.then(|| GetOptions::new().with_serializable());
        self.kv
            .get(k, options)
            .await
            .map(drop)
            .map_err(|e| kind(&e))
    }

    async fn transfer(&mut self, o: &BenchOptions) -> Result<(), String> {
        let from = self.rng.below(o.accounts);
        let to = (from + 1 + self.rng.below(o.accounts - 1)) % o.accounts;
        let amount = 1 + self.rng.below(100);
        let (from, to) = (account(from), account(to));
        loop {
            let read =
                Txn::new().and_then([TxnOp::get(from.clone(), None), TxnOp::get(to.clone(), None)]);
            let answer = self.kv.txn(read).await.map_err(|e| kind(&e))?;
            let mut accounts = answer.op_responses().into_iter().map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                    let balance = std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    (balance, kv.mod_revision())
                }),
                _ => None,
            });
            let (Some((Some(a), ra)), Some((Some(b), rb))) =
                (accounts.next().flatten(), accounts.next().flatten())
            else {
                return Err("account_not_found".into());
            };
            if a < amount {
                return Err("insufficient_funds".into());
            }
            let write = Txn::new()
                .when([
                    Compare::mod_revision(from.clone(), CompareOp::Equal, ra),
                    Compare::mod_revision(to.clone(), CompareOp::Equal, rb),
                ])
                .and_then([
                    TxnOp::put(from.clone(), (a - amount).to_string(), None),
                    TxnOp::put(to.clone(), (b + amount).to_string(), None),
                ]);
            let answer = self.kv.txn(write).await.map_err(|e| kind(&e))?;
            if answer.succeeded() {
                return Ok(());
            }
            self.conflicts += 1;
        }
    }
}
