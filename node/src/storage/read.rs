//! Reads the API serves straight from the state machine's column family.
//!
//! Each call reads from one RocksDB snapshot, so a list page, its revision and its total are one
//! consistent view. Whether the view is recent enough (linearizable or stale) is decided before
//! the call, by the caller (`crate::service`). Pages are bounded by count and by bytes.

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

    fn view(&self) -> SnapshotWithThreadMode<'_, DB> {
        let _guard = self
            .db
            .install_lock
            .read()
            .unwrap_or_else(|e| e.into_inner());
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

    pub fn meta(&self) -> io::Result<SmMeta> {
        self.meta_in(&self.view())
    }

    fn meta_in(&self, view: &SnapshotWithThreadMode<'_, DB>) -> io::Result<SmMeta> {
        Ok(self
            .get(view, keys::SM_META, "state machine meta")?
            .unwrap_or_default())
    }

    pub fn kv(&self, key: &str) -> io::Result<Option<KvRecord>> {
        let view = self.view();
        self.get(&view, &keys::kv(key), "kv record")
    }

    pub fn account(&self, id: &str) -> io::Result<Option<AccountRecord>> {
        let view = self.view();
        self.get(&view, &keys::account(id), "account")
    }

    pub fn transfer(&self, id: &str) -> io::Result<Option<DedupRecord>> {
        let view = self.view();
        self.get(
            &view,
            &keys::dedup(&DedupKey::Transfer(id.to_string())),
            "transfer record",
        )
    }

    /// Keys starting with `prefix`, after `after` (exclusive) if given, at most `limit` of them.
    pub fn list_kv(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<Page<KvItem>> {
        let view = self.view();
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

    pub fn list_accounts(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<Page<AccountItem>> {
        let view = self.view();
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

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}"))
}
