//! End-to-end tests of authentication and authorization on real node processes: tokens with
//! roles and scopes from `--auth-file`.

use std::time::Duration;

use metrokv_tests::Cluster;
use metrokv_tests::Options;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::json;

/// Run `metrokv-node token` and return the token and the auth file entry it printed.
fn make_token(name: &str, role: &str, scope: &[&str]) -> (String, String) {
    let out = std::process::Command::new(metrokv_tests::binary("metrokv-node").unwrap())
        .args(["token", "--name", name, "--role", role])
        .args(scope)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let entry = text
        .lines()
        .filter(|l| !l.starts_with("token: ") && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!entry.contains(&token), "the file entry holds only a hash");
    (token, entry + "\n")
}

struct Api<'a> {
    c: &'a Cluster,
}

impl Api<'_> {
    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let leader = self.c.leader().await.unwrap_or(1);
        let mut r = self
            .c
            .http()
            .request(method, format!("{}{path}", self.c.url(leader)));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }
}

/// Each role is allowed exactly its calls; a missing or unknown token gets 401 and changes
/// nothing; a scoped token reaches only its keys and accounts; failures are counted; a changed
/// auth file takes effect without a restart, and a broken one leaves the old tokens in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_allow_exactly_their_role_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, e1) = make_token("reader", "read", &[]);
    let (writer, e2) = make_token("writer", "write", &[]);
    let (admin, e3) = make_token("admin", "admin", &[]);
    let (scoped, e4) = make_token(
        "tenant-a",
        "write",
        &["--key-prefix", "a/", "--account-prefix", "a-"],
    );
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(&auth_file, [e1, e2, e3.clone(), e4].concat()).unwrap();
    let c = Cluster::start(Options {
        extra_args: vec!["--auth-file".into(), auth_file.to_str().unwrap().into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let api = Api { c: &c };
    // Fixtures, made by the admin.
    for (method, path, body) in [
        (Method::PUT, "/v1/kv/k", None),
        (
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "x-1", "balance": 100})),
        ),
        (
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "x-2", "balance": 100})),
        ),
    ] {
        let (status, text) = api.call(Some(&admin), method, path, body).await;
        assert!(status.is_success(), "{status} {text}");
    }

    let read_txn = json!({"compare": [], "success": [{"get": {"key": "k"}}], "failure": []});
    let write_txn =
        json!({"compare": [], "success": [{"put": {"key": "k", "value": "t"}}], "failure": []});
    let transfer = |id: &str| json!({"id": id, "from": "x-1", "to": "x-2", "amount": 1});
    // (method, path, body, the least role allowed: 0 read, 1 write, 2 admin)
    let table: Vec<(Method, String, Option<serde_json::Value>, usize)> = vec![
        (Method::GET, "/v1/kv/k".into(), None, 0),
        (Method::GET, "/v1/kv?prefix=".into(), None, 0),
        (Method::POST, "/v1/txn".into(), Some(read_txn), 0),
        (Method::GET, "/v1/accounts/x-1".into(), None, 0),
        (Method::GET, "/v1/accounts".into(), None, 0),
        (Method::GET, "/v1/cluster".into(), None, 0),
        (Method::GET, "/metrics".into(), None, 0),
        (Method::PUT, "/v1/kv/k".into(), Some(json!("v")), 1),
        (Method::DELETE, "/v1/kv/gone".into(), None, 1),
        (Method::POST, "/v1/txn".into(), Some(write_txn), 1),
        (
            Method::POST,
            "/v1/accounts".into(),
            Some(json!({"id": "y-1", "balance": 1})),
            1,
        ),
        (Method::POST, "/v1/transfers".into(), Some(transfer("t")), 1),
        (Method::GET, "/v1/cluster/settings".into(), None, 2),
        (
            Method::PUT,
            "/v1/cluster/settings".into(),
            Some(json!({"zone_safety": "nonsense"})),
            2,
        ),
        (Method::DELETE, "/v1/cluster/members/99".into(), None, 2),
        (Method::GET, "/v1/backup".into(), None, 2),
    ];
    let roles = [("read", &reader), ("write", &writer), ("admin", &admin)];
    for (method, path, body, least) in &table {
        for (rank, (role, token)) in roles.iter().enumerate() {
            let (status, text) = api
                .call(Some(token), method.clone(), path, body.clone())
                .await;
            let refused = status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED;
            assert_eq!(
                refused,
                rank < *least,
                "{role} token, {method} {path}: {status} {text}"
            );
            if refused {
                assert_eq!(status, StatusCode::FORBIDDEN);
                let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(body["error"], "forbidden", "{text}");
            }
        }
        // No token, a wrong token, a malformed header: 401, whatever the route.
        for token in [None, Some("mkv_wrong")] {
            let (status, text) = api.call(token, method.clone(), path, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["error"], "unauthenticated");
        }
    }
    // /health and /ready stay open.
    for path in ["/health", "/ready"] {
        let (status, _) = api.call(None, Method::GET, path, None).await;
        assert!(status.is_success(), "{path}: {status}");
    }
    // A refused write changed nothing.
    let (status, _) = api
        .call(None, Method::PUT, "/v1/kv/unauth", Some(json!("x")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(
            Some(&reader),
            Method::PUT,
            "/v1/kv/unauth",
            Some(json!("x")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(Some(&admin), Method::GET, "/v1/kv/unauth", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused put wrote nothing");

    // The scoped token: its own keys and accounts only, no admin calls.
    let s = Some(scoped.as_str());
    let allowed: Vec<(Method, &str, Option<serde_json::Value>)> = vec![
        (Method::PUT, "/v1/kv/a/1", Some(json!("v"))),
        (Method::GET, "/v1/kv/a/1", None),
        (Method::GET, "/v1/kv?prefix=a/", None),
        (
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "a-1", "balance": 10})),
        ),
        (
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "a-2", "balance": 10})),
        ),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({"id": "ta", "from": "a-1", "to": "a-2", "amount": 1})),
        ),
        (Method::GET, "/v1/transfers/ta", None),
        (Method::GET, "/v1/accounts?prefix=a-", None),
    ];
    for (method, path, body) in allowed {
        let (status, text) = api.call(s, method.clone(), path, body).await;
        assert!(
            status.is_success(),
            "scoped {method} {path}: {status} {text}"
        );
    }
    let refused: Vec<(Method, &str, Option<serde_json::Value>)> = vec![
        (Method::PUT, "/v1/kv/b/1", Some(json!("v"))),
        (Method::GET, "/v1/kv/k", None),
        (Method::GET, "/v1/kv?prefix=", None),
        (
            Method::POST,
            "/v1/txn",
            Some(
                json!({"compare": [], "success": [{"put": {"key": "a/2", "value": "v"}}, {"get": {"key": "k"}}], "failure": []}),
            ),
        ),
        (
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "b-1", "balance": 10})),
        ),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({"id": "tb", "from": "a-1", "to": "x-2", "amount": 1})),
        ),
        (Method::GET, "/v1/accounts/x-1", None),
        (Method::GET, "/v1/accounts", None),
        (Method::GET, "/v1/transfers/t", None),
        (Method::GET, "/v1/backup", None),
    ];
    for (method, path, body) in refused {
        let (status, text) = api.call(s, method.clone(), path, body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "scoped {method} {path}: {text}"
        );
    }
    let (_, text) = api
        .call(Some(&admin), Method::GET, "/v1/kv/a/2", None)
        .await;
    assert!(
        text.contains("not_found"),
        "a refused txn wrote nothing: {text}"
    );
    let (_, text) = api
        .call(Some(&admin), Method::GET, "/v1/accounts/x-2", None)
        .await;
    assert!(
        text.contains("\"balance\":101"),
        "one transfer by the writer only: {text}"
    );

    // Failures are counted in /metrics.
    let (_, metrics) = api.call(Some(&admin), Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("metrokv_auth_failures_total{reason=\"missing\"}")
            && metrics.contains("metrokv_auth_failures_total{reason=\"forbidden\"}"),
        "auth failures in /metrics"
    );

    // A new token works once the file changes; a broken file keeps the tokens in force.
    let (late, e5) = make_token("late", "read", &[]);
    let text = std::fs::read_to_string(&auth_file).unwrap() + &e5;
    std::fs::write(&auth_file, text).unwrap();
    Cluster::eventually("the new token is accepted", Duration::from_secs(20), || {
        let api = &api;
        let late = late.clone();
        async move {
            let (status, _) = api.call(Some(&late), Method::GET, "/v1/kv/k", None).await;
            (status == StatusCode::OK)
                .then_some(())
                .ok_or(format!("{status}"))
        }
    })
    .await
    .unwrap();
    std::fs::write(&auth_file, "this is not toml [[[").unwrap();
    // Wait until every node has seen the broken file (counted), then the old tokens still work.
    for node in 1..=3 {
        Cluster::eventually(
            "the broken file is noticed",
            Duration::from_secs(20),
            || {
                let c = &c;
                let admin = admin.clone();
                async move {
                    let text = c
                        .http()
                        .get(format!("{}/metrics", c.url(node)))
                        .bearer_auth(&admin)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .text()
                        .await
                        .map_err(|e| e.to_string())?;
                    text.contains("metrokv_auth_reload_failures_total")
                        .then_some(())
                        .ok_or("not yet".to_string())
                }
            },
        )
        .await
        .unwrap();
    }
    let (status, _) = api.call(Some(&late), Method::GET, "/v1/kv/k", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the tokens loaded before stay in force"
    );
}
