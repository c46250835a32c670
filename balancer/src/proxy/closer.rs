//! Closing the sockets of ended tunnels a few at a time, at a bounded pace, after the worker's
//! other work.
//!
//! Closing a TCP connection is work for the kernel in the closing thread's time: the FIN, its
//! delivery to the peer (on loopback, the peer's receive path too), the peer's wake-up, the
//! socket's teardown (≈ 20 µs on the development machine), and the node then closes its end
//! too. When thousands of tunnels end at once (a reconnect storm's cut, a network partition),
//! each tunnel's task closing its own sockets would put all of that work ahead of the requests
//! that arrive meanwhile, since the worker runs woken tasks in order: every request in that
//! second would wait for the whole storm's teardown. A tunnel instead hands its sockets to the
//! worker's [`Closer`], which closes at most [`BATCH`] at a time, after the worker has polled
//! for I/O again (so that requests are served between batches), and at most one batch per
//! [`PACE`] while fewer than [`FULL_SPEED_ABOVE`] wait: a cut of 5 000 tunnels is closed over
//! about a second and a half instead of in one burst that, with the clients' reconnections on
//! top, took both cores of the machine for half a second. The tunnel's counts and limits are
//! released when it ends, not when its sockets close; a client that ended its tunnel is gone
//! already, and a node learns of the end that much later (its connection is idle meanwhile).

use std::{cell::RefCell, collections::VecDeque, time::Duration};

use hyper::upgrade::Upgraded;
use tokio::sync::Notify;

/// Sockets closed per turn: small enough that a request waits for at most a batch (≈ 0.3 ms
/// of closes on a loaded core), large enough that the closer's own turns stay cheap.
const BATCH: usize = 16;

/// The pause after a batch while more sockets wait: at most [`BATCH`] sockets per 5 ms, 3 200
/// a second per worker (≈ 6 % of a core). Tunnels open no faster than the balancer's handshake
/// pacing (`limits.ws_handshakes_per_second`, 1 000 a second for all workers by default, two
/// sockets each), so only a burst of ends makes the queue wait, never a steady churn.
const PACE: Duration = Duration::from_millis(5);

/// Queue length (sockets) beyond which the closer stops pausing, so that a burst larger than
/// any storm the pacing lets in (or a churn faster than the pace) cannot hold open sockets, and
/// their file descriptors, without bound.
const FULL_SPEED_ABOVE: usize = 8192;

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
            let (batch, left): (Vec<T>, usize) = {
                let mut ended = self.ended.borrow_mut();
                let n = ended.len().min(BATCH);
                (ended.drain(..n).collect(), ended.len())
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            drop(batch);
            if left == 0 || left > FULL_SPEED_ABOVE {
                // Deferred until the worker has polled for I/O: what became ready meanwhile
                // runs before the next batch.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(PACE).await;
            }
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

    /// Runs the closer beside `test` on a local set.
    async fn with_closer<F: std::future::Future>(test: impl FnOnce(Rc<Closer<Socket>>) -> F) {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let closer = Rc::new(Closer::default());
                let running = closer.clone();
                tokio::task::spawn_local(async move { running.run().await });
                test(closer).await;
            })
            .await;
    }

    /// Lets the closer take its turns without the (paused) clock moving.
    async fn turns() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_burst_is_closed_a_batch_per_pace() {
        with_closer(|closer| async move {
            let closed = Rc::new(Cell::new(0));
            let started = tokio::time::Instant::now();
            closer.close((0..3 * BATCH).map(|_| Socket(closed.clone())));
            turns().await;
            assert_eq!(closed.get(), BATCH, "the first batch at once");
            // Half a pace in, then one pace after another: a batch each time.
            for n in 1..3u32 {
                tokio::time::sleep_until(started + PACE * n - PACE / 2).await;
                turns().await;
                assert_eq!(closed.get(), n as usize * BATCH, "not before its pace");
                tokio::time::sleep_until(started + PACE * n + PACE / 2).await;
                turns().await;
                assert_eq!(closed.get(), (n as usize + 1) * BATCH, "at its pace");
            }
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_queue_beyond_the_bound_is_closed_without_pauses() {
        with_closer(|closer| async move {
            let closed = Rc::new(Cell::new(0));
            let queued = FULL_SPEED_ABOVE + 2 * BATCH;
            let started = tokio::time::Instant::now();
            closer.close((0..queued).map(|_| Socket(closed.clone())));
            while queued - closed.get() > FULL_SPEED_ABOVE {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "no pause while more than the bound waited"
            );
            // Then at the pace again: a batch per pace at most.
            turns().await;
            let paced_from = closed.get();
            assert!(queued - paced_from <= FULL_SPEED_ABOVE);
            tokio::time::sleep(PACE * 2 + PACE / 2).await;
            turns().await;
            assert!(
                closed.get() - paced_from <= 3 * BATCH,
                "{} closed in two and a half paces",
                closed.get() - paced_from
            );
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closes_everything_one_batch_at_a_time_with_other_tasks_between() {
        with_closer(|closer| async move {
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
