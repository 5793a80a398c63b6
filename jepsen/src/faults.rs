//! Applying the fault schedule to a running cluster: the nemesis of `run`.
//!
//! Owns: resolving faults that name the leader (asked of the nodes when the fault starts),
//! applying and healing each kind (link modes through `net.rs`, signals through `cluster.rs`),
//! the latency fault's spike, and recording a `start-fault` and a `stop-fault` nemesis op per
//! interval (with the fault as applied: concrete nodes and links).
//!
//! Invariants: faults run one at a time, in schedule order, at their planned times relative to
//! the history's time zero; a fault is always healed before the next starts, and when the run
//! is stopped early the current fault is healed before returning. A leader-targeted fault with
//! no known leader is skipped, and the history says so.
//!
//! The kill loop (`run --kill-loop N`) is the other way to drive the nemesis: instead of timed
//! intervals, kill after kill, each one waiting for the cluster to recover ([`run_kill_loop`]).
//!
//! Leaves out: planning the schedule (`nemesis.rs`), the final heal of everything
//! (`runner.rs`).

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::cluster::READY_POLL_MS;
use crate::history::{Call, OpType, Process, Recorder};
use crate::nemesis::{
    self, Fault, FaultEvent, FaultInterval, KillStep, Target, Topology, LATENCY_FAULT_MS_BASE,
    LATENCY_SPIKE_JITTER_DIVISOR, LATENCY_SPIKE_SPLIT,
};
use crate::net::{Shape, TestNet};
use crate::progress::Progress;

/// How long the nemesis looks for a leader before it skips a leader-targeted fault.
pub const LEADER_LOOKUP_TIMEOUT_MS: u64 = 3_000;
/// How long the kill loop waits for every node to be ready (before a kill, and for the killed
/// node after its restart). Past it the loop ends; the nemesis checker then says the planned
/// kills did not all happen.
pub const KILL_LOOP_RECOVERY_TIMEOUT_MS: u64 = 60_000;

/// Waits until `until`, or returns false as soon as `stop` is raised.
pub async fn sleep_or_stop(until: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(until) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// Whether a fault needs to know the leader to be applied.
fn needs_leader(fault: &Fault) -> bool {
    matches!(
        fault,
        Fault::IsolateLeader { .. }
            | Fault::Kill {
                target: Target::Leader
            }
            | Fault::Pause {
                target: Target::Leader
            }
            | Fault::Clock {
                target: Target::Leader,
                ..
            }
    )
}

/// The nodes a (resolved) process fault hits.
fn target_nodes(target: &Target) -> &[String] {
    match target {
        Target::Nodes(nodes) => nodes,
        Target::Leader => &[],
    }
}

/// Applies a fault; returns it resolved (None when it was skipped) and a note for the history.
async fn start_fault(
    fault: &Fault,
    topology: &Topology,
    cluster: &mut Cluster,
    network: &TestNet,
) -> anyhow::Result<(Option<Fault>, Option<String>)> {
    let leader = if needs_leader(fault) {
        cluster
            .wait_leader(Duration::from_millis(LEADER_LOOKUP_TIMEOUT_MS))
            .await
    } else {
        None
    };
    let resolved = match fault.resolve(topology, leader.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => return Ok((None, Some(format!("skipped: {error}")))),
    };
    if let (Fault::Latency { .. }, Some(why)) = (&resolved, network.latency_unavailable()) {
        return Ok((None, Some(format!("skipped: {why}"))));
    }
    let mut note = leader.map(|l| format!("the leader was {l}"));
    if let Fault::Clock { .. } = &resolved {
        let written = "written to the node's failpoint file (clock-offset-ms)";
        note = Some(match note {
            Some(leader) => format!("{leader}; {written}"),
            None => written.to_owned(),
        });
    }
    match &resolved {
        Fault::Partition { grudge, cut, .. } => {
            network.shape(&Shape::Partition { grudge, cut: *cut })?
        }
        Fault::Kill { target } => {
            for node in target_nodes(target) {
                cluster.kill(node)?;
            }
        }
        Fault::LoseZone { nodes, .. } => {
            for node in nodes {
                cluster.kill(node)?;
            }
        }
        Fault::Pause { target } => {
            for node in target_nodes(target) {
                cluster.pause(node)?;
            }
        }
        Fault::Latency { links, .. } => network.shape(&latency_base(links))?,
        Fault::Clock { target, offset_ms } => {
            for node in target_nodes(target) {
                cluster.set_clock_offset(node, *offset_ms)?;
            }
        }
        Fault::IsolateLeader { .. } => bail!("isolate-leader was not resolved"),
    }
    Ok((Some(resolved), note))
}

/// The shape of a latency fault outside its spike.
fn latency_base(links: &[nemesis::DirectedLink]) -> Shape<'_> {
    Shape::Latency {
        links,
        latency_ms: LATENCY_FAULT_MS_BASE,
        jitter_ms: LATENCY_FAULT_MS_BASE / LATENCY_SPIKE_JITTER_DIVISOR,
    }
}

/// When a latency fault over `[start_ms, stop_ms)` spikes: its middle part.
fn spike_window(interval: &FaultInterval) -> (u64, u64) {
    let length = interval.stop_ms.saturating_sub(interval.start_ms);
    (
        interval.start_ms + length / LATENCY_SPIKE_SPLIT,
        interval.stop_ms - length / LATENCY_SPIKE_SPLIT,
    )
}

/// Sleeps through a fault's interval; a latency fault spikes on the way. Returns false when
/// stopped early.
async fn hold_fault(
    started: Instant,
    applied: Option<&Fault>,
    interval: &FaultInterval,
    network: &TestNet,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let at = |ms: u64| started + Duration::from_millis(ms);
    if let Some(Fault::Latency {
        links,
        latency_ms,
        jitter_ms,
    }) = applied
    {
        let (spike_start, spike_stop) = spike_window(interval);
        if !sleep_or_stop(at(spike_start), stop).await {
            return Ok(false);
        }
        network.shape(&Shape::Latency {
            links,
            latency_ms: *latency_ms,
            jitter_ms: *jitter_ms,
        })?;
        if !sleep_or_stop(at(spike_stop), stop).await {
            return Ok(false);
        }
        network.shape(&latency_base(links))?;
    }
    Ok(sleep_or_stop(at(interval.stop_ms), stop).await)
}

/// Heals one applied fault; returns a note for the history (a restart that failed, ...).
fn stop_fault(
    fault: &Fault,
    cluster: &mut Cluster,
    network: &TestNet,
) -> anyhow::Result<Option<String>> {
    match fault {
        Fault::Partition { .. } | Fault::Latency { .. } => network.shape(&Shape::Healthy)?,
        Fault::Kill { target } => {
            for node in target_nodes(target) {
                cluster.start(node)?;
            }
            return Ok(Some("restarted on the same data directory".to_owned()));
        }
        Fault::LoseZone { nodes, .. } => {
            for node in nodes {
                cluster.start(node)?;
            }
            return Ok(Some(
                "the zone's nodes restarted on their data directories".to_owned(),
            ));
        }
        Fault::Pause { target } => {
            for node in target_nodes(target) {
                cluster.resume(node)?;
            }
        }
        Fault::Clock { target, .. } => {
            for node in target_nodes(target) {
                cluster.set_clock_offset(node, 0)?;
            }
        }
        Fault::IsolateLeader { .. } => {}
    }
    Ok(None)
}

/// What the nemesis records to and reports through.
pub struct Nemesis<'a> {
    pub topology: &'a Topology,
    pub recorder: &'a Recorder,
    pub progress: &'a Progress,
    /// Time zero of the history and of the schedule.
    pub started: Instant,
}

/// Walks the schedule: applies each fault at its start, heals it at its stop, records both.
/// Returns early (healing the current fault) when `stop` is raised.
pub async fn run(
    context: &Nemesis<'_>,
    schedule: &[FaultInterval],
    cluster: &mut Cluster,
    network: &TestNet,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for (position, interval) in schedule.iter().enumerate() {
        let interval_id = u32::try_from(position).context("too many faults")?;
        let start = context.started + Duration::from_millis(interval.start_ms);
        if !sleep_or_stop(start, &mut stop).await {
            break;
        }
        let (applied, mut detail) =
            start_fault(&interval.fault, context.topology, cluster, network).await?;
        if let Some(Fault::Latency { .. }) = &applied {
            let (from, to) = spike_window(interval);
            detail = Some(format!(
                "spike from {:.1} s to {:.1} s",
                from as f64 / 1000.0,
                to as f64 / 1000.0
            ));
        }
        let shown = applied.as_ref().unwrap_or(&interval.fault);
        let event = FaultEvent {
            interval: interval_id,
            fault: shown.clone(),
            detail: detail.clone(),
            skipped: applied.is_none(),
        };
        context.recorder.record(
            Process::Nemesis,
            OpType::Info,
            Call::StartFault(event.clone()),
            None,
            None,
        )?;
        let description = match &detail {
            Some(detail) => format!("#{interval_id} {} ({detail})", shown.describe()),
            None => format!("#{interval_id} {}", shown.describe()),
        };
        context.progress.fault(Some(description));
        let completed = hold_fault(
            context.started,
            applied.as_ref(),
            interval,
            network,
            &mut stop,
        )
        .await?;
        let detail = match &applied {
            Some(fault) => stop_fault(fault, cluster, network)?,
            None => None,
        };
        context.recorder.record(
            Process::Nemesis,
            OpType::Info,
            Call::StopFault(FaultEvent { detail, ..event }),
            None,
            None,
        )?;
        context.progress.fault(None);
        if !completed {
            break;
        }
    }
    Ok(())
}

/// What the kill loop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillLoopReport {
    pub planned: usize,
    pub kills: usize,
    /// Per kill: from the restart until the restarted node answered `/ready`.
    pub recovery_ms: Vec<u64>,
    /// Why the loop ended before its last kill (stopped by the time limit, a node that did
    /// not come back).
    pub ended_early: Option<String>,
}

/// Polls until every node in `names` answers `/ready`. `Ok(true)` when they do, `Ok(false)`
/// when `stop` was raised first, an error naming the laggards after `timeout`.
async fn wait_all_ready(
    cluster: &Cluster,
    names: &[String],
    timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut laggards = Vec::new();
        for name in names {
            if !cluster.is_ready(name).await {
                laggards.push(name.as_str());
            }
        }
        if laggards.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready within {timeout:?} (see nodes/<name>/node.log)",
                laggards.join(", ")
            );
        }
        if !sleep_or_stop(Instant::now() + Duration::from_millis(READY_POLL_MS), stop).await {
            return Ok(false);
        }
    }
}

/// Records one nemesis op.
fn record_event(context: &Nemesis<'_>, call: Call) -> anyhow::Result<()> {
    context
        .recorder
        .record(Process::Nemesis, OpType::Info, call, None, None)?;
    Ok(())
}

/// The kill loop: for each planned step, wait until every node is ready, SIGKILL the target
/// (the leader, resolved now, or the planned node), hold it dead for the planned time, restart
/// it on its data directory, wait until it is ready again, stay quiet for the planned gap. One
/// node is down at a time, so a quorum always remains. Ends early (healing first) when `stop`
/// is raised, or when the cluster does not recover in [`KILL_LOOP_RECOVERY_TIMEOUT_MS`].
pub async fn run_kill_loop(
    context: &Nemesis<'_>,
    steps: &[KillStep],
    cluster: &mut Cluster,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<KillLoopReport> {
    let names = context.topology.names();
    let recovery = Duration::from_millis(KILL_LOOP_RECOVERY_TIMEOUT_MS);
    let mut report = KillLoopReport {
        planned: steps.len(),
        ..KillLoopReport::default()
    };
    for (position, step) in steps.iter().enumerate() {
        match wait_all_ready(cluster, &names, recovery, &mut stop).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                report.ended_early = Some(format!("before kill {}: {error:#}", position + 1));
                break;
            }
        }
        let go_on = kill_once(context, step, position, cluster, &mut stop, &mut report).await?;
        if !go_on
            || !sleep_or_stop(
                Instant::now() + Duration::from_millis(step.gap_ms),
                &mut stop,
            )
            .await
        {
            break;
        }
    }
    if report.ended_early.is_none() && report.kills < report.planned {
        report.ended_early = Some(format!(
            "stopped (time limit or interruption) after {} of {} kills",
            report.kills, report.planned
        ));
    }
    Ok(report)
}

/// One step of the kill loop, up to the restarted node being ready again (the gap is the
/// caller's). Returns whether the loop may go on.
async fn kill_once(
    context: &Nemesis<'_>,
    step: &KillStep,
    position: usize,
    cluster: &mut Cluster,
    stop: &mut watch::Receiver<bool>,
    report: &mut KillLoopReport,
) -> anyhow::Result<bool> {
    let interval = u32::try_from(position).context("too many kills")?;
    let leader = match step.target {
        Target::Leader => {
            cluster
                .wait_leader(Duration::from_millis(LEADER_LOOKUP_TIMEOUT_MS))
                .await
        }
        Target::Nodes(_) => None,
    };
    let fault = Fault::Kill {
        target: step.target.clone(),
    };
    let resolved = match fault.resolve(context.topology, leader.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => {
            // Recorded as skipped; the nemesis checker then counts one kill short.
            record_event(
                context,
                Call::StartFault(FaultEvent {
                    interval,
                    fault,
                    detail: Some(format!("skipped: {error}")),
                    skipped: true,
                }),
            )?;
            return Ok(true);
        }
    };
    let Fault::Kill {
        target: Target::Nodes(victims),
    } = &resolved
    else {
        bail!("the kill loop resolved {resolved:?}");
    };
    let detail = match &leader {
        Some(leader) => format!(
            "kill {} of {} (the leader was {leader})",
            position + 1,
            report.planned
        ),
        None => format!("kill {} of {}", position + 1, report.planned),
    };
    let event = FaultEvent {
        interval,
        fault: resolved.clone(),
        detail: Some(detail.clone()),
        skipped: false,
    };
    record_event(context, Call::StartFault(event.clone()))?;
    context.progress.fault(Some(format!(
        "#{interval} {} ({detail})",
        resolved.describe()
    )));
    for victim in victims {
        cluster.kill(victim)?;
    }
    report.kills += 1;
    let held = sleep_or_stop(Instant::now() + Duration::from_millis(step.hold_ms), stop).await;
    for victim in victims {
        cluster.start(victim)?;
    }
    let restarted = Instant::now();
    record_event(
        context,
        Call::StopFault(FaultEvent {
            detail: Some("restarted on the same data directory".to_owned()),
            ..event
        }),
    )?;
    context.progress.fault(None);
    if !held {
        return Ok(false);
    }
    let recovery = Duration::from_millis(KILL_LOOP_RECOVERY_TIMEOUT_MS);
    match wait_all_ready(cluster, victims, recovery, stop).await {
        Ok(true) => {
            report
                .recovery_ms
                .push(u64::try_from(restarted.elapsed().as_millis()).unwrap_or(u64::MAX));
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(error) => {
            report.ended_early = Some(format!("after kill {}: {error:#}", position + 1));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_faults_are_recognised() {
        assert!(needs_leader(&Fault::IsolateLeader {
            cut: nemesis::CutMode::Drop
        }));
        assert!(needs_leader(&Fault::Kill {
            target: Target::Leader
        }));
        assert!(!needs_leader(&Fault::Pause {
            target: Target::Nodes(vec!["n1".into()])
        }));
    }

    #[test]
    fn the_latency_spike_sits_in_the_middle_third() {
        let interval = FaultInterval {
            start_ms: 3_000,
            stop_ms: 9_000,
            fault: Fault::Latency {
                links: vec![],
                latency_ms: 700,
                jitter_ms: 70,
            },
        };
        assert_eq!(spike_window(&interval), (5_000, 7_000));
    }
}
