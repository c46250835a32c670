//! Round-robin: each node in turn, the rest behind it in ring order (so a retry goes to the
//! next node).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{rotation, BackendSelection, PickContext};

/// Each node in turn. The counter belongs to one worker's strategy instance, so it is never
/// contended; with several workers each cycles on its own, which is still an even spread.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Picks so far.
    next: AtomicUsize,
}

impl RoundRobin {
    /// A counter starting at the first node.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BackendSelection for RoundRobin {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        let n = ctx.nodes.len();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        rotation(start, n, &[], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{first_picks, nodes};

    #[test]
    fn round_robin_spreads_exactly_evenly() {
        let nodes = nodes(&[1, 1, 1]);
        assert_eq!(
            first_picks(&RoundRobin::new(), &nodes, 300),
            [100, 100, 100]
        );
    }
}
