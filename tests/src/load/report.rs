//! The end of a run: one [`Report`], written as JSON (`--json FILE`) and printed as a table.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{HttpReport, TallyReport};
use super::ws::WsReport;
use super::LoadOptions;

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The target.
    pub url: String,
    /// `open` (fixed rate) or `closed` (N connections).
    pub mode: String,
    /// Requests per second asked for (open loop).
    pub rate: Option<f64>,
    /// Connections (closed loop) or most requests outstanding (open loop).
    pub connections: usize,
    /// Seconds requests were started for.
    pub duration_secs: f64,
    /// The mix, as given to `--mix`.
    pub mix: String,
    /// Requests answered per second of the duration.
    pub throughput: f64,
    /// The HTTP figures.
    pub http: HttpReport,
    /// The WebSocket figures, when there were subscribers.
    pub websocket: Option<WsReport>,
}

impl Report {
    /// The report of a run with `options` against `url`.
    pub fn new(
        url: &str,
        options: &LoadOptions,
        http: HttpReport,
        websocket: Option<WsReport>,
    ) -> Self {
        let secs = options.duration.as_secs_f64();
        Self {
            url: url.to_owned(),
            mode: if options.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            rate: options.rate,
            connections: options.connections,
            duration_secs: secs,
            mix: options.mix.to_string(),
            throughput: http.all.requests as f64 / secs.max(0.001),
            http,
            websocket,
        }
    }

    /// The report as a table for humans.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let how = match self.rate {
            Some(rate) => format!(
                "open loop at {rate} req/s (≤ {} in flight)",
                self.connections
            ),
            None => format!("closed loop over {} connections", self.connections),
        };
        let _ = writeln!(
            out,
            "petmesh-load: {} for {:.0} s, {how}, mix {}",
            self.url, self.duration_secs, self.mix
        );
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "kind",
            "requests",
            "ok",
            "refused",
            "failed",
            "retries",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for (name, tally) in &self.http.kinds {
            row(&mut out, name, tally);
        }
        row(&mut out, "all", &self.http.all);
        let _ = writeln!(out, "throughput: {:.1} req/s", self.throughput);
        let _ = writeln!(
            out,
            "failed: {} idempotent (GET, keyed orders), {} non-idempotent (login)",
            self.http.failed_idempotent, self.http.failed_non_idempotent
        );
        let errors = joined(self.http.all.errors.iter().map(|(c, n)| format!("{c} {n}")));
        let _ = writeln!(
            out,
            "errors: {}",
            if errors.is_empty() {
                "none".into()
            } else {
                errors
            }
        );
        let _ = writeln!(
            out,
            "statuses: {}",
            joined(self.http.statuses.iter().map(|(s, n)| format!("{s} {n}")))
        );
        let answered: u64 = self.http.nodes.values().sum();
        let _ = writeln!(
            out,
            "nodes: {}",
            joined(self.http.nodes.iter().map(|(node, n)| format!(
                "{node} {n} ({:.1} %)",
                100.0 * *n as f64 / answered.max(1) as f64
            )))
        );
        if let Some(ws) = &self.websocket {
            let _ = writeln!(
                out,
                "websocket: {} subscribers of {}, {} events received, {} lost ({} behind at the end), {} duplicates, {} reconnects, {} resyncs, {} failed connects, {} connected at the end",
                ws.subscribers,
                ws.topic,
                ws.events,
                ws.lost,
                ws.behind_at_end,
                ws.duplicates,
                ws.reconnects,
                ws.resyncs,
                ws.connect_failures,
                ws.connected_at_end,
            );
        }
        out
    }
}

fn row(out: &mut String, name: &str, t: &TallyReport) {
    let l = &t.latency_ms;
    let _ = writeln!(
        out,
        "{name:<8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        t.requests, t.ok, t.refused, t.failed, t.retries, l.p50, l.p90, l.p99, l.p999, l.max
    );
}

fn joined(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}
