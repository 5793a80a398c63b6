//! Reads the API serves straight from the state machine's column family.
//!
//! Each call reads from one RocksDB snapshot, so a list page, its revision and its total are one
//! consistent view. Whether the view is recent enough (linearizable or stale) is decided before
//! the call, by the caller (`crate::service`). Pages are bounded by count and by bytes.
//!
//! The calls are async only to take the install lock without blocking a runtime worker: a read
//! that arrives while a snapshot replaces the state waits for the install to finish, and one that
//! took its view before keeps reading the old state.

use std::io;
use std::sync::Arc;

use rocksdb::SnapshotWithThreadMode;
use rocksdb::DB;

use super::decode;
use super::keys;
use super::rocks_err;
use super::Db;
use crate::limits;
use crate::state_machine::AccountRecord;
use crate::state_machine::DedupKey;
use crate::state_machine::DedupRecord;
use crate::state_machine::KvRecord;
use crate::state_machine::SmMeta;
use crate::state_machine::StateView;
use crate::state_machine::Txn;
use crate::state_machine::ZoneRecord;

#[derive(Clone)]
pub struct StateReader {
    db: Arc<Db>,
}

/// One page of a prefix listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub revision: u64,
    pub items: Vec<T>,
    pub more: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct KvItem {
    pub key: String,
    pub record: KvRecord,
}

#[derive(Debug, PartialEq, Eq)]
pub struct AccountItem {
    pub id: String,
    pub record: AccountRecord,
}

impl StateReader {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    #[cfg(test)]
    pub(crate) fn db_for_tests(&self) -> Arc<Db> {
        self.db.clone()
    }

    async fn view(&self) -> SnapshotWithThreadMode<'_, DB> {
        let _guard = self.db.install_lock.read().await;
        self.db.db.snapshot()
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        view: &SnapshotWithThreadMode<'_, DB>,
        key: &[u8],
        what: &str,
    ) -> io::Result<Option<T>> {
        match view
            .get_pinned_cf(self.db.cf(keys::CF_SM), key)
            .map_err(rocks_err)?
        {
            Some(bytes) => Ok(Some(decode(&bytes, what)?)),
            None => Ok(None),
        }
    }

    /// Write a backup of the state applied now (blocking work, off the runtime): an open file
    /// that is already unlinked, and what it holds.
    pub async fn backup(
        &self,
        cluster_id: String,
        node: u64,
    ) -> io::Result<(metrokv_api::snapshot_file::BackupInfo, super::SnapshotFile)> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || super::state::write_backup(&db, &cluster_id, node))
            .await
            .map_err(io::Error::other)?
    }

    pub async fn meta(&self) -> io::Result<SmMeta> {
        self.meta_in(&self.view().await)
    }

    fn meta_in(&self, view: &SnapshotWithThreadMode<'_, DB>) -> io::Result<SmMeta> {
        Ok(self
            .get(view, keys::SM_META, "state machine meta")?
            .unwrap_or_default())
    }

    pub async fn kv(&self, key: &str) -> io::Result<Option<KvRecord>> {
        let view = self.view().await;
        self.get(&view, &keys::kv(key), "kv record")
    }

    pub async fn account(&self, id: &str) -> io::Result<Option<AccountRecord>> {
        let view = self.view().await;
        self.get(&view, &keys::account(id), "account")
    }

    pub async fn transfer(&self, id: &str) -> io::Result<Option<DedupRecord>> {
        let view = self.view().await;
        self.get(
            &view,
            &keys::dedup(&DedupKey::Transfer(id.to_string())),
            "transfer record",
        )
    }

    /// The cluster's zone settings and state.
    pub async fn zones(&self) -> io::Result<ZoneRecord> {
        let view = self.view().await;
        Ok(self
            .get(&view, keys::SM_ZONES, "zone record")?
            .unwrap_or_default())
    }

    /// The storage id the cluster recorded for member `node`, if any.
    pub async fn member_storage(&self, node: u64) -> io::Result<Option<u64>> {
        let view = self.view().await;
        self.get(&view, &keys::member_storage(node), "member storage id")
    }

    /// Evaluate a read-only txn against one consistent view (see `state_machine::query`).
    pub async fn query(&self, txn: &Txn) -> io::Result<crate::state_machine::Response> {
        let view = self.view().await;
        crate::state_machine::query(
            &SnapView {
                reader: self,
                view: &view,
            },
            txn,
        )
    }

    /// Keys starting with `prefix`, after `after` (exclusive) if given, at most `limit` of them.
    pub async fn list_kv(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<Page<KvItem>> {
        let view = self.view().await;
        let revision = self.meta_in(&view)?.revision;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let more = self.scan(
            &view,
            keys::kv(prefix),
            after.map(keys::kv),
            limit,
            |raw_key, value| {
                let key = keys::kv_user_key(raw_key).ok_or_else(|| corrupt("kv key"))?;
                let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt("kv key utf-8"))?;
                let record: KvRecord = decode(value, "kv record")?;
                bytes += record.value.len() + key.len();
                items.push(KvItem { key, record });
                // Stop once the page is full by bytes, but always return at least one item.
                Ok(bytes < limits::LIST_PAGE_BYTES_MAX)
            },
        )?;
        Ok(Page {
            revision,
            items,
            more,
        })
    }

    pub async fn list_accounts(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<Page<AccountItem>> {
        let view = self.view().await;
        let revision = self.meta_in(&view)?.revision;
        let mut items = Vec::new();
        let more = self.scan(
            &view,
            keys::account(prefix),
            after.map(keys::account),
            limit,
            |raw_key, value| {
                let id = keys::account_id(raw_key).ok_or_else(|| corrupt("account key"))?;
                let id = String::from_utf8(id.to_vec()).map_err(|_| corrupt("account id utf-8"))?;
                items.push(AccountItem {
                    id,
                    record: decode(value, "account")?,
                });
                Ok(true)
            },
        )?;
        Ok(Page {
            revision,
            items,
            more,
        })
    }

    /// Visit keys with `prefix` (after `after`), up to `limit` or until `visit` says stop.
    /// Returns whether more keys remain.
    fn scan(
        &self,
        view: &SnapshotWithThreadMode<'_, DB>,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let mut it = view.raw_iterator_cf(self.db.cf(keys::CF_SM));
        match &after {
            Some(after) if after.as_slice() >= prefix.as_slice() => {
                it.seek(after);
                if it.key() == Some(after.as_slice()) {
                    it.next();
                }
            }
            _ => it.seek(&prefix),
        }
        let mut taken = 0;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(&prefix) {
                break;
            }
            if taken == limit {
                return Ok(true);
            }
            taken += 1;
            let go_on = visit(key, value)?;
            it.next();
            if !go_on {
                let more = it.key().is_some_and(|k| k.starts_with(&prefix));
                it.status().map_err(rocks_err)?;
                return Ok(more);
            }
        }
        it.status().map_err(rocks_err)?;
        Ok(false)
    }

    /// Approximate on-disk size of each column family, for `/metrics`.
    pub fn sizes(&self) -> Vec<(&'static str, u64)> {
        keys::COLUMN_FAMILIES
            .iter()
            .map(|name| {
                let size = self
                    .db
                    .db
                    .property_int_value_cf(self.db.cf(name), "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                (*name, size)
            })
            .collect()
    }
}

/// The state machine's view of one RocksDB snapshot, for evaluating read-only txns.
struct SnapView<'a, 'v> {
    reader: &'a StateReader,
    view: &'a SnapshotWithThreadMode<'v, DB>,
}

impl StateView for SnapView<'_, '_> {
    type Error = io::Error;

    fn meta(&self) -> io::Result<SmMeta> {
        self.reader.meta_in(self.view)
    }

    fn kv(&self, key: &str) -> io::Result<Option<KvRecord>> {
        self.reader.get(self.view, &keys::kv(key), "kv record")
    }

    fn account(&self, id: &str) -> io::Result<Option<AccountRecord>> {
        self.reader.get(self.view, &keys::account(id), "account")
    }

    fn dedup(&self, key: &DedupKey) -> io::Result<Option<DedupRecord>> {
        self.reader
            .get(self.view, &keys::dedup(key), "dedup record")
    }

    /// A query never expires anything.
    fn expired_dedup(&self, _before_ms: u64, _limit: usize) -> io::Result<Vec<(u64, DedupKey)>> {
        Ok(Vec::new())
    }

    fn storage_of(&self, node: u64) -> io::Result<Option<u64>> {
        self.reader
            .get(self.view, &keys::member_storage(node), "member storage id")
    }

    fn zones(&self) -> io::Result<ZoneRecord> {
        Ok(self
            .reader
            .get(self.view, keys::SM_ZONES, "zone record")?
            .unwrap_or_default())
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}"))
}
