//! One WebSocket connection: a reader (requests, in order, on the upgrade's task) and a writer
//! (its own task, draining the bounded send queue in batches).
//!
//! The reader never writes to the socket: responses and events both go through the queue, so
//! a client that stops reading only ever fills its own queue, and the hub closes it (1013)
//! without anyone waiting on it. The writer stops at once when the connection is force-closed,
//! even mid-write to a socket that no longer drains.
//!
//! Close codes: 1000 normal, 1001 idle timeout, 1009 frame too large, 1012 node restarting
//! (reconnect elsewhere), 1013 slow consumer, 4401 not authenticated in time, token expired or
//! session revoked.

use std::{sync::Arc, time::Duration};

use futures_util::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use poem::Upgraded;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::{
    tungstenite::{
        self,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

use super::{
    hub::{ConnId, Control, Outbound, Outbox, Session},
    protocol::{self, ErrorCode, WsError},
};
use crate::{
    ratelimit::{Class, Subject},
    state::AppState,
};

/// The socket of an accepted connection.
pub type Socket = WebSocketStream<Upgraded>;

/// Frames the writer sends in one batch before flushing.
const WRITE_BATCH: usize = 64;

/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection's state as its reader sees it.
pub struct Conn {
    /// Node state (services, hub, settings).
    pub state: AppState,
    /// The connection's number in the hub.
    pub id: ConnId,
    /// `<node id>/<conn id>`, stamped on events this connection causes.
    pub origin: Arc<str>,
    /// Where responses go.
    pub outbox: Outbox,
    /// Who is connected, once authenticated.
    pub session: Option<Session>,
    /// Rooms joined, in join order.
    pub rooms: Vec<String>,
    /// Request rate limit.
    bucket: TokenBucket,
}

/// Serves a connection from its upgrade until it ends.
///
/// The task running this lives as long as the connection, so its future is kept small: the
/// connection's state is boxed, and so are the large futures it awaits only now and then
/// (request handling, publishing on the way out). An idle connection costs its `Conn`, this
/// task, the writer task, the socket's buffers and its queue (README, "Benchmarks").
pub async fn serve(upgrade: poem::OnUpgrade, accepted: Box<Accepted>) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let socket = WebSocketStream::from_raw_socket(
        upgraded,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(accepted.config),
    )
    .await;
    let (stream, mut conn, writer) = Conn::open(accepted, socket);
    let reason = conn.read(stream).await;
    Box::pin(conn.finish(reason, writer)).await;
}

/// What the handshake decided, boxed so the connection's task stays small while it waits for
/// the upgrade.
pub struct Accepted {
    /// Node state.
    pub state: AppState,
    /// Buffer sizes and frame limits of the socket.
    pub config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    /// The session, when the handshake carried a valid token.
    pub session: Option<Session>,
}

impl Conn {
    /// Registers the connection in the hub and starts its writer.
    fn open(
        accepted: Box<Accepted>,
        socket: Socket,
    ) -> (SplitStream<Socket>, Box<Conn>, tokio::task::JoinHandle<()>) {
        let Accepted { state, session, .. } = *accepted;
        let hub = state.hub.clone();
        let settings = hub.settings();
        let (queue, queued) = mpsc::channel(settings.send_queue);
        let control = Arc::new(Control::default());
        let outbox = Outbox {
            queue,
            control: control.clone(),
        };
        let (id, origin) = hub.register(outbox.clone(), session.clone());
        let (sink, stream) = socket.split();
        let writer = tokio::spawn(write(sink, queued, control));
        let bucket = TokenBucket::new(settings.rate_per_minute, settings.rate_burst, hub.now_ms());
        let conn = Box::new(Conn {
            state,
            id,
            origin,
            outbox,
            session,
            rooms: Vec::new(),
            bucket,
        });
        (stream, conn, writer)
    }

    /// Leaves the rooms, unregisters, and lets the writer send the close frame and finish.
    async fn finish(
        mut self: Box<Self>,
        reason: &'static str,
        writer: tokio::task::JoinHandle<()>,
    ) {
        self.leave_all_rooms().await;
        self.state.hub.unregister(self.id, reason);
        self.outbox.close(1000, "bye");
        drop(self);
        let _ = writer.await;
    }
}

impl Conn {
    /// Reads and answers requests until the connection ends; returns why it ended.
    async fn read(&mut self, mut stream: SplitStream<Socket>) -> &'static str {
        let control = self.outbox.control.clone();
        loop {
            let message = tokio::select! {
                biased;
                () = control.closed() => return close_reason(control.close_frame()),
                message = stream.next() => message,
            };
            let message = match message {
                None => return CLIENT_GONE,
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    control.force_close(1009, "frame too large");
                    return "frame_too_large";
                }
                Some(Err(err)) if peer_is_gone(&err) => return CLIENT_GONE,
                Some(Err(_)) => return CLIENT_ERROR,
                Some(Ok(message)) => message,
            };
            control.touch(self.state.hub.now_ms());
            match message {
                Message::Text(text) => self.on_text(&text).await,
                Message::Binary(_) => self.respond_error(
                    &Value::Null,
                    "",
                    &WsError::invalid("binary frames are not supported; send JSON text frames"),
                ),
                Message::Close(_) => return CLIENT_CLOSED,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Handles one text frame: rate limit, parse, dispatch with a deadline, respond.
    async fn on_text(&mut self, text: &str) {
        if !self.bucket.take(self.state.hub.now_ms()) {
            self.count_in("rate_limited");
            let id = protocol::parse_request(text).map_or(Value::Null, |r| r.id);
            self.respond_error(
                &id,
                "",
                &WsError::new(
                    ErrorCode::RateLimited,
                    "too many requests on this connection; slow down",
                ),
            );
            return;
        }
        let request = match protocol::parse_request(text) {
            Ok(request) => request,
            Err((id, err)) => {
                self.count_in("invalid");
                self.respond_error(&id, "", &err);
                return;
            }
        };
        // An authenticated connection's requests spend its user's budget, as REST requests do.
        if let Some(session) = &self.session {
            let limiter = &self.state.rate_limiter;
            if limiter.enabled() {
                let user = Subject::User(session.claims.sub);
                // The address only matters for login budgets, which WebSocket actions never spend.
                let anywhere = std::net::IpAddr::from([0, 0, 0, 0]);
                let decision = limiter.check(user, Class::General, anywhere).await;
                if !decision.allowed {
                    self.count_in("rate_limited");
                    let wait = decision.retry_after.as_millis().div_ceil(1000).max(1);
                    self.respond_error(
                        &request.id,
                        &request.action,
                        &WsError::new(
                            ErrorCode::RateLimited,
                            format!(
                                "rate limit of {} requests per hour reached; retry in {wait} s",
                                decision.limit
                            ),
                        ),
                    );
                    return;
                }
            }
        }
        self.count_in(super::actions::metric_label(&request.action));
        let deadline = Duration::from_millis(self.state.hub.settings().request_timeout_ms);
        // Boxed: the request futures (database calls) are large, and inlined they would make
        // every idle connection's task as large as the largest of them.
        let handling = Box::pin(self.handle(&request));
        let result = match tokio::time::timeout(deadline, handling).await {
            Ok(result) => result,
            Err(_) => Err(WsError::new(
                ErrorCode::Timeout,
                format!(
                    "{} took longer than {} ms",
                    request.action,
                    deadline.as_millis()
                ),
            )),
        };
        match result {
            Ok(payload) => self.respond(protocol::success(&request.id, &request.action, payload)),
            Err(err) => self.respond_error(&request.id, &request.action, &err),
        }
    }

    /// Counts one incoming request under `label` (`petmesh_node_ws_messages_in_total`).
    fn count_in(&self, label: &str) {
        let metrics = self.state.hub.metrics();
        metrics.messages_in.with_label_values(&[label]).inc();
    }

    /// Queues a response frame.
    pub fn respond(&self, frame: String) {
        let metrics = self.state.hub.metrics();
        if self.outbox.push(Outbound::Text(frame.into()), metrics) {
            metrics.messages_out.with_label_values(&["response"]).inc();
        }
    }

    /// Queues an error response.
    pub fn respond_error(&self, id: &Value, action: &str, err: &WsError) {
        self.respond(protocol::failure(id, action, err));
    }
}

/// The close reason of a connection whose client went away without a close handshake (its
/// stream ended or was reset). Nothing more is written to it: tungstenite refuses to write
/// once the stream has ended, so the writer's close frame goes nowhere.
const CLIENT_GONE: &str = "client_gone";

/// The close reason of a connection whose client sent a close frame.
const CLIENT_CLOSED: &str = "client_closed";

/// The close reason of a connection whose client broke the protocol.
const CLIENT_ERROR: &str = "error";

/// Whether a read error means the client is gone rather than that it broke the protocol: a
/// reconnect storm or a network cut ends thousands of connections this way, and counting
/// them as errors would hide real protocol errors among them. (A stream that ended after the
/// close handshake is `None`, not an error: tokio-tungstenite maps those errors to `None`.)
fn peer_is_gone(err: &tungstenite::Error) -> bool {
    matches!(
        err,
        tungstenite::Error::Io(_)
            | tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            )
    )
}

/// The metric label of a close; one of [`crate::metrics::realtime::CLOSE_REASONS`].
fn close_reason(frame: Option<(u16, &'static str)>) -> &'static str {
    match frame.map(|(code, _)| code) {
        Some(1001) => "idle_timeout",
        Some(1009) => "frame_too_large",
        Some(1012) => "node_restarting",
        Some(1013) => "slow_consumer",
        Some(4401) => "unauthenticated",
        _ => "closed",
    }
}

/// Drains the queue into the socket until a close frame, a force-close or a write error.
async fn write(
    mut sink: SplitSink<Socket, Message>,
    mut queued: mpsc::Receiver<Outbound>,
    control: Arc<Control>,
) {
    let queued_close = tokio::select! {
        biased;
        () = control.closed() => None,
        close = drain(&mut sink, &mut queued) => close,
    };
    if let Some((code, reason)) = queued_close.or_else(|| control.close_frame()) {
        // Stops the reader too (it may be waiting on a client that sends nothing).
        control.force_close(code, reason);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    control.force_close(1000, "bye");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Writes queued frames in batches (one flush, usually one syscall, per batch). Returns the
/// close frame when one is reached, `None` when the queue or the socket is gone.
async fn drain(
    sink: &mut SplitSink<Socket, Message>,
    queued: &mut mpsc::Receiver<Outbound>,
) -> Option<(u16, &'static str)> {
    while let Some(first) = queued.recv().await {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next {
            let message = match item {
                Outbound::Text(text) => Message::Text(text),
                Outbound::Ping => Message::Ping(Default::default()),
                Outbound::Close(code, reason) => return Some((code, reason)),
            };
            if sink.feed(message).await.is_err() {
                return None;
            }
            written += 1;
            next = if written < WRITE_BATCH {
                queued.try_recv().ok()
            } else {
                None
            };
        }
        if sink.flush().await.is_err() {
            return None;
        }
    }
    None
}

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_ms: f64,
    last_ms: u64,
}

impl TokenBucket {
    fn new(per_minute: u32, burst: u32, now_ms: u64) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_ms: f64::from(per_minute) / 60_000.0,
            last_ms: now_ms,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        // (The epsilon absorbs rounding in the refill sum.)
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_is_a_metric_series_from_start_up() {
        for code in [
            None,
            Some(1000),
            1001.into(),
            1009.into(),
            1012.into(),
            1013.into(),
            4401.into(),
        ] {
            let reason = close_reason(code.map(|code| (code, "")));
            assert!(
                crate::metrics::realtime::CLOSE_REASONS.contains(&reason),
                "{reason}"
            );
        }
        for reason in [CLIENT_GONE, CLIENT_CLOSED, CLIENT_ERROR] {
            assert!(
                crate::metrics::realtime::CLOSE_REASONS.contains(&reason),
                "{reason}"
            );
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(60, 3, 0);
        assert!((0..3).all(|_| bucket.take(0)));
        assert!(!bucket.take(0));
        // 60 per minute: one more token per second.
        assert!(!bucket.take(999));
        assert!(bucket.take(1000));
        assert!(!bucket.take(1000));
        // Never more than the burst, however long the pause.
        let later = 10 * 60_000;
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }
}
