//! A private PostgreSQL server: `initdb` into a temporary directory, then `postgres` as a child.
//!
//! We run the postmaster ourselves instead of through `pg_ctl`, which would daemonize it:
//! owning the process is what lets `Drop` and `PR_SET_PDEATHSIG` guarantee it goes away.
//! PostgreSQL refuses to run as root, so under root (CI containers) both programs run as the
//! `postgres` system user that the Debian package creates.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::Connection as _;
use tempfile::TempDir;

use super::{log_tail, read_log, start_on_free_port, READY_POLL, READY_TIMEOUT};
use crate::process::{kill_with_parent, stop};

/// Where Debian and Ubuntu install the server binaries, one directory per major version.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// Settings that trade durability for speed; the data is thrown away anyway.
/// `max_connections` is high because every node has its own pool and tests run in parallel.
const SERVER_SETTINGS: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
];

/// How long the postmaster gets for a "fast" shutdown before it is SIGKILLed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running PostgreSQL server owned by the harness; stopped and deleted on drop.
///
/// Authentication is `trust` for the superuser `postgres`, over TCP on 127.0.0.1 only, and
/// over a unix socket inside the temporary directory (never the system-wide one).
#[derive(Debug)]
pub struct PostgresServer {
    /// The postmaster. Stopped in `Drop` with SIGINT ("fast" shutdown), SIGKILL after a grace.
    child: Child,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The server's log (its stderr), read back for error messages.
    log_path: PathBuf,
    /// Data directory, socket directory and logs. Declared last so it is removed only after
    /// `Drop` has stopped the server that writes into it.
    dir: TempDir,
}

/// A system user the servers run as when the harness runs as root.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

// === impl PostgresServer ===

impl PostgresServer {
    /// Initialises a fresh cluster and starts a server on a free port, returning once it
    /// accepts connections (up to 30 s).
    ///
    /// Fails with the server's log when it exits or never becomes ready.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("petmesh-pg-")
            .tempdir()
            .context("creating a temporary directory for PostgreSQL")?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to the postgres user", dir.path().display()))?;
        }
        initdb(&bin, dir.path(), run_as).await?;

        let log_path = dir.path().join("postgres.log");
        let (bin, data, log) = (&bin, dir.path(), &log_path);
        let (child, port) = start_on_free_port("postgres", log, |port| async move {
            let mut child = spawn_postgres(bin, data, log, port, run_as)?;
            match wait_ready(&mut child, port, log).await {
                Ok(()) => Ok((child, port)),
                Err(e) => {
                    stop_postmaster(&mut child);
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

    /// Stops the server with a fast shutdown (SIGINT: sessions are ended, the data is kept;
    /// SIGKILL after 10 s). Its port stays closed until [`PostgresServer::start_again`].
    pub fn stop(&mut self) {
        stop_postmaster(&mut self.child);
    }

    /// Starts the server again on the same data directory and port (after
    /// [`PostgresServer::stop`]), returning once it accepts connections.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        let mut child = spawn_postgres(&bin, self.dir.path(), &self.log_path, self.port, run_as)?;
        if let Err(e) = wait_ready(&mut child, self.port, &self.log_path).await {
            stop_postmaster(&mut child);
            return Err(e);
        }
        self.child = child;
        Ok(())
    }

    /// The maintenance database URL: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the postmaster.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding the data directory (`data/`), the unix socket and
    /// the logs; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        stop_postmaster(&mut self.child);
    }
}

// === start-up steps ===

/// Polls with real connections until one succeeds, the child exits, or the deadline passes.
async fn wait_ready(child: &mut Child, port: u16, log_path: &Path) -> anyhow::Result<()> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("polling postgres")? {
            bail!(
                "postgres exited during start-up ({status}); its log ends with:\n{}",
                log_tail(&read_log(log_path), 30)
            );
        }
        let last_error =
            match tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_owned(),
            };
        if Instant::now() >= deadline {
            bail!(
                "postgres on port {port} not ready after {READY_TIMEOUT:?} (last error: {last_error}); \
                 its log ends with:\n{}",
                log_tail(&read_log(log_path), 30)
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Fast shutdown (SIGINT), then SIGKILL after the grace. Errors are only reported, because
/// this also runs in `Drop`.
fn stop_postmaster(child: &mut Child) {
    if let Err(e) = stop(child, libc::SIGINT, SHUTDOWN_GRACE) {
        eprintln!("petmesh-tests: stopping postgres (pid {}): {e}", child.id());
    }
}

/// The directory holding `initdb` and `postgres`: the highest version under
/// `/usr/lib/postgresql`, else whatever `pg_config --bindir` says (non-Debian systems).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PREFIX)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let output = Command::new("pg_config").arg("--bindir").output();
    if let Ok(output) = output {
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && bin.join("postgres").is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no PostgreSQL server found (looked in {DEBIAN_PREFIX}/*/bin and `pg_config --bindir`); \
         install the `postgresql` package (scripts/lib/deps.sh does it)"
    )
}

/// `Some(postgres user)` when we are root and must drop privileges, `None` otherwise.
fn run_as() -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).context(
        "running as root, so PostgreSQL must run as the `postgres` user, which was not found",
    )
}

/// Looks a user up in the password database (thread-safe `getpwnam_r`).
fn lookup_user(name: &str) -> anyhow::Result<RunAs> {
    let c_name = CString::new(name).context("user name contains a NUL byte")?;
    // SAFETY: zeroed `passwd` is a valid out-parameter; `buf` outlives the call and is only
    // referenced by the string fields we don't read.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .with_context(|| format!("looking up user {name}"));
        }
        if result.is_null() {
            bail!("user {name} does not exist");
        }
        Ok(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// A command for one of the PostgreSQL programs, as the right user, tied to our lifetime.
fn pg_command(bin: &Path, program: &str, dir: &Path, run_as: Option<RunAs>) -> Command {
    let mut cmd = Command::new(bin.join(program));
    // Our working directory may be unreadable for the postgres user, and both programs
    // complain when they can't resolve it.
    cmd.current_dir(dir).stdin(Stdio::null()).process_group(0);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    // Set after the uid switch (std runs pre_exec hooks last), because changing credentials
    // clears the parent-death signal.
    kill_with_parent(&mut cmd, libc::SIGKILL);
    cmd
}

/// Creates the cluster in `<dir>/data` with trust authentication and no locale (faster, and
/// sorting doesn't depend on the machine).
async fn initdb(bin: &Path, dir: &Path, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let log_path = dir.join("initdb.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = pg_command(bin, "initdb", dir, run_as);
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .stdout(
            log.try_clone()
                .context("duplicating the initdb log handle")?,
        )
        .stderr(log);
    // Spawned here, on this thread, and awaited by polling: waiting on a blocking thread
    // would tie the parent-death signal to a thread tokio may retire.
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", bin.join("initdb").display()))?;
    let status = crate::process::wait_timeout_async(&mut child, READY_TIMEOUT)
        .await
        .context("waiting for initdb")?;
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!(
            "initdb failed ({status}):\n{}",
            log_tail(&read_log(&log_path), 30)
        ),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "initdb did not finish within {READY_TIMEOUT:?}:\n{}",
                log_tail(&read_log(&log_path), 30)
            )
        }
    }
}

/// Starts the postmaster on `port`, logging to `log_path` (truncated first).
fn spawn_postgres(
    bin: &Path,
    dir: &Path,
    log_path: &Path,
    port: u16,
    run_as: Option<RunAs>,
) -> anyhow::Result<Child> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = pg_command(bin, "postgres", dir, run_as);
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(dir);
    for setting in SERVER_SETTINGS {
        cmd.args(["-c", setting]);
    }
    cmd.stdout(
        log.try_clone()
            .context("duplicating the postgres log handle")?,
    )
    .stderr(log);
    cmd.spawn()
        .with_context(|| format!("spawning {}", bin.join("postgres").display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_user_finds_root_and_rejects_strangers() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup_user("no-such-user-petmesh").is_err());
    }

    /// Starts a real server: needs PostgreSQL installed (scripts/lib/deps.sh).
    #[tokio::test]
    async fn started_server_answers_queries_and_is_gone_after_drop() {
        let server = PostgresServer::start().await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&server.url()).await.unwrap();
        let one: i32 = sqlx::query_scalar("select 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
        conn.close().await.unwrap();

        let dir = server.dir.path().to_owned();
        let pid = server.pid();
        drop(server);
        assert!(!dir.exists(), "data directory removed");
        assert!(
            crate::process::send_signal(pid, 0).is_err(),
            "postmaster reaped"
        );
    }
}
