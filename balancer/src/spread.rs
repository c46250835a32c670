//! Keeps client connections evenly spread over the workers.
//!
//! Each worker accepts from its own `SO_REUSEPORT` listener, and the kernel picks the listener
//! by a hash of the connection's addresses. With a few dozen long-lived keep-alive connections
//! that split is often uneven (64 connections over 2 workers end 36/28 or worse about a third
//! of the time), and the clients of the busier worker wait longer. So a worker that accepts a
//! connection while another worker serves fewer hands it over to the least loaded one: once
//! per connection, never per request (like Envoy's "exact balance").

use std::{net::SocketAddr, sync::Arc};

use prometheus::IntGauge;
use tokio::sync::mpsc;

use crate::{metrics::Metrics, state::ConnectionSlot};

/// A client connection on its way from the worker that accepted it to the one that serves it.
pub struct Handoff {
    /// The socket, detached from the accepting worker's reactor.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its place under `limits.max_connections`, taken at accept.
    pub slot: ConnectionSlot,
}

/// One worker's load and inbox.
struct Worker {
    /// Client connections it serves (the `petmesh_balancer_worker_connections` series).
    open: IntGauge,
    inbox: mpsc::UnboundedSender<Handoff>,
}

/// The load of every worker, and the way to hand a connection to each.
pub struct Spread {
    workers: Box<[Worker]>,
}

impl Spread {
    /// The spread over `workers` workers, with each worker's inbox (by index).
    pub fn new(
        workers: usize,
        metrics: &Metrics,
    ) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let workers = senders
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Worker {
                open: metrics
                    .worker_connections
                    .with_label_values(&[&index.to_string()]),
                inbox,
            })
            .collect();
        (Arc::new(Self { workers }), receivers)
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The worker that should serve a connection `worker` has just accepted: itself, unless
    /// another worker serves fewer (then the least loaded), so that connections opened one
    /// after another end up exactly balanced.
    pub fn target(&self, worker: usize) -> usize {
        let load = |i: usize| self.workers[i].open.get();
        let (least, least_load) = (0..self.workers.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, open)| open)
            .unwrap_or((worker, 0));
        if load(worker) > least_load {
            least
        } else {
            worker
        }
    }

    /// Sends `handoff` to worker `to`; gives it back when that worker no longer takes any
    /// (it is shutting down).
    pub fn hand_over(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        self.workers[to].inbox.send(handoff).map_err(|err| err.0)
    }

    /// Counts a connection served by `worker` until the guard drops.
    pub fn serve(self: &Arc<Self>, worker: usize) -> Served {
        self.workers[worker].open.inc();
        Served {
            spread: self.clone(),
            worker,
        }
    }
}

/// Counts one client connection as served by a worker until dropped.
pub struct Served {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.spread.workers[self.worker].open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_least_loaded_worker_unless_its_acceptor_is_one() {
        let (spread, _inboxes) = Spread::new(3, &Metrics::new());
        assert_eq!(spread.target(0), 0, "all equal");
        let first = spread.serve(0);
        assert_eq!(spread.target(0), 1, "to the least loaded");
        assert_eq!(spread.target(2), 2, "already among the least loaded");
        let second = spread.serve(1);
        assert_eq!(spread.target(1), 2);
        drop((first, second));
        assert_eq!(spread.target(0), 0, "counts end with the connections");
    }
}
