//! The test network: one fault-injecting proxy per directed link, and what each link does.
//!
//! Owns: [`Network`], the proxies (node A → node B for every ordered pair, and zone Z's clients
//! → node N for every zone and node) and the pure planning of their modes ([`plan`]): the
//! healthy network, a partition, a latency spike.
//!
//! Link semantics (also in the README of the harness, `metrokv-jepsen run --help`):
//! - Node A dials node B through the proxy of the link A→B (A is started with
//!   `--peer-route B=<that proxy>`). A's requests to B and B's answers to them travel on that
//!   link. Cutting A→B means A cannot use B; B can still use A over B→A. So a one-way cut
//!   stops one node's requests (votes, appends, forwarded writes) while the other direction
//!   works.
//! - A client in zone Z reaches node N through the proxy Z→N. It is cut when no node of Z
//!   reaches N ([`Grudge::zone_blocked`]).
//! - The healthy network is not instant: links between zones (node→node and client→node)
//!   carry a base latency in each direction (`--inter-zone-latency-ms`, default
//!   [`crate::nemesis::INTER_ZONE_LATENCY_MS_BASE`]), so a round trip across zones costs twice that.
//!
//! Invariants: every proxy's mode is always the healthy one or the current fault's; [`plan`]
//! gives a mode for every link, so applying a plan leaves no stale cut behind.
//!
//! [`TestNet`] is what the runner and the nemesis use: these proxies (the default, no
//! privileges), or network namespaces with nftables (`--net netns`, root; `netns.rs`), with the
//! same shapes and the same meaning of a cut link.
//!
//! Leaves out: node processes (`cluster.rs`) and timing (`runner.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;

use crate::cluster::{Cluster, NodeAddrs};
use crate::nemesis::{CutMode, DirectedLink, Grudge, Topology};
use crate::netns::NetnsNetwork;
use crate::proxy::{LinkMode, Proxy};

/// Jitter of the base inter-zone latency, as a fraction (1/N) of it.
pub const BASE_JITTER_DIVISOR: u64 = 10;

/// One proxied link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// Node `from` dialing node `to`.
    Peer { from: String, to: String },
    /// A client in `zone` dialing `node`.
    Client { zone: String, node: String },
}

/// What the network should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape<'a> {
    Healthy,
    Partition {
        grudge: &'a Grudge,
        cut: CutMode,
    },
    /// These node links, and client links crossing the same zones, are slowed down.
    Latency {
        links: &'a [DirectedLink],
        latency_ms: u64,
        jitter_ms: u64,
    },
}

/// The mode a cut link gets.
pub fn cut_mode(cut: CutMode) -> LinkMode {
    match cut {
        CutMode::Drop => LinkMode::Drop,
        CutMode::Blackhole => LinkMode::Blackhole,
        CutMode::Reset => LinkMode::Reset,
    }
}

/// The mode of a healthy link between two zones (or within one).
pub fn healthy_mode(zone_from: &str, zone_to: &str, inter_zone_latency_ms: u64) -> LinkMode {
    if zone_from == zone_to || inter_zone_latency_ms == 0 {
        LinkMode::Pass
    } else {
        LinkMode::Delay {
            latency_ms: inter_zone_latency_ms,
            jitter_ms: inter_zone_latency_ms / BASE_JITTER_DIVISOR,
        }
    }
}

/// Every link of the topology.
pub fn links(topology: &Topology) -> Vec<Link> {
    let mut all = Vec::new();
    for from in &topology.nodes {
        for to in &topology.nodes {
            if from.name != to.name {
                all.push(Link::Peer {
                    from: from.name.clone(),
                    to: to.name.clone(),
                });
            }
        }
    }
    for zone in topology.zones().keys() {
        for node in &topology.nodes {
            all.push(Link::Client {
                zone: zone.clone(),
                node: node.name.clone(),
            });
        }
    }
    all
}

/// The mode of every link for `shape`.
pub fn plan(
    topology: &Topology,
    shape: &Shape<'_>,
    inter_zone_latency_ms: u64,
) -> BTreeMap<Link, LinkMode> {
    let zone_of = |name: &str| topology.zone_of(name).unwrap_or_default().to_owned();
    links(topology)
        .into_iter()
        .map(|link| {
            let (zone_from, zone_to) = match &link {
                Link::Peer { from, to } => (zone_of(from), zone_of(to)),
                Link::Client { zone, node } => (zone.clone(), zone_of(node)),
            };
            let healthy = healthy_mode(&zone_from, &zone_to, inter_zone_latency_ms);
            let mode = match shape {
                Shape::Healthy => healthy,
                Shape::Partition { grudge, cut } => {
                    let blocked = match &link {
                        Link::Peer { from, to } => grudge.is_cut(from, to),
                        Link::Client { zone, node } => grudge.zone_blocked(topology, zone, node),
                    };
                    if blocked {
                        cut_mode(*cut)
                    } else {
                        healthy
                    }
                }
                Shape::Latency {
                    links,
                    latency_ms,
                    jitter_ms,
                } => {
                    let slowed = match &link {
                        Link::Peer { from, to } => {
                            links.iter().any(|l| &l.from == from && &l.to == to)
                        }
                        // A client crosses the slowed zones when some slowed link joins its
                        // zone to the node's.
                        Link::Client { zone, node } => links
                            .iter()
                            .any(|l| zone_of(&l.from) == *zone && zone_of(&l.to) == zone_of(node)),
                    };
                    if slowed {
                        LinkMode::Delay {
                            latency_ms: *latency_ms,
                            jitter_ms: *jitter_ms,
                        }
                    } else {
                        healthy
                    }
                }
            };
            (link, mode)
        })
        .collect()
}

/// The running proxies of one test.
#[derive(Debug)]
pub struct Network {
    topology: Topology,
    inter_zone_latency_ms: u64,
    proxies: BTreeMap<Link, Proxy>,
    /// The CA of the nodes' API certificates when they speak HTTPS (`--tls`).
    api_ca: Option<PathBuf>,
}

impl Network {
    /// Starts a proxy for every link (in the healthy mode).
    pub async fn start(
        topology: &Topology,
        nodes: &[NodeAddrs],
        inter_zone_latency_ms: u64,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let by_name: BTreeMap<&str, &NodeAddrs> =
            nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut proxies = BTreeMap::new();
        for (position, link) in links(topology).into_iter().enumerate() {
            let target = match &link {
                Link::Peer { to, .. } => by_name.get(to.as_str()).map(|n| n.peer_addr),
                Link::Client { node, .. } => by_name.get(node.as_str()).map(|n| n.client_addr),
            }
            .with_context(|| format!("no addresses for the link {link:?}"))?;
            // Each proxy draws its jitter from its own stream of the seed.
            let proxy_seed = seed.wrapping_add(position as u64 + 1);
            let proxy = Proxy::start(target, proxy_seed)
                .await
                .with_context(|| format!("starting the proxy of {link:?}"))?;
            proxies.insert(link, proxy);
        }
        let network = Network {
            topology: topology.clone(),
            inter_zone_latency_ms,
            proxies,
            api_ca: None,
        };
        network.shape(&Shape::Healthy)?;
        Ok(network)
    }

    /// Starts the proxies in front of `cluster`'s nodes and routes each node's peer traffic
    /// through them (before the nodes start).
    pub async fn start_for(
        cluster: &mut Cluster,
        topology: &Topology,
        inter_zone_latency_ms: u64,
        seed: u64,
    ) -> anyhow::Result<Network> {
        let mut network =
            Network::start(topology, &cluster.addrs(), inter_zone_latency_ms, seed).await?;
        network.api_ca = cluster.api_ca().map(Path::to_path_buf);
        for node in cluster.addrs() {
            cluster.set_routes(&node.name, &network.peer_routes(&node.name))?;
        }
        Ok(network)
    }

    /// The CA to trust for the nodes' API, when it speaks HTTPS (`--tls`).
    pub fn api_ca(&self) -> Option<&Path> {
        self.api_ca.as_deref()
    }

    /// The URL a client uses to reach a node through `proxy`.
    fn proxy_url(&self, proxy: &Proxy) -> String {
        format!("{}://{}", scheme(&self.api_ca), proxy.local_addr())
    }

    /// Sets every proxy's mode for `shape`.
    pub fn shape(&self, shape: &Shape<'_>) -> anyhow::Result<()> {
        for (link, mode) in plan(&self.topology, shape, self.inter_zone_latency_ms) {
            let proxy = self
                .proxies
                .get(&link)
                .with_context(|| format!("no proxy for {link:?}"))?;
            proxy
                .handle()
                .set_mode(mode)
                .with_context(|| format!("setting {link:?} to {mode:?}"))?;
        }
        Ok(())
    }

    /// Aborts every open connection on every link (see `proxy.rs` on why).
    pub fn sever_all(&self) {
        for proxy in self.proxies.values() {
            proxy.handle().sever();
        }
    }

    /// Where `from` dials each other node: its proxies.
    pub fn peer_routes(&self, from: &str) -> BTreeMap<String, SocketAddr> {
        self.proxies
            .iter()
            .filter_map(|(link, proxy)| match link {
                Link::Peer { from: f, to } if f == from => Some((to.clone(), proxy.local_addr())),
                _ => None,
            })
            .collect()
    }

    /// The endpoints of a client in `zone`: (URL, node name, node zone) for every node.
    pub fn client_endpoints(&self, zone: &str) -> Vec<(String, String, String)> {
        self.proxies
            .iter()
            .filter_map(|(link, proxy)| match link {
                Link::Client { zone: z, node } if z == zone && !self.topology.is_witness(node) => {
                    Some((
                        self.proxy_url(proxy),
                        node.clone(),
                        self.topology.zone_of(node).unwrap_or_default().to_owned(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// The URL a client in `zone` uses for `node`.
    pub fn client_url(&self, zone: &str, node: &str) -> Option<String> {
        self.proxies
            .get(&Link::Client {
                zone: zone.to_owned(),
                node: node.to_owned(),
            })
            .map(|proxy| self.proxy_url(proxy))
    }

    /// Maps every client endpoint URL back to its node name.
    pub fn endpoint_names(&self) -> BTreeMap<String, String> {
        self.proxies
            .iter()
            .filter_map(|(link, proxy)| match link {
                Link::Client { node, .. } => Some((self.proxy_url(proxy), node.clone())),
                Link::Peer { .. } => None,
            })
            .collect()
    }

    /// Stops every proxy and waits until their connections are closed.
    pub async fn stop(self) {
        for (_, proxy) in self.proxies {
            proxy.stop().await;
        }
    }
}

/// How the test network is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// A fault-injecting proxy on every directed link, on loopback.
    Proxy,
    /// A network namespace per node, nftables rules and tc netem (root).
    Netns,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Proxy => "proxy",
            NetMode::Netns => "netns",
        }
    }
}

/// The network of a run, either kind.
#[derive(Debug)]
pub enum TestNet {
    Proxies(Network),
    Netns(NetnsNetwork),
}

impl TestNet {
    pub fn mode(&self) -> NetMode {
        match self {
            TestNet::Proxies(_) => NetMode::Proxy,
            TestNet::Netns(_) => NetMode::Netns,
        }
    }

    /// The CA to trust for the nodes' API, when it speaks HTTPS (`--tls`).
    pub fn api_ca(&self) -> Option<&Path> {
        match self {
            TestNet::Proxies(network) => network.api_ca(),
            TestNet::Netns(network) => network.api_ca(),
        }
    }

    pub fn shape(&self, shape: &Shape<'_>) -> anyhow::Result<()> {
        match self {
            TestNet::Proxies(network) => network.shape(shape),
            TestNet::Netns(network) => network.shape(shape),
        }
    }

    /// Ends every connection open now (see `proxy.rs` and `netns.rs` on why).
    pub fn sever_all(&self) -> anyhow::Result<()> {
        match self {
            TestNet::Proxies(network) => {
                network.sever_all();
                Ok(())
            }
            TestNet::Netns(network) => network.sever_all(),
        }
    }

    /// Why latency faults cannot be applied here, if they cannot.
    pub fn latency_unavailable(&self) -> Option<&str> {
        match self {
            TestNet::Proxies(_) => None,
            TestNet::Netns(network) => network.latency_unavailable(),
        }
    }

    pub fn client_endpoints(&self, zone: &str) -> Vec<(String, String, String)> {
        match self {
            TestNet::Proxies(network) => network.client_endpoints(zone),
            TestNet::Netns(network) => network.client_endpoints(zone),
        }
    }

    pub fn endpoint_names(&self) -> BTreeMap<String, String> {
        match self {
            TestNet::Proxies(network) => network.endpoint_names(),
            TestNet::Netns(network) => network.endpoint_names(),
        }
    }

    /// Stops the proxies or relays; removes the namespaces.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            TestNet::Proxies(network) => {
                network.stop().await;
                Ok(())
            }
            TestNet::Netns(network) => network.stop().await,
        }
    }
}

/// `https` when the nodes' API has a CA (`--tls`), else `http`.
pub fn scheme(api_ca: &Option<PathBuf>) -> &'static str {
    if api_ca.is_some() {
        "https"
    } else {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::{inter_zone_links, isolate, zones, ZONE_A, ZONE_B};

    fn three() -> Topology {
        Topology::default_for(3).expect("topology")
    }

    fn peer(from: &str, to: &str) -> Link {
        Link::Peer {
            from: from.into(),
            to: to.into(),
        }
    }

    fn client(zone: &str, node: &str) -> Link {
        Link::Client {
            zone: zone.into(),
            node: node.into(),
        }
    }

    #[test]
    fn the_healthy_network_delays_only_inter_zone_links() {
        let t = three();
        let modes = plan(&t, &Shape::Healthy, 50);
        // 3 × 2 peer links + 2 zones × 3 nodes.
        assert_eq!(modes.len(), 12);
        let slow = LinkMode::Delay {
            latency_ms: 50,
            jitter_ms: 5,
        };
        assert_eq!(modes[&peer("n1", "n2")], LinkMode::Pass);
        assert_eq!(modes[&peer("n1", "n3")], slow);
        assert_eq!(modes[&peer("n3", "n2")], slow);
        assert_eq!(modes[&client(ZONE_A, "n2")], LinkMode::Pass);
        assert_eq!(modes[&client(ZONE_A, "n3")], slow);
        assert_eq!(modes[&client(ZONE_B, "n1")], slow);
        let instant = plan(&t, &Shape::Healthy, 0);
        assert!(instant.values().all(|m| *m == LinkMode::Pass));
    }

    #[test]
    fn a_zone_partition_cuts_nodes_and_clients_across_zones() {
        let t = three();
        let grudge = zones(&t);
        let modes = plan(
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Blackhole,
            },
            50,
        );
        let cut: Vec<&Link> = modes
            .iter()
            .filter(|(_, m)| **m == LinkMode::Blackhole)
            .map(|(l, _)| l)
            .collect();
        assert_eq!(
            cut,
            vec![
                &peer("n1", "n3"),
                &peer("n2", "n3"),
                &peer("n3", "n1"),
                &peer("n3", "n2"),
                &client(ZONE_A, "n3"),
                &client(ZONE_B, "n1"),
                &client(ZONE_B, "n2"),
            ]
        );
        assert_eq!(modes[&peer("n1", "n2")], LinkMode::Pass, "intra-zone stays");
    }

    #[test]
    fn one_way_cuts_stay_one_way() {
        let t = three();
        let mut grudge = Grudge::default();
        grudge.cuts.insert(DirectedLink::new("n1", "n2"));
        let modes = plan(
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Drop,
            },
            0,
        );
        assert_eq!(modes[&peer("n1", "n2")], LinkMode::Drop);
        assert_eq!(modes[&peer("n2", "n1")], LinkMode::Pass);
        // n2 reaches itself, so dc-a clients still reach it.
        assert_eq!(modes[&client(ZONE_A, "n2")], LinkMode::Pass);
    }

    #[test]
    fn isolating_the_leader_cuts_its_peers_and_the_other_zone() {
        let t = three();
        let grudge = isolate(&t, "n1").expect("isolate");
        let modes = plan(
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Reset,
            },
            0,
        );
        assert_eq!(modes[&peer("n1", "n2")], LinkMode::Reset);
        assert_eq!(modes[&peer("n3", "n1")], LinkMode::Reset);
        assert_eq!(modes[&peer("n2", "n3")], LinkMode::Pass);
        assert_eq!(modes[&client(ZONE_A, "n1")], LinkMode::Pass);
        assert_eq!(modes[&client(ZONE_B, "n1")], LinkMode::Reset);
    }

    #[test]
    fn latency_spikes_slow_the_inter_zone_links_and_clients_crossing_them() {
        let t = three();
        let spiked = inter_zone_links(&t);
        let modes = plan(
            &t,
            &Shape::Latency {
                links: &spiked,
                latency_ms: 700,
                jitter_ms: 70,
            },
            50,
        );
        let spike = LinkMode::Delay {
            latency_ms: 700,
            jitter_ms: 70,
        };
        assert_eq!(modes[&peer("n1", "n3")], spike);
        assert_eq!(modes[&client(ZONE_B, "n2")], spike);
        assert_eq!(modes[&client(ZONE_A, "n3")], spike);
        assert_eq!(modes[&peer("n1", "n2")], LinkMode::Pass);
        assert_eq!(modes[&client(ZONE_B, "n3")], LinkMode::Pass);
    }
}
