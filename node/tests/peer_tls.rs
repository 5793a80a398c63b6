//! TLS on both ports of a real three-node cluster (`metrokv-node certs`, then `--tls-cert` and
//! `--peer-tls-cert` on every node): the members form a cluster over mutual TLS and fail over;
//! clients reach the API over HTTPS only; a dialer without a certificate of the cluster CA, or
//! with one naming another member, is refused; a replaced certificate is served without a
//! restart.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrokv_node::tls::TlsFiles;
use metrokv_node::transport::client::CallError;
use metrokv_node::transport::client::Dialer;
use metrokv_node::transport::client::PeerClient;
use metrokv_node::transport::codec::Channel;
use metrokv_node::transport::codec::PeerRequest;
use metrokv_node::transport::codec::PeerResponse;
use metrokv_node::transport::codec::Refusal;
use metrokv_tests::storage_id_in_log;
use metrokv_tests::Cluster;
use metrokv_tests::Options;

fn files(dir: &Path, name: &str, ca: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: Some(ca.to_path_buf()),
    }
}

/// A status call to node 1 as member `me`, over TLS with `tls` (or plaintext).
async fn status_as(
    c: &Cluster,
    me: u64,
    storage_id: u64,
    tls: Option<TlsFiles>,
) -> Result<PeerResponse, CallError> {
    let dialer = Dialer {
        me,
        cluster_id: "metrokv-test".into(),
        storage_id,
        ids: Arc::new(metrokv_node::storage::StorageIds::new()),
        tls: tls.map(|f| metrokv_node::tls::peer_tls(f).unwrap()),
    };
    let client = PeerClient::new(dialer, 1, c.node(1).peer_addr.clone(), Channel::Forward);
    client
        .call(PeerRequest::Status, Duration::from_secs(5))
        .await
}

/// The member ids in the certificate node 1's API presents now.
async fn api_certificate_names(c: &Cluster, ca: &Path) -> Vec<u64> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&c.node(1).client_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    metrokv_node::tls::member_ids(&certs[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_ports_serves_refuses_strangers_and_reloads() {
    let mut c = Cluster::start(Options {
        tls: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let ca: PathBuf = c.ca.clone().unwrap();
    let certs = ca.parent().unwrap().to_path_buf();
    assert!(c.url(1).starts_with("https://"));

    // The client library and the CLI over HTTPS, through a leader failover.
    let client = metrokv_client::ClientBuilder::new(c.urls())
        .tls(metrokv_client::TlsOptions {
            ca: Some(ca.clone()),
            ..Default::default()
        })
        .deadline(Duration::from_secs(15))
        .build()
        .unwrap();
    client.put("k", "v1").await.unwrap();
    let leader = c.leader().await.expect("a leader");
    c.kill(leader);
    client.put("k", "v2").await.unwrap();
    c.restart(leader).unwrap();
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let out = std::process::Command::new(metrokv_tests::binary("metrokv").unwrap())
        .args(["--endpoints", &c.urls().join(","), "--cacert"])
        .arg(&ca)
        .args(["get", "k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2", "{out:?}");

    // Plaintext to the TLS API port gets no answer.
    let plain = format!("http://{}/health", c.node(1).client_addr);
    assert!(
        reqwest::get(&plain).await.is_err(),
        "plaintext HTTP to a TLS port is refused"
    );

    // The peer port: node 2's certificate as node 2 is admitted (the control), as node 3 it is
    // refused; a certificate from another CA and a plaintext dialer get nowhere.
    let n2_storage = storage_id_in_log(&c.log(2));
    let n3_storage = storage_id_in_log(&c.log(3));
    let answer = status_as(&c, 2, n2_storage, Some(files(&certs, "node-2", &ca))).await;
    assert!(matches!(answer, Ok(PeerResponse::Status(_))), "{answer:?}");
    let answer = status_as(&c, 3, n3_storage, Some(files(&certs, "node-2", &ca))).await;
    assert!(
        matches!(
            answer,
            Err(CallError::Refused {
                refusal: Refusal::Certificate { from: 3, .. },
                ..
            })
        ),
        "{answer:?}"
    );
    let other = tempfile::tempdir().unwrap();
    metrokv_node::tls::write_dev_certs(other.path(), &[1, 2, 3], &[]).unwrap();
    // It trusts our CA but presents a certificate of another.
    let answer = status_as(&c, 3, n3_storage, Some(files(other.path(), "node-3", &ca))).await;
    assert!(answer.is_err(), "another CA's certificate: {answer:?}");
    let answer = status_as(&c, 3, n3_storage, None).await;
    assert!(answer.is_err(), "a plaintext dialer: {answer:?}");
    let refused = c
        .metric(1, "metrokv_peer_tls_refused_total")
        .await
        .unwrap_or(0.0);
    assert!(
        refused >= 2.0,
        "the node counted the refused handshakes: {refused}"
    );

    // A replaced certificate is served without a restart.
    assert_eq!(api_certificate_names(&c, &ca).await, vec![1]);
    std::fs::copy(certs.join("node-2.key"), certs.join("node-1.key")).unwrap();
    std::fs::copy(certs.join("node-2.pem"), certs.join("node-1.pem")).unwrap();
    Cluster::eventually(
        "the new certificate is served",
        Duration::from_secs(20),
        || {
            let (c, ca) = (&c, &ca);
            async move {
                let names = api_certificate_names(c, ca).await;
                (names == vec![2]).then_some(()).ok_or(format!("{names:?}"))
            }
        },
    )
    .await
    .unwrap();
}
