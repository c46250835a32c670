//! Consistent hashing with bounded load, on crate `consistent_hash`.
//!
//! The ring places `virtual_nodes × weight` points per node, keyed by the node *id*, so a ring
//! built for a changed set differs only by the points of the nodes that joined or left: only
//! their keys move (about 1/N of all keys per node).
//!
//! Bounded load (Mirrokni et al., "Consistent Hashing with Bounded Loads"): a node may carry at
//! most `ceil(factor × (total load + 1) / N)`; a key whose ring node is at that bound goes to
//! the next node along the ring that is below it. With a factor of 1.25 no node exceeds 125 % of
//! the mean, and keys stay put as long as their node is not overloaded.

use std::sync::Arc;

use consistent_hash::{DefaultHash, Node, StaticHashRing};

use super::{BackendSelection, PickContext};
use crate::backend::NodeState;

/// A hash ring over the node set.
pub struct ConsistentHash {
    /// Ring of node ids; each node's value is its index in the set.
    ring: StaticHashRing<'static, String, usize, DefaultHash>,
    /// Node count (the ring dedups ids, the set is already unique).
    len: usize,
    /// Maximum load as a multiple of the mean (≥ 1).
    factor: f64,
}

impl std::fmt::Debug for ConsistentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistentHash")
            .field("nodes", &self.len)
            .field("virtual_nodes", &self.ring.len())
            .field("factor", &self.factor)
            .finish()
    }
}

impl ConsistentHash {
    /// A ring with `virtual_nodes` points per unit of weight.
    pub fn new(nodes: &[Arc<NodeState>], virtual_nodes: usize, factor: f64) -> Self {
        let ring_nodes = nodes.iter().enumerate().map(|(index, node)| {
            Node::new(node.backend.id.clone())
                .value(index)
                .quantity(virtual_nodes * node.backend.weight.max(1) as usize)
        });
        Self {
            ring: StaticHashRing::new(DefaultHash, ring_nodes),
            len: nodes.len(),
            factor,
        }
    }
}

impl BackendSelection for ConsistentHash {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        if self.len == 0 {
            return;
        }
        let key = ctx.key.unwrap_or_default();
        let total: i64 = ctx.nodes.iter().map(|n| n.load(ctx.traffic)).sum();
        let bound = (self.factor * (total + 1) as f64 / self.len as f64).ceil() as i64;
        let base = out.len();
        let mut overloaded = Vec::new();
        for node in self.ring.calc_candidates(&key) {
            if ctx.nodes[node.value].load(ctx.traffic) < bound {
                out.push(node.value);
            } else {
                overloaded.push(node.value);
            }
        }
        out.extend(overloaded);
        debug_assert_eq!(out.len() - base, self.len);
    }

    fn needs_key(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::Traffic, selection::tests::nodes};

    fn first(ring: &ConsistentHash, nodes: &[Arc<NodeState>], key: &str) -> String {
        let mut out = Vec::new();
        ring.candidates(
            &PickContext {
                nodes,
                traffic: Traffic::Http,
                key: Some(key.as_bytes()),
            },
            &mut out,
        );
        assert_eq!(out.len(), nodes.len());
        nodes[out[0]].backend.id.clone()
    }

    #[test]
    fn same_key_maps_to_same_node() {
        let nodes = nodes(&[1, 1, 1]);
        let ring = ConsistentHash::new(&nodes, 160, 1.25);
        for i in 0..100 {
            let key = format!("user-{i}");
            assert_eq!(first(&ring, &nodes, &key), first(&ring, &nodes, &key));
        }
    }

    #[test]
    fn a_joining_node_takes_about_one_nth_of_keys_and_nothing_else_moves() {
        let four = nodes(&[1, 1, 1, 1]);
        let three = &four[..3];
        let before = ConsistentHash::new(three, 160, 1.25);
        let after = ConsistentHash::new(&four, 160, 1.25);
        let keys = 4000;
        let mut moved = 0;
        for i in 0..keys {
            let key = format!("key-{i}");
            let (old, new) = (first(&before, three, &key), first(&after, &four, &key));
            if old != new {
                assert_eq!(new, "n3", "keys only move to the node that joined");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.15..0.35).contains(&share), "moved {share}");
    }

    #[test]
    fn bounded_load_sends_keys_away_from_an_overloaded_node() {
        let nodes = nodes(&[1, 1, 1]);
        let ring = ConsistentHash::new(&nodes, 160, 1.25);
        let key = "sticky";
        let home = first(&ring, &nodes, key);
        let home_node = nodes.iter().find(|n| n.backend.id == home).unwrap();
        // total 6, bound = ceil(1.25 × 7 / 3) = 3: a node with 6 in flight is over it.
        home_node.stats.in_flight.add(6);
        assert_ne!(first(&ring, &nodes, key), home);
        home_node.stats.in_flight.sub(6);
        assert_eq!(first(&ring, &nodes, key), home, "back once the load drops");
    }
}
