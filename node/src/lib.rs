//! metrokv-node: a Raft-replicated, strongly consistent key-value and balance store.
//!
//! Dependencies point one way: `api` → `service` → `raft`/`transport` → `storage` →
//! `state_machine`. The state machine is pure; storage is RocksDB; openraft is assembled in
//! `raft`; peers talk over `transport`; `api` is the HTTP contract of `docs/api.md`;
//! `node` starts it all. `clock` is the leader's bounded clock for the replicated time,
//! `failpoint` the fault injection the fault tests use, `limits` every bound. `fuzzing` holds
//! the fuzz targets (for `fuzz/`, `metrokv-fuzz` and the corpus test); it is not an API.

pub mod api;
pub mod clock;
pub mod config;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod service;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;

/// The modules depend on each other one way, as the README draws them: each may use only
/// modules of a lower layer. Checked on the source, so a new import that points up fails here.
#[cfg(test)]
mod layering {
    /// Lowest first. `raft::types` is the Raft vocabulary storage and transport implement;
    /// `raft` (its `mod.rs`) assembles openraft over storage.
    const LAYERS: &[&[&str]] = &[
        &["limits", "tls"],
        &["state_machine"],
        &["raft::types", "failpoint"],
        &["clock", "config", "metrics"],
        &["storage"],
        &["transport"],
        &["raft"],
        &["service"],
        &["api"],
        &["node"],
        // The fuzz targets drive the parsers of every layer below.
        &["fuzzing"],
    ];

    fn layer(module: &str) -> usize {
        LAYERS
            .iter()
            .position(|l| l.contains(&module))
            .unwrap_or_else(|| panic!("module {module} has no layer: add it to LAYERS"))
    }

    /// The module a `crate::...` path names.
    fn named(path: &str) -> String {
        let mut parts = path.split("::");
        let first = parts.next().unwrap_or_default();
        match (first, parts.next()) {
            ("raft", Some("types")) => "raft::types".into(),
            _ => first.into(),
        }
    }

    fn module_of(file: &std::path::Path, src: &std::path::Path) -> String {
        let rel = file.strip_prefix(src).unwrap();
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        match parts.as_slice() {
            ["raft", "types.rs"] => "raft::types".into(),
            [dir, ..] if parts.len() > 1 => dir.to_string(),
            [file] => file.trim_end_matches(".rs").into(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn dependencies_point_one_way() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut checked = 0;
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap();
            if name.contains("test") || name == "lib.rs" || file.starts_with(src.join("bin")) {
                continue;
            }
            let me = module_of(&file, &src);
            let text = std::fs::read_to_string(&file).unwrap();
            // Test modules at the end of a file may reach across layers.
            let body = text.split("#[cfg(test)]").next().unwrap();
            for line in body.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let path: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let other = named(&path);
                    if other == me || other.is_empty() {
                        continue;
                    }
                    assert!(
                        layer(&other) < layer(&me),
                        "{} ({me}) uses {other}, which is not below it",
                        file.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 50, "the scan found the imports ({checked})");
    }
}
