//! `petmesh-dev cluster`: a local cluster for humans, from one command.
//!
//! It starts the same pieces the tests do (private servers unless `DATABASE_URL` and
//! `REDIS_URL` are given, nodes configured through their environment, a balancer in front of
//! them that finds them through Redis), but with a stable database (`petmesh`), a stable
//! cluster name (`local`), known ports for the balancer and its admin API, and the logs
//! rendered readably on stderr. It runs until SIGINT or SIGTERM, then stops the balancer,
//! drains the nodes, and stops the servers.
//!
//! With `--redis-cluster`, the Redis is a private Redis Cluster (three masters, a replica
//! each) and every node and balancer runs with `redis.mode = cluster` and the seed list as
//! `REDIS_URL` (a `REDIS_URL` given in the environment is then taken to be a seed list).
//!
//! Until `petmesh-balancer` has been built, the first node takes the balancer's port instead,
//! so the entry URL stays the same.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::{Connection as _, PgConnection};

use super::{signal_name, ShutdownSignals};

mod tools;

use self::tools::{node_has_subcommand, run_tool};
use crate::balancer::{balancer_binary, BalancerConfig, BalancerProcess};
use crate::cluster::PrivateServers;
use crate::node::{random_token, NodeConfig, NodeProcess};
use crate::redis_mode::RedisMode;

/// The database the local cluster uses; kept when the servers come from the environment.
const DATABASE: &str = "petmesh";

/// The local cluster's name (its Redis key prefix).
const CLUSTER_NAME: &str = "local";

/// The node environment: development settings (readable errors, relaxed limits).
const ENVIRONMENT: &str = "development";

/// Where the admin password may be given; it is generated otherwise.
const ADMIN_PASSWORD_ENV: &str = "PETMESH_ADMIN_PASSWORD";

/// How long `petmesh-node migrate` and `seed` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long to wait, once a tool has exited, for its last output lines.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// How long nodes (and the balancer) get to drain after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How long the balancer may take to route to every node once they are all ready.
const BALANCED_TIMEOUT: Duration = Duration::from_secs(30);

/// How often running nodes are checked for an unexpected exit.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// SQLSTATE `duplicate_database`.
const DUPLICATE_DATABASE: &str = "42P04";

/// Options of `petmesh-dev cluster`.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Port of the balancer, the cluster's entry point; its admin API listens on the next
    /// port, the nodes on free ports. Without a balancer binary, the first node's port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// How many balancers to start: balancer k (from 0) on port + 2k, its admin API on
    /// port + 2k + 1. Each finds the nodes, probes and drains them on its own; they share the
    /// WebSocket limit per client address through Redis.
    #[arg(long, default_value_t = 1)]
    pub balancers: usize,
    /// Interface the balancer and the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Don't run `petmesh-node seed`, even when the node has that subcommand.
    #[arg(long)]
    pub no_seed: bool,
    /// Start a Redis Cluster (three masters, a replica each) instead of one Redis server, and
    /// run the nodes and balancers in Redis Cluster mode.
    #[arg(long)]
    pub redis_cluster: bool,
}

/// What runs while the cluster is up. Field order is drop order: the balancer, then the
/// nodes, then the servers.
struct LocalCluster {
    /// The entry points, the first on `--port`; empty when `petmesh-balancer` is not built
    /// yet.
    balancers: Vec<BalancerProcess>,
    /// The nodes, `node-1` first.
    nodes: Vec<NodeProcess>,
    /// Which nodes have already been reported as exited, so each is reported once.
    reported: Vec<bool>,
    /// The servers if we started them; stopped last.
    servers: Option<PrivateServers>,
}

/// Runs the cluster until SIGINT or SIGTERM, then stops everything it started. Returns the
/// exit code: 0 after a signal once the cluster was up, 128 + signal if it came earlier.
pub async fn run(args: ClusterArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.balancers == 0 {
        bail!("--balancers must be at least 1");
    }
    let mut signals = ShutdownSignals::install()?;
    // A signal during start-up drops whatever has started, which stops it.
    let mut cluster = tokio::select! {
        cluster = start(&args) => cluster?,
        signal = signals.recv() => {
            eprintln!("petmesh-dev: {} during start-up; stopped what had started", signal_name(signal));
            return Ok(128 + signal);
        }
    };
    print_banner(&cluster.balancers, &cluster.nodes).context("writing to stdout")?;

    let signal = cluster.watch(&mut signals).await;
    eprintln!(
        "petmesh-dev: got {}, stopping the cluster",
        signal_name(signal)
    );
    cluster.stop(&mut signals).await;
    Ok(0)
}

/// Servers, database, migrations, seed data, nodes: in that order, each step waiting for
/// the one before.
async fn start(args: &ClusterArgs) -> anyhow::Result<LocalCluster> {
    let wanted = args.redis_cluster.then_some(RedisMode::Cluster);
    let run = crate::cluster::servers(wanted).await?;
    let redis_mode = wanted.unwrap_or(run.redis_mode);
    let (redis_url, servers) = (run.redis_url, run.private);
    let database_url = create_database(&run.database_url).await?;
    if redis_mode == RedisMode::Cluster {
        println!("redis cluster: {redis_url}");
    }

    let admin_password = match std::env::var(ADMIN_PASSWORD_ENV) {
        Ok(password) if !password.is_empty() => {
            println!("admin password: from {ADMIN_PASSWORD_ENV}");
            password
        }
        _ => {
            let password = random_token(20);
            println!("admin password: {password} (generated)");
            password
        }
    };
    let template = NodeConfig::new(database_url, redis_url.as_str())
        .redis_mode(redis_mode)
        .cluster(CLUSTER_NAME)
        .environment(ENVIRONMENT)
        .jwt_secret(random_token(48))
        .admin_password(admin_password)
        .host(args.host.as_str())
        .echo_logs(true);
    // Settings given to petmesh-dev itself reach every node, after (over) the defaults above:
    // `PETMESH_NODE__RATE_LIMIT__ENABLED=false scripts/cluster up`.
    let template = own_settings("PETMESH_NODE__")
        .fold(template, |config, (key, value)| config.env(key, value));
    let template = match std::env::var("PETMESH_NODE__LOG__LEVEL") {
        Ok(level) => template.env(
            "PETMESH_NODE__LOG__LEVEL",
            with_startup_lines(&level, "petmesh_node"),
        ),
        Err(_) => template,
    };

    run_tool(&template, "migrate").await?;
    if !args.no_seed && node_has_subcommand("seed")? {
        run_tool(&template, "seed").await?;
    }
    let balancer_bin = match balancer_binary() {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!(
                "petmesh-dev: no balancer ({e:#}); node-1 takes port {} instead",
                args.port
            );
            None
        }
    };
    let first_port = if balancer_bin.is_some() { 0 } else { args.port };
    let nodes = start_nodes(&template, args.nodes, first_port).await?;
    let mut balancers = Vec::with_capacity(args.balancers);
    for index in 0..balancer_bin.as_ref().map_or(0, |_| args.balancers) {
        let binary = balancer_bin.clone().expect("counted only with a binary");
        let (port, admin) = balancer_ports(args.port, index)?;
        let name = match index {
            0 => "balancer".to_owned(),
            n => format!("balancer-{}", n + 1),
        };
        {
            let config = BalancerConfig::new(redis_url.as_str(), CLUSTER_NAME)
                .redis_mode(redis_mode)
                .name(name)
                .host(args.host.as_str())
                .ports(port, admin)
                .echo_logs(true)
                .binary(binary);
            let config = own_settings("PETMESH_BALANCER__")
                .fold(config, |config, (key, value)| config.env(key, value));
            let config = match std::env::var("PETMESH_BALANCER__LOG__LEVEL") {
                Ok(level) => config.env(
                    "PETMESH_BALANCER__LOG__LEVEL",
                    with_startup_lines(&level, "petmesh_balancer"),
                ),
                Err(_) => config,
            };
            let balancer = BalancerProcess::spawn(config).await?;
            let ids: Vec<&str> = nodes.iter().map(NodeProcess::id).collect();
            balancer.until_routing_to(&ids, BALANCED_TIMEOUT).await?;
            balancers.push(balancer);
        }
    }
    Ok(LocalCluster {
        balancers,
        reported: vec![false; nodes.len()],
        nodes,
        servers,
    })
}

/// This process's environment variables starting with `prefix`, but for those the harness
/// manages itself: where each process listens, its identity, and its log format and level
/// (readiness is read from its JSON `listening` line; a level given is applied with that line
/// kept, see [`with_startup_lines`]).
fn own_settings(prefix: &'static str) -> impl Iterator<Item = (String, String)> {
    const MANAGED: [&str; 9] = [
        "SERVER__HOST",
        "SERVER__PORT",
        "LISTEN__HOST",
        "LISTEN__PORT",
        "ADMIN__PORT",
        "NODE_ID",
        "CLUSTER__NAME",
        "LOG__FORMAT",
        "LOG__LEVEL",
    ];
    std::env::vars().filter(move |(key, _)| {
        key.strip_prefix(prefix)
            .is_some_and(|setting| !MANAGED.contains(&setting))
    })
}

/// A log filter of `level` that still lets through the `listening` line of `crate_name`'s
/// start-up, which tells the harness the process is up.
fn with_startup_lines(level: &str, crate_name: &str) -> String {
    format!("{level},{crate_name}::startup=info")
}

/// The proxy and admin ports of balancer `index` (from 0) when the first is on `port`:
/// `port + 2 * index` and the next one (0 stays 0: free ones).
fn balancer_ports(port: u16, index: usize) -> anyhow::Result<(u16, u16)> {
    if port == 0 {
        return Ok((0, 0));
    }
    let proxy = u16::try_from(2 * index)
        .ok()
        .and_then(|offset| port.checked_add(offset));
    let ports = proxy.and_then(|proxy| Some((proxy, proxy.checked_add(1)?)));
    ports.context("--port must leave room for every balancer (port + 2k) and its admin API (+1)")
}

/// Starts `count` nodes from `template`: `node-1` on `first_port` (0 for a free one), the
/// rest on free ports. All are spawned before any is waited for, so they start in parallel.
///
/// This is the only place that decides node ports: with a balancer on the public port,
/// `first_port` is 0.
pub async fn start_nodes(
    template: &NodeConfig,
    count: usize,
    first_port: u16,
) -> anyhow::Result<Vec<NodeProcess>> {
    let mut starting = Vec::with_capacity(count);
    for i in 1..=count {
        let port = if i == 1 { first_port } else { 0 };
        let config = template.clone().id(format!("node-{i}")).port(port);
        starting.push(NodeProcess::launch(config)?);
    }
    let mut nodes = Vec::with_capacity(count);
    for node in starting {
        nodes.push(node.ready().await?);
    }
    Ok(nodes)
}

/// Creates the `petmesh` database unless it exists, and returns its URL.
async fn create_database(maintenance_url: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(maintenance_url)
        .await
        .with_context(|| format!("connecting to {maintenance_url}"))?;
    match sqlx::query(&format!("create database {DATABASE}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DUPLICATE_DATABASE) => {
            eprintln!("petmesh-dev: database {DATABASE} exists, reusing it");
        }
        Err(e) => return Err(e).with_context(|| format!("creating database {DATABASE}")),
    }
    let _ = conn.close().await;
    crate::database::database_url(maintenance_url, DATABASE)
}

/// The lines scripts and humans wait for, on stdout, ending with exactly `ready`: the entry
/// URL (the first balancer, else the first node), its admin URL, every further balancer with
/// its admin URL, then every node.
fn print_banner(balancers: &[BalancerProcess], nodes: &[NodeProcess]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match (balancers.first(), nodes.first()) {
        (Some(balancer), _) => {
            writeln!(out, "petmesh is up: {}", balancer.base_url())?;
            writeln!(
                out,
                "  admin   {}  (console at /, /admin/nodes, /metrics)",
                balancer.admin_url()
            )?;
            for (index, balancer) in balancers.iter().enumerate().skip(1) {
                writeln!(
                    out,
                    "  balancer-{}  {}  admin {}",
                    index + 1,
                    balancer.base_url(),
                    balancer.admin_url()
                )?;
            }
        }
        (None, Some(first)) => writeln!(out, "petmesh is up: {}", first.base_url())?,
        (None, None) => {}
    }
    for node in nodes {
        writeln!(out, "  {}  {}", node.id(), node.base_url())?;
    }
    writeln!(out, "ready")?;
    out.flush()
}

// === impl LocalCluster ===

impl LocalCluster {
    /// Reports nodes that exit by themselves (and keeps going without them) until a
    /// shutdown signal arrives, which it returns.
    async fn watch(&mut self, signals: &mut ShutdownSignals) -> libc::c_int {
        loop {
            tokio::select! {
                signal = signals.recv() => return signal,
                _ = tokio::time::sleep(WATCH_INTERVAL) => self.report_exits(),
            }
        }
    }

    fn report_exits(&mut self) {
        self.balancers.retain_mut(|balancer| match balancer.try_wait() {
            Ok(Some(status)) => {
                eprintln!("petmesh-dev: a balancer exited unexpectedly ({status}); the nodes and other balancers keep running");
                false
            }
            Ok(None) => true,
            Err(e) => {
                eprintln!("petmesh-dev: {e:#}");
                true
            }
        });
        for (node, reported) in self.nodes.iter_mut().zip(&mut self.reported) {
            if *reported {
                continue;
            }
            match node.try_wait() {
                Ok(Some(status)) => {
                    *reported = true;
                    eprintln!(
                        "petmesh-dev: {} exited unexpectedly ({status}); the other nodes keep running",
                        node.id()
                    );
                }
                Ok(None) => {}
                Err(e) => eprintln!("petmesh-dev: {e:#}"),
            }
        }
    }

    /// 1. SIGTERM each balancer and wait for it to finish what it is proxying.
    /// 2. SIGTERM every node, so they all drain at once.
    /// 3. Wait for them within one shared grace period (a further signal cuts it short).
    /// 4. Kill what is left, then stop the servers.
    async fn stop(mut self, signals: &mut ShutdownSignals) {
        let mut hurry = false;
        for mut balancer in std::mem::take(&mut self.balancers) {
            if hurry {
                if let Err(e) = balancer.kill() {
                    eprintln!("petmesh-dev: {e:#}");
                }
                continue;
            }
            let stopped = tokio::select! {
                stopped = balancer.terminate(STOP_GRACE) => stopped,
                _ = signals.recv() => {
                    eprintln!("petmesh-dev: second signal, killing the balancer and the nodes");
                    hurry = true;
                    Err(anyhow::anyhow!("interrupted"))
                }
            };
            match stopped {
                Ok(status) => eprintln!("petmesh-dev: balancer stopped ({status})"),
                Err(e) => {
                    eprintln!("petmesh-dev: balancer did not stop in time, killing it ({e:#})");
                    if let Err(e) = balancer.kill() {
                        eprintln!("petmesh-dev: {e:#}");
                    }
                }
            }
        }
        for node in &mut self.nodes {
            if matches!(node.try_wait(), Ok(None)) {
                if let Err(e) = node.signal(libc::SIGTERM) {
                    eprintln!("petmesh-dev: {e:#}");
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (node, reported) in self.nodes.iter_mut().zip(&self.reported) {
            if *reported {
                continue;
            }
            let remaining = if hurry {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let waited = tokio::select! {
                waited = node.wait_exit(remaining) => waited,
                _ = signals.recv() => {
                    eprintln!("petmesh-dev: second signal, killing the remaining nodes");
                    hurry = true;
                    node.wait_exit(Duration::ZERO).await
                }
            };
            match waited {
                Ok(status) => eprintln!("petmesh-dev: {} stopped ({status})", node.id()),
                Err(_) => {
                    eprintln!(
                        "petmesh-dev: {} did not stop in time, killing it",
                        node.id()
                    );
                    if let Err(e) = node.kill() {
                        eprintln!("petmesh-dev: {e:#}");
                    }
                }
            }
        }
        self.nodes.clear();
        if let Some(servers) = self.servers.take() {
            drop(servers);
            eprintln!("petmesh-dev: servers stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_k_listens_on_port_plus_2k_and_its_admin_api_next() {
        assert_eq!(balancer_ports(8080, 0).unwrap(), (8080, 8081));
        assert_eq!(balancer_ports(8080, 1).unwrap(), (8082, 8083));
        assert_eq!(balancer_ports(0, 3).unwrap(), (0, 0));
        assert!(balancer_ports(65534, 1).is_err());
    }
}
