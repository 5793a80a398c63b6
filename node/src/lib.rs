//! metrokv-node: a Raft-replicated, strongly consistent key-value and balance store.
//!
//! Dependencies point one way: `api` → `service` → `raft`/`transport` → `storage` →
//! `state_machine`. The state machine is pure; storage is RocksDB; openraft is assembled in
//! `raft`; peers talk over `transport`; `api` is the HTTP contract of `../shared/API.md`;
//! `node` starts it all.

pub mod api;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod service;
pub mod state_machine;
pub mod storage;
pub mod transport;
