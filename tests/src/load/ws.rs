//! WebSocket load: subscribers of one topic that count the events they receive, notice the
//! ones they lost (gaps in the topic's consecutive offsets), and reconnect when their
//! connection ends, resuming from the last offset they saw (`since`), as real clients do.
//!
//! Offsets are `<epoch>:<seq>`, consecutive within an epoch. A subscriber's loss is every
//! sequence number it skipped, plus at the end (see [`WsLoad::finish`]) how far it is behind
//! the topic's last offset. Events a resumed subscription replays before its response count
//! like live ones: a reconnect that loses nothing shows no gap.
//!
//! Each event's delivery latency is measured too: from its `timestamp` (when the node wrote
//! the change, ms since the epoch, in the same transaction as the change) to when the
//! subscriber parsed it, on the same machine's clock; [`WsLoad::take_delivery`] hands out the
//! percentiles of a window of the run.
//!
//! The balancer limits WebSockets per client address, so on a loopback target each group of
//! [`PER_SOURCE`] subscribers connects from its own address in 127.0.100.0/24.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::stats::{histogram, LatencyReport, MAX_LATENCY_US};

pub use offset::Offset;

mod offset;

/// Subscribers per source address on a loopback target (the balancer's default limit is 10).
const PER_SOURCE: usize = 8;

/// Bound on connecting and on the subscription's answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before connecting again after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// The WebSocket figures of a run.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WsReport {
    /// The topic subscribed to.
    pub topic: String,
    /// Subscribers.
    pub subscribers: usize,
    /// Events received (replays after a reconnect included).
    pub events: u64,
    /// Events skipped in the offsets (gaps), plus how far subscribers were behind the last
    /// offset at the end.
    pub lost: u64,
    /// Of `lost`, the part that was still missing at the end.
    pub behind_at_end: u64,
    /// Events received twice.
    pub duplicates: u64,
    /// Connections that ended and were opened again.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Resumptions the node could not serve (`recovered: false`) and `system:resync` events:
    /// events may be missing without a gap showing.
    pub resyncs: u64,
    /// Subscriptions refused with an error response.
    pub subscribe_errors: u64,
    /// Subscribers whose connection was open at the end.
    pub connected_at_end: usize,
    /// The offset the subscribers were checked against at the end.
    pub final_offset: Option<String>,
}

/// What one subscriber knows, shared with the run.
#[derive(Clone, Debug, Default)]
struct SubState {
    last: Option<Offset>,
    connected: bool,
}

#[derive(Debug)]
struct Shared {
    subs: Vec<SubState>,
    totals: WsReport,
    /// Delivery latency (µs) of the events received since the last
    /// [`WsLoad::take_delivery`], over that window and by second since then, and when that
    /// was. The seconds keep two significant digits ([`second_histogram`]): a run that never
    /// takes its deliveries grows by one of them a second.
    delivery: Histogram<u64>,
    delivery_seconds: Vec<Histogram<u64>>,
    delivery_since: Instant,
}

/// An empty histogram for one second's delivery latency (µs): two significant digits, ≈ 25 KB,
/// where the three of [`histogram`] take ≈ 170 KB; enough for a second's p99 and maximum,
/// which say where a window's tail came from.
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

/// The deliveries of one second of a window ([`WsLoad::take_delivery`]).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySecond {
    /// Seconds since the window began.
    pub second: u64,
    /// Events received in this second.
    pub events: u64,
    /// Their delivery latency's 99th percentile, in milliseconds (two significant digits).
    pub p99_ms: f64,
    /// Their longest delivery latency, in milliseconds (two significant digits): where a
    /// window's tail came from.
    pub max_ms: f64,
}

/// The delivery latency of a window: its percentiles and its seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// Percentiles over the window.
    pub latency: LatencyReport,
    /// Each second of the window.
    pub timeline: Vec<DeliverySecond>,
    /// The window's histogram (µs), so that windows can be pooled ([`LatencyReport::of`]
    /// their sum); not in the JSON.
    #[serde(skip)]
    pub histogram_us: Histogram<u64>,
    /// Each second's histogram (µs, two significant digits), so that a window's seconds can
    /// be grouped (the cut seconds of `slow-consumers`); not in the JSON.
    #[serde(skip)]
    pub seconds_us: Vec<Histogram<u64>>,
}

/// Running subscribers.
pub struct WsLoad {
    /// State of every subscriber and the counters.
    shared: Arc<Mutex<Shared>>,
    /// Bumped after every event, so [`WsLoad::finish`] can wait for subscribers to catch up.
    progress: watch::Receiver<u64>,
    /// Tells the subscribers to stop.
    stop: watch::Sender<bool>,
    /// The subscriber tasks.
    tasks: Vec<JoinHandle<()>>,
}

/// How to run the subscribers.
#[derive(Clone, Debug)]
pub struct WsOptions {
    /// `http://host:port` of the target.
    pub base_url: String,
    /// The topic (`pets`, `room:<id>` needs membership and is not supported here).
    pub topic: String,
    /// Access tokens, used in turn.
    pub tokens: Vec<String>,
    /// Subscribers.
    pub subscribers: usize,
}

impl WsLoad {
    /// Starts the subscribers and waits until each has subscribed once (or failed to).
    pub async fn start(options: WsOptions) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&options.base_url).context("parsing the target URL")?;
        let addr = *url
            .socket_addrs(|| Some(80))
            .context("resolving the target")?
            .first()
            .context("the target has no address")?;
        let loopback = addr.ip().is_loopback();
        let ws_url = format!("{}/ws", options.base_url.replacen("http", "ws", 1));
        let shared = Arc::new(Mutex::new(Shared {
            subs: vec![SubState::default(); options.subscribers],
            totals: WsReport {
                topic: options.topic.clone(),
                subscribers: options.subscribers,
                ..WsReport::default()
            },
            delivery: histogram(),
            delivery_seconds: Vec::new(),
            delivery_since: Instant::now(),
        }));
        let (progress_tx, progress) = watch::channel(0u64);
        let progress_tx = Arc::new(progress_tx);
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<()>(options.subscribers.max(1));
        let mut tasks = Vec::with_capacity(options.subscribers);
        for index in 0..options.subscribers {
            let source = loopback.then(|| {
                let group = (index / PER_SOURCE) % 250;
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    100,
                    u8::try_from(group + 1).unwrap_or(1),
                ))
            });
            let subscriber = Subscriber {
                index,
                addr,
                source,
                url: ws_url.clone(),
                token: options.tokens[index % options.tokens.len()].clone(),
                topic: options.topic.clone(),
                shared: Arc::clone(&shared),
                progress: Arc::clone(&progress_tx),
                stopped: stopped.clone(),
                ready: Some(ready_tx.clone()),
            };
            tasks.push(tokio::spawn(subscriber.run()));
        }
        drop(ready_tx);
        for _ in 0..options.subscribers {
            if ready.recv().await.is_none() {
                break;
            }
        }
        Ok(Self {
            shared,
            progress,
            stop,
            tasks,
        })
    }

    /// Counters so far: events received, lost, reconnects, and subscribers connected.
    pub fn snapshot(&self) -> (u64, u64, u64, usize) {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let connected = shared.subs.iter().filter(|s| s.connected).count();
        let t = &shared.totals;
        (t.events, t.lost, t.reconnects, connected)
    }

    /// The delivery latency of the events received since the last call (or the start), and
    /// a fresh window from now on.
    pub fn take_delivery(&self) -> Delivery {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.delivery_since = Instant::now();
        let seconds = std::mem::take(&mut shared.delivery_seconds);
        let window = std::mem::replace(&mut shared.delivery, histogram());
        Delivery {
            latency: LatencyReport::of(&window),
            histogram_us: window,
            timeline: seconds
                .iter()
                .zip(0..)
                .map(|(latency, second)| DeliverySecond {
                    second,
                    events: latency.len(),
                    p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
                    max_ms: latency.max() as f64 / 1000.0,
                })
                .collect(),
            seconds_us: seconds,
        }
    }

    /// Waits up to `settle` for every subscriber to reach `last` (the topic's last offset;
    /// `None`: the highest offset any subscriber saw), counts how far each is still behind
    /// as lost, stops them and returns the figures.
    pub async fn finish(mut self, last: Option<Offset>, settle: Duration) -> WsReport {
        let target = last.or_else(|| {
            let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            highest(&shared.subs)
        });
        let deadline = tokio::time::Instant::now() + settle;
        if let Some(target) = &target {
            loop {
                let caught_up = {
                    let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                    shared.subs.iter().all(|s| behind(s, target) == 0)
                };
                if caught_up {
                    break;
                }
                match tokio::time::timeout_at(deadline, self.progress.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        let connected_at_end = {
            let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.subs.iter().filter(|s| s.connected).count()
        };
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let behind_at_end: u64 = match &target {
            Some(target) => shared.subs.iter().map(|s| behind(s, target)).sum(),
            None => 0,
        };
        shared.totals.behind_at_end = behind_at_end;
        shared.totals.connected_at_end = connected_at_end;
        shared.totals.lost += behind_at_end;
        shared.totals.final_offset = target.map(|t| t.to_string());
        shared.totals.clone()
    }
}

/// The highest offset any subscriber has seen (in the epoch most of them are in).
fn highest(subs: &[SubState]) -> Option<Offset> {
    subs.iter()
        .filter_map(|s| s.last.clone())
        .max_by_key(|o| o.seq)
}

/// How many events of `target`'s epoch up to it `sub` has not seen.
fn behind(sub: &SubState, target: &Offset) -> u64 {
    match &sub.last {
        Some(last) if last.epoch == target.epoch => target.seq.saturating_sub(last.seq),
        _ => target.seq,
    }
}

/// One subscriber's task.
struct Subscriber {
    index: usize,
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: String,
    token: String,
    topic: String,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<watch::Sender<u64>>,
    stopped: watch::Receiver<bool>,
    /// Dropped once the first subscription has been answered (or failed).
    ready: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Subscriber {
    /// Connects, subscribes and reads events until told to stop, reconnecting whenever the
    /// connection ends.
    async fn run(mut self) {
        let mut first = true;
        while !self.is_stopped() {
            if !first {
                self.count(|t| t.reconnects += 1);
            }
            first = false;
            let session = self.session().await;
            self.set_connected(false);
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(()).await;
            }
            if let Err(e) = session {
                if self.is_stopped() {
                    break;
                }
                report_connection_problem(self.index, &e);
                let mut stopped = self.stopped.clone();
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
        }
    }

    /// One connection: returns when it ends (an error) or the run stops (`Ok`).
    async fn session(&mut self) -> anyhow::Result<()> {
        let mut socket = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => {
                self.count(|t| t.connect_failures += 1);
                return Err(e);
            }
            Err(_) => {
                self.count(|t| t.connect_failures += 1);
                anyhow::bail!("connecting timed out");
            }
        };
        let since = self
            .state()
            .last
            .map(|o| json!({ self.topic.clone(): o.to_string() }));
        let mut payload = json!({ "topics": [self.topic] });
        if let Some(since) = since {
            payload["since"] = since;
        }
        let frame =
            json!({"type": "request", "id": "sub", "action": "subscribe", "payload": payload});
        socket.send(Message::text(frame.to_string())).await?;
        self.set_connected(true);
        let mut stopped = self.stopped.clone();
        loop {
            let message = tokio::select! {
                message = socket.next() => Some(message),
                _ = stopped.wait_for(|s| *s) => None,
            };
            let Some(message) = message else {
                let _ = socket.close(None).await;
                return Ok(());
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    self.on_frame(&frame);
                    if frame["type"] == "response" && frame["id"] == "sub" {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(()).await;
                        }
                        if frame["status"] != "success" {
                            self.count(|t| t.subscribe_errors += 1);
                            anyhow::bail!("subscription refused: {frame}");
                        }
                    }
                }
                Some(Ok(Message::Close(close))) => anyhow::bail!("closed by the server: {close:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection ended"),
            }
        }
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(self.addr).await?;
        let mut request = self.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", self.token))?,
        );
        let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(socket)
    }

    /// Applies one frame: an event of the topic advances the offset (counting gaps and
    /// duplicates), `system:resync` and `recovered: false` are counted, and the
    /// subscription's answer gives the starting offset of a first subscription.
    fn on_frame(&self, frame: &Value) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Shared {
            subs,
            totals,
            delivery,
            delivery_seconds,
            delivery_since,
        } = &mut *shared;
        let sub = &mut subs[self.index];
        if frame["type"] == "response" && frame["id"] == "sub" {
            let topic = &frame["payload"]["topics"][&self.topic];
            if topic["recovered"] == false {
                totals.resyncs += 1;
                sub.last = None;
            }
            if sub.last.is_none() {
                sub.last = topic["offset"].as_str().and_then(Offset::parse);
            }
            return;
        }
        if frame["type"] != "event" {
            return;
        }
        if frame["event"] == "system:resync" {
            totals.resyncs += 1;
            sub.last = None;
            return;
        }
        if frame["topic"] != self.topic.as_str() {
            return;
        }
        let Some(offset) = frame["offset"].as_str().and_then(Offset::parse) else {
            return;
        };
        totals.events += 1;
        if let Some(written_ms) = frame["timestamp"].as_i64() {
            let now_us = chrono::Utc::now().timestamp_micros();
            let us = now_us
                .saturating_sub(written_ms.saturating_mul(1000))
                .max(1);
            let us = u64::try_from(us).unwrap_or(1);
            let second = usize::try_from(delivery_since.elapsed().as_secs()).unwrap_or(0);
            if delivery_seconds.len() <= second {
                delivery_seconds.resize_with(second + 1, second_histogram);
            }
            delivery.saturating_record(us);
            delivery_seconds[second].saturating_record(us);
        }
        match &sub.last {
            Some(last) if last.epoch == offset.epoch => {
                if offset.seq <= last.seq {
                    totals.duplicates += 1;
                    return;
                }
                totals.lost += offset.seq - last.seq - 1;
            }
            // A new epoch (the history was lost): what came before this event in it was
            // missed.
            Some(_) => totals.lost += offset.seq.saturating_sub(1),
            // No starting point yet (an event that overtook the subscription's answer).
            None => {}
        }
        sub.last = Some(offset);
        drop(shared);
        self.progress.send_modify(|n| *n += 1);
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    fn state(&self) -> SubState {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.subs[self.index].clone()
    }

    fn set_connected(&self, connected: bool) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.subs[self.index].connected = connected;
    }

    fn count(&self, update: impl FnOnce(&mut WsReport)) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        update(&mut shared.totals);
    }
}

/// Connection problems are expected during chaos; only the first few are worth a line.
fn report_connection_problem(index: usize, error: &anyhow::Error) {
    static LOGGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if LOGGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("petmesh-load: ws subscriber {index}: {error:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_is_behind_by_the_events_it_has_not_seen() {
        let target = Offset::parse("e:10").unwrap();
        let at = |o: &str| SubState {
            last: Offset::parse(o),
            connected: true,
        };
        assert_eq!(behind(&at("e:10"), &target), 0);
        assert_eq!(behind(&at("e:7"), &target), 3);
        assert_eq!(behind(&at("old:99"), &target), 10);
    }
}
