//! Tests of the pure state machine: golden scripts (commands in, answers and a state dump out)
//! and property tests of the ledger invariants over random command sequences.
//!
//! `MemState` is an in-memory [`StateView`] used only here: the state machine is pure, so its
//! logic is tested without RocksDB. Storage has its own tests against real RocksDB.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemState {
    meta: SmMeta,
    kv: BTreeMap<String, KvRecord>,
    accounts: BTreeMap<String, AccountRecord>,
    dedup: BTreeMap<DedupKey, DedupRecord>,
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
    fn oldest_dedup(&self, limit: usize) -> Result<Vec<(u64, DedupKey)>, Infallible> {
        let mut all: Vec<_> = self
            .dedup
            .iter()
            .map(|(k, r)| (r.recorded_ms, k.clone()))
            .collect();
        all.sort();
        all.truncate(limit);
        Ok(all)
    }
}

impl MemState {
    fn write(&mut self, changes: Vec<Change>) {
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
            }
        }
    }

    fn run(&mut self, request: &Request) -> Response {
        let Ok(applied) = apply(self, request);
        self.write(applied.changes);
        applied.response
    }

    fn total(&self) -> u128 {
        self.accounts.values().map(|a| u128::from(a.balance)).sum()
    }

    fn dump(&self) -> String {
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

fn req(t: u64, idem: Option<&str>, command: Command) -> Request {
    Request {
        leader_time_ms: t,
        idempotency_key: idem.map(str::to_string),
        command,
    }
}

fn put(key: &str, value: &str, condition: Condition) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        condition,
    }
}

fn xfer(id: &str, from: &str, to: &str, amount: u64) -> Command {
    Command::Transfer(Transfer {
        id: id.into(),
        from: from.into(),
        to: to.into(),
        amount,
    })
}

fn acct(id: &str, balance: u64) -> Command {
    Command::CreateAccount {
        id: id.into(),
        balance,
    }
}

// ---------------------------------------------------------------------------------------------
// Golden scripts: node/src/state_machine/testscripts/*.txt hold lines of commands, each followed
// by the answer it must produce, and end with the state dump. Set METROKV_UPDATE_GOLDEN=1 to
// rewrite them after an intended change (then review the diff).

fn parse_line(line: &str) -> Request {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let mut t = 0;
    let mut idem = None;
    while let Some(w) = words.first() {
        if let Some(v) = w.strip_prefix("t=") {
            t = v.parse().expect("t=<ms>");
        } else if let Some(v) = w.strip_prefix("idem=") {
            idem = Some(v);
        } else {
            break;
        }
        words.remove(0);
    }
    let cond = |w: Option<&&str>| match w {
        None => Condition::Always,
        Some(&"ifabsent") => Condition::IfAbsent,
        Some(w) => Condition::IfVersion(
            w.strip_prefix("if=")
                .expect("if=<version>")
                .parse()
                .expect("version"),
        ),
    };
    let num = |w: &str| w.parse::<u64>().expect("number");
    let command = match words.as_slice() {
        ["put", k, v, rest @ ..] => put(k, v, cond(rest.first())),
        ["del", k, rest @ ..] => Command::Delete {
            key: k.to_string(),
            condition: cond(rest.first()),
        },
        ["acct", id, bal] => acct(id, num(bal)),
        ["xfer", id, from, to, amount] => xfer(id, from, to, num(amount)),
        ["cas", k, expected, new] => Command::Txn(Txn {
            compare: vec![Compare {
                key: k.to_string(),
                op: CompareOp::Eq,
                target: CompareTarget::Value(expected.as_bytes().to_vec()),
            }],
            success: vec![TxnOp::Put {
                key: k.to_string(),
                value: new.as_bytes().to_vec(),
            }],
            failure: vec![TxnOp::Get { key: k.to_string() }],
        }),
        other => panic!("unknown script command {other:?}"),
    };
    req(t, idem, command)
}

fn run_script(script: &str) -> String {
    let mut state = MemState::default();
    let mut out = String::new();
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("->") || line == "state:" {
            if line.starts_with('#') {
                let _ = writeln!(out, "{line}");
            }
            if line == "state:" {
                break;
            }
            continue;
        }
        let response = state.run(&parse_line(line));
        let _ = writeln!(out, "{line}\n-> {response:?}");
    }
    let _ = write!(out, "state:\n{}", state.dump());
    out
}

#[test]
fn golden_scripts() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state_machine/testscripts");
    let update = std::env::var_os("METROKV_UPDATE_GOLDEN").is_some();
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("testscripts dir") {
        let path = entry.expect("dir entry").path();
        let want = std::fs::read_to_string(&path).expect("read script");
        let got = run_script(&want);
        if update {
            std::fs::write(&path, &got).expect("write golden");
        } else {
            assert_eq!(got, want, "golden mismatch in {}", path.display());
        }
        ran += 1;
    }
    assert!(ran >= 3, "expected golden scripts in {}", dir.display());
}

// ---------------------------------------------------------------------------------------------
// Unit tests for the parts scripts do not reach easily.

#[test]
fn txn_ops_see_their_own_writes_and_share_one_revision() {
    let mut s = MemState::default();
    let _ = s.run(&req(1, None, put("a", "1", Condition::Always)));
    let txn = Txn {
        compare: vec![Compare {
            key: "a".into(),
            op: CompareOp::Eq,
            target: CompareTarget::Version(1),
        }],
        success: vec![
            TxnOp::Put {
                key: "b".into(),
                value: b"2".to_vec(),
            },
            TxnOp::Get { key: "b".into() },
            TxnOp::Delete { key: "a".into() },
            TxnOp::Get { key: "a".into() },
        ],
        failure: vec![],
    };
    let r = s.run(&req(2, None, Command::Txn(txn)));
    assert_eq!(
        r,
        Ok(Success::Txn {
            succeeded: true,
            results: vec![
                TxnOpResult::Put { version: 2 },
                TxnOpResult::Get(Some(TxnGot {
                    key: "b".into(),
                    value: b"2".to_vec(),
                    version: 2
                })),
                TxnOpResult::Delete { deleted: true },
                TxnOpResult::Get(None),
            ],
            revision: 2,
        })
    );
    assert_eq!(s.meta.revision, 2);
}

#[test]
fn txn_failure_branch_and_read_only_txn_keep_revision() {
    let mut s = MemState::default();
    let _ = s.run(&req(1, None, put("a", "1", Condition::Always)));
    let txn = Txn {
        compare: vec![Compare {
            key: "a".into(),
            op: CompareOp::Gt,
            target: CompareTarget::Version(5),
        }],
        success: vec![TxnOp::Put {
            key: "a".into(),
            value: b"x".to_vec(),
        }],
        failure: vec![TxnOp::Get { key: "a".into() }],
    };
    let r = s.run(&req(2, None, Command::Txn(txn)));
    assert!(
        matches!(
            r,
            Ok(Success::Txn {
                succeeded: false,
                revision: 1,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(s.kv["a"].value, b"1");
}

#[test]
fn txn_refuses_duplicate_writes_and_exists_ordering() {
    let mut s = MemState::default();
    let dup = Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: vec![],
            },
            TxnOp::Delete { key: "a".into() },
        ],
        failure: vec![],
    };
    assert_eq!(
        s.run(&req(1, None, Command::Txn(dup))),
        Err(Rejection::Invalid(Invalid::DuplicateTxnWrite))
    );
    let ordering = Txn {
        compare: vec![Compare {
            key: "a".into(),
            op: CompareOp::Lt,
            target: CompareTarget::Exists(true),
        }],
        success: vec![],
        failure: vec![],
    };
    assert_eq!(
        s.run(&req(1, None, Command::Txn(ordering))),
        Err(Rejection::Invalid(Invalid::ExistsOrdering))
    );
    assert_eq!(s.meta.revision, 0);
    assert!(s.kv.is_empty());
}

#[test]
fn value_compare_with_absent_key_is_false() {
    let absent = None;
    for op in [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Gt] {
        let c = Compare {
            key: "k".into(),
            op,
            target: CompareTarget::Value(b"v".to_vec()),
        };
        assert_eq!(compare_holds(&c, absent), Ok(false));
    }
}

#[test]
fn dedup_records_expire_after_retention_and_clock_never_goes_back() {
    let mut s = MemState::default();
    let _ = s.run(&req(1_000, Some("k1"), put("a", "1", Condition::Always)));
    assert_eq!(s.dedup.len(), 1);
    // A leader with a clock behind does not move the replicated clock back.
    let _ = s.run(&req(500, None, put("b", "1", Condition::Always)));
    assert_eq!(s.meta.clock_ms, 1_000);
    // Just inside the window the record is kept and a retry is answered from it.
    let inside = 1_000 + limits::DEDUP_RETENTION_MS - 1;
    assert_eq!(
        s.run(&req(inside, Some("k1"), put("a", "1", Condition::Always))),
        Ok(Success::Put {
            version: 1,
            revision: 1
        })
    );
    assert_eq!(s.dedup.len(), 1);
    // Past the window the record goes, so the same key applies as a new request.
    let after = 1_000 + limits::DEDUP_RETENTION_MS;
    let _ = s.run(&req(after, None, put("c", "1", Condition::Always)));
    assert!(s.dedup.is_empty());
}

#[test]
fn expiry_is_bounded_per_entry() {
    let mut s = MemState::default();
    let n = limits::DEDUP_EXPIRE_PER_ENTRY_MAX * 2 + 1;
    for i in 0..n {
        let _ = s.run(&req(
            1,
            Some(&format!("k{i}")),
            put("a", "1", Condition::Always),
        ));
    }
    assert_eq!(s.dedup.len(), n);
    let later = 2 + limits::DEDUP_RETENTION_MS;
    let _ = s.run(&req(later, None, put("b", "1", Condition::Always)));
    assert_eq!(s.dedup.len(), n - limits::DEDUP_EXPIRE_PER_ENTRY_MAX);
}

#[test]
fn fingerprint_is_stable_across_builds() {
    // A fixed expectation: if this changes, stored dedup records stop matching their retries.
    let f = fingerprint(&put("key", "value", Condition::Always));
    assert_eq!(f, fingerprint(&put("key", "value", Condition::Always)));
    assert_ne!(f, fingerprint(&put("key", "value2", Condition::Always)));
    assert_eq!(
        f, 0xbb3b_ada4_f2af_9851_u64,
        "fingerprint of a fixed command changed: {f:#x}"
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests: random command sequences over a few keys and accounts.

fn arb_command() -> impl Strategy<Value = (u64, Option<String>, Command)> {
    let key = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
    let account = prop::sample::select(vec!["x", "y", "z", "w"]).prop_map(str::to_string);
    let transfer_id = (0u8..12).prop_map(|i| format!("t{i}"));
    let idem = prop::option::of((0u8..8).prop_map(|i| format!("i{i}")));
    let condition = prop_oneof![
        Just(Condition::Always),
        Just(Condition::IfAbsent),
        (0u64..6).prop_map(Condition::IfVersion),
    ];
    let command = prop_oneof![
        (key.clone(), "[a-c]{0,3}", condition.clone()).prop_map(|(key, v, condition)| {
            Command::Put {
                key,
                value: v.into_bytes(),
                condition,
            }
        }),
        (key.clone(), condition).prop_map(|(key, condition)| Command::Delete { key, condition }),
        (account.clone(), 0u64..100)
            .prop_map(|(id, balance)| Command::CreateAccount { id, balance }),
        (transfer_id, account.clone(), account, 0u64..60).prop_map(|(id, from, to, amount)| {
            Command::Transfer(Transfer {
                id,
                from,
                to,
                amount,
            })
        }),
        (key.clone(), 0u64..6, key).prop_map(|(k, v, k2)| Command::Txn(Txn {
            compare: vec![Compare {
                key: k.clone(),
                op: CompareOp::Eq,
                target: CompareTarget::Version(v)
            }],
            success: vec![
                TxnOp::Put {
                    key: k,
                    value: b"t".to_vec()
                },
                TxnOp::Get { key: k2.clone() }
            ],
            failure: vec![TxnOp::Delete { key: k2 }],
        })),
    ];
    (0u64..3, idem, command)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ledger_invariants_hold(steps in prop::collection::vec(arb_command(), 1..80)) {
        let mut s = MemState::default();
        let mut created: u128 = 0;
        let mut clock = 0u64;
        let mut first_transfer: BTreeMap<String, (Transfer, Response)> = BTreeMap::new();
        let mut first_idem: BTreeMap<String, (Command, Response)> = BTreeMap::new();
        for (dt, idem, command) in steps {
            clock += dt;
            let before = s.clone();
            let request = req(clock, idem.as_deref(), command.clone());
            let response = s.run(&request);

            // The revision moves by at most one, and only when data changed.
            prop_assert!(s.meta.revision == before.meta.revision || s.meta.revision == before.meta.revision + 1);
            if s.meta.revision == before.meta.revision {
                prop_assert_eq!(&s.kv, &before.kv);
                prop_assert_eq!(&s.accounts, &before.accounts);
            }
            prop_assert!(s.meta.clock_ms >= before.meta.clock_ms);

            match (&command, &response) {
                // A repeat answered from the dedup record creates nothing.
                (Command::CreateAccount { id, balance }, Ok(_)) if !before.accounts.contains_key(id) => {
                    created += u128::from(*balance)
                }
                (Command::Transfer(t), _) => {
                    // A repeated transfer id applies once and answers the first answer.
                    if let Some((first, first_response)) = first_transfer.get(&t.id) {
                        if first == t {
                            prop_assert_eq!(&response, first_response);
                        } else {
                            let conflict = matches!(response, Err(Rejection::IdempotencyConflict { .. }));
                            prop_assert!(conflict);
                        }
                        prop_assert_eq!(&s.accounts, &before.accounts);
                    } else {
                        first_transfer.insert(t.id.clone(), (t.clone(), response.clone()));
                    }
                }
                _ => {}
            }
            if let (Some(key), false) = (&idem, matches!(command, Command::Transfer(_))) {
                if let Some((first, first_response)) = first_idem.get(key) {
                    if *first == command {
                        prop_assert_eq!(&response, first_response);
                    }
                    prop_assert_eq!(&s.kv, &before.kv);
                    prop_assert_eq!(&s.accounts, &before.accounts);
                } else {
                    first_idem.insert(key.clone(), (command.clone(), response.clone()));
                }
            }
            // Money is neither created nor destroyed by anything but account creation.
            prop_assert_eq!(s.total(), created);
            // Every stored version is a revision that happened.
            for r in s.kv.values() {
                prop_assert!(r.version >= 1 && r.version <= s.meta.revision);
            }
        }
    }

    /// Applying the same log to two copies gives the same state: no hidden input.
    #[test]
    fn apply_is_deterministic(steps in prop::collection::vec(arb_command(), 1..60), split in 0usize..60) {
        let requests: Vec<Request> = steps.iter().scan(0, |t, (dt, idem, c)| {
            *t += dt;
            Some(req(*t, idem.as_deref(), c.clone()))
        }).collect();
        let mut a = MemState::default();
        let mut answers_a = Vec::new();
        for r in &requests {
            answers_a.push(a.run(r));
        }
        // A replica that starts from a copy taken part-way (a snapshot) and applies the rest.
        let split = split.min(requests.len());
        let mut b = MemState::default();
        for r in &requests[..split] {
            let _ = b.run(r);
        }
        let mut snapshot = b.clone();
        for (r, want) in requests[split..].iter().zip(&answers_a[split..]) {
            prop_assert_eq!(&snapshot.run(r), want);
        }
        prop_assert_eq!(snapshot, a);
    }
}

/// The state machine stays pure: no runtime, storage, consensus, clock or randomness in it.
#[test]
fn the_state_machine_imports_no_io_clock_or_randomness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state_machine");
    for file in ["mod.rs", "types.rs"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("read source");
        for forbidden in [
            "tokio",
            "rocksdb",
            "openraft",
            "std::time",
            "rand",
            "SystemTime",
            "Instant",
            "std::fs",
            "std::net",
            "crate::storage",
            "crate::raft",
        ] {
            let used = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(forbidden));
            assert!(!used, "state_machine/{file} mentions {forbidden}");
        }
    }
}
