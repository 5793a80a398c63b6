//! The peer wire format: length-prefixed postcard frames on a persistent TCP connection.
//!
//! A connection opens with a [`Hello`] from the dialing node and a [`HelloReply`]; the listener
//! checks the protocol version, the cluster id, that it is the node the dialer meant to reach,
//! that the dialer is a member, and that the dialer's storage id is the one the cluster recorded
//! for it, so two clusters on one host, a node that moved, a stranger, or a member that lost its
//! data cannot cross-talk. Both sides say their storage id, and each checks the other's. After
//! that each frame is `u32 length (big-endian) | postcard(Envelope)`. Requests carry an id and are
//! answered out of order on the same connection.
//!
//! A handshake frame longer than [`limits::PEER_HELLO_BYTES_MAX`], a frame longer than
//! [`limits::PEER_FRAME_BYTES_MAX`], or one that does not decode, is a protocol error: the reader
//! returns [`FrameError`] and the connection is closed. Buffers grow as bytes arrive, so a length
//! prefix alone commits no memory. Nothing a peer sends can make the node panic.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::limits;
use crate::raft::types as raft;
use crate::raft::types::NodeId;
use crate::state_machine::Command;
use crate::state_machine::Response;

/// Bumped on any incompatible change to the types below. 2: storage ids in the handshake,
/// typed refusals and failures.
pub const PROTOCOL_VERSION: u16 = 2;

/// Which logical stream a connection carries. Heartbeats and votes get their own connection so
/// they never queue behind a large append or a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    Replication,
    Heartbeat,
    Snapshot,
    /// Client requests forwarded to the leader, and status queries.
    Forward,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
    pub channel: Channel,
    /// The dialer's storage id (see `storage::StorageIds`).
    pub storage_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Carries the listener's storage id, which the dialer checks in turn.
    Accepted {
        storage_id: u64,
    },
    Refused(Refusal),
}

/// Why a handshake was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version {got} is not {want}")]
    Version { got: u16, want: u16 },
    #[error("cluster id {got:?} is not {want:?}")]
    Cluster { got: String, want: String },
    #[error("this is node {me}, not node {to}")]
    WrongNode { me: NodeId, to: NodeId },
    #[error("node {from} is not a member of this cluster")]
    NotAMember { from: NodeId },
    /// The member's data directory is not the one the cluster knew: it lost its data.
    #[error("node {node} presents storage {presented:#018x}, but the cluster recorded storage {recorded:#018x} for it: its data directory was wiped or replaced, so it must not vote or acknowledge as the member it was")]
    StorageChanged {
        node: NodeId,
        recorded: u64,
        presented: u64,
    },
    /// Mutual TLS is on and the dialer's certificate does not name the member it claims to be.
    #[error("the peer claims to be node {from}, but its certificate names {named:?}")]
    Certificate { from: NodeId, named: Vec<NodeId> },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

/// One chunk of a snapshot stream. Chunks of one transfer arrive in order on one connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: raft::Vote,
    /// Chosen by the sender, unique per attempt; a new id restarts the transfer.
    pub transfer_id: u64,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// A membership change or leader transfer, as a follower forwards it to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipCall {
    AddLearner {
        id: NodeId,
        info: raft::NodeInfo,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
        force: bool,
    },
    /// To `to`, or to the best caught-up voter when `None`.
    TransferLeader {
        to: Option<NodeId>,
    },
}

/// The membership after a call, and who leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("membership changes are made on the leader; this node is not it (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("no leader could take the membership change: {0}")]
    NoLeader(String),
    #[error("{0}")]
    Invalid(String),
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member of this cluster")]
    NotAMember(NodeId),
    #[error("node {0} is not a learner of this cluster")]
    NotALearner(NodeId),
    #[error("node {id} has entries up to {matched:?} of the leader's {last}; promote it once it has caught up")]
    NotCaughtUp {
        id: NodeId,
        matched: Option<u64>,
        last: u64,
    },
    #[error("node {0} was started with --learner: it stays a learner (a remote copy never votes)")]
    RemoteLearner(NodeId),
    #[error("node {0} is the only voter; a cluster needs one")]
    LastVoter(NodeId),
    #[error("removing node {id} leaves voters only in zone {zone:?}, and zone safety is on: an acknowledged write would then rest on one zone. Add a voter in another zone first, set zone_safety to off, or force the removal")]
    BreaksZoneSafety { id: NodeId, zone: String },
    #[error("no voter can take over leadership now: {0}")]
    NoTransferTarget(String),
    #[error("node {0} cannot lead: {1}")]
    CannotLead(NodeId, String),
    #[error("leadership did not move to node {0} in time; it stays with node {1}")]
    TransferTimedOut(NodeId, NodeId),
    #[error("{0}")]
    Raft(String),
}

impl MembershipError {
    /// Whether nothing was changed and the call can be tried again at the current leader.
    pub fn leader_moved(&self) -> bool {
        matches!(self, MembershipError::NotLeader(_))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(raft::AppendEntriesRequest),
    Vote(raft::VoteRequest),
    PreVote(raft::VoteRequest),
    TransferLeader(raft::TransferLeaderRequest),
    SnapshotChunk(SnapshotChunk),
    /// A write a follower forwards to the leader; the leader stamps its time and proposes it.
    ClientWrite {
        command: Command,
        idempotency_key: Option<String>,
    },
    /// A follower asks the leader for a read index to serve a linearizable read locally.
    ReadIndex,
    Status,
    /// A membership change or leader transfer a follower forwards to the leader.
    Membership(MembershipCall),
}

impl PeerRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRequest::AppendEntries(_) => "append_entries",
            PeerRequest::Vote(_) => "vote",
            PeerRequest::PreVote(_) => "pre_vote",
            PeerRequest::TransferLeader(_) => "transfer_leader",
            PeerRequest::SnapshotChunk(_) => "snapshot_chunk",
            PeerRequest::ClientWrite { .. } => "client_write",
            PeerRequest::ReadIndex => "read_index",
            PeerRequest::Status => "status",
            PeerRequest::Membership(_) => "membership",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(raft::AppendEntriesResponse),
    Vote(raft::VoteResponse),
    TransferLeader(raft::TransferLeaderResponse),
    /// `None` while more chunks are expected; the install's answer after the last one.
    SnapshotChunk(Option<raft::SnapshotResponse>),
    ClientWrite(Result<Response, ForwardError>),
    ReadIndex(Result<u64, ForwardError>),
    Status(NodeStatus),
    Membership(Result<MembershipState, MembershipError>),
    /// The request could not be handled.
    Failed(Failure),
}

/// Why a peer request was not handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// The Raft core refused or has stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// The request breaks Raft's rules (see `transport::validate`); it was not passed on.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A snapshot chunk could not be taken (out of order, unknown transfer, a write failed).
    #[error("snapshot chunk refused: {0}")]
    SnapshotChunk(String),
    /// This node is still deciding whether it may join (its storage is new); Raft traffic waits.
    #[error("node {0} is starting and does not take Raft requests yet")]
    Starting(NodeId),
    /// The answer could not be encoded into one frame (never expected: answers are bounded).
    #[error("the answer of {bytes} bytes does not fit a peer frame")]
    AnswerTooLarge { bytes: usize },
}

/// Why the leader (or the node we took for it) did not answer a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// Not the leader; nothing was proposed. Carries the leader it knows of, if any.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The leader cannot reach a quorum; nothing was proposed.
    #[error("the leader has no quorum")]
    NoQuorum,
    /// Proposed, but whether it committed is unknown.
    #[error("the write's outcome is unknown: {0}")]
    Indeterminate(String),
    /// A linearizable read could not be confirmed in time.
    #[error("the read could not be confirmed: {0}")]
    ReadTimeout(String),
}

/// What one node reports about itself for `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// False while the node's storage is new and it has not yet joined the cluster.
    pub initialized: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encode a frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    postcard::to_io(value, &mut out)?;
    let len = out.len() - 4;
    if len > limits::PEER_FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: limits::PEER_FRAME_BYTES_MAX,
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Read one frame's payload of at most `max` bytes into `buf`. Returns [`FrameError::Closed`] on
/// a clean end of stream. The buffer grows by [`limits::PEER_READ_CHUNK_BYTES`] as the bytes
/// arrive, so a peer that announces a large frame and sends nothing holds no memory for it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    // A large buffer left by an earlier frame is not kept for the connection's lifetime.
    if buf.capacity() > 4 * limits::PEER_READ_CHUNK_BYTES && len < limits::PEER_READ_CHUNK_BYTES {
        buf.shrink_to(limits::PEER_READ_CHUNK_BYTES);
    }
    while buf.len() < len {
        let start = buf.len();
        let chunk = (len - start).min(limits::PEER_READ_CHUNK_BYTES);
        buf.resize(start + chunk, 0);
        r.read_exact(&mut buf[start..]).await?;
    }
    Ok(())
}

pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(payload)?)
}

pub async fn write_value<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let frame = encode_frame(value)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Write `first` and every frame already queued behind it, small ones coalesced into one buffer
/// of at most [`limits::PEER_WRITE_COALESCE_BYTES`], so a busy connection costs one write call
/// per batch of frames instead of one per frame. A frame larger than the coalescing buffer is
/// written on its own; the order of frames is kept.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    w: &mut W,
    first: Vec<u8>,
    queue: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        if frame.len() >= limits::PEER_WRITE_COALESCE_BYTES {
            w.write_all(&frame).await?;
        } else {
            buf.clear();
            buf.extend_from_slice(&frame);
            while buf.len() < limits::PEER_WRITE_COALESCE_BYTES {
                match queue.try_recv() {
                    Ok(more) if buf.len() + more.len() <= limits::PEER_WRITE_COALESCE_BYTES => {
                        buf.extend_from_slice(&more);
                    }
                    Ok(more) => {
                        next = Some(more);
                        break;
                    }
                    Err(_) => break,
                }
            }
            w.write_all(buf).await?;
        }
        if next.is_none() {
            next = queue.try_recv().ok();
        }
    }
    w.flush().await
}

/// Read one handshake frame ([`Hello`] or [`HelloReply`]), at most
/// [`limits::PEER_HELLO_BYTES_MAX`] bytes.
pub async fn read_hello<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut buf = Vec::new();
    read_frame(r, &mut buf, limits::PEER_HELLO_BYTES_MAX).await?;
    decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Coalesced writes keep every byte and the order of the frames, whether a frame is small,
    /// does not fit what is already buffered, or is larger than the coalescing buffer.
    #[tokio::test]
    async fn queued_frames_are_written_whole_and_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let small = |i: u8| vec![i; 1000];
        let large = vec![0xee; limits::PEER_WRITE_COALESCE_BYTES + 10];
        let mut expected = small(0);
        for i in 1..60u8 {
            let frame = if i == 30 { large.clone() } else { small(i) };
            expected.extend_from_slice(&frame);
            tx.send(frame).await.unwrap();
        }
        let mut out: Vec<u8> = Vec::new();
        let mut buf = Vec::new();
        write_queued(&mut out, small(0), &mut rx, &mut buf)
            .await
            .unwrap();
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "frames reordered or changed");
        assert!(rx.try_recv().is_err(), "every queued frame was written");
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let hello = Hello {
            protocol_version: 1,
            cluster_id: "c".into(),
            from: 1,
            to: 2,
            channel: Channel::Heartbeat,
            storage_id: 7,
        };
        let frame = encode_frame(&hello).unwrap();
        let mut r = frame.as_slice();
        let back: Hello = read_hello(&mut r).await.unwrap();
        assert_eq!(back, hello);
    }

    /// The review's seventh defect: 32 MiB were allocated per connection as soon as a length
    /// prefix arrived. A hello is now capped small, and a frame's buffer holds only what came.
    #[tokio::test]
    async fn a_length_prefix_alone_commits_no_memory() {
        let mut r: &[u8] = &[0x01, 0x00, 0x00, 0x00];
        assert!(matches!(
            read_hello::<_, Hello>(&mut r).await,
            Err(FrameError::TooLarge { len: 16_777_216, max }) if max == limits::PEER_HELLO_BYTES_MAX
        ));
        // A 32 MiB frame announced, ten bytes sent, then the peer goes away.
        let mut bytes = (limits::PEER_FRAME_BYTES_MAX as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7; 10]);
        let mut r = bytes.as_slice();
        let mut buf = Vec::new();
        let result = read_frame(&mut r, &mut buf, limits::PEER_FRAME_BYTES_MAX).await;
        assert!(matches!(result, Err(FrameError::Io(_))), "{result:?}");
        assert!(
            buf.capacity() <= 2 * limits::PEER_READ_CHUNK_BYTES,
            "{} bytes reserved for 10 received",
            buf.capacity()
        );
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_errors_not_panics() {
        // Oversized length prefix.
        let read = |mut r: &'static [u8]| async move {
            let mut buf = Vec::new();
            read_frame(&mut r, &mut buf, limits::PEER_FRAME_BYTES_MAX).await?;
            decode::<Envelope<PeerRequest>>(&buf)
        };
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await,
            Err(FrameError::TooLarge { .. })
        ));
        // Truncated payload.
        assert!(matches!(
            read(&[0, 0, 0, 10, 1, 2]).await,
            Err(FrameError::Io(_))
        ));
        // Clean close.
        assert!(matches!(read(&[]).await, Err(FrameError::Closed)));
        // Random bytes of a plausible length never panic the decoder.
        let mut seed = 0x1234_5678_u64;
        for len in 0..200usize {
            let mut bytes = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                bytes.push((seed >> 33) as u8);
            }
            let mut r = bytes.as_slice();
            let mut buf = Vec::new();
            if read_frame(&mut r, &mut buf, limits::PEER_FRAME_BYTES_MAX)
                .await
                .is_ok()
            {
                let _ = decode::<Envelope<PeerRequest>>(&buf);
            }
        }
    }

    #[test]
    fn a_client_write_round_trips() {
        let req = Envelope {
            id: 7,
            body: PeerRequest::ClientWrite {
                command: Command::Put {
                    key: "k".into(),
                    value: vec![1, 2],
                    condition: crate::state_machine::Condition::Always,
                },
                idempotency_key: Some("i".into()),
            },
        };
        let frame = encode_frame(&req).unwrap();
        let back: Envelope<PeerRequest> = decode(&frame[4..]).unwrap();
        assert_eq!(back.id, 7);
        assert!(matches!(back.body, PeerRequest::ClientWrite { .. }));
    }
}
