//! Node processes: the real `petmesh-node` binary, spawned, watched and stopped by the harness.
//!
//! Cluster behaviour (registry, pub/sub fan-out, draining on SIGTERM, a node dying) can only
//! be tested with separate processes, so the harness runs the binary the way production
//! does, configured through its environment ([`NodeConfig`]). A node is ready when it has
//! logged the address it bound ([`log::listening_addr`]) and `/health/ready` answers 200.
//!
//! Everything a node writes is kept in a bounded [`LogTail`](crate::LogTail); it is printed,
//! prefixed with the node id, whenever a node fails to start or a test panics while owning
//! the node. The process handling itself is [`OwnedProcess`], shared with balancers.

mod config;

pub use config::{node_binary, random_token, NodeConfig, NODE_BIN_ENV, TEST_LOG_ENV};

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::process::{connectable, log, OwnedProcess};

/// A running, ready node. Killed (SIGKILL) and reaped on drop; use [`NodeProcess::terminate`]
/// for a graceful stop.
#[derive(Debug)]
pub struct NodeProcess {
    /// The process (named after the node id) and its output.
    node: OwnedProcess,
    /// The address from the node's `listening` line.
    addr: SocketAddr,
}

/// A node that has been spawned but may not be ready yet; [`StartingNode::ready`] waits.
///
/// Splitting the two lets a cluster spawn all its nodes first and then wait for them, so
/// they start in parallel. Dropping it kills the process.
#[derive(Debug)]
pub struct StartingNode {
    /// The process (named after the node id) and its output.
    node: OwnedProcess,
    /// Set by the stdout reader thread when the `listening` line arrives.
    addr: Arc<Mutex<Option<SocketAddr>>>,
    /// When the process was spawned; readiness is measured from here.
    spawned_at: Instant,
    /// How long readiness may take.
    ready_timeout: Duration,
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
        let addr = Arc::new(Mutex::new(None));
        let found = Arc::clone(&addr);
        let node = OwnedProcess::spawn(
            config.command("serve")?,
            config.node_id.clone(),
            config.echo_logs,
            move |line| {
                if let Some(listening) = log::listening_addr(line) {
                    // First one wins: only the node's own line counts, not a library's.
                    found
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(listening);
                }
            },
        )?;
        Ok(StartingNode {
            node,
            addr,
            spawned_at: Instant::now(),
            ready_timeout: config.ready_timeout,
        })
    }

    /// The node id (`node-1`, ...).
    pub fn id(&self) -> &str {
        self.node.name()
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
        self.node.pid()
    }

    /// A snapshot of the last lines the node wrote (stdout and stderr, interleaved as read).
    pub fn logs(&self) -> Vec<String> {
        self.node.logs()
    }

    /// Prints the node's log tail to stderr, each line prefixed with the node id.
    pub fn print_logs(&self) {
        self.node.print_logs();
    }

    /// Sends `signal` to the node (SIGSTOP and SIGCONT make a node hang and recover).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.node.signal(signal)
    }

    /// The exit status if the node has exited, `None` while it runs.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.node.try_wait()
    }

    /// Kills the node with SIGKILL (a crash, as far as the cluster can tell) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.node.kill()
    }

    /// Sends SIGTERM and waits up to `timeout` for the node to drain and exit, returning its
    /// exit status. On timeout the node keeps running and an error is returned.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.node.terminate(timeout).await
    }

    /// Waits up to `timeout` for the node to exit by itself; an error if it doesn't.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.node.wait_exit(timeout).await
    }
}

// === impl StartingNode ===

impl StartingNode {
    /// The node id.
    pub fn id(&self) -> &str {
        self.node.name()
    }

    /// Waits for the `listening` line, then for `/health/ready` to answer 200.
    ///
    /// Fails, after printing the node's log to stderr, if the process exits first or the
    /// deadline passes.
    pub async fn ready(mut self) -> anyhow::Result<NodeProcess> {
        let addr = self
            .node
            .wait_ready(
                &self.addr,
                |addr| format!("http://{}/health/ready", connectable(*addr)),
                self.spawned_at,
                self.ready_timeout,
            )
            .await?;
        Ok(NodeProcess {
            node: self.node,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::send_signal;

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
