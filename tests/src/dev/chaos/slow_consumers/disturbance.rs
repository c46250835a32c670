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
//!    connected, answering pings, so every window has the same connections open.
//! 2. At a disturbed window's start ([`Disturbance::start`], once per disturbed window), and
//!    again at even intervals in it ([`Plan::storms`] in all), every storm connection is cut
//!    (the TCP connection dropped, no close handshake) and every client connects and
//!    subscribes again at once.
//!    The slow readers connect at the window's start (raw sockets with a 4 KiB receive
//!    buffer), straight to the nodes in turn, and subscribe to `pets` without reading the
//!    answer: half never read again, half read 4 KiB every 100 ms. Not through the balancer:
//!    its two sockets of the tunnel would buffer several more MB on loopback, and the node's
//!    idle timeout (60 s, close 1001) would end such a reader before its queue filled, so the
//!    experiment would not see the queue policy.
//! 3. At the window's end the slow readers stop reading; the nodes' slow-consumer count is
//!    watched until it has grown by the number of slow readers (or [`DETECTION`] has passed);
//!    then every slow reader reads what is left and must reach the end of its connection.
//!    The storm clients stay connected, as before the window, until the next disturbance or
//!    [`Disturbance::release`].

mod storm;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub(super) use self::storm::Round;
use self::storm::{Held, Storm};
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
    /// Storms in it, evenly spaced: the first at its start.
    pub storms: u32,
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
    /// The reconnect storms, in order.
    pub reconnects: Vec<Round>,
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
/// alive: they answer pings) from [`Disturbance::connect`] until [`Disturbance::release`],
/// and each [`Disturbance::start`] runs one disturbed window's disturbance.
pub(super) struct Disturbance {
    go: mpsc::UnboundedSender<Go>,
}

/// One disturbance to run: the nodes' slow-consumer count before it, and where its outcome
/// goes once the window is over and every slow reader was closed and read to its end (or
/// [`DETECTION`] passed).
type Go = (u64, oneshot::Sender<anyhow::Result<Outcome>>);

impl Disturbance {
    /// Starts the thread and connects every storm client (at once, as in the storm itself);
    /// returns once all are connected and subscribed, with the figures of that round, or
    /// with the thread's error.
    pub(super) async fn connect(plan: Plan) -> anyhow::Result<(Self, Round)> {
        let (connected_tx, connected) = oneshot::channel();
        let (go, go_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("chaos-disturbance".into())
            .spawn(move || {
                lowest_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the disturbance's runtime")
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = connected_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(run(plan, connected_tx, go_rx));
            })
            .context("starting the disturbance thread")?;
        let round = connected
            .await
            .map_err(|_| anyhow::anyhow!("the disturbance thread ended before connecting"))??;
        Ok((Self { go }, round))
    }

    /// Starts a disturbance now (the nodes had counted `slow_consumers_before`): its outcome
    /// arrives once its window is over and every slow reader was closed and read to its end
    /// (or [`DETECTION`] passed); the storm clients stay connected after it.
    pub(super) fn start(
        &self,
        slow_consumers_before: u64,
    ) -> impl std::future::Future<Output = anyhow::Result<Outcome>> {
        let (tx, outcome) = oneshot::channel();
        let sent = self.go.send((slow_consumers_before, tx));
        async move {
            sent.map_err(|_| anyhow::anyhow!("the disturbance thread had ended"))?;
            outcome
                .await
                .map_err(|_| anyhow::anyhow!("the disturbance thread ended mid-disturbance"))?
        }
    }

    /// Drops the storm's connections and ends the thread.
    pub(super) fn release(self) {
        drop(self.go);
    }
}

/// Gives the calling thread the lowest CPU priority Linux has: `SCHED_IDLE`, where it runs
/// only when nothing else wants the core and any other thread that wakes takes the core from
/// it at once (nice 19 is not that: it still takes its turn among busy threads, and the storm
/// thread took a third of the machine at a cut). The storm's clients stand for clients on
/// other machines: where the cores are busy (the cut, the reconnects), the cluster and the
/// measuring clients go first, and the storm takes what is left, instead of taking a core from
/// them as no remote client could. Falls back to nice 19; if both fail, the run goes on as it
/// is (the CPU figures still show what this process took).
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on this thread's own id, with a parameter that lives
    // across the call; no memory is shared.
    let idle = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) };
    if idle == 0 {
        return;
    }
    let idle_error = std::io::Error::last_os_error();
    // SAFETY: as above.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if failed != 0 {
        eprintln!(
            "chaos: could not lower the disturbance thread's priority: {idle_error}; {}",
            std::io::Error::last_os_error()
        );
    } else {
        eprintln!(
            "chaos: the disturbance thread runs at nice 19 (SCHED_IDLE refused: {idle_error})"
        );
    }
}

/// The thread's work: connects the storm, runs a disturbance on each `go` (sending what it
/// saw), and keeps the storm connected until `go` closes ([`Disturbance::release`], or the
/// experiment is dropped).
async fn run(
    plan: Plan,
    connected: oneshot::Sender<anyhow::Result<Round>>,
    mut go: mpsc::UnboundedReceiver<Go>,
) {
    let (storm, mut held) = match connect_storm(&plan).await {
        Ok((storm, round, held)) => {
            let _ = connected.send(Ok(round));
            (storm, held)
        }
        Err(e) => {
            let _ = connected.send(Err(e));
            return;
        }
    };
    while let Some((slow_consumers_before, outcome)) = go.recv().await {
        let seen = disturb(&plan, &storm, &mut held, slow_consumers_before).await;
        let failed = seen.is_err();
        let _ = outcome.send(seen);
        if failed {
            return;
        }
    }
    held.cut().await;
}

/// Connects every storm client and keeps them open.
async fn connect_storm(plan: &Plan) -> anyhow::Result<(Storm, Round, Held)> {
    let storm = Storm::new(&plan.base_url, plan.storm_tokens.clone())?;
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
    Ok((storm, round, Held::keep_alive(sockets)))
}

/// One disturbed window, from now: the storms and the slow readers. Returns what it saw;
/// `held` is then the storm's new connections, still open.
async fn disturb(
    plan: &Plan,
    storm: &Storm,
    held: &mut Held,
    slow_consumers_before: u64,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let end = started + plan.window;
    let between_storms = plan.window / plan.storms.max(1);
    let mut outcome = Outcome::default();
    let (reader_stop, reader_stopped) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    for storm_number in 0..plan.storms {
        let storm_start = started + between_storms * storm_number;
        tokio::time::sleep_until(storm_start.into()).await;
        // The cut: every connection dropped at once, without a close handshake...
        held.cut().await;
        if storm_number == 0 {
            readers = slow_readers(plan, &reader_stopped);
        }
        // ...and every client connects and subscribes again at once.
        let (round, sockets) = storm
            .round(plan.storm_clients, storm_start + between_storms)
            .await;
        outcome.reconnects.push(round);
        *held = Held::keep_alive(sockets);
    }
    tokio::time::sleep_until(end.into()).await;
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

/// A slow reader that connected: whether it stopped (rather than read slowly), the bytes it
/// read before the window's end, and its socket.
type SlowReader = (bool, u64, RawWs);

/// Connects the slow readers, straight to the nodes in turn, and lets each stop reading or
/// read slowly until `stop` turns true.
fn slow_readers(
    plan: &Plan,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> JoinSet<anyhow::Result<SlowReader>> {
    let mut readers = JoinSet::new();
    for n in 0..plan.stopped_readers + plan.slow_readers {
        let stopped = n < plan.stopped_readers;
        let (base_url, token) = (
            plan.node_urls[n % plan.node_urls.len()].clone(),
            plan.reader_tokens[n % plan.reader_tokens.len()].clone(),
        );
        let mut stop = stop.clone();
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
    readers
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
