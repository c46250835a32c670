//! The node's hub: every open WebSocket connection of this node, what each subscribed to, and
//! the one Redis pub/sub connection that brings the cluster's events in.
//!
//! **Fan-out.** Each event arrives once per node (on its topic log's channel) and is handed to
//! every matching local connection by `try_send` on its bounded queue: the hub never waits for
//! a connection, and a connection whose queue is full is closed as a slow consumer (1013).
//!
//! **Order and gaps.** Offsets of a log are consecutive. The hub remembers the last offset it
//! delivered per log; when a message skips ahead (a pub/sub message was lost, or the Redis
//! connection was re-established) it reads the missing events from the log's history and
//! delivers them first; anything at or before the last offset is a duplicate and dropped.
//!
//! **Joining a topic without losing or repeating an event.** A new subscription starts
//! *inactive* at a known offset (the client's `since`, or the log's current offset): the hub
//! skips it while the connection replays what lies between that offset and the last offset
//! the hub delivered, and the subscription is activated (under the hub's lock) only once it has
//! caught up; from then on it receives exactly the events after its offset.
//!
//! **Redis interest.** The hub subscribes in Redis only to logs that some local connection
//! uses, and unsubscribes from a log a while after its last subscriber left.
//!
//! Where the rest lives: [`feed`] (the Redis subscriber, gap fills, `system:resync`),
//! [`queue`] (a connection's sending side), [`subscriptions`] (joining and leaving topics),
//! [`sweep`] (deadlines and pings).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use petmesh_shared::{
    redis_conn::{RedisTarget, SubscriptionSink},
    registry::RedisKeys,
};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{
    protocol::{self, ErrorCode, WsError},
    topic::Audience,
};
use crate::{
    auth::Claims,
    config::RealtimeSettings,
    events::log::{EventLog, LoggedEvent, Missed, Offset},
    metrics::{realtime::RealtimeMetrics, Metrics},
};

mod feed;
mod queue;
mod subscription_set;
mod subscriptions;
mod sweep;

use subscription_set::SubscriptionSet;

pub use queue::{Control, Outbound, Outbox};

/// A connection's number on this node.
pub type ConnId = u64;

/// An authenticated connection's identity.
#[derive(Debug, Clone)]
pub struct Session {
    /// The access token's claims.
    pub claims: Claims,
}

/// One connection as the hub knows it.
struct Connection {
    outbox: Outbox,
    session: Option<Session>,
    /// `<node id>/<conn id>`: events this connection caused are not sent back to it.
    origin: Arc<str>,
    connected_at_ms: u64,
    /// The logs it has subscriptions in (so that ending it visits only those).
    logs: Vec<String>,
}

/// One connection's interest in one log.
struct Subscription {
    /// The topic as the client named it (events carry it).
    topic: Arc<str>,
    audience: Audience,
    /// Receives events after this offset (any event of another epoch); `None`: every event.
    after: Option<Offset>,
    /// Catching up: skipped by the fan-out until activated.
    active: bool,
}

/// A log some connection of this node is interested in.
#[derive(Default)]
struct LogState {
    subscriptions: SubscriptionSet,
    /// The last offset the hub delivered from this log.
    last: Option<Offset>,
    /// The channel is subscribed in Redis on the current pub/sub connection.
    listening: bool,
    /// When the last subscription left (for the delayed Redis unsubscribe).
    idle_since_ms: Option<u64>,
}

#[derive(Default)]
struct State {
    connections: HashMap<ConnId, Connection>,
    logs: HashMap<String, LogState>,
}

/// How a subscription started: whether a requested recovery worked, and where it stands.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The offset the subscription is at (the last event replayed or the log's current
    /// offset); `None` when the log has no history yet.
    pub offset: Option<Offset>,
    /// With `since`: whether every missed event was replayed, or why not.
    pub recovery: Option<Result<usize, &'static str>>,
}

/// The node's WebSocket hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Serialises Redis subscribe and unsubscribe, so the two never cross.
    interest: tokio::sync::Mutex<Option<SubscriptionSink>>,
    /// Signalled when a pub/sub connection is up (subscriptions wait for it).
    connected: Notify,
    /// Signalled when the last connection unregisters (the drain waits for it).
    emptied: Notify,
    redis: RedisTarget,
    keys: RedisKeys,
    log: EventLog,
    node_id: Arc<str>,
    settings: RealtimeSettings,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    epoch_ms: std::time::Instant,
}

impl Hub {
    /// A hub for this node; [`Hub::run`] connects it to Redis.
    pub fn new(
        redis: RedisTarget,
        keys: RedisKeys,
        log: EventLog,
        node_id: Arc<str>,
        settings: RealtimeSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        for label in super::actions::metric_labels() {
            metrics.realtime.messages_in.with_label_values(&[label]);
        }
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                interest: tokio::sync::Mutex::new(None),
                connected: Notify::new(),
                emptied: Notify::new(),
                redis,
                keys,
                log,
                node_id,
                settings,
                metrics,
                next_id: AtomicU64::new(1),
                epoch_ms: std::time::Instant::now(),
            }),
        }
    }

    /// The settings the hub and its connections follow.
    pub fn settings(&self) -> &RealtimeSettings {
        &self.inner.settings
    }

    /// The real-time metrics.
    pub fn metrics(&self) -> &RealtimeMetrics {
        &self.inner.metrics.realtime
    }

    /// Milliseconds since the hub started (a cheap monotonic clock for deadlines).
    pub fn now_ms(&self) -> u64 {
        self.inner.epoch_ms.elapsed().as_millis() as u64
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("hub state lock")
    }

    /// Adds a connection; returns its id and origin tag.
    pub fn register(&self, outbox: Outbox, session: Option<Session>) -> (ConnId, Arc<str>) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let origin: Arc<str> = format!("{}/{id}", self.inner.node_id).into();
        let now = self.now_ms();
        outbox.control.touch(now);
        self.state().connections.insert(
            id,
            Connection {
                outbox,
                session,
                origin: origin.clone(),
                connected_at_ms: now,
                logs: Vec::new(),
            },
        );
        self.inner.metrics.ws_connections.inc();
        self.metrics().opened.inc();
        (id, origin)
    }

    /// Removes a connection and its subscriptions.
    pub fn unregister(&self, id: ConnId, reason: &str) {
        let mut state = self.state();
        let Some(conn) = state.connections.remove(&id) else {
            return;
        };
        if state.connections.is_empty() {
            self.inner.emptied.notify_waiters();
        }
        let now = self.now_ms();
        for name in &conn.logs {
            if let Some(log) = state.logs.get_mut(name) {
                if log.subscriptions.remove_connection(id) && log.subscriptions.is_empty() {
                    log.idle_since_ms = Some(now);
                }
            }
        }
        drop(state);
        self.inner.metrics.ws_connections.dec();
        self.metrics().closed.with_label_values(&[reason]).inc();
    }

    /// Records that connection `id` authenticated as `session`.
    pub fn authenticate(&self, id: ConnId, session: Session) {
        if let Some(conn) = self.state().connections.get_mut(&id) {
            conn.session = Some(session);
        }
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.state().connections.len()
    }

    /// Sends `event` (not part of any topic) to the connections `matches` selects, then
    /// closes them with `close` if given.
    fn notify_connections(
        &self,
        frame: &str,
        close: Option<(u16, &'static str)>,
        mut matches: impl FnMut(&Connection) -> bool,
    ) -> usize {
        let frame = Utf8Bytes::from(frame);
        let metrics = self.metrics();
        let state = self.state();
        let mut count = 0;
        for conn in state.connections.values().filter(|c| matches(c)) {
            conn.outbox.push(Outbound::Text(frame.clone()), metrics);
            if let Some((code, reason)) = close {
                conn.outbox.close(code, reason);
            }
            count += 1;
        }
        count
    }

    /// Tells every connection to reconnect elsewhere (`system:reconnect`, close 1012): the
    /// node is draining.
    pub fn close_all_for_restart(&self) -> usize {
        let frame = protocol::event(
            "system:reconnect",
            None,
            None,
            &serde_json::json!({"reason": "node is shutting down", "nodeId": &*self.inner.node_id}),
            chrono::Utc::now().timestamp_millis(),
        );
        self.notify_connections(&frame, Some((1012, "node restarting")), |_| true)
    }

    /// Waits until every connection has ended or `grace` has passed; returns those left.
    pub async fn wait_closed(&self, grace: Duration) -> usize {
        let all_closed = async {
            loop {
                let emptied = self.inner.emptied.notified();
                tokio::pin!(emptied);
                emptied.as_mut().enable();
                if self.connection_count() == 0 {
                    return;
                }
                emptied.await;
            }
        };
        let _ = tokio::time::timeout(grace, all_closed).await;
        self.connection_count()
    }
}

/// Who an event is for, read from its envelope once rather than once per subscription checked
/// (the `orders` log has a subscription per connection of every user).
struct Addressee<'a> {
    /// The connection that caused it, which does not get it back.
    origin: Option<&'a str>,
    /// The user it belongs to.
    owner: Option<uuid::Uuid>,
}

impl<'a> Addressee<'a> {
    fn of(envelope: &'a petmesh_shared::event::EventEnvelope) -> Self {
        Self {
            origin: envelope.origin.as_deref(),
            owner: super::topic::owner_of(envelope.owner.as_deref()),
        }
    }

    /// Whether the event reaches a subscription for `audience` on the connection tagged
    /// `origin`.
    fn reaches(&self, audience: Audience, origin: &str) -> bool {
        self.origin != Some(origin) && audience.admits(self.owner)
    }
}

/// The frame of `event` as seen on `topic`.
fn event_frame(topic: &str, event: &LoggedEvent) -> Utf8Bytes {
    protocol::event(
        &event.envelope.event,
        Some(topic),
        Some(&event.offset.to_string()),
        &event.envelope.payload,
        event.envelope.timestamp,
    )
    .into()
}

/// The connection's session, for handlers that require one.
pub fn require_session(session: Option<&Session>) -> Result<&Session, WsError> {
    session.ok_or_else(|| {
        WsError::new(
            ErrorCode::Unauthorized,
            "authenticate first (auth:login with an access token)",
        )
    })
}
