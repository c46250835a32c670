//! Random: a uniformly random node first, the others after it in ring order.

use rand::Rng as _;

use super::{rotation, BackendSelection, PickContext};

/// Uniformly random.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl BackendSelection for Random {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        let n = ctx.nodes.len();
        if n == 0 {
            return;
        }
        let start = rand::thread_rng().gen_range(0..n);
        rotation(start, n, &[], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{first_picks, nodes};

    #[test]
    fn random_spreads_roughly_evenly() {
        let nodes = nodes(&[1, 1, 1, 1]);
        for count in first_picks(&Random, &nodes, 8000) {
            assert!((1700..2300).contains(&count), "{count}");
        }
    }
}
