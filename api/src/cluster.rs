//! Cluster and operations: `GET /v1/cluster`, `/ready`, `/health`.

use serde::Deserialize;
use serde::Serialize;

/// `GET /v1/cluster`: this node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: String,
    /// The node that answered.
    pub node: u64,
    /// The leader it is in contact with, if any.
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberView>,
    /// The zone-safety mode and state (absent from nodes older than zones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_safety: Option<ZoneSafetyView>,
}

/// How acknowledgements relate to zones (`docs/api.md`, "Zones").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneMode {
    /// Plain Raft majority.
    Off,
    /// As strict until the other zone has been silent for `degrade_after_ms`, then majority
    /// alone until it has caught up.
    Adaptive,
    /// Acknowledged, and visible to linearizable reads, only once voters of two zones have it.
    Strict,
}

/// What acknowledgements wait for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneState {
    /// Writes and linearizable reads wait for two zones.
    ZoneSafe,
    /// Adaptive mode acknowledges on a majority alone (the other zone was silent).
    Degraded,
    /// Degraded, and the other zone is catching up (it persisted entries past the index the
    /// cluster degraded at); zone-safe again once it has caught up. Seen on the leader.
    Recovering,
    /// Mode `off`: a majority is enough.
    Off,
    /// The voters sit in one zone: zone safety does not apply.
    SingleZone,
}

/// The zone section of `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSafetyView {
    pub mode: ZoneMode,
    pub state: ZoneState,
    pub degrade_after_ms: u64,
    /// On the leader: the highest index persisted in two zones, and how far the commit index
    /// is ahead of it.
    pub zone_safe_index: Option<u64>,
    pub lag_entries: Option<u64>,
    /// While degraded: since when (the cluster's replicated clock, ms since the Unix epoch) and
    /// the zone-safe index at that moment; acknowledgements above it rest on one zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_at_index: Option<u64>,
}

/// `PUT /v1/cluster/settings` (fields left out stay as they are) and its answer, also
/// `GET /v1/cluster/settings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_safety: Option<ZoneMode>,
    /// Adaptive mode's patience, in ms (200 ..= 3,600,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade_after_ms: Option<u64>,
    /// The zone the leader should sit in: when the leader is elsewhere and a caught-up voter of
    /// this zone exists, leadership moves there. `""` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_leader_zone: Option<String>,
}

/// One member, with what it says of itself (`None` when it did not answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub zone: String,
    pub client_addr: String,
    pub peer_addr: String,
    /// leader, follower, candidate, learner, witness (started with `--witness`),
    /// remote_learner (started with `--learner`), shutdown, or unknown when unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub applied_index: Option<u64>,
    pub reachable: bool,
}

/// `POST /v1/cluster/members`: a new node, which joins as a learner (start it with `--join`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: u64,
    pub zone: String,
    pub client_addr: String,
    pub peer_addr: String,
}

/// The answer to a membership change or leader transfer: the voters, the learners and the
/// leader now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    #[serde(default)]
    pub leader: Option<u64>,
}

/// `POST /v1/cluster/transfer-leader`: hand leadership to voter `to`, or (without it) to the
/// best caught-up voter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// `GET /ready` (200 when ready, else 503 with the same body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_round_trip() {
        let text = r#"{"cluster_id":"metrokv","node":1,"leader":2,"term":3,"commit_index":9,"members":[{"id":1,"zone":"dc-a","client_addr":"127.0.0.1:7001","peer_addr":"127.0.0.1:7101","role":"follower","term":3,"applied_index":9,"reachable":true},{"id":3,"zone":"dc-b","client_addr":"127.0.0.1:7003","peer_addr":"127.0.0.1:7103","role":"unknown","term":null,"applied_index":null,"reachable":false}]}"#;
        let view: ClusterView = serde_json::from_str(text).unwrap();
        assert_eq!(view.members[1].term, None);
        assert_eq!(serde_json::to_string(&view).unwrap(), text);
        let zones = r#"{"zone_safety":"strict","degrade_after_ms":10000}"#;
        let settings: Settings = serde_json::from_str(zones).unwrap();
        assert_eq!(settings.zone_safety, Some(ZoneMode::Strict));
        assert_eq!(serde_json::to_string(&settings).unwrap(), zones);
        assert!(serde_json::from_str::<Settings>(r#"{"zone_safety":"sometimes"}"#).is_err());
        let view = r#"{"mode":"adaptive","state":"degraded","degrade_after_ms":10000,"zone_safe_index":40,"lag_entries":12,"degraded_since_ms":1700000000000,"degraded_at_index":40}"#;
        let parsed: ZoneSafetyView = serde_json::from_str(view).unwrap();
        assert_eq!(parsed.state, ZoneState::Degraded);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), view);
        let ready: Ready = serde_json::from_str(
            r#"{"ready":false,"leader":null,"commit_index":1,"applied_index":1}"#,
        )
        .unwrap();
        assert!(!ready.ready);
    }
}
