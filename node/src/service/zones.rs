//! Zones: which acknowledged writes survive the loss of a whole zone.
//!
//! Raft commits an entry once a majority of the voters has it. With two zones, one of them holds
//! the majority, so a commit can rest on that zone alone: lose it, and the entry is gone even
//! though it was acknowledged. The zone-safe index is the highest index persisted on voters of
//! at least two zones; an entry at or below it survives the loss of any one zone.
//!
//! This file holds the pure part: the zone-safe index from the leader's replication progress.

use std::collections::BTreeMap;

use crate::raft::NodeId;

/// The highest index persisted by voters of at least two different zones, from each voter's
/// `matched` index (the leader's own flushed index included, as openraft reports it). `None`
/// when fewer than two zones hold any entry.
pub fn zone_safe_index<'a>(
    matched: impl IntoIterator<Item = (NodeId, Option<u64>)>,
    zone_of: impl Fn(NodeId) -> Option<&'a str>,
) -> Option<u64> {
    let mut best: BTreeMap<&str, u64> = BTreeMap::new();
    for (node, index) in matched {
        let (Some(zone), Some(index)) = (zone_of(node), index) else {
            continue;
        };
        let e = best.entry(zone).or_insert(index);
        *e = (*e).max(index);
    }
    let mut per_zone: Vec<u64> = best.into_values().collect();
    per_zone.sort_unstable_by(|a, b| b.cmp(a));
    per_zone.get(1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(n: NodeId) -> Option<&'static str> {
        match n {
            1 | 2 => Some("dc-a"),
            3 | 4 => Some("dc-b"),
            5 => Some("dc-c"),
            _ => None,
        }
    }

    #[test]
    fn the_zone_safe_index_needs_two_zones() {
        // 2+1: the majority zone alone has 90; dc-b has 70.
        assert_eq!(
            zone_safe_index([(1, Some(90)), (2, Some(90)), (3, Some(70))], zones),
            Some(70)
        );
        // dc-b has nothing yet.
        assert_eq!(
            zone_safe_index([(1, Some(90)), (2, Some(90)), (3, None)], zones),
            None
        );
        // One zone only: never zone-safe.
        assert_eq!(zone_safe_index([(1, Some(9)), (2, Some(9))], zones), None);
        // 2+2+1: the second-best zone decides.
        assert_eq!(
            zone_safe_index(
                [
                    (1, Some(50)),
                    (2, Some(40)),
                    (3, Some(45)),
                    (4, Some(10)),
                    (5, Some(48))
                ],
                zones
            ),
            Some(48)
        );
        // Nodes without a zone (not voters) do not count.
        assert_eq!(zone_safe_index([(1, Some(90)), (9, Some(90))], zones), None);
    }
}
