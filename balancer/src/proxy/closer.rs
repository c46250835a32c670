//! Closing the sockets of ended tunnels a few at a time, after the worker's other work.
//!
//! Closing a TCP connection is work for the kernel in the closing thread's time: the FIN, its
//! delivery to the peer (on loopback, the peer's receive path too), the socket's teardown.
//! When thousands of tunnels end at once (a reconnect storm's cut, a network partition), each
//! tunnel's task closing its own sockets would put all of that work ahead of the requests that
//! arrive meanwhile, since the worker runs woken tasks in order: every request in that second
//! would wait for the whole storm's teardown. A tunnel instead hands its sockets to the
//! worker's [`Closer`], which closes at most [`BATCH`] at a time and then yields until the
//! worker has polled for I/O again, so that requests are served between batches. The tunnel's
//! counts and limits are released when it ends, not when its sockets close.

use std::{cell::RefCell, collections::VecDeque};

use hyper::upgrade::Upgraded;
use tokio::sync::Notify;

/// Sockets closed per turn: small enough that a request waits for at most a batch (≈ 0.1 ms
/// of closes on a loaded core), large enough that the closer's own turns stay cheap.
const BATCH: usize = 16;

/// A worker's queue of sockets to close (closed by dropping them).
pub struct Closer<T = Upgraded> {
    ended: RefCell<VecDeque<T>>,
    wake: Notify,
}

impl<T> Default for Closer<T> {
    fn default() -> Self {
        Self {
            ended: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
        }
    }
}

impl<T> Closer<T> {
    /// Queues `sockets` to be closed.
    pub fn close(&self, sockets: impl IntoIterator<Item = T>) {
        self.ended.borrow_mut().extend(sockets);
        // A stored permit if the closer is busy: no wake-up is lost.
        self.wake.notify_one();
    }

    /// Closes queued sockets, [`BATCH`] per turn, for as long as the worker runs.
    pub async fn run(&self) {
        loop {
            let batch: Vec<T> = {
                let mut ended = self.ended.borrow_mut();
                let n = ended.len().min(BATCH);
                ended.drain(..n).collect()
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            drop(batch);
            // Deferred until the worker has polled for I/O: what became ready meanwhile runs
            // before the next batch.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc, time::Duration};

    use super::*;

    /// Counts its drops, as a socket's close.
    struct Socket(Rc<Cell<usize>>);

    impl Drop for Socket {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closes_everything_one_batch_at_a_time_with_other_tasks_between() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let closer = Rc::new(Closer::default());
                let running = closer.clone();
                tokio::task::spawn_local(async move { running.run().await });
                let closed = Rc::new(Cell::new(0));
                let queued = 3 * BATCH + 1;
                closer.close((0..queued).map(|_| Socket(closed.clone())));

                // Another task of the worker, looking between its own turns.
                let mut seen = vec![closed.get()];
                tokio::time::timeout(Duration::from_secs(10), async {
                    while closed.get() < queued {
                        tokio::task::yield_now().await;
                        seen.push(closed.get());
                    }
                })
                .await
                .expect("every socket closed");
                assert!(
                    seen.windows(2).all(|w| w[1] - w[0] <= BATCH),
                    "at most a batch between two turns: {seen:?}"
                );
                assert!(seen.len() > queued / BATCH, "{seen:?}");

                // Queued later, closed too.
                closer.close([Socket(closed.clone())]);
                tokio::time::timeout(Duration::from_secs(10), async {
                    while closed.get() < queued + 1 {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .expect("the later socket closed");
            })
            .await;
    }
}
