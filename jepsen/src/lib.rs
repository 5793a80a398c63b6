//! metrokv-jepsen: Jepsen-style testing of metrokv, the parts that need no running cluster.
//!
//! - `history`: the op model, `history.jsonl`, invoke/completion pairing, the recorder.
//! - `checker`: the bank checker, the per-key linearizability checker (WGL), composed results.
//! - `nemesis`: topologies in zones, grudges (which directed links to cut), seeded schedules.
//! - `proxy`: the fault-injecting TCP proxy for one directed link.
//! - `record`: `test.json`, everything besides the history that a re-check needs.
//! - `report`: `results.json`, `report.html`.
//!
//! Leaves out (for the runner): starting nodes, driving clients, applying the schedule.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod record;
pub mod report;
