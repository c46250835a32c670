//! The results of a fan-out round, from the subscribers' samples and the CPU readings, as a
//! readable summary (stderr) and a `result key=value ...` line (stdout) for the script.

use std::collections::BTreeMap;
use std::time::Duration;

use super::procfs::CpuSeconds;
use super::round::{FanoutArgs, PublisherReport, SubscriberReport};
use super::stats::Latencies;

/// The results of a round.
#[derive(Debug)]
pub(super) struct Outcome {
    /// `petmesh` or `socket.io`.
    contender: &'static str,
    /// Subscriber connections.
    subscribers: usize,
    /// Rooms they are spread over.
    rooms: usize,
    /// Publisher connections.
    publishers: usize,
    /// Deliveries per second offered: rate × subscribers per room.
    target_per_sec: f64,
    /// Length of the window, seconds.
    window_secs: f64,
    /// Window messages sent.
    sent: u64,
    /// Window deliveries expected: sent × subscribers per room.
    expected: u64,
    /// Window deliveries received.
    received: u64,
    /// Latencies of the window deliveries.
    latencies: Latencies,
    /// How long the drain took.
    drained: Duration,
    /// Subscribers whose connection ended early, by reason.
    ended: BTreeMap<String, usize>,
    /// Errors the server sent to subscribers.
    errors: u64,
    /// The last of those errors.
    last_error: Option<String>,
}

impl Outcome {
    /// Gathers the subscribers' samples of window messages (sequence numbers from
    /// `first_seq` on).
    pub(super) fn new(
        args: &FanoutArgs,
        first_seq: u64,
        publisher: &PublisherReport,
        reports: Vec<SubscriberReport>,
        drained: Duration,
    ) -> Self {
        let expected = publisher.in_window * args.members_per_room() as u64;
        let mut samples = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut ended = BTreeMap::new();
        let (mut errors, mut last_error) = (0, None);
        for report in reports {
            let in_window = report.samples.iter().filter(|(seq, _)| *seq >= first_seq);
            samples.extend(in_window.map(|&(_, latency_us)| latency_us));
            if let Some(reason) = report.ended {
                *ended.entry(reason).or_default() += 1;
            }
            errors += report.errors;
            last_error = report.last_error.or(last_error);
        }
        Self {
            contender: args.target.system.name(),
            subscribers: args.subscribers,
            rooms: args.rooms,
            publishers: args.publishers,
            target_per_sec: args.rate * args.members_per_room() as f64,
            window_secs: publisher.window.as_secs_f64(),
            sent: publisher.in_window,
            expected,
            received: samples.len() as u64,
            latencies: Latencies::new(samples),
            drained,
            ended,
            errors,
            last_error,
        }
    }

    /// Deliveries expected but not received (duplicates would make it negative).
    fn lost(&self) -> i64 {
        self.expected as i64 - self.received as i64
    }

    /// Whether nothing was lost and no connection ended early.
    pub(super) fn healthy(&self) -> bool {
        self.lost() == 0 && self.ended.is_empty()
    }

    /// Prints the summary to stderr and the `result` line to stdout; `client_cpu` is the
    /// load generator's own CPU time over the window, to show whether it kept up, and
    /// `sampled` the wall time between the two CPU samples (the window and the drain: what
    /// CPU seconds are to be divided by to get cores).
    pub(super) fn print(&self, cpu: &CpuSeconds, client_cpu: f64, sampled: Duration) {
        let per_sec = self.received as f64 / self.window_secs;
        let ms = |v: Option<f64>| v.map_or("nan".into(), |v| format!("{v:.3}"));
        let (p50, p99, max) = (
            ms(self.latencies.percentile_ms(50.0)),
            ms(self.latencies.percentile_ms(99.0)),
            ms(self.latencies.max_ms()),
        );
        let redis = cpu.redis.map_or("nan".into(), |r| format!("{r:.3}"));
        let replicas = cpu
            .redis_replicas
            .map_or("nan".into(), |r| format!("{r:.3}"));
        // What the machine was busy with beyond the servers, Redis, the groups and us:
        // interrupts, other processes. Large values mean the figures are disturbed. Every
        // reading is rounded to a clock tick per process, so on a quiet machine the
        // difference can come out a little below zero; that is shown as zero.
        let other = (cpu.machine
            - cpu.servers
            - cpu.redis.unwrap_or(0.0)
            - cpu.redis_replicas.unwrap_or(0.0)
            - cpu.groups_total()
            - client_cpu)
            .max(0.0);
        let group_fields = cpu.group_fields();
        let group_text: String = cpu
            .groups
            .iter()
            .map(|(name, secs)| format!(", {name} {secs:.2}"))
            .collect();
        eprintln!(
            "fanout: {}: {per_sec:.0}/s delivered (target {:.0}/s), {} of {} received, \
             p50 {p50} ms, p99 {p99} ms, max {max} ms, drained in {:.0?}; CPU s: servers {:.2} \
             ({:.2} in the kernel), Redis {redis} (replicas {replicas}){}, load generator {client_cpu:.2}, \
             anything else {other:.2}{}",
            self.contender,
            self.target_per_sec,
            self.received,
            self.expected,
            self.drained,
            cpu.servers,
            cpu.servers_system,
            group_text,
            self.problems(),
        );
        println!(
            "result contender={} subscribers={} rooms={} publishers={} target_per_s={:.0} window_s={:.3} sent={} \
             expected={} received={} lost={} delivered_per_s={per_sec:.1} cpu_window_s={:.3} p50_ms={p50} \
             p99_ms={p99} max_ms={max} server_cpu_s={:.3} server_sys_s={:.3} \
             redis_cpu_s={redis} redis_replica_cpu_s={replicas}{group_fields} client_cpu_s={client_cpu:.3} \
             other_cpu_s={other:.3} interrupts_cpu_s={:.3} disconnects={} errors={}",
            self.contender,
            self.subscribers,
            self.rooms,
            self.publishers,
            self.target_per_sec,
            self.window_secs,
            self.sent,
            self.expected,
            self.received,
            self.lost(),
            sampled.as_secs_f64(),
            cpu.servers,
            cpu.servers_system,
            cpu.interrupts,
            self.ended.values().sum::<usize>(),
            self.errors,
        );
    }

    /// Early disconnects and server errors, for the summary; empty when there were none.
    fn problems(&self) -> String {
        let mut text = String::new();
        if !self.ended.is_empty() {
            let reasons: Vec<String> = self
                .ended
                .iter()
                .map(|(reason, n)| format!("{n}x {reason}"))
                .collect();
            text.push_str(&format!("; ended early: {}", reasons.join(", ")));
        }
        if let Some(e) = &self.last_error {
            text.push_str(&format!("; {} errors, last: {e}", self.errors));
        }
        text
    }
}
