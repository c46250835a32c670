//! What the benchmarks read from `/proc`: the CPU time (user + system, all threads) of the
//! server processes from `/proc/<pid>/stat`, of named [`ProcessGroup`]s with their
//! descendants (PostgreSQL's backends are children of its postmaster), the whole machine's
//! busy time from `/proc/stat` (to show what else was running), resident memory from
//! `/proc/<pid>/status`; and [`CpuProbe::settle`], which waits for the servers to go quiet.
//! This is the one CPU-time reader of `petmesh-dev`: `fanout`, `idle-memory`,
//! `redis-pool-bench` and `cpu-window` all sample through [`CpuProbe`].

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How often [`CpuProbe::settle`] samples.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// CPU ticks per [`SETTLE_POLL`] (all servers together) below which they count as quiet:
/// 2 ticks are 20 ms per 250 ms at the usual 100 Hz, i.e. housekeeping only.
const QUIET_TICKS: u64 = 2;

/// Consecutive quiet samples that make the servers settled.
const QUIET_SAMPLES: usize = 2;

/// CPU time of the server processes and, separately, of Redis.
#[derive(Debug)]
pub(crate) struct CpuProbe {
    /// The server processes (nodes) whose CPU is summed.
    servers: Vec<u32>,
    /// The Redis processes serving the data (one server, or a cluster's masters), summed
    /// and reported on their own; empty when not measured.
    redis: Vec<u32>,
    /// A Redis Cluster's replicas, summed and reported on their own; often empty.
    replicas: Vec<u32>,
    /// Further named groups, each reported on its own with its descendants; often empty.
    groups: Vec<ProcessGroup>,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks_per_sec: f64,
}

/// Processes whose CPU time is reported under one name, each together with its descendants,
/// alive or already reaped (so a PostgreSQL postmaster counts its backends, even those that
/// exit during the window). Written `name=pid[,pid...]` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessGroup {
    /// The name in result lines (`<name>_cpu_s`): letters, digits and `_`.
    pub name: String,
    /// The roots of the group.
    pub pids: Vec<u32>,
}

/// One reading of [`CpuProbe`], in clock ticks.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuSample {
    /// The servers' CPU time, summed.
    servers: Ticks,
    /// Redis's CPU time (0 when not measured).
    redis: Ticks,
    /// The replicas' CPU time (0 when not measured).
    replicas: Ticks,
    /// Each group's CPU time with its descendants' (user + system), in [`CpuProbe`]'s order.
    groups: Vec<u64>,
    /// Busy time of all CPUs together, whoever used it.
    machine: u64,
    /// The part of `machine` the kernel spent in interrupts and softirqs (`irq` + `softirq`).
    interrupts: u64,
}

/// CPU time of a process (or a sum of processes) in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ticks {
    /// In user space (`utime`).
    user: u64,
    /// In the kernel on the process's behalf (`stime`): system calls, and for loopback TCP
    /// much of the receiving side's network stack too.
    system: u64,
}

/// CPU seconds spent between two samples.
#[derive(Clone, Debug)]
pub(crate) struct CpuSeconds {
    /// The servers' user + system time.
    pub(crate) servers: f64,
    /// The part of `servers` spent in the kernel.
    pub(crate) servers_system: f64,
    /// Redis's user + system time (over all its serving processes); `None` when not
    /// measured.
    pub(crate) redis: Option<f64>,
    /// The replicas' user + system time; `None` when there are none.
    pub(crate) redis_replicas: Option<f64>,
    /// Each group's name and user + system time, its descendants' included.
    pub(crate) groups: Vec<(String, f64)>,
    /// Busy time of all CPUs together: the servers, Redis, the load generator, interrupt
    /// handling and whatever else runs on the machine.
    pub(crate) machine: f64,
    /// The part of `machine` spent in interrupts and softirqs. Without
    /// `CONFIG_IRQ_TIME_ACCOUNTING` a clock tick that lands in a softirq is counted here and
    /// not to the process it interrupted, so some of the measured processes' network work
    /// (on loopback: the receiving side's TCP processing) shows here instead of in theirs.
    pub(crate) interrupts: f64,
}

// === impl CpuProbe ===

impl CpuProbe {
    /// A probe for these processes; fails if one of them cannot be read.
    pub(crate) fn new(servers: &[u32], redis: &[u32], replicas: &[u32]) -> anyhow::Result<Self> {
        for &pid in servers.iter().chain(redis).chain(replicas) {
            process_ticks(pid)?;
        }
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            bail!("sysconf(_SC_CLK_TCK) failed");
        }
        Ok(Self {
            servers: servers.to_vec(),
            redis: redis.to_vec(),
            replicas: replicas.to_vec(),
            groups: Vec::new(),
            ticks_per_sec: ticks as f64,
        })
    }

    /// The same probe, also measuring `groups`; fails if a group's root cannot be read.
    pub(crate) fn with_groups(mut self, groups: &[ProcessGroup]) -> anyhow::Result<Self> {
        for &pid in groups.iter().flat_map(|g| &g.pids) {
            process_ticks(pid)?;
        }
        self.groups = groups.to_vec();
        Ok(self)
    }

    /// The processes' and the machine's CPU ticks so far.
    pub(crate) fn sample(&self) -> anyhow::Result<CpuSample> {
        let (machine, interrupts) = machine_busy_ticks()?;
        let groups = if self.groups.is_empty() {
            Vec::new()
        } else {
            let table = process_table()?;
            let mut ticks = Vec::with_capacity(self.groups.len());
            for group in &self.groups {
                ticks.push(group.ticks(&table)?);
            }
            ticks
        };
        Ok(CpuSample {
            servers: sum_ticks(&self.servers)?,
            redis: sum_ticks(&self.redis)?,
            replicas: sum_ticks(&self.replicas)?,
            groups,
            machine,
            interrupts,
        })
    }

    /// `ticks` clock ticks in seconds.
    pub(crate) fn ticks_to_seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_sec
    }

    /// The CPU seconds spent between two samples.
    pub(crate) fn seconds_between(&self, from: &CpuSample, to: &CpuSample) -> CpuSeconds {
        let secs = |a: u64, b: u64| self.ticks_to_seconds(b.saturating_sub(a));
        let system = secs(from.servers.system, to.servers.system);
        CpuSeconds {
            servers: secs(from.servers.user, to.servers.user) + system,
            servers_system: system,
            redis: (!self.redis.is_empty()).then(|| secs(from.redis.total(), to.redis.total())),
            redis_replicas: (!self.replicas.is_empty())
                .then(|| secs(from.replicas.total(), to.replicas.total())),
            groups: (self.groups.iter().zip(from.groups.iter().zip(&to.groups)))
                .map(|(group, (&a, &b))| (group.name.clone(), secs(a, b)))
                .collect(),
            machine: secs(from.machine, to.machine),
            interrupts: secs(from.interrupts, to.interrupts),
        }
    }

    /// Waits until the servers are quiet ([`QUIET_SAMPLES`] samples in a row under
    /// [`QUIET_TICKS`]), so that what the last step set off (joins announced to a room,
    /// connections torn down) is not counted in the next measurement. Gives up with a
    /// warning after `timeout`. Returns at once when there are no servers to watch.
    pub(crate) async fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.servers.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut last = self.sample()?.servers.total();
        let mut quiet = 0;
        while quiet < QUIET_SAMPLES {
            if Instant::now() >= deadline {
                eprintln!("fanout: the servers are still busy after {timeout:?}; going on");
                return Ok(());
            }
            tokio::time::sleep(SETTLE_POLL).await;
            let now = self.sample()?.servers.total();
            quiet = if now.saturating_sub(last) <= QUIET_TICKS {
                quiet + 1
            } else {
                0
            };
            last = now;
        }
        Ok(())
    }
}

// === impl CpuSeconds ===

impl CpuSeconds {
    /// The groups' CPU seconds together.
    pub(crate) fn groups_total(&self) -> f64 {
        self.groups.iter().map(|(_, secs)| secs).sum()
    }

    /// ` <name>_cpu_s=<seconds>` for every group, for a `result` line.
    pub(crate) fn group_fields(&self) -> String {
        self.groups
            .iter()
            .map(|(name, secs)| format!(" {name}_cpu_s={secs:.3}"))
            .collect()
    }
}

// === impl ProcessGroup ===

impl ProcessGroup {
    /// User + system ticks of the group's roots and their descendants, alive (from `table`)
    /// or reaped by one of them (their parents' `cutime` + `cstime`). A process that exits
    /// between two samples moves from its own ticks into its parent's reaped ones, so the
    /// difference of two readings is what the group used in between.
    fn ticks(&self, table: &HashMap<u32, ProcessStat>) -> anyhow::Result<u64> {
        let children = children_by_parent(table);
        let mut total = 0;
        let mut pending = self.pids.clone();
        for &root in &self.pids {
            if !table.contains_key(&root) {
                bail!("process {root} of group {} is gone", self.name);
            }
        }
        while let Some(pid) = pending.pop() {
            if let Some(stat) = table.get(&pid) {
                total += stat.own.total() + stat.reaped;
            }
            pending.extend(children.get(&pid).into_iter().flatten());
        }
        Ok(total)
    }
}

/// The pids of `table` by their parent's pid.
fn children_by_parent(table: &HashMap<u32, ProcessStat>) -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, stat) in table {
        children.entry(stat.ppid).or_default().push(pid);
    }
    children
}

/// The processes descending from `ancestor` (children, their children, …), not itself: a
/// run's servers, PostgreSQL's backends included.
pub(crate) fn descendants(ancestor: u32) -> anyhow::Result<Vec<u32>> {
    let children = children_by_parent(&process_table()?);
    let mut found = Vec::new();
    let mut pending = vec![ancestor];
    while let Some(pid) = pending.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            pending.push(child);
        }
    }
    Ok(found)
}

impl FromStr for ProcessGroup {
    type Err = String;

    /// `name=pid[,pid...]`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, pids) = text
            .split_once('=')
            .ok_or_else(|| format!("expected name=pid[,pid...], got {text:?}"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "a group name is letters, digits and _, got {name:?}"
            ));
        }
        let pids = pids
            .split(',')
            .map(|pid| pid.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad pid in {text:?}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            pids,
        })
    }
}

// === impl Ticks ===

impl Ticks {
    /// User + system.
    pub(crate) fn total(self) -> u64 {
        self.user + self.system
    }
}

/// utime and stime of `pids`, summed.
fn sum_ticks(pids: &[u32]) -> anyhow::Result<Ticks> {
    let mut sum = Ticks::default();
    for &pid in pids {
        let ticks = process_ticks(pid)?;
        sum.user += ticks.user;
        sum.system += ticks.system;
    }
    Ok(sum)
}

/// What one `/proc/<pid>/stat` says about CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessStat {
    /// The parent's pid.
    ppid: u32,
    /// The process's own utime and stime (all its threads).
    own: Ticks,
    /// `cutime` + `cstime`: what its children that it has waited for used, theirs included.
    reaped: u64,
}

/// utime and stime of process `pid` (all its threads).
pub(crate) fn process_ticks(pid: u32) -> anyhow::Result<Ticks> {
    Ok(process_stat(pid)?.own)
}

/// CPU ticks of the children that process `pid` has waited for (`cutime` + `cstime`): for
/// this process, what the commands it ran and reaped used.
pub(crate) fn reaped_children_ticks(pid: u32) -> anyhow::Result<u64> {
    Ok(process_stat(pid)?.reaped)
}

fn process_stat(pid: u32) -> anyhow::Result<ProcessStat> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat).with_context(|| format!("unexpected format of {path}: {stat}"))
}

/// Every process on the machine that could be read, by pid. Processes that exit while the
/// directory is scanned are left out.
fn process_table() -> anyhow::Result<HashMap<u32, ProcessStat>> {
    let mut table = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(stat) = parse_stat(&stat) {
                table.insert(pid, stat);
            }
        }
    }
    Ok(table)
}

/// Busy clock ticks of all CPUs together since boot, and the part of them in interrupts and
/// softirqs, from the first line of `/proc/stat`.
pub(crate) fn machine_busy_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy(&stat).context("unexpected format of /proc/stat")
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// Fields 4 (ppid) and 14 to 17 (utime, stime, cutime, cstime) of a `stat` line. The
/// command name (field 2) is in parentheses and may contain spaces, so counting starts after
/// its closing parenthesis.
fn parse_stat(stat: &str) -> Option<ProcessStat> {
    let (_, rest) = stat.rsplit_once(") ")?;
    // `rest` starts at field 3 (state): ppid is index 1, utime (field 14) index 11.
    let fields: Vec<&str> = rest.split_whitespace().take(15).collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcessStat {
        ppid: u32::try_from(number(1)?).ok()?,
        own: Ticks {
            user: number(11)?,
            system: number(12)?,
        },
        reaped: number(13)? + number(14)?,
    })
}

/// user + nice + system + irq + softirq + steal of the `cpu` line: everything but idle and
/// iowait (guest time is already part of user); and irq + softirq.
fn parse_machine_busy(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal, irq + softirq))
}

/// The `VmRSS:  1234 kB` line of a `status` file, in KiB.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_reads_ppid_and_ticks_despite_spaces_in_the_name() {
        let stat = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 8 4 20 0 9 0 \
                    12345 1000000 500 18446744073709551615";
        let stat = parse_stat(stat).unwrap();
        let ticks = stat.own;
        assert_eq!((ticks.user, ticks.system, ticks.total()), (250, 37, 287));
        assert_eq!((stat.ppid, stat.reaped), (1, 12));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_group_counts_its_descendants_alive_and_reaped() {
        let stat = |ppid, user, reaped| ProcessStat {
            ppid,
            own: Ticks { user, system: 1 },
            reaped,
        };
        // 10 is the root; 11 its child, 12 a grandchild; 20 is someone else's.
        let table = HashMap::from([
            (10, stat(1, 5, 100)),
            (11, stat(10, 7, 0)),
            (12, stat(11, 2, 3)),
            (20, stat(1, 1000, 1000)),
        ]);
        let group: ProcessGroup = "postgres=10".parse().unwrap();
        assert_eq!(
            group.ticks(&table).unwrap(),
            (5 + 1 + 100) + (7 + 1) + (2 + 1 + 3)
        );
        let gone: ProcessGroup = "x=99".parse().unwrap();
        assert!(gone.ticks(&table).is_err());
    }

    #[test]
    fn a_group_is_written_name_equals_pids() {
        let group: ProcessGroup = "nodes=1,2, 3".parse().unwrap();
        assert_eq!((group.name.as_str(), group.pids), ("nodes", vec![1, 2, 3]));
        assert!("nodes".parse::<ProcessGroup>().is_err());
        assert!("no des=1".parse::<ProcessGroup>().is_err());
        assert!("nodes=1,x".parse::<ProcessGroup>().is_err());
    }

    #[test]
    fn parse_machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 7 2 0 0\ncpu0 50 2 25 4500 20 1 3 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some((167, 10)));
        assert_eq!(parse_machine_busy("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn parse_vm_rss_reads_kib() {
        let status = "Name:\tpetmesh-node\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let group = ProcessGroup {
            name: "me".into(),
            pids: vec![pid],
        };
        let probe = CpuProbe::new(&[pid], &[], &[])
            .unwrap()
            .with_groups(&[group])
            .unwrap();
        let (a, b) = (probe.sample().unwrap(), probe.sample().unwrap());
        let seconds = probe.seconds_between(&a, &b);
        assert!(seconds.servers >= seconds.servers_system);
        assert_eq!((seconds.redis, seconds.redis_replicas), (None, None));
        assert_eq!(seconds.groups.len(), 1);
        assert!(seconds.groups[0].1 >= 0.0);
    }
}
