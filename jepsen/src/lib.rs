//! metrokv-jepsen: Jepsen-style partition testing of metrokv on one machine.
//!
//! Cluster-free parts (unit-tested on their own):
//! - `history`: the op model, `history.jsonl`, invoke/completion pairing, the recorder.
//! - `checker`: the bank checker, the per-key linearizability checker (WGL), composed results.
//! - `nemesis`: topologies in zones, grudges (which directed links to cut), seeded schedules.
//! - `proxy`: the fault-injecting TCP proxy for one directed link.
//! - `record`: `test.json`, everything besides the history that a re-check needs.
//! - `report`: `results.json`, `report.html`.
//!
//! Parts that run a real cluster:
//! - `cluster`: `metrokv-node` processes (start, kill -9, pause, resume) by pid.
//! - `net`: a proxy per directed link, and the link modes of each network shape; the choice of
//!   network ([`net::TestNet`]).
//! - `netns`: `--net netns`: a network namespace per node, nftables cuts, tc netem (root).
//! - `faults`: the nemesis of `run`: applies and heals the schedule's faults, records them.
//! - `workload`: bank (safe and unsafe) and register ops through the client library.
//! - `runner`: `run` — setup, run, heal, settle, final reads, check, report.
//! - `progress`: the progress line (phase, elapsed, op counts, current fault).
//! - `scenario`: `scenario double-spend` — the motivating story, scripted.
//!

pub mod balance_keys;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod netns;
pub mod progress;
pub mod proxy;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod workload;
