//! Smooth weighted round-robin (nginx's algorithm): each node in proportion to its weight,
//! interleaved rather than in bursts (weights 5,1,1 give a a b a c a a, not a a a a a b c).
//!
//! The sequence depends only on the weights, so it is computed once per node set and a pick is
//! a counter increment plus an index.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use super::{rotation, BackendSelection, PickContext};
use crate::backend::NodeState;

/// Longest precomputed sequence; larger weight sums are scaled down proportionally.
const MAX_SEQUENCE: u64 = 10_000;

/// Weighted round-robin over a precomputed smooth sequence.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// One full period of the smooth weighted sequence (node indices).
    sequence: Vec<usize>,
    /// Picks so far (per worker instance, uncontended).
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// The sequence for `nodes`' weights.
    pub fn new(nodes: &[Arc<NodeState>]) -> Self {
        let weights: Vec<u64> = nodes
            .iter()
            .map(|n| u64::from(n.backend.weight.max(1)))
            .collect();
        Self {
            sequence: smooth_sequence(&weights),
            next: AtomicUsize::new(0),
        }
    }
}

/// One period of smooth weighted round-robin: every round each node gains its weight, the
/// richest is picked and pays the total.
fn smooth_sequence(weights: &[u64]) -> Vec<usize> {
    let total: u64 = weights.iter().sum();
    let weights: Vec<i64> = if total > MAX_SEQUENCE {
        weights
            .iter()
            .map(|w| ((w * MAX_SEQUENCE) / total).max(1) as i64)
            .collect()
    } else {
        weights.iter().map(|w| *w as i64).collect()
    };
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("at least one node");
        current[best] -= total;
        sequence.push(best);
    }
    sequence
}

impl BackendSelection for WeightedRoundRobin {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        let n = ctx.nodes.len();
        if n == 0 || self.sequence.is_empty() {
            return;
        }
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        let first = self.sequence[tick % self.sequence.len()];
        out.push(first);
        rotation(first + 1, n, &[first], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{first_picks, nodes};

    #[test]
    fn weighted_follows_weights_exactly_over_a_period() {
        let nodes = nodes(&[5, 1, 1]);
        assert_eq!(
            first_picks(&WeightedRoundRobin::new(&nodes), &nodes, 700),
            [500, 100, 100]
        );
    }

    #[test]
    fn weighted_sequence_is_smooth() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let scaled = smooth_sequence(&[1_000_000, 1_000_000]);
        assert_eq!(scaled.len() as u64, MAX_SEQUENCE);
    }
}
