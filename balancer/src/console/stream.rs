//! `GET /admin/stream`: the console's server-sent events (`text/event-stream`).
//!
//! A console first gets `hello` (a [`Snapshot`](super::snapshot::Snapshot) with every node's
//! history and the recent events), then `snapshot` once a second (the same without history
//! and events) and `membership` (a [`ConsoleEvent`](super::ConsoleEvent)) whenever a node
//! joins, drains, leaves or changes health. The stream ends when the balancer shuts down;
//! browsers reconnect by themselves and get a fresh `hello`.
//!
//! The snapshots are taken once for every console by one sampler task on the control-plane
//! runtime, started with the first console and stopped at its first tick without one.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Response;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, StreamBody};
use hyper::body::Frame;
use prometheus::IntGauge;
use tokio::{
    sync::{broadcast, watch},
    time::MissedTickBehavior,
};

use super::{frame, lock, snapshot::Sampler};
use crate::state::BalancerState;

/// Time between two snapshots.
pub const TICK: Duration = Duration::from_secs(1);

/// One connected console: what its response body reads.
struct Watcher {
    /// The `hello` frame, until sent.
    first: Option<Bytes>,
    /// Snapshots and events for every console.
    frames: broadcast::Receiver<Bytes>,
    /// Ends the stream when the balancer stops.
    shutdown: watch::Receiver<bool>,
    /// Counts the console while its body exists (hyper drops it when the client goes).
    _counted: Counted,
}

/// One count in `petmesh_balancer_console_clients`, given back on drop.
struct Counted(IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The event-stream response for a new console; starts the sampler if it is the first.
/// Must be called on the control-plane runtime (the sampler task is spawned on it).
pub fn open(
    state: &Arc<BalancerState>,
    shutdown: watch::Receiver<bool>,
) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    let console = &state.console;
    let (first, frames) = {
        let mut sampler = lock(&console.sampler);
        let start = sampler.is_none();
        let sampler = sampler.get_or_insert_with(|| Sampler::new(state));
        // Subscribed and the events copied under the events lock: an event recorded
        // meanwhile is in exactly one of the two (see `Console::record`).
        let (events, frames) = {
            let recent = lock(&console.recent);
            (recent.iter().cloned().collect(), console.frames.subscribe())
        };
        // Under the sampler lock: no snapshot can be sent between `first` and `frames`.
        let first = frame("hello", &sampler.first(state, events));
        if start {
            tokio::spawn(run_sampler(state.clone()));
        }
        (first, frames)
    };
    state.metrics.console_clients.inc();
    let watcher = Watcher {
        first: Some(first),
        frames,
        shutdown,
        _counted: Counted(state.metrics.console_clients.clone()),
    };
    let body = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let bytes = next_frame(&mut watcher).await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), watcher))
    });
    super::uncached(StreamBody::new(body).boxed_unsync(), "text/event-stream")
}

/// The next frame for `watcher`; `None` ends the stream.
async fn next_frame(watcher: &mut Watcher) -> Option<Bytes> {
    if let Some(first) = watcher.first.take() {
        return Some(first);
    }
    loop {
        tokio::select! {
            received = watcher.frames.recv() => match received {
                Ok(bytes) => return Some(bytes),
                // A console too slow to read: the next snapshot is whole anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = crate::state::stopped(&mut watcher.shutdown) => return None,
        }
    }
}

/// Samples once per [`TICK`] and sends the snapshot to every console, until a tick finds none
/// connected; then drops the sampler (and its history) and returns.
///
/// 1. Wait for the tick.
/// 2. Under the sampler lock, which [`open`] also takes: without receivers, clear the slot and
///    stop, so the next console starts a new task; a console connecting after that sees the
///    empty slot, one connecting before it is a receiver.
/// 3. Otherwise take the snapshot and send it.
async fn run_sampler(state: Arc<BalancerState>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let console = &state.console;
        let mut slot = lock(&console.sampler);
        let Some(sampler) = slot.as_mut() else { return };
        if console.frames.receiver_count() == 0 {
            *slot = None;
            tracing::debug!("no console connected: sampler stopped");
            return;
        }
        let snapshot = sampler.tick(&state);
        let _ = console.frames.send(frame("snapshot", &snapshot));
    }
}
