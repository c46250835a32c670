//! `petmesh-dev chaos <experiment>`: a failure injected into a real cluster (3 nodes, the
//! balancer, Redis, PostgreSQL, all processes of the harness) under steady load from the
//! load generator ([`crate::load`]), ending with the figures and one verdict line, `PASS` or
//! `FAIL`, on correctness properties. Timings are printed, never judged: they depend on the
//! machine.
//!
//! - [`node_kill`]: SIGKILL one node under mixed HTTP and WebSocket load.
//! - [`order_burst`]: a burst of keyed orders for scarce stock, a node killed mid-burst,
//!   then stock, duplicates and payments checked in PostgreSQL.
//! - [`postgres_restart`]: PostgreSQL stopped for 10 s and started again under load.
//! - [`redis_outage`]: Redis killed for 10 s and started again (empty) under reads,
//!   orders and subscribers.
//! - [`rolling_restart`]: every node drained (SIGTERM) and replaced in turn under mixed HTTP
//!   and WebSocket load.
//! - [`slow_consumers`]: a storm of WebSocket clients connecting at once and readers that stop
//!   reading, against the latency of the other clients.
//!
//! Each has a short form (`--short`, or `CHAOS_SHORT=1`) for CI, bounded to about a minute.
//! Several experiments (or `all`) run one after the other in one process and end with a
//! summary table: one row per experiment with its verdict, duration and key figures.

mod node_kill;
mod order_burst;
mod postgres_restart;
mod redis_outage;
mod rolling_restart;
mod slow_consumers;
mod summary;

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::cluster::TestCluster;
use crate::load::{Setup, SetupOptions, WsLoad, WsOptions};

/// Options of `petmesh-dev chaos`.
#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// The experiments to run, in order (`all`: every one).
    #[arg(value_enum, required = true)]
    pub experiments: Vec<Experiment>,
    /// The short form: smaller numbers, about a minute (for CI).
    #[arg(long, env = "CHAOS_SHORT", value_parser = clap::builder::FalseyValueParser::new())]
    pub short: bool,
    /// Also write the figures and the verdict as JSON to this file (with several experiments,
    /// one document holding each experiment's and the summary).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The experiments.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Experiment {
    /// SIGKILL one of three nodes under steady mixed load with WebSocket subscribers.
    NodeKill,
    /// Concurrent keyed orders for scarce stock, a node SIGKILLed mid-burst.
    OrderBurst,
    /// Each of three nodes SIGTERMed and replaced in turn under steady mixed load.
    RollingRestart,
    /// Redis down for 10 s, then started again empty, under load.
    RedisOutage,
    /// PostgreSQL stopped for 10 s, then started again, under load.
    PostgresRestart,
    /// A storm of WebSocket clients and readers that stop reading, under steady load: the
    /// other clients' p99 must stay within 20 % of a quiet window's.
    SlowConsumers,
    /// Every experiment above, in this order.
    All,
}

impl Experiment {
    /// Every experiment, in the order `all` runs them.
    const EVERY: [Experiment; 6] = [
        Experiment::NodeKill,
        Experiment::OrderBurst,
        Experiment::RollingRestart,
        Experiment::RedisOutage,
        Experiment::PostgresRestart,
        Experiment::SlowConsumers,
    ];

    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Experiment::NodeKill => "node-kill",
            Experiment::OrderBurst => "order-burst",
            Experiment::RollingRestart => "rolling-restart",
            Experiment::RedisOutage => "redis-outage",
            Experiment::PostgresRestart => "postgres-restart",
            Experiment::SlowConsumers => "slow-consumers",
            Experiment::All => "all",
        }
    }
}

/// One correctness property and whether it held.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What must hold, e.g. "failed idempotent requests".
    pub property: String,
    /// The value measured.
    pub value: u64,
    /// The value it must have, or must not exceed (`at_most`).
    pub expected: u64,
    /// Whether `expected` is a bound (`value <= expected`) rather than the value itself.
    pub at_most: bool,
}

impl Check {
    fn held(&self) -> bool {
        if self.at_most {
            self.value <= self.expected
        } else {
            self.value == self.expected
        }
    }
}

/// What an experiment found: figures to print, and the checks that decide the verdict.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    /// `(name, value)` lines, printed in order.
    pub figures: Vec<(String, String)>,
    /// The correctness properties.
    pub checks: Vec<Check>,
    /// Extra detail for the JSON file (the load report).
    pub detail: serde_json::Value,
    /// The few figures that sum the run up in the summary table (also in `figures`).
    pub key: Vec<(String, String)>,
}

impl Findings {
    /// Adds a figure.
    fn figure(&mut self, name: &str, value: impl Display) {
        self.figures.push((name.to_owned(), value.to_string()));
    }

    /// Adds a figure that also goes into the summary table of several experiments.
    fn key(&mut self, name: &str, value: impl Display) {
        self.figure(name, value);
        self.key
            .push(self.figures.last().cloned().expect("just pushed"));
    }

    /// Adds a property that must be `expected`.
    fn check(&mut self, property: &str, value: u64, expected: u64) {
        self.checks.push(Check {
            property: property.to_owned(),
            value,
            expected,
            at_most: false,
        });
    }

    /// Adds a property that must not exceed `bound`.
    fn check_at_most(&mut self, property: &str, value: u64, bound: u64) {
        self.checks.push(Check {
            property: property.to_owned(),
            value,
            expected: bound,
            at_most: true,
        });
    }

    fn passed(&self) -> bool {
        self.checks.iter().all(Check::held)
    }
}

/// Runs the experiments in order, prints each one's figures and verdict (and with several, a
/// summary table), and returns the exit code: 0 when every one passed, 1 otherwise.
pub async fn run(args: ChaosArgs) -> anyhow::Result<i32> {
    let experiments: Vec<Experiment> = args
        .experiments
        .iter()
        .flat_map(|e| match e {
            Experiment::All => Experiment::EVERY.to_vec(),
            e => vec![*e],
        })
        .collect();
    let mut rows = Vec::with_capacity(experiments.len());
    for experiment in experiments {
        rows.push(run_one(experiment, args.short).await);
    }
    let passed = rows.iter().all(|row| row.passed);
    if rows.len() > 1 {
        print!("{}", summary::table(&rows));
    }
    if let Some(path) = &args.json {
        let json = match rows.as_slice() {
            [row] => row.json.clone(),
            rows => summary::json(rows),
        };
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if passed { 0 } else { 1 })
}

/// Runs one experiment and prints its figures, checks and verdict. An experiment that could
/// not run to its end (an error) is a FAIL, and the next one still runs.
async fn run_one(experiment: Experiment, short: bool) -> summary::Row {
    let form = if short { "short" } else { "full" };
    let name = experiment.name();
    println!("chaos: {name} ({form} form)");
    let started = Instant::now();
    let findings = match experiment {
        Experiment::NodeKill => node_kill::run(short).await,
        Experiment::OrderBurst => order_burst::run(short).await,
        Experiment::RollingRestart => rolling_restart::run(short).await,
        Experiment::RedisOutage => redis_outage::run(short).await,
        Experiment::PostgresRestart => postgres_restart::run(short).await,
        Experiment::SlowConsumers => slow_consumers::run(short).await,
        Experiment::All => unreachable!("expanded by run"),
    };
    let duration = started.elapsed();
    let (findings, error) = match findings {
        Ok(findings) => (findings, None),
        Err(e) => {
            eprintln!("petmesh-dev: chaos {name}: error: {e:#}");
            (Findings::default(), Some(format!("{e:#}")))
        }
    };
    println!("chaos: {name}: figures");
    for (figure, value) in &findings.figures {
        println!("  {figure}: {value}");
    }
    println!("chaos: {name}: checks");
    for check in &findings.checks {
        println!(
            "  {} {}: {} (must be {}{})",
            if check.held() { "ok  " } else { "FAIL" },
            check.property,
            check.value,
            if check.at_most { "at most " } else { "" },
            check.expected
        );
    }
    let passed = error.is_none() && findings.passed();
    println!("{}", if passed { "PASS" } else { "FAIL" });
    let json = serde_json::json!({
        "experiment": name,
        "form": form,
        "verdict": if passed { "PASS" } else { "FAIL" },
        "durationSecs": duration.as_secs_f64(),
        "error": error,
        "figures": findings.figures.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "checks": findings.checks,
        "detail": findings.detail,
    });
    summary::Row {
        name,
        passed,
        duration,
        key: if let Some(error) = error {
            vec![("error".into(), error)]
        } else {
            findings.key
        },
        json,
    }
}

/// Three nodes and a balancer that admits every subscriber, with `env` for the nodes, and
/// the balancer routing to all of them.
async fn three_node_cluster(env: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
    three_node_cluster_from(TestCluster::builder(), env).await
}

/// [`three_node_cluster`] from `builder` (e.g. with a Redis of the cluster's own).
async fn three_node_cluster_from(
    builder: crate::cluster::TestClusterBuilder,
    env: &[(&str, &str)],
) -> anyhow::Result<TestCluster> {
    let builder = env.iter().fold(
        builder
            .nodes(3)
            .balancer_env("PETMESH_BALANCER__LIMITS__WS_PER_IP", "100000"),
        |builder, (key, value)| builder.env(*key, *value),
    );
    let cluster = builder.try_start().await?;
    let ids: Vec<&str> = cluster.nodes().iter().map(|n| n.id()).collect();
    cluster
        .balancer()
        .until_routing_to(&ids, Duration::from_secs(60))
        .await?;
    println!(
        "chaos: cluster up: balancer {}, {}",
        cluster.balancer().base_url(),
        cluster
            .nodes()
            .iter()
            .map(|n| format!("{} {}", n.id(), n.base_url()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(cluster)
}

/// The steady mixed load's users (and 10 pets to order) through the balancer at `base_url`,
/// logged in with the admin's `admin_password`.
async fn mixed_load_setup(
    base_url: &str,
    admin_password: &str,
    users: usize,
) -> anyhow::Result<Arc<Setup>> {
    let options = SetupOptions {
        users,
        admin_password: Some(admin_password.to_owned()),
        order_pets: 10,
    };
    Ok(Arc::new(Setup::prepare(base_url, &options).await?))
}

/// `subscribers` WebSocket clients of `pets` spread over `setup`'s users.
async fn pets_subscribers(setup: &Setup, subscribers: usize) -> anyhow::Result<WsLoad> {
    WsLoad::start(WsOptions {
        base_url: setup.base_url.clone(),
        topic: "pets".into(),
        tokens: setup.users.iter().map(|u| u.token.clone()).collect(),
        subscribers,
    })
    .await
}

/// Milliseconds of `d`, for figures.
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
