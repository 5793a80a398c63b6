//! Overload on a real node, in a test binary of its own: 2,000 clients saturate this machine's
//! two cores for a moment, and other tests running beside it would time out for that reason
//! alone (cargo runs test binaries one after another).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use metrokv_tests::Cluster;
use metrokv_tests::Options;

/// Overload: 2,000 concurrent keep-alive clients on one node. Every answer is a success or a
/// clear 503 `overloaded` (never a hang or a reset), the node's memory stays under a bound,
/// `/health` keeps answering, and the cluster holds no election because of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_keepalive_clients_get_answers_and_cause_no_election() {
    use tokio::io::AsyncBufReadExt;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    const CLIENTS: usize = 2_000;
    const REQUESTS_PER_CLIENT: usize = 5;
    /// The bound docs/reliability.md states for a node under this load.
    const RSS_KIB_MAX: u64 = 512 * 1024;
    raise_own_file_limit(CLIENTS as u64 + 512);
    // Raw HTTP/1.1 on plaintext sockets: the load is the requests, not 2,000 TLS handshakes.
    let c = Cluster::start(Options {
        tls: false,
        ..Options::default()
    })
    .await
    .unwrap();
    assert_eq!(c.put(1, "k", "v").await.status(), 200);
    let term_before = c
        .get_json(&format!("{}/v1/cluster", c.url(1)))
        .await
        .unwrap()["term"]
        .clone();
    let addr = c.node(1).client_addr.clone();

    // One keep-alive connection per client, a few requests each, all at once.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let Ok(s) = tokio::net::TcpStream::connect(&addr).await else {
                    return Err(format!("client {i}: connect failed"));
                };
                let mut s = tokio::io::BufReader::new(s);
                for r in 0..REQUESTS_PER_CLIENT {
                    let path = if r % 2 == 0 {
                        "/v1/kv/k"
                    } else {
                        "/v1/kv/k?consistency=stale"
                    };
                    let request = format!("GET {path} HTTP/1.1\r\nHost: n1\r\n\r\n");
                    s.get_mut()
                        .write_all(request.as_bytes())
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    let mut line = String::new();
                    s.read_line(&mut line)
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    let status: u16 = line
                        .split(' ')
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .ok_or(format!("client {i}: {line:?}"))?;
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        s.read_line(&mut header).await.map_err(|e| e.to_string())?;
                        if header == "\r\n" || header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
                    if status == 503 {
                        let text = String::from_utf8_lossy(&body);
                        if !text.contains("overloaded") && !text.contains("unavailable") {
                            return Err(format!("client {i}: 503 without a code: {text}"));
                        }
                    }
                    statuses.push(status);
                }
                Ok(statuses)
            })
        })
        .collect();

    // Meanwhile, /health answers and memory stays bounded.
    let mut health_worst = Duration::ZERO;
    let mut rss_max = 0;
    let health = c.http().clone();
    while clients.iter().any(|h| !h.is_finished()) {
        let started = Instant::now();
        let r = health
            .get(format!("{}/health", c.url(1)))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        assert!(
            r.is_ok_and(|r| r.status() == 200),
            "/health failed under load"
        );
        health_worst = health_worst.max(started.elapsed());
        rss_max = rss_max.max(c.rss_kib(1).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for client in clients {
        for status in client.await.unwrap().unwrap() {
            *by_status.entry(status).or_default() += 1;
        }
    }
    println!(
        "{CLIENTS} keep-alive clients x {REQUESTS_PER_CLIENT}: answers {by_status:?}, /health worst {health_worst:?}, n1 peak RSS {rss_max} KiB"
    );
    assert!(
        by_status.keys().all(|s| [200, 503].contains(s)),
        "{by_status:?}"
    );
    assert!(by_status.get(&200).copied().unwrap_or(0) > 0);
    assert!(rss_max < RSS_KIB_MAX, "peak RSS {rss_max} KiB");
    let term_after = c
        .get_json(&format!("{}/v1/cluster", c.url(1)))
        .await
        .unwrap()["term"]
        .clone();
    assert_eq!(term_before, term_after, "the load caused an election");
}

/// The test process holds one socket per client.
fn raise_own_file_limit(wanted: u64) {
    use nix::sys::resource::getrlimit;
    use nix::sys::resource::setrlimit;
    use nix::sys::resource::Resource;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < wanted {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(wanted.max(soft)), hard);
        }
    }
}
