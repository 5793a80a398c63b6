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
    let (status, body) = c.set_settings(&settings).await;
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
    // The survivor takes writes again, also long after its election: alone, it is its own
    // quorum (openraft's quorum-ack time stops at the election for a sole voter).
    let leased_out = Instant::now() + Duration::from_secs(1);
    Cluster::eventually("a second has passed", Duration::from_secs(5), || async {
        (Instant::now() >= leased_out)
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await
    .unwrap();
    let r = c.put(3, "after-recovery", "1").await;
    assert_eq!(r.status(), StatusCode::OK);
    if mode == "strict" {
        grow_back(&c, &acked).await;
    }
    (acked.len(), missing)
}

/// A node started by hand (not part of the test cluster's member list); SIGKILLed by pid when
/// dropped.
struct Extra {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start node `id` in `zone` with `--join`, knowing the recovered n3.
fn start_joiner(c: &Cluster, id: u64, zone: &str) -> (Extra, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let client = format!("127.0.0.1:{}", metrokv_tests::free_port());
    let peer = format!("127.0.0.1:{}", metrokv_tests::free_port());
    let n3 = c.node(3);
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let child = std::process::Command::new(metrokv_tests::binary("metrokv-node").unwrap())
        .args(["--id", &id.to_string(), "--zone", zone])
        .args(["--client-addr", &client, "--peer-addr", &peer])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--cluster-id", "metrokv-test", "--join"])
        .arg("--member")
        .arg(format!("3={}/{}/{}", n3.zone, n3.client_addr, n3.peer_addr))
        .arg("--member")
        .arg(format!("{id}={zone}/{client}/{peer}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let body = json!({ "id": id, "zone": zone, "client_addr": client, "peer_addr": peer });
    (
        Extra {
            child,
            url: format!("http://{client}"),
            _dir: dir,
        },
        body,
    )
}

/// After a recovery: two fresh dc-a nodes join the survivor as learners, are promoted once
/// caught up, and the cluster is zone-safe again with every acknowledged write on them.
async fn grow_back(c: &Cluster, acked: &[(String, String)]) {
    let mut extras = Vec::new();
    for id in [4, 5] {
        let (extra, body) = start_joiner(c, id, "dc-a");
        let url = format!("{}/v1/cluster/members", c.url(3));
        Cluster::eventually("n3 adds the learner", Duration::from_secs(20), || async {
            let r = c
                .http()
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            (status == StatusCode::OK || text.contains("already a member"))
                .then_some(())
                .ok_or(format!("{status} {text}"))
        })
        .await
        .unwrap();
        let url = format!("{}/v1/cluster/members/{id}/promote", c.url(3));
        let (status, membership) = Cluster::eventually(
            "promoted once caught up",
            Duration::from_secs(30),
            || async {
                let r = c
                    .http()
                    .post(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let body: Value = r.json().await.map_err(|e| e.to_string())?;
                (status == StatusCode::OK)
                    .then_some((status, body.clone()))
                    .ok_or(format!("{status} {body}"))
            },
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            membership["voters"]
                .as_array()
                .unwrap()
                .contains(&json!(id)),
            "{membership}"
        );
        extras.push(extra);
    }
    // Two zones again: strict writes are acknowledged, and the new nodes hold the old data.
    let r = c.put(3, "after-growing-back", "1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let view = zone_view(c, 3).await;
    assert_eq!(view["state"], "zone_safe", "{view}");
    for extra in &extras {
        for (key, value) in acked.iter().take(20) {
            let url = format!("{}/v1/kv/{key}", extra.url);
            let got = c
                .http()
                .get(&url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(got, *value, "{key} on {}", extra.url);
        }
    }
    eprintln!("grown back: n4 and n5 (dc-a) joined the recovered n3 and were promoted");
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
