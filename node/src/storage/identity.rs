//! Which storage (data directory) each member runs on.
//!
//! Raft is safe only if a voter never forgets: its vote, and the entries it acknowledged. A
//! member whose data directory was wiped or replaced comes back empty under the same id, and if
//! it votes or acknowledges as the member it was, the cluster can elect a leader without a
//! committed write and lose it. So every data directory gets a random storage id when it is
//! created, the leader records each member's id in the replicated state the first time it meets
//! it (`Command::RecordStorage`), and every node refuses a peer connection whose storage id
//! differs from the recorded one, in both directions of the handshake (see `transport`).
//!
//! This registry is the in-memory copy of those records, updated by the state store as records
//! apply (and reloaded after a snapshot install), plus the ids learned from handshakes that have
//! no record yet, which the leader turns into records.
//!
//! Caveat: a node that never applied a member's record (it was cut off since the cluster's first
//! seconds) cannot recognise that member's new storage. The startup check of a new storage
//! (`node.rs`) covers most of that window; a node wiped while the others are all unreachable and
//! partitioned from birth is not covered.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::RwLock;

use crate::raft::types::NodeId;

#[derive(Debug, Default)]
pub struct StorageIds {
    recorded: RwLock<BTreeMap<NodeId, u64>>,
    learned: Mutex<BTreeMap<NodeId, u64>>,
}

/// A member presented a storage id other than the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {node} presents storage {presented:#018x}, but the cluster recorded {recorded:#018x}"
)]
pub struct StorageChanged {
    pub node: NodeId,
    pub recorded: u64,
    pub presented: u64,
}

impl StorageIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded storage id of `node`.
    pub fn recorded(&self, node: NodeId) -> Option<u64> {
        read(&self.recorded).get(&node).copied()
    }

    /// Check `presented` against the record for `node`, and remember it if there is none yet.
    pub fn check(&self, node: NodeId, presented: u64) -> Result<(), StorageChanged> {
        match self.recorded(node) {
            Some(recorded) if recorded != presented => Err(StorageChanged {
                node,
                recorded,
                presented,
            }),
            Some(_) => Ok(()),
            None => {
                lock(&self.learned).insert(node, presented);
                Ok(())
            }
        }
    }

    /// Storage ids met in handshakes that have no record yet: the leader records them.
    pub fn unrecorded(&self) -> Vec<(NodeId, u64)> {
        let recorded = read(&self.recorded);
        lock(&self.learned)
            .iter()
            .filter(|(node, _)| !recorded.contains_key(node))
            .map(|(node, id)| (*node, *id))
            .collect()
    }

    /// A record applied (or loaded at open).
    pub fn set_recorded(&self, node: NodeId, storage_id: u64) {
        write(&self.recorded).insert(node, storage_id);
    }

    /// Replace every record (after a snapshot install).
    pub fn replace_recorded(&self, all: BTreeMap<NodeId, u64>) {
        *write(&self.recorded) = all;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_id_is_enforced_and_an_unknown_one_is_learned() {
        let ids = StorageIds::new();
        assert_eq!(ids.check(2, 0xaa), Ok(()));
        assert_eq!(ids.unrecorded(), vec![(2, 0xaa)]);
        ids.set_recorded(2, 0xaa);
        assert!(ids.unrecorded().is_empty());
        assert_eq!(ids.check(2, 0xaa), Ok(()));
        assert_eq!(
            ids.check(2, 0xbb),
            Err(StorageChanged {
                node: 2,
                recorded: 0xaa,
                presented: 0xbb
            })
        );
        ids.replace_recorded(BTreeMap::new());
        assert_eq!(ids.check(2, 0xbb), Ok(()));
    }
}
