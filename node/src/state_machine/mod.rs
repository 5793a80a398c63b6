//! The replicated state machine: `(state view, request) -> (changes, response)`.
//!
//! This module is pure. It reads state only through [`StateView`], returns the writes it wants as
//! a list of [`Change`]s, and never touches a clock, a random number generator, the network or the
//! disk: every replica that applies the same log to the same state computes the same changes and
//! the same answers. Time reaches it only as `leader_time_ms`, stamped into each entry by the
//! leader. Storage (`crate::storage`) turns the changes into one atomic RocksDB batch together
//! with the applied log id.
//!
//! Invariants kept here (and checked by the property tests at the end):
//! - a balance never goes below zero, and a transfer leaves the sum of balances unchanged;
//! - a transfer id applies at most once, ever: its outcome is kept for ever (it is the ledger);
//! - an idempotency key applies at most once while its record is kept (24 h of replicated time);
//!   a repeat returns the first answer, a repeat with a different body gets
//!   [`Rejection::IdempotencyConflict`];
//! - the revision grows by exactly one for every request that changes data, and a key's
//!   version is the revision that last wrote it;
//! - the replicated clock never goes back, and one entry moves it forward by at most
//!   [`limits::CLOCK_STEP_MS_MAX`], so one leader with a wrong wall clock cannot age the records
//!   by more than that per entry;
//! - a txn's answer stays within [`limits::TXN_ANSWER_BYTES_MAX`] of keys and values, so every
//!   record written here fits a snapshot record and every answer fits a peer frame.
//!
//! Left out on purpose: validation of request sizes and formats (the API does it before
//! proposing, and sizes do not change the outcome), and reads, which storage serves directly; a
//! read-only txn is evaluated here ([`query`]) against a consistent view, without the log.
//!
//! `mem` is an in-memory [`StateView`] for tests and fuzzing.

pub mod mem;
pub mod types;

use std::collections::BTreeMap;

pub use types::*;
use Change::SetMeta;

use crate::limits;

/// Read access to the current state, as of the entry being applied.
pub trait StateView {
    type Error;
    fn meta(&self) -> Result<SmMeta, Self::Error>;
    fn kv(&self, key: &str) -> Result<Option<KvRecord>, Self::Error>;
    fn account(&self, id: &str) -> Result<Option<AccountRecord>, Self::Error>;
    fn dedup(&self, key: &DedupKey) -> Result<Option<DedupRecord>, Self::Error>;
    /// Up to `limit` expiring dedup records ([`DedupKey::expires`]) with `recorded_ms` at or
    /// before `recorded_at_or_before_ms`, oldest first (ties in key order). Asking for what
    /// expired, rather than for the oldest records, lets storage answer "nothing" from what it
    /// knows of the oldest without a search.
    fn expired_dedup(
        &self,
        recorded_at_or_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DedupKey)>, Self::Error>;
    /// The storage id recorded for member `node`, if any.
    fn storage_of(&self, node: u64) -> Result<Option<u64>, Self::Error>;
    /// The zone settings and state (the defaults until a command sets them).
    fn zones(&self) -> Result<ZoneRecord, Self::Error>;
}

/// One write the state machine asks storage to make. Storage applies them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    PutKv {
        key: String,
        record: KvRecord,
    },
    DeleteKv {
        key: String,
    },
    PutAccount {
        id: String,
        record: AccountRecord,
    },
    PutDedup {
        key: DedupKey,
        record: DedupRecord,
    },
    /// Remove a dedup record; `recorded_ms` locates its expiry index entry.
    DeleteDedup {
        key: DedupKey,
        recorded_ms: u64,
    },
    SetMeta(SmMeta),
    PutStorage {
        node: u64,
        storage_id: u64,
    },
    PutZones(ZoneRecord),
}

/// The result of applying one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub response: Response,
}

/// Apply one request to the state seen through `view`.
pub fn apply<V: StateView>(view: &V, request: &Request) -> Result<Applied, V::Error> {
    let mut meta = view.meta()?;
    meta.clock_ms = advance_clock(meta.clock_ms, request.leader_time_ms);
    let mut changes = Vec::new();

    let expired = expire_dedup(view, meta.clock_ms, &mut changes)?;

    let dedup_key = match &request.command {
        Command::Transfer(t) => Some(DedupKey::Transfer(t.id.clone())),
        // Internal bookkeeping is idempotent by itself.
        Command::RecordStorage { .. }
        | Command::ZoneSettings { .. }
        | Command::ZoneDegrade { .. }
        | Command::ZoneRestore { .. } => None,
        _ => request.idempotency_key.clone().map(DedupKey::Idempotency),
    };
    let fingerprint = fingerprint(&request.command);

    if let Some(key) = &dedup_key {
        if !expired.contains(key) {
            if let Some(first) = view.dedup(key)? {
                let response = if first.fingerprint == fingerprint {
                    first.response
                } else {
                    Err(Rejection::IdempotencyConflict {
                        key: dedup_key_name(key).to_string(),
                    })
                };
                changes.push(SetMeta(meta));
                return Ok(Applied { changes, response });
            }
        }
    }

    let mut exec = Exec {
        view,
        revision: meta.revision,
        clock_ms: meta.clock_ms,
        changes: &mut changes,
    };
    let response = exec.command(&request.command)?;
    let revision = exec.revision;
    assert!(
        revision == meta.revision || revision == meta.revision + 1,
        "a request advances the revision by at most one"
    );
    meta.revision = revision;

    if let Some(key) = dedup_key {
        let transfer = match &request.command {
            Command::Transfer(t) => Some(t.clone()),
            _ => None,
        };
        let record = DedupRecord {
            fingerprint,
            recorded_ms: meta.clock_ms,
            response: response.clone(),
            transfer,
        };
        changes.push(Change::PutDedup { key, record });
    }
    changes.push(SetMeta(meta));
    Ok(Applied { changes, response })
}

/// Evaluate a read-only txn ([`Txn::is_read_only`]) against `view`, as applying it would,
/// without a log entry. The caller makes the view linearizable first.
pub fn query<V: StateView>(view: &V, txn: &Txn) -> Result<Response, V::Error> {
    let revision = view.meta()?.revision;
    let mut changes = Vec::new();
    let mut exec = Exec {
        view,
        revision,
        clock_ms: 0,
        changes: &mut changes,
    };
    let response = exec.txn(txn)?;
    assert!(changes.is_empty(), "a read-only txn changes nothing");
    Ok(response)
}

/// The replicated clock after an entry stamped `stamp_ms`: forward by at most
/// [`limits::CLOCK_STEP_MS_MAX`], never back. The first stamp of a new cluster sets it.
pub fn advance_clock(clock_ms: u64, stamp_ms: u64) -> u64 {
    if clock_ms == 0 {
        return stamp_ms;
    }
    clock_ms.max(stamp_ms.min(clock_ms.saturating_add(limits::CLOCK_STEP_MS_MAX)))
}

/// The name a client used for a dedup key, for error messages.
fn dedup_key_name(key: &DedupKey) -> &str {
    match key {
        DedupKey::Idempotency(k) | DedupKey::Transfer(k) => k,
    }
}

/// Drop dedup records older than the retention window, a bounded number per entry.
fn expire_dedup<V: StateView>(
    view: &V,
    clock_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<Vec<DedupKey>, V::Error> {
    let mut expired = Vec::new();
    // A record expires at the age of the retention. (The age, not `recorded_ms + retention`,
    // which saturates at the end of the clock's range and would expire a record the moment it
    // was written. The clock never goes back, so the age is never negative.)
    let Some(cutoff) = clock_ms.checked_sub(limits::DEDUP_RETENTION_MS) else {
        return Ok(expired);
    };
    for (recorded_ms, key) in view.expired_dedup(cutoff, limits::DEDUP_EXPIRE_PER_ENTRY_MAX)? {
        assert!(
            recorded_ms <= cutoff && key.expires(),
            "only expired records of the expiry index are returned"
        );
        changes.push(Change::DeleteDedup {
            key: key.clone(),
            recorded_ms,
        });
        expired.push(key);
    }
    Ok(expired)
}

/// FNV-1a over the postcard encoding of the command. postcard's encoding is a stable, documented
/// format, so the fingerprint survives upgrades of the compiler and of this binary.
pub fn fingerprint(command: &Command) -> u64 {
    let bytes = postcard::to_allocvec(command).expect("encoding a command into memory cannot fail");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Executes one command, collecting its changes. `revision` is the current revision, bumped at
/// most once when the command writes.
struct Exec<'a, V> {
    view: &'a V,
    revision: u64,
    /// The replicated clock of the entry being applied (0 for a query).
    clock_ms: u64,
    changes: &'a mut Vec<Change>,
}

impl<V: StateView> Exec<'_, V> {
    fn command(&mut self, command: &Command) -> Result<Response, V::Error> {
        match command {
            Command::Put {
                key,
                value,
                condition,
            } => self.put(key, value, *condition),
            Command::Delete { key, condition } => self.delete(key, *condition),
            Command::Txn(txn) => self.txn(txn),
            Command::CreateAccount { id, balance } => self.create_account(id, *balance),
            Command::Transfer(t) => self.transfer(t),
            Command::RecordStorage { node, storage_id } => self.record_storage(*node, *storage_id),
            Command::ZoneSettings {
                mode,
                degrade_after_ms,
                preferred_leader_zone,
            } => self.zone_settings(*mode, *degrade_after_ms, preferred_leader_zone.as_deref()),
            Command::ZoneDegrade { zone_safe_index } => self.zone_degrade(*zone_safe_index),
            Command::ZoneRestore { .. } => self.zone_restore(),
        }
    }

    fn zone_settings(
        &mut self,
        mode: Option<ZoneSafety>,
        degrade_after_ms: Option<u64>,
        preferred_leader_zone: Option<&str>,
    ) -> Result<Response, V::Error> {
        let allowed = limits::ZONE_DEGRADE_AFTER_MS_MIN..=limits::ZONE_DEGRADE_AFTER_MS_MAX;
        if degrade_after_ms.is_some_and(|ms| !allowed.contains(&ms)) {
            return Ok(Err(Rejection::Invalid(Invalid::DegradeAfter)));
        }
        if preferred_leader_zone.is_some_and(|z| z.len() > limits::ZONE_BYTES_MAX) {
            return Ok(Err(Rejection::Invalid(Invalid::ZoneName)));
        }
        let mut zones = self.view.zones()?;
        match preferred_leader_zone {
            Some("") => zones.preferred_leader_zone = None,
            Some(zone) => zones.preferred_leader_zone = Some(zone.to_string()),
            None => {}
        }
        zones.mode = mode.unwrap_or(zones.mode);
        zones.degrade_after_ms = degrade_after_ms.unwrap_or(zones.degrade_after_ms);
        if zones.mode != ZoneSafety::Adaptive {
            zones.degraded = None;
        }
        self.changes.push(Change::PutZones(zones.clone()));
        Ok(Ok(Success::ZoneSettings(zones)))
    }

    fn zone_degrade(&mut self, zone_safe_index: u64) -> Result<Response, V::Error> {
        let mut zones = self.view.zones()?;
        if zones.mode != ZoneSafety::Adaptive {
            return Ok(Err(Rejection::Invalid(Invalid::NotAdaptive)));
        }
        if zones.degraded.is_none() {
            zones.degraded = Some(Degraded {
                since_ms: self.clock_ms,
                zone_safe_index,
            });
            self.changes.push(Change::PutZones(zones));
        }
        Ok(Ok(Success::Noop))
    }

    fn zone_restore(&mut self) -> Result<Response, V::Error> {
        let mut zones = self.view.zones()?;
        if zones.degraded.take().is_some() {
            self.changes.push(Change::PutZones(zones));
        }
        Ok(Ok(Success::Noop))
    }

    fn record_storage(&mut self, node: u64, storage_id: u64) -> Result<Response, V::Error> {
        match self.view.storage_of(node)? {
            Some(recorded) if recorded == storage_id => Ok(Ok(Success::Noop)),
            Some(recorded) => Ok(Err(Rejection::StorageConflict { node, recorded })),
            None => {
                self.changes.push(Change::PutStorage { node, storage_id });
                Ok(Ok(Success::Noop))
            }
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.revision + 1
    }

    fn put(&mut self, key: &str, value: &[u8], condition: Condition) -> Result<Response, V::Error> {
        let current = self.view.kv(key)?;
        if let Err(rejection) = check_condition(key, current.as_ref(), condition) {
            return Ok(Err(rejection));
        }
        let revision = self.next_revision();
        self.revision = revision;
        let record = KvRecord {
            version: revision,
            value: value.to_vec(),
        };
        self.changes.push(Change::PutKv {
            key: key.to_string(),
            record,
        });
        Ok(Ok(Success::Put {
            version: revision,
            revision,
        }))
    }

    fn delete(&mut self, key: &str, condition: Condition) -> Result<Response, V::Error> {
        let current = self.view.kv(key)?;
        if let Err(rejection) = check_condition(key, current.as_ref(), condition) {
            return Ok(Err(rejection));
        }
        if current.is_none() {
            return Ok(Ok(Success::Delete {
                deleted: false,
                revision: self.revision,
            }));
        }
        self.revision = self.next_revision();
        self.changes.push(Change::DeleteKv {
            key: key.to_string(),
        });
        Ok(Ok(Success::Delete {
            deleted: true,
            revision: self.revision,
        }))
    }

    fn txn(&mut self, txn: &Txn) -> Result<Response, V::Error> {
        for branch in [&txn.success, &txn.failure] {
            let mut written = std::collections::BTreeSet::new();
            if branch
                .iter()
                .filter(|op| op.is_write())
                .any(|op| !written.insert(op.key()))
            {
                return Ok(Err(Rejection::Invalid(Invalid::DuplicateTxnWrite)));
            }
        }
        let mut succeeded = true;
        for compare in &txn.compare {
            let current = self.view.kv(&compare.key)?;
            match compare_holds(compare, current.as_ref()) {
                Ok(true) => {}
                Ok(false) => succeeded = false,
                Err(invalid) => return Ok(Err(Rejection::Invalid(invalid))),
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };

        // Ops run in order and see the branch's own earlier writes. Their changes are kept
        // aside until the answer is known to fit its budget: an over-budget txn changes nothing.
        let revision = self.next_revision();
        let mut overlay: BTreeMap<&str, Option<KvRecord>> = BTreeMap::new();
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        let mut answer_bytes = 0u64;
        let budget = limits::TXN_ANSWER_BYTES_MAX as u64;
        for op in ops {
            let current = match overlay.get(op.key()) {
                Some(seen) => seen.clone(),
                None => self.view.kv(op.key())?,
            };
            match op {
                TxnOp::Get { key } => {
                    if let Some(r) = &current {
                        answer_bytes += (key.len() + r.value.len()) as u64;
                    }
                    // Past the budget only the size is counted, for the refusal's message.
                    if answer_bytes <= budget {
                        results.push(TxnOpResult::Get(current.map(|r| TxnGot {
                            key: key.clone(),
                            value: r.value,
                            version: r.version,
                        })));
                    }
                }
                TxnOp::Put { key, value } => {
                    let record = KvRecord {
                        version: revision,
                        value: value.clone(),
                    };
                    overlay.insert(key, Some(record.clone()));
                    changes.push(Change::PutKv {
                        key: key.clone(),
                        record,
                    });
                    results.push(TxnOpResult::Put { version: revision });
                }
                TxnOp::Delete { key } => {
                    let deleted = current.is_some();
                    if deleted {
                        overlay.insert(key, None);
                        changes.push(Change::DeleteKv { key: key.clone() });
                    }
                    results.push(TxnOpResult::Delete { deleted });
                }
            }
        }
        if answer_bytes > budget {
            return Ok(Err(Rejection::AnswerTooLarge {
                bytes: answer_bytes,
                max: budget,
            }));
        }
        if !changes.is_empty() {
            self.revision = revision;
            self.changes.append(&mut changes);
        }
        Ok(Ok(Success::Txn {
            succeeded,
            results,
            revision: self.revision,
        }))
    }

    fn create_account(&mut self, id: &str, balance: u64) -> Result<Response, V::Error> {
        if self.view.account(id)?.is_some() {
            return Ok(Err(Rejection::AccountExists { id: id.to_string() }));
        }
        self.revision = self.next_revision();
        let record = AccountRecord {
            balance,
            version: self.revision,
        };
        self.changes.push(Change::PutAccount {
            id: id.to_string(),
            record,
        });
        Ok(Ok(Success::AccountCreated {
            id: id.to_string(),
            balance,
            version: self.revision,
        }))
    }

    fn transfer(&mut self, t: &Transfer) -> Result<Response, V::Error> {
        if t.amount == 0 {
            return Ok(Err(Rejection::Invalid(Invalid::ZeroAmount)));
        }
        if t.from == t.to {
            return Ok(Err(Rejection::Invalid(Invalid::SameAccount)));
        }
        let Some(from) = self.view.account(&t.from)? else {
            return Ok(Err(Rejection::AccountNotFound { id: t.from.clone() }));
        };
        let Some(to) = self.view.account(&t.to)? else {
            return Ok(Err(Rejection::AccountNotFound { id: t.to.clone() }));
        };
        let Some(from_balance) = from.balance.checked_sub(t.amount) else {
            return Ok(Err(Rejection::InsufficientFunds {
                account: t.from.clone(),
                balance: from.balance,
                amount: t.amount,
            }));
        };
        let Some(to_balance) = to.balance.checked_add(t.amount) else {
            return Ok(Err(Rejection::Invalid(Invalid::BalanceOverflow)));
        };
        assert_eq!(
            u128::from(from.balance) + u128::from(to.balance),
            u128::from(from_balance) + u128::from(to_balance),
            "a transfer conserves the total"
        );
        self.revision = self.next_revision();
        let version = self.revision;
        self.changes.push(Change::PutAccount {
            id: t.from.clone(),
            record: AccountRecord {
                balance: from_balance,
                version,
            },
        });
        self.changes.push(Change::PutAccount {
            id: t.to.clone(),
            record: AccountRecord {
                balance: to_balance,
                version,
            },
        });
        Ok(Ok(Success::Transfer(TransferReceipt {
            id: t.id.clone(),
            from: t.from.clone(),
            to: t.to.clone(),
            amount: t.amount,
            from_balance,
            to_balance,
            revision: version,
        })))
    }
}

fn check_condition(
    key: &str,
    current: Option<&KvRecord>,
    condition: Condition,
) -> Result<(), Rejection> {
    let current_version = current.map_or(0, |r| r.version);
    let holds = match condition {
        Condition::Always => true,
        Condition::IfVersion(v) => v == current_version,
        Condition::IfAbsent => current.is_none(),
    };
    if holds {
        Ok(())
    } else {
        Err(Rejection::PreconditionFailed {
            key: key.to_string(),
            current_version,
        })
    }
}

fn compare_holds(compare: &Compare, current: Option<&KvRecord>) -> Result<bool, Invalid> {
    use std::cmp::Ordering;
    let ordering_holds = |ord: Ordering| match compare.op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Gt => ord == Ordering::Greater,
    };
    Ok(match &compare.target {
        CompareTarget::Version(v) => ordering_holds(current.map_or(0, |r| r.version).cmp(v)),
        CompareTarget::Value(v) => match current {
            Some(r) => ordering_holds(r.value.as_slice().cmp(v.as_slice())),
            None => false,
        },
        CompareTarget::Exists(want) => match compare.op {
            CompareOp::Eq => current.is_some() == *want,
            CompareOp::Ne => current.is_some() != *want,
            CompareOp::Lt | CompareOp::Gt => return Err(Invalid::ExistsOrdering),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests;
