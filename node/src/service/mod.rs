//! What a node does with a request, independent of HTTP, in one file per job:
//! - `route`: propose a write (here if this node leads, else forwarded to the leader) and make a
//!   read linearizable, with the outcomes docs/api.md promises;
//! - `peer`: the handler for requests from peers, which checks every Raft request before
//!   openraft sees it (`transport::validate`) and admits only members on their recorded storage;
//! - `incoming`: snapshot chunks from a leader, assembled into a file and installed;
//! - `status`: the node's own status, the cluster view, and the tasks that watch leader changes
//!   and record members' storage ids;
//! - this file: the shared state, who leads and whether this node is in contact with it.

mod incoming;
pub mod membership;
mod peer;
mod route;
mod status;
pub mod zones;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::raft::RaftInstant as _;
use crate::raft::WatchReceiver;
use tokio::time::Instant;

pub use route::ReadError;
pub use route::Served;
pub use route::WriteError;
pub use status::role_name;
pub use status::spawn_leader_watch;
pub use status::spawn_storage_recorder;

use crate::clock::Clock;
use crate::config::NodeRole;
use crate::config::RaftTimeouts;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::Raft;
use crate::raft::RaftMetrics;
use crate::raft::ServerState;
use crate::storage::snapshot;
use crate::storage::StateReader;
use crate::storage::StorageIds;
use crate::transport::client::Peers;

/// How often the leader looks for members' storage ids that have no record yet.
const STORAGE_RECORD_INTERVAL: Duration = Duration::from_millis(500);

/// Who this node is and what it started with.
pub struct Identity {
    pub id: NodeId,
    pub cluster_id: String,
    /// This data directory's storage id.
    pub storage_id: u64,
    /// The member list from the configuration: the cluster until Raft knows its membership.
    pub initial_members: BTreeMap<NodeId, NodeInfo>,
    pub role: NodeRole,
}

pub struct Service {
    identity: Identity,
    raft: Raft,
    reader: StateReader,
    peers: Peers,
    timeouts: RaftTimeouts,
    clock: Arc<Clock>,
    ids: Arc<StorageIds>,
    /// False while a node with new storage checks whether it may join (see `node.rs`): Raft
    /// requests from peers are refused until then.
    raft_open: AtomicBool,
    incoming_dir: PathBuf,
    /// Snapshot transfers being received, one per sending leader.
    incoming: Mutex<HashMap<NodeId, snapshot::Incoming>>,
    /// The last leader that replicated to this node, and when.
    leader_contact: Mutex<Option<(NodeId, Instant)>>,
    /// A leader transfer our leader asked for: the candidate, and when. A vote request from that
    /// candidate may then bypass the leader lease.
    transfer_hint: Mutex<Option<(NodeId, Instant)>>,
    /// Set once a shutdown began: `/ready` says no, so a load balancer stops sending here.
    draining: AtomicBool,
    /// The zone-safe index, kept by its own task (see `zones::spawn_zone_safe_watch`).
    zone_safe: tokio::sync::watch::Receiver<Option<u64>>,
}

/// Whether leader `me` heard from a quorum within `lease`. A sole voter is its own quorum:
/// openraft has nobody to hear from, so its acknowledgement time stops at the election (a
/// cluster recovered to one node would otherwise call itself cut off a lease after it started).
fn quorum_fresh(m: &RaftMetrics, me: NodeId, lease: Duration) -> bool {
    let mut voters = m.membership_config.membership().voter_ids();
    if voters.next() == Some(me) && voters.next().is_none() {
        return true;
    }
    m.last_quorum_acked
        .as_ref()
        .is_none_or(|t| t.elapsed() <= lease)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        raft: Raft,
        reader: StateReader,
        peers: Peers,
        timeouts: RaftTimeouts,
        clock: Arc<Clock>,
        ids: Arc<StorageIds>,
        incoming_dir: PathBuf,
    ) -> std::io::Result<Self> {
        // Partial transfers from before a restart are useless: their senders start over.
        std::fs::create_dir_all(&incoming_dir)?;
        snapshot::remove_all_but(&incoming_dir, None)?;
        // Our own storage id is recorded like any member's.
        let _ = ids.check(identity.id, identity.storage_id);
        let zone_safe = zones::spawn_zone_safe_watch(&raft, identity.initial_members.clone());
        Ok(Self {
            identity,
            raft,
            reader,
            peers,
            timeouts,
            clock,
            ids,
            raft_open: AtomicBool::new(true),
            incoming_dir,
            incoming: Mutex::default(),
            leader_contact: Mutex::default(),
            transfer_hint: Mutex::default(),
            draining: AtomicBool::new(false),
            zone_safe,
        })
    }

    pub fn id(&self) -> NodeId {
        self.identity.id
    }

    pub fn role(&self) -> NodeRole {
        self.identity.role
    }

    pub fn cluster_id(&self) -> &str {
        &self.identity.cluster_id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn timeouts(&self) -> &RaftTimeouts {
        &self.timeouts
    }

    /// Refuse (false) or take (true) Raft requests from peers.
    pub fn set_raft_open(&self, open: bool) {
        self.raft_open.store(open, Ordering::Release);
    }

    /// Whether a shutdown began (see [`Service::drain`]).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn raft_is_open(&self) -> bool {
        self.raft_open.load(Ordering::Acquire)
    }

    /// The members as Raft knows them, or the configured ones before Raft knows any.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let known: BTreeMap<NodeId, NodeInfo> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        if known.is_empty() {
            self.identity.initial_members.clone()
        } else {
            known
        }
    }

    fn member_addr(&self, id: NodeId) -> Option<NodeInfo> {
        self.members().remove(&id)
    }

    /// The longest silence from the leader (or, for a leader, from a quorum) after which this
    /// node no longer claims to know who leads.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.timeouts.election_timeout_ms_max)
    }

    /// False when this node, as leader, has not heard from a quorum for a whole lease period:
    /// proposing then would only produce a 504 later. A leader elected a moment ago has no
    /// acknowledgement yet; it just won a quorum's votes, so it may propose.
    fn has_quorum(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        quorum_fresh(&m, self.id(), self.lease())
    }

    /// The leader, if this node is in touch with it: a leader that heard from a quorum within a
    /// lease, or a follower that heard from its leader within one. A node cut off from the
    /// others keeps openraft's last known leader for a while (with pre-vote, its term does not
    /// even move); this is what it reports instead, so `/ready`, `/v1/cluster` and request
    /// routing do not rely on a leader it cannot reach.
    pub fn leader_in_contact(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        let in_contact = if leader == self.id() {
            // A leader elected a moment ago has not had a quorum's acks yet.
            m.state == ServerState::Leader && quorum_fresh(&m, self.id(), self.lease())
        } else {
            lock(&self.leader_contact)
                .is_some_and(|(who, at)| who == leader && at.elapsed() <= self.lease())
        };
        in_contact.then_some(leader)
    }

    fn touch_leader(&self, leader: NodeId) {
        *lock(&self.leader_contact) = Some((leader, Instant::now()));
    }

    /// The storage id the cluster recorded for this node, if it differs from the one this data
    /// directory has: the directory was copied from another node, or restored over a newer one.
    pub fn own_storage_conflict(&self) -> Option<u64> {
        self.ids
            .recorded(self.id())
            .filter(|recorded| *recorded != self.identity.storage_id)
    }
}
