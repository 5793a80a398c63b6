//! metrokv-node: a Raft-replicated, strongly consistent key-value and balance store.
//!
//! Dependencies point one way: `api` → `service` → `raft`/`transport` → `storage` →
//! `state_machine`. The state machine is pure; storage is RocksDB; openraft is assembled in
//! `raft`; peers talk over `transport`; `api` is the HTTP contract of `../shared/API.md`;
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
pub mod transport;
