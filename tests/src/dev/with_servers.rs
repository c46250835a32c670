//! `petmesh-dev with-servers -- COMMAND [ARGS...]`: run a command next to private servers.
//!
//! `scripts/test` runs the whole test suite this way, so that every test process shares one
//! PostgreSQL and one Redis (each test still gets its own database and key prefix) instead
//! of starting a pair per test. The servers exist exactly as long as the command.
//!
//! With `PETMESH_TEST_REDIS=cluster` the Redis is a Redis Cluster (three masters, a replica
//! each): `REDIS_URL` is then its comma-separated seed list, and `PETMESH_TEST_REDIS_MODE`
//! says `cluster` (else `standalone`), which the harness passes on to nodes and balancers.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::Context as _;

use super::{in_terminal_foreground, ShutdownSignals};
use crate::process::{kill_with_parent, send_signal};
use crate::redis_mode::{RedisMode, REDIS_MODE_ENV, START_REDIS_ENV};
use crate::servers::{PostgresServer, PrivateRedis};

/// How often the command is polled for exit.
const POLL: Duration = Duration::from_millis(50);

/// Starts the servers, runs `command` with `DATABASE_URL` (the maintenance database),
/// `REDIS_URL` and `PETMESH_TEST_REDIS_MODE` in its environment, stops the servers, and
/// returns the exit code to exit with: the command's own, or 128 + the signal that ended it.
///
/// SIGINT and SIGTERM are passed on to the command (a second one kills it); the servers
/// are stopped only once it has exited.
pub async fn run(command: &[OsString]) -> anyhow::Result<i32> {
    let (program, args) = command.split_first().context("no command given")?;
    let redis_mode = crate::redis_mode::mode_from_env(START_REDIS_ENV)?;
    let mut signals = ShutdownSignals::install()?;
    // A signal during start-up drops the half-started servers, which stops and deletes them.
    let (postgres, redis) = tokio::select! {
        servers = start_servers(redis_mode) => servers?,
        signal = signals.recv() => return Ok(128 + signal),
    };

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("DATABASE_URL", postgres.url())
        .env("REDIS_URL", redis.url())
        .env(REDIS_MODE_ENV, redis.mode().as_str());
    // SIGTERM rather than SIGKILL: if we die, the command still gets to stop its own
    // children (test binaries, nodes) instead of orphaning them.
    kill_with_parent(&mut cmd, libc::SIGTERM);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", program.to_string_lossy()))?;
    let status = wait_forwarding(&mut child, &mut signals).await?;

    drop(redis);
    drop(postgres);
    Ok(exit_code(status))
}

/// Starts PostgreSQL and a Redis of `redis_mode` at once; if one fails, the other is dropped
/// (stopped) with it.
pub(crate) async fn start_servers(
    redis_mode: RedisMode,
) -> anyhow::Result<(PostgresServer, PrivateRedis)> {
    let (postgres, redis) = tokio::join!(PostgresServer::start(), PrivateRedis::start(redis_mode));
    let postgres = postgres.context("starting PostgreSQL")?;
    let redis = redis.context("starting Redis")?;
    Ok((postgres, redis))
}

/// Waits for `child`, passing SIGINT and SIGTERM on to it; a second signal kills it.
///
/// SIGINT is not passed on when we run in the terminal's foreground process group: Ctrl-C
/// has then reached the command already, and a second SIGINT means "stop right now" to
/// many programs (nextest, for one), which would skip its clean-up.
async fn wait_forwarding(
    child: &mut Child,
    signals: &mut ShutdownSignals,
) -> anyhow::Result<ExitStatus> {
    let mut signalled = false;
    loop {
        if let Some(status) = child.try_wait().context("polling the command")? {
            return Ok(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            signal = signals.recv() => {
                if signalled {
                    eprintln!("petmesh-dev: second signal, killing the command");
                    let _ = child.kill();
                } else {
                    signalled = true;
                    if signal == libc::SIGTERM || !in_terminal_foreground() {
                        send_signal(child.id(), signal).context("passing the signal on")?;
                    }
                    eprintln!("petmesh-dev: waiting for the command to exit (signal again to kill it)");
                }
            }
        }
    }
}

/// The code a shell would report for `status`: the exit code, or 128 + signal number.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_shell_conventions() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGTERM)),
            128 + libc::SIGTERM
        );
    }
}
