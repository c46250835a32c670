//! Owning child processes: the rules every server and node the harness starts follows.
//!
//! The harness starts PostgreSQL, Redis and node processes itself instead of relying on
//! daemons, so it must also make sure none of them outlives it. Three mechanisms overlap:
//!
//! 1. Every owner type kills and reaps its child in `Drop`.
//! 2. [`kill_with_parent`] sets `PR_SET_PDEATHSIG`, so the kernel kills the child even when the
//!    harness itself is SIGKILLed and no `Drop` runs.
//! 3. Children never inherit the harness's stdout/stderr (they get pipes or log files), so a
//!    test runner waiting for those handles to close (nextest's leak detection) is not held up.
//! 4. Servers and nodes run in process groups of their own, so a Ctrl-C on the terminal
//!    reaches only the harness, which then stops them in order (nodes drain before the
//!    database goes away) instead of everything receiving SIGINT at once.
//!
//! Caveat on (2): Linux delivers the parent-death signal when the *thread* that forked the
//! child exits, not the process. Spawn children from a thread that lives as long as their owner
//! (a test's own thread, a tokio worker), never from `spawn_blocking` or a short-lived thread.
//!
//! The petmesh binaries themselves (nodes, balancers) are run through [`owned_command`] and
//! [`OwnedProcess`], which apply all of the above and read their JSON logs ([`log`]).

pub mod log;
mod owned;

pub use owned::{connectable, OwnedProcess};

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Environment variable that, when set, makes the logs of nodes and balancers go to stderr
/// live, and keeps `RUST_LOG`.
pub const TEST_LOG_ENV: &str = "TEST_LOG";

/// How often the wait helpers poll a child for exit.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Makes the kernel send `signal` to the child spawned by `cmd` when its parent thread dies.
///
/// Also refuses to start the child when the parent has already died between `fork` and the
/// `prctl` call (the child would otherwise be orphaned with no signal ever coming).
pub fn kill_with_parent(cmd: &mut Command, signal: libc::c_int) {
    let parent = std::process::id();
    // SAFETY: the hook runs between fork and exec, so it may only make async-signal-safe
    // calls: prctl and getppid are plain syscalls and nothing here allocates or locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process `pid`. Sending to a process that has already exited but has
/// not been reaped yet is fine (it's still a zombie with that pid).
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for `child` to exit, blocking the current thread.
/// Returns `None` when it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(WAIT_POLL);
    }
}

/// Like [`wait_timeout`], but sleeps on the tokio timer so other tasks keep running meanwhile
/// (a test may want to finish an in-flight request while a node drains).
pub async fn wait_timeout_async(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Asks `child` to stop with `signal`, waits up to `grace`, then SIGKILLs it; always reaps it.
/// Returns the exit status, or `None` if it had to be killed.
pub fn stop(
    child: &mut Child,
    signal: libc::c_int,
    grace: Duration,
) -> io::Result<Option<ExitStatus>> {
    if child.try_wait()?.is_none() {
        send_signal(child.id(), signal)?;
        if let Some(status) = wait_timeout(child, grace)? {
            return Ok(Some(status));
        }
        child.kill()?;
        child.wait()?;
        return Ok(None);
    }
    child.wait().map(Some)
}

/// A command running `program` the way the harness runs every petmesh binary: no stdin, a
/// process group of its own (so a terminal's Ctrl-C reaches only the harness, which stops
/// processes in order), `RUST_LOG` removed unless `TEST_LOG` is set (a developer's `RUST_LOG`
/// would change what tests see and may drown the `listening` line), and killed by the kernel
/// if the harness dies. Arguments, environment and output are the caller's.
pub fn owned_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).process_group(0);
    if std::env::var_os(TEST_LOG_ENV).is_none() {
        cmd.env_remove("RUST_LOG");
    }
    kill_with_parent(&mut cmd, libc::SIGKILL);
    cmd
}

/// Runs `program subcommand` to completion with only `env` in its environment (nothing
/// inherited, as a container would run it), returning its exit code and stderr.
pub async fn run_isolated(
    program: &Path,
    subcommand: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(program)
        .arg(subcommand)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap_or_else(|err| panic!("running {}: {err}", program.display()));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Finds a binary of the workspace: the path in `env_var` if set, else `file_name` next to
/// the running executable or one directory up.
///
/// Test executables live in `<target>/<profile>/deps/` and `petmesh-dev` in
/// `<target>/<profile>/`, while the binaries are in `<target>/<profile>/`; cargo only sets
/// `CARGO_BIN_EXE_*` for a package's own binaries, so this crate has to look for them.
pub fn find_binary(file_name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{env_var} is set to {}, which is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(file_name))
        .collect();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "{file_name} not found (looked at {}); run `cargo build --workspace --bins` first, \
         or point {env_var} at it",
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// === impl LogTail ===

/// The last lines a child process wrote, shared between the threads that read its output
/// and whoever wants to show them after a failure.
///
/// Bounded, because a node may log for the whole length of a long test and only the end
/// helps to explain a failure.
#[derive(Clone, Debug)]
pub struct LogTail {
    /// Lines in arrival order; the reader threads append, anyone may snapshot.
    lines: Arc<Mutex<VecDeque<String>>>,
    /// How many lines are kept; older ones are dropped first.
    capacity: usize,
}

impl LogTail {
    /// An empty buffer keeping at most `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity,
        }
    }

    /// Appends one line, dropping the oldest when full.
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// A copy of the lines kept so far, oldest first.
    pub fn snapshot(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    /// Prints the kept lines to stderr, each prefixed with `[prefix]`.
    pub fn print(&self, prefix: &str) {
        let lines = self.snapshot();
        eprintln!("----- [{prefix}] last {} log lines -----", lines.len());
        for line in lines {
            eprintln!("[{prefix}] {line}");
        }
        eprintln!("----- [{prefix}] end of log -----");
    }
}

/// Reads `source` line by line on a new thread until EOF, handing every line to `on_line`
/// before storing it in `tail`. Invalid UTF-8 is replaced rather than ending the stream.
///
/// The thread ends by itself when the child closes its end of the pipe; the returned
/// [`LineReader`] tells when that has happened.
pub fn capture_lines<R, F>(source: R, tail: LogTail, mut on_line: F) -> io::Result<LineReader>
where
    R: Read + Send + 'static,
    F: FnMut(&str) + Send + 'static,
{
    let (done_tx, done) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("petmesh-log-reader".into())
        .spawn(move || {
            // Dropped when the thread ends, however it ends, which is what `LineReader` sees.
            let _done_tx = done_tx;
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']);
                        on_line(line);
                        tail.push(line.to_owned());
                    }
                }
            }
        })?;
    Ok(LineReader { done })
}

// === impl LineReader ===

/// The thread started by [`capture_lines`], seen from its owner.
///
/// A process that has exited may still have lines in the pipe that the thread hasn't stored
/// yet, so anyone showing the last lines of a dead process waits on this first.
#[derive(Debug)]
pub struct LineReader {
    /// Disconnects when the reader thread ends (it holds the only sender).
    done: mpsc::Receiver<()>,
}

impl LineReader {
    /// Waits up to `timeout` for the reader to reach end of file; `false` if it hasn't (a
    /// grandchild may still hold the pipe open).
    pub fn wait(&self, timeout: Duration) -> bool {
        !matches!(
            self.done.recv_timeout(timeout),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn log_tail_keeps_only_the_newest_lines() {
        let tail = LogTail::new(3);
        for i in 0..5 {
            tail.push(format!("line {i}"));
        }
        assert_eq!(tail.snapshot(), ["line 2", "line 3", "line 4"]);
    }

    #[test]
    fn capture_lines_reads_until_eof_and_handles_missing_final_newline() {
        let tail = LogTail::new(10);
        let (tx, rx) = mpsc::channel();
        let reader = capture_lines(&b"one\ntwo\r\nthree"[..], tail.clone(), move |line| {
            tx.send(line.to_owned()).unwrap();
        })
        .unwrap();
        assert!(reader.wait(Duration::from_secs(5)), "reader reaches EOF");
        let seen: Vec<String> = rx.iter().collect();
        assert_eq!(seen, ["one", "two", "three"]);
        assert_eq!(tail.snapshot(), ["one", "two", "three"]);
    }

    #[test]
    fn stop_sends_the_signal_and_reports_the_exit() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        kill_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn().unwrap();
        let status = stop(&mut child, libc::SIGTERM, Duration::from_secs(5))
            .unwrap()
            .expect("sleep exits on SIGTERM");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}
