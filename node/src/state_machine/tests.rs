//! Tests of the pure state machine: golden scripts (commands in, answers and a state dump out)
//! and property tests of the ledger invariants over random command sequences.
//!
//! They run on `MemState` (`super::mem`), an in-memory [`StateView`]: the state machine is
//! pure, so its logic is tested without RocksDB. Storage has its own tests against real RocksDB.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proptest::prelude::*;

use super::*;

pub(crate) use super::mem::MemState;

impl MemState {
    /// Apply `request`, keep its changes, and return them (for storage's record-size test).
    pub(crate) fn apply_for_test(&mut self, request: &Request) -> Vec<Change> {
        self.apply(request).changes
    }

    fn run(&mut self, request: &Request) -> Response {
        self.apply(request).response
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

/// Apply filler entries (puts of key `_clock`) stamped `step_ms` apart until the replicated clock
/// reaches `to_ms`.
fn advance_to(s: &mut MemState, to_ms: u64, step_ms: u64) {
    while s.meta.clock_ms < to_ms {
        let stamp = (s.meta.clock_ms + step_ms).min(to_ms);
        let _ = s.run(&req(stamp, None, put("_clock", "", Condition::Always)));
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
    advance_to(&mut s, inside, limits::CLOCK_STEP_MS_MAX);
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

/// Found by the `state_machine` fuzz target (fuzz/regressions/state_machine/crash-92ff…): a
/// first stamp at the end of the clock's range made every idempotency record expire at the next
/// entry, so a retry applied twice.
#[test]
fn a_record_made_at_the_end_of_the_clock_range_is_kept_for_the_retention_period() {
    let mut s = MemState::default();
    let first = s.run(&req(u64::MAX, Some("k1"), put("a", "1", Condition::Always)));
    assert_eq!(s.meta.clock_ms, u64::MAX);
    let retry = s.run(&req(u64::MAX, Some("k1"), put("a", "1", Condition::Always)));
    assert_eq!(retry, first, "the retry must be answered from the record");
    assert_eq!(s.meta.revision, 1, "the retry applied again");
    assert_eq!(s.dedup.len(), 1);
}

#[test]
fn one_stamp_moves_the_clock_by_a_bounded_step_and_never_back() {
    assert_eq!(
        advance_clock(0, 1_700_000_000_000),
        1_700_000_000_000,
        "the first stamp sets it"
    );
    let c = 1_700_000_000_000;
    assert_eq!(advance_clock(c, c + 5), c + 5);
    assert_eq!(advance_clock(c, c - 5), c, "never back");
    let day = 24 * 60 * 60 * 1000;
    assert_eq!(advance_clock(c, c + day), c + limits::CLOCK_STEP_MS_MAX);
    assert_eq!(advance_clock(u64::MAX - 1, u64::MAX), u64::MAX);
}

/// The review's measurement: transfer X committed, then a leader whose clock ran 25 h ahead led
/// for ~60 writes, then X was sent again. Before: the state clock jumped 25 h, X's record
/// expired and X moved the money a second time.
#[test]
fn a_leader_with_a_clock_a_day_ahead_never_makes_a_retry_apply_twice() {
    let mut s = MemState::default();
    let t0 = 1_700_000_000_000;
    let _ = s.run(&req(t0, None, acct("alice", 1_000)));
    let _ = s.run(&req(t0, None, acct("bob", 0)));
    let first = s.run(&req(t0 + 1, None, xfer("X", "alice", "bob", 100)));
    assert!(first.is_ok(), "{first:?}");
    let _ = s.run(&req(
        t0 + 2,
        Some("idem-1"),
        put("k", "v", Condition::Always),
    ));
    let ahead = t0 + 25 * 60 * 60 * 1000;
    for i in 0..60 {
        let _ = s.run(&req(ahead + i, None, put("other", "x", Condition::Always)));
    }
    assert!(s.meta.clock_ms <= t0 + 2 + 60 * limits::CLOCK_STEP_MS_MAX);
    assert_eq!(
        s.run(&req(ahead, None, xfer("X", "alice", "bob", 100))),
        first
    );
    assert_eq!(s.accounts["bob"].balance, 100, "the retry moved nothing");
    let version = s.kv["k"].version;
    let _ = s.run(&req(
        ahead,
        Some("idem-1"),
        put("k", "v", Condition::Always),
    ));
    assert_eq!(
        s.kv["k"].version, version,
        "the idempotent retry applied nothing"
    );
}

#[test]
fn transfer_outcomes_are_kept_for_ever() {
    let mut s = MemState::default();
    let t0 = 1_000_000;
    let _ = s.run(&req(t0, None, acct("a", 10)));
    let _ = s.run(&req(t0, None, acct("b", 0)));
    let first = s.run(&req(t0, None, xfer("t", "a", "b", 4)));
    advance_to(
        &mut s,
        t0 + 3 * limits::DEDUP_RETENTION_MS,
        limits::CLOCK_STEP_MS_MAX,
    );
    assert!(s.dedup.contains_key(&DedupKey::Transfer("t".into())));
    assert_eq!(
        s.run(&req(s.meta.clock_ms, None, xfer("t", "a", "b", 4))),
        first
    );
    assert_eq!(s.accounts["b"].balance, 4);
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

fn get(key: &str) -> TxnOp {
    TxnOp::Get { key: key.into() }
}

/// The review's first defect: a txn reading two ~700 KB values, sent with an idempotency key,
/// stored an answer that no snapshot record could hold. Now the answer has a budget: within it
/// the txn answers in full, past it it is refused whole and changes nothing.
#[test]
fn a_txn_answer_has_a_byte_budget_and_an_over_budget_txn_changes_nothing() {
    let mut s = MemState::default();
    let big = vec![b'x'; 700_000];
    for k in ["a", "b", "c", "d", "e", "f", "g"] {
        let _ = s.run(&req(
            1,
            None,
            Command::Put {
                key: k.into(),
                value: big.clone(),
                condition: Condition::Always,
            },
        ));
    }
    let revision = s.meta.revision;
    let two = Txn {
        compare: vec![],
        success: vec![get("a"), get("b"), put_op("w", "1")],
        failure: vec![],
    };
    let r = s.run(&req(2, Some("two"), Command::Txn(two)));
    assert!(
        matches!(&r, Ok(Success::Txn { results, .. }) if results.len() == 3),
        "{r:?}"
    );
    assert_eq!(s.meta.revision, revision + 1);

    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    let mut ops: Vec<TxnOp> = keys.iter().map(|k| get(k)).collect();
    ops.push(put_op("never", "1"));
    let seven = Txn {
        compare: vec![],
        success: ops,
        failure: vec![],
    };
    let before = s.clone();
    let r = s.run(&req(3, Some("seven"), Command::Txn(seven)));
    assert_eq!(
        r,
        Err(Rejection::AnswerTooLarge {
            bytes: 7 * 700_001,
            max: limits::TXN_ANSWER_BYTES_MAX as u64
        })
    );
    assert_eq!(s.kv, before.kv, "the refused txn wrote nothing");
    assert_eq!(s.meta.revision, before.meta.revision);
}

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

#[test]
fn a_read_only_txn_is_answered_by_query_exactly_as_by_apply() {
    let mut s = MemState::default();
    let _ = s.run(&req(1, None, put("a", "1", Condition::Always)));
    let txn = Txn {
        compare: vec![Compare {
            key: "a".into(),
            op: CompareOp::Eq,
            target: CompareTarget::Value(b"1".to_vec()),
        }],
        success: vec![get("a"), get("missing")],
        failure: vec![get("a")],
    };
    assert!(txn.is_read_only());
    let Ok(queried) = query(&s, &txn);
    let before = s.clone();
    let applied = s.run(&req(2, None, Command::Txn(txn)));
    assert_eq!(queried, applied);
    assert_eq!(s.kv, before.kv);
    assert!(!Txn {
        compare: vec![],
        success: vec![get("a")],
        failure: vec![put_op("a", "2")],
    }
    .is_read_only());
}

#[test]
fn a_storage_id_is_recorded_once_and_a_different_one_is_refused() {
    let mut s = MemState::default();
    let record = |node, storage_id| req(1, None, Command::RecordStorage { node, storage_id });
    assert_eq!(s.run(&record(2, 0xaa)), Ok(Success::Noop));
    assert_eq!(s.run(&record(2, 0xaa)), Ok(Success::Noop));
    assert_eq!(
        s.run(&record(2, 0xbb)),
        Err(Rejection::StorageConflict {
            node: 2,
            recorded: 0xaa
        })
    );
    assert_eq!(s.storage[&2], 0xaa);
    assert_eq!(s.meta.revision, 0, "bookkeeping is not a data revision");
    assert!(s.dedup.is_empty());
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

/// The state machine stays pure: no runtime, storage, consensus, clock or randomness in any file
/// of the module (this test file aside, which names them to forbid them).
#[test]
fn the_state_machine_imports_no_io_clock_or_randomness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state_machine");
    let mut scanned = 0;
    for entry in std::fs::read_dir(&dir).expect("read state_machine dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs")
            || path.file_name().and_then(|n| n.to_str()) == Some("tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        scanned += 1;
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
            "std::io",
            "std::thread",
            "std::env",
            "std::process",
            "crate::storage",
            "crate::raft",
            "crate::service",
            "crate::transport",
            "crate::api",
            "unsafe",
        ] {
            let used = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(forbidden));
            assert!(!used, "{} mentions {forbidden}", path.display());
        }
    }
    assert!(
        scanned >= 2,
        "expected the module's files in {}",
        dir.display()
    );
    // A submodule directory would escape the scan above.
    let subdirs = std::fs::read_dir(&dir)
        .expect("read state_machine dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().is_dir() && e.file_name() != "testscripts")
        })
        .count();
    assert_eq!(
        subdirs, 0,
        "state_machine gained a subdirectory: scan it too"
    );
}

#[test]
fn zone_settings_degrade_and_restore_are_replicated_decisions() {
    let mut s = MemState::default();
    // The default: adaptive, not degraded.
    assert_eq!(s.zones().unwrap(), ZoneRecord::default());
    let settings = |mode, ms| Command::ZoneSettings {
        mode,
        degrade_after_ms: ms,
        preferred_leader_zone: None,
    };
    // A patience out of bounds is refused and changes nothing.
    assert!(matches!(
        s.run(&req(1, None, settings(None, Some(1)))),
        Err(Rejection::Invalid(Invalid::DegradeAfter))
    ));
    assert_eq!(s.zones().unwrap(), ZoneRecord::default());
    // Degrading records when, and from which zone-safe index.
    s.run(&req(1_000, None, settings(None, Some(2_000))))
        .unwrap();
    s.run(&req(
        5_000,
        None,
        Command::ZoneDegrade {
            zone_safe_index: 40,
        },
    ))
    .unwrap();
    let degraded = s.zones().unwrap().degraded.unwrap();
    assert_eq!(degraded.zone_safe_index, 40);
    assert_eq!(degraded.since_ms, 5_000);
    // A second degrade keeps the first moment.
    s.run(&req(
        6_000,
        None,
        Command::ZoneDegrade {
            zone_safe_index: 50,
        },
    ))
    .unwrap();
    assert_eq!(s.zones().unwrap().degraded.unwrap().zone_safe_index, 40);
    s.run(&req(
        7_000,
        None,
        Command::ZoneRestore {
            zone_safe_index: 60,
        },
    ))
    .unwrap();
    assert_eq!(s.zones().unwrap().degraded, None);
    // Strict never degrades, and switching to it ends a degraded period.
    s.run(&req(
        8_000,
        None,
        Command::ZoneDegrade {
            zone_safe_index: 61,
        },
    ))
    .unwrap();
    let answer = s.run(&req(9_000, None, settings(Some(ZoneSafety::Strict), None)));
    assert!(
        matches!(answer, Ok(Success::ZoneSettings(r)) if r.degraded.is_none() && r.degrade_after_ms == 2_000)
    );
    assert!(matches!(
        s.run(&req(
            9_500,
            None,
            Command::ZoneDegrade {
                zone_safe_index: 70
            }
        )),
        Err(Rejection::Invalid(Invalid::NotAdaptive))
    ));
    // A leader preference is set and cleared; a name longer than a zone's is refused.
    let prefer = |zone: &str| Command::ZoneSettings {
        mode: None,
        degrade_after_ms: None,
        preferred_leader_zone: Some(zone.to_string()),
    };
    s.run(&req(9_600, None, prefer("dc-b"))).unwrap();
    assert_eq!(
        s.zones().unwrap().preferred_leader_zone.as_deref(),
        Some("dc-b")
    );
    s.run(&req(9_700, None, prefer(""))).unwrap();
    assert_eq!(s.zones().unwrap().preferred_leader_zone, None);
    assert!(s
        .run(&req(
            9_800,
            None,
            prefer(&"z".repeat(limits::ZONE_BYTES_MAX + 1))
        ))
        .is_err());
    // None of it moves the data revision.
    assert_eq!(s.meta.revision, 0);
}
