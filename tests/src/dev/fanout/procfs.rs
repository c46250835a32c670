//! What the benchmark reads from `/proc`: the CPU time (user + system, all threads) of the
//! server processes from `/proc/<pid>/stat`, the whole machine's busy time from `/proc/stat`
//! (to show what else was running), resident memory from `/proc/<pid>/status`; and
//! [`CpuProbe::settle`], which waits for the servers to go quiet.

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
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks_per_sec: f64,
}

/// One reading of [`CpuProbe`], in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSample {
    /// The servers' CPU time, summed.
    servers: Ticks,
    /// Redis's CPU time (0 when not measured).
    redis: Ticks,
    /// The replicas' CPU time (0 when not measured).
    replicas: Ticks,
    /// Busy time of all CPUs together, whoever used it.
    machine: u64,
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
#[derive(Clone, Copy, Debug)]
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
    /// Busy time of all CPUs together: the servers, Redis, the load generator, interrupt
    /// handling and whatever else runs on the machine.
    pub(crate) machine: f64,
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
            ticks_per_sec: ticks as f64,
        })
    }

    /// The processes' and the machine's CPU ticks so far.
    pub(crate) fn sample(&self) -> anyhow::Result<CpuSample> {
        Ok(CpuSample {
            servers: sum_ticks(&self.servers)?,
            redis: sum_ticks(&self.redis)?,
            replicas: sum_ticks(&self.replicas)?,
            machine: machine_busy_ticks()?,
        })
    }

    /// `ticks` clock ticks in seconds.
    pub(crate) fn ticks_to_seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_sec
    }

    /// The CPU seconds spent between two samples.
    pub(crate) fn seconds_between(&self, from: CpuSample, to: CpuSample) -> CpuSeconds {
        let secs = |a: u64, b: u64| self.ticks_to_seconds(b.saturating_sub(a));
        let system = secs(from.servers.system, to.servers.system);
        CpuSeconds {
            servers: secs(from.servers.user, to.servers.user) + system,
            servers_system: system,
            redis: (!self.redis.is_empty()).then(|| secs(from.redis.total(), to.redis.total())),
            redis_replicas: (!self.replicas.is_empty())
                .then(|| secs(from.replicas.total(), to.replicas.total())),
            machine: secs(from.machine, to.machine),
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

/// utime and stime of process `pid` (all its threads).
pub(crate) fn process_ticks(pid: u32) -> anyhow::Result<Ticks> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&stat).with_context(|| format!("unexpected format of {path}: {stat}"))
}

/// The processes descending from `ancestor` (children, their children, …), not itself: a
/// run's servers, PostgreSQL's backends included. Processes that end while `/proc` is read
/// are skipped.
pub(crate) fn descendants(ancestor: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Field 4 (ppid) is the second after the command name's closing parenthesis.
            let ppid = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![ancestor];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

/// Busy clock ticks of all CPUs together since boot, from the first line of `/proc/stat`.
pub(crate) fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy(&stat).context("unexpected format of /proc/stat")
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// Fields 14 and 15 (utime, stime) of a `stat` line. The command name (field 2) is in
/// parentheses and may contain spaces, so counting starts after its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<Ticks> {
    let (_, rest) = stat.rsplit_once(") ")?;
    // `rest` starts at field 3 (state): utime is field 14, i.e. index 11 here.
    let mut fields = rest.split_whitespace().skip(11);
    Some(Ticks {
        user: fields.next()?.parse().ok()?,
        system: fields.next()?.parse().ok()?,
    })
}

/// user + nice + system + irq + softirq + steal of the `cpu` line: everything but idle and
/// iowait (guest time is already part of user).
fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
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
    fn parse_stat_ticks_adds_utime_and_stime_despite_spaces_in_the_name() {
        let stat = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 \
                    12345 1000000 500 18446744073709551615";
        let ticks = parse_stat_ticks(stat).unwrap();
        assert_eq!((ticks.user, ticks.system, ticks.total()), (250, 37, 287));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parse_machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 7 2 0 0\ncpu0 50 2 25 4500 20 1 3 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(167));
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
        let probe = CpuProbe::new(&[pid], &[], &[]).unwrap();
        let (a, b) = (probe.sample().unwrap(), probe.sample().unwrap());
        let seconds = probe.seconds_between(a, b);
        assert!(seconds.servers >= seconds.servers_system);
        assert_eq!((seconds.redis, seconds.redis_replicas), (None, None));
    }
}
