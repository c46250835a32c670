//! A private Redis server: `redis-server` as a child with persistence turned off.
//!
//! Readiness is a raw RESP `PING` over TCP, so the harness doesn't need a Redis client of its
//! own: tests talk to Redis only through the nodes, or bring their own client.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{log_tail, read_log, start_on_free_port, READY_POLL, READY_TIMEOUT};
use crate::process::kill_with_parent;

/// The server program, looked up on `PATH`.
const PROGRAM: &str = "redis-server";

/// A running Redis server owned by the harness; killed and deleted on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// The server process. SIGKILLed in `Drop`: there is nothing on disk worth a clean exit.
    child: Child,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The server's log (its stdout), read back for error messages.
    log_path: PathBuf,
    /// Working directory and log. Declared last so it is removed after the server is dead.
    dir: TempDir,
}

// === impl RedisServer ===

impl RedisServer {
    /// Starts a server on a free port, returning once it answers `PING` (up to 30 s).
    ///
    /// Fails with the server's log when it exits or never becomes ready.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("petmesh-redis-")
            .tempdir()
            .context("creating a temporary directory for Redis")?;
        let log_path = dir.path().join("redis.log");
        let (work, log) = (dir.path(), &log_path);
        let (child, port) = start_on_free_port("redis", log, |port| async move {
            let mut child = spawn_redis(work, log, port, &[])?;
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
            dir,
        })
    }

    /// Kills the server (its data is lost, as in a crash without persistence) and leaves it
    /// down, its port closed, until [`RedisServer::restart`] starts a new one on the same port.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server (its data is lost, as in a crash without persistence) and starts a new
    /// one on the same port, returning once it answers `PING`. After
    /// [`RedisServer::stop`] it only starts the new one.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut child = spawn_redis(self.dir.path(), &self.log_path, self.port, &[])?;
        if let Err(e) = wait_ready(&mut child, self.port, &self.log_path).await {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = child;
        Ok(())
    }

    /// The URL clients connect with: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary working directory holding the log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            eprintln!(
                "petmesh-tests: reaping redis (pid {}): {e}",
                self.child.id()
            );
        }
    }
}

/// Starts `redis-server` on `port` with no snapshots and no append-only file, so it never
/// writes anything but its log (truncated first) into `dir`. `extra` arguments come last (a
/// cluster member's `--cluster-*` settings), so they may override the ones here.
pub(super) fn spawn_redis(
    dir: &Path,
    log_path: &Path,
    port: u16,
    extra: &[String],
) -> anyhow::Result<Child> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(PROGRAM);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("duplicating the redis log handle")?,
        )
        .stderr(log);
    kill_with_parent(&mut cmd, libc::SIGKILL);
    cmd.spawn().with_context(|| {
        format!("spawning {PROGRAM}; is it installed? (scripts/lib/deps.sh installs the redis-server package)")
    })
}

/// Sends `PING` until the answer is `+PONG`, the child exits, or the deadline passes.
pub(super) async fn wait_ready(
    child: &mut Child,
    port: u16,
    log_path: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("polling redis-server")? {
            bail!(
                "redis-server exited during start-up ({status}); its log ends with:\n{}",
                log_tail(&read_log(log_path), 30)
            );
        }
        let last_error = match tokio::time::timeout(Duration::from_secs(2), ping(port)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "PING timed out".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "redis-server on port {port} not ready after {READY_TIMEOUT:?} (last error: {last_error}); \
                 its log ends with:\n{}",
                log_tail(&read_log(log_path), 30)
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// One inline `PING`; anything but `+PONG` (such as `-LOADING`) is an error.
async fn ping(port: u16) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting")?;
    stream
        .write_all(b"PING\r\n")
        .await
        .context("sending PING")?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).await.context("reading the reply")?;
    let reply = String::from_utf8_lossy(&reply[..n]);
    if reply.starts_with("+PONG") {
        Ok(())
    } else {
        bail!("unexpected reply to PING: {:?}", reply.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a real server: needs redis-server installed (scripts/lib/deps.sh).
    #[tokio::test]
    async fn started_server_answers_ping_and_is_gone_after_drop() {
        let server = RedisServer::start().await.unwrap();
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        ping(server.port()).await.unwrap();

        let dir = server.dir.path().to_owned();
        let port = server.port();
        drop(server);
        assert!(!dir.exists(), "working directory removed");
        assert!(ping(port).await.is_err(), "nothing listens any more");
    }
}
