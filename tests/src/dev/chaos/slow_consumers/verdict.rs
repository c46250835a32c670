//! The verdict of `slow-consumers`: its figures and checks, from what the windows and the
//! disturbance measured.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use super::disturbance::{self, Outcome, Round};
use super::Window;
use crate::dev::chaos::{ms, Findings};
use crate::load::stats::{histogram, LatencyReport};
use crate::load::ws::WsReport;

/// Disturbed p99 may be at most this many tenths of the quiet p99 (+20 %).
const P99_BOUND_TENTHS: u64 = 12;

/// Most of the machine's CPU (per cent) other processes may take in a window for the
/// latency comparison to count.
const MAX_OTHERS_SHARE: u64 = 25;

/// Everything one run measured.
pub(super) struct Measured {
    pub storm_clients: usize,
    /// Slow readers of each disturbed window, stopped and slow together.
    pub slow_readers: usize,
    /// Storms in each disturbed window.
    pub storms: u32,
    /// The storm clients' first connection, before the first quiet window.
    pub connected: Round,
    /// The quiet windows, in order: the first before the first disturbed window, then one
    /// after each.
    pub quiet: Vec<Window>,
    /// The disturbed windows, in order.
    pub disturbed: Vec<Disturbed>,
    /// Time between a disturbed window's cuts (the first at its start).
    pub storm_every: Duration,
    /// Large pets created, and creations that failed.
    pub published: u64,
    pub publish_failures: u64,
    /// The normal subscribers.
    pub subscribers: WsReport,
}

/// One disturbed window: what the load measured in it and what the disturbance saw.
pub(super) struct Disturbed {
    pub window: Window,
    pub outcome: Outcome,
}

/// Several windows as one: the percentiles of their summed histograms (an average of their
/// p99s would be another figure, lower than the pooled one when the windows differ).
struct Pooled {
    http: LatencyReport,
    delivery: LatencyReport,
}

impl Pooled {
    fn of<'a>(windows: impl Iterator<Item = &'a Window> + Clone) -> Self {
        Self {
            http: pooled(windows.clone().map(|w| &w.load.http.latency_us)),
            delivery: pooled(windows.map(|w| &w.delivery.histogram_us)),
        }
    }
}

/// The percentiles of several histograms summed.
fn pooled<'a>(histograms: impl Iterator<Item = &'a Histogram<u64>>) -> LatencyReport {
    let mut sum = histogram();
    for h in histograms {
        // Same bounds as every histogram of the load: adding cannot fail.
        let _ = sum.add(h);
    }
    LatencyReport::of(&sum)
}

/// The figures and checks of a run.
pub(super) fn findings(m: &Measured) -> Findings {
    let mut findings = Findings::default();
    let quiet = Pooled::of(m.quiet.iter());
    let disturbed = Pooled::of(m.disturbed.iter().map(|d| &d.window));
    findings.key(
        "HTTP p99 quiet / disturbed",
        format!("{:.1} / {:.1} ms", quiet.http.p99, disturbed.http.p99),
    );
    findings.key(
        "delivery p99 quiet / disturbed",
        format!(
            "{:.1} / {:.1} ms",
            quiet.delivery.p99, disturbed.delivery.p99
        ),
    );
    let windows = in_order(m);
    for (name, window) in &windows {
        findings.figure(
            &format!("HTTP latency p50 / p99 / max, {name} (from the due time)"),
            window.load.http.all.latency_ms.p50_p99_max(),
        );
        findings.figure(
            &format!("delivery latency p50 / p99 / max, {name} (written → parsed)"),
            window.delivery.latency.p50_p99_max(),
        );
    }
    for (which, pooled) in [("quiet", &quiet), ("disturbed", &disturbed)] {
        findings.figure(
            &format!("HTTP latency p50 / p99 / max, {which} windows pooled"),
            pooled.http.p50_p99_max(),
        );
        findings.figure(
            &format!("delivery latency p50 / p99 / max, {which} windows pooled"),
            pooled.delivery.p50_p99_max(),
        );
    }
    findings.figure(
        "delivery p99 in the disturbed windows' cut seconds / reconnecting seconds / other seconds (events)",
        delivery_by_phase(
            m.disturbed
                .iter()
                .map(|d| (&d.window.delivery, d.outcome.reconnects.as_slice())),
            m.storm_every,
        ),
    );
    findings.figure(
        "HTTP requests in each window, in order",
        windows
            .iter()
            .map(|(_, w)| w.load.http.all.requests.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
    );
    for (name, window) in &windows {
        findings.figure(&format!("CPU time in {name}"), &window.cpu);
    }
    findings.figure(
        "large pets created (≈ 20 KB events) / failed",
        format!("{} / {}", m.published, m.publish_failures),
    );
    storm_figures(&mut findings, m);
    reader_figures(&mut findings, m);
    let subscribers = &m.subscribers;
    findings.figure("websocket subscribers", subscribers.subscribers);
    findings.figure("websocket events received", subscribers.events);
    findings.figure("websocket reconnects", subscribers.reconnects);

    let us = |ms: f64| (ms * 1000.0).round() as u64;
    for (what, quiet_p99, disturbed_p99) in [
        ("HTTP", quiet.http.p99, disturbed.http.p99),
        ("delivery", quiet.delivery.p99, disturbed.delivery.p99),
    ] {
        findings.check_at_most(
            &format!(
                "{what} p99 in the disturbed windows, µs (at most 1.2 × the quiet windows' {} µs)",
                us(quiet_p99)
            ),
            us(disturbed_p99),
            us(quiet_p99) * P99_BOUND_TENTHS / 10,
        );
    }
    // The comparison means something only if the windows had the machine to themselves: a
    // quiet window slowed by other work makes any disturbance look harmless (seen: a PASS
    // whose quiet p99 was 8 s while other builds took half the machine).
    findings.check_at_most(
        "CPU other processes took in any window, per cent of the machine (the largest)",
        windows
            .iter()
            .map(|(_, w)| w.others_share)
            .max()
            .unwrap_or(0),
        MAX_OTHERS_SHARE,
    );
    findings.check(
        "failed idempotent requests",
        windows
            .iter()
            .map(|(_, w)| w.load.http.failed_idempotent)
            .sum(),
        0,
    );
    findings.check("websocket events lost", subscribers.lost, 0);
    findings.check("websocket events duplicated", subscribers.duplicates, 0);
    findings.check(
        "websocket subscribers reconnected",
        subscribers.reconnects,
        0,
    );
    findings.check(
        "websocket subscribers not connected at the end",
        (subscribers.subscribers - subscribers.connected_at_end) as u64,
        0,
    );
    let rounds = || m.disturbed.iter().flat_map(|d| &d.outcome.reconnects);
    findings.check(
        "storm clients not subscribed again after a cut (all cuts)",
        rounds()
            .map(|round| m.storm_clients.saturating_sub(round.subscribed) as u64)
            .sum(),
        0,
    );
    findings.check(
        "storm cuts made",
        rounds().count() as u64,
        u64::from(m.storms) * m.disturbed.len() as u64,
    );
    let readers = || m.disturbed.iter().flat_map(|d| &d.outcome.readers);
    let ended = readers().filter(|r| r.ended.is_ok()).count() as u64;
    let slow_total = (m.slow_readers * m.disturbed.len()) as u64;
    findings.check(
        "slow readers whose connection did not end (or that never connected)",
        slow_total - ended.min(slow_total),
        0,
    );
    let closes: u64 = m
        .disturbed
        .iter()
        .map(|d| d.outcome.slow_consumer_closes)
        .sum();
    findings.check(
        "slow readers the nodes did not count as slow consumers (1013)",
        slow_total.saturating_sub(closes),
        0,
    );
    let pooled_json = |p: &Pooled| json!({"httpMs": p.http, "deliveryMs": p.delivery});
    findings.detail = json!({
        "quiet": pooled_json(&quiet),
        "disturbed": pooled_json(&disturbed),
        "windows": windows.iter().map(|(name, w)| json!({
            "window": name,
            "load": w.load,
            "deliveryMs": w.delivery.latency,
            "deliveryTimeline": w.delivery.timeline,
            "cpu": w.cpu,
        })).collect::<Vec<_>>(),
        "websocket": subscribers,
    });
    findings
}

/// Every window in the order it ran, with its name: quiet window 1, disturbed window 1, quiet
/// window 2, …
fn in_order(m: &Measured) -> Vec<(String, &Window)> {
    let mut windows = Vec::new();
    for (n, quiet) in (1..).zip(&m.quiet) {
        windows.push((format!("quiet window {n}"), quiet));
        if let Some(disturbed) = m.disturbed.get(n - 1) {
            windows.push((format!("disturbed window {n}"), &disturbed.window));
        }
    }
    windows
}

/// Where the disturbed windows' delivery tail sits: the p99 of their seconds grouped as the
/// cut seconds (the first of each storm), the seconds until that storm's clients had all
/// subscribed again, and the others (slow readers only), each window with its storms' rounds.
/// Seconds keep two significant digits.
fn delivery_by_phase<'a>(
    windows: impl Iterator<Item = (&'a crate::load::ws::Delivery, &'a [Round])>,
    storm_every: Duration,
) -> String {
    let every = storm_every.as_secs().max(1);
    let mut phases = [histogram(), histogram(), histogram()];
    for (delivery, reconnects) in windows {
        for (second, latency) in (0u64..).zip(&delivery.seconds_us) {
            let (storm, offset) = ((second / every) as usize, second % every);
            let reconnected_by = reconnects
                .get(storm)
                .and_then(|round| round.all_subscribed_after)
                .map_or(every, |after| after.as_secs_f64().ceil() as u64);
            let phase = match offset {
                0 => 0,
                o if o <= reconnected_by => 1,
                _ => 2,
            };
            // Every latency histogram of the load has the same bounds: adding cannot fail.
            let _ = phases[phase].add(latency);
        }
    }
    phases
        .iter()
        .map(|phase| match phase.len() {
            0 => "-".to_owned(),
            events => format!("{:.1} ms ({events})", LatencyReport::of(phase).p99),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The storm's rounds: the first connection and every reconnection after a cut.
fn storm_figures(findings: &mut Findings, m: &Measured) {
    let failures = |round: &Round| {
        let failures = round
            .failures
            .iter()
            .map(|(what, count)| format!("{what} ×{count}"))
            .collect::<Vec<_>>()
            .join(", ");
        if failures.is_empty() {
            "none".into()
        } else {
            failures
        }
    };
    let rounds = std::iter::once((
        "storm clients' first connection (before the first quiet window)".to_owned(),
        &m.connected,
    ))
    .chain(m.disturbed.iter().zip(1..).flat_map(|(d, window)| {
        d.outcome.reconnects.iter().zip(1..).map(move |(round, n)| {
            (
                format!(
                    "disturbed window {window}, storm {n}: cut, every client reconnecting at once"
                ),
                round,
            )
        })
    }));
    for (what, round) in rounds {
        findings.figure(
            &what,
            format!(
                "{} of {} subscribed, all by {}; failed attempts (retried): {}",
                round.subscribed,
                m.storm_clients,
                round.all_subscribed_after.map_or("never".into(), ms),
                failures(round)
            ),
        );
    }
}

/// What became of the slow readers, all disturbed windows together.
fn reader_figures(findings: &mut Findings, m: &Measured) {
    let outcomes = || m.disturbed.iter().map(|d| &d.outcome);
    let readers: Vec<_> = outcomes().flat_map(|o| &o.readers).collect();
    let ended = readers.iter().filter(|r| r.ended.is_ok()).count();
    let close_1013 = readers
        .iter()
        .filter(|r| matches!(r.ended, Ok(Some(1013))))
        .count();
    findings.key(
        "slow readers closed",
        format!("{ended} of {}", m.slow_readers * m.disturbed.len()),
    );
    findings.figure(
        "slow readers closed by the node (connection ended), with a 1013 close frame",
        format!("{ended}, {close_1013}"),
    );
    findings.figure(
        "bytes the slowly reading readers read in their window (each)",
        readers
            .iter()
            .filter(|r| !r.stopped)
            .map(|r| r.read_in_window.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    findings.figure(
        "nodes' slow-consumer closes during the disturbances",
        outcomes().map(|o| o.slow_consumer_closes).sum::<u64>(),
    );
    findings.figure(
        "every slow reader closed, after each disturbed window",
        outcomes()
            .map(|o| {
                o.detected_after.map_or_else(
                    || format!("not within {} s", disturbance::DETECTION.as_secs()),
                    ms,
                )
            })
            .collect::<Vec<_>>()
            .join(" / "),
    );
    for (reader, failure) in readers
        .iter()
        .filter_map(|r| r.ended.as_ref().err().map(|e| (r, e)))
    {
        let kind = if reader.stopped { "stopped" } else { "slow" };
        findings.figure(&format!("{kind} reader not closed"), failure);
    }
    for failure in outcomes().flat_map(|o| &o.reader_failures) {
        findings.figure("slow reader failed to connect", failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(ms: std::ops::RangeInclusive<u64>) -> Histogram<u64> {
        let mut latency = crate::load::stats::histogram();
        for ms in ms {
            latency.saturating_record(ms * 1000);
        }
        latency
    }

    #[test]
    fn pooling_takes_the_percentiles_of_both_windows_together() {
        let (fast, slow) = (recorded(1..=100), recorded(101..=200));
        let both = pooled([&fast, &slow].into_iter());
        // 200 samples: p99 is the 198th, p50 the 100th; averaging the windows' p99s would
        // give ≈ 149 ms.
        assert!((197.0..=199.0).contains(&both.p99), "{}", both.p99);
        assert!((99.0..=101.0).contains(&both.p50), "{}", both.p50);
        assert_eq!(both.max.round(), 200.0);
    }

    #[test]
    fn the_disturbed_window_s_seconds_are_grouped_by_phase() {
        // Two storms 4 s apart: the first complete after 1.5 s (seconds 1 and 2 reconnecting),
        // the second never (seconds 5 to 7 reconnecting).
        let every = Duration::from_secs(4);
        let reconnects = [
            Round {
                all_subscribed_after: Some(Duration::from_millis(1500)),
                ..Round::default()
            },
            Round::default(),
        ];
        let second_ms = [50, 20, 20, 5, 60, 30, 30, 30];
        let delivery = crate::load::ws::Delivery {
            latency: LatencyReport::of(&recorded(1..=1)),
            timeline: Vec::new(),
            histogram_us: recorded(1..=1),
            seconds_us: second_ms.iter().map(|&ms| recorded(ms..=ms)).collect(),
        };
        assert_eq!(
            delivery_by_phase(std::iter::once((&delivery, &reconnects[..])), every),
            "60.0 ms (2) / 30.0 ms (5) / 5.0 ms (1)"
        );
        // A second window with the same seconds and rounds counts every second again.
        assert_eq!(
            delivery_by_phase([(&delivery, &reconnects[..]); 2].into_iter(), every),
            "60.0 ms (4) / 30.0 ms (10) / 5.0 ms (2)"
        );
    }
}
