//! Power of two choices: two distinct random nodes, the less loaded first. Nearly as good as
//! least-connections at spreading load, without every worker herding onto the same emptiest
//! node between two updates of the counts.

use rand::Rng as _;

use super::{rotation, BackendSelection, PickContext};

/// The less loaded of two random picks first, then the other, then the rest.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerOfTwo;

impl BackendSelection for PowerOfTwo {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        let n = ctx.nodes.len();
        if n < 2 {
            out.extend(0..n);
            return;
        }
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let (first, second) = if ctx.nodes[b].load(ctx.traffic) < ctx.nodes[a].load(ctx.traffic) {
            (b, a)
        } else {
            (a, b)
        };
        out.push(first);
        out.push(second);
        rotation(b, n, &[first, second], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{first_picks, nodes};

    #[test]
    fn power_of_two_never_prefers_the_busiest_of_three() {
        let nodes = nodes(&[1, 1, 1]);
        nodes[2].stats.in_flight.add(10);
        let counts = first_picks(&PowerOfTwo, &nodes, 3000);
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    }
}
