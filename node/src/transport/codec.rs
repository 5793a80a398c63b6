//! The peer wire format: length-prefixed postcard frames on a persistent TCP connection.
//!
//! A connection opens with a [`Hello`] from the dialing node and a [`HelloReply`]; the listener
//! checks the protocol version, the cluster id and that it is the node the dialer meant to reach,
//! so two clusters on one host, or a node that moved, cannot cross-talk. After that each frame is
//! `u32 length (big-endian) | postcard(Envelope)`. Requests carry an id and are answered out of
//! order on the same connection.
//!
//! A frame longer than [`limits::PEER_FRAME_BYTES_MAX`], or one that does not decode, is a
//! protocol error: the reader returns [`FrameError`] and the connection is closed. Nothing a peer
//! sends can make the node panic.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::limits;
use crate::raft;
use crate::raft::NodeId;
use crate::state_machine::Command;
use crate::state_machine::Response;

/// Bumped on any incompatible change to the types below.
pub const PROTOCOL_VERSION: u16 = 1;

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted,
    Refused(String),
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
    /// The request could not be handled (the Raft core stopped, a chunk out of order, ...).
    Failed(String),
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
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = limits::PEER_FRAME_BYTES_MAX)]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encode a frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    postcard::to_io(value, &mut out)?;
    let len = out.len() - 4;
    if len > limits::PEER_FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Read one frame's payload. Returns [`FrameError::Closed`] on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limits::PEER_FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
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

pub async fn read_value<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut buf = Vec::new();
    read_frame(r, &mut buf).await?;
    decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let hello = Hello {
            protocol_version: 1,
            cluster_id: "c".into(),
            from: 1,
            to: 2,
            channel: Channel::Heartbeat,
        };
        let frame = encode_frame(&hello).unwrap();
        let mut r = frame.as_slice();
        let back: Hello = read_value(&mut r).await.unwrap();
        assert_eq!(back, hello);
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_errors_not_panics() {
        // Oversized length prefix.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            read_value::<_, Envelope<PeerRequest>>(&mut r).await,
            Err(FrameError::TooLarge(_))
        ));
        // Truncated payload.
        let mut r: &[u8] = &[0, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_value::<_, Envelope<PeerRequest>>(&mut r).await,
            Err(FrameError::Io(_))
        ));
        // Clean close.
        let mut r: &[u8] = &[];
        assert!(matches!(
            read_value::<_, Envelope<PeerRequest>>(&mut r).await,
            Err(FrameError::Closed)
        ));
        // Random bytes of a plausible length never panic the decoder.
        let mut seed = 0x1234_5678_u64;
        for len in 0..200usize {
            let mut bytes = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                bytes.push((seed >> 33) as u8);
            }
            let mut r = bytes.as_slice();
            let _ = read_value::<_, Envelope<PeerRequest>>(&mut r).await;
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
