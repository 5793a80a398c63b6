//! Node configuration: identity, zone, addresses, data directory, initial members and timeouts.
//!
//! Values come from command-line flags, or from a TOML file (`--config`) with the same names in
//! snake_case; a flag given on the command line wins over the file. `validate` checks everything
//! a node needs before it touches its data directory, so a bad configuration is a clear message
//! at startup rather than a confusing failure later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::limits;
use crate::raft::types::NodeId;
use crate::raft::types::NodeInfo;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for metrokv-node: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("missing required setting `{0}` (give it as a flag or in the config file)")]
    Missing(&'static str),
    #[error("{0}")]
    Tls(String),
    #[error("bad member {spec:?}: {reason} (expected ID=ZONE/CLIENT_ADDR/PEER_ADDR, e.g. 1=dc-a/127.0.0.1:7001/127.0.0.1:7101)")]
    BadMember { spec: String, reason: String },
    #[error("this node's id {0} is not among the initial members")]
    NotAMember(NodeId),
    #[error("invalid timeouts: {0}")]
    Timeouts(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Raft timing and log-retention knobs. Defaults fit a metro link (~1 ms round trip): a failed
/// leader is replaced in well under a second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTimeouts {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Timeout for sending one snapshot chunk and, for the last one, installing it.
    pub install_snapshot_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one. A snapshot is a full copy of
    /// the state, so this sets how much of a node's CPU goes to them under a steady write load:
    /// at 10,000 a node busy with 9k puts/s spent about a tenth of its CPU building one every
    /// second. The state machine is on disk, so a larger value costs log space, not restart time.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the latest snapshot (for followers slightly behind).
    pub logs_kept_after_snapshot: u64,
    /// How long a write waits for its entry to commit and apply before answering 504.
    pub write_timeout_ms: u64,
    /// How long a linearizable read waits for the leader's confirmation and the local apply.
    pub read_timeout_ms: u64,
}

impl Default for RaftTimeouts {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 30,
            election_timeout_ms_min: 120,
            election_timeout_ms_max: 240,
            install_snapshot_timeout_ms: 5_000,
            snapshot_logs_since_last: 100_000,
            logs_kept_after_snapshot: 1_000,
            write_timeout_ms: 5_000,
            read_timeout_ms: 3_000,
        }
    }
}

impl RaftTimeouts {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::Timeouts(m));
        if self.heartbeat_interval_ms == 0 {
            return err("heartbeat_interval_ms must be > 0".into());
        }
        if self.election_timeout_ms_min >= self.election_timeout_ms_max {
            return err(format!(
                "election_timeout_ms_min ({}) must be < election_timeout_ms_max ({})",
                self.election_timeout_ms_min, self.election_timeout_ms_max
            ));
        }
        if self.heartbeat_interval_ms * 2 > self.election_timeout_ms_min {
            return err(format!(
                "heartbeat_interval_ms ({}) must be at most half of election_timeout_ms_min ({})",
                self.heartbeat_interval_ms, self.election_timeout_ms_min
            ));
        }
        if self.snapshot_logs_since_last == 0
            || self.write_timeout_ms == 0
            || self.read_timeout_ms == 0
        {
            return err(
                "snapshot_logs_since_last, write_timeout_ms and read_timeout_ms must be > 0".into(),
            );
        }
        Ok(())
    }
}

/// The settings as read from a TOML file; every field optional so flags can fill the gaps.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<NodeId>,
    pub zone: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub peer_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub cluster_id: Option<String>,
    /// Members as `ID=ZONE/CLIENT_ADDR/PEER_ADDR` strings.
    pub members: Option<Vec<String>>,
    /// `ID=HOST:PORT`: dial peer ID at this address instead of its advertised one.
    pub peer_routes: Option<Vec<String>>,
    #[serde(default)]
    pub raft: Option<RaftTimeouts>,
    pub max_inflight_requests: Option<usize>,
    pub max_connections: Option<usize>,
    pub auth_file: Option<PathBuf>,
    pub auth_open: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub peer_tls_cert: Option<PathBuf>,
    pub peer_tls_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    /// A duration such as `1h` or `15m`.
    pub backup_interval: Option<String>,
    pub backup_keep: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub zone: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Peers check it on every connection, so two clusters on one host cannot cross-talk.
    pub cluster_id: String,
    /// The members the cluster starts with. Used only to initialize pristine storage; after
    /// that the replicated membership is the truth.
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// Where this node dials a peer when that differs from the peer's advertised address (a
    /// proxy, a NAT). The partition harness routes every link through its own proxy this way.
    pub peer_routes: BTreeMap<NodeId, String>,
    pub raft: RaftTimeouts,
    /// Most client requests in flight at once; past it, 503 `overloaded`.
    pub max_inflight_requests: usize,
    /// Most client connections open at once; past it, new ones are closed.
    pub max_connections: usize,
    /// New storage joins an existing cluster (it waits to be added as a learner) instead of
    /// creating one with `members`.
    pub join: bool,
    pub role: NodeRole,
    /// Tokens with roles (`api::auth`); `None`: every request is allowed.
    pub auth_file: Option<PathBuf>,
    /// Paths served without a token besides `/health`.
    pub auth_open: Vec<String>,
    /// HTTPS on the client API (`tls`); `None`: plaintext.
    pub api_tls: Option<crate::tls::TlsFiles>,
    /// Mutual TLS between members; `None`: plaintext.
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// Scheduled backups; `None`: only those asked for with `GET /v1/backup`.
    pub backups: Option<BackupSchedule>,
}

/// What a member is for, from its own command line (the node reports it in its status, and
/// the leader asks before promoting it or handing it leadership).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeRole {
    /// A full member: votes, keeps the state, serves clients.
    #[default]
    Voter,
    /// The small third site's member: votes and keeps the log so that any two sites form a
    /// majority, serves no client requests, and hands leadership on as soon as it gets it.
    Witness,
    /// A copy in another city for backups and stale reads: never promoted to voter, so it never
    /// sits in the write quorum.
    Learner,
}

impl NodeConfig {
    pub fn validate(self) -> Result<Self, ConfigError> {
        self.raft.validate()?;
        if self.zone.is_empty() || self.zone.len() > limits::ZONE_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "zone must be 1..={} bytes",
                limits::ZONE_BYTES_MAX
            )));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > limits::CLUSTER_ID_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "cluster_id must be 1..={} bytes",
                limits::CLUSTER_ID_BYTES_MAX
            )));
        }
        if self.members.len() > limits::CLUSTER_MEMBERS_MAX {
            return Err(ConfigError::Invalid(format!(
                "{} members; a cluster has at most {}",
                self.members.len(),
                limits::CLUSTER_MEMBERS_MAX
            )));
        }
        if self.max_inflight_requests == 0 || self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_inflight_requests and max_connections must be > 0".into(),
            ));
        }
        if self.role == NodeRole::Witness && self.backups.is_some() {
            return Err(ConfigError::Invalid(
                "a witness serves no reads and takes no backups: give --backup-dir to a voter or a learner"
                    .into(),
            ));
        }
        let me = self
            .members
            .get(&self.id)
            .ok_or(ConfigError::NotAMember(self.id))?;
        if me.peer_addr != self.peer_addr.to_string()
            || me.client_addr != self.client_addr.to_string()
        {
            return Err(ConfigError::Invalid(format!(
                "member entry for node {} says client {} / peer {}, but this node listens on client {} / peer {}",
                self.id, me.client_addr, me.peer_addr, self.client_addr, self.peer_addr
            )));
        }
        Ok(self)
    }
}

/// Where scheduled backups go and how often (`--backup-dir`, `--backup-interval`,
/// `--backup-keep`); `api::backup` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSchedule {
    pub dir: PathBuf,
    pub interval: std::time::Duration,
    /// The newest this many backups of this node stay in `dir`; older ones are removed.
    pub keep: usize,
}

/// The schedule of `--backup-dir`, `--backup-interval` (a duration: `90s`, `15m`, `1h`) and
/// `--backup-keep`; the last two mean nothing without a directory.
pub fn backup_schedule(
    dir: Option<PathBuf>,
    interval: Option<&str>,
    keep: Option<usize>,
) -> Result<Option<BackupSchedule>, ConfigError> {
    let Some(dir) = dir else {
        if interval.is_some() || keep.is_some() {
            return Err(ConfigError::Invalid(
                "--backup-interval and --backup-keep need --backup-dir".into(),
            ));
        }
        return Ok(None);
    };
    let interval = match interval {
        None => std::time::Duration::from_secs(limits::BACKUP_INTERVAL_S_DEFAULT),
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ConfigError::Invalid(format!(
                "--backup-interval {text:?}: {e} (give a duration such as 90s, 15m or 1h)"
            ))
        })?,
    };
    if interval < std::time::Duration::from_secs(limits::BACKUP_INTERVAL_S_MIN) {
        return Err(ConfigError::Invalid(format!(
            "--backup-interval must be at least {}s",
            limits::BACKUP_INTERVAL_S_MIN
        )));
    }
    let keep = keep.unwrap_or(limits::BACKUP_KEEP_DEFAULT);
    if keep == 0 {
        return Err(ConfigError::Invalid(
            "--backup-keep must be at least 1".into(),
        ));
    }
    Ok(Some(BackupSchedule {
        dir,
        interval,
        keep,
    }))
}

/// Check a member as `parse_member` would have parsed it (for a member that arrives whole,
/// such as a membership call forwarded by a peer).
pub fn check_member(id: NodeId, info: &NodeInfo) -> Result<(), ConfigError> {
    let spec = format!("{id}={}/{}/{}", info.zone, info.client_addr, info.peer_addr);
    let (parsed_id, parsed) = parse_member(&spec)?;
    if parsed_id != id || &parsed != info {
        return Err(ConfigError::BadMember {
            spec,
            reason: "the parts do not read back as given".into(),
        });
    }
    Ok(())
}

/// Parse `ID=ZONE/CLIENT_ADDR/PEER_ADDR`.
pub fn parse_member(spec: &str) -> Result<(NodeId, NodeInfo), ConfigError> {
    let bad = |reason: &str| ConfigError::BadMember {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (id, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let id: NodeId = id
        .trim()
        .trim_start_matches('n')
        .parse()
        .map_err(|_| bad("the id is not a number"))?;
    if id == 0 {
        return Err(bad("ids start at 1"));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let [zone, client, peer] = parts.as_slice() else {
        return Err(bad("expected three '/'-separated parts"));
    };
    for addr in [client, peer] {
        addr.parse::<SocketAddr>()
            .map_err(|_| bad(&format!("{addr:?} is not a host:port address")))?;
    }
    if zone.is_empty() || zone.len() > limits::ZONE_BYTES_MAX {
        return Err(bad(&format!(
            "the zone must be 1..={} bytes",
            limits::ZONE_BYTES_MAX
        )));
    }
    if client.len() > limits::ADDR_BYTES_MAX || peer.len() > limits::ADDR_BYTES_MAX {
        return Err(bad("an address is too long"));
    }
    Ok((
        id,
        NodeInfo {
            zone: zone.to_string(),
            client_addr: client.to_string(),
            peer_addr: peer.to_string(),
        },
    ))
}

/// Parse `ID=HOST:PORT` peer routes.
pub fn parse_peer_routes(specs: &[String]) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut routes = BTreeMap::new();
    for spec in specs {
        let bad = |reason: &str| {
            ConfigError::Invalid(format!(
                "bad peer route {spec:?}: {reason} (expected ID=HOST:PORT)"
            ))
        };
        let (id, addr) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let id: NodeId = id
            .trim()
            .trim_start_matches('n')
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        addr.parse::<SocketAddr>()
            .map_err(|_| bad("not a host:port address"))?;
        routes.insert(id, addr.to_string());
    }
    Ok(routes)
}

pub fn parse_members(specs: &[String]) -> Result<BTreeMap<NodeId, NodeInfo>, ConfigError> {
    let mut members = BTreeMap::new();
    for spec in specs {
        let (id, info) = parse_member(spec)?;
        if members.insert(id, info).is_some() {
            return Err(ConfigError::BadMember {
                spec: spec.clone(),
                reason: "duplicate id".into(),
            });
        }
    }
    if members.is_empty() {
        return Err(ConfigError::Missing("members"));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_parse_and_reject_garbage() {
        let (id, info) = parse_member("2=dc-a/127.0.0.1:7002/127.0.0.1:7102").unwrap();
        assert_eq!(id, 2);
        assert_eq!(info.zone, "dc-a");
        assert_eq!(info.peer_addr, "127.0.0.1:7102");
        assert_eq!(
            parse_member("n3=dc-b/127.0.0.1:1/127.0.0.1:2").unwrap().0,
            3
        );
        for bad in [
            "",
            "1",
            "x=a/b/c",
            "0=a/127.0.0.1:1/127.0.0.1:2",
            "1=a/127.0.0.1:1",
            "1=/127.0.0.1:1/127.0.0.1:2",
            "1=a/nohost/127.0.0.1:2",
        ] {
            assert!(parse_member(bad).is_err(), "{bad:?} should be refused");
        }
        let dup = vec![
            "1=a/127.0.0.1:1/127.0.0.1:2".to_string(),
            "1=a/127.0.0.1:3/127.0.0.1:4".to_string(),
        ];
        assert!(parse_members(&dup).is_err());
        let routes = parse_peer_routes(&["2=127.0.0.1:9000".to_string()]).unwrap();
        assert_eq!(routes[&2], "127.0.0.1:9000");
        assert!(parse_peer_routes(&["2=nowhere".to_string()]).is_err());
    }

    #[test]
    fn backup_schedules_are_checked() {
        let dir = || Some(PathBuf::from("/var/backups/metrokv"));
        let s = backup_schedule(dir(), None, None).unwrap().unwrap();
        assert_eq!(
            (s.interval.as_secs(), s.keep),
            (
                limits::BACKUP_INTERVAL_S_DEFAULT,
                limits::BACKUP_KEEP_DEFAULT
            )
        );
        let s = backup_schedule(dir(), Some("15m"), Some(3))
            .unwrap()
            .unwrap();
        assert_eq!((s.interval.as_secs(), s.keep), (900, 3));
        assert_eq!(backup_schedule(None, None, None).unwrap(), None);
        for (interval, keep) in [
            (Some("soon"), None),
            (Some("10ms"), None),
            (Some("1h"), Some(0)),
        ] {
            assert!(
                matches!(
                    backup_schedule(dir(), interval, keep),
                    Err(ConfigError::Invalid(_))
                ),
                "{interval:?} {keep:?}"
            );
        }
        assert!(backup_schedule(None, Some("1h"), None).is_err());
        assert!(backup_schedule(None, None, Some(2)).is_err());
    }

    #[test]
    fn timeouts_are_checked() {
        assert!(RaftTimeouts::default().validate().is_ok());
        let bad = RaftTimeouts {
            election_timeout_ms_min: 240,
            election_timeout_ms_max: 240,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = RaftTimeouts {
            heartbeat_interval_ms: 100,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn toml_file_parses() {
        let text = r#"
            id = 1
            zone = "dc-a"
            client_addr = "127.0.0.1:7001"
            peer_addr = "127.0.0.1:7101"
            data_dir = "/var/lib/metrokv"
            members = ["1=dc-a/127.0.0.1:7001/127.0.0.1:7101"]
            [raft]
            heartbeat_interval_ms = 20
        "#;
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.id, Some(1));
        assert_eq!(file.raft.unwrap().heartbeat_interval_ms, 20);
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
