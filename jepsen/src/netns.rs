//! `--net netns`: the test network made of Linux network namespaces, nftables and (if the kernel
//! has it) tc netem. Root only; the proxies (`net.rs`) stay the default and need no privileges.
//!
//! Layout. Every name starts with the run's tag `mkvj<pid>` (the harness's pid), so a crashed
//! run's leftovers are recognisable and [`remove_stale`] removes them at the next start:
//! - `<tag>-br`: a namespace holding the bridge `br0`;
//! - `<tag>-n<id>`: one namespace per node: `lo`, and `eth0` at `10.A.B.(10 + id)/24`, a veth
//!   whose peer `n<id>` is a port of the bridge;
//! - `<tag>h`: the one interface in the root namespace, a veth whose peer `host` is a port of the
//!   bridge. It holds the harness's addresses: `10.A.B.254` (primary: the control plane, never
//!   filtered) and `10.A.B.(200 + z)` for the clients of zone z.
//!
//! The /24 is one that no address or route of the root namespace touches (`choose_subnet`).
//! Nothing else in the root namespace is changed: no firewall rule, no sysctl.
//!
//! Node processes run as `ip netns exec <ns> metrokv-node ...` (`ip` execs the node, so the pid
//! the harness holds is the node's; `cluster.rs` checks `/proc/<pid>/exe` before it signals).
//! Nodes listen on their own address, ports [`NODE_CLIENT_PORT`] and [`NODE_PEER_PORT`], and
//! dial each other directly over the bridge. A zone's clients reach node N through a relay (a
//! `proxy.rs` proxy that always passes) whose upstream connections leave from the zone's
//! address, so that N's rules can tell zones apart; faults never touch the relays.
//!
//! Faults, with the proxies' meaning (see `net.rs`): the cut link A→B ("A cannot use its
//! connections to B") becomes rules in B's namespace (table `inet mkvj`) that match conntrack
//! direction: packets from A on connections A opened (`ct direction original`) and B's packets to
//! A on them (`ct direction reply`). Connections B opens to A keep working, so one-way cuts stay
//! one-way at the connection level (a plain "drop from A" would break B's connections to A too,
//! because their answers come from A). A client zone Z cut off from N is the same with Z's
//! address. Conntrack runs from the namespace's creation (a `ct` rule in the base table), so the
//! directions of connections are known before any fault. Cut modes: black-hole = `drop`;
//! reset = TCP RST; drop = ICMP admin-prohibited (a fast "no route to host"). Latency is tc
//! netem on each node's `eth0` by destination (answers to clients included, their requests
//! not); without netem in the kernel, latency faults are skipped and recorded as such, and the
//! healthy inter-zone latency is 0.
//!
//! Severing at the heal (nothing held during a fault may arrive late): `ss -K` destroys every
//! TCP connection in each node's namespace, and the relays abort theirs.
//!
//! The `ip`, `nft`, `ss` and `tc` commands run synchronously, a few milliseconds each, on the
//! harness's one thread; the harness scheduling lag printed after the run includes them.
//!
//! Leaves out: node processes (`cluster.rs`), when to fault (`faults.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::nemesis::{CutMode, Topology};
use crate::net::Shape;
use crate::proxy::Proxy;

/// Every name this module creates starts with this, then the harness's pid.
pub const TAG_PREFIX: &str = "mkvj";
/// The nodes' ports, on their own addresses inside their namespaces.
pub const NODE_CLIENT_PORT: u16 = 7001;
pub const NODE_PEER_PORT: u16 = 7002;
/// Last octets: node n<id> is at `NODE_OCTET_BASE + id`, zone z's clients at
/// `ZONE_OCTET_BASE + z`, the control plane at `CONTROL_OCTET`.
const NODE_OCTET_BASE: u8 = 10;
const ZONE_OCTET_BASE: u8 = 200;
const CONTROL_OCTET: u8 = 254;
/// The most zones (their client addresses must stay below the control address).
pub const ZONES_MAX: usize = (CONTROL_OCTET - ZONE_OCTET_BASE) as usize;
/// Subnets are `10.A.B.0/24` with A in this range (B from the pid, then upwards).
const SUBNET_A_MIN: u8 = 200;
const SUBNET_A_MAX: u8 = 249;
/// The nftables table in each node's namespace.
pub const NFT_TABLE: &str = "mkvj";
/// Interface names in the bridge namespace and the nodes' namespaces.
const BRIDGE: &str = "br0";
const NODE_IF: &str = "eth0";
const BRIDGE_HOST_PORT: &str = "host";
/// The packages that provide the tools (`nft`; `ip`, `ss` and `tc`), for [`install_tools`].
pub const APT_PACKAGES: [&str; 2] = ["nftables", "iproute2"];
/// Tools a netns run needs, and the one it can do without (latency faults need `tc`).
const TOOLS_REQUIRED: [&str; 3] = ["ip", "nft", "ss"];
const TOOL_TC: &str = "tc";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Why a netns run cannot start here: not root, or tools missing (named). `Ok` when it can.
pub fn unavailable() -> Result<(), String> {
    if !is_root() {
        return Err("--net netns needs root (network namespaces and nftables)".to_owned());
    }
    let missing: Vec<&str> = TOOLS_REQUIRED
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (apt-get install -y {})",
            missing.join(", "),
            APT_PACKAGES.join(" ")
        ));
    }
    Ok(())
}

/// Installs the tools with apt when running as root and some are missing (the command is
/// `apt-get install -y --no-install-recommends nftables iproute2`, after an `apt-get update`
/// if the first try fails). Does nothing when they are all there.
pub fn install_tools() -> anyhow::Result<()> {
    if unavailable().is_ok() {
        return Ok(());
    }
    if !is_root() {
        bail!("installing {} needs root", APT_PACKAGES.join(" "));
    }
    if !on_path("apt-get") {
        bail!(
            "no apt-get here; install {} by other means",
            APT_PACKAGES.join(" ")
        );
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(APT_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
    };
    let mut status = install().context("running apt-get install")?;
    if !status.success() {
        let update = Command::new("apt-get")
            .arg("update")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get update")?;
        if !update.success() {
            bail!("apt-get update failed ({update})");
        }
        status = install().context("running apt-get install")?;
    }
    if !status.success() {
        bail!(
            "apt-get install {} failed ({status})",
            APT_PACKAGES.join(" ")
        );
    }
    unavailable().map_err(|why| anyhow::anyhow!("after installing: {why}"))
}

/// Runs a command; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program} {}", args.join(" ")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args, None)
}

/// Runs `program args` inside namespace `ns`.
fn in_ns(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all, stdin)
}

/// One node's place in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Its namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl NodeNet {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, NODE_CLIENT_PORT))
    }

    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, NODE_PEER_PORT))
    }
}

/// The names and addresses of one run (pure: nothing is created by building it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub tag: String,
    /// `10.a.b.0/24`.
    pub subnet: (u8, u8),
    pub bridge_ns: String,
    /// The veth in the root namespace.
    pub host_if: String,
    pub control_ip: Ipv4Addr,
    pub nodes: BTreeMap<String, NodeNet>,
    /// The source address of each zone's clients.
    pub zones: BTreeMap<String, Ipv4Addr>,
}

/// The tag of the run with harness pid `pid`.
pub fn tag_for(pid: u32) -> String {
    format!("{TAG_PREFIX}{pid}")
}

/// The pid in a name this module made (`mkvj<pid>...`), if it is one.
fn tag_pid(name: &str) -> Option<u32> {
    let digits: String = name
        .strip_prefix(TAG_PREFIX)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl Layout {
    pub fn new(tag: &str, subnet: (u8, u8), topology: &Topology) -> anyhow::Result<Layout> {
        let address = |last: u8| Ipv4Addr::new(10, subnet.0, subnet.1, last);
        let mut nodes = BTreeMap::new();
        for node in &topology.nodes {
            let id: u8 = node
                .name
                .strip_prefix('n')
                .and_then(|d| d.parse().ok())
                .filter(|id| (1..ZONE_OCTET_BASE - NODE_OCTET_BASE).contains(id))
                .with_context(|| {
                    format!("node {} needs a name n1..n189 in netns mode", node.name)
                })?;
            nodes.insert(
                node.name.clone(),
                NodeNet {
                    ns: format!("{tag}-{}", node.name),
                    ip: address(NODE_OCTET_BASE + id),
                },
            );
        }
        let zone_names: Vec<String> = topology.zones().into_keys().collect();
        if zone_names.len() > ZONES_MAX {
            bail!("netns mode handles at most {ZONES_MAX} zones");
        }
        let zones = zone_names
            .into_iter()
            .zip(ZONE_OCTET_BASE..)
            .map(|(zone, last)| (zone, address(last)))
            .collect();
        // Interface names are at most 15 bytes: "mkvj" + 7 pid digits + "h" fits.
        let host_if = format!("{tag}h");
        if host_if.len() > 15 {
            bail!("interface name {host_if} is too long");
        }
        Ok(Layout {
            tag: tag.to_owned(),
            subnet,
            bridge_ns: format!("{tag}-br"),
            host_if,
            control_ip: address(CONTROL_OCTET),
            nodes,
            zones,
        })
    }

    fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.bridge_ns.clone()];
        all.extend(self.nodes.values().map(|n| n.ns.clone()));
        all
    }
}

/// Parses the /24 prefixes `10.a.b` found in `ip -4 -o addr` and `ip -4 route` output.
fn used_subnets(text: &str) -> BTreeSet<(u8, u8)> {
    text.split(|c: char| c.is_whitespace() || c == '/')
        .filter_map(|word| word.parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[0] == 10)
        .map(|a| (a.octets()[1], a.octets()[2]))
        .collect()
}

/// A `10.a.b.0/24` that nothing in `used` (addresses and routes of the root namespace, whose
/// text is given) touches, starting from one derived from `pid`. A route wider than /24
/// within 10/8 (such as 10.0.0.0/8 itself) rules out the whole range: the choice would clash.
fn choose_subnet(pid: u32, addresses_and_routes: &str) -> anyhow::Result<(u8, u8)> {
    for line in addresses_and_routes.lines() {
        for word in line.split_whitespace() {
            if let Some((net, bits)) = word.split_once('/') {
                let wide = bits.parse::<u8>().is_ok_and(|b| b < 24);
                if wide && net.parse::<Ipv4Addr>().is_ok_and(|a| a.octets()[0] == 10) {
                    bail!("the root namespace routes {word}; no 10.x.y.0/24 is sure not to clash");
                }
            }
        }
    }
    let used = used_subnets(addresses_and_routes);
    let span = u32::from(SUBNET_A_MAX - SUBNET_A_MIN + 1) * 256;
    let start = pid % span;
    (0..span)
        .map(|k| (start + k) % span)
        .map(|i| (SUBNET_A_MIN + (i / 256) as u8, (i % 256) as u8))
        .find(|subnet| !used.contains(subnet))
        .context("no free 10.x.y.0/24")
}

/// Whether the process `pid` is a running metrokv-jepsen.
fn harness_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "metrokv-jepsen")
}

/// Removes namespaces and root-namespace interfaces named by this module for a run that is
/// gone (its pid is not a running harness, or is ours: we have created nothing yet). Returns
/// what it removed.
pub fn remove_stale() -> anyhow::Result<Vec<String>> {
    let own = std::process::id();
    let stale = |name: &str| tag_pid(name).is_some_and(|pid| pid == own || !harness_alive(pid));
    let mut removed = Vec::new();
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if stale(name) {
            ip(&["netns", "del", name])?;
            removed.push(format!("namespace {name}"));
        }
    }
    for line in ip(&["-o", "link", "show"])?.lines() {
        // "12: mkvj123h@if3: <...>"
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if name.ends_with('h') && stale(name) {
            // It may have gone with its peer's namespace just now.
            if ip(&["link", "show", name]).is_ok() {
                ip(&["link", "del", name])?;
                removed.push(format!("interface {name}"));
            }
        }
    }
    Ok(removed)
}

/// The rules of one node's namespace for a network shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// Rules of the `cuts_in` chain (input hook).
    pub input: Vec<String>,
    /// Rules of the `cuts_out` chain (output hook).
    pub output: Vec<String>,
    /// Egress delays by destination: (address, latency ms, jitter ms).
    pub delays: Vec<(Ipv4Addr, u64, u64)>,
}

/// The verdicts of a cut, for the input and the output chain.
fn verdicts(cut: CutMode) -> (&'static str, &'static str) {
    match cut {
        CutMode::Blackhole => ("drop", "meta l4proto tcp drop"),
        CutMode::Drop => (
            "reject with icmpx type admin-prohibited",
            "meta l4proto tcp drop",
        ),
        // The output rule must not catch the RSTs that the input rule sends.
        CutMode::Reset => (
            "meta l4proto tcp reject with tcp reset",
            "tcp flags & rst == 0 reject with tcp reset",
        ),
    }
}

/// Adds the rules that cut connections opened from `source` to this node.
fn cut_from(rules: &mut NodeRules, source: Ipv4Addr, cut: CutMode) {
    let (input, output) = verdicts(cut);
    rules
        .input
        .push(format!("ip saddr {source} ct direction original {input}"));
    rules
        .output
        .push(format!("ip daddr {source} ct direction reply {output}"));
}

/// Every node's rules for `shape` (see the module doc). `base_latency_ms` is the healthy
/// inter-zone latency; delays are only applied where netem exists.
pub fn plan_rules(
    layout: &Layout,
    topology: &Topology,
    shape: &Shape<'_>,
    base_latency_ms: u64,
) -> BTreeMap<String, NodeRules> {
    let zone_of = |name: &str| topology.zone_of(name).unwrap_or_default().to_owned();
    let mut plan = BTreeMap::new();
    for name in layout.nodes.keys() {
        let mut rules = NodeRules::default();
        let my_zone = zone_of(name);
        // Egress delays: node peers and client zones in other zones carry the base latency,
        // or the fault's on the slowed links.
        for (peer, peer_net) in &layout.nodes {
            if peer == name {
                continue;
            }
            let slowed = match shape {
                Shape::Latency {
                    links,
                    latency_ms,
                    jitter_ms,
                } => links
                    .iter()
                    .any(|l| &l.from == name && &l.to == peer)
                    .then_some((*latency_ms, *jitter_ms)),
                _ => None,
            };
            if let Some((latency, jitter)) = slowed {
                rules.delays.push((peer_net.ip, latency, jitter));
            } else if zone_of(peer) != my_zone && base_latency_ms > 0 {
                rules
                    .delays
                    .push((peer_net.ip, base_latency_ms, base_latency_ms / 10));
            }
        }
        for (zone, zone_ip) in &layout.zones {
            let slowed = match shape {
                Shape::Latency {
                    links,
                    latency_ms,
                    jitter_ms,
                } => links
                    .iter()
                    .any(|l| zone_of(&l.from) == *zone && zone_of(&l.to) == my_zone)
                    .then_some((*latency_ms, *jitter_ms)),
                _ => None,
            };
            if let Some((latency, jitter)) = slowed {
                rules.delays.push((*zone_ip, latency, jitter));
            } else if *zone != my_zone && base_latency_ms > 0 {
                rules
                    .delays
                    .push((*zone_ip, base_latency_ms, base_latency_ms / 10));
            }
        }
        if let Shape::Partition { grudge, cut } = shape {
            for (peer, peer_net) in &layout.nodes {
                if peer != name && grudge.is_cut(peer, name) {
                    cut_from(&mut rules, peer_net.ip, *cut);
                }
            }
            for (zone, zone_ip) in &layout.zones {
                if grudge.zone_blocked(topology, zone, name) {
                    cut_from(&mut rules, *zone_ip, *cut);
                }
            }
        }
        plan.insert(name.clone(), rules);
    }
    plan
}

/// The nft script that replaces a node's cut rules (one transaction: all or nothing).
pub fn nft_script(rules: &NodeRules) -> String {
    let mut script =
        format!("flush chain inet {NFT_TABLE} cuts_in\nflush chain inet {NFT_TABLE} cuts_out\n");
    for rule in &rules.input {
        script.push_str(&format!("add rule inet {NFT_TABLE} cuts_in {rule}\n"));
    }
    for rule in &rules.output {
        script.push_str(&format!("add rule inet {NFT_TABLE} cuts_out {rule}\n"));
    }
    script
}

/// The base table of a node's namespace: empty cut chains, jumped to from the hooks; the `ct`
/// rule makes conntrack track every connection from the start.
fn nft_base() -> String {
    format!(
        "table inet {NFT_TABLE} {{\n\
         chain cuts_in {{ }}\n\
         chain cuts_out {{ }}\n\
         chain input {{ type filter hook input priority 0; policy accept; ct state new counter; jump cuts_in; }}\n\
         chain output {{ type filter hook output priority 0; policy accept; jump cuts_out; }}\n\
         }}\n"
    )
}

/// The tc commands (arguments after `tc`) that give `eth0` these egress delays: an HTB root
/// whose default class passes, one class with a netem child per delayed destination.
pub fn tc_commands(delays: &[(Ipv4Addr, u64, u64)]) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    if delays.is_empty() {
        return commands;
    }
    let words = |text: String| text.split_whitespace().map(str::to_owned).collect();
    commands.push(words(format!(
        "qdisc add dev {NODE_IF} root handle 1: htb default 1"
    )));
    commands.push(words(format!(
        "class add dev {NODE_IF} parent 1: classid 1:1 htb rate 10gbit"
    )));
    for (k, (address, latency, jitter)) in delays.iter().enumerate() {
        let class = 10 + k;
        commands.push(words(format!(
            "class add dev {NODE_IF} parent 1: classid 1:{class} htb rate 10gbit"
        )));
        commands.push(words(format!(
            "qdisc add dev {NODE_IF} parent 1:{class} handle {class}: netem delay {latency}ms {jitter}ms"
        )));
        commands.push(words(format!(
            "filter add dev {NODE_IF} parent 1: protocol ip prio 1 u32 match ip dst {address}/32 flowid 1:{class}"
        )));
    }
    commands
}

/// The network namespaces of one run, and the client relays. Dropping it removes everything
/// it created (best effort; [`remove_stale`] catches what a crash leaves).
#[derive(Debug)]
pub struct NetnsNetwork {
    layout: Layout,
    topology: Topology,
    base_latency_ms: u64,
    /// Why latency cannot be applied (no netem), if so.
    no_netem: Option<String>,
    /// (zone, node) → relay.
    relays: BTreeMap<(String, String), Proxy>,
    /// Nodes whose eth0 has a tc root now.
    shaped: std::sync::Mutex<BTreeSet<String>>,
    torn_down: bool,
    /// The CA of the nodes' API certificates when they speak HTTPS (`--tls`).
    api_ca: Option<std::path::PathBuf>,
}

impl NetnsNetwork {
    /// Creates the namespaces, the bridge, the veths, the addresses and the base nftables
    /// table for `topology`, after removing stale leftovers of crashed runs. Starts no relay.
    pub fn create(topology: &Topology, base_latency_ms: u64) -> anyhow::Result<NetnsNetwork> {
        unavailable().map_err(|why| anyhow::anyhow!(why))?;
        let removed = remove_stale()?;
        if !removed.is_empty() {
            eprintln!("removed leftovers of a crashed run: {}", removed.join(", "));
        }
        let mut routes = ip(&["-4", "-o", "addr", "show"])?;
        routes.push_str(&ip(&["-4", "route", "show", "table", "all"])?);
        let subnet = choose_subnet(std::process::id(), &routes)?;
        let layout = Layout::new(&tag_for(std::process::id()), subnet, topology)?;
        let mut network = NetnsNetwork {
            layout,
            topology: topology.clone(),
            base_latency_ms,
            no_netem: None,
            relays: BTreeMap::new(),
            shaped: std::sync::Mutex::new(BTreeSet::new()),
            torn_down: false,
            api_ca: None,
        };
        // On an error, dropping `network` removes what was made so far.
        network.build()?;
        network.no_netem = network.probe_netem();
        Ok(network)
    }

    fn build(&self) -> anyhow::Result<()> {
        let l = &self.layout;
        let prefix = |ip: Ipv4Addr| format!("{ip}/24");
        ip(&["netns", "add", &l.bridge_ns])?;
        ip(&["-n", &l.bridge_ns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &l.bridge_ns, "link", "set", BRIDGE, "up"])?;
        for (name, node) in &l.nodes {
            ip(&["netns", "add", &node.ns])?;
            ip(&[
                "-n",
                &l.bridge_ns,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                NODE_IF,
                "netns",
                &node.ns,
            ])?;
            ip(&[
                "-n",
                &l.bridge_ns,
                "link",
                "set",
                name,
                "master",
                BRIDGE,
                "up",
            ])?;
            ip(&[
                "-n",
                &node.ns,
                "addr",
                "add",
                &prefix(node.ip),
                "dev",
                NODE_IF,
            ])?;
            ip(&["-n", &node.ns, "link", "set", NODE_IF, "up"])?;
            ip(&["-n", &node.ns, "link", "set", "lo", "up"])?;
            in_ns(&node.ns, "nft", &["-f", "-"], Some(&nft_base()))?;
        }
        ip(&[
            "link",
            "add",
            &l.host_if,
            "type",
            "veth",
            "peer",
            "name",
            BRIDGE_HOST_PORT,
            "netns",
            &l.bridge_ns,
        ])?;
        ip(&[
            "-n",
            &l.bridge_ns,
            "link",
            "set",
            BRIDGE_HOST_PORT,
            "master",
            BRIDGE,
            "up",
        ])?;
        // The control address first: it is the primary, the source of unbound connections.
        ip(&["addr", "add", &prefix(l.control_ip), "dev", &l.host_if])?;
        for zone_ip in l.zones.values() {
            ip(&["addr", "add", &prefix(*zone_ip), "dev", &l.host_if])?;
        }
        ip(&["link", "set", &l.host_if, "up"])?;
        Ok(())
    }

    /// None when tc netem works in a node's namespace, else why not.
    fn probe_netem(&self) -> Option<String> {
        if !on_path(TOOL_TC) {
            return Some("no tc (iproute2)".to_owned());
        }
        let ns = &self.layout.nodes.values().next()?.ns;
        match in_ns(
            ns,
            TOOL_TC,
            &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            None,
        ) {
            Ok(_) => {
                let _ = in_ns(ns, TOOL_TC, &["qdisc", "del", "dev", "lo", "root"], None);
                None
            }
            Err(error) => Some(format!(
                "tc netem is not available (the kernel may lack sch_netem): {error:#}"
            )),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where each node lives: namespace and address.
    pub fn placement(&self) -> BTreeMap<String, NodeNet> {
        self.layout.nodes.clone()
    }

    /// Why latency faults cannot be applied, if they cannot.
    pub fn latency_unavailable(&self) -> Option<&str> {
        self.no_netem.as_deref()
    }

    /// Starts the relay of every (zone, node): a passing proxy whose upstream connections leave
    /// from the zone's address. `seed` is unused by a passing proxy but keeps the proxy's API.
    /// The nodes' API speaks HTTPS with certificates from this CA (`--tls`): relay URLs say
    /// https.
    pub fn set_api_ca(&mut self, ca: Option<std::path::PathBuf>) {
        self.api_ca = ca;
    }

    pub fn api_ca(&self) -> Option<&std::path::Path> {
        self.api_ca.as_deref()
    }

    /// The URL a client uses to reach a node through `relay`.
    fn relay_url(&self, relay: &Proxy) -> String {
        format!(
            "{}://{}",
            crate::net::scheme(&self.api_ca),
            relay.local_addr()
        )
    }

    pub async fn start_relays(&mut self, seed: u64) -> anyhow::Result<()> {
        for (zone, zone_ip) in &self.layout.zones {
            for (name, node) in &self.layout.nodes {
                let relay = Proxy::start_from(node.client_addr(), seed, Some((*zone_ip).into()))
                    .await
                    .with_context(|| format!("starting the relay of {zone} → {name}"))?;
                self.relays.insert((zone.clone(), name.clone()), relay);
            }
        }
        Ok(())
    }

    /// Applies `shape` to every node's namespace.
    pub fn shape(&self, shape: &Shape<'_>) -> anyhow::Result<()> {
        if matches!(shape, Shape::Latency { .. }) {
            if let Some(why) = &self.no_netem {
                bail!("latency cannot be applied: {why}");
            }
        }
        let base = if self.no_netem.is_some() {
            0
        } else {
            self.base_latency_ms
        };
        let plan = plan_rules(&self.layout, &self.topology, shape, base);
        for (name, rules) in &plan {
            let node = &self.layout.nodes[name];
            in_ns(&node.ns, "nft", &["-f", "-"], Some(&nft_script(rules)))
                .with_context(|| format!("applying the rules of {name}"))?;
            if self.no_netem.is_none() {
                self.apply_delays(name, node, &rules.delays)?;
            }
        }
        Ok(())
    }

    fn apply_delays(
        &self,
        name: &str,
        node: &NodeNet,
        delays: &[(Ipv4Addr, u64, u64)],
    ) -> anyhow::Result<()> {
        let mut shaped = self.shaped.lock().unwrap_or_else(|e| e.into_inner());
        if shaped.remove(name) {
            in_ns(
                &node.ns,
                TOOL_TC,
                &["qdisc", "del", "dev", NODE_IF, "root"],
                None,
            )?;
        }
        for command in tc_commands(delays) {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            in_ns(&node.ns, TOOL_TC, &args, None)
                .with_context(|| format!("shaping the links of {name}"))?;
            shaped.insert(name.to_owned());
        }
        Ok(())
    }

    /// Destroys every TCP connection of the nodes (`ss -K` in each namespace) and of the
    /// relays, so nothing held during a fault is delivered after it.
    pub fn sever_all(&self) -> anyhow::Result<()> {
        for relay in self.relays.values() {
            relay.handle().sever();
        }
        for (name, node) in &self.layout.nodes {
            in_ns(
                &node.ns,
                "ss",
                &["-K", "-t", "-n", "state", "connected"],
                None,
            )
            .with_context(|| format!("severing the connections of {name}"))?;
        }
        Ok(())
    }

    /// The endpoints of a client in `zone`: (relay URL, node name, node zone) for every node.
    pub fn client_endpoints(&self, zone: &str) -> Vec<(String, String, String)> {
        self.relays
            .iter()
            .filter(|((z, node), _)| z == zone && !self.topology.is_witness(node))
            .map(|((_, node), relay)| {
                (
                    self.relay_url(relay),
                    node.clone(),
                    self.topology.zone_of(node).unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Maps every relay URL back to its node.
    pub fn endpoint_names(&self) -> BTreeMap<String, String> {
        self.relays
            .iter()
            .map(|((_, node), relay)| (self.relay_url(relay), node.clone()))
            .collect()
    }

    /// Stops the relays and removes the namespaces and the root interface.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for (_, relay) in std::mem::take(&mut self.relays) {
            relay.stop().await;
        }
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for ns in self.layout.namespaces() {
            if Path::new("/var/run/netns").join(&ns).exists() {
                if let Err(error) = ip(&["netns", "del", &ns]) {
                    errors.push(format!("{error:#}"));
                }
            }
        }
        // Deleting the bridge namespace deletes the peer of the root veth, and with it the
        // veth; delete it explicitly in case it survived.
        if ip(&["link", "show", &self.layout.host_if]).is_ok() {
            if let Err(error) = ip(&["link", "del", &self.layout.host_if]) {
                errors.push(format!("{error:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("removing the test network: {}", errors.join("; "))
        }
    }
}

impl Drop for NetnsNetwork {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            eprintln!("metrokv-jepsen: {error:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::{isolate, majorities_ring, zones, DirectedLink, Grudge};
    use rand::SeedableRng;

    fn three() -> Topology {
        Topology::default_for(3).expect("topology")
    }

    fn layout() -> Layout {
        Layout::new("mkvj42", (201, 7), &three()).expect("layout")
    }

    #[test]
    fn the_layout_names_everything_after_the_tag_and_gives_distinct_addresses() {
        let l = layout();
        assert_eq!(l.bridge_ns, "mkvj42-br");
        assert_eq!(l.host_if, "mkvj42h");
        assert_eq!(l.nodes["n2"].ns, "mkvj42-n2");
        assert_eq!(l.nodes["n2"].ip, Ipv4Addr::new(10, 201, 7, 12));
        assert_eq!(l.nodes["n2"].client_addr().to_string(), "10.201.7.12:7001");
        assert_eq!(l.zones["dc-a"], Ipv4Addr::new(10, 201, 7, 200));
        assert_eq!(l.zones["dc-b"], Ipv4Addr::new(10, 201, 7, 201));
        assert_eq!(l.control_ip, Ipv4Addr::new(10, 201, 7, 254));
        assert!(l.namespaces().iter().all(|ns| ns.starts_with("mkvj42-")));
        assert_eq!(tag_pid("mkvj42-n1"), Some(42));
        assert_eq!(tag_pid("mkvj4194303h"), Some(4_194_303));
        assert_eq!(tag_pid("mkvjx"), None);
        assert_eq!(tag_pid("other42"), None);
        // The longest pid still gives a valid interface name.
        assert!(Layout::new(&tag_for(4_194_303), (201, 7), &three()).is_ok());
    }

    #[test]
    fn subnets_avoid_what_the_root_namespace_uses() {
        let text = "2: eth0    inet 10.201.7.5/24 brd 10.201.7.255 scope global eth0\n\
                    default via 172.16.0.1 dev eth0\n10.201.8.0/24 dev x proto kernel\n";
        let pid = 7 + 256; // would start at 10.201.7
        let chosen = choose_subnet(pid, text).expect("subnet");
        assert_eq!(chosen, (201, 9), "skips 10.201.7 and 10.201.8");
        assert_eq!(choose_subnet(pid, "").expect("subnet"), (201, 7));
        assert!(choose_subnet(pid, "10.0.0.0/8 dev eth0\n").is_err());
    }

    #[test]
    fn one_way_cuts_are_conntrack_rules_at_the_receiver() {
        let t = three();
        let l = layout();
        let mut grudge = Grudge::default();
        grudge.cuts.insert(DirectedLink::new("n1", "n2"));
        let plan = plan_rules(
            &l,
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Blackhole,
            },
            0,
        );
        assert_eq!(
            plan["n2"].input,
            vec!["ip saddr 10.201.7.11 ct direction original drop"]
        );
        assert_eq!(
            plan["n2"].output,
            vec!["ip daddr 10.201.7.11 ct direction reply meta l4proto tcp drop"]
        );
        assert_eq!(
            plan["n1"],
            NodeRules::default(),
            "n1 keeps its own rules empty"
        );
        assert_eq!(plan["n3"], NodeRules::default());
        let script = nft_script(&plan["n2"]);
        assert!(script.starts_with("flush chain inet mkvj cuts_in\n"));
        assert!(script.contains("add rule inet mkvj cuts_out ip daddr 10.201.7.11"));
    }

    #[test]
    fn partitions_cut_nodes_and_client_zones_like_the_proxies() {
        let t = three();
        let l = layout();
        let grudge = zones(&t);
        let plan = plan_rules(
            &l,
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Reset,
            },
            0,
        );
        // n3 (dc-b) drops n1, n2 and dc-a's clients; n1 drops n3 and dc-b's clients.
        let sources = |rules: &NodeRules| -> Vec<String> {
            rules
                .input
                .iter()
                .map(|r| r.split_whitespace().nth(2).expect("address").to_owned())
                .collect()
        };
        assert_eq!(
            sources(&plan["n3"]),
            ["10.201.7.11", "10.201.7.12", "10.201.7.200"]
        );
        assert_eq!(sources(&plan["n1"]), ["10.201.7.13", "10.201.7.201"]);
        assert!(plan["n1"].input[0].ends_with("meta l4proto tcp reject with tcp reset"));
        assert!(plan["n1"].output[0].ends_with("tcp flags & rst == 0 reject with tcp reset"));
        // An isolated node's own zone still reaches it.
        let grudge = isolate(&t, "n1").expect("isolate");
        let plan = plan_rules(
            &l,
            &t,
            &Shape::Partition {
                grudge: &grudge,
                cut: CutMode::Drop,
            },
            0,
        );
        assert_eq!(
            sources(&plan["n1"]),
            ["10.201.7.12", "10.201.7.13", "10.201.7.201"]
        );
        assert!(plan["n1"].input[0].ends_with("reject with icmpx type admin-prohibited"));
        // The ring on 3 nodes is three one-way cuts: one input rule per node.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let ring = majorities_ring(&t, &mut rng);
        let plan = plan_rules(
            &l,
            &t,
            &Shape::Partition {
                grudge: &ring,
                cut: CutMode::Blackhole,
            },
            0,
        );
        let node_ips: Vec<String> = l.nodes.values().map(|n| n.ip.to_string()).collect();
        let peer_rules: usize = plan
            .values()
            .map(|r| sources(r).iter().filter(|s| node_ips.contains(s)).count())
            .sum();
        assert_eq!(peer_rules, 3);
        // Healthy: nothing cut.
        let plan = plan_rules(&l, &t, &Shape::Healthy, 0);
        assert!(plan.values().all(|r| *r == NodeRules::default()));
    }

    #[test]
    fn latency_becomes_egress_delays_by_destination() {
        let t = three();
        let l = layout();
        let plan = plan_rules(&l, &t, &Shape::Healthy, 2);
        // n1 (dc-a) delays n3 and dc-b's clients; n3 delays n1, n2 and dc-a's clients.
        assert_eq!(
            plan["n1"].delays,
            vec![
                (Ipv4Addr::new(10, 201, 7, 13), 2, 0),
                (Ipv4Addr::new(10, 201, 7, 201), 2, 0)
            ]
        );
        assert_eq!(plan["n3"].delays.len(), 3);
        let links = crate::nemesis::inter_zone_links(&t);
        let plan = plan_rules(
            &l,
            &t,
            &Shape::Latency {
                links: &links,
                latency_ms: 700,
                jitter_ms: 70,
            },
            2,
        );
        assert!(plan["n3"].delays.iter().all(|d| (d.1, d.2) == (700, 70)));
        let commands = tc_commands(&plan["n1"].delays);
        assert_eq!(commands.len(), 2 + 3 * 2);
        assert_eq!(
            commands[0].join(" "),
            "qdisc add dev eth0 root handle 1: htb default 1"
        );
        assert!(commands[3].join(" ").ends_with("netem delay 700ms 70ms"));
        assert!(tc_commands(&[]).is_empty());
    }
}
