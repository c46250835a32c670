//! `petmesh-balancer`: thin entry point. Parses the command line, loads and validates the
//! settings (refusing to start with one line per problem, exit 64), installs telemetry, and
//! serves until SIGTERM or Ctrl-C.
//!
//! The main runtime is current-thread: it only runs the control plane (discovery, health
//! probes, admin API); the data path runs on the worker threads the application starts.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use petmesh_balancer::{Application, Settings};
use petmesh_shared::{config, probe, shutdown, telemetry};

/// mimalloc rather than the system allocator: the data path allocates a few small buffers per
/// request (header maps, bodies, futures), and glibc's malloc/free were about a tenth of the
/// balancer's instructions per request (callgrind, README "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The petmesh load balancer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Optional YAML settings file; `PETMESH_BALANCER__*` variables override it.
    #[arg(long, global = true, env = "PETMESH_BALANCER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Proxy HTTP and WebSocket traffic to the nodes until SIGTERM or Ctrl-C, then drain and exit.
    Serve,
    /// Load and validate the settings exactly as `serve` would, connecting to nothing: exit 0,
    /// or 64 with one line per unknown or invalid setting.
    CheckConfig,
    /// Ask this balancer's admin `/health` (on `admin.port`) whether it is up: exit 0 or 1. For
    /// container health checks.
    Healthcheck,
}

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing to do).
///
/// Why: mimalloc asks for huge pages on its segments (`MADV_HUGEPAGE`, which the common THP
/// mode `madvise` honours), then gives freed pages back while a reconnect storm allocates and
/// frees connection state; every fault on a purged range then zeroes a whole 2 MiB page. In
/// the `slow-consumers` chaos experiment that zeroing (`clear_page_erms` under
/// `do_huge_pmd_anonymous_page`) was 39 % of the balancer's CPU (perf, docs/benchmarks.md).
/// The process flag rather than mimalloc's `MIMALLOC_ALLOW_THP=0`: it needs no environment
/// and covers every mapping, the runtime's included; 4 KiB pages cost the data path nothing
/// measurable (its working set is small).
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if done != 0 {
            // Kernels before 3.15 lack the flag: huge pages stay, which is slower, not wrong.
            eprintln!(
                "petmesh-balancer: could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // First: the flag is checked at every page fault, so memory mapped before still gets it.
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars().collect()) {
        Ok(settings) => settings,
        Err(problems) => return config::refuse(&problems),
    };
    match cli.command {
        Command::Serve => {}
        Command::CheckConfig => {
            println!("configuration ok");
            return ExitCode::SUCCESS;
        }
        Command::Healthcheck => {
            let addr = probe::local_addr(settings.admin.host, settings.admin.port);
            return probe::healthcheck("petmesh-balancer", addr, "/health");
        }
    }
    telemetry::init(settings.log.format, &settings.log.level);
    let result = async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown::signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "petmesh-balancer failed");
            eprintln!("petmesh-balancer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
