//! Where the CPU time of a window of `slow-consumers` went, read from `/proc`: on two shared
//! cores, what the nodes spend on the storm is taken from everyone else.

use crate::cluster::TestCluster;
use crate::dev::fanout::procfs::{descendants, group_ticks, CpuProbe};

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

/// Clock ticks of the nodes, the balancer, the other servers, this process, and the machine.
pub(super) type CpuSample = (Vec<u64>, u64);

impl Cpu {
    pub(super) fn new(cluster: &TestCluster) -> anyhow::Result<Self> {
        Ok(Self {
            clock: CpuProbe::new(&[], &[], &[])?,
            nodes: cluster.nodes().iter().map(|n| n.pid()).collect(),
            balancer: cluster.balancer().pid(),
        })
    }

    pub(super) fn sample(&self) -> anyhow::Result<CpuSample> {
        let servers: Vec<u32> = descendants(std::process::id())
            .into_iter()
            .filter(|pid| *pid != self.balancer && !self.nodes.contains(pid))
            .collect();
        group_ticks(&[
            &self.nodes,
            &[self.balancer],
            &servers,
            &[std::process::id()],
        ])
    }

    /// `nodes 1.0 s, balancer …, PostgreSQL and Redis …, load generator …, everything
    /// else …` between two samples. (PostgreSQL backends that ended in between are not
    /// counted.)
    pub(super) fn between(&self, from: &CpuSample, to: &CpuSample) -> String {
        let secs = |a: u64, b: u64| self.clock.ticks_to_seconds(b.saturating_sub(a));
        let groups: Vec<f64> = from
            .0
            .iter()
            .zip(&to.0)
            .map(|(a, b)| secs(*a, *b))
            .collect();
        let machine = secs(from.1, to.1);
        format!(
            "nodes {:.1} s, balancer {:.1} s, PostgreSQL and Redis {:.1} s, load generator {:.1} s, everything else {:.1} s",
            groups[0],
            groups[1],
            groups[2],
            groups[3],
            (machine - groups.iter().sum::<f64>()).max(0.0)
        )
    }
}
