//! Node processes: the real `petmesh-node` binary, spawned, watched and stopped by the harness.
//!
//! Cluster behaviour (registry, pub/sub fan-out, draining on SIGTERM, a node dying) can only
//! be tested with separate processes, so the harness runs the binary the way production
//! does, configured through its environment ([`NodeConfig`]). A node is ready when it has
//! logged the address it bound ([`log::listening_addr`]) and `/health/ready` answers 200.
//!
//! Everything a node writes is kept in a bounded [`LogTail`]; it is printed, prefixed with
//! the node id, whenever a node fails to start or a test panics while owning the node.

mod config;
pub mod log;

pub use config::{node_binary, random_token, NodeConfig, NODE_BIN_ENV, TEST_LOG_ENV};

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::process::{capture_lines, send_signal, wait_timeout_async, LineReader, LogTail};

/// How many output lines of a node are kept for failure reports.
const LOG_LINES_KEPT: usize = 500;

/// How many of those go into an error message (all of them are printed to stderr).
const LOG_LINES_IN_ERROR: usize = 20;

/// How often start-up progress is polled.
const READY_POLL: Duration = Duration::from_millis(50);

/// How long to wait, once a node has exited, for its last output lines to be read.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Timeout of one readiness probe; a node that takes longer isn't ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running, ready node. Killed (SIGKILL) and reaped on drop; use [`NodeProcess::terminate`]
/// for a graceful stop.
#[derive(Debug)]
pub struct NodeProcess {
    /// The process, its id and its output.
    node: OwnedNode,
    /// The address from the node's `listening` line.
    addr: SocketAddr,
}

/// A node that has been spawned but may not be ready yet; [`StartingNode::ready`] waits.
///
/// Splitting the two lets a cluster spawn all its nodes first and then wait for them, so
/// they start in parallel. Dropping it kills the process.
#[derive(Debug)]
pub struct StartingNode {
    /// The process, its id and its output.
    node: OwnedNode,
    /// Set by the stdout reader thread when the `listening` line arrives.
    addr: Arc<Mutex<Option<SocketAddr>>>,
    /// When the process was spawned; readiness is measured from here.
    spawned_at: Instant,
    /// How long readiness may take.
    ready_timeout: Duration,
}

/// The parts every node owns, whether ready or not. Its `Drop` is the one place that
/// guarantees the process is gone.
#[derive(Debug)]
struct OwnedNode {
    /// The node id, used to prefix its log lines.
    id: String,
    /// The process; reaped at the latest in `Drop`.
    child: Child,
    /// Its stdout and stderr, filled by two reader threads that end at EOF.
    logs: LogTail,
    /// Those two threads, to wait for the last lines of a process that has exited.
    readers: Vec<LineReader>,
}

// === impl NodeProcess ===

impl NodeProcess {
    /// Spawns `petmesh-node serve` with `config` and waits until it is ready.
    ///
    /// Fails, after printing the node's log to stderr, if the process exits first or isn't
    /// ready within the config's `ready_timeout` (30 s by default).
    pub async fn spawn(config: NodeConfig) -> anyhow::Result<Self> {
        Self::launch(config)?.ready().await
    }

    /// Spawns `petmesh-node serve` with `config` without waiting for it.
    pub fn launch(config: NodeConfig) -> anyhow::Result<StartingNode> {
        let id = config.node_id.clone();
        let mut cmd = config.command("serve")?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?} for {id}", cmd.get_program()))?;
        let stdout = child.stdout.take().context("the node's stdout is piped")?;
        let stderr = child.stderr.take().context("the node's stderr is piped")?;

        let logs = LogTail::new(LOG_LINES_KEPT);
        let addr = Arc::new(Mutex::new(None));
        let echo = config.echo_logs;
        let found = Arc::clone(&addr);
        let prefix = id.clone();
        let stdout_reader = capture_lines(stdout, logs.clone(), move |line| {
            if let Some(listening) = log::listening_addr(line) {
                // First one wins: only the node's own line counts, not a library's.
                found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(listening);
            }
            if echo {
                eprintln!("[{prefix}] {}", log::render(line));
            }
        })
        .with_context(|| format!("starting the stdout reader of {id}"))?;
        let prefix = id.clone();
        let stderr_reader = capture_lines(stderr, logs.clone(), move |line| {
            if echo {
                eprintln!("[{prefix}] {line}");
            }
        })
        .with_context(|| format!("starting the stderr reader of {id}"))?;
        let node = OwnedNode {
            id,
            child,
            logs,
            readers: vec![stdout_reader, stderr_reader],
        };

        Ok(StartingNode {
            node,
            addr,
            spawned_at: Instant::now(),
            ready_timeout: config.ready_timeout,
        })
    }

    /// The node id (`node-1`, ...).
    pub fn id(&self) -> &str {
        &self.node.id
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, with an unspecified listen address (`0.0.0.0`) replaced by 127.0.0.1.
    pub fn base_url(&self) -> String {
        format!("http://{}", connectable(self.addr))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.node.child.id()
    }

    /// A snapshot of the last lines the node wrote (stdout and stderr, interleaved as read).
    pub fn logs(&self) -> Vec<String> {
        self.node.logs.snapshot()
    }

    /// Prints the node's log tail to stderr, each line prefixed with the node id.
    pub fn print_logs(&self) {
        self.node.logs.print(&self.node.id);
    }

    /// Sends `signal` to the node (SIGSTOP and SIGCONT make a node hang and recover).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        send_signal(self.pid(), signal)
            .with_context(|| format!("sending signal {signal} to {}", self.node.id))
    }

    /// The exit status if the node has exited, `None` while it runs.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.node
            .child
            .try_wait()
            .with_context(|| format!("polling {}", self.node.id))
    }

    /// Kills the node with SIGKILL (a crash, as far as the cluster can tell) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.node.kill()
    }

    /// Sends SIGTERM and waits up to `timeout` for the node to drain and exit, returning its
    /// exit status. On timeout the node keeps running and an error is returned.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.try_wait()?.is_none() {
            self.signal(libc::SIGTERM)?;
        }
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the node to exit by itself; an error if it doesn't.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match wait_timeout_async(&mut self.node.child, timeout)
            .await
            .with_context(|| format!("waiting for {}", self.node.id))?
        {
            Some(status) => {
                self.node.drain_output();
                Ok(status)
            }
            None => bail!("{} still running after {timeout:?}", self.node.id),
        }
    }
}

// === impl StartingNode ===

impl StartingNode {
    /// The node id.
    pub fn id(&self) -> &str {
        &self.node.id
    }

    /// Waits for the `listening` line, then for `/health/ready` to answer 200.
    ///
    /// Fails, after printing the node's log to stderr, if the process exits first or the
    /// deadline passes.
    pub async fn ready(mut self) -> anyhow::Result<NodeProcess> {
        match self.wait_ready().await {
            Ok(addr) => Ok(NodeProcess {
                node: self.node,
                addr,
            }),
            Err(e) => {
                self.node.drain_output_if_exited();
                self.node.logs.print(&self.node.id);
                let tail = self.node.logs.snapshot();
                let tail = &tail[tail.len().saturating_sub(LOG_LINES_IN_ERROR)..];
                Err(anyhow::anyhow!(
                    "{} did not become ready: {e:#}\n--- its last {} lines (more on stderr) ---\n{}",
                    self.node.id,
                    tail.len(),
                    tail.join("\n")
                ))
            }
        }
    }

    /// The two readiness steps; errors carry no log, `ready` adds it.
    async fn wait_ready(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = self.spawned_at + self.ready_timeout;
        let addr = loop {
            self.fail_if_exited()?;
            if let Some(addr) = *self.addr.lock().unwrap_or_else(PoisonError::into_inner) {
                break addr;
            }
            if Instant::now() >= deadline {
                bail!("no `listening` log line within {:?}", self.ready_timeout);
            }
            tokio::time::sleep(READY_POLL).await;
        };

        let url = format!("http://{}/health/ready", connectable(addr));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .context("building the readiness client")?;
        loop {
            self.fail_if_exited()?;
            let last = match client.get(&url).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(addr),
                Ok(resp) => format!("status {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "GET {url} not 200 within {:?} (last: {last})",
                    self.ready_timeout
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.node.child.try_wait().context("polling the node")? {
            bail!("exited during start-up ({status})");
        }
        Ok(())
    }
}

// === impl OwnedNode ===

impl OwnedNode {
    /// SIGKILL unless already exited, then reap and collect the last output lines.
    fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait().context("polling")?.is_none() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.id))?;
        }
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.id))?;
        self.drain_output();
        Ok(())
    }

    /// Waits (boundedly) until the reader threads have stored everything the exited process
    /// wrote, so that a log snapshot taken next is complete.
    fn drain_output(&self) {
        let deadline = Instant::now() + OUTPUT_DRAIN;
        for reader in &self.readers {
            reader.wait(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// [`OwnedNode::drain_output`] if the process has exited; a live one may write forever.
    fn drain_output_if_exited(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.drain_output();
        }
    }
}

impl Drop for OwnedNode {
    fn drop(&mut self) {
        // Killed first, so the tail printed for a failed test includes its very last lines.
        if let Err(e) = self.kill() {
            eprintln!("petmesh-tests: {e:#}");
        }
        if std::thread::panicking() {
            self.logs.print(&self.id);
        }
    }
}

/// `addr` with an unspecified IP (the node listens on all interfaces) replaced by loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectable_replaces_only_unspecified_addresses() {
        assert_eq!(
            connectable("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            connectable("127.0.0.2:1".parse().unwrap()),
            "127.0.0.2:1".parse().unwrap()
        );
    }

    /// A stand-in for `petmesh-node serve`: logs the `listening` line on stdout like the real
    /// node, answers `GET /health/ready`, says something on stderr, and exits 0 on SIGTERM.
    const FAKE_NODE: &str = r#"#!/usr/bin/env python3
import http.server, json, os, signal, sys
assert sys.argv[1:] == ["serve"], sys.argv
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((os.environ["PETMESH_NODE__SERVER__HOST"], int(os.environ["PETMESH_NODE__SERVER__PORT"])), Handler)
def on_term(*_):
    print(json.dumps({"level": "INFO", "message": "drained"}), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("hello from " + os.environ["PETMESH_NODE__NODE_ID"], file=sys.stderr, flush=True)
addr = "%s:%d" % server.server_address
print(json.dumps({"timestamp": "2025-01-01T00:00:00Z", "level": "INFO", "message": "listening", "addr": addr, "target": "fake"}), flush=True)
server.serve_forever()
"#;

    /// Writes `script` as an executable file, or `None` when python3 is missing (the
    /// stand-in needs it; the real-node tests in tests/ don't).
    fn fake_binary(script: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
        use std::os::unix::fs::PermissionsExt as _;
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("python3 not found; skipping");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-node");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some((dir, path))
    }

    #[tokio::test]
    async fn spawn_waits_for_listening_and_ready_and_terminate_drains() {
        let Some((_dir, fake)) = fake_binary(FAKE_NODE) else {
            return;
        };
        let config = NodeConfig::new("postgres://unused", "redis://unused")
            .id("node-9")
            .binary(fake);
        let mut node = NodeProcess::spawn(config).await.unwrap();
        assert_eq!(node.id(), "node-9");
        assert!(node.addr().ip().is_loopback());
        assert_ne!(node.addr().port(), 0);
        let status = reqwest::get(format!("{}/health/ready", node.base_url()))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);

        let exit = node.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(exit.success(), "{exit}");
        let logs = node.logs();
        assert!(logs.iter().any(|l| l == "hello from node-9"), "{logs:?}");
        assert!(logs.iter().any(|l| l.contains("drained")), "{logs:?}");
    }

    #[tokio::test]
    async fn spawn_fails_with_the_log_tail_when_the_node_exits_early() {
        let script = "#!/bin/sh\necho 'config problem: jwt secret too short' >&2\nexit 64\n";
        let Some((_dir, fake)) = fake_binary(script) else {
            return;
        };
        let config = NodeConfig::new("postgres://unused", "redis://unused").binary(fake);
        let error = NodeProcess::spawn(config).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exited during start-up"), "{message}");
        assert!(message.contains("jwt secret too short"), "{message}");
    }

    #[tokio::test]
    async fn kill_leaves_no_process_behind() {
        let Some((_dir, fake)) = fake_binary(FAKE_NODE) else {
            return;
        };
        let config = NodeConfig::new("postgres://unused", "redis://unused").binary(fake);
        let mut node = NodeProcess::spawn(config).await.unwrap();
        let pid = node.pid();
        node.kill().unwrap();
        assert!(send_signal(pid, 0).is_err(), "pid {pid} reaped");
    }
}
