//! Least-connections: the node with the fewest open requests (HTTP) or tunnels (WebSocket)
//! first. It needs live counts, so it reads the nodes' atomics instead of going through a
//! precomputed sequence; ties are broken round-robin so equal nodes share the work.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendSelection, PickContext};

/// Fewest open connections first.
#[derive(Debug, Default)]
pub struct LeastConnections {
    /// Tie-breaking rotation (per worker instance).
    next: AtomicUsize,
}

impl LeastConnections {
    /// A fresh strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BackendSelection for LeastConnections {
    fn candidates(&self, ctx: &PickContext<'_>, out: &mut Vec<usize>) {
        let n = ctx.nodes.len();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let base = out.len();
        out.extend(0..n);
        out[base..].sort_by_key(|&i| (ctx.nodes[i].load(ctx.traffic), (i + n - start) % n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::{HandshakeInFlight, Traffic},
        selection::tests::{first_picks, nodes},
    };

    #[test]
    fn least_connections_prefers_the_emptiest_node() {
        let nodes = nodes(&[1, 1, 1]);
        nodes[0].stats.ws_connections.add(3);
        nodes[1].stats.ws_connections.add(1);
        nodes[2].stats.ws_connections.add(2);
        let mut out = Vec::new();
        LeastConnections::new().candidates(
            &PickContext {
                nodes: &nodes,
                traffic: Traffic::Ws,
                key: None,
            },
            &mut out,
        );
        assert_eq!(out, [1, 2, 0]);
    }

    #[test]
    fn handshakes_waiting_for_an_answer_count_as_connections() {
        let nodes = nodes(&[1, 1]);
        nodes[1].stats.ws_connections.add(1);
        let waiting: Vec<_> = (0..2)
            .map(|_| HandshakeInFlight::start(&nodes[0].stats))
            .collect();
        let context = PickContext {
            nodes: &nodes,
            traffic: Traffic::Ws,
            key: None,
        };
        let mut out = Vec::new();
        LeastConnections::new().candidates(&context, &mut out);
        assert_eq!(
            out,
            [1, 0],
            "two handshakes on 0 weigh more than one tunnel on 1"
        );
        drop(waiting);
        out.clear();
        LeastConnections::new().candidates(&context, &mut out);
        assert_eq!(out, [0, 1], "answered, they count no more");
    }

    #[test]
    fn least_connections_shares_ties_evenly() {
        let nodes = nodes(&[1, 1]);
        assert_eq!(first_picks(&LeastConnections::new(), &nodes, 100), [50, 50]);
    }
}
