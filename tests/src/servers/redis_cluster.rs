//! A private Redis Cluster: six `redis-server` processes (three masters, one replica each) on
//! free loopback ports, joined with `redis-cli --cluster create`; or another shape
//! ([`RedisCluster::start_with`]), down to one master owning every slot, which benchmarks
//! compare with three (`scripts/bench-redis`).
//!
//! It exists so that petmesh's `redis.mode = cluster` can be tested against the real thing,
//! failovers included: a member can be SIGKILLed ([`RedisCluster::kill`]) and
//! [`RedisCluster::wait_failover`] waits until a replica serves its slots. The members are
//! started the way [`RedisServer`](super::RedisServer) starts its one process (no
//! persistence, killed with the harness), plus cluster mode with a node timeout of one second,
//! so a failover takes a couple of seconds rather than the default fifteen or more.

mod migrate;
mod topology;

pub use topology::SLOTS;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use super::redis::{spawn_redis, wait_ready};
use super::{free_port, log_tail, read_log, start_on_free_port, READY_POLL};
use crate::process::{kill_with_parent, send_signal};

/// The cluster tool, looked up on `PATH` (Debian package `redis-tools`).
const CLI: &str = "redis-cli";

/// How many masters [`RedisCluster::start`] creates; the slots are split evenly between them.
const MASTERS: usize = 3;

/// How many replicas each master has in [`RedisCluster::start`].
const REPLICAS: usize = 1;

/// `cluster-node-timeout`: how long a member may be unreachable before it is flagged as
/// failing. A failover takes about twice this plus an election.
const NODE_TIMEOUT_MS: u32 = 1000;

/// How long `redis-cli --cluster create` may take, and then the cluster to become whole.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one probe of one member (a connection and a command) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running Redis Cluster owned by the harness; every member is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// Masters the cluster was created with; [`RedisCluster::check_whole`] wants as many.
    masters: usize,
    /// Replicas per master the cluster was created with.
    replicas: usize,
    /// The members in start order; a killed one stays, marked, so ports and logs remain
    /// known.
    members: Vec<Member>,
    /// Each member's working directory, configuration and log. Declared last so it is
    /// removed after the members are dead.
    dir: TempDir,
}

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Member {
    /// The process; SIGKILLed on drop unless [`RedisCluster::kill`] did it already.
    child: Child,
    /// Its client port on 127.0.0.1 (the cluster bus is on another free port).
    port: u16,
    /// Its log, for error messages.
    log_path: PathBuf,
    /// Whether it was killed on purpose; it is not probed any more.
    killed: bool,
}

/// A member of the cluster as tests see it: where it listens and which process it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterProcess {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its process id, for signals.
    pub pid: u32,
}

/// What [`RedisCluster::wait_failover`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Failover {
    /// From the call until every surviving member agreed on the new master and reported
    /// `cluster_state:ok`.
    pub elapsed: Duration,
    /// The member that serves the slot now.
    pub master: ClusterProcess,
}

// === impl RedisCluster ===

impl RedisCluster {
    /// Starts six members, creates the cluster (three masters, a replica each) and returns
    /// once every member reports `cluster_state:ok` and sees every slot assigned and every
    /// replica attached (see [`RedisCluster::check_whole`]).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(MASTERS, REPLICAS).await
    }

    /// Starts a cluster of `masters` masters with `replicas` replicas each and returns once it
    /// is whole, as [`RedisCluster::start`] does. One master (which may have no replica) gets
    /// every slot with `CLUSTER ADDSLOTSRANGE`, because `redis-cli --cluster create` wants at
    /// least three; any other shape is made by that tool, which refuses fewer than three.
    pub async fn start_with(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        if masters == 0 || (masters == 1 && replicas > 0) || masters == 2 {
            bail!("a Redis Cluster here has one master without replicas, or three or more masters; not {masters} with {replicas} each");
        }
        let dir = tempfile::Builder::new()
            .prefix("petmesh-redis-cluster-")
            .tempdir()
            .context("creating a temporary directory for the Redis Cluster")?;
        let mut members = Vec::with_capacity(masters * (1 + replicas));
        for index in 0..members.capacity() {
            members.push(Member::start(dir.path(), index).await?);
        }
        let cluster = Self {
            masters,
            replicas,
            members,
            dir,
        };
        if masters == 1 {
            cluster.members[0]
                .query::<()>(
                    redis::cmd("CLUSTER")
                        .arg("ADDSLOTSRANGE")
                        .arg(0)
                        .arg(SLOTS - 1),
                )
                .await
                .context("assigning every slot to the one master")?;
        } else {
            cluster.create().await?;
        }
        poll("the Redis Cluster to form", FORM_TIMEOUT, || {
            cluster.check_whole()
        })
        .await?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:PORT` of every member, in start order (killed ones included).
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| format!("redis://127.0.0.1:{}", member.port))
            .collect()
    }

    /// Every member's URL, comma-separated: the `REDIS_URL` a node in cluster mode gets.
    pub fn seed_urls(&self) -> String {
        self.urls().join(",")
    }

    /// The members still running, in start order.
    pub fn processes(&self) -> Vec<ClusterProcess> {
        self.live().map(Member::process).collect()
    }

    /// The running members that are masters, and those that are replicas, each as it sees
    /// itself (`myself` in its `CLUSTER NODES`), in start order.
    pub async fn roles(&self) -> anyhow::Result<(Vec<ClusterProcess>, Vec<ClusterProcess>)> {
        let (mut masters, mut replicas) = (Vec::new(), Vec::new());
        for member in self.live() {
            let nodes: String = member.query(redis::cmd("CLUSTER").arg("NODES")).await?;
            let view = topology::parse(&nodes)?;
            let me = view
                .iter()
                .find(|m| m.flags.iter().any(|f| f == "myself"))
                .context("CLUSTER NODES without `myself`")?;
            if me.is_master() {
                masters.push(member.process());
            } else {
                replicas.push(member.process());
            }
        }
        Ok((masters, replicas))
    }

    /// The temporary directory holding each member's directory; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the member on `port` has logged so far (empty for an unknown port).
    pub fn log(&self, port: u16) -> String {
        self.members
            .iter()
            .find(|member| member.port == port)
            .map(|member| read_log(&member.log_path))
            .unwrap_or_default()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running member).
    pub async fn slot(&self, key: &str) -> anyhow::Result<u32> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("KEYSLOT").arg(key);
        self.ask_any(&cmd).await
    }

    /// The master serving `slot`, as the first running member that answers sees it.
    pub async fn master_for_slot(&self, slot: u32) -> anyhow::Result<ClusterProcess> {
        let nodes: String = self.ask_any(redis::cmd("CLUSTER").arg("NODES")).await?;
        let view = topology::parse(&nodes)?;
        let owner = topology::owner(&view, slot)
            .with_context(|| format!("no healthy master serves slot {slot}"))?;
        self.process(owner.port)
    }

    /// The master serving `key`'s slot.
    pub async fn master_for_key(&self, key: &str) -> anyhow::Result<ClusterProcess> {
        self.master_for_slot(self.slot(key).await?).await
    }

    /// SIGKILLs the member on `port` and reaps it, as a crash would end it.
    pub fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        let member = self
            .members
            .iter_mut()
            .find(|member| member.port == port && !member.killed)
            .with_context(|| format!("no running member on port {port}"))?;
        send_signal(member.child.id(), libc::SIGKILL)
            .with_context(|| format!("killing the member on port {port}"))?;
        member.child.wait().context("reaping the killed member")?;
        member.killed = true;
        Ok(())
    }

    /// Waits up to `timeout` until a running member serves `slot` as master in the view of
    /// every running member, and all of them report `cluster_state:ok` again. Call it right
    /// after killing the slot's master: the time it reports is counted from the call.
    pub async fn wait_failover(&self, slot: u32, timeout: Duration) -> anyhow::Result<Failover> {
        let start = Instant::now();
        let what = format!("a running master for slot {slot}");
        let port = poll(&what, timeout, || self.agreed_owner(slot)).await?;
        Ok(Failover {
            elapsed: start.elapsed(),
            master: self.process(port)?,
        })
    }

    /// `Ok` when every running member reports `cluster_state:ok` with all slots assigned,
    /// sees as many healthy masters as it was created with, each with its replicas, and every replica's link to its
    /// master is up (it has synchronised). Otherwise the first problem found.
    pub async fn check_whole(&self) -> anyhow::Result<()> {
        for member in self.live() {
            let (info, view) = member.probe().await?;
            if !info.contains("cluster_slots_assigned:16384") {
                bail!("port {}: not every slot is assigned", member.port);
            }
            topology::check_whole(&view, self.masters, self.replicas)
                .map_err(|problem| anyhow::anyhow!("port {} sees: {problem}", member.port))?;
            let me = view
                .iter()
                .find(|m| m.flags.iter().any(|f| f == "myself"))
                .context("CLUSTER NODES without `myself`")?;
            if !me.is_master() {
                let replication: String =
                    member.query(redis::cmd("INFO").arg("replication")).await?;
                if !replication.contains("master_link_status:up") {
                    bail!(
                        "port {}: the replica's link to its master is not up",
                        member.port
                    );
                }
            }
        }
        Ok(())
    }

    /// The port of the master serving `slot` when every running member agrees on it, it is
    /// running itself, and every running member reports `cluster_state:ok`.
    async fn agreed_owner(&self, slot: u32) -> anyhow::Result<u16> {
        let mut agreed = None;
        for member in self.live() {
            let (_, view) = member.probe().await?;
            let owner = topology::owner(&view, slot)
                .map(|owner| owner.port)
                .with_context(|| format!("port {} sees no master for slot {slot}", member.port))?;
            if self.live().all(|m| m.port != owner) {
                bail!(
                    "port {} still sees the dead {owner} serving slot {slot}",
                    member.port
                );
            }
            if agreed.is_some_and(|agreed| agreed != owner) {
                bail!("members disagree on the master of slot {slot}");
            }
            agreed = Some(owner);
        }
        agreed.context("no member is running")
    }

    /// Runs `redis-cli --cluster create` over every member: slots split evenly over the
    /// masters, the others their replicas.
    async fn create(&self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new(CLI);
        cmd.args(["--cluster", "create"])
            .args(self.members.iter().map(|m| format!("127.0.0.1:{}", m.port)))
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .process_group(0);
        kill_with_parent(&mut cmd, libc::SIGKILL);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let output = tokio::time::timeout(FORM_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("{CLI} --cluster create took over {FORM_TIMEOUT:?}"))?
            .with_context(|| {
                format!(
                    "running {CLI}; is it installed? (scripts/lib/deps.sh installs redis-tools)"
                )
            })?;
        if !output.status.success() {
            bail!(
                "{CLI} --cluster create failed ({}):\n{}\n{}",
                output.status,
                log_tail(&String::from_utf8_lossy(&output.stdout), 20),
                log_tail(&String::from_utf8_lossy(&output.stderr), 20)
            );
        }
        Ok(())
    }

    /// `cmd`'s answer from the first running member that gives one.
    async fn ask_any<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let mut last = None;
        for member in self.live() {
            match member.query(cmd).await {
                Ok(value) => return Ok(value),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no member is running")))
    }

    fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|member| !member.killed)
    }

    fn process(&self, port: u16) -> anyhow::Result<ClusterProcess> {
        self.live()
            .find(|member| member.port == port)
            .map(Member::process)
            .with_context(|| format!("no running member on port {port}"))
    }
}

// === impl Member ===

impl Member {
    /// Starts member `index` in its own directory under `dir`, on a free client port and a
    /// free cluster-bus port, returning once it answers `PING`.
    async fn start(dir: &Path, index: usize) -> anyhow::Result<Self> {
        let work = dir.join(format!("member-{index}"));
        std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        let log_path = work.join("redis.log");
        let (work, log) = (work.as_path(), log_path.as_path());
        let (child, port) = start_on_free_port("redis cluster member", log, |port| async move {
            let extra = cluster_args(work, free_port()?);
            let mut child = spawn_redis(work, log, port, &extra)?;
            match wait_ready(&mut child, port, log).await {
                Ok(()) => Ok((child, port)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        })
        .await?;
        Ok(Self {
            child,
            port,
            log_path,
            killed: false,
        })
    }

    fn process(&self) -> ClusterProcess {
        ClusterProcess {
            port: self.port,
            pid: self.child.id(),
        }
    }

    /// `CLUSTER INFO` (which must say `cluster_state:ok`) and `CLUSTER NODES`, parsed.
    async fn probe(&self) -> anyhow::Result<(String, Vec<topology::Member>)> {
        let info: String = self.query(redis::cmd("CLUSTER").arg("INFO")).await?;
        if !info.contains("cluster_state:ok") {
            bail!("port {}: cluster_state is not ok", self.port);
        }
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok((info, topology::parse(&nodes)?))
    }

    /// Sends `cmd` to this member alone, over a fresh connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let port = self.port;
        let ask = async {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            cmd.query_async::<T>(&mut conn).await
        };
        tokio::time::timeout(PROBE_TIMEOUT, ask)
            .await
            .with_context(|| format!("port {port}: no answer within {PROBE_TIMEOUT:?}"))?
            .with_context(|| format!("port {port}"))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.killed {
            return;
        }
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            eprintln!(
                "petmesh-tests: reaping redis cluster member (pid {}): {e}",
                self.child.id()
            );
        }
    }
}

/// Calls `check` every [`READY_POLL`] until it succeeds or `timeout` has passed, then fails
/// with its last error.
async fn poll<T, Fut>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("waited {timeout:?} for {what}; last problem: {last:#}");
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The settings that make a member of a cluster: its node table in `dir`, its bus on
/// `bus_port` (the default, client port + 10000, may be taken or beyond 65535), a short node
/// timeout, and replicas that may always take over (the default refuses a replica whose
/// link was down for ten node timeouts, which a loaded test machine can reach).
fn cluster_args(dir: &Path, bus_port: u16) -> Vec<String> {
    let config = dir.join("nodes.conf");
    // A node table left by a failed attempt would name a port nobody listens on any more.
    let _ = std::fs::remove_file(&config);
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &config.to_string_lossy(),
        "--cluster-port",
        &bus_port.to_string(),
        "--cluster-node-timeout",
        &NODE_TIMEOUT_MS.to_string(),
        "--cluster-replica-validity-factor",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a real cluster: needs redis-server and redis-cli (scripts/lib/deps.sh).
    #[tokio::test]
    async fn a_started_cluster_has_three_masters_with_a_replica_each_and_every_slot() {
        let cluster = RedisCluster::start().await.unwrap();
        let urls = cluster.urls();
        assert_eq!(urls.len(), 6);
        assert_eq!(cluster.seed_urls(), urls.join(","));

        let mut masters = Vec::new();
        for slot in [0, SLOTS / 2, SLOTS - 1] {
            masters.push(cluster.master_for_slot(slot).await.unwrap());
        }
        masters.dedup();
        assert_eq!(masters.len(), 3, "the three thirds have three masters");
        cluster.check_whole().await.unwrap();

        let dir = cluster.dir().to_owned();
        let pids: Vec<u32> = cluster.processes().iter().map(|p| p.pid).collect();
        drop(cluster);
        assert!(!dir.exists(), "working directory removed");
        for pid in pids {
            assert!(send_signal(pid, 0).is_err(), "member pid {pid} reaped");
        }
    }

    #[tokio::test]
    async fn a_one_master_cluster_serves_every_slot_from_its_one_process() {
        let cluster = RedisCluster::start_with(1, 0).await.unwrap();
        assert_eq!(cluster.urls().len(), 1);
        let only = cluster.processes()[0];
        for slot in [0, SLOTS / 2, SLOTS - 1] {
            assert_eq!(cluster.master_for_slot(slot).await.unwrap(), only);
        }
        assert_eq!(cluster.roles().await.unwrap(), (vec![only], vec![]));
        cluster.check_whole().await.unwrap();
    }

    #[tokio::test]
    async fn killing_a_key_s_master_promotes_its_replica() {
        let mut cluster = RedisCluster::start().await.unwrap();
        let key = "petmesh:failover-probe";
        let slot = cluster.slot(key).await.unwrap();
        let old = cluster.master_for_key(key).await.unwrap();

        cluster.kill(old.port).unwrap();
        let failover = cluster
            .wait_failover(slot, Duration::from_secs(60))
            .await
            .unwrap();
        eprintln!(
            "redis cluster failover of slot {slot}: {:?} (port {} → {})",
            failover.elapsed, old.port, failover.master.port
        );
        assert_ne!(failover.master.port, old.port);
        assert_eq!(
            cluster.master_for_slot(slot).await.unwrap(),
            failover.master
        );
        assert!(!cluster.processes().contains(&old));
    }
}
