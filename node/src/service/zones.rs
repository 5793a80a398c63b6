//! Zones: which acknowledged writes survive the loss of a whole zone.
//!
//! Raft commits an entry once a majority of the voters has it. With two zones, one of them holds
//! the majority, so a commit can rest on that zone alone: lose it, and the entry is gone even
//! though it was acknowledged. The zone-safe index is the highest index persisted on voters of
//! at least two zones; an entry at or below it survives the loss of any one zone.
//!
//! Raft still commits on its majority; what waits for the zone-safe index is what we let out:
//! the leader acknowledges a write, and confirms a read index, only once the entry is zone-safe
//! (the gate). A linearizable read also settles before it answers: if the local state has moved
//! past the index it confirmed, it confirms again, so no reader sees an entry a zone loss could
//! take back. The gate is closed in `strict` mode, and in `adaptive` mode until the leader
//! decides (a replicated `ZoneDegrade` entry) that the other zone has been silent for
//! `degrade_after_ms`; it reopens with `ZoneRestore` once the other zone has caught up. It is
//! always open in `off` mode and when the voters sit in fewer than two zones.
//!
//! The pure part is [`zone_safe_index`] and [`Watch`] (when to degrade or restore); the rest
//! reads openraft's replication progress and the replicated [`ZoneRecord`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ReadError;
use super::Service;
use crate::config::NodeRole;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::Raft;
use crate::raft::RaftMetrics;
use crate::raft::ServerState;
use crate::raft::WatchReceiver as _;
use crate::state_machine::Command;
use crate::state_machine::ZoneRecord;
use crate::state_machine::ZoneSafety;

/// The highest index persisted by voters of at least two different zones, from each voter's
/// `matched` index (the leader's own flushed index included, as openraft reports it). `None`
/// when fewer than two zones hold any entry.
pub fn zone_safe_index<'a>(
    matched: impl IntoIterator<Item = (NodeId, Option<u64>)>,
    zone_of: impl Fn(NodeId) -> Option<&'a str>,
) -> Option<u64> {
    let mut best: BTreeMap<&str, u64> = BTreeMap::new();
    for (node, index) in matched {
        let (Some(zone), Some(index)) = (zone_of(node), index) else {
            continue;
        };
        let e = best.entry(zone).or_insert(index);
        *e = (*e).max(index);
    }
    let mut per_zone: Vec<u64> = best.into_values().collect();
    per_zone.sort_unstable_by(|a, b| b.cmp(a));
    per_zone.get(1).copied()
}

/// The adaptive mode's decision, from what the leader sees at each tick.
#[derive(Debug, Default)]
pub struct Watch {
    /// An entry committed and not yet zone-safe: its index and when it was first seen so.
    waiting: Option<(u64, Instant)>,
    /// The commit index at the previous tick.
    last_commit: u64,
}

/// What [`Watch::tick`] asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Acknowledge on a majority alone from now on.
    Degrade,
    /// The other zone caught up: wait for two zones again.
    Restore,
}

impl Watch {
    /// One look at the leader's progress. `zone_safe` is the zone-safe index (0: none yet),
    /// `commit` the commit index. Degrade when an entry committed `degrade_after` ago is still
    /// not zone-safe; restore, when degraded, once the zone-safe index reaches where the commit
    /// index stood at the previous tick (the other zone keeps up again).
    pub fn tick(
        &mut self,
        now: Instant,
        zone_safe: u64,
        commit: u64,
        degraded: bool,
        degrade_after: Duration,
    ) -> Decision {
        let last_commit = std::mem::replace(&mut self.last_commit, commit);
        if degraded {
            self.waiting = None;
            return if zone_safe >= last_commit && zone_safe > 0 {
                Decision::Restore
            } else {
                Decision::Nothing
            };
        }
        match self.waiting {
            _ if zone_safe >= commit => self.waiting = None,
            // Progress: the entry we waited for is zone-safe; wait for the newest one now.
            Some((index, _)) if zone_safe >= index => self.waiting = Some((commit, now)),
            Some((_, since)) if now.duration_since(since) >= degrade_after => {
                self.waiting = None;
                return Decision::Degrade;
            }
            Some(_) => {}
            None => self.waiting = Some((commit, now)),
        }
        Decision::Nothing
    }
}

/// Why a wait for the zone-safe index ended without it.
#[derive(Debug)]
pub struct NotZoneSafe {
    pub index: u64,
    pub zone_safe: Option<u64>,
    /// This node stopped leading (a transfer, an election) before the deadline: the entry is
    /// committed, and the next leader can tell (`Service::confirm_zone_safe_at_leader`).
    pub stepped_down: bool,
}

impl std::fmt::Display for NotZoneSafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "entry {} is committed but not yet persisted in a second zone (zone-safe index: {})",
            self.index,
            self.zone_safe
                .map_or_else(|| "none".to_string(), |i| i.to_string())
        )
    }
}

/// The zone state as `/v1/cluster` shows it.
#[derive(Clone, Debug)]
pub struct ZoneStatus {
    pub record: ZoneRecord,
    /// The voters span fewer than two zones: zone safety does not apply.
    pub single_zone: bool,
    /// On the leader: the zone-safe index and the commit index.
    pub zone_safe_index: Option<u64>,
    pub commit_index: u64,
    pub is_leader: bool,
}

/// Each voter's zone, from openraft's view of the membership (the configured members until it
/// has one).
fn voter_zones_of(
    m: &RaftMetrics,
    initial: &BTreeMap<NodeId, NodeInfo>,
) -> BTreeMap<NodeId, String> {
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let zones: BTreeMap<NodeId, String> = membership
        .nodes()
        .filter(|(id, _)| voters.contains(id))
        .map(|(id, n)| (*id, n.zone.clone()))
        .collect();
    if zones.is_empty() {
        initial
            .iter()
            .map(|(id, n)| (*id, n.zone.clone()))
            .collect()
    } else {
        zones
    }
}

/// On the leader: the highest index persisted on voters of two zones. `None` elsewhere, or
/// while no entry is.
fn zone_safe_of(m: &RaftMetrics, initial: &BTreeMap<NodeId, NodeInfo>) -> Option<u64> {
    // Only a leader has replication progress: the others skip building the zone map (this runs
    // at every change of the metrics).
    let replication = m.replication.as_ref()?;
    let zones = voter_zones_of(m, initial);
    let matched = replication
        .iter()
        .map(|(id, log_id)| (*id, log_id.as_ref().map(|l| l.index())));
    zone_safe_index(matched, |id| zones.get(&id).map(String::as_str))
}

/// The zone-safe index as a watch, kept by one task that reads openraft's metrics at each of
/// their changes. Writes waiting for zone safety wait on it, so they wake when the index moves:
/// the metrics change on every batch the leader handles, and with every waiting write woken at
/// each change, 64 clients cost the leader a few thousand wake-ups per second for nothing.
/// The task ends when the Raft core does.
pub(super) fn spawn_zone_safe_watch(
    raft: &Raft,
    initial: BTreeMap<NodeId, NodeInfo>,
) -> watch::Receiver<Option<u64>> {
    let (tx, rx) = watch::channel(None);
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let index = zone_safe_of(&metrics.borrow_watched(), &initial);
            tx.send_if_modified(|current| {
                let changed = *current != index;
                *current = index;
                changed
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

impl Service {
    /// Each voter's zone.
    fn voter_zones(&self) -> BTreeMap<NodeId, String> {
        voter_zones_of(
            &self.raft.metrics().borrow_watched(),
            &self.identity.initial_members,
        )
    }

    pub(super) fn single_zone(&self) -> bool {
        let zones = self.voter_zones();
        let mut names: Vec<&String> = zones.values().collect();
        names.sort();
        names.dedup();
        names.len() < 2
    }

    /// On the leader: the highest index persisted on voters of two zones. `None` elsewhere, or
    /// while no entry is.
    pub fn zone_safe_index(&self) -> Option<u64> {
        zone_safe_of(
            &self.raft.metrics().borrow_watched(),
            &self.identity.initial_members,
        )
    }

    /// The replicated zone settings and state (defaults if storage cannot be read: strict is
    /// never weakened by a read error, since the default is adaptive-and-not-degraded).
    async fn zone_record(&self) -> ZoneRecord {
        match self.reader.zones().await {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the zone record; gating as adaptive");
                ZoneRecord::default()
            }
        }
    }

    /// Whether acknowledgements wait for two zones right now.
    pub async fn zone_gated(&self) -> bool {
        if self.single_zone() {
            return false;
        }
        let record = self.zone_record().await;
        match record.mode {
            ZoneSafety::Off => false,
            ZoneSafety::Strict => true,
            ZoneSafety::Adaptive => record.degraded.is_none(),
        }
    }

    /// As leader: wait until entry `index` is zone-safe, or the gate opens (adaptive mode
    /// degraded meanwhile), or `deadline` passes.
    pub(super) async fn wait_zone_safe(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<(), NotZoneSafe> {
        let mut watched = self.zone_safe.clone();
        let mut server = self.raft.server_metrics();
        let step = Duration::from_millis(self.timeouts.heartbeat_interval_ms.max(1));
        loop {
            let zone_safe = *watched.borrow_and_update();
            if zone_safe.is_some_and(|z| z >= index) || !self.zone_gated().await {
                return Ok(());
            }
            // A leader that stepped down, or whose Raft core stopped, learns nothing more about
            // its followers: the answer is indeterminate now, not at the deadline (and a node
            // shutting down is not held up by requests waiting here).
            let state = server.borrow_watched().state;
            if Instant::now() >= deadline || state != ServerState::Leader {
                return Err(NotZoneSafe {
                    index,
                    zone_safe,
                    stepped_down: !matches!(state, ServerState::Leader | ServerState::Shutdown),
                });
            }
            // Wake when the index moves or the role changes, and at the heartbeat's pace for
            // the gate (an adaptive degrade is a replicated entry, not a metrics change). A
            // closed watch means the Raft core is gone: then only the pace is left.
            let next = (Instant::now() + step).min(deadline);
            tokio::select! {
                Ok(()) = watched.changed() => {}
                Ok(()) = server.changed() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// After this node stopped leading with committed entry `index` not yet known zone-safe:
    /// ask the current leader for a read index, which it confirms zone-safe before it answers;
    /// every committed entry is in its log, so an index at or past `index` settles it. A leader
    /// transfer thus does not turn the writes in flight into 504s.
    pub(super) async fn confirm_zone_safe_at_leader(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<(), String> {
        match self.read_index(deadline).await {
            Ok((confirmed, _)) if confirmed >= index => Ok(()),
            Ok((confirmed, leader)) => Err(format!(
                "leader {leader} confirmed index {confirmed}, behind entry {index}"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Before a linearizable read answers: if this node's state moved past `confirmed` (the
    /// read index the leader confirmed zone-safe), confirm again, so the answer shows nothing a
    /// zone loss could take back.
    pub async fn settle_read(&self, confirmed: u64) -> Result<(), ReadError> {
        let applied = self.applied_index();
        if applied <= confirmed || !self.zone_gated().await {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.read_timeout_ms);
        if self.leader_in_contact() == Some(self.id()) {
            return self
                .wait_zone_safe(applied, deadline)
                .await
                .map_err(|e| ReadError::Unavailable(e.to_string()));
        }
        let (index, _) = self.read_index(deadline).await?;
        if index < applied {
            return Err(ReadError::Unavailable(format!(
                "the leader confirmed index {index}, behind this node's applied {applied}"
            )));
        }
        Ok(())
    }

    /// The last applied index (what a read of the local state sees at least).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |id| id.index())
    }

    /// As leader: hand leadership on when this node should not keep it: it is a witness (to
    /// any caught-up voter), or it sits outside the preferred leader `zone` and a caught-up
    /// voter of that zone exists. At most once per few election timeouts (a transfer that does
    /// not take is tried again later, never in a loop).
    async fn place_leader(&self, zone: Option<&str>, last_transfer: &mut Option<Instant>) {
        let witness = self.role() == NodeRole::Witness;
        let zones = self.voter_zones();
        let zone_of = |id: NodeId| zones.get(&id).map(String::as_str);
        if !witness && zone.is_none_or(|z| zone_of(self.id()) == Some(z)) {
            return;
        }
        let pause = Duration::from_millis(self.timeouts.election_timeout_ms_max * 4);
        if last_transfer.is_some_and(|t| t.elapsed() < pause) {
            return;
        }
        let Ok(to) = self.transfer_target(zone).await else {
            return;
        };
        if !witness && zone_of(to) != zone {
            return;
        }
        *last_transfer = Some(Instant::now());
        tracing::info!(to, ?zone, witness, "moving leadership");
        if let Err(e) = self.raft.trigger().transfer_leader(to).await {
            tracing::warn!(to, error = %e, "leader transfer failed; it is tried again later");
        }
    }

    /// The zone state for `/v1/cluster`.
    pub async fn zone_status(&self) -> ZoneStatus {
        let m = self.metrics();
        ZoneStatus {
            record: self.zone_record().await,
            single_zone: self.single_zone(),
            zone_safe_index: self.zone_safe_index(),
            commit_index: m.local_committed.as_ref().map_or(0, |id| id.index()),
            is_leader: m.state == ServerState::Leader,
        }
    }
}

/// While this node leads in adaptive mode: degrade when the other zone stays silent, restore
/// when it has caught up (see [`Watch`]); export the zone-safe index. Runs until shutdown.
pub fn spawn_zone_watch(service: Arc<Service>) {
    tokio::spawn(async move {
        let step = Duration::from_millis(service.timeouts.heartbeat_interval_ms.max(1));
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = Watch::default();
        let mut last_transfer: Option<Instant> = None;
        loop {
            tick.tick().await;
            let m = service.metrics();
            if m.state == ServerState::Shutdown {
                return;
            }
            if service.leader_in_contact() != Some(service.id()) {
                watch = Watch::default();
                continue;
            }
            let zone_safe = service.zone_safe_index();
            if let Some(z) = zone_safe {
                metrics::gauge!("metrokv_zone_safe_index").set(z as f64);
            }
            let record = service.zone_record().await;
            metrics::gauge!("metrokv_zone_degraded").set(if record.degraded.is_some() {
                1.0
            } else {
                0.0
            });
            service
                .place_leader(record.preferred_leader_zone.as_deref(), &mut last_transfer)
                .await;
            if record.mode != ZoneSafety::Adaptive || service.single_zone() {
                watch = Watch::default();
                continue;
            }
            let commit = m.local_committed.as_ref().map_or(0, |id| id.index());
            let zone_safe = zone_safe.unwrap_or(0);
            let degrade_after = Duration::from_millis(record.degrade_after_ms);
            let command = match watch.tick(
                Instant::now(),
                zone_safe,
                commit,
                record.degraded.is_some(),
                degrade_after,
            ) {
                Decision::Nothing => continue,
                Decision::Degrade => {
                    tracing::warn!(
                        zone_safe,
                        commit,
                        degrade_after_ms = record.degrade_after_ms,
                        "the other zone confirmed nothing for degrade_after_ms: acknowledging on a majority alone (adaptive mode degrades)"
                    );
                    Command::ZoneDegrade {
                        zone_safe_index: zone_safe,
                    }
                }
                Decision::Restore => {
                    tracing::warn!(
                        zone_safe,
                        commit,
                        "the other zone caught up: acknowledgements wait for two zones again"
                    );
                    Command::ZoneRestore {
                        zone_safe_index: zone_safe,
                    }
                }
            };
            if let Err(e) = service.write_local_now(command).await {
                tracing::warn!(error = %e, "a zone decision did not commit; it is retried");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(n: NodeId) -> Option<&'static str> {
        match n {
            1 | 2 => Some("dc-a"),
            3 | 4 => Some("dc-b"),
            5 => Some("dc-c"),
            _ => None,
        }
    }

    #[test]
    fn the_zone_safe_index_needs_two_zones() {
        // 2+1: the majority zone alone has 90; dc-b has 70.
        assert_eq!(
            zone_safe_index([(1, Some(90)), (2, Some(90)), (3, Some(70))], zones),
            Some(70)
        );
        // dc-b has nothing yet.
        assert_eq!(
            zone_safe_index([(1, Some(90)), (2, Some(90)), (3, None)], zones),
            None
        );
        // One zone only: never zone-safe.
        assert_eq!(zone_safe_index([(1, Some(9)), (2, Some(9))], zones), None);
        // 2+2+1: the second-best zone decides.
        assert_eq!(
            zone_safe_index(
                [
                    (1, Some(50)),
                    (2, Some(40)),
                    (3, Some(45)),
                    (4, Some(10)),
                    (5, Some(48))
                ],
                zones
            ),
            Some(48)
        );
        // Nodes without a zone (not voters) do not count.
        assert_eq!(zone_safe_index([(1, Some(90)), (9, Some(90))], zones), None);
    }

    #[test]
    fn adaptive_mode_degrades_only_after_a_whole_silence() {
        let t0 = Instant::now();
        let after = Duration::from_millis(1000);
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = Watch::default();
        // Keeping up, one entry behind at every tick: never degrades.
        for i in 0..50u64 {
            assert_eq!(
                w.tick(at(i * 100), i * 10, i * 10 + 1, false, after),
                Decision::Nothing
            );
        }
        // The other zone stops: the zone-safe index stays at 500 while commits go on.
        let mut w = Watch::default();
        assert_eq!(w.tick(at(0), 500, 501, false, after), Decision::Nothing);
        assert_eq!(w.tick(at(500), 500, 600, false, after), Decision::Nothing);
        assert_eq!(w.tick(at(999), 500, 700, false, after), Decision::Nothing);
        assert_eq!(w.tick(at(1000), 500, 800, false, after), Decision::Degrade);
        // Degraded: restore once the zone-safe index reaches the previous tick's commit.
        assert_eq!(w.tick(at(1100), 600, 900, true, after), Decision::Nothing);
        assert_eq!(w.tick(at(1200), 850, 950, true, after), Decision::Nothing);
        assert_eq!(w.tick(at(1300), 950, 960, true, after), Decision::Restore);
        // Idle and zone-safe: nothing.
        let mut w = Watch::default();
        assert_eq!(w.tick(at(0), 7, 7, false, after), Decision::Nothing);
        assert_eq!(w.tick(at(5000), 7, 7, false, after), Decision::Nothing);
    }
}
