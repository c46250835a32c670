//! Balancer processes: the real `petmesh-balancer` binary in front of a test cluster's nodes.
//!
//! Like nodes, the balancer is configured purely through its environment
//! (`PETMESH_BALANCER__SECTION__KEY`) and binds port 0 for both of its listeners: the proxy
//! and the admin API. It is ready once it has logged one `listening` line carrying both
//! addresses (`addr`, `admin_addr`) and `GET /health` on the admin port answers 200. It finds
//! the nodes itself, through the Redis registry of the cluster it is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::ApiClient;
use crate::process::{connectable, find_binary, log, owned_command, OwnedProcess, TEST_LOG_ENV};
use crate::redis_mode::{RedisMode, BALANCER_REDIS_MODE_ENV};

/// The balancer binary's file name, as cargo builds it.
const BALANCER_BIN: &str = "petmesh-balancer";

/// Environment variable that overrides where the balancer binary is looked for.
pub const BALANCER_BIN_ENV: &str = "PETMESH_BALANCER_BIN";

/// Default deadline from spawn to the admin `/health` answering 200.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`BalancerProcess::until_routing_to`] looks again.
const ROUTING_POLL: Duration = Duration::from_millis(100);

/// Everything a balancer process is started with. Built with `new` plus builder methods.
#[derive(Clone, Debug)]
pub struct BalancerConfig {
    /// URL of the Redis server holding the registry (`REDIS_URL`), or a Redis Cluster's
    /// comma-separated seeds.
    redis_url: String,
    /// Whether `redis_url` is one server or a Redis Cluster. Default standalone.
    redis_mode: RedisMode,
    /// The cluster whose nodes it balances (the Redis key prefix).
    cluster_name: String,
    /// Name its log lines are prefixed with. Default `balancer`.
    name: String,
    /// Interface of both listeners. Default 127.0.0.1.
    host: String,
    /// Port of the proxy. Default 0: the balancer picks one and logs it.
    port: u16,
    /// Port of the admin API. Default 0.
    admin_port: u16,
    /// Whether to print its log lines to stderr as they arrive. Default: when `TEST_LOG` is set.
    echo_logs: bool,
    /// How long [`BalancerProcess::spawn`] waits for readiness.
    ready_timeout: Duration,
    /// Extra variables, applied last, so they can override the ones above.
    env: Vec<(String, String)>,
    /// The binary to run; `None` means [`balancer_binary`] finds it.
    binary: Option<PathBuf>,
}

/// A running, ready balancer. Killed (SIGKILL) and reaped on drop; use
/// [`BalancerProcess::terminate`] for a graceful stop.
#[derive(Debug)]
pub struct BalancerProcess {
    /// The process and its output.
    process: OwnedProcess,
    /// Where it proxies, from its `listening` line.
    addr: SocketAddr,
    /// Where its admin API is, from the same line.
    admin_addr: SocketAddr,
}

// === impl BalancerConfig ===

impl BalancerConfig {
    /// A balancer for the nodes of `cluster_name` registered in the Redis at `redis_url`.
    pub fn new(redis_url: impl Into<String>, cluster_name: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_mode: RedisMode::Standalone,
            cluster_name: cluster_name.into(),
            name: "balancer".into(),
            host: "127.0.0.1".into(),
            port: 0,
            admin_port: 0,
            echo_logs: std::env::var_os(TEST_LOG_ENV).is_some(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            env: Vec::new(),
            binary: None,
        }
    }

    /// Sets how the balancer reaches Redis: in cluster mode it gets
    /// `PETMESH_BALANCER__REDIS__MODE=cluster` and `REDIS_URL` must be the seed list.
    pub fn redis_mode(mut self, mode: RedisMode) -> Self {
        self.redis_mode = mode;
        self
    }

    /// Sets the name its log lines are prefixed with.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the interface both listeners bind.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the proxy port and the admin port; 0 (the default) lets the balancer pick.
    pub fn ports(mut self, port: u16, admin_port: u16) -> Self {
        self.port = port;
        self.admin_port = admin_port;
        self
    }

    /// Prints log lines live to stderr, prefixed with the name (or stops doing so).
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }

    /// Sets how long [`BalancerProcess::spawn`] waits for readiness.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Adds one environment variable, e.g. `PETMESH_BALANCER__STRATEGY__HTTP`. Later values
    /// win, and these win over the ones the other methods set.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs this binary instead of the one [`balancer_binary`] finds.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// A command running `petmesh-balancer <subcommand>` with this configuration in its
    /// environment (see [`owned_command`]); stdout and stderr are left for the caller.
    pub fn command(&self, subcommand: &str) -> anyhow::Result<Command> {
        let binary = match &self.binary {
            Some(path) => path.clone(),
            None => balancer_binary()?,
        };
        let mut cmd = owned_command(&binary);
        cmd.arg(subcommand).envs(self.env_vars());
        Ok(cmd)
    }

    /// The variables `command` sets, in order.
    fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("PETMESH_BALANCER__LISTEN__HOST", self.host.as_str()),
            ("PETMESH_BALANCER__LISTEN__PORT", &self.port.to_string()),
            ("PETMESH_BALANCER__ADMIN__HOST", self.host.as_str()),
            (
                "PETMESH_BALANCER__ADMIN__PORT",
                &self.admin_port.to_string(),
            ),
            (
                "PETMESH_BALANCER__CLUSTER__NAME",
                self.cluster_name.as_str(),
            ),
            ("REDIS_URL", self.redis_url.as_str()),
            ("PETMESH_BALANCER__LOG__FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.extend(crate::redis_mode::mode_env_var(
            self.redis_mode,
            BALANCER_REDIS_MODE_ENV,
        ));
        vars.extend(self.env.iter().cloned());
        vars
    }
}

/// Finds the `petmesh-balancer` binary: `PETMESH_BALANCER_BIN` if set, else next to the
/// running executable or one directory up (see [`find_binary`]).
pub fn balancer_binary() -> anyhow::Result<PathBuf> {
    find_binary(BALANCER_BIN, BALANCER_BIN_ENV)
}

// === impl BalancerProcess ===

impl BalancerProcess {
    /// Spawns `petmesh-balancer serve` with `config` and waits until it is ready: the
    /// `listening` line with both addresses, then `GET /health` on the admin port → 200.
    ///
    /// Fails, after printing the balancer's log to stderr, if it exits first or isn't ready
    /// within the config's `ready_timeout` (30 s by default).
    pub async fn spawn(config: BalancerConfig) -> anyhow::Result<Self> {
        let listening = Arc::new(Mutex::new(None));
        let found = Arc::clone(&listening);
        let spawned_at = Instant::now();
        let mut process = OwnedProcess::spawn(
            config.command("serve")?,
            config.name.clone(),
            config.echo_logs,
            move |line| {
                let addrs = log::listening_field(line, "addr")
                    .zip(log::listening_field(line, "admin_addr"));
                if let Some(addrs) = addrs {
                    found
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(addrs);
                }
            },
        )?;
        let (addr, admin_addr) = process
            .wait_ready(
                &listening,
                |(_, admin)| format!("http://{}/health", connectable(*admin)),
                spawned_at,
                config.ready_timeout,
            )
            .await?;
        Ok(Self {
            process,
            addr,
            admin_addr,
        })
    }

    /// The address it proxies on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of its admin API.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://<addr>`: the cluster's entry point.
    pub fn base_url(&self) -> String {
        format!("http://{}", connectable(self.addr))
    }

    /// `http://<admin_addr>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", connectable(self.admin_addr))
    }

    /// A client for the proxy, without a token.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(self.base_url())
    }

    /// A client for the admin API.
    pub fn admin_client(&self) -> ApiClient {
        ApiClient::new(self.admin_url())
    }

    /// `GET /admin/nodes`, its JSON body as it is (the balancer owns that format).
    pub async fn admin_nodes(&self) -> anyhow::Result<serde_json::Value> {
        let resp = self.admin_client().get("/admin/nodes").await?;
        anyhow::ensure!(
            resp.status == 200,
            "GET /admin/nodes: {} {}",
            resp.status,
            resp.text
        );
        Ok(resp.body)
    }

    /// Waits up to `timeout` until `GET /admin/nodes` lists every node in `ids` as ready,
    /// healthy and with its breaker closed, and then a request through the proxy succeeds:
    /// the balancer both says it routes to them all and does route.
    pub async fn until_routing_to(&self, ids: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client();
        loop {
            let last = match self.admin_nodes().await {
                Ok(table) => match unroutable(&table, ids) {
                    None => match client.get("/health/live").await {
                        Ok(resp) if resp.status == 200 => return Ok(()),
                        Ok(resp) => format!("GET /health/live through it: {}", resp.status),
                        Err(e) => format!("{e:#}"),
                    },
                    Some(why) => why,
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the balancer does not route to all of {ids:?} within {timeout:?}: {last}"
                );
            }
            tokio::time::sleep(ROUTING_POLL).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A snapshot of the last lines it wrote.
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// Prints its log tail to stderr.
    pub fn print_logs(&self) {
        self.process.print_logs();
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.process.signal(signal)
    }

    /// The exit status if it has exited, `None` while it runs.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    /// Sends SIGTERM and waits up to `timeout` for it to finish what is in flight and exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.process
            .terminate(timeout)
            .await
            .context("stopping the balancer")
    }

    /// Waits up to `timeout` for it to exit by itself; an error if it doesn't.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.process.wait_exit(timeout).await
    }
}

/// Why the `/admin/nodes` table doesn't route to every node in `ids` yet, `None` when it does.
fn unroutable(table: &serde_json::Value, ids: &[&str]) -> Option<String> {
    let Some(rows) = table.as_array() else {
        return Some(format!("not a list of nodes: {table}"));
    };
    for id in ids {
        let Some(row) = rows.iter().find(|row| row["id"] == *id) else {
            return Some(format!("{id} not listed"));
        };
        let routable =
            row["status"] == "ready" && row["healthy"] == true && row["breaker"] == "closed";
        if !routable {
            return Some(format!("{id} not routable yet: {row}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
        vars.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn env_vars_carry_every_setting_and_extras_win() {
        let config = BalancerConfig::new("redis://r:1", "c1")
            .ports(8080, 8081)
            .env("PETMESH_BALANCER__LOG__FORMAT", "pretty")
            .env("PETMESH_BALANCER__STRATEGY__HTTP", "random");
        let vars = config.env_vars();
        assert_eq!(value(&vars, "REDIS_URL"), Some("redis://r:1"));
        assert_eq!(value(&vars, "PETMESH_BALANCER__CLUSTER__NAME"), Some("c1"));
        assert_eq!(
            value(&vars, "PETMESH_BALANCER__LISTEN__HOST"),
            Some("127.0.0.1")
        );
        assert_eq!(value(&vars, "PETMESH_BALANCER__LISTEN__PORT"), Some("8080"));
        assert_eq!(
            value(&vars, "PETMESH_BALANCER__ADMIN__HOST"),
            Some("127.0.0.1")
        );
        assert_eq!(value(&vars, "PETMESH_BALANCER__ADMIN__PORT"), Some("8081"));
        assert_eq!(
            value(&vars, "PETMESH_BALANCER__LOG__FORMAT"),
            Some("pretty")
        );
        assert_eq!(
            value(&vars, "PETMESH_BALANCER__STRATEGY__HTTP"),
            Some("random")
        );
        assert_eq!(value(&vars, BALANCER_REDIS_MODE_ENV), None);
    }

    #[test]
    fn cluster_mode_is_passed_on() {
        let vars = BalancerConfig::new("redis://a:1,redis://b:2", "c1")
            .redis_mode(RedisMode::Cluster)
            .env_vars();
        assert_eq!(value(&vars, BALANCER_REDIS_MODE_ENV), Some("cluster"));
        assert_eq!(value(&vars, "REDIS_URL"), Some("redis://a:1,redis://b:2"));
    }

    #[test]
    fn unroutable_names_the_first_node_not_ready_healthy_and_closed() {
        let table = serde_json::json!([
            {"id": "node-1", "status": "ready", "healthy": true, "breaker": "closed"},
            {"id": "node-2", "status": "ready", "healthy": false, "breaker": "closed"},
        ]);
        assert_eq!(unroutable(&table, &["node-1"]), None);
        assert!(unroutable(&table, &["node-1", "node-2"])
            .unwrap()
            .starts_with("node-2 not routable"));
        assert_eq!(
            unroutable(&table, &["node-3"]).as_deref(),
            Some("node-3 not listed")
        );
    }

    /// A stand-in for `petmesh-balancer serve`: one `listening` line with both addresses,
    /// `GET /health` → 200 on the admin port, exit 0 on SIGTERM.
    const FAKE_BALANCER: &str = r#"#!/usr/bin/env python3
import http.server, json, os, signal, sys, threading
assert sys.argv[1:] == ["serve"], sys.argv
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
env = os.environ
proxy = http.server.HTTPServer((env["PETMESH_BALANCER__LISTEN__HOST"], int(env["PETMESH_BALANCER__LISTEN__PORT"])), Handler)
admin = http.server.HTTPServer((env["PETMESH_BALANCER__ADMIN__HOST"], int(env["PETMESH_BALANCER__ADMIN__PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
threading.Thread(target=proxy.serve_forever, daemon=True).start()
addr = lambda s: "%s:%d" % s.server_address
print(json.dumps({"level": "INFO", "message": "listening", "addr": addr(proxy), "admin_addr": addr(admin)}), flush=True)
admin.serve_forever()
"#;

    #[tokio::test]
    async fn spawn_waits_for_both_addresses_and_admin_health() {
        use std::os::unix::fs::PermissionsExt as _;
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("python3 not found; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-balancer");
        std::fs::write(&fake, FAKE_BALANCER).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

        let config = BalancerConfig::new("redis://unused", "c").binary(fake);
        let mut balancer = BalancerProcess::spawn(config).await.unwrap();
        assert_ne!(balancer.addr(), balancer.admin_addr());
        assert_ne!(balancer.addr().port(), 0);
        let health = balancer.admin_client().get("/health").await.unwrap();
        assert_eq!(health.status, 200);
        let exit = balancer.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(exit.success(), "{exit}");
    }
}
