//! `metrokv-fuzz`: a seeded mutation fuzzer on stable Rust, for machines without cargo-fuzz.
//!
//! `run TARGET` takes the corpus files of a target (`fuzz/corpus/TARGET`, plus its regression
//! cases) as seeds and feeds the target (`metrokv_node::fuzzing`) mutated copies of them: bit
//! flips, byte inserts, deletes and replacements, tweaks of what looks like a length field or a
//! JSON number, chunk copies and splices of two inputs, a few stacked per run. It prints the seed
//! first and draws every choice from it, so a seed and the same corpus replay the same inputs.
//! On a panic it saves the input under `fuzz/regressions/TARGET/` and exits with status 1.
//!
//! Left out on purpose: coverage feedback (that is what cargo-fuzz is for). Mutants the target
//! accepts join the in-memory pool, so runs drift towards valid inputs; nothing is written back
//! to the corpus. `seed --out DIR` writes the targets' seed inputs (`fuzzing::seeds`).

use std::panic;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use metrokv_node::fuzzing;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

#[derive(Parser, Debug)]
#[command(about = "Seeded mutation fuzzing of metrokv's input parsers and state machine")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fuzz one target until the time or the run count is used up, or a panic.
    Run {
        /// One of: peer_frame, hello, txn_body, transfer_body, account_body, snapshot_file,
        /// state_machine.
        target: String,
        /// Seed for every random choice; a random one (printed) when absent.
        #[arg(long)]
        seed: Option<u64>,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop after this many runs (whichever of the two limits comes first).
        #[arg(long)]
        runs: Option<u64>,
        /// The fuzz directory holding corpus/ and regressions/.
        #[arg(long, default_value = "fuzz")]
        dir: PathBuf,
        /// Largest input, in bytes (libFuzzer's default).
        #[arg(long, default_value_t = 4096)]
        max_len: usize,
    },
    /// Write every target's seed inputs into OUT/TARGET/.
    Seed {
        #[arg(long, default_value = "fuzz/corpus")]
        out: PathBuf,
    },
}

/// Most accepted mutants kept in the pool, so a long run holds bounded memory.
const POOL_MAX: usize = 4096;
/// Most mutations stacked on one input.
const STACK_MAX: usize = 4;

fn main() -> anyhow::Result<ExitCode> {
    match Args::parse().command {
        Cmd::Seed { out } => {
            seed(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            target,
            seed,
            seconds,
            runs,
            dir,
            max_len,
        } => {
            let seed = seed.unwrap_or_else(|| rand::rng().random());
            println!("seed: {seed}");
            let limits = Limits {
                until: Instant::now() + Duration::from_secs(seconds),
                runs: runs.unwrap_or(u64::MAX),
                max_len,
            };
            run(&target, seed, &dir, &limits)
        }
    }
}

fn seed(out: &Path) -> anyhow::Result<()> {
    let scratch = out.join(".scratch");
    std::fs::create_dir_all(&scratch)?;
    for (name, _) in fuzzing::TARGETS {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        for (file, bytes) in fuzzing::seeds(name, &scratch)? {
            std::fs::write(dir.join(&file), bytes)?;
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

struct Limits {
    until: Instant,
    runs: u64,
    max_len: usize,
}

/// Every file in `dir` (none if it does not exist), sorted so a seed replays the same inputs.
fn read_inputs(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn run(name: &str, seed: u64, dir: &Path, limits: &Limits) -> anyhow::Result<ExitCode> {
    let target = fuzzing::target(name).with_context(|| format!("no target {name:?}"))?;
    let regressions = dir.join("regressions").join(name);
    let mut pool = read_inputs(&dir.join("corpus").join(name))?;
    pool.extend(read_inputs(&regressions)?);
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seeds = pool.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut runs = 0u64;
    let mut accepted = 0u64;
    while runs < limits.runs && Instant::now() < limits.until {
        let mut input = pool[rng.random_range(0..pool.len())].clone();
        for _ in 0..rng.random_range(1..=STACK_MAX) {
            let other = &pool[rng.random_range(0..pool.len())];
            mutate(&mut rng, &mut input, other);
        }
        input.truncate(limits.max_len);
        runs += 1;
        match panic::catch_unwind(|| target(&input)) {
            Ok(fuzzing::Outcome::Accepted) => {
                accepted += 1;
                if pool.len() < POOL_MAX {
                    pool.push(input);
                }
            }
            Ok(fuzzing::Outcome::Refused) => {}
            Err(_) => {
                let path = save_crash(&regressions, &input)?;
                println!(
                    "{name}: runs={runs} accepted={accepted} pool={} crashes=1 saved={}",
                    pool.len(),
                    path.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
    }
    println!(
        "{name}: runs={runs} accepted={accepted} seeds={seeds} pool={} new_corpus=0 crashes=0",
        pool.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Save a crashing input under a name derived from its bytes (FNV-1a), so the same crash is
/// saved once.
fn save_crash(dir: &Path, input: &[u8]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in input {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let path = dir.join(format!("crash-{hash:016x}"));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// Values that sit on the edges parsers get wrong.
const INTERESTING_U32: [u32; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_fffe,
    0xffff_ffff,
];
const INTERESTING_NUMBERS: [&str; 7] = [
    "0",
    "-1",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "1e3",
    "9223372036854775808",
];

/// One random mutation of `input`; `other` is a second pool input for splices.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = rng.random();
        }
        2 => {
            let i = rng.random_range(0..=len);
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            input.drain(i..i + n);
        }
        // A 32-bit big-endian field (frame and snapshot lengths are) nudged or set to an edge.
        4 if len >= 4 => {
            let i = rng.random_range(0..=len - 4);
            let old = u32::from_be_bytes(input[i..i + 4].try_into().expect("4 bytes"));
            let new = match rng.random_range(0..3) {
                0 => old.wrapping_add(rng.random_range(1..=16)),
                1 => old.wrapping_sub(rng.random_range(1..=16)),
                _ => INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())],
            };
            input[i..i + 4].copy_from_slice(&new.to_be_bytes());
        }
        // A single byte read as a length or varint: an edge value.
        5 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
        }
        // A run of ASCII digits (a JSON number) replaced by an edge number.
        6 => {
            if let Some((start, end)) = digit_run(input, rng.random_range(0..=len)) {
                let n = INTERESTING_NUMBERS[rng.random_range(0..INTERESTING_NUMBERS.len())];
                input.splice(start..end, n.bytes());
            }
        }
        // A chunk of the input copied elsewhere in it (repeats fields, lengthens lists).
        7 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            let chunk = input[i..i + n].to_vec();
            let at = rng.random_range(0..=len);
            input.splice(at..at, chunk);
        }
        // A splice: this input's head with the other's tail.
        _ => {
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
    }
}

/// The first run of ASCII digits at or after `from`, as `start..end`.
fn digit_run(input: &[u8], from: usize) -> Option<(usize, usize)> {
    let start = from + input.get(from..)?.iter().position(u8::is_ascii_digit)?;
    let end = start
        + input[start..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(input.len() - start);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_mutations() {
        let mutated = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut input = br#"{"id":"t-1","amount":5000}"#.to_vec();
            for _ in 0..64 {
                mutate(&mut rng, &mut input, b"other input");
            }
            input
        };
        assert_eq!(mutated(7), mutated(7));
        assert_ne!(mutated(7), mutated(8));
    }

    #[test]
    fn mutations_handle_empty_inputs_and_find_numbers() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let mut input = Vec::new();
            mutate(&mut rng, &mut input, b"");
        }
        assert_eq!(digit_run(b"ab12c", 0), Some((2, 4)));
        assert_eq!(digit_run(b"ab12", 3), Some((3, 4)));
        assert_eq!(digit_run(b"ab", 0), None);
        assert_eq!(digit_run(b"ab", 2), None);
    }

    /// A run over a real target reports success and saves nothing; an unknown target is an
    /// error; a crash is saved byte for byte. Runs in a directory of its own, so nothing under
    /// fuzz/ is touched.
    #[test]
    fn a_clean_run_reports_success() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus").join("account_body");
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("ok-a"), br#"{"id":"a","balance":1}"#).unwrap();
        let limits = Limits {
            until: Instant::now() + Duration::from_secs(60),
            runs: 2000,
            max_len: 4096,
        };
        let code = run("account_body", 3, dir.path(), &limits).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(!dir.path().join("regressions").exists());
        assert!(run("no_such_target", 3, dir.path(), &limits).is_err());
        let saved = save_crash(&dir.path().join("regressions"), b"boom").unwrap();
        assert_eq!(std::fs::read(saved).unwrap(), b"boom");
    }
}
