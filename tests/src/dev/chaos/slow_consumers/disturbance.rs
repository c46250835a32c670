//! The disturbance of `slow-consumers`: a storm of WebSocket clients all reconnecting at once,
//! and slow readers of the busy topic.
//!
//! It runs on a thread and a current-thread runtime of its own, at the lowest CPU priority.
//! Its thousands of tasks would otherwise share the runtime of the measuring clients, whose
//! event and HTTP latencies would then include waiting behind the storm's tasks in the load
//! generator itself, and take a core from the cluster at the cut: a stand-in for clients on
//! other machines, as far as two shared cores allow.
//!
//! 1. Before the quiet window ([`Disturbance::connect`]), every storm client connects through
//!    the balancer (all at once, an access token on the handshake), subscribes to `orders`
//!    (its user's own order events: storm users never order, so the topic is quiet) and waits
//!    for the answer, retrying after any failure (backing off, with jitter). Then they stay
//!    connected, answering pings, so both windows have the same connections open.
//! 2. At the disturbed window's start ([`Disturbance::start`]) every storm connection is cut
//!    (the TCP connection dropped, no close handshake) and every client connects and
//!    subscribes again at once, until the window's end. The slow readers connect at the same
//!    time (raw sockets with a 4 KiB receive buffer), straight to the nodes in turn, and
//!    subscribe to `pets` without reading the answer: half never read again, half read 4 KiB
//!    every 100 ms. Not through the balancer: its two sockets of the tunnel would buffer
//!    several more MB on loopback, and the node's idle timeout (60 s, close 1001) would end
//!    such a reader before its queue filled, so the experiment would not see the queue policy.
//! 3. At the window's end the storm connections are dropped and the slow readers stop
//!    reading; the nodes' slow-consumer count is watched until it has grown by the number of
//!    slow readers (or [`DETECTION`] has passed); then every slow reader reads what is left
//!    and must reach the end of its connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::ApiClient;
use crate::ws::RawWs;

/// How long the nodes get, after the window, to close every slow reader: a stopped reader
/// holds its node's socket send buffer (up to 4 MiB on loopback) and a queue of 256 frames
/// (5 MB of ≈ 20 KB events) before it counts as slow, ≈ 45 s of the busy topic.
pub(super) const DETECTION: Duration = Duration::from_secs(45);

/// Bound on connecting every storm client before the quiet window.
const CONNECT: Duration = Duration::from_secs(60);

/// Bound on a slow reader reading what is left, up to the end of its connection.
const DRAIN: Duration = Duration::from_secs(30);

/// Bytes a slow (not stopped) reader reads at a time, and how often.
const SLOW_READ_BYTES: usize = 4096;
const SLOW_READ_EVERY: Duration = Duration::from_millis(100);

/// Pause before a storm client tries again after its first failure; it doubles with every
/// failure up to [`RETRY_PAUSE_MAX`], and each pause is drawn between half of it and all of
/// it. Clients that retried at a fixed pace would turn a storm into a retry storm: real
/// client libraries back off with jitter, and so do these.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The node metric counting connections closed as slow consumers (1013).
pub(super) const SLOW_CONSUMER_METRIC: &str = "petmesh_node_ws_slow_consumer_disconnects_total";

/// What to do.
pub(super) struct Plan {
    /// `http://host:port` of the balancer.
    pub base_url: String,
    /// The nodes' URLs: the slow readers connect to them, and their slow-consumer count is read.
    pub node_urls: Vec<String>,
    /// Storm clients.
    pub storm_clients: usize,
    /// Their users' tokens, used in turn.
    pub storm_tokens: Vec<String>,
    /// Slow readers that stop reading, and slow readers that read slowly.
    pub stopped_readers: usize,
    pub slow_readers: usize,
    /// Tokens for the slow readers.
    pub reader_tokens: Vec<String>,
    /// How long the disturbance lasts.
    pub window: Duration,
}

/// One storm round.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Clients connected and subscribed by the round's deadline.
    pub subscribed: usize,
    /// When the last of them was (from the round's start), if all were.
    pub all_subscribed_after: Option<Duration>,
    /// Failed attempts, by what failed (each was tried again).
    pub failures: BTreeMap<String, u64>,
}

/// What happened to one slow reader.
#[derive(Debug)]
pub(super) struct Reader {
    /// It stopped reading (rather than reading slowly).
    pub stopped: bool,
    /// Bytes it read before the end of the window.
    pub read_in_window: u64,
    /// How its connection ended: `Ok(close code, if a close frame came)`, or why it did not.
    pub ended: Result<Option<u16>, String>,
}

/// Everything the disturbance saw.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// The reconnect storm.
    pub reconnect: Round,
    /// The slow readers (those that connected).
    pub readers: Vec<Reader>,
    /// Slow readers that could not connect or subscribe, with why.
    pub reader_failures: Vec<String>,
    /// How long after the window the nodes had closed as many slow consumers as there are
    /// slow readers (`None`: not within [`DETECTION`]).
    pub detected_after: Option<Duration>,
    /// The nodes' slow-consumer count when the watch ended, less the count before.
    pub slow_consumer_closes: u64,
}

/// The disturbance, running on its own thread: its storm clients are connected (and kept
/// alive: they answer pings) until [`Disturbance::start`].
pub(super) struct Disturbance {
    go: oneshot::Sender<u64>,
    outcome: oneshot::Receiver<anyhow::Result<Outcome>>,
}

impl Disturbance {
    /// Starts the thread and connects every storm client (at once, as in the storm itself);
    /// returns once all are connected and subscribed, with the figures of that round, or
    /// with the thread's error.
    pub(super) async fn connect(plan: Plan) -> anyhow::Result<(Self, Round)> {
        let (connected_tx, connected) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let (tx, outcome) = oneshot::channel();
        std::thread::Builder::new()
            .name("chaos-disturbance".into())
            .spawn(move || {
                lowest_priority();
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the disturbance's runtime")
                    .and_then(|runtime| runtime.block_on(run(plan, connected_tx, go_rx)));
                let _ = tx.send(outcome);
            })
            .context("starting the disturbance thread")?;
        let mut this = Self { go, outcome };
        match connected.await {
            Ok(round) => Ok((this, round)),
            // The thread ended before connecting: its outcome says why.
            Err(_) => Err(match (&mut this.outcome).await {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the disturbance thread ended before connecting"),
            }),
        }
    }

    /// Starts the disturbance now (the nodes had counted `slow_consumers_before`); its outcome
    /// arrives when it is over.
    pub(super) fn start(
        self,
        slow_consumers_before: u64,
    ) -> oneshot::Receiver<anyhow::Result<Outcome>> {
        let _ = self.go.send(slow_consumers_before);
        self.outcome
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19). The storm's clients stand for
/// clients on other machines: where the cores are busy (the cut, the reconnects), the cluster
/// and the measuring clients go first, and the storm takes what is left, instead of taking a
/// core from them as no remote client could. Best effort: if it fails, the run goes on as it
/// is (the CPU figures still show what this process took).
fn lowest_priority() {
    // SAFETY: plain system calls on this thread's own id; no memory is shared.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if failed != 0 {
        eprintln!(
            "chaos: could not lower the disturbance thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

async fn run(
    plan: Plan,
    connected: oneshot::Sender<Round>,
    go: oneshot::Receiver<u64>,
) -> anyhow::Result<Outcome> {
    let addr = socket_addr(&plan.base_url)?;
    let storm = Storm {
        addr,
        url: format!("{}/ws", plan.base_url.replacen("http", "ws", 1)),
        tokens: plan.storm_tokens.clone(),
    };
    let (round, sockets) = storm
        .round(plan.storm_clients, Instant::now() + CONNECT)
        .await;
    if round.subscribed < plan.storm_clients {
        anyhow::bail!(
            "only {} of {} storm clients connected and subscribed within {} s: {:?}",
            round.subscribed,
            plan.storm_clients,
            CONNECT.as_secs(),
            round.failures
        );
    }
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let mut held = keep_alive(sockets, cut_rx);
    let _ = connected.send(round);
    let slow_consumers_before = go.await.context("the experiment ended before the storm")?;

    let started = Instant::now();
    let end = started + plan.window;
    let mut outcome = Outcome::default();
    // The cut: every connection dropped at once, without a close handshake.
    cut.send_replace(true);
    while held.join_next().await.is_some() {}

    let (reader_stop, reader_stopped) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    for n in 0..plan.stopped_readers + plan.slow_readers {
        let stopped = n < plan.stopped_readers;
        let (base_url, token) = (
            plan.node_urls[n % plan.node_urls.len()].clone(),
            plan.reader_tokens[n % plan.reader_tokens.len()].clone(),
        );
        let mut stop = reader_stopped.clone();
        readers.spawn(async move {
            let mut raw = RawWs::connect(&base_url, &token).await?;
            raw.send_text(&subscribe_frame("pets").to_string()).await?;
            let mut read = 0u64;
            if !stopped {
                while !*stop.borrow() {
                    tokio::select! {
                        n = raw.read_some(SLOW_READ_BYTES) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n as u64,
                        },
                        _ = stop.changed() => break,
                    }
                    tokio::select! {
                        () = tokio::time::sleep(SLOW_READ_EVERY) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
            anyhow::Ok((stopped, read, raw))
        });
    }

    // ...and every client connects and subscribes again at once.
    let (round, sockets) = storm.round(plan.storm_clients, end).await;
    outcome.reconnect = round;
    tokio::time::sleep_until(end.into()).await;
    drop(sockets);
    reader_stop.send_replace(true);

    let mut connected = Vec::new();
    while let Some(joined) = readers.join_next().await {
        match joined.context("a slow reader panicked")? {
            Ok(reader) => connected.push(reader),
            Err(e) => outcome.reader_failures.push(format!("{e:#}")),
        }
    }
    // The nodes close the slow readers once their queues fill; wait for that (reading would
    // let them catch up), then read what is left up to the end of each connection.
    let window_over = Instant::now();
    let wanted = connected.len() as u64;
    loop {
        let now = slow_consumer_count(&plan.node_urls).await;
        outcome.slow_consumer_closes = now.saturating_sub(slow_consumers_before);
        if outcome.slow_consumer_closes >= wanted {
            outcome.detected_after = Some(window_over.elapsed());
            break;
        }
        if window_over.elapsed() > DETECTION {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut drains = JoinSet::new();
    for (stopped, read_in_window, mut raw) in connected {
        drains.spawn(async move {
            let ended = raw.read_to_end(DRAIN).await.map_err(|e| format!("{e:#}"));
            Reader {
                stopped,
                read_in_window,
                ended,
            }
        });
    }
    while let Some(reader) = drains.join_next().await {
        outcome
            .readers
            .push(reader.context("a slow reader panicked")?);
    }
    Ok(outcome)
}

/// Reads every storm connection (so that pings are answered and the nodes' idle timeout does
/// not end it) until `cut` turns true, then drops it.
fn keep_alive(sockets: Vec<Socket>, cut: tokio::sync::watch::Receiver<bool>) -> JoinSet<()> {
    let mut held = JoinSet::new();
    for mut socket in sockets {
        let mut cut = cut.clone();
        held.spawn(async move {
            loop {
                tokio::select! {
                    () = until_cut(&mut cut) => return,
                    frame = socket.next() => if !matches!(frame, Some(Ok(_))) {
                        // Ended early: the reconnect's figures will show it.
                        until_cut(&mut cut).await;
                        return;
                    },
                }
            }
        });
    }
    held
}

async fn until_cut(cut: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| *cut).await;
}

/// The sum of every node's slow-consumer count (a node that cannot be read counts 0).
pub(super) async fn slow_consumer_count(node_urls: &[String]) -> u64 {
    let mut total = 0.0;
    for url in node_urls {
        if let Ok(resp) = ApiClient::new(url.as_str()).get("/metrics").await {
            total += crate::metrics::value(&resp.text, SLOW_CONSUMER_METRIC).unwrap_or(0.0);
        }
    }
    total as u64
}

fn subscribe_frame(topic: &str) -> Value {
    json!({"type": "request", "id": "sub", "action": "subscribe", "payload": {"topics": [topic]}})
}

fn socket_addr(base_url: &str) -> anyhow::Result<SocketAddr> {
    let url = reqwest::Url::parse(base_url).context("parsing the balancer's URL")?;
    url.socket_addrs(|| Some(80))?
        .first()
        .copied()
        .context("the balancer's URL has no address")
}

/// The storm's clients: where they connect and as whom.
struct Storm {
    addr: SocketAddr,
    url: String,
    tokens: Vec<String>,
}

type Socket = WebSocketStream<TcpStream>;

impl Storm {
    /// Starts `clients` clients at once, each connecting and subscribing (again after every
    /// failure) until `deadline`; returns the round's figures and the open connections.
    async fn round(&self, clients: usize, deadline: Instant) -> (Round, Vec<Socket>) {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for n in 0..clients {
            let (addr, url, token) = (
                self.addr,
                self.url.clone(),
                self.tokens[n % self.tokens.len()].clone(),
            );
            // Spread over source addresses, as clients of many machines would be.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 101, (n % 250 + 1) as u8));
            tasks.spawn(async move {
                let mut failures: Vec<String> = Vec::new();
                loop {
                    let attempt = tokio::time::timeout_at(
                        deadline.into(),
                        connect_and_subscribe(addr, source, &url, &token),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(socket)) => return (Some((socket, started.elapsed())), failures),
                        Ok(Err(e)) => failures.push(e),
                        Err(_) => {
                            failures.push("no answer by the round's deadline".into());
                            return (None, failures);
                        }
                    }
                    let doubled = RETRY_PAUSE * 2u32.saturating_pow(failures.len() as u32 - 1);
                    let pause = doubled
                        .min(RETRY_PAUSE_MAX)
                        .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
                    if Instant::now() + pause >= deadline {
                        return (None, failures);
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        let mut round = Round::default();
        let mut sockets = Vec::with_capacity(clients);
        let mut last = Duration::ZERO;
        while let Some(joined) = tasks.join_next().await {
            let Ok((socket, failures)) = joined else {
                continue;
            };
            for failure in failures {
                *round.failures.entry(failure).or_default() += 1;
            }
            if let Some((socket, at)) = socket {
                last = last.max(at);
                sockets.push(socket);
            }
        }
        round.subscribed = sockets.len();
        round.all_subscribed_after = (round.subscribed == clients).then_some(last);
        (round, sockets)
    }
}

/// One storm client's attempt: TCP, the handshake with its token, `subscribe` and its
/// answer. Errors are short classes, counted per round.
async fn connect_and_subscribe(
    addr: SocketAddr,
    source: IpAddr,
    url: &str,
    token: &str,
) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    // Small buffers: thousands of clients in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                format!("handshake answered {}", resp.status())
            }
            e => format!("handshake: {}", short(&e.to_string())),
        })?;
    ws.send(Message::text(subscribe_frame("orders").to_string()))
        .await
        .map_err(|e| format!("send: {}", short(&e.to_string())))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if frame["type"] == "response" && frame["id"] == "sub" {
                    if frame["status"] == "success" {
                        return Ok(ws);
                    }
                    return Err(format!(
                        "subscribe answered {}",
                        frame["payload"]["code"].as_str().unwrap_or("an error")
                    ));
                }
            }
            Some(Ok(Message::Close(close))) => {
                return Err(format!(
                    "closed ({})",
                    close.map_or(1005, |c| u16::from(c.code))
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
            None => return Err("connection ended before the answer".into()),
        }
    }
}

/// The first words of an error, so that failures group into few classes.
fn short(text: &str) -> String {
    text.chars().take(60).collect()
}
