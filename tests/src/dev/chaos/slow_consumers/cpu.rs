//! Where the CPU time of a window of `slow-consumers` went, read from `/proc`: on two shared
//! cores, what the nodes spend on the storm is taken from everyone else.

use std::collections::HashMap;

use crate::cluster::TestCluster;
use crate::dev::fanout::procfs::{descendants, machine_busy_ticks, process_ticks, CpuProbe};

/// Where the CPU time of a window went: the nodes, the balancer, this run's PostgreSQL and
/// Redis (every other process descending from this one), this process (the load, the
/// subscribers, the storm and the slow readers), and everything else on the machine
/// (whatever else shares the cores).
pub(super) struct Cpu {
    /// Converts clock ticks; watches no process itself.
    clock: CpuProbe,
    nodes: Vec<u32>,
    balancer: u32,
}

/// CPU ticks of every process of the run by pid, and the machine's busy ticks.
pub(super) struct CpuSample {
    processes: HashMap<u32, u64>,
    machine: u64,
}

impl Cpu {
    pub(super) fn new(cluster: &TestCluster) -> anyhow::Result<Self> {
        Ok(Self {
            clock: CpuProbe::new(&[], &[], &[])?,
            nodes: cluster.nodes().iter().map(|n| n.pid()).collect(),
            balancer: cluster.balancer().pid(),
        })
    }

    pub(super) fn sample(&self) -> anyhow::Result<CpuSample> {
        let this = std::process::id();
        let processes = descendants(this)?
            .into_iter()
            .chain([this])
            .filter_map(|pid| Some((pid, process_ticks(pid).ok()?.total())))
            .collect();
        Ok(CpuSample {
            processes,
            machine: machine_busy_ticks()?.0,
        })
    }

    /// `nodes 1.0 s, balancer …, PostgreSQL and Redis …, load generator …, everything
    /// else …` between two samples, and the share of the machine's capacity (`cores` ×
    /// `elapsed`) that everything else took, in per cent. Per process, so that PostgreSQL backends coming and
    /// going do not skew the sums (one that ended in between is not counted).
    pub(super) fn between(
        &self,
        from: &CpuSample,
        to: &CpuSample,
        elapsed: std::time::Duration,
    ) -> (String, u64) {
        let this = std::process::id();
        // nodes, balancer, PostgreSQL and Redis, this process
        let mut groups = [0u64; 4];
        for (pid, ticks) in &to.processes {
            let spent = ticks.saturating_sub(from.processes.get(pid).copied().unwrap_or(0));
            let group = if self.nodes.contains(pid) {
                0
            } else if *pid == self.balancer {
                1
            } else if *pid == this {
                3
            } else {
                2
            };
            groups[group] += spent;
        }
        let secs = |ticks: u64| self.clock.ticks_to_seconds(ticks);
        let ours: u64 = groups.iter().sum();
        let others = secs(to.machine.saturating_sub(from.machine).saturating_sub(ours));
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let share = 100.0 * others / (cores as f64 * elapsed.as_secs_f64()).max(0.001);
        let text = format!(
            "nodes {:.1} s, balancer {:.1} s, PostgreSQL and Redis {:.1} s, load generator {:.1} s, everything else {:.1} s",
            secs(groups[0]),
            secs(groups[1]),
            secs(groups[2]),
            secs(groups[3]),
            others
        );
        (text, share.round() as u64)
    }
}
