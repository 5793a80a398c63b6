//! Zones on real processes: with zone-safe acknowledgement (issue "Zones") an acknowledged write
//! survives the loss of a whole zone, and adaptive mode trades that for availability only after
//! the configured silence, by itself and visibly.
//!
//! Layout: n1, n2 in dc-a (the majority), n3 in dc-b.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use metrokv_tests::json_of;
use metrokv_tests::Cluster;
use metrokv_tests::Options;
use reqwest::StatusCode;
use serde_json::json;
use serde_json::Value;

/// The tests of this file run one at a time: each drives a write load, and four clusters
/// sharing two cores would stretch the stalls they measure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn set_zone_safety(c: &Cluster, settings: Value) {
    let r = c
        .http()
        .put(format!("{}/v1/cluster/settings", c.url(1)))
        .json(&settings)
        .send()
        .await
        .expect("settings");
    let (status, body) = json_of(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn zone_view(c: &Cluster, node: u64) -> Value {
    let view = c
        .get_json(&format!("{}/v1/cluster", c.url(node)))
        .await
        .expect("cluster view");
    view["zone_safety"].clone()
}

/// Writers that put `w<task>-<i>` on n1 until stopped, recording what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(c: &Cluster, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..count)
            .map(|task| {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let url = c.url(1);
                let (stop, acked) = (stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{task}-{i}");
                        let value = format!("v{i}");
                        let sent = http
                            .put(format!("{url}/v1/kv/{key}"))
                            .body(value.clone())
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == StatusCode::OK => {
                                acked.lock().unwrap().push((key, value))
                            }
                            // The node is gone: nothing more will be acknowledged.
                            Err(_) => return,
                            Ok(_) => {}
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Self { stop, acked, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Under a write load on n1: n3 (dc-b) stalls, then dc-a burns down with its disks while n3 is
/// still stalled. n3 is recovered as a one-node cluster with `recover --force-new-cluster`.
/// Returns the writes acknowledged and those of them missing on the survivor.
async fn lose_dc_a_while_dc_b_stalls(mode: &str) -> (usize, Vec<String>) {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    set_zone_safety(&c, json!({ "zone_safety": mode })).await;
    c.make_leader(1).await.unwrap();
    let writers = Writers::start(&c, 4);
    Cluster::eventually("writes acknowledged", Duration::from_secs(20), || async {
        let acked = writers.acked();
        (acked >= 50)
            .then_some(())
            .ok_or(format!("{acked} acknowledged"))
    })
    .await
    .unwrap();
    // A GC pause or a slow disk in dc-b, and during it dc-a is lost.
    c.pause(3);
    let before = writers.acked();
    // The stall lasts 300 ms (the fault itself, not a wait for a condition), and in off mode
    // until dc-a acknowledged some writes alone, so the negative control cannot pass by luck
    // on a loaded machine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if mode == "off" {
        Cluster::eventually(
            "dc-a acknowledges alone",
            Duration::from_secs(10),
            || async {
                let during = writers.acked() - before;
                (during >= 20)
                    .then_some(())
                    .ok_or(format!("{during} acknowledged during the stall"))
            },
        )
        .await
        .unwrap();
    }
    let during = writers.acked() - before;
    c.kill(1);
    c.kill(2);
    let acked = writers.finish().await;
    c.wipe(1).unwrap();
    c.wipe(2).unwrap();
    c.resume(3);
    c.kill(3);

    let out = std::process::Command::new(metrokv_tests::binary("metrokv-node").unwrap())
        .args(["recover", "--force-new-cluster", "--id", "3", "--data-dir"])
        .arg(&c.node(3).data_dir)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recover failed: {report}");
    assert!(report.contains("only member"), "{report}");
    c.restart(3).unwrap();
    let url = c.url(3);
    Cluster::eventually("n3 serves alone", Duration::from_secs(30), || async {
        let r = c
            .http()
            .get(format!("{url}/ready"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        (status == StatusCode::OK)
            .then_some(())
            .ok_or(format!("/ready answers {status}"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(3, 40)));
    let mut missing = Vec::new();
    for (key, value) in &acked {
        let (status, body, _) = c.get(3, key).await;
        if status != StatusCode::OK || body != *value {
            missing.push(key.clone());
        }
    }
    eprintln!(
        "{mode}: {} writes acknowledged ({during} while dc-b stalled), {} missing after the zone loss",
        acked.len(),
        missing.len()
    );
    // The survivor takes writes again.
    let r = c.put(3, "after-recovery", "1").await;
    assert_eq!(r.status(), StatusCode::OK);
    (acked.len(), missing)
}

#[tokio::test]
async fn strict_mode_loses_no_acknowledged_write_with_a_whole_zone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (acked, missing) = lose_dc_a_while_dc_b_stalls("strict").await;
    assert!(acked >= 50, "the run acknowledged only {acked} writes");
    assert!(
        missing.is_empty(),
        "{} of {acked} acknowledged writes are gone: {missing:?}",
        missing.len()
    );
}

/// The negative control: with plain Raft majority the same run loses what dc-a acknowledged
/// alone while dc-b stalled. If this stops failing the safety test proves nothing.
#[tokio::test]
async fn off_mode_loses_what_one_zone_acknowledged_alone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (acked, missing) = lose_dc_a_while_dc_b_stalls("off").await;
    assert!(
        !missing.is_empty(),
        "off mode lost none of {acked} writes: the stall did not bite"
    );
}

#[tokio::test]
async fn strict_mode_answers_nothing_until_the_second_zone_has_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(Options::default()).await.unwrap();
    set_zone_safety(&c, json!({ "zone_safety": "strict" })).await;
    c.make_leader(1).await.unwrap();
    assert_eq!(c.put(1, "k", "before").await.status(), StatusCode::OK);
    c.pause(3);
    // Committed by dc-a, but not acknowledged: 504, fate unknown.
    let (status, body) = json_of(c.put(1, "k", "during").await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("second zone"),
        "{body}"
    );
    // Linearizable reads wait too (the value is not zone-safe); a stale read does not.
    let (status, _, _) = c.get(2, "k").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    c.resume(3);
    // Once dc-b has it, the write is visible and new ones are acknowledged.
    Cluster::eventually(
        "the write becomes zone-safe",
        Duration::from_secs(10),
        || async {
            let (status, body, _) = c.get(2, "k").await;
            (status == StatusCode::OK && body == "during")
                .then_some(())
                .ok_or(format!("{status} {body}"))
        },
    )
    .await
    .unwrap();
    assert_eq!(c.put(1, "k", "after").await.status(), StatusCode::OK);
    let view = zone_view(&c, 1).await;
    assert_eq!(view["mode"], "strict");
    assert_eq!(view["state"], "zone_safe");
}

#[tokio::test]
async fn adaptive_mode_degrades_after_the_silence_and_restores_by_itself() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(Options::default()).await.unwrap();
    set_zone_safety(
        &c,
        json!({ "zone_safety": "adaptive", "degrade_after_ms": 1000 }),
    )
    .await;
    c.make_leader(1).await.unwrap();
    assert_eq!(c.put(1, "k", "0").await.status(), StatusCode::OK);
    c.pause(3);
    let paused = Instant::now();
    let (status, body) = json_of(c.put(1, "k", "1").await).await;
    let waited = paused.elapsed();
    // The first write waits out the silence, then the cluster degrades and acknowledges it.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        waited >= Duration::from_millis(900),
        "acknowledged after {waited:?}, before degrade_after_ms"
    );
    let view = zone_view(&c, 1).await;
    assert_eq!(view["state"], "degraded", "{view}");
    assert!(view["degraded_at_index"].as_u64().is_some(), "{view}");
    assert!(c.log(1).contains("adaptive mode degrades"));
    // Degraded: writes go on at once without dc-b.
    assert_eq!(c.put(1, "k", "2").await.status(), StatusCode::OK);
    c.resume(3);
    Cluster::eventually("zone-safe again", Duration::from_secs(20), || async {
        let view = zone_view(&c, 1).await;
        (view["state"] == "zone_safe")
            .then_some(())
            .ok_or(view.to_string())
    })
    .await
    .unwrap();
    assert!(c.log(1).contains("the other zone caught up"));
}

#[tokio::test]
async fn leadership_moves_to_the_preferred_zone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let c = Cluster::start(Options::default()).await.unwrap();
    for (zone, wanted) in [("dc-b", &[3][..]), ("dc-a", &[1, 2][..])] {
        set_zone_safety(&c, json!({ "preferred_leader_zone": zone })).await;
        let leader = Cluster::eventually("the leader moves", Duration::from_secs(20), || async {
            let leader = c.leader().await;
            match leader {
                Some(l) if wanted.contains(&l) => Ok(l),
                other => Err(format!("leader {other:?}, want one of {wanted:?}")),
            }
        })
        .await
        .unwrap();
        // It serves from there.
        assert_eq!(c.put(leader, "k", zone).await.status(), StatusCode::OK);
    }
    let settings = c
        .get_json(&format!("{}/v1/cluster/settings", c.url(2)))
        .await
        .unwrap();
    assert_eq!(settings["preferred_leader_zone"], "dc-a", "{settings}");
}
