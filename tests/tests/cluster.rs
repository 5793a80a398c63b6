//! End-to-end tests of the node on real three-node clusters (real processes, real RocksDB, real
//! sockets on 127.0.0.1). They speak raw HTTP so they test the API contract itself.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrokv_tests::json_of;
use metrokv_tests::Cluster;
use metrokv_tests::Options;
use reqwest::StatusCode;
use serde_json::json;

async fn put(c: &Cluster, node: u64, key: &str, value: &str) -> reqwest::Response {
    c.put(node, key, value.to_string()).await
}

async fn get(c: &Cluster, node: u64, key: &str) -> (StatusCode, String, Option<String>) {
    c.get(node, key).await
}

async fn revision(c: &Cluster, node: u64) -> u64 {
    let v = c
        .get_json(&format!("{}/v1/kv?prefix=&limit=1", c.url(node)))
        .await
        .unwrap();
    v["revision"].as_u64().unwrap()
}

async fn metric(c: &Cluster, node: u64, name: &str) -> Option<f64> {
    c.metric(node, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_read_linearizably_on_other_nodes_and_conditions_hold() {
    let c = Cluster::start(Options::default()).await.unwrap();
    // A write through one node is visible at once through every other node.
    for (i, (writer, reader)) in [(1, 3), (3, 2), (2, 1)].into_iter().enumerate() {
        let key = format!("greeting-{i}");
        let r = put(&c, writer, &key, &format!("hello {i}")).await;
        assert_eq!(r.status(), 200);
        let (_, body) = json_of(r).await;
        let version = body["version"].as_u64().unwrap();
        let (status, value, etag) = get(&c, reader, &key).await;
        assert_eq!(
            (status, value.as_str()),
            (StatusCode::OK, format!("hello {i}").as_str())
        );
        assert_eq!(etag, Some(format!("\"{version}\"")));
    }

    // Compare-and-swap with If-Match, create-only with If-None-Match.
    let r = put(&c, 1, "cas", "v1").await;
    let (_, body) = json_of(r).await;
    let v1 = body["version"].as_u64().unwrap();
    let url = format!("{}/v1/kv/cas", c.url(2));
    let stale = c
        .http()
        .put(&url)
        .header("if-match", "\"1\"")
        .body("nope")
        .send()
        .await
        .unwrap();
    let (status, err) = json_of(stale).await;
    assert_eq!(status, 412);
    assert_eq!(err["error"], "precondition_failed");
    assert_eq!(err["current_version"], v1);
    let ok = c
        .http()
        .put(&url)
        .header("if-match", format!("\"{v1}\""))
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let exists = c
        .http()
        .put(&url)
        .header("if-none-match", "*")
        .body("v3")
        .send()
        .await
        .unwrap();
    assert_eq!(exists.status(), 412);
    assert_eq!(get(&c, 3, "cas").await.1, "v2");

    // Stale reads carry the applied index; deletes report whether they deleted.
    let r = c
        .http()
        .get(format!("{}/v1/kv/cas?consistency=stale", c.url(3)))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-metrokv-applied-index"));
    let del = c.http().delete(&url).send().await.unwrap();
    let (_, body) = json_of(del).await;
    assert_eq!(body["deleted"], true);
    let del = c.http().delete(&url).send().await.unwrap();
    assert_eq!(json_of(del).await.1["deleted"], false);
    assert_eq!(get(&c, 1, "cas").await.0, 404);

    // A prefix listing is one snapshot, paged.
    for i in 0..5 {
        assert_eq!(
            put(&c, 1, &format!("list/{i}"), &format!("{i}"))
                .await
                .status(),
            200
        );
    }
    let page = c
        .get_json(&format!("{}/v1/kv?prefix=list/&limit=3", c.url(2)))
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert_eq!(page["more"], true);
    let after = page["items"][2]["key"].as_str().unwrap();
    let rest = c
        .get_json(&format!("{}/v1/kv?prefix=list/&after={after}", c.url(2)))
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["more"], false);

    // A txn: compare on version, then put and get in one step.
    let txn = json!({
        "compare": [{"key": "list/0", "target": "value", "op": "==", "value": "0"}],
        "success": [{"put": {"key": "list/0", "value": "zero"}}, {"get": {"key": "list/0"}}],
        "failure": [{"get": {"key": "list/0"}}]
    });
    let r = c
        .http()
        .post(format!("{}/v1/txn", c.url(3)))
        .json(&txn)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["succeeded"], true);
    assert_eq!(body["results"][1]["get"]["value"], "zero");
    let r = c
        .http()
        .post(format!("{}/v1/txn", c.url(1)))
        .json(&txn)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await.1["succeeded"], false);

    // The cluster view names every member with its zone.
    let view = c
        .get_json(&format!("{}/v1/cluster", c.url(1)))
        .await
        .unwrap();
    let zones: Vec<&str> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["dc-a", "dc-a", "dc-b"]);
    assert!(view["leader"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_acknowledged_write_and_writes_resume() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let leader = c.leader().await.expect("a leader");
    let urls = c.urls();
    let http = c.http().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    // Counts of acknowledged writes, so the test waits for progress instead of sleeping.
    let acked_before = Arc::new(AtomicU64::new(0));
    let acked_after = Arc::new(AtomicU64::new(0));

    // Four writers, each with its own keys, sending to every node in turn. They record which
    // writes were acknowledged, and how many were acknowledged after the kill.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (urls, http, stop, killed) = (urls.clone(), http.clone(), stop.clone(), killed.clone());
        let (acked_before, acked_after) = (acked_before.clone(), acked_after.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut acked_after_kill = 0;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let key = format!("w{w}-{i}");
                let url = &urls[((w + i) % urls.len() as u64) as usize];
                let after_kill = killed.load(Ordering::Relaxed);
                let r = http
                    .put(format!("{url}/v1/kv/{key}"))
                    .header("idempotency-key", &key)
                    .body(format!("value-{i}"))
                    .timeout(Duration::from_secs(8))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 200 {
                        acked.insert(key, format!("value-{i}"));
                        if after_kill {
                            acked_after_kill += 1;
                            acked_after.fetch_add(1, Ordering::Relaxed);
                        } else {
                            acked_before.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                i += 1;
            }
            (acked, acked_after_kill)
        }));
    }
    let progress = |counter: Arc<AtomicU64>, at_least: u64| {
        move || {
            let counter = counter.clone();
            async move {
                match counter.load(Ordering::Relaxed) {
                    n if n >= at_least => Ok(()),
                    n => Err(format!("{n} writes acknowledged")),
                }
            }
        }
    };
    Cluster::eventually(
        "writes are acknowledged before the kill",
        Duration::from_secs(15),
        progress(acked_before.clone(), 40),
    )
    .await
    .unwrap();
    c.kill(leader);
    killed.store(true, Ordering::Relaxed);

    // Writes resume: poll the survivors until writes acknowledged after the kill show up.
    let survivor = if leader == 1 { 2 } else { 1 };
    Cluster::eventually(
        "a new leader serves writes",
        Duration::from_secs(15),
        || {
            let c = &c;
            async move {
                match c
                    .http()
                    .put(format!("{}/v1/kv/probe", c.url(survivor)))
                    .body("x")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await
    .unwrap();
    Cluster::eventually(
        "the writers see the new leader",
        Duration::from_secs(15),
        progress(acked_after.clone(), 20),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);

    let mut all = BTreeMap::new();
    let mut after_kill = 0;
    for w in writers {
        let (acked, n) = w.await.unwrap();
        all.extend(acked);
        after_kill += n;
    }
    assert!(
        after_kill > 0,
        "no write was acknowledged after the leader was killed"
    );
    assert!(all.len() > 20, "too few writes acknowledged: {}", all.len());
    // Every acknowledged write is there, read linearizably through a survivor.
    for (key, value) in &all {
        let (status, got, _) = get(&c, survivor, key).await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::OK, value.as_str()),
            "acknowledged write {key} lost"
        );
    }
    // The killed node comes back and catches up.
    c.restart(leader).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let (k, v) = all.iter().next_back().unwrap();
    let r = c
        .http()
        .get(format!("{}/v1/kv/{k}", c.url(leader)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), *v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_after_its_log_was_purged_catches_up_by_snapshot() {
    let options = Options {
        extra_args: [
            "--snapshot-logs-since-last",
            "50",
            "--logs-kept-after-snapshot",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Options::default()
    };
    let mut c = Cluster::start(options).await.unwrap();
    let leader = c.leader().await.unwrap();
    // A dc-a follower: the two left span both zones, so writes stay zone-safe (with dc-b's only
    // node down, the default adaptive mode would hold writes for degrade_after_ms).
    let victim = if leader == 1 { 2 } else { 1 };
    let writer = 3;
    assert_eq!(put(&c, writer, "before", "1").await.status(), 200);
    c.kill(victim);
    for i in 0..300 {
        let r = put(&c, writer, &format!("k{}", i % 40), &format!("{i}")).await;
        assert_eq!(r.status(), 200);
    }
    // The leader snapshots and purges its log past what the victim has.
    Cluster::eventually("the leader purged its log", Duration::from_secs(20), || {
        let c = &c;
        async move {
            let purged = metric(c, leader, "metrokv_raft_purged_index")
                .await
                .unwrap_or(0.0);
            if purged > 100.0 {
                Ok(())
            } else {
                Err(format!("purged index {purged}"))
            }
        }
    })
    .await
    .unwrap();

    c.restart(victim).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    Cluster::eventually(
        "the victim installed a snapshot",
        Duration::from_secs(20),
        || {
            let c = &c;
            async move {
                let installed = metric(c, victim, "metrokv_snapshots_installed_total")
                    .await
                    .unwrap_or(0.0);
                if installed >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("installed {installed}"))
                }
            }
        },
    )
    .await
    .unwrap();
    // It catches up with the leader; then its own state (a stale read) has everything.
    let leader_commit = c
        .get_json(&format!("{}/v1/cluster", c.url(leader)))
        .await
        .unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    Cluster::eventually(
        "the victim applied the leader's commit index",
        Duration::from_secs(20),
        || {
            let c = &c;
            async move {
                let applied = metric(c, victim, "metrokv_raft_applied_index")
                    .await
                    .unwrap_or(0.0) as u64;
                if applied >= leader_commit {
                    Ok(())
                } else {
                    Err(format!("applied {applied} < {leader_commit}"))
                }
            }
        },
    )
    .await
    .unwrap();
    for i in 260..300 {
        let r = c
            .http()
            .get(format!(
                "{}/v1/kv/k{}?consistency=stale",
                c.url(victim),
                i % 40
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), i.to_string());
    }
    let r = c
        .http()
        .get(format!("{}/v1/kv/before?consistency=stale", c.url(victim)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_are_refused_and_nothing_acknowledged_is_lost() {
    let options = Options {
        extra_args: vec!["--write-timeout-ms".into(), "2000".into()],
        ..Options::default()
    };
    let mut c = Cluster::start(options).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            put(&c, 1 + i % 3, &format!("kept{i}"), "yes")
                .await
                .status(),
            200
        );
    }
    c.kill(2);
    c.kill(3);
    // Whatever node 1 was, it cannot commit alone.
    for i in 0..3 {
        let r = put(&c, 1, &format!("lonely{i}"), "x").await;
        let (status, body) = json_of(r).await;
        assert!(status == 503 || status == 504, "got {status}: {body}");
        assert_eq!(
            body["error"],
            if status == 503 {
                "unavailable"
            } else {
                "indeterminate"
            }
        );
    }
    // A node cut off from the others does not vouch for a leader it cannot reach.
    Cluster::eventually(
        "the lone node reports not ready",
        Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                let url = c.url(1);
                let r = c
                    .http()
                    .get(format!("{url}/ready"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let view = c
                    .get_json(&format!("{url}/v1/cluster"))
                    .await
                    .map_err(|e| e.to_string())?;
                match (r.status().as_u16(), view["leader"].is_null()) {
                    (503, true) => Ok(()),
                    other => Err(format!("(ready status, leader is null) = {other:?}")),
                }
            }
        },
    )
    .await
    .unwrap();
    c.restart(2).unwrap();
    c.restart(3).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..20 {
        assert_eq!(get(&c, 1 + (i + 1) % 3, &format!("kept{i}")).await.1, "yes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_transfer_moves_money_once() {
    let c = Cluster::start(Options::default()).await.unwrap();
    for (id, balance) in [("alice", 100), ("bob", 0)] {
        let r = c
            .http()
            .post(format!("{}/v1/accounts", c.url(1)))
            .json(&json!({"id": id, "balance": balance}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let t1 = json!({"id": "t1", "from": "alice", "to": "bob", "amount": 30});
    let mut answers = Vec::new();
    for node in [1, 2, 3, 1] {
        let r = c
            .http()
            .post(format!("{}/v1/transfers", c.url(node)))
            .json(&t1)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "a retry must return the first outcome: {answers:?}"
    );
    assert_eq!(answers[0]["from_balance"], 70);
    // Same id, different body: a conflict, not a transfer.
    let r = c
        .http()
        .post(format!("{}/v1/transfers", c.url(2)))
        .json(&json!({"id": "t1", "from": "alice", "to": "bob", "amount": 31}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (422, Some("idempotency_conflict"))
    );
    // An insufficient-funds refusal is an outcome too, and sticks.
    let t2 = json!({"id": "t2", "from": "alice", "to": "bob", "amount": 1000});
    for _ in 0..2 {
        let r = c
            .http()
            .post(format!("{}/v1/transfers", c.url(3)))
            .json(&t2)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (409, Some("insufficient_funds"))
        );
    }
    let balances = c
        .get_json(&format!("{}/v1/accounts", c.url(3)))
        .await
        .unwrap();
    assert_eq!(balances["total"], 100);
    assert_eq!(balances["accounts"][0]["balance"], 70);
    assert_eq!(balances["accounts"][1]["balance"], 30);
    let rec = c
        .get_json(&format!("{}/v1/transfers/t1", c.url(2)))
        .await
        .unwrap();
    assert_eq!(rec["status"], "committed");
    let rec = c
        .get_json(&format!("{}/v1/transfers/t2", c.url(1)))
        .await
        .unwrap();
    assert_eq!(
        (rec["status"].as_str(), rec["error"].as_str()),
        (Some("rejected"), Some("insufficient_funds"))
    );
    let r = c
        .http()
        .get(format!("{}/v1/transfers/never", c.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_documented_error_and_changes_nothing() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let r = c
        .http()
        .post(format!("{}/v1/accounts", c.url(1)))
        .json(&json!({"id": "a", "balance": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let before = revision(&c, 1).await;
    let base = c.url(2);
    let long_key = "k".repeat(1025);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.http()
                .put(format!("{base}/v1/kv/big"))
                .body(vec![b'x'; 1024 * 1024 + 1]),
            413,
            "too_large",
        ),
        (
            c.http().put(format!("{base}/v1/kv/{long_key}")).body("v"),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/txn"))
                .header("content-type", "application/json")
                .body("{\"compare\": ["),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/accounts"))
                .body("not json"),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/accounts"))
                .json(&json!({"id": "x", "balance": -5})),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/transfers"))
                .json(&json!({"id": "t", "from": "a", "to": "nobody", "amount": 0})),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/transfers"))
                .json(&json!({"id": "t", "from": "a", "to": "a", "amount": 1})),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .post(format!("{base}/v1/transfers"))
                .json(&json!({"id": "bad id!", "from": "a", "to": "b", "amount": 1})),
            400,
            "invalid_request",
        ),
        (
            c.http()
                .put(format!("{base}/v1/kv/k"))
                .header("if-match", "\"abc\"")
                .body("v"),
            400,
            "invalid_request",
        ),
        (
            c.http().get(format!("{base}/v1/kv/k?consistency=maybe")),
            400,
            "invalid_request",
        ),
        (c.http().get(format!("{base}/v1/nope")), 404, "not_found"),
    ];
    for (i, (request, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(
            (got.as_u16(), body["error"].as_str()),
            (status, Some(code)),
            "case {i}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {i} has no message"
        );
    }
    // An unknown account is refused by the state machine; that is an outcome and changes nothing.
    let r = c
        .http()
        .post(format!("{base}/v1/transfers"))
        .json(&json!({"id": "t9", "from": "a", "to": "nobody", "amount": 1}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("account_not_found"))
    );
    assert_eq!(
        revision(&c, 3).await,
        before,
        "a refused request changed the revision"
    );
    assert_eq!(get(&c, 1, "big").await.0, 404);
    let a = c
        .get_json(&format!("{}/v1/accounts/a", c.url(3)))
        .await
        .unwrap();
    assert_eq!(a["balance"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_peer_traffic_never_crashes_a_node() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    // Raw frames test the plaintext wire format; a TLS port refuses them in the handshake
    // (node/tests/peer_tls.rs).
    let mut c = Cluster::start(Options {
        tls: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let target = c.node(1).peer_addr.clone();
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 4096],                   // a huge length prefix
        vec![0, 0, 0, 8, 1, 2, 3],          // a truncated frame
        vec![0, 0, 0, 3, 0xde, 0xad, 0xbe], // an undecodable hello
        (0..2048u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    for bytes in garbage {
        let mut s = tokio::net::TcpStream::connect(&target).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        // The node closes the connection (or answers a refusal); it must not hang or die.
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok(),
            "the node did not close a connection carrying garbage"
        );
    }
    let r = c
        .http()
        .get(format!("{}/health", c.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(put(&c, 1, "still-alive", "yes").await.status(), 200);
    assert_eq!(get(&c, 2, "still-alive").await.1, "yes");
    let log = c.log_tail(1, 200);
    assert!(
        log.contains("protocol error"),
        "garbage should be logged:\n{log}"
    );
}

/// The suite runs these tests twice (`scripts/test.sh`): the second time, with
/// `METROKV_TEST_TLS=1`, every cluster must really speak TLS, and a plaintext request must be
/// refused; the first time, plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_speak_tls_exactly_when_the_run_asks_for_it() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let tls = metrokv_tests::tls_by_default();
    assert_eq!(c.url(1).starts_with("https://"), tls, "{}", c.url(1));
    let plaintext = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://{}/health", c.node(1).client_addr))
        .send()
        .await;
    assert_eq!(
        plaintext.is_ok(),
        !tls,
        "plaintext to a {} node: {plaintext:?}",
        if tls { "TLS" } else { "plaintext" }
    );
    assert_eq!(put(&c, 1, "k", "v").await.status(), 200);
}
