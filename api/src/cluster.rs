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
}

/// One member, with what it says of itself (`None` when it did not answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub zone: String,
    pub client_addr: String,
    pub peer_addr: String,
    /// leader, follower, candidate, learner, shutdown, or unknown when unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub applied_index: Option<u64>,
    pub reachable: bool,
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
        let ready: Ready = serde_json::from_str(
            r#"{"ready":false,"leader":null,"commit_index":1,"applied_index":1}"#,
        )
        .unwrap();
        assert!(!ready.ready);
    }
}
