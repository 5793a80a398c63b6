//! The cluster under test: real `metrokv-node` processes, run by `metrokv-testkit` (ports, node
//! directories, failpoint files, pid-safe signals, die-with-parent, readiness), laid out from the
//! harness's topology, on loopback or in the run's network namespaces.
//!
//! The runner runs on one thread (a current-thread runtime) that lives as long as the process:
//! testkit asks the kernel to SIGKILL each node when the thread that started it ends, so even a
//! harness killed with SIGKILL takes its nodes with it.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
pub use metrokv_testkit::cluster::clock_failpoints;
pub use metrokv_testkit::cluster::eventually;
pub use metrokv_testkit::cluster::find_node_binary;
pub use metrokv_testkit::cluster::log_tail;
pub use metrokv_testkit::cluster::Cluster;
use metrokv_testkit::cluster::ClusterOptions;
pub use metrokv_testkit::cluster::NodeAddrs;
use metrokv_testkit::cluster::NodeSpec;
use metrokv_testkit::cluster::Placement;
pub use metrokv_testkit::cluster::READY_POLL_MS;

use crate::nemesis::Topology;
use crate::netns::NodeNet;

/// The cluster id every node is started with.
pub const CLUSTER_ID: &str = "metrokv-jepsen";
/// Environment variable that overrides the nodes' log filter.
pub const NODE_LOG_ENV: &str = "METROKV_JEPSEN_NODE_LOG";

/// Chooses ports and directories (under `base_dir/nodes`) for the topology's nodes; with
/// `namespaces`, each runs in its namespace on its own address there. Starts nothing.
pub fn prepare(
    binary: PathBuf,
    topology: &Topology,
    base_dir: &Path,
    extra_args: Vec<String>,
    namespaces: Option<&BTreeMap<String, NodeNet>>,
    tls: bool,
) -> anyhow::Result<Cluster> {
    let mut specs: Vec<NodeSpec> = topology
        .nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.name.clone(),
            zone: n.zone.clone(),
            args: if n.witness {
                vec!["--witness".to_owned()]
            } else {
                Vec::new()
            },
        })
        .collect();
    let placements: Option<BTreeMap<String, Placement>> = namespaces.map(|map| {
        map.iter()
            .map(|(name, net)| {
                let placement = Placement {
                    netns: net.ns.clone(),
                    client_addr: net.client_addr(),
                    peer_addr: net.peer_addr(),
                };
                (name.clone(), placement)
            })
            .collect()
    });
    let api_ca = if tls {
        // In namespaces the control plane reaches each node at its own address.
        let ips: Vec<String> = placements
            .iter()
            .flat_map(|p| p.values())
            .map(|p| p.client_addr.ip().to_string())
            .collect();
        Some(write_certs(&binary, &mut specs, base_dir, &ips)?)
    } else {
        None
    };
    let options = ClusterOptions {
        cluster_id: CLUSTER_ID.to_string(),
        extra_args,
        log_env: NODE_LOG_ENV.to_string(),
        api_ca,
    };
    Cluster::prepare_in(binary, &specs, base_dir, options, placements.as_ref())
}

/// A throwaway CA and a certificate per node under `base_dir/certs` (`metrokv-node certs`),
/// and each node's flags for TLS on both ports; the CA's path.
fn write_certs(
    binary: &Path,
    specs: &mut [NodeSpec],
    base_dir: &Path,
    ips: &[String],
) -> anyhow::Result<PathBuf> {
    let certs = base_dir.join("certs");
    let ids = specs
        .iter()
        .map(|s| {
            s.name
                .strip_prefix('n')
                .and_then(|d| d.parse::<u64>().ok())
                .with_context(|| format!("node name {:?} is not n<id>", s.name))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let count = ids.iter().copied().max().unwrap_or(0);
    let ca = metrokv_testkit::certs::write(binary, &certs, count, ips)?;
    for (spec, id) in specs.iter_mut().zip(ids) {
        spec.args
            .extend(metrokv_testkit::certs::node_args(&certs, id));
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_laid_out_in_its_own_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = Topology::default_for(3).expect("topology");
        let cluster = prepare(
            PathBuf::from("/bin/true"),
            &topology,
            dir.path(),
            vec![],
            None,
            false,
        )
        .expect("prepare");
        let addrs = cluster.addrs();
        assert_eq!(addrs.len(), 3);
        assert!(addrs[2].dir.ends_with("nodes/n3"));
        assert_eq!(addrs[2].zone, "dc-b");
    }
}
