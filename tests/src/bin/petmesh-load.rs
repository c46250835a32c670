//! `petmesh-load`: HTTP and WebSocket load against a petmesh cluster (its balancer).
//!
//! Prepares users (and, with the admin password, pets to order), runs a weighted mix of API
//! calls open-loop at a fixed rate or closed-loop over N connections for a bounded time,
//! with optional WebSocket subscribers, prints a progress line on stderr every second and a
//! table on stdout at the end, and writes the whole report as JSON with `--json FILE`. The
//! work is done in `petmesh_tests::load`, which the chaos experiments share.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use petmesh_tests::load::{
    HttpLoad, LoadOptions, Mix, RetryPolicy, RunningLoad, Setup, SetupOptions, WsLoad, WsOptions,
};

/// HTTP and WebSocket load against a petmesh cluster.
#[derive(Debug, Parser)]
#[command(name = "petmesh-load", version)]
struct Cli {
    /// The cluster's entry point (the balancer).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How long to send requests, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: requests per second, latency measured from when each was due. Without it,
    /// closed loop over `--connections`.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: connections sending back to back. Open loop: most requests outstanding.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Kinds of request and their weights: browse (pet list), get (one pet), login, order
    /// (with an Idempotency-Key, retried with it).
    #[arg(long, default_value_t = Mix::default())]
    mix: Mix,
    /// Users to register and make requests as.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// The bootstrap admin's password: the run then creates pets with a large stock for its
    /// orders. Without it, orders go to the catalogue's available pets.
    #[arg(long, env = "PETMESH_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Bound on one attempt, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Most attempts per order (same Idempotency-Key).
    #[arg(long, default_value_t = 6)]
    order_attempts: u32,
    /// WebSocket subscribers (0: none).
    #[arg(long, default_value_t = 0)]
    ws_subscribers: usize,
    /// The topic they subscribe to.
    #[arg(long, default_value = "pets")]
    ws_topic: String,
    /// How long subscribers may take to catch up after the HTTP load, in seconds.
    #[arg(long, default_value_t = 5.0)]
    ws_settle: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petmesh-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    eprintln!("petmesh-load: preparing {} users at {}", cli.users, cli.url);
    let setup = Setup::prepare(
        &cli.url,
        &SetupOptions {
            users: cli.users,
            admin_password: cli.admin_password.clone(),
            order_pets: 10,
        },
    )
    .await
    .context("preparing the run")?;
    let setup = Arc::new(setup);
    let retry = RetryPolicy {
        max_attempts: cli.order_attempts.max(1),
        ..RetryPolicy::default()
    };
    let timeout = Duration::from_secs_f64(cli.timeout);
    let load = HttpLoad::new(Arc::clone(&setup), timeout, cli.connections, retry)?;
    let ws = if cli.ws_subscribers > 0 {
        eprintln!(
            "petmesh-load: connecting {} subscribers of {}",
            cli.ws_subscribers, cli.ws_topic
        );
        Some(
            WsLoad::start(WsOptions {
                base_url: setup.base_url.clone(),
                topic: cli.ws_topic.clone(),
                tokens: setup.users.iter().map(|u| u.token.clone()).collect(),
                subscribers: cli.ws_subscribers,
            })
            .await?,
        )
    } else {
        None
    };
    let options = LoadOptions {
        rate: cli.rate,
        connections: cli.connections,
        duration: Duration::from_secs_f64(cli.duration),
        mix: cli.mix.clone(),
        timeout,
        retry,
        progress: !cli.quiet,
    };
    let running = RunningLoad::start(load, options, ws);
    let report = running
        .finish(None, Duration::from_secs_f64(cli.ws_settle))
        .await;
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("petmesh-load: report written to {}", path.display());
    }
    Ok(())
}
