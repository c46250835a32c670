//! `petmesh-dev`: private servers and a local cluster for developers and scripts.
//!
//! `scripts/test` runs the test suite under `petmesh-dev with-servers`, and `scripts/cluster`
//! execs `petmesh-dev cluster`. The work is done in `petmesh_tests::dev`; this file only
//! parses arguments and turns results into exit codes.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use petmesh_tests::dev::{self, ClusterArgs};

/// Development helpers for petmesh.
#[derive(Debug, Parser)]
#[command(name = "petmesh-dev", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start private PostgreSQL and Redis servers, run COMMAND with DATABASE_URL (the
    /// maintenance database) and REDIS_URL set, then stop them. Exits with COMMAND's code.
    WithServers {
        /// The command and its arguments (put `--` before it).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Run a local cluster until Ctrl-C: servers (unless DATABASE_URL and REDIS_URL are set),
    /// database `petmesh`, migrations, seed data, N nodes. Prints `ready` when it is up.
    Cluster(ClusterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: every child is spawned from the thread that lives as long as the process,
    // which is what the parent-death signal is tied to.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Cmd::WithServers { command } => dev::with_servers::run(&command).await,
                    Cmd::Cluster(args) => dev::cluster::run(args).await,
                }
            })
        });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("petmesh-dev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
