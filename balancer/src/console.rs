//! The cluster console: one self-contained page on the admin port (`GET /`) that shows the
//! node set live, fed by server-sent events from `GET /admin/stream`.
//!
//! - [`snapshot`]: what a snapshot holds and the [`Sampler`](snapshot::Sampler) that turns the
//!   counters and latency histograms every node has anyway into per-second rates, error ratios
//!   and p99s, with a minute of history.
//! - [`stream`]: the event stream, and the task that samples once a second while it has
//!   listeners.
//! - [`Console`] (here): the list of recent membership and health events, and the channel every
//!   connected console reads.
//!
//! **Nothing runs while nobody looks.** The sampler task is started by the first console that
//! connects and stops at the first tick after the last one has gone, taking its history with
//! it; no timer, ring buffer or snapshot exists in between. What does run regardless is what
//! ran before: the control plane reports membership changes (rare) to [`Console::record`],
//! which keeps the last [`RECENT_EVENTS`] so that a console opened later can show them. Both
//! run on the control-plane runtime, like the rest of the admin API; the workers never see
//! any of it.

pub mod snapshot;
pub mod stream;

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde::Serialize;
use tokio::sync::broadcast;

use self::snapshot::Sampler;

/// The page, embedded so the binary needs no files next to it.
pub const PAGE: &str = include_str!("console/index.html");

/// Events kept for consoles opened later.
pub const RECENT_EVENTS: usize = 200;

/// Frames a slow console may fall behind by before it skips some (snapshots are whole each
/// time, so skipping loses nothing but history points).
const FRAME_BACKLOG: usize = 32;

/// What happened to a node, as the console lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The node entered the set.
    Joined,
    /// The node announced it is shutting down.
    Draining,
    /// The node left the set (announced, or its registry entry expired).
    Left,
    /// The node's health verdict turned bad (probes, or a refused connect).
    Unhealthy,
    /// The node's health verdict turned good again.
    Healthy,
}

/// One membership or health event.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleEvent {
    /// When the balancer saw it, Unix milliseconds.
    pub at_ms: i64,
    /// Node id.
    pub node: String,
    /// What happened.
    pub kind: EventKind,
    /// More about it, e.g. that a node left without draining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
}

/// The console's shared part, held in [`BalancerState`](crate::state::BalancerState).
#[derive(Debug)]
pub struct Console {
    /// The last [`RECENT_EVENTS`] events, oldest first. Written by the control plane on each
    /// change, read when a console connects.
    recent: Mutex<VecDeque<ConsoleEvent>>,
    /// Server-sent-event frames for every connected console; it has receivers only while
    /// someone watches, and nothing is formatted for it otherwise.
    frames: broadcast::Sender<Bytes>,
    /// The sampler while its task runs: created by the first subscriber, dropped by the task
    /// at its first tick without subscribers. The lock also orders a subscriber's first frame
    /// before the snapshots it receives.
    sampler: Mutex<Option<Sampler>>,
}

impl Console {
    /// An empty console: no events, no sampler.
    pub fn new() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            frames: broadcast::channel(FRAME_BACKLOG).0,
            sampler: Mutex::new(None),
        }
    }

    /// Records that `kind` happened to `node` (control plane only): kept for later consoles
    /// and sent to the connected ones.
    pub fn record(&self, node: &str, kind: EventKind, detail: Option<&'static str>) {
        let event = ConsoleEvent {
            at_ms: now_ms(),
            node: node.to_owned(),
            kind,
            detail,
        };
        // Sent under the lock, so a console that connects meanwhile gets it either in its
        // first frame or as a frame of its own, never both or neither (see `stream::open`).
        let mut recent = lock(&self.recent);
        if self.frames.receiver_count() > 0 {
            let _ = self.frames.send(frame("membership", &event));
        }
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    /// The recent events, oldest first.
    pub fn recent(&self) -> Vec<ConsoleEvent> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Whether the sampler is running (a console is connected, or the last one left less than
    /// a tick ago).
    pub fn is_sampling(&self) -> bool {
        lock(&self.sampler).is_some()
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

/// One server-sent event: `event: <name>` and the JSON of `data` on one `data:` line (compact
/// JSON has no newlines).
pub fn frame(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).expect("console views serialise");
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// A 200 with `body` of `content_type` that no cache may keep: the page changes with the
/// binary, the stream with every tick.
pub fn uncached<B>(body: B, content_type: &'static str) -> Response<B> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Locks `mutex`, carrying on after a panic elsewhere (the data stays consistent: every
/// critical section here is a push, a pop or a replacement).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_most_recent_events_are_kept() {
        let console = Console::new();
        for i in 0..RECENT_EVENTS + 5 {
            console.record(&format!("n{i}"), EventKind::Joined, None);
        }
        let recent = console.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        assert_eq!(recent[0].node, "n5");
        assert_eq!(
            recent.last().unwrap().node,
            format!("n{}", RECENT_EVENTS + 4)
        );
    }

    #[test]
    fn a_frame_is_one_named_event_with_one_line_of_json() {
        let event = ConsoleEvent {
            at_ms: 1,
            node: "n1".into(),
            kind: EventKind::Unhealthy,
            detail: None,
        };
        assert_eq!(
            frame("membership", &event),
            "event: membership\ndata: {\"at_ms\":1,\"node\":\"n1\",\"kind\":\"unhealthy\"}\n\n"
        );
    }
}
