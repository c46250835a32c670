//! [`OwnedProcess`]: one long-running petmesh binary (a node or a balancer) owned by the
//! harness, with its output captured and its death guaranteed.
//!
//! Nodes and balancers start the same way: spawn with piped output, wait for the `listening`
//! log line that carries the addresses they bound, then for an HTTP probe to answer 200. This
//! type does all of that once; `NodeProcess` and `BalancerProcess` add what differs (which
//! fields to read, which URL to probe).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{capture_lines, log, send_signal, wait_timeout_async, LineReader, LogTail};

/// How many output lines of a process are kept for failure reports.
const LOG_LINES_KEPT: usize = 500;

/// How many of those go into an error message (all of them are printed to stderr).
const LOG_LINES_IN_ERROR: usize = 20;

/// How often start-up progress is polled.
const READY_POLL: Duration = Duration::from_millis(50);

/// How long to wait, once a process has exited, for its last output lines to be read.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Timeout of one readiness probe; a process that takes longer isn't ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A child process with its output in a [`LogTail`]. Its `Drop` is the one place that
/// guarantees the process is gone: SIGKILL unless it has exited, then reap; the log tail is
/// printed when the owner is dropped during a panic (a failing test).
#[derive(Debug)]
pub struct OwnedProcess {
    /// Prefixes its log lines (`node-1`, `balancer`).
    name: String,
    /// The process; reaped at the latest in `Drop`.
    child: Child,
    /// Its stdout and stderr, filled by two reader threads that end at EOF.
    logs: LogTail,
    /// Those two threads, to wait for the last lines of a process that has exited.
    readers: Vec<LineReader>,
}

impl OwnedProcess {
    /// Spawns `cmd` (see [`super::owned_command`]) with stdout and stderr piped into a log
    /// tail. Every stdout line goes to `on_stdout` first (to spot the `listening` line); with
    /// `echo`, every line is also printed to stderr as it arrives, prefixed with `name`.
    pub fn spawn(
        mut cmd: Command,
        name: impl Into<String>,
        echo: bool,
        mut on_stdout: impl FnMut(&str) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?} for {name}", cmd.get_program()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let logs = LogTail::new(LOG_LINES_KEPT);
        // From here on `Drop` kills the child if a reader fails to start.
        let mut process = Self {
            name,
            child,
            logs,
            readers: Vec::with_capacity(2),
        };
        let prefix = process.name.clone();
        let stdout_reader = capture_lines(stdout, process.logs.clone(), move |line| {
            on_stdout(line);
            if echo {
                eprintln!("[{prefix}] {}", log::render(line));
            }
        })
        .with_context(|| format!("starting the stdout reader of {}", process.name))?;
        process.readers.push(stdout_reader);
        let prefix = process.name.clone();
        let stderr_reader = capture_lines(stderr, process.logs.clone(), move |line| {
            if echo {
                eprintln!("[{prefix}] {line}");
            }
        })
        .with_context(|| format!("starting the stderr reader of {}", process.name))?;
        process.readers.push(stderr_reader);
        Ok(process)
    }

    /// The name its log lines are prefixed with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A snapshot of the last lines it wrote (stdout and stderr, interleaved as read).
    pub fn logs(&self) -> Vec<String> {
        self.logs.snapshot()
    }

    /// Prints the log tail to stderr, each line prefixed with the name.
    pub fn print_logs(&self) {
        self.logs.print(&self.name);
    }

    /// Sends `signal` (SIGSTOP and SIGCONT make a process hang and recover).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        send_signal(self.pid(), signal)
            .with_context(|| format!("sending signal {signal} to {}", self.name))
    }

    /// The exit status if it has exited, `None` while it runs.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))
    }

    /// SIGKILL unless already exited, then reap and collect the last output lines.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.try_wait()?.is_none() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
        }
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.drain_output();
        Ok(())
    }

    /// Sends SIGTERM (unless it has exited) and waits up to `timeout` for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.try_wait()?.is_none() {
            self.signal(libc::SIGTERM)?;
        }
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for it to exit by itself; an error if it doesn't.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match wait_timeout_async(&mut self.child, timeout)
            .await
            .with_context(|| format!("waiting for {}", self.name))?
        {
            Some(status) => {
                self.drain_output();
                Ok(status)
            }
            None => bail!("{} still running after {timeout:?}", self.name),
        }
    }

    /// Start-up, step by step: waits until the `listening` line has been seen (the stdout
    /// callback stored what it carried in `listening`), then until `GET probe_url(..)` answers
    /// 200, all within `timeout` of `since`.
    ///
    /// On failure the log is printed to stderr and the error carries its last lines.
    pub async fn wait_ready<T: Clone>(
        &mut self,
        listening: &Mutex<Option<T>>,
        probe_url: impl Fn(&T) -> String,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        match self
            .wait_listening_then_ok(listening, probe_url, since + timeout, timeout)
            .await
        {
            Ok(found) => Ok(found),
            Err(e) => Err(self.start_up_failed(e)),
        }
    }

    /// The steps of [`OwnedProcess::wait_ready`]; errors carry no log yet.
    async fn wait_listening_then_ok<T: Clone>(
        &mut self,
        listening: &Mutex<Option<T>>,
        probe_url: impl Fn(&T) -> String,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let found = loop {
            self.fail_if_exited()?;
            if let Some(found) = listening
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                break found;
            }
            if Instant::now() >= deadline {
                bail!("no `listening` log line within {timeout:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        };

        let url = probe_url(&found);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .context("building the readiness client")?;
        loop {
            self.fail_if_exited()?;
            let last = match client.get(&url).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(found),
                Ok(resp) => format!("status {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("GET {url} not 200 within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("exited during start-up ({status})");
        }
        Ok(())
    }

    /// Prints the log and wraps `error` with the name and the last lines.
    fn start_up_failed(&mut self, error: anyhow::Error) -> anyhow::Error {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.drain_output();
        }
        self.logs.print(&self.name);
        let tail = self.logs.snapshot();
        let tail = &tail[tail.len().saturating_sub(LOG_LINES_IN_ERROR)..];
        anyhow::anyhow!(
            "{} did not become ready: {error:#}\n--- its last {} lines (more on stderr) ---\n{}",
            self.name,
            tail.len(),
            tail.join("\n")
        )
    }

    /// Waits (boundedly) until the reader threads have stored everything the exited process
    /// wrote, so that a log snapshot taken next is complete.
    fn drain_output(&self) {
        let deadline = Instant::now() + OUTPUT_DRAIN;
        for reader in &self.readers {
            reader.wait(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        // Killed first, so the tail printed for a failed test includes its very last lines.
        if let Err(e) = self.kill() {
            eprintln!("petmesh-tests: {e:#}");
        }
        if std::thread::panicking() {
            self.logs.print(&self.name);
        }
    }
}

/// `addr` with an unspecified IP (listening on all interfaces) replaced by loopback, so it
/// can be connected to.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
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
}
