//! The `state_machine` target: bytes decoded into a sequence of requests over a few keys,
//! accounts, transfer ids and idempotency keys ([`Decoder`]), applied one by one to a
//! [`MemState`] with the ledger invariants checked after every step ([`check_step`]).
//!
//! The decoded commands stay within the API's limits, as every command the API proposes does:
//! the state machine does not check sizes itself, so an oversized command here would break the
//! record-size invariant for a reason the node already rules out elsewhere.

use super::*;

/// Bytes as a sequence of requests over a few keys, accounts, transfer ids and idempotency keys,
/// with leader stamps that mostly move forward and sometimes jump or go back, applied one by
/// one to a [`MemState`] with the ledger invariants checked after each step (see
/// `check_step`). The decoded commands stay within the API's limits, as every command the
/// API proposes does; the state machine does not check sizes itself.
pub fn state_machine(data: &[u8]) -> Outcome {
    let mut decoder = Decoder::new(data);
    let mut state = MemState::default();
    let mut ledger = Ledger::default();
    let mut applied = 0;
    while let Some(requests) = decoder.next_requests() {
        for request in requests {
            check_step(&mut state, &mut ledger, &request);
            applied += 1;
        }
    }
    Outcome::accepted_if(applied > 0)
}

/// What the checks remember across steps: the first answer of every transfer id.
#[derive(Default)]
struct Ledger {
    transfers: BTreeMap<String, (Transfer, Response)>,
}

/// What the checks need to know of the state before a step.
struct Before {
    meta: SmMeta,
    total: u128,
    /// The live record of the request's idempotency key, if any.
    idem_record: Option<DedupRecord>,
    /// For an account creation: whether the account existed.
    account_existed: bool,
    /// For a read-only txn without a key: what `query` answers.
    queried: Option<Response>,
    /// When each dedup record was recorded.
    recorded_ms: BTreeMap<DedupKey, u64>,
}

impl Before {
    fn observe(state: &MemState, request: &Request) -> Self {
        let idem_record = request
            .idempotency_key
            .as_ref()
            .and_then(|k| state.dedup.get(&DedupKey::Idempotency(k.clone())).cloned());
        let queried = match &request.command {
            Command::Txn(t) if t.is_read_only() && request.idempotency_key.is_none() => {
                let Ok(response) = state_machine::query(state, t);
                Some(response)
            }
            _ => None,
        };
        Self {
            meta: state.meta,
            total: state.total(),
            idem_record,
            account_existed: matches!(&request.command,
                Command::CreateAccount { id, .. } if state.accounts.contains_key(id)),
            queried,
            recorded_ms: state
                .dedup
                .iter()
                .map(|(k, r)| (k.clone(), r.recorded_ms))
                .collect(),
        }
    }
}

/// Apply one request and check the invariants of `state_machine`'s module doc on what changed.
fn check_step(state: &mut MemState, ledger: &mut Ledger, request: &Request) {
    let before = Before::observe(state, request);
    let applied = state.apply(request);
    let data_changed = applied.changes.iter().any(|c| {
        matches!(
            c,
            Change::PutKv { .. } | Change::DeleteKv { .. } | Change::PutAccount { .. }
        )
    });
    check_revision_and_clock(&before, state.meta, data_changed);
    if let Some(q) = &before.queried {
        assert_eq!(
            q, &applied.response,
            "query and apply disagree on a read-only txn"
        );
    }
    check_money(&before, state, request);
    check_transfer_once(ledger, request, &applied.response, data_changed);
    check_idempotency(
        &before,
        request,
        &applied,
        data_changed,
        state.meta.clock_ms,
    );
    check_sizes(request, applied, state.meta.revision);
}

/// The revision grows by at most one, and exactly when data changed; the replicated clock never
/// goes back, and once it started moves by at most a bounded step.
fn check_revision_and_clock(before: &Before, after: SmMeta, data_changed: bool) {
    assert!(
        after.revision == before.meta.revision + u64::from(data_changed),
        "revision {} -> {} with data changed: {data_changed}",
        before.meta.revision,
        after.revision
    );
    assert!(
        after.clock_ms >= before.meta.clock_ms,
        "the clock went back"
    );
    if before.meta.clock_ms != 0 {
        assert!(after.clock_ms - before.meta.clock_ms <= limits::CLOCK_STEP_MS_MAX);
    }
}

/// Only a created account adds to the sum of balances, by its balance; nothing else changes it.
fn check_money(before: &Before, after: &MemState, request: &Request) {
    let created = match &request.command {
        Command::CreateAccount { id, balance }
            if !before.account_existed && after.accounts.contains_key(id) =>
        {
            u128::from(*balance)
        }
        _ => 0,
    };
    assert_eq!(
        after.total(),
        before.total + created,
        "the sum of balances changed by more than the accounts created"
    );
}

/// A transfer id applies once, ever; a repeat answers the first answer, or a conflict when its
/// body differs.
fn check_transfer_once(
    ledger: &mut Ledger,
    request: &Request,
    response: &Response,
    data_changed: bool,
) {
    let Command::Transfer(t) = &request.command else {
        return;
    };
    match ledger.transfers.get(&t.id) {
        Some((first, first_response)) => {
            assert!(!data_changed, "transfer {} applied twice", t.id);
            if first == t {
                assert_eq!(
                    response, first_response,
                    "a repeated transfer answered anew"
                );
            } else {
                assert!(matches!(
                    response,
                    Err(Rejection::IdempotencyConflict { .. })
                ));
            }
        }
        None => {
            ledger
                .transfers
                .insert(t.id.clone(), (t.clone(), response.clone()));
        }
    }
}

/// An idempotency key with a live record answers from it and changes nothing; a dedup record is
/// removed only once it is older than the retention period, and only an expiring one.
fn check_idempotency(
    before: &Before,
    request: &Request,
    applied: &state_machine::Applied,
    data_changed: bool,
    clock_ms: u64,
) {
    let deleted: BTreeSet<&DedupKey> = applied
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::DeleteDedup { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    for key in &deleted {
        assert!(key.expires(), "a transfer outcome was removed");
        let recorded_ms = before.recorded_ms[*key];
        assert!(
            clock_ms
                .checked_sub(recorded_ms)
                .is_some_and(|age| age >= limits::DEDUP_RETENTION_MS),
            "a dedup record recorded at {recorded_ms} ms expired at {clock_ms} ms"
        );
    }
    let keyed = !matches!(
        request.command,
        Command::Transfer(_) | Command::RecordStorage { .. }
    );
    let (Some(first), Some(key), true) = (&before.idem_record, &request.idempotency_key, keyed)
    else {
        return;
    };
    if deleted.contains(&DedupKey::Idempotency(key.clone())) {
        return;
    }
    assert!(!data_changed, "idempotency key {key} applied twice");
    if first.fingerprint == state_machine::fingerprint(&request.command) {
        assert_eq!(applied.response, first.response, "a retry answered anew");
    } else {
        assert!(matches!(
            applied.response,
            Err(Rejection::IdempotencyConflict { .. })
        ));
    }
}

/// The request fits the largest log entry; its answer fits a peer frame on its way back from
/// the leader; every version written is the new revision; every record fits a snapshot record.
fn check_sizes(request: &Request, applied: state_machine::Applied, revision: u64) {
    let encoded_request = postcard::to_allocvec(request).expect("a request encodes");
    assert!(encoded_request.len() <= limits::REQUEST_ENCODED_BYTES_MAX);
    let answer = postcard::to_allocvec(&applied.response).expect("an answer encodes");
    assert!(
        answer.len() <= limits::ANSWER_ENCODED_BYTES_MAX,
        "an answer of {} bytes",
        answer.len()
    );
    for change in applied.changes {
        if let Change::PutKv { record, .. } = &change {
            assert_eq!(record.version, revision);
        }
        for op in storage::state::ops(change) {
            if let storage::state::Op::Put(key, value) = op {
                let size = key.len() + value.len() + 8;
                assert!(
                    size <= limits::SNAPSHOT_RECORD_BYTES_MAX,
                    "a record of {size} bytes"
                );
            }
        }
    }
}

/// Turns bytes into requests. Each request takes an opcode byte, a stamp byte, an
/// idempotency-key byte and its fields; running out of bytes ends the sequence. Values are
/// small or of the largest size, and at most [`BIG_VALUES_MAX`] large ones per input, so a run
/// stays fast while the record and answer budgets are still reached.
struct Decoder<'a> {
    data: &'a [u8],
    /// The last leader stamp handed out.
    stamp_ms: u64,
    big_values: usize,
    requests: usize,
}

/// Most values of (nearly) [`limits::VALUE_BYTES_MAX`] one input decodes to: enough for gets of
/// five of them to pass the txn answer budget, few enough to keep a run in milliseconds.
const BIG_VALUES_MAX: usize = 5;
/// Most requests one input decodes to (a tick makes many); a day of ticks and then some.
const REQUESTS_MAX: usize = 1024;
/// Most requests one tick makes.
const TICK_REQUESTS_MAX: u8 = 160;

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            stamp_ms: 1_000_000,
            big_values: 0,
            requests: 0,
        }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.byte()?);
        }
        Some(v)
    }

    /// The next requests (one, or a tick's many), or `None` at the end of the input.
    fn next_requests(&mut self) -> Option<Vec<Request>> {
        if self.requests >= REQUESTS_MAX {
            return None;
        }
        let op = self.byte()?;
        let leader_time_ms = self.stamp()?;
        let idempotency_key = self.idempotency_key()?;
        let command = match op % 7 {
            0 => Command::Put {
                key: self.key()?,
                value: self.value(&mut 0)?,
                condition: self.condition()?,
            },
            1 => Command::Delete {
                key: self.key()?,
                condition: self.condition()?,
            },
            2 => Command::Txn(self.txn()?),
            3 => Command::CreateAccount {
                id: self.account()?,
                balance: self.amount()?,
            },
            4 => Command::Transfer(Transfer {
                id: self.transfer_id()?,
                from: self.account()?,
                to: self.account()?,
                amount: self.amount()?,
            }),
            5 => Command::RecordStorage {
                node: u64::from(self.byte()? % 4),
                storage_id: u64::from(self.byte()? % 3),
            },
            _ => return self.tick(),
        };
        self.requests += 1;
        Some(vec![Request {
            leader_time_ms,
            idempotency_key,
            command,
        }])
    }

    /// Many entries, each a step of the largest size forward in time: a day passes in a few
    /// bytes, so the fuzzer reaches dedup expiry.
    fn tick(&mut self) -> Option<Vec<Request>> {
        let n = usize::from(self.byte()? % TICK_REQUESTS_MAX + 1).min(REQUESTS_MAX - self.requests);
        self.requests += n;
        let out = (0..n)
            .map(|_| {
                self.stamp_ms = self.stamp_ms.saturating_add(limits::CLOCK_STEP_MS_MAX);
                Request {
                    leader_time_ms: self.stamp_ms,
                    idempotency_key: None,
                    command: Command::RecordStorage {
                        node: 9,
                        storage_id: 9,
                    },
                }
            })
            .collect();
        Some(out)
    }

    fn stamp(&mut self) -> Option<u64> {
        let b = self.byte()?;
        let s = self.stamp_ms;
        self.stamp_ms = match b {
            0..=199 => s.saturating_add(u64::from(b)),
            200..=219 => s.saturating_sub(u64::from(b - 199) * 60_000),
            220..=239 => s.saturating_add(u64::from(b - 219) * limits::CLOCK_STEP_MS_MAX),
            240..=249 => s.saturating_add(limits::DEDUP_RETENTION_MS),
            250 => 0,
            251 => u64::MAX,
            _ => self.u64()?,
        };
        Some(self.stamp_ms)
    }

    fn idempotency_key(&mut self) -> Option<Option<String>> {
        Some(match self.byte()? % 8 {
            0..=3 => None,
            7 => Some("i".repeat(limits::IDEMPOTENCY_KEY_BYTES_MAX)),
            n => Some(format!("i{n}")),
        })
    }

    fn key(&mut self) -> Option<String> {
        Some(match self.byte()? % 5 {
            0 => "a".into(),
            1 => "b".into(),
            2 => "c".into(),
            n => (if n == 3 { "x" } else { "y" }).repeat(limits::KEY_BYTES_MAX),
        })
    }

    /// A value; `txn_bytes` counts the values of one txn against its budget, and a large value
    /// that would pass the budget (or the per-input cap) becomes a small one.
    fn value(&mut self, txn_bytes: &mut usize) -> Option<Vec<u8>> {
        let b = self.byte()?;
        // Large values are rare: each costs milliseconds (copies, encodings, fingerprints).
        let len = match b {
            0..=31 => 0,
            32..=191 => 1,
            192..=249 => usize::from(self.byte()?),
            250..=252 => limits::VALUE_BYTES_MAX,
            _ => limits::VALUE_BYTES_MAX - usize::from(self.byte()?) * 1024,
        };
        let big = len > 255;
        let len = if big
            && (self.big_values >= BIG_VALUES_MAX || *txn_bytes + len > limits::TXN_VALUE_BYTES_MAX)
        {
            1
        } else {
            len
        };
        if len > 255 {
            self.big_values += 1;
        }
        *txn_bytes += len;
        Some(vec![b'a' + b % 3; len])
    }

    fn condition(&mut self) -> Option<Condition> {
        Some(match self.byte()? {
            0..=127 => Condition::Always,
            128..=159 => Condition::IfAbsent,
            b => Condition::IfVersion(u64::from(b % 16)),
        })
    }

    fn txn(&mut self) -> Option<Txn> {
        let mut txn_bytes = 0;
        let shape = self.byte()?;
        let mut compare = Vec::new();
        for _ in 0..shape % 4 {
            let key = self.key()?;
            let op = [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Gt]
                [usize::from(self.byte()? % 4)];
            let target = match self.byte()? % 3 {
                0 => CompareTarget::Version(u64::from(self.byte()? % 8)),
                1 => CompareTarget::Value(self.value(&mut txn_bytes)?),
                _ => CompareTarget::Exists(self.byte()? % 2 == 0),
            };
            compare.push(Compare { key, op, target });
        }
        let mut branch = |n: u8, d: &mut Self| -> Option<Vec<TxnOp>> {
            let mut ops = Vec::new();
            for _ in 0..n {
                let key = d.key()?;
                ops.push(match d.byte()? % 3 {
                    0 => TxnOp::Put {
                        key,
                        value: d.value(&mut txn_bytes)?,
                    },
                    1 => TxnOp::Delete { key },
                    _ => TxnOp::Get { key },
                });
            }
            Some(ops)
        };
        let success = branch(shape / 4 % 8, self)?;
        let failure = branch(shape / 32, self)?;
        Some(Txn {
            compare,
            success,
            failure,
        })
    }

    fn account(&mut self) -> Option<String> {
        Some(match self.byte()? % 5 {
            0 => "x".into(),
            1 => "y".into(),
            2 => "z".into(),
            3 => "w".into(),
            _ => "a".repeat(limits::ID_BYTES_MAX),
        })
    }

    fn transfer_id(&mut self) -> Option<String> {
        Some(match self.byte()? % 9 {
            8 => "t".repeat(limits::ID_BYTES_MAX),
            n => format!("t{n}"),
        })
    }

    fn amount(&mut self) -> Option<u64> {
        let b = self.byte()?;
        Some(match b % 6 {
            0 => 0,
            1 | 2 => u64::from(b / 6),
            3 => u64::MAX,
            4 => u64::MAX / 2 + 1,
            _ => self.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks are not vacuous: a broken invariant makes them panic.
    #[test]
    fn the_checks_catch_a_broken_invariant() {
        // A ledger whose first answer for a transfer is forged: the repeat then differs, and the
        // check must say so.
        let mut state = MemState::default();
        let mut ledger = Ledger::default();
        let t = Transfer {
            id: "t".into(),
            from: "x".into(),
            to: "y".into(),
            amount: 1,
        };
        ledger
            .transfers
            .insert("t".into(), (t.clone(), Ok(state_machine::Success::Noop)));
        let request = Request {
            leader_time_ms: 1,
            idempotency_key: None,
            command: Command::Transfer(t),
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_step(&mut state, &mut ledger, &request)
        }));
        assert!(caught.is_err(), "a forged first answer went unnoticed");
    }
}
