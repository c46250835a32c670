//! One fan-out round: subscribers, a paced publisher, a measured window.
//!
//! 1. Connect the subscribers, at most `concurrency` at a time, round-robin over the rooms
//!    and the nodes (subscriber `i` joins room `i % rooms` on node `(i % rooms + i / rooms) %
//!    nodes`: every room as big, each with members on every node, the nodes evenly loaded),
//!    each from then on reading everything it is sent (a reader that paused would be a slow
//!    consumer).
//! 2. Wait for the servers to go quiet: a petmesh join is announced to the room's members.
//! 3. Connect the publishers, publisher `p` to node `p` (round-robin) and to the rooms `r`
//!    with `r % publishers == p`, each sending `rate / publishers` messages per second
//!    round-robin over its rooms, with sequence numbers drawn from one counter; after
//!    `warmup_secs` the window opens: the counter's next number is its first message, and
//!    the servers' CPU time is sampled.
//! 4. After `duration_secs` the publishers stop. Wait until every window message has reached
//!    every subscriber, or [`DRAIN_TIMEOUT`], then sample the CPU time again.
//! 5. Stop the subscribers, compute the results from their samples, print them, and wait
//!    for the servers to go quiet again so the next round starts from idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use super::outcome::Outcome;
use super::procfs::{process_ticks, CpuProbe, ProcessGroup};
use super::{now_us, Inbound, Socket, System, Target};

// === impl FanoutArgs ===

impl FanoutArgs {
    /// Subscribers in each room: every window message is delivered this many times.
    pub(super) fn members_per_room(&self) -> usize {
        self.subscribers / self.rooms
    }
}

/// How long all subscribers together may take to connect and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

/// How long window messages may still be arriving after the publisher's last one.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the drain checks the delivery count.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// How long the servers may take to go quiet between steps.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a subscriber's close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Options of `petmesh-dev fanout`.
#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// The system under test and its access token.
    #[command(flatten)]
    pub target: Target,
    /// Base URL of a node (`http://host:port`); repeat or comma-separate for several.
    /// Subscribers are spread over them round-robin; publisher `p` uses node `p`.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages the publishers send per second, all together; each is delivered to every
    /// subscriber of its room.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Rooms the subscribers are spread over (petmesh room messages only); a multiple of
    /// `--publishers`, and `--subscribers` a multiple of it. Each room is its own topic, so in
    /// a Redis Cluster the rooms spread over the masters.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publisher connections (petmesh room messages only), round-robin over the nodes, each
    /// sending to its own share of the rooms. One connection's requests are answered one at
    /// a time, so a single publisher limits the message rate.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds of publishing before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Subscribers connecting and joining at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Server process whose CPU time is measured (repeat or comma-separate).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The Redis processes that serve the data (a standalone server, or a Redis Cluster's
    /// masters; repeat or comma-separate), whose CPU time is summed and reported separately.
    #[arg(long = "redis-pid", value_delimiter = ',')]
    pub redis_pids: Vec<u32>,
    /// A Redis Cluster's replicas (repeat or comma-separate), reported on their own.
    #[arg(long = "redis-replica-pid", value_delimiter = ',')]
    pub redis_replica_pids: Vec<u32>,
    /// Further processes whose CPU time is reported on its own, `name=pid[,pid...]`, each
    /// with its descendants (repeat for several groups): e.g. `balancer=<pid>` or
    /// `postgres=<postmaster pid>`. Reported as `<name>_cpu_s` and left out of "anything else".
    #[arg(long = "group")]
    pub groups: Vec<ProcessGroup>,
}

/// The measured window, shared by the publisher and every subscriber.
#[derive(Debug)]
struct Window {
    /// The next sequence number a publisher takes: one counter for all of them, so that
    /// every message has its own number.
    next_seq: AtomicU64,
    /// The first sequence number in the window; `u64::MAX` until it opens. Messages from
    /// there on are all in it: the publishers stop when the window closes.
    first_seq: AtomicU64,
    /// Deliveries of window messages, over all subscribers.
    delivered: AtomicU64,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub(super) struct SubscriberReport {
    /// Sequence number and latency (µs) of every benchmark message received.
    pub(super) samples: Vec<(u64, u64)>,
    /// Errors the server reported on this connection.
    pub(super) errors: u64,
    /// The last of them.
    pub(super) last_error: Option<String>,
    /// Why the connection ended before the round did, if it did.
    pub(super) ended: Option<String>,
}

/// What the publishers did.
#[derive(Debug)]
pub(super) struct PublisherReport {
    /// Messages sent in the window, by all publishers.
    pub(super) in_window: u64,
    /// How long the window was open: from the first publisher opening it to the last one
    /// stopping.
    pub(super) window: Duration,
}

/// When one publisher saw the window open and when it stopped.
#[derive(Clone, Copy, Debug)]
struct PublisherSpan {
    /// Its first tick in the window.
    opened: Instant,
    /// Its last send.
    stopped: Instant,
}

/// Runs one round and prints its `result` line; returns the exit code (0, or 1 when
/// messages were lost or connections ended early).
pub async fn run(args: FanoutArgs) -> anyhow::Result<i32> {
    validate(&args)?;
    let cpu = CpuProbe::new(
        &args.server_pids,
        &args.redis_pids,
        &args.redis_replica_pids,
    )?
    .with_groups(&args.groups)?;
    let window = Arc::new(Window::new());
    let (stop, stopped) = watch::channel(false);

    let started = Instant::now();
    let subscribers = connect_subscribers(&args, &window, &stopped).await?;
    eprintln!(
        "fanout: {} {} subscribers joined in {:.1?}",
        args.subscribers,
        args.target.system.name(),
        started.elapsed()
    );
    cpu.settle(SETTLE_TIMEOUT).await?;

    let mut publishers = Vec::with_capacity(args.publishers);
    let mut opens = Vec::with_capacity(args.publishers);
    for p in 0..args.publishers {
        let rooms: Vec<String> = (p..args.rooms)
            .step_by(args.publishers)
            .map(|r| System::room(args.rooms, r))
            .collect();
        let url = &args.urls[p % args.urls.len()];
        let socket = args
            .target
            .system
            .publisher(url, &args.target.token, &rooms)
            .await?;
        let (opened, window_open) = oneshot::channel();
        opens.push(window_open);
        publishers.push(tokio::spawn(publish(
            args.target.system,
            socket,
            Pace::new(&args),
            rooms,
            Arc::clone(&window),
            opened,
            stopped.clone(),
        )));
    }
    for window_open in opens {
        window_open
            .await
            .map_err(|_| anyhow!("a publisher ended before the window opened"))?;
    }
    let (before, client_before) = (cpu.sample()?, process_ticks(std::process::id())?);
    let sampled_from = Instant::now();
    let mut spans = Vec::with_capacity(publishers.len());
    for publisher in publishers {
        spans.push(publisher.await.context("publisher task")??);
    }
    let report = PublisherReport {
        in_window: window.next_seq().saturating_sub(window.first()),
        window: span_of(&spans)?,
    };
    let expected = report.in_window * args.members_per_room() as u64;
    let drained = drain(&window, expected).await;
    let (after, client_after) = (cpu.sample()?, process_ticks(std::process::id())?);
    let sampled = sampled_from.elapsed();
    let seconds = cpu.seconds_between(&before, &after);
    let client_cpu =
        cpu.ticks_to_seconds(client_after.total().saturating_sub(client_before.total()));

    let _ = stop.send(true);
    let mut reports = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        reports.push(subscriber.await.context("subscriber task")?);
    }
    let outcome = Outcome::new(&args, window.first(), &report, reports, drained);
    outcome.print(&seconds, client_cpu, sampled);
    cpu.settle(SETTLE_TIMEOUT).await?;
    Ok(if outcome.healthy() { 0 } else { 1 })
}

/// Rejects options that cannot make a round.
fn validate(args: &FanoutArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.concurrency == 0 {
        bail!("--subscribers and --concurrency must be at least 1");
    }
    if !(args.rate > 0.0 && args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--rate and --duration-secs must be positive, --warmup-secs not negative");
    }
    if args.rooms == 0 || args.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    if (args.rooms > 1 || args.publishers > 1) && args.target.system != System::Petmesh {
        bail!("--rooms and --publishers are for petmesh room messages only");
    }
    if !args.rooms.is_multiple_of(args.publishers) || !args.subscribers.is_multiple_of(args.rooms) {
        bail!("--rooms must be a multiple of --publishers, and --subscribers of --rooms (every room as big, every publisher as busy)");
    }
    args.target.check()?;
    Ok(())
}

/// Spawns every subscriber, at most `concurrency` connecting at once, and waits until all
/// have joined. Each one keeps reading until `stopped` turns true.
async fn connect_subscribers(
    args: &FanoutArgs,
    window: &Arc<Window>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<SubscriberReport>>> {
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let (joined, mut joins) = mpsc::channel(args.subscribers);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (room, pass) = (i % args.rooms, i / args.rooms);
        let url = args.urls[(room + pass) % args.urls.len()].clone();
        let room = System::room(args.rooms, room);
        let (system, token) = (args.target.system, args.target.token.clone());
        let (permits, joined) = (Arc::clone(&permits), joined.clone());
        let (window, stopped) = (Arc::clone(window), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let connected = {
                let _permit = permits.acquire().await;
                system.subscriber(&url, &token, &room).await
            };
            match connected {
                Ok(socket) => {
                    let _ = joined.send(Ok(())).await;
                    receive(system, socket, &window, stopped).await
                }
                Err(e) => {
                    let _ = joined.send(Err(format!("{url}: {e:#}"))).await;
                    SubscriberReport::default()
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    for _ in 0..args.subscribers {
        match tokio::time::timeout_at(deadline, joins.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("a subscriber could not join: {e}"),
            Ok(None) => bail!("subscriber tasks ended before joining"),
            Err(_) => bail!("the subscribers did not all join within {JOIN_TIMEOUT:?}"),
        }
    }
    Ok(tasks)
}

/// Reads `socket` until `stopped`: records every benchmark message, answers pings, counts
/// errors, and notes a connection that ends early.
async fn receive(
    system: System,
    mut socket: Socket,
    window: &Window,
    mut stopped: watch::Receiver<bool>,
) -> SubscriberReport {
    let mut report = SubscriberReport::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            frame = socket.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                report.ended = Some(close.map_or("close without code".into(), |f| {
                    format!("closed {}", u16::from(f.code))
                }));
                return report;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                report.ended = Some(format!("error: {e}"));
                return report;
            }
            None => {
                report.ended = Some("ended without close".into());
                return report;
            }
        };
        match system.classify(&text) {
            Inbound::Message { seq, sent_us } => {
                report.samples.push((seq, now_us().saturating_sub(sent_us)));
                window.record(seq);
            }
            Inbound::Reply(reply) => {
                if let Err(e) = socket.send(Message::text(reply)).await {
                    report.ended = Some(format!("error: {e}"));
                    return report;
                }
            }
            Inbound::Error(e) => {
                report.errors += 1;
                report.last_error = Some(e);
            }
            Inbound::Other => {}
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
    report
}

/// One publisher's schedule: a tick every `period`, the window from `open_at` to `close_at`.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// Time between two messages of this publisher.
    period: Duration,
    /// When the window opens (the end of the warm-up).
    open_at: Instant,
    /// When the window closes and the publisher stops.
    close_at: Instant,
}

impl Pace {
    /// The schedule of each of `args.publishers` publishers, from now.
    fn new(args: &FanoutArgs) -> Self {
        let open_at = Instant::now() + Duration::from_secs_f64(args.warmup_secs);
        Self {
            period: Duration::from_secs_f64(args.publishers as f64 / args.rate),
            open_at,
            close_at: open_at + Duration::from_secs_f64(args.duration_secs),
        }
    }
}

/// Publishes on `pace` round-robin over `rooms` for the warm-up and the window, telling
/// `opened` when its first tick falls in the window; then hands the socket to [`receive`]
/// (its own messages reach a petmesh publisher too and must be read) until the round ends.
///
/// Ticks missed because the task was late are sent at once (`Burst`), so the number of
/// messages, and with it the offered load, is exactly rate × time.
async fn publish(
    system: System,
    mut socket: Socket,
    pace: Pace,
    rooms: Vec<String>,
    window: Arc<Window>,
    opened: oneshot::Sender<()>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<PublisherSpan> {
    let mut ticks = tokio::time::interval(pace.period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let (open_at, close_at) = (pace.open_at, pace.close_at);
    let mut opened = Some(opened);
    let mut window_started = None;
    let mut sent = 0usize;
    let mut errors = 0u64;
    loop {
        tokio::select! {
            tick = ticks.tick() => {
                let now = tick.into_std();
                if now >= close_at {
                    break;
                }
                if now >= open_at {
                    if let Some(opened) = opened.take() {
                        window.open();
                        window_started = Some(Instant::now());
                        let _ = opened.send(());
                    }
                }
                let seq = window.take_seq();
                let frame = system.publish_frame(seq, now_us(), &rooms[sent % rooms.len()]);
                socket.send(Message::text(frame)).await.context("publishing")?;
                sent += 1;
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => match system.classify(&text) {
                    Inbound::Reply(reply) => socket.send(Message::text(reply)).await?,
                    Inbound::Error(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("fanout: the publisher got an error: {e}");
                        }
                    }
                    Inbound::Message { .. } | Inbound::Other => {}
                },
                Some(Ok(Message::Close(close))) => bail!("the server closed the publisher: {close:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("publisher connection"),
                None => bail!("the publisher's connection ended"),
            },
        }
    }
    if errors > 0 {
        eprintln!("fanout: the publisher got {errors} errors in all");
    }
    let opened =
        window_started.context("the window never opened (duration shorter than one tick?)")?;
    let span = PublisherSpan {
        opened,
        stopped: Instant::now(),
    };
    let detached = Window::new();
    tokio::spawn(async move { receive(system, socket, &detached, stopped).await });
    Ok(span)
}

/// From the first publisher's window opening to the last one's stop.
fn span_of(spans: &[PublisherSpan]) -> anyhow::Result<Duration> {
    let opened = spans
        .iter()
        .map(|s| s.opened)
        .min()
        .context("no publisher")?;
    let stopped = spans
        .iter()
        .map(|s| s.stopped)
        .max()
        .context("no publisher")?;
    Ok(stopped.saturating_duration_since(opened))
}

/// Waits until `expected` window deliveries have arrived or [`DRAIN_TIMEOUT`] passed;
/// returns how long it took.
async fn drain(window: &Window, expected: u64) -> Duration {
    let started = Instant::now();
    while window.delivered() < expected && started.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    started.elapsed()
}

// === impl Window ===

impl Window {
    /// A window that has not opened yet.
    fn new() -> Self {
        Self {
            next_seq: AtomicU64::new(0),
            first_seq: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
        }
    }

    /// Opens the window at the next sequence number, unless another publisher did already.
    /// Messages numbered from there on are all sent after this call: every number is taken
    /// with [`Window::take_seq`] after its publisher has checked the time.
    fn open(&self) {
        let next = self.next_seq.load(Ordering::Acquire);
        let _ =
            self.first_seq
                .compare_exchange(u64::MAX, next, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The sequence number of the next message sent.
    fn take_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::AcqRel)
    }

    /// The sequence numbers taken so far.
    fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// The first sequence number in the window.
    fn first(&self) -> u64 {
        self.first_seq.load(Ordering::Acquire)
    }

    /// Counts a delivery of message `seq` if it is in the window.
    fn record(&self, seq: u64) {
        if seq >= self.first() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Window deliveries so far.
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_only_messages_from_its_first_on() {
        let window = Window::new();
        window.record(0);
        assert_eq!(window.delivered(), 0);
        for _ in 0..5 {
            window.take_seq();
        }
        window.open();
        window.take_seq();
        window.open();
        assert_eq!(window.first(), 5, "the first publisher to open it decides");
        window.record(4);
        window.record(5);
        window.record(9);
        assert_eq!(window.delivered(), 2);
        assert_eq!(window.first(), 5);
    }
}
