//! `metrokv-jepsen`: the command line. For now only `check DIR`, which re-checks a saved run
//! offline.
//!
//! Exit codes (documented in `--help`): 0 the history is valid; 1 anomalies were found; 2 the
//! harness failed (unreadable or malformed files, a history that breaks the op rules) or the
//! checkers could not decide (a budget ran out, the final read is missing). Unknown is never
//! reported as a pass; the message says what was undecided.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use metrokv_jepsen::checker::bank::{BankOptions, SUBSET_STEPS_MAX_DEFAULT};
use metrokv_jepsen::checker::linear::{
    LinearOptions, CACHE_BYTES_MAX_DEFAULT, KEY_STEPS_MAX_DEFAULT, KEY_TIME_BUDGET_MS_DEFAULT,
};
use metrokv_jepsen::checker::{self, CheckOptions, Validity};
use metrokv_jepsen::history::History;
use metrokv_jepsen::record::TestRecord;
use metrokv_jepsen::report;

/// The history is valid.
const EXIT_VALID: u8 = 0;
/// Anomalies were found.
const EXIT_INVALID: u8 = 1;
/// The harness failed, or the result is unknown.
const EXIT_HARNESS: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "metrokv-jepsen",
    version,
    about = "Jepsen-style tests of metrokv",
    after_help = "Exit codes: 0 valid, 1 anomalies found, 2 harness failure or unknown result."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-check a saved run: reads DIR/test.json and DIR/history.jsonl, rewrites
    /// DIR/results.json and DIR/report.html.
    Check {
        dir: PathBuf,
        /// Wall-clock budget of the linearizability search, per key.
        #[arg(long, default_value_t = KEY_TIME_BUDGET_MS_DEFAULT)]
        key_time_budget_ms: u64,
        /// Step budget of the linearizability search, per key.
        #[arg(long, default_value_t = KEY_STEPS_MAX_DEFAULT)]
        key_steps_max: u64,
        /// Step budget of the bank checker's search for indeterminate transfers that explain
        /// the final balances.
        #[arg(long, default_value_t = SUBSET_STEPS_MAX_DEFAULT)]
        subset_steps_max: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check {
            dir,
            key_time_budget_ms,
            key_steps_max,
            subset_steps_max,
        } => {
            let options = CheckOptions {
                bank: BankOptions { subset_steps_max },
                linear: LinearOptions {
                    key_steps_max,
                    key_time_budget_ms,
                    cache_bytes_max: CACHE_BYTES_MAX_DEFAULT,
                },
            };
            check_dir(&dir, &options)
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("metrokv-jepsen: harness error: {error:#}");
            ExitCode::from(EXIT_HARNESS)
        }
    }
}

/// Re-checks `dir` and returns the exit code.
fn check_dir(dir: &Path, options: &CheckOptions) -> anyhow::Result<u8> {
    let record = TestRecord::read(&dir.join(report::TEST_FILE))?;
    let history_path = dir.join(report::HISTORY_FILE);
    let file =
        File::open(&history_path).with_context(|| format!("opening {}", history_path.display()))?;
    let history = History::read_jsonl(BufReader::new(file))
        .with_context(|| format!("reading {}", history_path.display()))?;
    let results = checker::check(&record, &history, options)?;
    report::write_results(dir, &results)?;
    report::write_report(dir, &record, &history, &results)?;
    print!("{}", report::summary(&results));
    Ok(match results.valid {
        Validity::Valid => EXIT_VALID,
        Validity::Invalid => EXIT_INVALID,
        Validity::Unknown => {
            eprintln!(
                "metrokv-jepsen: the result is unknown (see the undecided reasons above); \
                 this is not a pass"
            );
            EXIT_HARNESS
        }
    })
}
