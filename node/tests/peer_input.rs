//! Review defect 9 on a real node: well-formed but invalid Raft requests from a member (wrong
//! term relations, indices out of range) are refused before they reach an `assert!` or an
//! overflow inside openraft; the node answers each with a typed failure and keeps serving.
//!
//! The test stops node 2 of a real three-node cluster and speaks as node 2 on the peer port of
//! node 1, with node 2's storage id (from its log), as a buggy or confused member would.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use metrokv_node::raft::AppendEntriesRequest;
use metrokv_node::raft::Entry;
use metrokv_node::raft::EntryPayload;
use metrokv_node::raft::LogId;
use metrokv_node::raft::NodeInfo;
use metrokv_node::raft::TypeConfig;
use metrokv_node::raft::Vote;
use metrokv_node::raft::VoteRequest;
use metrokv_node::transport::codec;
use metrokv_node::transport::codec::Channel;
use metrokv_node::transport::codec::Envelope;
use metrokv_node::transport::codec::Failure;
use metrokv_node::transport::codec::Hello;
use metrokv_node::transport::codec::HelloReply;
use metrokv_node::transport::codec::PeerRequest;
use metrokv_node::transport::codec::PeerResponse;
use metrokv_tests::storage_id_in_log;
use metrokv_tests::Cluster;
use metrokv_tests::Options;
use tokio::net::TcpStream;

fn lid(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

async fn connect_as(addr: &str, from: u64, to: u64, storage_id: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Hello {
        protocol_version: codec::PROTOCOL_VERSION,
        cluster_id: "metrokv-test".into(),
        from,
        to,
        channel: Channel::Replication,
        storage_id,
    };
    codec::write_value(&mut s, &hello).await.unwrap();
    let reply: HelloReply = codec::read_hello(&mut s).await.unwrap();
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    s
}

async fn call(s: &mut TcpStream, id: u64, body: PeerRequest) -> PeerResponse {
    codec::write_value(s, &Envelope { id, body }).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        codec::read_frame(s, &mut buf, metrokv_node::limits::PEER_FRAME_BYTES_MAX),
    )
    .await
    .expect("an answer")
    .expect("a frame");
    let answer: Envelope<PeerResponse> = codec::decode(&buf).unwrap();
    assert_eq!(answer.id, id);
    answer.body
}

fn blank(log_id: LogId) -> Entry {
    Entry {
        log_id,
        payload: EntryPayload::Blank,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_raft_requests_from_a_member_are_refused_and_the_node_keeps_serving() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    // Node 1 must not be the one we silence; and it must know node 2's storage.
    while c.leader().await == Some(2) {
        c.restart(2).unwrap();
        c.wait_ready(Duration::from_secs(30)).await.unwrap();
    }
    let storage_2 = storage_id_in_log(&c.log(2));
    Cluster::eventually("storage ids recorded", Duration::from_secs(10), || async {
        match c.log(1).matches("recorded a member's storage id").count() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} records")),
        }
    })
    .await
    .unwrap();
    c.kill(2);
    let term = c
        .get_json(&format!("{}/v1/cluster", c.url(1)))
        .await
        .unwrap()["term"]
        .as_u64()
        .unwrap();
    let high = term + 5;
    let append = |vote: Vote, prev: Option<LogId>, entries: Vec<Entry>, commit: Option<LogId>| {
        PeerRequest::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: prev,
            entries,
            leader_commit: commit,
        })
    };
    #[derive(serde::Serialize)]
    struct RawMembership {
        configs: Vec<BTreeSet<u64>>,
        nodes: BTreeMap<u64, NodeInfo>,
    }
    let raw = RawMembership {
        configs: vec![BTreeSet::from([1, 9])],
        nodes: BTreeMap::new(),
    };
    let voter_without_node = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
    let cases: Vec<(&str, PeerRequest)> = vec![
        (
            "an entry at index u64::MAX",
            append(
                Vote::new_committed(high, 2),
                Some(lid(high, 2, u64::MAX - 1)),
                vec![blank(lid(high, 2, u64::MAX))],
                None,
            ),
        ),
        (
            "a commit with a lower term and a higher index than the entries",
            append(
                Vote::new_committed(high, 2),
                Some(lid(high, 2, 1)),
                vec![blank(lid(high, 2, 2))],
                Some(lid(high - 1, 2, 500)),
            ),
        ),
        (
            "a membership whose voter has no node",
            append(
                Vote::new_committed(high, 2),
                None,
                vec![Entry {
                    log_id: lid(high, 2, 0),
                    payload: EntryPayload::Membership(voter_without_node),
                }],
                None,
            ),
        ),
        (
            "an uncommitted vote with entries",
            append(Vote::new(high, 2), None, vec![blank(lid(high, 2, 0))], None),
        ),
        (
            "node 2 speaking for node 1",
            append(Vote::new_committed(high, 1), None, vec![], None),
        ),
        (
            "a vote at term u64::MAX",
            PeerRequest::Vote(VoteRequest {
                vote: Vote::new(u64::MAX, 2),
                last_log_id: None,
                leadership_transfer: false,
            }),
        ),
        (
            "a pre-vote whose log is ahead of its vote",
            PeerRequest::PreVote(VoteRequest {
                vote: Vote::new(high, 2),
                last_log_id: Some(lid(high + 1, 2, 10)),
                leadership_transfer: true,
            }),
        ),
    ];
    let mut s = connect_as(&c.node(1).peer_addr, 2, 1, storage_2).await;
    for (i, (what, request)) in cases.into_iter().enumerate() {
        let answer = call(&mut s, i as u64, request).await;
        assert!(
            matches!(answer, PeerResponse::Failed(Failure::Invalid(_))),
            "{what}: {answer:?}"
        );
    }
    // Node 1 is alive, still on its term, and serves with node 3.
    assert!(!c.has_exited(1), "{}", c.log_tail(1, 30));
    assert_eq!(c.put(1, "after", "ok").await.status(), 200);
    assert_eq!(c.get(3, "after").await.1, "ok");
    let after = c
        .get_json(&format!("{}/v1/cluster", c.url(1)))
        .await
        .unwrap()["term"]
        .as_u64()
        .unwrap();
    assert!(
        after < high,
        "no invalid request moved the term ({term} -> {after})"
    );
    assert!(c.log(1).contains("refused an invalid peer request"));
}
