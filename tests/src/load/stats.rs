//! What a load run records while it runs, and the report it ends with.
//!
//! Latencies go into HdrHistograms (microseconds, 3 significant digits, up to 10 minutes),
//! one per kind and one for everything; in open-loop runs they are measured from the time a
//! request was *due*, not when it was sent, so a stalled target shows up in the figures
//! instead of being hidden by requests that were never sent (coordinated omission).
//! Outcomes are counted by kind, error class, status and serving node, per second too.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::http::{Done, ErrorClass, Outcome};
use super::mix::Kind;

/// Largest latency a histogram holds (longer ones are clamped to it), in microseconds.
pub(crate) const MAX_LATENCY_US: u64 = 600_000_000;

/// Counts of one kind (or of all kinds together).
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    /// Latency of every finished request, µs.
    latency: Histogram<u64>,
    /// Good answers.
    ok: u64,
    /// Correct refusals (sold out).
    refused: u64,
    /// Failures by class.
    errors: BTreeMap<ErrorClass, u64>,
    /// Attempts beyond the first (order retries).
    retries: u64,
}

/// Counts of one second of the run.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Requests finished in this second.
    pub done: u64,
    /// Of those, good answers.
    pub ok: u64,
    /// Of those, failures.
    pub failed: u64,
    /// The longest latency among them (from the due time), in milliseconds: where a run's
    /// tail came from.
    pub max_ms: f64,
    /// Answers by serving node.
    pub nodes: BTreeMap<String, u64>,
}

/// The live counters, shared by every request task.
#[derive(Debug)]
pub struct Recorder {
    /// When the run started; seconds and progress count from here.
    started: Instant,
    /// Everything, behind one lock (a few thousand updates a second at most).
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    all: Tally,
    kinds: BTreeMap<Kind, Tally>,
    statuses: BTreeMap<u16, u64>,
    nodes: BTreeMap<String, u64>,
    seconds: Vec<Second>,
    /// Latencies since the last progress line.
    window: Histogram<u64>,
    in_flight: u64,
}

// === impl Tally ===

impl Tally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            ok: 0,
            refused: 0,
            errors: BTreeMap::new(),
            retries: 0,
        }
    }

    fn add(&mut self, done: &Done, latency_us: u64) {
        self.latency.saturating_record(latency_us.max(1));
        self.retries += u64::from(done.attempts.saturating_sub(1));
        match done.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Failed(class) => *self.errors.entry(class).or_default() += 1,
        }
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn summary(&self) -> TallyReport {
        TallyReport {
            requests: self.latency.len(),
            ok: self.ok,
            refused: self.refused,
            failed: self.failed(),
            retries: self.retries,
            errors: self
                .errors
                .iter()
                .map(|(class, n)| (class.name().to_owned(), *n))
                .collect(),
            latency_ms: LatencyReport::of(&self.latency),
        }
    }
}

/// An empty latency histogram (µs), as every figure of a run uses.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

// === impl Recorder ===

impl Recorder {
    /// Counters starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                all: Tally::new(),
                kinds: BTreeMap::new(),
                statuses: BTreeMap::new(),
                nodes: BTreeMap::new(),
                seconds: Vec::new(),
                window: histogram(),
                in_flight: 0,
            }),
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request is about to be sent.
    pub fn begin(&self) {
        self.lock().in_flight += 1;
    }

    /// A request finished `latency` after it was due.
    pub fn finish(&self, done: &Done, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let second = self.started.elapsed().as_secs();
        let mut inner = self.lock();
        inner.in_flight -= 1;
        inner.all.add(done, us);
        inner
            .kinds
            .entry(done.kind)
            .or_insert_with(Tally::new)
            .add(done, us);
        inner.window.saturating_record(us.max(1));
        if let Some(status) = done.status {
            *inner.statuses.entry(status).or_default() += 1;
        }
        if let Some(node) = &done.node {
            *inner.nodes.entry(node.clone()).or_default() += 1;
        }
        let index = usize::try_from(second).unwrap_or(usize::MAX);
        while inner.seconds.len() <= index {
            let next = inner.seconds.len() as u64;
            inner.seconds.push(Second {
                second: next,
                ..Second::default()
            });
        }
        let slot = &mut inner.seconds[index];
        slot.done += 1;
        slot.max_ms = slot.max_ms.max(us as f64 / 1000.0);
        match done.outcome {
            Outcome::Ok => slot.ok += 1,
            Outcome::Refused => {}
            Outcome::Failed(_) => slot.failed += 1,
        }
        if let Some(node) = &done.node {
            *slot.nodes.entry(node.clone()).or_default() += 1;
        }
    }

    /// The progress figures since the last call: requests, p50 and p99 of that window, and
    /// the totals.
    pub fn progress(&self) -> Progress {
        let mut inner = self.lock();
        let window = std::mem::replace(&mut inner.window, histogram());
        Progress {
            elapsed: self.started.elapsed(),
            window_requests: window.len(),
            window_p50_ms: window.value_at_quantile(0.5) as f64 / 1000.0,
            window_p99_ms: window.value_at_quantile(0.99) as f64 / 1000.0,
            ok: inner.all.ok,
            refused: inner.all.refused,
            failed: inner.all.failed(),
            in_flight: inner.in_flight,
        }
    }

    /// The HTTP part of the final report.
    pub fn report(&self) -> HttpReport {
        let inner = self.lock();
        HttpReport {
            all: inner.all.summary(),
            kinds: inner
                .kinds
                .iter()
                .map(|(kind, tally)| (kind.name().to_owned(), tally.summary()))
                .collect(),
            failed_idempotent: inner
                .kinds
                .iter()
                .filter(|(kind, _)| kind.idempotent())
                .map(|(_, t)| t.failed())
                .sum(),
            failed_non_idempotent: inner
                .kinds
                .iter()
                .filter(|(kind, _)| !kind.idempotent())
                .map(|(_, t)| t.failed())
                .sum(),
            statuses: inner
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            nodes: inner.nodes.clone(),
            timeline: inner.seconds.clone(),
            latency_us: inner.all.latency.clone(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// One progress line's figures.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Requests finished since the last line.
    pub window_requests: u64,
    /// Their median latency.
    pub window_p50_ms: f64,
    /// Their 99th percentile.
    pub window_p99_ms: f64,
    /// Good answers so far.
    pub ok: u64,
    /// Refusals so far.
    pub refused: u64,
    /// Failures so far.
    pub failed: u64,
    /// Requests sent and not answered yet.
    pub in_flight: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl LatencyReport {
    /// The percentiles of `latency` (recorded in µs).
    pub fn of(latency: &Histogram<u64>) -> Self {
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        Self {
            mean: latency.mean() / 1000.0,
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: latency.max() as f64 / 1000.0,
        }
    }

    /// `p50 / p99 / max ms`, one decimal each: how the chaos experiments print latency.
    pub fn p50_p99_max(&self) -> String {
        format!("{:.1} / {:.1} / {:.1} ms", self.p50, self.p99, self.max)
    }
}

/// The figures of one kind, or of all.
#[derive(Clone, Debug, Serialize)]
pub struct TallyReport {
    /// Requests finished.
    pub requests: u64,
    /// Good answers.
    pub ok: u64,
    /// Correct refusals (409 sold out).
    pub refused: u64,
    /// Failures (after the load's own retries, for orders).
    pub failed: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Failures by class.
    pub errors: BTreeMap<String, u64>,
    /// Latency, from the due time.
    pub latency_ms: LatencyReport,
}

/// The HTTP figures of a run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpReport {
    /// Every kind together.
    pub all: TallyReport,
    /// By kind.
    pub kinds: BTreeMap<String, TallyReport>,
    /// Failures of GETs and keyed orders.
    pub failed_idempotent: u64,
    /// Failures of requests that may not be repeated (logins).
    pub failed_non_idempotent: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<String, u64>,
    /// Answers by serving node (`X-Petmesh-Node`).
    pub nodes: BTreeMap<String, u64>,
    /// Per second.
    pub timeline: Vec<Second>,
    /// Every request's latency (µs, from the due time), so that runs can be pooled: the
    /// percentiles of two windows together are those of their summed histograms, not an
    /// average of theirs. Not in the JSON (`all.latency_ms` has its percentiles).
    #[serde(skip)]
    pub latency_us: Histogram<u64>,
}
