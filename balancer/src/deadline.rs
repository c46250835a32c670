//! Coarse deadlines kept per worker thread: the response timeout and hyper's header-read
//! timeout, without a tokio timer per request.
//!
//! Why: a tokio timer costs a clock read, an insertion into the timer wheel and a removal per
//! use, and hyper also boxes a fresh one for every request head. With two per request that was
//! about 5 % of the balancer's user-space instructions (`BENCH_INSTRUCTIONS=1
//! scripts/bench-balancer`). These deadlines are seconds long and need no precision, so each
//! worker keeps them in a slab, and one task per worker ([`run_ticker`]) reads the clock every
//! tick (a tenth of the shortest timeout, at most 100 ms) and wakes whatever expired. Arming
//! and disarming a deadline is a slab insertion and removal, reading the time is a `Cell` read.
//! A deadline fires between its timeout and its timeout plus two ticks.
//!
//! A [`Deadline`] belongs to the thread that armed it: it must be polled and dropped there.
//! That holds because every client connection lives on one worker's `LocalSet`; a debug
//! assertion checks it.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// The longest tick.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Time zero of the millisecond clock (shared by all threads).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], rounded up (a deadline never fires early).
fn millis(at: Instant) -> u64 {
    let since = at.saturating_duration_since(epoch());
    since.as_millis() as u64 + u64::from(!since.subsec_nanos().is_multiple_of(1_000_000))
}

/// One armed deadline.
struct Slot {
    /// When it expires, in milliseconds since [`epoch`].
    at: u64,
    /// The task to wake then.
    waker: Option<Waker>,
    /// Set by the ticker.
    expired: bool,
}

/// This thread's deadlines.
struct Deadlines {
    /// The clock as of the last tick, in milliseconds since [`epoch`].
    now: Cell<u64>,
    /// The ticker's period in milliseconds: how far `now` may lag.
    tick: Cell<u64>,
    /// Armed deadlines; `None` marks a free slot.
    slots: RefCell<Vec<Option<Slot>>>,
    /// Indices of free slots.
    free: RefCell<Vec<usize>>,
}

thread_local! {
    static DEADLINES: Deadlines = const {
        Deadlines {
            now: Cell::new(0),
            tick: Cell::new(0),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
        }
    };
}

/// The tick for timeouts of `shortest`: a tenth of it, between 1 ms and [`MAX_TICK`].
pub fn tick_for(shortest: Duration) -> Duration {
    (shortest / 10).clamp(Duration::from_millis(1), MAX_TICK)
}

/// Keeps this thread's clock and deadlines going; runs for the life of the worker.
pub async fn run_ticker(tick: Duration) {
    DEADLINES.with(|d| d.tick.set(tick.as_millis() as u64));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        expire(millis(Instant::now()));
    }
}

/// Sets the clock to `now` and wakes the deadlines due by then.
fn expire(now: u64) {
    let due: Vec<Waker> = DEADLINES.with(|d| {
        d.now.set(now);
        d.slots
            .borrow_mut()
            .iter_mut()
            .flatten()
            .filter(|slot| !slot.expired && slot.at <= now)
            .filter_map(|slot| {
                slot.expired = true;
                slot.waker.take()
            })
            .collect()
    });
    // Woken outside the borrow: a waker may poll or drop deadlines on this thread.
    due.into_iter().for_each(Waker::wake);
}

/// The current time as of the last tick.
fn now() -> u64 {
    DEADLINES.with(|d| d.now.get())
}

/// A deadline armed on this thread, disarmed on drop.
#[derive(Debug)]
pub struct Deadline {
    slot: usize,
    /// The thread that armed it (checked in debug builds).
    #[cfg(debug_assertions)]
    thread: std::thread::ThreadId,
}

impl Deadline {
    /// A deadline `timeout` from now (as of the last tick).
    pub fn after(timeout: Duration) -> Self {
        Self::at_millis(now() + timeout.as_millis() as u64)
    }

    /// A deadline at `at` (milliseconds since [`epoch`]), measured against a clock that may lag
    /// by a tick: one tick more makes sure it never fires early.
    fn at_millis(at: u64) -> Self {
        let slot = DEADLINES.with(|d| {
            let slot = Some(Slot {
                at: at + d.tick.get(),
                waker: None,
                expired: false,
            });
            let mut slots = d.slots.borrow_mut();
            match d.free.borrow_mut().pop() {
                Some(index) => {
                    slots[index] = slot;
                    index
                }
                None => {
                    slots.push(slot);
                    slots.len() - 1
                }
            }
        });
        Self {
            slot,
            #[cfg(debug_assertions)]
            thread: std::thread::current().id(),
        }
    }

    /// Ready once the deadline has passed; otherwise the task is woken when it does.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        #[cfg(debug_assertions)]
        debug_assert_eq!(self.thread, std::thread::current().id());
        DEADLINES.with(|d| {
            let mut slots = d.slots.borrow_mut();
            let slot = slots[self.slot]
                .as_mut()
                .expect("an armed deadline has a slot");
            if slot.expired {
                return Poll::Ready(());
            }
            match &slot.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Runs `future` until this deadline: `Err(())` when it passes first.
    pub async fn bound<F: Future>(self, future: F) -> Result<F::Output, ()> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            self.poll_expired(cx).map(Err)
        })
        .await
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        debug_assert_eq!(self.thread, std::thread::current().id());
        // Nothing to do when the thread is exiting and its deadlines are gone already.
        let _ = DEADLINES.try_with(|d| {
            d.slots.borrow_mut()[self.slot] = None;
            d.free.borrow_mut().push(self.slot);
        });
    }
}

/// hyper's timer on the worker's deadlines (for `header_read_timeout`).
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerTimer;

/// A hyper sleep on a [`Deadline`].
struct WorkerSleep(Deadline);

impl Future for WorkerSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_expired(cx)
    }
}

impl hyper::rt::Sleep for WorkerSleep {}

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(WorkerSleep(Deadline::after(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(WorkerSleep(Deadline::at_millis(millis(deadline))))
    }

    fn now(&self) -> Instant {
        epoch() + Duration::from_millis(now())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_deadline_expires_at_the_first_tick_past_it_and_wakes_its_task_once() {
        expire(1_000);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let deadline = Deadline::after(Duration::from_millis(250));
        let other = Deadline::after(Duration::from_millis(500));
        assert!(deadline.poll_expired(&mut cx).is_pending());
        expire(1_249);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert!(deadline.poll_expired(&mut cx).is_pending());
        expire(1_250);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(deadline.poll_expired(&mut cx).is_ready());
        expire(1_300);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(other.poll_expired(&mut cx).is_pending());
        drop(deadline);
        let reused = Deadline::after(Duration::from_millis(10));
        assert!(
            reused.poll_expired(&mut cx).is_pending(),
            "a reused slot starts armed"
        );
    }

    #[test]
    fn ticks_are_a_tenth_of_the_shortest_timeout_within_bounds() {
        assert_eq!(
            tick_for(Duration::from_millis(300)),
            Duration::from_millis(30)
        );
        assert_eq!(tick_for(Duration::from_secs(30)), MAX_TICK);
        assert_eq!(tick_for(Duration::ZERO), Duration::from_millis(1));
    }
}
