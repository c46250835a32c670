//! `postgres-restart`: PostgreSQL stopped (fast shutdown) under load, left down for 10 s,
//! then started again on the same data directory and port.
//!
//! The cluster is built here from its parts (servers, database, nodes, balancer), because
//! the experiment must own the PostgreSQL server it stops: it always runs on private
//! servers, whatever `DATABASE_URL` and `REDIS_URL` say.
//!
//! 1. Start PostgreSQL, Redis, a fresh database, 3 nodes and the balancer; prepare users and
//!    pets; start steady mixed load (the `node-kill` mix) through the balancer, and two
//!    probes that send `GET /api/v1/pets?limit=1` (a PostgreSQL query) one after the other,
//!    50 ms apart, one through the balancer and one straight to `node-1`, noting when each
//!    was sent and answered and how.
//! 2. At a fixed point, stop PostgreSQL; 10 s later start it again.
//! 3. Every 100 ms after the restart, ask every node's `/health/ready` until all answer 200.
//!
//! PASS: no request of the load or the probe went without an answer for
//! [`CLIENT_TIMEOUT`] (the node answers 503 when it has no database connection within
//! `database.acquire_timeout_ms`, 3 s, and ends any request after
//! `server.request_timeout_secs`, 30 s), and everything was back within 30 s of the
//! restart: every node ready and the probe answered 200. Time to the first 503, the
//! probe's longest wait, failures and the recovery timings are reported.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{mixed_load_setup, ms, Findings};
use crate::balancer::{BalancerConfig, BalancerProcess};
use crate::client::ApiClient;
use crate::cluster::RATE_LIMITS_ENV;
use crate::database::TestDatabase;
use crate::load::{ErrorClass, HttpLoad, LoadOptions, Mix, RetryPolicy, RunningLoad};
use crate::node::{random_token, NodeConfig, NodeProcess};
use crate::servers::{PostgresServer, RedisServer};

/// The numbers of one form of the experiment.
struct Plan {
    rate: f64,
    duration: Duration,
    /// When PostgreSQL is stopped.
    stop_at: Duration,
    users: usize,
}

const FULL: Plan = Plan {
    rate: 150.0,
    duration: Duration::from_secs(60),
    stop_at: Duration::from_secs(15),
    users: 20,
};

const SHORT: Plan = Plan {
    rate: 100.0,
    duration: Duration::from_secs(35),
    stop_at: Duration::from_secs(5),
    users: 10,
};

/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(10);

/// Bound on being back after the restart (the PASS bound too).
const RECOVERY: Duration = Duration::from_secs(30);

/// A client gives up on a request after this: the node's own request timeout (30 s) and a
/// margin. A request that reaches it hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);

/// Pause between two probe requests.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How often the nodes' readiness is asked after the restart.
const POLL: Duration = Duration::from_millis(100);

/// The servers and processes of the experiment. Field order is drop order: the balancer,
/// the nodes, the database (its `DROP` needs the server), then the servers.
struct Cluster {
    balancer: BalancerProcess,
    nodes: Vec<NodeProcess>,
    #[expect(
        dead_code,
        reason = "held only so that dropping the cluster drops the database"
    )]
    database: TestDatabase,
    #[expect(
        dead_code,
        reason = "held only so that dropping the cluster stops Redis"
    )]
    redis: RedisServer,
    postgres: PostgresServer,
    admin_password: String,
}

impl Cluster {
    /// Starts the servers, a fresh database, 3 nodes and a balancer routing to them all.
    async fn start() -> anyhow::Result<Self> {
        let postgres = PostgresServer::start().await?;
        let redis = RedisServer::start().await?;
        let database = TestDatabase::create(&postgres.url()).await?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let jwt_secret = random_token(48);
        let admin_password = random_token(24);
        let mut starting = Vec::new();
        for n in 1..=3 {
            let config = NodeConfig::new(database.url(), redis.url())
                .cluster(name.as_str())
                .jwt_secret(jwt_secret.as_str())
                .admin_password(admin_password.as_str())
                .env(RATE_LIMITS_ENV, "false")
                .id(format!("node-{n}"));
            starting.push(NodeProcess::launch(config)?);
        }
        let mut nodes = Vec::new();
        for node in starting {
            nodes.push(node.ready().await?);
        }
        let balancer = BalancerProcess::spawn(
            BalancerConfig::new(redis.url(), name.as_str())
                .name("balancer")
                .env("PETMESH_BALANCER__LIMITS__WS_PER_IP", "100000"),
        )
        .await?;
        let ids: Vec<&str> = nodes.iter().map(NodeProcess::id).collect();
        balancer
            .until_routing_to(&ids, Duration::from_secs(60))
            .await?;
        println!(
            "chaos: cluster up: balancer {}, {}",
            balancer.base_url(),
            nodes
                .iter()
                .map(|n| format!("{} {}", n.id(), n.base_url()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self {
            balancer,
            nodes,
            database,
            redis,
            postgres,
            admin_password,
        })
    }

    /// Whether every node answers `/health/ready` with 200.
    async fn all_ready(&self) -> bool {
        for node in &self.nodes {
            match ApiClient::new(node.base_url()).get("/health/ready").await {
                Ok(resp) if resp.status == 200 => {}
                _ => return false,
            }
        }
        true
    }
}

pub(super) async fn run(short: bool) -> anyhow::Result<Findings> {
    let plan = if short { SHORT } else { FULL };
    let mut cluster = Cluster::start().await?;
    let setup = mixed_load_setup(
        &cluster.balancer.base_url(),
        &cluster.admin_password,
        plan.users,
    )
    .await?;
    let retry = RetryPolicy::default();
    let options = LoadOptions {
        rate: Some(plan.rate),
        connections: 512,
        duration: plan.duration,
        mix: Mix::default(),
        timeout: CLIENT_TIMEOUT,
        retry,
        progress: true,
    };
    let load = HttpLoad::new(Arc::clone(&setup), CLIENT_TIMEOUT, 512, retry)?;
    let mut running = RunningLoad::start(load, options, None);
    let started = running.recorder().started();
    let probe = Probe::start(&setup.base_url, &setup.users[0].token)?;
    let direct = Probe::start(&cluster.nodes[0].base_url(), &setup.users[0].token)?;

    // The outage comes at a fixed point of the run's timeline and lasts a fixed time.
    tokio::time::sleep_until((started + plan.stop_at).into()).await;
    let stopping = Instant::now();
    cluster.postgres.stop();
    let stopped = Instant::now();
    println!(
        "chaos: PostgreSQL stopped at {:.1} s (fast shutdown took {})",
        started.elapsed().as_secs_f64(),
        ms(stopped - stopping)
    );
    tokio::time::sleep(OUTAGE).await;
    let starting = Instant::now();
    cluster.postgres.start_again().await?;
    let restarted = Instant::now();
    println!(
        "chaos: PostgreSQL accepting connections again at {:.1} s (start took {})",
        started.elapsed().as_secs_f64(),
        ms(restarted - starting)
    );

    let mut ready_back = None;
    while ready_back.is_none() && restarted.elapsed() < RECOVERY {
        if cluster.all_ready().await {
            ready_back = Some(restarted.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let probe_back = probe.first_ok_after(restarted, RECOVERY).await;
    running.http_done().await;
    let probes = probe.stop().await;
    let direct = direct.stop().await;
    let direct_first_503 = first_503(&direct, stopping);
    let report = running.finish(None, Duration::ZERO).await;
    print!("{}", report.table());

    let first_503 = first_503(&probes, stopping);
    let in_outage: Vec<&Sample> = probes
        .iter()
        .filter(|p| p.sent >= stopping && p.sent < restarted)
        .collect();
    let longest_wait = in_outage
        .iter()
        .map(|p| p.answered - p.sent)
        .max()
        .unwrap_or_default();
    let probe_hung = probes.iter().chain(&direct).filter(|p| p.timed_out).count() as u64;
    let load_hung = report
        .http
        .all
        .errors
        .get(ErrorClass::Timeout.name())
        .copied()
        .unwrap_or(0);
    let back = match (ready_back, probe_back) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    let never = || format!("not within {} s", RECOVERY.as_secs());

    let mut findings = Findings::default();
    findings.figure("outage", format!("{} s", OUTAGE.as_secs()));
    findings.figure(
        "first 503 after the stop began, through the balancer (probe)",
        first_503.map_or_else(|| "none".to_owned(), ms),
    );
    findings.figure(
        "first 503 after the stop began, straight from node-1 (probe)",
        direct_first_503.map_or_else(|| "none".to_owned(), ms),
    );
    findings.figure(
        "probe requests sent during the outage (200 / 503 / other)",
        format!(
            "{} ({} / {} / {})",
            in_outage.len(),
            in_outage.iter().filter(|p| p.status == Some(200)).count(),
            in_outage.iter().filter(|p| p.status == Some(503)).count(),
            in_outage
                .iter()
                .filter(|p| !matches!(p.status, Some(200 | 503)))
                .count()
        ),
    );
    findings.figure(
        "longest wait for an answer during the outage (probe)",
        ms(longest_wait),
    );
    findings.key(
        "every node ready again after the restart",
        ready_back.map_or_else(never, ms),
    );
    findings.figure(
        "probe answered 200 again after the restart",
        probe_back.map_or_else(never, ms),
    );
    findings.key(
        "load requests (ok / refused / failed)",
        format!(
            "{} ({} / {} / {})",
            report.http.all.requests,
            report.http.all.ok,
            report.http.all.refused,
            report.http.all.failed
        ),
    );
    findings.figure(
        "load failures by class",
        report
            .http
            .all
            .errors
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    findings.figure(
        "latency p50 / p99 / max (from the due time)",
        report.http.all.latency_ms.p50_p99_max(),
    );
    findings.check(
        &format!(
            "requests without an answer within {} s (load and probe)",
            CLIENT_TIMEOUT.as_secs()
        ),
        load_hung + probe_hung,
        0,
    );
    // A restart must read as the database being unavailable (503), never as a bug (500).
    findings.check(
        "answers 500 (internal error) to the load",
        report.http.statuses.get("500").copied().unwrap_or(0),
        0,
    );
    findings.check_at_most(
        "ms until every node is ready and the probe answered 200 after the restart",
        back.map_or(u64::MAX, |d| d.as_millis() as u64),
        RECOVERY.as_millis() as u64,
    );
    findings.detail = serde_json::to_value(&report)?;
    Ok(findings)
}

/// How long after `stopping` the first 503 came (it may come while the shutdown is under
/// way).
fn first_503(samples: &[Sample], stopping: Instant) -> Option<Duration> {
    samples
        .iter()
        .filter(|p| p.status == Some(503) && p.answered >= stopping)
        .map(|p| p.answered - stopping)
        .min()
}

/// One probe request.
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: Instant,
    answered: Instant,
    /// The status, `None` for a transport failure or a timeout.
    status: Option<u16>,
    /// No answer within [`CLIENT_TIMEOUT`].
    timed_out: bool,
}

/// Sends `GET /api/v1/pets?limit=1` to one address, one after the other.
struct Probe {
    samples: Arc<Mutex<Vec<Sample>>>,
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(base_url: &str, token: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build()?;
        let url = format!("{base_url}/api/v1/pets?limit=1");
        let token = token.to_owned();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (samples_in, notify_in) = (Arc::clone(&samples), Arc::clone(&notify));
        let task = tokio::spawn(async move {
            loop {
                let sent = Instant::now();
                let result = client.get(&url).bearer_auth(&token).send().await;
                let (status, timed_out) = match result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // Read the body so the connection goes back to the pool.
                        let _ = resp.bytes().await;
                        (Some(status), false)
                    }
                    Err(e) => (None, e.is_timeout()),
                };
                samples_in
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Sample {
                        sent,
                        answered: Instant::now(),
                        status,
                        timed_out,
                    });
                notify_in.notify_waiters();
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        Ok(Self {
            samples,
            notify,
            task,
        })
    }

    /// How long after `since` the first 200 to a request sent at or after it came, waiting up
    /// to `bound` after `since`.
    async fn first_ok_after(&self, since: Instant, bound: Duration) -> Option<Duration> {
        let deadline = since + bound;
        loop {
            let notified = self.notify.notified();
            if let Some(sample) = self
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|s| s.sent >= since && s.status == Some(200))
            {
                return Some(sample.answered - since);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Stops the probe (a request under way is abandoned) and returns its samples.
    async fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.clone()
    }
}
