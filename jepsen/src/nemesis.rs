//! Fault schedules: which faults happen when, decided entirely by a seed before the test starts.
//!
//! Owns: the cluster [`Topology`] (nodes in zones), Jepsen's grudge builders ported to directed
//! links ([`zones`], [`isolate`], [`halves`], [`majorities_ring`], [`bridge`]), the fault model
//! ([`Fault`], [`Target`]) and the seeded [`schedule`] generator.
//!
//! Link semantics: a cut [`DirectedLink`] `from → to` means `from` can no longer use its
//! connections to `to` (its requests and their answers), while `to`'s own connections to `from`
//! are unaffected; each directed link has its own proxy (see `proxy.rs`). Jepsen's grudge
//! "X drops traffic from Y" becomes the cut link `Y → X`, so a one-way grudge stays one-way.
//! Clients live in zones: a client in zone Z reaches node N unless every node of Z has its link
//! to N cut ([`Grudge::zone_blocked`]), so a zone partition cuts a dc-b client off from the dc-a
//! nodes, while isolating one node leaves its zone's clients connected to it (as a client on
//! the same rack would be). [`Grudge::client_blocked`] is the stricter home-node view.
//! How a cut behaves on the wire ([`CutMode`]: close, black-hole or reset) is drawn from the
//! seed per fault.
//!
//! Invariants: randomness comes only from the seed (ChaCha8, whose output is specified, so a seed
//! replays across rand releases); faults never overlap, each is followed by a quiet gap, and every
//! fault stops by the time limit.
//!
//! Leaves out: applying faults (proxies, signals, restarts) and finding the leader; faults that
//! depend on the run ([`Fault::IsolateLeader`], [`Target::Leader`]) are resolved by the runner
//! with [`Fault::resolve`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The default zones: issue 5 puts n1 and n2 in dc-a and n3 in dc-b.
pub const ZONE_A: &str = "dc-a";
pub const ZONE_B: &str = "dc-b";
/// The small third site of the three-site layouts.
pub const ZONE_C: &str = "dc-c";

/// The most nodes a topology may have: the grudge builders are quadratic in it and the exact
/// majorities ring is only defined for small clusters.
pub const TOPOLOGY_NODES_MAX: usize = 9;

/// Default length of one fault. Long enough for an election timeout to fire several times.
pub const FAULT_MS_MIN_DEFAULT: u64 = 2_000;
pub const FAULT_MS_MAX_DEFAULT: u64 = 10_000;
/// Default quiet gap after each heal, so the cluster can recover before the next fault.
pub const QUIET_MS_MIN_DEFAULT: u64 = 2_000;
pub const QUIET_MS_MAX_DEFAULT: u64 = 5_000;
/// The shortest fault or gap that a schedule is ever scaled down to.
pub const PHASE_MS_FLOOR: u64 = 200;

/// Inter-zone latency, per direction, while no latency fault is active: metro zones are about
/// 1 ms apart (the runner applies it to [`inter_zone_links`] and to clients crossing zones for
/// the whole test). The node's default timeouts are tuned for this: its AppendEntries timeout
/// is the 30 ms heartbeat interval, so a healthy base of tens of milliseconds would cut the
/// other zone off for good.
pub const INTER_ZONE_LATENCY_MS_BASE: u64 = 1;
/// Inter-zone latency, per direction, during a latency fault outside its spike ("50 ms
/// normally").
pub const LATENCY_FAULT_MS_BASE: u64 = 50;
/// The spike sits in the middle third of a latency fault: it starts after 1/N of the fault and
/// ends after (N-1)/N of it.
pub const LATENCY_SPIKE_SPLIT: u64 = 3;
/// Range of a latency spike on the inter-zone links.
pub const LATENCY_SPIKE_MS_MIN: u64 = 500;
pub const LATENCY_SPIKE_MS_MAX: u64 = 1_000;
/// Jitter of a spike as a fraction (1/N) of its latency.
pub const LATENCY_SPIKE_JITTER_DIVISOR: u64 = 10;

/// How far the clock nemesis jumps a node's wall clock, ahead or behind: a day, as an NTP step
/// or a VM restored from an old snapshot might.
pub const CLOCK_JUMP_MS: i64 = 86_400_000;

/// Chance that a kill or pause targets the leader instead of a random minority.
pub const LEADER_TARGET_PROBABILITY: f64 = 0.34;

/// The most faults one schedule may hold; the generator stops there.
pub const SCHEDULE_FAULTS_MAX: usize = 10_000;

/// The most kills one kill loop may plan.
pub const KILL_LOOP_KILLS_MAX: u32 = 100_000;
/// How long a node of the kill loop stays dead before it is restarted: `0..=this`.
pub const KILL_LOOP_HOLD_MS_MAX: u64 = 500;
/// The quiet gap of the kill loop once the restarted node is ready again, before the next kill.
pub const KILL_LOOP_GAP_MS_MIN: u64 = 200;
pub const KILL_LOOP_GAP_MS_MAX: u64 = 1_000;

/// Errors building topologies and schedules: bad options, never a fault of the system.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NemesisError {
    #[error("a topology needs 1..={TOPOLOGY_NODES_MAX} nodes, got {0}")]
    NodeCount(usize),
    #[error("node name {0:?} appears twice")]
    DuplicateNode(String),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("unknown nemesis {0:?}; known: {known}", known = NemesisKind::known_names())]
    UnknownNemesis(String),
    #[error("nemesis {kind} needs {need}")]
    NotApplicable {
        kind: NemesisKind,
        need: &'static str,
    },
    #[error("schedule option {0}")]
    BadOptions(&'static str),
    #[error("fault {0} targets the leader, but no leader is known")]
    NoLeader(NemesisKind),
}

/// One node and the zone it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub zone: String,
    /// Started with `--witness`: votes and keeps the log, serves no clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

/// The nodes of the cluster under test, in a fixed order (n1, n2, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: Vec<NodeSpec>,
}

impl Topology {
    /// Validates names (unique) and size.
    pub fn new(nodes: Vec<NodeSpec>) -> Result<Self, NemesisError> {
        if nodes.is_empty() || nodes.len() > TOPOLOGY_NODES_MAX {
            return Err(NemesisError::NodeCount(nodes.len()));
        }
        let mut seen = BTreeSet::new();
        for node in &nodes {
            if !seen.insert(node.name.as_str()) {
                return Err(NemesisError::DuplicateNode(node.name.clone()));
            }
        }
        Ok(Topology { nodes })
    }

    /// Issue 5's layout: 3 nodes are n1, n2 in dc-a and n3 in dc-b; 5 nodes put n1..n3 in dc-a
    /// and n4, n5 in dc-b. In general the first majority goes to dc-a, the rest to dc-b.
    pub fn default_for(node_count: usize) -> Result<Self, NemesisError> {
        if node_count == 0 || node_count > TOPOLOGY_NODES_MAX {
            return Err(NemesisError::NodeCount(node_count));
        }
        let in_a = if node_count == 1 {
            1
        } else {
            node_count / 2 + usize::from(node_count % 2 == 1)
        };
        let nodes = (1..=node_count)
            .map(|i| NodeSpec {
                name: format!("n{i}"),
                zone: if i <= in_a { ZONE_A } else { ZONE_B }.to_owned(),
                witness: false,
            })
            .collect();
        Topology::new(nodes)
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name)
    }

    /// Whether `name` is a witness (it serves no client requests).
    pub fn is_witness(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name && n.witness)
    }

    /// The three-site layouts: n1, n2 in dc-a, n3, n4 in dc-b, n5 in dc-c (a witness if
    /// `witness`). Any majority spans two sites, so losing one keeps the cluster writing.
    pub fn three_sites(witness: bool) -> Self {
        let zone = |i: usize| match i {
            1 | 2 => ZONE_A,
            3 | 4 => ZONE_B,
            _ => ZONE_C,
        };
        let nodes = (1..=5)
            .map(|i| NodeSpec {
                name: format!("n{i}"),
                zone: zone(i).to_owned(),
                witness: witness && i == 5,
            })
            .collect();
        Topology { nodes }
    }

    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.zone.as_str())
    }

    /// Node names per zone, zones sorted by name.
    pub fn zones(&self) -> BTreeMap<String, Vec<String>> {
        let mut zones: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in &self.nodes {
            zones
                .entry(node.zone.clone())
                .or_default()
                .push(node.name.clone());
        }
        zones
    }

    /// The largest number of nodes that can fail while a majority remains.
    pub fn minority(&self) -> usize {
        self.nodes.len().saturating_sub(1) / 2
    }
}

/// `from` can no longer reach `to` over this link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DirectedLink {
    pub from: String,
    pub to: String,
}

impl DirectedLink {
    pub fn new(from: &str, to: &str) -> Self {
        DirectedLink {
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }
}

impl fmt::Display for DirectedLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→{}", self.from, self.to)
    }
}

/// A network partition as the set of cut directed links between nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grudge {
    pub cuts: BTreeSet<DirectedLink>,
}

impl Grudge {
    /// Cuts every link, both ways, between nodes of different components.
    pub fn complete(components: &[Vec<String>]) -> Grudge {
        let mut cuts = BTreeSet::new();
        for (i, a) in components.iter().enumerate() {
            for (j, b) in components.iter().enumerate() {
                if i == j {
                    continue;
                }
                for from in a {
                    for to in b {
                        cuts.insert(DirectedLink::new(from, to));
                    }
                }
            }
        }
        Grudge { cuts }
    }

    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        self.cuts.contains(&DirectedLink::new(from, to))
    }

    /// Whether a client homed at `home` is cut off from `target`: it shares its home node's view.
    pub fn client_blocked(&self, home: &str, target: &str) -> bool {
        home != target && self.is_cut(home, target)
    }

    /// Whether a client in `zone` is cut off from `target`: true when no node of the zone can
    /// reach it (a node always reaches itself). A zone without nodes is never cut off: the
    /// grudge says nothing about it.
    pub fn zone_blocked(&self, topology: &Topology, zone: &str, target: &str) -> bool {
        let mut members = topology.nodes.iter().filter(|n| n.zone == zone).peekable();
        if members.peek().is_none() {
            return false;
        }
        members.all(|n| self.client_blocked(&n.name, target))
    }

    /// Whether a link is cut in each direction ("a ✗ b" when both, "a → b" style when one-way).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .cuts
            .iter()
            .filter_map(|link| {
                let reverse = self.is_cut(&link.to, &link.from);
                if reverse && link.from > link.to {
                    None // printed once as "a ✗ b" from the smaller name
                } else if reverse {
                    Some(format!("{} ✗ {}", link.from, link.to))
                } else {
                    Some(format!("{} ↛ {}", link.from, link.to))
                }
            })
            .collect();
        if parts.is_empty() {
            "no cuts".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Each zone becomes its own component.
pub fn zones(topology: &Topology) -> Grudge {
    let components: Vec<Vec<String>> = topology.zones().into_values().collect();
    Grudge::complete(&components)
}

/// `node` alone on one side, everyone else on the other.
pub fn isolate(topology: &Topology, node: &str) -> Result<Grudge, NemesisError> {
    if !topology.contains(node) {
        return Err(NemesisError::UnknownNode(node.to_owned()));
    }
    let rest: Vec<String> = topology.names().into_iter().filter(|n| n != node).collect();
    Ok(Grudge::complete(&[vec![node.to_owned()], rest]))
}

fn shuffled(topology: &Topology, rng: &mut impl Rng) -> Vec<String> {
    let mut names = topology.names();
    names.shuffle(rng);
    names
}

/// A clean split into two random halves, the smaller first (Jepsen's partition-random-halves).
pub fn halves(topology: &Topology, rng: &mut impl Rng) -> Grudge {
    let mut names = shuffled(topology, rng);
    let larger = names.split_off(names.len() / 2);
    Grudge::complete(&[names, larger])
}

/// Every node sees a majority (itself and its ring neighbours), but no two nodes the same one
/// (Jepsen's majorities-ring-perfect). On 3 nodes this is three one-way cuts.
pub fn majorities_ring(topology: &Topology, rng: &mut impl Rng) -> Grudge {
    let ring = shuffled(topology, rng);
    let n = ring.len();
    let majority = n / 2 + 1;
    let mut cuts = BTreeSet::new();
    for start in 0..n {
        let window: Vec<&String> = (0..majority).map(|k| &ring[(start + k) % n]).collect();
        let node = window[majority / 2];
        for other in &ring {
            if !window.contains(&other) {
                // `node` drops traffic from `other`.
                cuts.insert(DirectedLink::new(other, node));
            }
        }
    }
    Grudge { cuts }
}

/// Two halves that cannot see each other, plus one node that sees both (Jepsen's bridge).
pub fn bridge(topology: &Topology, rng: &mut impl Rng) -> Grudge {
    let mut smaller = shuffled(topology, rng);
    let mut larger = smaller.split_off(smaller.len() / 2);
    // Jepsen takes the bridge node from the larger half; on 3 nodes each side is then one node.
    // It stays uncut: it is simply in neither component.
    larger.remove(0);
    if smaller.is_empty() || larger.is_empty() {
        return Grudge::default();
    }
    Grudge::complete(&[smaller, larger])
}

/// Every link between nodes of different zones, both directions.
pub fn inter_zone_links(topology: &Topology) -> Vec<DirectedLink> {
    zones(topology).cuts.into_iter().collect()
}

/// The faults the CLI's `--nemesis` list can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    PartitionZones,
    IsolateLeader,
    Halves,
    Ring,
    Bridge,
    Kill,
    Pause,
    Latency,
    Clock,
    /// Every node of one zone SIGKILLed at once (a machine room lost), restarted on its data at
    /// the heal. Not part of `all`: on a two-zone layout losing the majority zone stops writes
    /// for the whole fault, by design; choose it by name, on a three-site layout above all.
    LoseZone,
}

impl NemesisKind {
    /// Every kind, `lose-zone` included (what `--nemesis` accepts by name).
    pub const KNOWN: [NemesisKind; 10] = [
        NemesisKind::PartitionZones,
        NemesisKind::IsolateLeader,
        NemesisKind::Halves,
        NemesisKind::Ring,
        NemesisKind::Bridge,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Latency,
        NemesisKind::Clock,
        NemesisKind::LoseZone,
    ];

    /// What `all` means: every kind but `lose-zone`, the last of [`NemesisKind::KNOWN`].
    pub const ALL: &[NemesisKind] = NemesisKind::KNOWN.split_at(NemesisKind::KNOWN.len() - 1).0;

    pub fn as_str(self) -> &'static str {
        match self {
            NemesisKind::PartitionZones => "partition-zones",
            NemesisKind::IsolateLeader => "isolate-leader",
            NemesisKind::Halves => "halves",
            NemesisKind::Ring => "ring",
            NemesisKind::Bridge => "bridge",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Latency => "latency",
            NemesisKind::Clock => "clock",
            NemesisKind::LoseZone => "lose-zone",
        }
    }

    fn known_names() -> String {
        let names: Vec<&str> = NemesisKind::KNOWN.iter().map(|k| k.as_str()).collect();
        format!("{}, all, none", names.join(", "))
    }

    /// Parses a comma-separated list; `all` means every kind, `none` (or "") means no faults.
    /// Duplicates are kept once, in first-seen order.
    pub fn parse_list(list: &str) -> Result<Vec<NemesisKind>, NemesisError> {
        let mut kinds = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed: Vec<NemesisKind> = match item {
                "all" => NemesisKind::ALL.to_vec(),
                "none" => Vec::new(),
                other => vec![other.parse()?],
            };
            for kind in parsed {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        Ok(kinds)
    }

    /// Why this kind cannot run on `topology`, if it cannot.
    fn check_applicable(self, topology: &Topology) -> Result<(), NemesisError> {
        let zone_count = topology.zones().len();
        let node_count = topology.nodes.len();
        let need = match self {
            NemesisKind::PartitionZones | NemesisKind::Latency | NemesisKind::LoseZone
                if zone_count < 2 =>
            {
                "at least 2 zones"
            }
            NemesisKind::Halves | NemesisKind::Ring | NemesisKind::Bridge if node_count < 3 => {
                "at least 3 nodes"
            }
            NemesisKind::IsolateLeader if node_count < 2 => "at least 2 nodes",
            NemesisKind::Kill | NemesisKind::Pause if topology.minority() == 0 => {
                "at least 3 nodes (a minority to fault)"
            }
            _ => return Ok(()),
        };
        Err(NemesisError::NotApplicable { kind: self, need })
    }
}

impl fmt::Display for NemesisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NemesisKind {
    type Err = NemesisError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NemesisKind::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| NemesisError::UnknownNemesis(s.to_owned()))
    }
}

/// Which partition a [`Fault::Partition`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    Zones,
    IsolateLeader,
    Halves,
    Ring,
    Bridge,
}

/// The nodes a process fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Nodes(Vec<String>),
    /// Whoever leads when the fault starts.
    Leader,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Nodes(nodes) => f.write_str(&nodes.join(",")),
            Target::Leader => f.write_str("the leader"),
        }
    }
}

/// How a cut link treats traffic (the proxy modes of the same names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutMode {
    /// Close connections (FIN) and refuse new ones at once: fast, visible failures.
    Drop,
    /// Accept but never answer (like an iptables DROP rule): callers hang until they time out.
    #[default]
    Blackhole,
    /// Abort connections with RST.
    Reset,
}

impl CutMode {
    pub const ALL: [CutMode; 3] = [CutMode::Drop, CutMode::Blackhole, CutMode::Reset];

    pub fn as_str(self) -> &'static str {
        match self {
            CutMode::Drop => "drop",
            CutMode::Blackhole => "blackhole",
            CutMode::Reset => "reset",
        }
    }
}

/// One fault, applied at its interval's start and healed at its stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// Cut these links (the proxies drop, black-hole or reset them) until the stop.
    Partition {
        partition: PartitionKind,
        grudge: Grudge,
        #[serde(default)]
        cut: CutMode,
    },
    /// Isolate whoever leads at the start; [`Fault::resolve`] turns it into a `Partition`.
    IsolateLeader {
        #[serde(default)]
        cut: CutMode,
    },
    /// SIGKILL, then restart on the same data directory at the stop.
    Kill { target: Target },
    /// SIGSTOP, then SIGCONT at the stop.
    Pause { target: Target },
    /// Delay these links by [`LATENCY_FAULT_MS_BASE`] until the stop, and by `latency_ms` plus
    /// up to `jitter_ms` per chunk during the spike (the middle third, see
    /// [`LATENCY_SPIKE_SPLIT`]).
    Latency {
        links: Vec<DirectedLink>,
        latency_ms: u64,
        jitter_ms: u64,
    },
    /// SIGKILL every node of `zone` at once, restart them on their data at the stop.
    LoseZone { zone: String, nodes: Vec<String> },
    /// Shift the targets' wall clocks by `offset_ms` (through each node's failpoint file,
    /// `clock-offset-ms`), and back to none at the stop.
    Clock { target: Target, offset_ms: i64 },
}

impl Fault {
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Partition { partition, .. } => match partition {
                PartitionKind::Zones => NemesisKind::PartitionZones,
                PartitionKind::IsolateLeader => NemesisKind::IsolateLeader,
                PartitionKind::Halves => NemesisKind::Halves,
                PartitionKind::Ring => NemesisKind::Ring,
                PartitionKind::Bridge => NemesisKind::Bridge,
            },
            Fault::IsolateLeader { .. } => NemesisKind::IsolateLeader,
            Fault::Kill { .. } => NemesisKind::Kill,
            Fault::Pause { .. } => NemesisKind::Pause,
            Fault::Latency { .. } => NemesisKind::Latency,
            Fault::Clock { .. } => NemesisKind::Clock,
            Fault::LoseZone { .. } => NemesisKind::LoseZone,
        }
    }

    /// One line for the report and the progress bar.
    pub fn describe(&self) -> String {
        match self {
            Fault::Partition { grudge, cut, .. } => {
                format!("{} ({}): {}", self.kind(), cut.as_str(), grudge.describe())
            }
            Fault::IsolateLeader { cut } => format!("isolate the leader ({})", cut.as_str()),
            Fault::Kill { target } => format!("kill -9 {target}"),
            Fault::LoseZone { zone, nodes } => {
                format!("lose zone {zone}: kill -9 {} at once", nodes.join(", "))
            }
            Fault::Clock { target, offset_ms } => {
                let hours = offset_ms / 3_600_000;
                format!("clock of {target} {hours:+} h ({offset_ms:+} ms)")
            }
            Fault::Pause { target } => format!("pause {target}"),
            Fault::Latency {
                links,
                latency_ms,
                jitter_ms,
            } => format!(
                "latency {LATENCY_FAULT_MS_BASE} ms, spiking to {latency_ms}±{jitter_ms} ms, on {} links",
                links.len()
            ),
        }
    }

    /// Replaces "the leader" by `leader`, so the fault names concrete nodes and links.
    pub fn resolve(
        &self,
        topology: &Topology,
        leader: Option<&str>,
    ) -> Result<Fault, NemesisError> {
        let leader_of = |kind| leader.ok_or(NemesisError::NoLeader(kind));
        let resolve_target = |target: &Target, kind| match target {
            Target::Leader => Ok(Target::Nodes(vec![leader_of(kind)?.to_owned()])),
            nodes => Ok(nodes.clone()),
        };
        Ok(match self {
            Fault::IsolateLeader { cut } => Fault::Partition {
                partition: PartitionKind::IsolateLeader,
                grudge: isolate(topology, leader_of(NemesisKind::IsolateLeader)?)?,
                cut: *cut,
            },
            Fault::Kill { target } => Fault::Kill {
                target: resolve_target(target, NemesisKind::Kill)?,
            },
            Fault::Pause { target } => Fault::Pause {
                target: resolve_target(target, NemesisKind::Pause)?,
            },
            Fault::Clock { target, offset_ms } => Fault::Clock {
                target: resolve_target(target, NemesisKind::Clock)?,
                offset_ms: *offset_ms,
            },
            other => other.clone(),
        })
    }
}

/// A fault and when it is active, in ms since the test started: `[start_ms, stop_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultInterval {
    pub start_ms: u64,
    pub stop_ms: u64,
    pub fault: Fault,
}

/// The value of a nemesis op in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Position of the interval in the schedule.
    pub interval: u32,
    /// The fault as applied (resolved: concrete nodes and links).
    pub fault: Fault,
    /// What else happened (a node that did not restart, a proxy error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The fault was not applied (the detail says why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// How long faults and quiet gaps last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleOptions {
    pub time_limit_ms: u64,
    pub fault_ms_min: u64,
    pub fault_ms_max: u64,
    pub quiet_ms_min: u64,
    pub quiet_ms_max: u64,
}

impl ScheduleOptions {
    /// The defaults, scaled down for short tests so that at least one fault fits in ~15 s.
    pub fn for_time_limit(time_limit_ms: u64) -> Self {
        let cap =
            |value: u64, fraction: u64| value.min(time_limit_ms / fraction).max(PHASE_MS_FLOOR);
        ScheduleOptions {
            time_limit_ms,
            fault_ms_min: cap(FAULT_MS_MIN_DEFAULT, 6),
            fault_ms_max: cap(FAULT_MS_MAX_DEFAULT, 3),
            quiet_ms_min: cap(QUIET_MS_MIN_DEFAULT, 6),
            quiet_ms_max: cap(QUIET_MS_MAX_DEFAULT, 4),
        }
    }

    fn validate(&self) -> Result<(), NemesisError> {
        if self.fault_ms_min == 0 || self.fault_ms_min > self.fault_ms_max {
            return Err(NemesisError::BadOptions(
                "needs 0 < fault_ms_min <= fault_ms_max",
            ));
        }
        if self.quiet_ms_min > self.quiet_ms_max {
            return Err(NemesisError::BadOptions(
                "needs quiet_ms_min <= quiet_ms_max",
            ));
        }
        Ok(())
    }
}

/// A deterministic fault schedule: the same topology, kinds, options and seed always give the
/// same list. It starts with a quiet gap, alternates fault and quiet gap, and never lets a
/// fault run past the time limit.
pub fn schedule(
    topology: &Topology,
    kinds: &[NemesisKind],
    options: &ScheduleOptions,
    seed: u64,
) -> Result<Vec<FaultInterval>, NemesisError> {
    options.validate()?;
    for kind in kinds {
        kind.check_applicable(topology)?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut intervals = Vec::new();
    if kinds.is_empty() {
        return Ok(intervals);
    }
    let mut now_ms = rng.random_range(options.quiet_ms_min..=options.quiet_ms_max);
    while intervals.len() < SCHEDULE_FAULTS_MAX {
        let duration_ms = rng.random_range(options.fault_ms_min..=options.fault_ms_max);
        let Some(stop_ms) = now_ms.checked_add(duration_ms) else {
            break;
        };
        if stop_ms > options.time_limit_ms {
            break;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let fault = build_fault(kind, topology, &mut rng);
        intervals.push(FaultInterval {
            start_ms: now_ms,
            stop_ms,
            fault,
        });
        now_ms =
            stop_ms.saturating_add(rng.random_range(options.quiet_ms_min..=options.quiet_ms_max));
    }
    Ok(intervals)
}

/// One kill of the kill loop: SIGKILL the target, keep it dead for `hold_ms`, restart it on its
/// data directory, wait until it is ready again, then stay quiet for `gap_ms`. Only the waiting
/// depends on the run; the rest is planned from the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillStep {
    /// One node, or the leader when the kill starts.
    pub target: Target,
    pub hold_ms: u64,
    pub gap_ms: u64,
}

/// The kill loop's plan: `count` kills of one node each, the leader with probability
/// [`LEADER_TARGET_PROBABILITY`], otherwise a node drawn uniformly (which may happen to lead).
/// One node at a time, restarted before the next kill, keeps a quorum throughout.
pub fn kill_loop(
    topology: &Topology,
    count: u32,
    seed: u64,
) -> Result<Vec<KillStep>, NemesisError> {
    NemesisKind::Kill.check_applicable(topology)?;
    if count == 0 || count > KILL_LOOP_KILLS_MAX {
        return Err(NemesisError::BadOptions(
            "the kill loop needs 1..=KILL_LOOP_KILLS_MAX kills",
        ));
    }
    // Its own stream, so the kill loop does not share draws with a timed schedule.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4B11_1100_7000_0001);
    let names = topology.names();
    Ok((0..count)
        .map(|_| {
            let target = if rng.random_bool(LEADER_TARGET_PROBABILITY) {
                Target::Leader
            } else {
                Target::Nodes(vec![names[rng.random_range(0..names.len())].clone()])
            };
            KillStep {
                target,
                hold_ms: rng.random_range(0..=KILL_LOOP_HOLD_MS_MAX),
                gap_ms: rng.random_range(KILL_LOOP_GAP_MS_MIN..=KILL_LOOP_GAP_MS_MAX),
            }
        })
        .collect())
}

/// A random minority of the nodes, or (sometimes) the leader.
fn process_target(topology: &Topology, rng: &mut impl Rng) -> Target {
    if rng.random_bool(LEADER_TARGET_PROBABILITY) {
        return Target::Leader;
    }
    let count = rng.random_range(1..=topology.minority().max(1));
    let mut names = shuffled(topology, rng);
    names.truncate(count);
    names.sort();
    Target::Nodes(names)
}

fn build_fault(kind: NemesisKind, topology: &Topology, rng: &mut impl Rng) -> Fault {
    let cut = CutMode::ALL[rng.random_range(0..CutMode::ALL.len())];
    let partition = |partition, grudge| Fault::Partition {
        partition,
        grudge,
        cut,
    };
    match kind {
        NemesisKind::PartitionZones => partition(PartitionKind::Zones, zones(topology)),
        NemesisKind::IsolateLeader => Fault::IsolateLeader { cut },
        NemesisKind::Halves => partition(PartitionKind::Halves, halves(topology, rng)),
        NemesisKind::Ring => partition(PartitionKind::Ring, majorities_ring(topology, rng)),
        NemesisKind::Bridge => partition(PartitionKind::Bridge, bridge(topology, rng)),
        NemesisKind::Kill => Fault::Kill {
            target: process_target(topology, rng),
        },
        NemesisKind::LoseZone => {
            let zones: Vec<(String, Vec<String>)> = topology.zones().into_iter().collect();
            let (zone, nodes) = zones[rng.random_range(0..zones.len())].clone();
            Fault::LoseZone { zone, nodes }
        }
        NemesisKind::Pause => Fault::Pause {
            target: process_target(topology, rng),
        },
        NemesisKind::Clock => Fault::Clock {
            target: process_target(topology, rng),
            offset_ms: if rng.random_bool(0.5) {
                CLOCK_JUMP_MS
            } else {
                -CLOCK_JUMP_MS
            },
        },
        NemesisKind::Latency => {
            let latency_ms = rng.random_range(LATENCY_SPIKE_MS_MIN..=LATENCY_SPIKE_MS_MAX);
            Fault::Latency {
                links: inter_zone_links(topology),
                latency_ms,
                jitter_ms: latency_ms / LATENCY_SPIKE_JITTER_DIVISOR,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Topology {
        Topology::default_for(3).expect("topology")
    }

    fn five() -> Topology {
        Topology::default_for(5).expect("topology")
    }

    /// Nodes that `node` can still hear from (it drops traffic from the others).
    fn hears(grudge: &Grudge, topology: &Topology, node: &str) -> BTreeSet<String> {
        topology
            .names()
            .into_iter()
            .filter(|other| !grudge.is_cut(other, node))
            .collect()
    }

    #[test]
    fn lose_zone_kills_every_node_of_one_zone_and_is_chosen_by_name() {
        assert!(!NemesisKind::parse_list("all")
            .unwrap()
            .contains(&NemesisKind::LoseZone));
        assert_eq!(
            NemesisKind::parse_list("lose-zone").unwrap(),
            vec![NemesisKind::LoseZone]
        );
        let topology = Topology::three_sites(true);
        assert!(topology.is_witness("n5") && !topology.is_witness("n4"));
        let options = ScheduleOptions::for_time_limit(120_000);
        let s = schedule(&topology, &[NemesisKind::LoseZone], &options, 7).expect("schedule");
        assert!(!s.is_empty());
        for interval in &s {
            let Fault::LoseZone { zone, nodes } = &interval.fault else {
                panic!("{:?}", interval.fault);
            };
            assert_eq!(topology.zones()[zone], *nodes, "{zone}");
        }
    }

    #[test]
    fn default_topologies_follow_the_issue() {
        let t = three();
        assert_eq!(t.zone_of("n1"), Some(ZONE_A));
        assert_eq!(t.zone_of("n2"), Some(ZONE_A));
        assert_eq!(t.zone_of("n3"), Some(ZONE_B));
        let t = five();
        assert_eq!(t.zones()[ZONE_A], vec!["n1", "n2", "n3"]);
        assert_eq!(t.zones()[ZONE_B], vec!["n4", "n5"]);
        assert!(Topology::default_for(0).is_err());
        assert!(Topology::new(vec![
            NodeSpec {
                name: "a".into(),
                zone: "z".into(),
                witness: false,
            },
            NodeSpec {
                name: "a".into(),
                zone: "z".into(),
                witness: false,
            },
        ])
        .is_err());
    }

    #[test]
    fn zones_cut_exactly_the_inter_zone_links() {
        let g = zones(&three());
        let expected: BTreeSet<DirectedLink> =
            [("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")]
                .iter()
                .map(|(a, b)| DirectedLink::new(a, b))
                .collect();
        assert_eq!(g.cuts, expected);
        assert!(g.client_blocked("n1", "n3"));
        assert!(!g.client_blocked("n1", "n2"));
        assert!(!g.client_blocked("n3", "n3"));
        // Zone clients: a dc-b client is cut off from dc-a and the other way round.
        let t = three();
        assert!(g.zone_blocked(&t, ZONE_B, "n1") && g.zone_blocked(&t, ZONE_B, "n2"));
        assert!(!g.zone_blocked(&t, ZONE_B, "n3"));
        assert!(g.zone_blocked(&t, ZONE_A, "n3"));
        assert!(!g.zone_blocked(&t, ZONE_A, "n1"));
        assert!(!g.zone_blocked(&t, "dc-nowhere", "n1"));
    }

    #[test]
    fn an_isolated_node_stays_reachable_from_its_own_zone() {
        let t = three();
        let g = isolate(&t, "n1").expect("isolate");
        // n1 reaches itself, so dc-a clients still reach it; dc-b's only node cannot.
        assert!(!g.zone_blocked(&t, ZONE_A, "n1"));
        assert!(g.zone_blocked(&t, ZONE_B, "n1"));
        assert!(!g.zone_blocked(&t, ZONE_A, "n3") && !g.zone_blocked(&t, ZONE_B, "n2"));
        let g = isolate(&t, "n3").expect("isolate");
        assert!(g.zone_blocked(&t, ZONE_B, "n1") && !g.zone_blocked(&t, ZONE_B, "n3"));
        assert!(g.zone_blocked(&t, ZONE_A, "n3"));
    }

    #[test]
    fn isolate_cuts_one_node_both_ways() {
        let g = isolate(&five(), "n2").expect("isolate");
        assert_eq!(g.cuts.len(), 8);
        assert!(g.cuts.iter().all(|l| l.from == "n2" || l.to == "n2"));
        assert!(isolate(&five(), "n9").is_err());
    }

    #[test]
    fn halves_are_a_clean_split() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let t = five();
        let g = halves(&t, &mut rng);
        // 2 × 3 nodes, both directions.
        assert_eq!(g.cuts.len(), 12);
        for link in &g.cuts {
            assert!(g.is_cut(&link.to, &link.from), "symmetric: {link}");
        }
    }

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        for topology in [three(), five()] {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let g = majorities_ring(&topology, &mut rng);
            let majority = topology.nodes.len() / 2 + 1;
            let mut views = BTreeSet::new();
            for node in topology.names() {
                let view = hears(&g, &topology, &node);
                assert_eq!(view.len(), majority, "{node} hears {view:?}");
                views.insert(view);
            }
            assert_eq!(views.len(), topology.nodes.len(), "all views differ");
        }
        // On 3 nodes the ring is three one-way cuts.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let g = majorities_ring(&three(), &mut rng);
        assert_eq!(g.cuts.len(), 3);
        assert!(g.cuts.iter().all(|l| !g.is_cut(&l.to, &l.from)));
    }

    #[test]
    fn bridge_keeps_one_node_connected_to_both_sides() {
        let t = five();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let g = bridge(&t, &mut rng);
        let uncut: Vec<String> = t
            .names()
            .into_iter()
            .filter(|n| g.cuts.iter().all(|l| &l.from != n && &l.to != n))
            .collect();
        assert_eq!(uncut.len(), 1, "exactly one bridge node: {g:?}");
        // 2 nodes against 2 nodes, both directions.
        assert_eq!(g.cuts.len(), 8);
        let g3 = bridge(&three(), &mut rng);
        assert_eq!(g3.cuts.len(), 2);
    }

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(
            NemesisKind::parse_list("partition-zones, kill,kill").expect("parse"),
            vec![NemesisKind::PartitionZones, NemesisKind::Kill]
        );
        assert_eq!(NemesisKind::parse_list("all").expect("parse").len(), 9);
        assert!(NemesisKind::parse_list("all")
            .expect("parse")
            .contains(&NemesisKind::Clock));
        assert!(NemesisKind::parse_list("none").expect("parse").is_empty());
        assert!(matches!(
            NemesisKind::parse_list("flood"),
            Err(NemesisError::UnknownNemesis(_))
        ));
    }

    #[test]
    fn same_seed_same_schedule_and_the_schedule_is_well_formed() {
        let t = five();
        let options = ScheduleOptions::for_time_limit(120_000);
        let a = schedule(&t, NemesisKind::ALL, &options, 42).expect("schedule");
        let b = schedule(&t, NemesisKind::ALL, &options, 42).expect("schedule");
        assert_eq!(a, b);
        assert!(a.len() >= 5, "120 s holds several faults: {}", a.len());
        let differs = (43..53)
            .any(|seed| schedule(&t, NemesisKind::ALL, &options, seed).expect("schedule") != a);
        assert!(differs, "other seeds give other schedules");
        let mut previous_stop = 0;
        for interval in &a {
            assert!(interval.start_ms >= previous_stop + options.quiet_ms_min);
            assert!(interval.stop_ms - interval.start_ms >= options.fault_ms_min);
            assert!(interval.stop_ms - interval.start_ms <= options.fault_ms_max);
            assert!(interval.stop_ms <= options.time_limit_ms);
            previous_stop = interval.stop_ms;
        }
        // The schedule survives test.json.
        let json = serde_json::to_string(&a).expect("json");
        let back: Vec<FaultInterval> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, a);
    }

    #[test]
    fn short_tests_still_get_a_fault_and_bad_options_are_refused() {
        let options = ScheduleOptions::for_time_limit(10_000);
        let s = schedule(&three(), &[NemesisKind::Kill], &options, 1).expect("schedule");
        assert!(!s.is_empty());
        assert!(schedule(&three(), &[], &options, 1)
            .expect("schedule")
            .is_empty());
        let bad = ScheduleOptions {
            fault_ms_min: 5,
            fault_ms_max: 1,
            ..options
        };
        assert!(schedule(&three(), &[NemesisKind::Kill], &bad, 1).is_err());
        let one_zone = Topology::new(vec![
            NodeSpec {
                name: "a".into(),
                zone: "z".into(),
                witness: false,
            },
            NodeSpec {
                name: "b".into(),
                zone: "z".into(),
                witness: false,
            },
            NodeSpec {
                name: "c".into(),
                zone: "z".into(),
                witness: false,
            },
        ])
        .expect("topology");
        assert!(matches!(
            schedule(&one_zone, &[NemesisKind::PartitionZones], &options, 1),
            Err(NemesisError::NotApplicable { .. })
        ));
    }

    #[test]
    fn the_kill_loop_is_seeded_hits_one_node_at_a_time_and_sometimes_the_leader() {
        let t = three();
        let plan = kill_loop(&t, 100, 5).expect("plan");
        assert_eq!(plan.len(), 100);
        assert_eq!(
            plan,
            kill_loop(&t, 100, 5).expect("plan"),
            "same seed, same plan"
        );
        assert_ne!(plan, kill_loop(&t, 100, 6).expect("plan"));
        let leader = plan.iter().filter(|s| s.target == Target::Leader).count();
        assert!(
            (15..=55).contains(&leader),
            "about a third target the leader: {leader}"
        );
        let mut hit = BTreeSet::new();
        for step in &plan {
            if let Target::Nodes(nodes) = &step.target {
                assert_eq!(nodes.len(), 1, "one node at a time keeps a quorum");
                hit.insert(nodes[0].clone());
            }
            assert!(step.hold_ms <= KILL_LOOP_HOLD_MS_MAX);
            assert!((KILL_LOOP_GAP_MS_MIN..=KILL_LOOP_GAP_MS_MAX).contains(&step.gap_ms));
        }
        assert_eq!(hit.len(), 3, "every node gets killed");
        assert!(kill_loop(&t, 0, 5).is_err());
        let two = Topology::default_for(2).expect("topology");
        assert!(matches!(
            kill_loop(&two, 5, 5),
            Err(NemesisError::NotApplicable { .. })
        ));
    }

    #[test]
    fn clock_faults_jump_a_day_either_way_and_may_target_the_leader() {
        let t = three();
        let options = ScheduleOptions::for_time_limit(600_000);
        let plan = schedule(&t, &[NemesisKind::Clock], &options, 4).expect("schedule");
        assert!(plan.len() > 10);
        let mut offsets = BTreeSet::new();
        let mut leader = 0;
        for interval in &plan {
            let Fault::Clock { target, offset_ms } = &interval.fault else {
                panic!("{:?}", interval.fault);
            };
            offsets.insert(*offset_ms);
            match target {
                Target::Leader => leader += 1,
                Target::Nodes(nodes) => assert_eq!(nodes.len(), t.minority()),
            }
        }
        assert_eq!(offsets, BTreeSet::from([-CLOCK_JUMP_MS, CLOCK_JUMP_MS]));
        assert!(leader > 0);
        let fault = Fault::Clock {
            target: Target::Leader,
            offset_ms: -CLOCK_JUMP_MS,
        };
        let resolved = fault.resolve(&t, Some("n3")).expect("resolve");
        assert_eq!(resolved.describe(), "clock of n3 -24 h (-86400000 ms)");
        assert_eq!(resolved.kind(), NemesisKind::Clock);
    }

    #[test]
    fn resolve_names_the_leader() {
        let t = three();
        let fault = Fault::IsolateLeader {
            cut: CutMode::Reset,
        }
        .resolve(&t, Some("n3"))
        .expect("resolve");
        match &fault {
            Fault::Partition {
                partition,
                grudge,
                cut,
            } => {
                assert_eq!(*cut, CutMode::Reset);
                assert_eq!(*partition, PartitionKind::IsolateLeader);
                assert!(grudge.is_cut("n3", "n1") && grudge.is_cut("n1", "n3"));
                assert!(!grudge.is_cut("n1", "n2"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let kill = Fault::Kill {
            target: Target::Leader,
        };
        assert_eq!(
            kill.resolve(&t, Some("n2")).expect("resolve"),
            Fault::Kill {
                target: Target::Nodes(vec!["n2".into()])
            }
        );
        assert_eq!(
            kill.resolve(&t, None),
            Err(NemesisError::NoLeader(NemesisKind::Kill))
        );
    }
}
