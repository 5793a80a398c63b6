//! metrokv-testkit: the one way to run real `metrokv-node` clusters, for the end-to-end tests
//! (`tests/`), the benchmarks and the partition harness (`jepsen/`): binary discovery, ports,
//! per-node directories, environment and failpoint files, start / SIGKILL / SIGSTOP / SIGCONT by
//! pid (never by name), die-with-parent, readiness and leader queries, `eventually`, log tails.

pub mod certs;
pub mod cluster;
pub mod ports;

pub use cluster::*;
