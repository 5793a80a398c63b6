//! `test.json`: everything besides the history that a check needs, so that
//! `metrokv-jepsen check DIR` can re-check a run offline.
//!
//! Owns: [`TestRecord`] (workload, seed, options, topology, fault schedule, and the workload's
//! initial and final data) and reading/writing it.
//!
//! Invariants: `format` is [`TEST_RECORD_FORMAT`]; a reader refuses other versions rather than
//! misreading them. Unknown fields are ignored, so the runner may add options without breaking
//! old checkers. The bank section holds exactly what `checker::bank` needs.
//!
//! Leaves out: the node logs and the history (their own files).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::bank::{BankInput, BankMode, FinalRead, TransferOutcome};
use crate::nemesis::{FaultInterval, KillStep, NemesisKind, Topology};

/// The version of the `test.json` layout this code writes and reads (2: a list of workloads,
/// the kill loop).
pub const TEST_RECORD_FORMAT: u32 = 2;

/// The largest `test.json` accepted, in bytes (it holds one outcome per transfer).
pub const TEST_RECORD_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Which workload ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Bank,
    Register,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Bank => "bank",
            Workload::Register => "register",
        }
    }

    /// `bank`, `register` or `bank,register`.
    pub fn list(workloads: &[Workload]) -> String {
        let names: Vec<&str> = workloads.iter().map(|w| w.as_str()).collect();
        names.join(",")
    }
}

/// The run's command-line options, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub nodes: usize,
    pub time_limit_s: u64,
    /// Target ops per second over all clients.
    pub rate: f64,
    pub concurrency: usize,
    #[serde(default)]
    pub nemeses: Vec<NemesisKind>,
    /// The other flags and facts of the run (mode, latencies, timeouts, harness lag), as text:
    /// enough to reproduce it, not needed to check it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// The bank workload's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankRecord {
    pub mode: BankMode,
    /// Balances created before the first op; their sum is the invariant total.
    pub initial_balances: BTreeMap<String, u64>,
    /// One consistent read of all balances after healing and settling; None when the harness
    /// could not take it (the final-state checks are then Unknown).
    #[serde(default)]
    pub final_read: Option<FinalRead>,
    /// `GET /v1/transfers/{id}` after settling, for the transfer ids the runner could query.
    #[serde(default)]
    pub transfer_outcomes: BTreeMap<String, TransferOutcome>,
}

impl BankRecord {
    /// The checker's view of this record.
    pub fn input(&self) -> BankInput<'_> {
        BankInput {
            mode: self.mode,
            initial: &self.initial_balances,
            final_read: self.final_read.as_ref(),
            outcomes: &self.transfer_outcomes,
        }
    }
}

/// One key's final read, taken after settling (also recorded in the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFinalRead {
    /// Index of the read's invoke in the history.
    pub op: u64,
    /// What it returned (None: absent).
    pub value: Option<u64>,
}

/// The register workload's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRecord {
    pub keys: Vec<String>,
    /// Every key's value before the first op (None: absent).
    #[serde(default)]
    pub initial: Option<u64>,
    /// The final read of every key, by key; empty until the final-read phase ran.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub final_reads: BTreeMap<String, RegisterFinalRead>,
}

/// The whole of `test.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    pub format: u32,
    /// What the clients did; with several, the workers are split between them and each has
    /// its own checker.
    pub workloads: Vec<Workload>,
    pub seed: u64,
    pub options: RunOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
    pub topology: Topology,
    /// The planned faults (the applied ones are nemesis ops in the history).
    #[serde(default)]
    pub schedule: Vec<FaultInterval>,
    /// The planned kills of `--kill-loop` (instead of a timed schedule); the checkers count how
    /// many happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kill_loop: Vec<KillStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<BankRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterRecord>,
}

/// Why `test.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {TEST_RECORD_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: format {found}, this checker reads format {TEST_RECORD_FORMAT}")]
    Format { path: String, found: u32 },
}

impl TestRecord {
    pub fn read(path: &Path) -> Result<Self, RecordError> {
        let display = path.display().to_string();
        let io = |source| RecordError::Io {
            path: display.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > TEST_RECORD_BYTES_MAX {
            return Err(RecordError::TooLarge { path: display });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let record: TestRecord =
            serde_json::from_str(&text).map_err(|source| RecordError::Json {
                path: display.clone(),
                source,
            })?;
        if record.format != TEST_RECORD_FORMAT {
            return Err(RecordError::Format {
                path: display,
                found: record.format,
            });
        }
        Ok(record)
    }

    /// Writes pretty JSON (people read this file).
    pub fn write(&self, path: &Path) -> Result<(), RecordError> {
        let display = path.display().to_string();
        let text = serde_json::to_string_pretty(self).map_err(|source| RecordError::Json {
            path: display.clone(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|source| RecordError::Io {
            path: display,
            source,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::Balances;
    use crate::nemesis::{schedule, ScheduleOptions};

    pub(crate) fn bank_record() -> TestRecord {
        let topology = Topology::default_for(3).expect("topology");
        let nemeses = vec![NemesisKind::PartitionZones, NemesisKind::Kill];
        let plan = schedule(
            &topology,
            &nemeses,
            &ScheduleOptions::for_time_limit(30_000),
            9,
        )
        .expect("schedule");
        let initial: BTreeMap<String, u64> = [("a".to_owned(), 10), ("b".to_owned(), 10)].into();
        let final_balances: Balances = [("a".to_owned(), 5), ("b".to_owned(), 15)].into();
        TestRecord {
            format: TEST_RECORD_FORMAT,
            workloads: vec![Workload::Bank],
            seed: 9,
            options: RunOptions {
                nodes: 3,
                time_limit_s: 30,
                rate: 50.0,
                concurrency: 4,
                nemeses,
                settings: BTreeMap::new(),
            },
            git_sha: None,
            topology,
            schedule: plan,
            kill_loop: Vec::new(),
            bank: Some(BankRecord {
                mode: BankMode::Transfers,
                initial_balances: initial,
                final_read: Some(FinalRead {
                    balances: final_balances,
                    node: Some("n1".to_owned()),
                }),
                transfer_outcomes: [("t1".to_owned(), TransferOutcome::Committed)].into(),
            }),
            register: None,
        }
    }

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.json");
        let record = bank_record();
        record.write(&path).expect("write");
        assert_eq!(TestRecord::read(&path).expect("read"), record);

        let mut other = record.clone();
        other.format = TEST_RECORD_FORMAT + 1;
        other.write(&path).expect("write");
        assert!(matches!(
            TestRecord::read(&path),
            Err(RecordError::Format { .. })
        ));
        assert!(matches!(
            TestRecord::read(&dir.path().join("missing.json")),
            Err(RecordError::Io { .. })
        ));
    }
}
