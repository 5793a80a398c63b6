//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/`) and every regression case
//! (`fuzz/regressions/<target>/`) through its target in `metrokv_node::fuzzing`, on stable Rust,
//! as part of `cargo test --workspace`. CI never fuzzes; this is how the inputs fuzzing found
//! keep being checked. A panic in a target fails the test; so does a valid seed (`ok-*`) that
//! its target refuses, a target without a corpus, or a directory that names no target.

use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use metrokv_node::fuzzing;
use metrokv_node::fuzzing::Outcome;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files in `dir`, sorted; none when it does not exist (a target without regressions).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_and_regression_file_runs_through_its_target() {
    let started = Instant::now();
    let mut ran = 0;
    for (name, target) in fuzzing::TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            corpus.iter().any(|p| file_name(p).starts_with("ok-")),
            "fuzz/corpus/{name} has no valid seeds (ok-*)"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(path).expect("read a corpus file");
            // A panic here is a regression: the message names the file.
            let outcome = std::panic::catch_unwind(|| target(&bytes))
                .unwrap_or_else(|_| panic!("{name} panicked on {}", path.display()));
            if file_name(path).starts_with("ok-") {
                assert_eq!(
                    outcome,
                    Outcome::Accepted,
                    "{name} refused the valid seed {}",
                    path.display()
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= fuzzing::TARGETS.len());
    println!(
        "replayed {ran} corpus and regression files in {} ms",
        started.elapsed().as_millis()
    );
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Every directory under corpus/ and regressions/, and every cargo-fuzz target, names a
/// target, and every target has its cargo-fuzz file: a renamed target cannot leave its corpus
/// or its regressions silently unreplayed.
#[test]
fn the_fuzz_tree_matches_the_targets() {
    let known = |name: &str| fuzzing::target(name).is_some();
    for sub in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(sub)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                assert!(
                    known(file_name(&path)),
                    "fuzz/{sub}/{} names no target",
                    file_name(&path)
                );
            }
        }
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in fuzzing::TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let source = std::fs::read_to_string(&file).expect("a cargo-fuzz target file");
        assert!(
            source.contains(&format!("fuzzing::{name}(")),
            "{} does not call fuzzing::{name}",
            file.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
