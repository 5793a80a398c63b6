//! An in-memory [`StateView`]: the state as plain maps, for the state machine's tests, the
//! storage tests that only need the changes, and the fuzz targets (`crate::fuzzing`).
//!
//! It keeps exactly what storage keeps (kv records, accounts, dedup records, the meta and the
//! member storage ids) and writes [`Change`]s the way storage does, in order, so a test can
//! check the state machine's logic without RocksDB. It is not a second storage engine: it has
//! no durability, no key encoding and no size checks (storage's tests cover those).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;

use super::apply;
use super::AccountRecord;
use super::Applied;
use super::Change;
use super::DedupKey;
use super::DedupRecord;
use super::KvRecord;
use super::Request;
use super::SmMeta;
use super::StateView;
use super::ZoneRecord;

/// The whole state machine state in memory. Fields are public so tests can inspect them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemState {
    pub meta: SmMeta,
    pub kv: BTreeMap<String, KvRecord>,
    pub accounts: BTreeMap<String, AccountRecord>,
    pub dedup: BTreeMap<DedupKey, DedupRecord>,
    pub storage: BTreeMap<u64, u64>,
    pub zones: Option<ZoneRecord>,
}

impl StateView for MemState {
    type Error = Infallible;
    fn meta(&self) -> Result<SmMeta, Infallible> {
        Ok(self.meta)
    }
    fn kv(&self, key: &str) -> Result<Option<KvRecord>, Infallible> {
        Ok(self.kv.get(key).cloned())
    }
    fn account(&self, id: &str) -> Result<Option<AccountRecord>, Infallible> {
        Ok(self.accounts.get(id).copied())
    }
    fn dedup(&self, key: &DedupKey) -> Result<Option<DedupRecord>, Infallible> {
        Ok(self.dedup.get(key).cloned())
    }
    fn expired_dedup(
        &self,
        recorded_at_or_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DedupKey)>, Infallible> {
        let mut all: Vec<_> = self
            .dedup
            .iter()
            .filter(|(k, r)| k.expires() && r.recorded_ms <= recorded_at_or_before_ms)
            .map(|(k, r)| (r.recorded_ms, k.clone()))
            .collect();
        all.sort();
        all.truncate(limit);
        Ok(all)
    }
    fn storage_of(&self, node: u64) -> Result<Option<u64>, Infallible> {
        Ok(self.storage.get(&node).copied())
    }

    fn zones(&self) -> Result<ZoneRecord, Infallible> {
        Ok(self.zones.clone().unwrap_or_default())
    }
}

impl MemState {
    /// Make `changes`, in order, as storage would in one batch.
    pub fn write(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::PutKv { key, record } => {
                    self.kv.insert(key, record);
                }
                Change::DeleteKv { key } => {
                    self.kv.remove(&key);
                }
                Change::PutAccount { id, record } => {
                    self.accounts.insert(id, record);
                }
                Change::PutDedup { key, record } => {
                    self.dedup.insert(key, record);
                }
                Change::DeleteDedup { key, .. } => {
                    self.dedup.remove(&key);
                }
                Change::SetMeta(meta) => self.meta = meta,
                Change::PutZones(zones) => self.zones = Some(zones),
                Change::PutStorage { node, storage_id } => {
                    self.storage.insert(node, storage_id);
                }
            }
        }
    }

    /// Apply `request`, make its changes, and return what applying it produced (the changes
    /// too, for the checks that look at them).
    pub fn apply(&mut self, request: &Request) -> Applied {
        let Ok(applied) = apply(self, request);
        self.write(applied.changes.clone());
        applied
    }

    /// The sum of all balances; u128, so even many accounts of `u64::MAX` cannot overflow it.
    pub fn total(&self) -> u128 {
        self.accounts.values().map(|a| u128::from(a.balance)).sum()
    }

    /// A readable dump of the state, for golden scripts.
    pub fn dump(&self) -> String {
        let mut out = format!(
            "revision={} clock_ms={}\n",
            self.meta.revision, self.meta.clock_ms
        );
        for (k, r) in &self.kv {
            let _ = writeln!(
                out,
                "kv {k} = {:?} @{}",
                String::from_utf8_lossy(&r.value),
                r.version
            );
        }
        for (id, a) in &self.accounts {
            let _ = writeln!(out, "account {id} = {} @{}", a.balance, a.version);
        }
        for (k, r) in &self.dedup {
            let _ = writeln!(out, "dedup {k:?} recorded_ms={}", r.recorded_ms);
        }
        out
    }
}
