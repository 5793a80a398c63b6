//! Snapshots arriving from a leader: chunks are written in order to a file in the incoming
//! directory (`storage::snapshot::Incoming`); after the last one the file is verified in full (records and checksum) and its
//! meta checked against Raft's rules (`transport::validate::snapshot`), and only then handed to
//! openraft to install. A corrupt or invalid snapshot is refused and the leader tries again; it
//! never reaches the install, which openraft would treat as fatal on failure.

use super::lock;
use super::Service;
use crate::raft::NodeId;
use crate::raft::SnapshotResponse;
use crate::storage::snapshot;
use crate::storage::snapshot::Incoming;
use crate::storage::SnapshotFile;
use crate::transport::codec::Failure;
use crate::transport::codec::PeerResponse;
use crate::transport::codec::SnapshotChunk;
use crate::transport::validate;

impl Service {
    pub(super) async fn receive_snapshot_chunk(
        &self,
        from: NodeId,
        chunk: SnapshotChunk,
    ) -> PeerResponse {
        match self.receive_chunk(from, chunk).await {
            Ok(r) => {
                self.touch_leader(from);
                PeerResponse::SnapshotChunk(r)
            }
            Err(e) => {
                tracing::warn!(from, error = %e, "snapshot chunk refused");
                PeerResponse::Failed(e)
            }
        }
    }

    async fn receive_chunk(
        &self,
        from: NodeId,
        chunk: SnapshotChunk,
    ) -> Result<Option<SnapshotResponse>, Failure> {
        let refuse = |msg: String| Failure::SnapshotChunk(msg);
        if let Err(e) = validate::snapshot_chunk(&chunk.vote, from, self.id()) {
            return Err(Failure::Invalid(e.0));
        }
        let previous = lock(&self.incoming).remove(&from);
        let mut incoming = match previous {
            Some(inc) if inc.transfer_id == chunk.transfer_id => inc,
            stale => {
                if let Some(stale) = stale {
                    stale.abandon();
                }
                if chunk.offset != 0 {
                    return Err(refuse(format!(
                        "chunk at offset {} of an unknown transfer; start over",
                        chunk.offset
                    )));
                }
                Incoming::create(&self.incoming_dir, from, chunk.transfer_id)
                    .map_err(|e| refuse(e.to_string()))?
            }
        };
        let SnapshotChunk {
            offset,
            done,
            vote,
            data,
            ..
        } = chunk;
        let incoming = tokio::task::spawn_blocking(move || {
            incoming.append(offset, &data, done).map(|()| incoming)
        })
        .await
        .map_err(|e| refuse(e.to_string()))?
        .map_err(|e| refuse(e.to_string()))?;
        if !done {
            lock(&self.incoming).insert(from, incoming);
            return Ok(None);
        }
        let path = incoming.into_path();
        let result = self.install_received(from, vote, &path).await;
        // Installed files are moved away; a refused one is not ours to keep.
        let _ = std::fs::remove_file(&path);
        result.map(Some)
    }

    async fn install_received(
        &self,
        from: NodeId,
        vote: crate::raft::Vote,
        path: &std::path::Path,
    ) -> Result<SnapshotResponse, Failure> {
        let checked = path.to_path_buf();
        let meta = tokio::task::spawn_blocking(move || snapshot::verify(&checked))
            .await
            .map_err(|e| Failure::SnapshotChunk(e.to_string()))?
            .map_err(|e| Failure::SnapshotChunk(format!("received snapshot is invalid: {e}")))?;
        validate::snapshot(&vote, &meta, from, self.id(), self.local_committed())
            .map_err(|e| Failure::Invalid(e.0))?;
        let file = SnapshotFile::open(path).map_err(|e| Failure::SnapshotChunk(e.to_string()))?;
        let snapshot = crate::storage::Snapshot {
            meta,
            snapshot: file,
        };
        self.raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Failure::Raft(e.to_string()))
    }
}
