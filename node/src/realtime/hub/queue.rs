//! A connection's sending side: the bounded queue its writer drains and the control block the
//! hub and the connection's tasks share (force close, liveness).

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, OnceLock,
};

use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::realtime::RealtimeMetrics;

/// What the writer of a connection sends.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (an event's is shared by every connection it goes to, without copies).
    Text(Utf8Bytes),
    /// A ping.
    Ping,
    /// A close frame; the connection ends after it.
    Close(u16, &'static str),
}

/// Shared between a connection's tasks and the hub: how to stop it and when it was last heard.
#[derive(Debug, Default)]
pub struct Control {
    /// Set once by [`Control::force_close`]: the connection is closing, with this frame.
    close_frame: OnceLock<(u16, &'static str)>,
    notify: Notify,
    /// When the client was last heard from (the hub's clock, ms).
    pub(super) last_seen_ms: AtomicU64,
    /// A ping went out since the client was last heard from.
    pub(super) ping_sent: AtomicBool,
}

impl Control {
    /// Stops the connection at once (whatever is queued is dropped) with a close frame
    /// `code`/`reason` if the socket still takes one. The first reason wins.
    pub fn force_close(&self, code: u16, reason: &'static str) {
        let _ = self.close_frame.set((code, reason));
        self.notify.notify_waiters();
    }

    /// The close frame to send after [`Control::force_close`].
    pub fn close_frame(&self) -> Option<(u16, &'static str)> {
        self.close_frame.get().copied()
    }

    /// Whether the connection is being force-closed.
    pub fn is_closing(&self) -> bool {
        self.close_frame.get().is_some()
    }

    /// Resolves once the connection is being force-closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Records that the client was heard from now.
    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.ping_sent.store(false, Ordering::Relaxed);
    }
}

/// The sending side of a connection, as the hub and the request handlers use it.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The bounded queue the writer drains.
    pub queue: mpsc::Sender<Outbound>,
    /// Stop signal and liveness.
    pub control: Arc<Control>,
}

impl Outbox {
    /// Queues `frame` without waiting; a full queue means a slow consumer, which is closed.
    /// Returns whether the frame was queued.
    pub fn push(&self, frame: Outbound, metrics: &RealtimeMetrics) -> bool {
        match self.queue.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.control.is_closing() {
                    metrics.slow_consumers.inc();
                }
                self.control.force_close(1013, "slow consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues `frame`, waiting for room (replays); gives up when the connection is closing.
    pub async fn send(&self, frame: Outbound) -> bool {
        tokio::select! {
            sent = self.queue.send(frame) => sent.is_ok(),
            () = self.control.closed() => false,
        }
    }

    /// Queues a close frame after what is queued, or closes at once if the queue is full.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.queue.try_send(Outbound::Close(code, reason)).is_err() {
            self.control.force_close(code, reason);
        }
    }
}
