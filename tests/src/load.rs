//! The load generator behind `petmesh-load` and the chaos experiments (`petmesh-dev chaos`):
//! HTTP requests of a weighted mix of kinds, open-loop at a fixed rate or closed-loop over N
//! connections, plus WebSocket subscribers that count lost events.
//!
//! - [`mix`]: the request kinds and `--mix` weights.
//! - [`setup`]: users, tokens and pets prepared before the run.
//! - [`http`]: one request of each kind, error classes, and orders retried with their
//!   `Idempotency-Key`.
//! - [`stats`]: HdrHistograms and counters while running, and the HTTP report.
//! - [`ws`]: subscribers, reconnects and gap counting.
//! - [`report`]: the whole report as JSON and as a table.
//!
//! Open loop (`rate` set) sends request *i* at `start + i / rate` whatever happened to the
//! ones before (up to `max_in_flight` outstanding; beyond that the schedule waits, and the
//! wait shows in the latency, which runs from the due time). Closed loop runs `connections`
//! workers that each send their next request when the last one is answered.

pub mod http;
pub mod mix;
pub mod report;
pub mod setup;
pub mod stats;
pub mod ws;

pub use http::{Done, ErrorClass, HttpLoad, OrderRecord, Outcome, RetryPolicy};
pub use mix::{Kind, Mix};
pub use report::Report;
pub use setup::{Setup, SetupOptions};
pub use stats::Recorder;
pub use ws::{Offset, WsLoad, WsOptions, WsReport};

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// How a run sends its HTTP requests.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Requests per second (open loop), or `None` for closed loop.
    pub rate: Option<f64>,
    /// Closed loop: workers sending back to back. Open loop: most requests outstanding.
    pub connections: usize,
    /// How long requests are started for.
    pub duration: Duration,
    /// The kinds of request and their weights.
    pub mix: Mix,
    /// Bound on one attempt.
    pub timeout: Duration,
    /// How orders are sent again.
    pub retry: RetryPolicy,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

/// A run under way: the HTTP load (until its duration has passed), the subscribers and the
/// progress line.
pub struct RunningLoad {
    /// The counters.
    recorder: Arc<Recorder>,
    /// The dispatcher; ends when every request it started has been answered.
    dispatcher: JoinHandle<()>,
    /// The subscribers, if any.
    ws: Option<Arc<WsLoad>>,
    /// Prints the progress line; aborted at the end.
    progress: Option<JoinHandle<()>>,
    /// What the run was asked to do, for the report.
    options: LoadOptions,
    /// The target URL.
    base_url: String,
}

impl RunningLoad {
    /// Starts the HTTP load on `load` (and the subscribers `ws`, already started).
    pub fn start(load: HttpLoad, options: LoadOptions, ws: Option<WsLoad>) -> Self {
        let recorder = Arc::new(Recorder::new());
        let base_url = load.setup().base_url.clone();
        let ws = ws.map(Arc::new);
        let dispatcher = tokio::spawn(dispatch(load, options.clone(), Arc::clone(&recorder)));
        let progress = options
            .progress
            .then(|| tokio::spawn(progress_lines(Arc::clone(&recorder), ws.clone())));
        Self {
            recorder,
            dispatcher,
            ws,
            progress,
            options,
            base_url,
        }
    }

    /// The counters, for a caller that watches the run (a chaos experiment).
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Waits until the duration has passed and every HTTP request has been answered.
    pub async fn http_done(&mut self) {
        (&mut self.dispatcher)
            .await
            .expect("the dispatcher panicked");
    }

    /// Waits for the HTTP load to end, lets the subscribers catch up with `last_offset`
    /// (`None`: the highest offset any of them saw) for up to `settle`, and returns the report.
    pub async fn finish(mut self, last_offset: Option<Offset>, settle: Duration) -> Report {
        if !self.dispatcher.is_finished() {
            self.http_done().await;
        }
        // The progress task holds the subscribers too; it goes first.
        if let Some(progress) = self.progress.take() {
            progress.abort();
            let _ = progress.await;
        }
        let ws = match self.ws.take() {
            Some(ws) => match Arc::try_unwrap(ws) {
                Ok(ws) => Some(ws.finish(last_offset, settle).await),
                Err(_) => unreachable!("only the run and its progress task hold the subscribers"),
            },
            None => None,
        };
        Report::new(&self.base_url, &self.options, self.recorder.report(), ws)
    }
}

/// Starts requests until the duration has passed, then waits for them all.
async fn dispatch(load: HttpLoad, options: LoadOptions, recorder: Arc<Recorder>) {
    let limit = options.connections.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    let started = Instant::now();
    let end = started + options.duration;
    let load = Arc::new(load);
    match options.rate {
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut rng = rand::rngs::StdRng::from_entropy();
            for i in 0u32.. {
                let due = started + interval * i;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let permit = Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let kind = options.mix.pick(rng.gen());
                let (load, recorder) = (Arc::clone(&load), Arc::clone(&recorder));
                let seed: u64 = rng.gen();
                recorder.begin();
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let done = load.execute(kind, &mut rng).await;
                    recorder.finish(&done, due.elapsed());
                    drop(permit);
                });
            }
        }
        None => {
            for _ in 0..limit {
                let permit = Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let (load, recorder, mix) = (
                    Arc::clone(&load),
                    Arc::clone(&recorder),
                    options.mix.clone(),
                );
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::from_entropy();
                    while Instant::now() < end {
                        let sent = Instant::now();
                        recorder.begin();
                        let done = load.execute(mix.pick(rng.gen()), &mut rng).await;
                        recorder.finish(&done, sent.elapsed());
                    }
                    drop(permit);
                });
            }
        }
    }
    // Every request holds a slot until it is answered.
    let _all = slots
        .acquire_many(u32::try_from(limit).unwrap_or(u32::MAX))
        .await
        .expect("never closed");
}

/// One line on stderr per second: requests and latency of the last second, totals, and the
/// subscribers.
async fn progress_lines(recorder: Arc<Recorder>, ws: Option<Arc<WsLoad>>) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        let p = recorder.progress();
        let ws_part = ws.as_ref().map_or(String::new(), |ws| {
            let (events, lost, reconnects, connected) = ws.snapshot();
            format!(" | ws {connected} up, {events} events, {lost} lost, {reconnects} reconnects")
        });
        eprintln!(
            "[{:>4}s] {:>5} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms | ok {} refused {} failed {} in flight {}{ws_part}",
            p.elapsed.as_secs(),
            p.window_requests,
            p.window_p50_ms,
            p.window_p99_ms,
            p.ok,
            p.refused,
            p.failed,
            p.in_flight,
        );
    }
}
