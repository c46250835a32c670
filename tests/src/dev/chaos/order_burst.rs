//! `order-burst`: many concurrent order attempts for scarce stock, each with its own
//! `Idempotency-Key` and sent again with it after a failure, while a node is SIGKILLed
//! mid-burst; then PostgreSQL is asked what really happened.
//!
//! 1. Start the cluster with a short job lease, create a few pets with little stock, and
//!    users (tokens).
//! 2. Start every attempt at once (quantity 1 or 2, payment token `tok_ok`, one in ten
//!    `tok_flaky_1`, one in ten `tok_declined`), each retried with its key on a transport
//!    failure, a 5xx, a 429 or a 409 for a key in use.
//! 3. Once 30 % of them have an answer, SIGKILL `node-2` (its in-flight requests and the
//!    payment jobs it holds die with it).
//! 4. When every attempt has its answer, wait (up to the kill + lease + 25 s) until no
//!    order is still `placed`, then compare the client's answers with the database.
//!
//! PASS: no pet sold more units than it had (and stock + units of live orders = initial
//! stock for every pet), no key produced two orders, every order acknowledged with 201
//! exists, no order exists for an answer of 409 (sold out), and no order is left unpaid
//! after the lease time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::{ms, three_node_cluster, Findings};
use crate::client::ApiClient;
use crate::load::setup::create_pets;
use crate::load::{ErrorClass, HttpLoad, OrderRecord, Outcome, RetryPolicy, Setup, SetupOptions};

/// The numbers of one form of the experiment.
struct Plan {
    attempts: usize,
    pets: usize,
    stock: i64,
    users: usize,
}

const FULL: Plan = Plan {
    attempts: 2000,
    pets: 5,
    stock: 300,
    users: 20,
};

const SHORT: Plan = Plan {
    attempts: 500,
    pets: 4,
    stock: 80,
    users: 10,
};

/// The job lease the nodes run with: a dead node's payment jobs are taken over after it.
const LEASE_SECS: u64 = 5;

/// Beyond the lease, how long payments may take (retries with backoff) before an order
/// still `placed` counts as unpaid.
const PAYMENT_MARGIN: Duration = Duration::from_secs(25);

/// The node killed (index 1: `node-2`), and when: after this share of attempts answered.
const VICTIM: usize = 1;
const KILL_AFTER: f64 = 0.3;

pub(super) async fn run(short: bool) -> anyhow::Result<Findings> {
    let plan = if short { SHORT } else { FULL };
    let lease = LEASE_SECS.to_string();
    let mut cluster =
        three_node_cluster(&[("PETMESH_NODE__JOBS__LEASE_SECS", lease.as_str())]).await?;
    let mut setup = Setup::prepare(
        &cluster.balancer().base_url(),
        &SetupOptions {
            users: plan.users,
            admin_password: Some(cluster.admin_password().to_owned()),
            order_pets: 1,
        },
    )
    .await?;
    let admin = ApiClient::new(setup.base_url.clone()).token(
        setup
            .admin_token
            .clone()
            .expect("the admin password was given"),
    );
    let pets = create_pets(
        &admin,
        &format!("{}-burst", setup.run_id),
        plan.pets,
        plan.stock,
    )
    .await?;
    setup.order_pet_ids = pets.clone();
    let setup = Arc::new(setup);
    let load = HttpLoad::new(
        Arc::clone(&setup),
        Duration::from_secs(15),
        plan.attempts,
        RetryPolicy {
            max_attempts: 8,
            ..RetryPolicy::default()
        },
    )?;
    let loads = [
        load.clone(),
        load.clone().payment_token("tok_flaky_1"),
        load.payment_token("tok_declined"),
    ];
    println!(
        "chaos: {} order attempts at once for {} pets of stock {} ({} users)",
        plan.attempts, plan.pets, plan.stock, plan.users
    );

    // 2. Every attempt at once; each reports when it has its answer.
    let (answered_tx, mut answered) = watch::channel(0usize);
    let answered_tx = Arc::new(answered_tx);
    let start = Arc::new(Semaphore::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.attempts);
    for i in 0..plan.attempts {
        let load = loads[match i % 10 {
            0 => 2,
            1 => 1,
            _ => 0,
        }]
        .clone();
        let (answered_tx, start) = (Arc::clone(&answered_tx), Arc::clone(&start));
        let user = i % plan.users;
        let pet = pets[i % pets.len()];
        let quantity = 1 + u32::from(i % 3 == 0);
        tasks.push(tokio::spawn(async move {
            let _go = start.acquire().await.expect("never closed");
            let key = format!("burst-{}", uuid::Uuid::new_v4().simple());
            let record = load.place_order(user, pet, quantity, key).await;
            answered_tx.send_modify(|n| *n += 1);
            record
        }));
    }
    start.add_permits(plan.attempts);

    // 3. The kill, once enough attempts have their answer.
    let kill_after = (plan.attempts as f64 * KILL_AFTER) as usize;
    let _ = answered.wait_for(|n| *n >= kill_after).await;
    cluster.node_mut(VICTIM).kill()?;
    let killed_at = Instant::now();
    println!(
        "chaos: SIGKILLed {} after {kill_after} answers ({:.1} s into the burst)",
        cluster.node(VICTIM).id(),
        started.elapsed().as_secs_f64()
    );
    let mut records: Vec<OrderRecord> = Vec::with_capacity(plan.attempts);
    for task in tasks {
        records.push(task.await?);
    }
    let burst = started.elapsed();

    // 4. Payments settle, then the database is compared with what the client was told.
    let deadline = killed_at + Duration::from_secs(LEASE_SECS) + PAYMENT_MARGIN;
    let (unpaid, settled_after) = until_paid(&cluster, &pets, deadline, killed_at).await?;
    let db = Database::read(&cluster, &pets, plan.stock).await?;

    let mut findings = Findings::default();
    let count = |f: &dyn Fn(&OrderRecord) -> bool| records.iter().filter(|r| f(r)).count() as u64;
    let acknowledged = count(&|r| r.outcome == Some(Outcome::Ok));
    let refused = count(&|r| r.outcome == Some(Outcome::Refused));
    let failed = count(&|r| matches!(r.outcome, Some(Outcome::Failed(_))));
    let retried = count(&|r| r.statuses.len() > 1);
    let mut classes: HashMap<ErrorClass, u64> = HashMap::new();
    for record in &records {
        if let Some(Outcome::Failed(class)) = record.outcome {
            *classes.entry(class).or_default() += 1;
        }
    }
    let mut statuses: std::collections::BTreeMap<String, u64> = Default::default();
    for status in records.iter().flat_map(|r| &r.statuses) {
        let name = status.map_or("transport error".to_owned(), |s| s.to_string());
        *statuses.entry(name).or_default() += 1;
    }

    let mut lost_acknowledged = 0;
    let mut client_duplicates = 0;
    let mut refused_but_placed = 0;
    let mut unknown_but_placed = 0;
    for record in &records {
        let row = db.by_key.get(&record.key);
        client_duplicates += u64::from(record.order_ids.len() > 1);
        match (record.outcome, row) {
            (Some(Outcome::Ok), None) => lost_acknowledged += 1,
            (Some(Outcome::Ok), Some((id, _))) if !record.order_ids.contains(id) => {
                client_duplicates += 1;
            }
            (Some(Outcome::Refused), Some(_)) => refused_but_placed += 1,
            (Some(Outcome::Failed(_)), Some(_)) => unknown_but_placed += 1,
            _ => {}
        }
    }
    let strangers = db
        .by_key
        .keys()
        .filter(|key| !records.iter().any(|r| &r.key == *key))
        .count();

    findings.figure("order attempts (keys)", records.len());
    findings.figure("burst duration", ms(burst));
    findings.key("acknowledged (201)", acknowledged);
    findings.figure("refused (409 sold out)", refused);
    findings.figure(
        "failed after every retry",
        if classes.is_empty() {
            failed.to_string()
        } else {
            let mut classes: Vec<String> = classes
                .iter()
                .map(|(c, n)| format!("{} {n}", c.name()))
                .collect();
            classes.sort();
            format!("{failed} ({})", classes.join(", "))
        },
    );
    findings.figure("keys sent more than once", retried);
    findings.figure(
        "answers by status",
        statuses
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    findings.figure("orders in the database", db.by_key.len());
    findings.figure(
        "orders approved / cancelled",
        format!("{} / {}", db.approved, db.cancelled),
    );
    findings.key(
        "units sold of stock",
        format!("{} of {}", db.sold, plan.stock * plan.pets as i64),
    );
    findings.figure(
        "orders placed for an attempt that failed (client never knew)",
        unknown_but_placed,
    );
    findings.figure("dead payment jobs", db.dead_jobs);
    findings.key(
        "every order paid or cancelled after the kill",
        settled_after.map_or("not by the deadline".into(), ms),
    );
    findings.check("oversold units", db.oversold, 0);
    findings.check(
        "pets whose stock + live orders differ from the initial stock",
        db.drift,
        0,
    );
    findings.check("duplicate orders (database)", db.duplicates, 0);
    findings.check(
        "duplicate orders (one key, two order ids)",
        client_duplicates,
        0,
    );
    findings.check("acknowledged orders missing", lost_acknowledged, 0);
    findings.check("orders placed although answered 409", refused_but_placed, 0);
    findings.check("orders not of this burst", strangers as u64, 0);
    findings.check(
        &format!(
            "orders left unpaid after the lease time ({LEASE_SECS} s + {} s)",
            PAYMENT_MARGIN.as_secs()
        ),
        unpaid,
        0,
    );
    findings.detail = serde_json::json!({ "orders": records });
    Ok(findings)
}

/// Waits until no order of `pets` is `placed` or `deadline`; returns how many still are and
/// when (after `since`) none was.
async fn until_paid(
    cluster: &crate::cluster::TestCluster,
    pets: &[i64],
    deadline: Instant,
    since: Instant,
) -> anyhow::Result<(u64, Option<Duration>)> {
    loop {
        let placed: i64 = sqlx::query_scalar(
            "select count(*) from pet_order where pet_id = any($1) and status = 'placed'",
        )
        .bind(pets)
        .fetch_one(cluster.db())
        .await?;
        if placed == 0 {
            return Ok((0, Some(since.elapsed())));
        }
        if Instant::now() >= deadline {
            return Ok((placed as u64, None));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What PostgreSQL holds after the burst.
struct Database {
    /// Order id and status by idempotency key.
    by_key: HashMap<String, (i64, String)>,
    approved: u64,
    cancelled: u64,
    /// Units of orders not cancelled.
    sold: i64,
    /// Units sold beyond a pet's initial stock, summed.
    oversold: u64,
    /// Pets whose stock plus live orders is not their initial stock.
    drift: u64,
    /// (user, key) pairs with more than one order.
    duplicates: u64,
    /// Payment jobs that ran out of attempts.
    dead_jobs: u64,
}

impl Database {
    /// Reads the orders of `pets`, each created with `initial` units of stock.
    async fn read(
        cluster: &crate::cluster::TestCluster,
        pets: &[i64],
        initial: i64,
    ) -> anyhow::Result<Self> {
        let db = cluster.db();
        let rows: Vec<(Option<String>, i64, String)> = sqlx::query_as(
            "select idempotency_key, order_id, status from pet_order where pet_id = any($1)",
        )
        .bind(pets)
        .fetch_all(db)
        .await?;
        let approved = rows.iter().filter(|r| r.2 == "approved").count() as u64;
        let cancelled = rows.iter().filter(|r| r.2 == "cancelled").count() as u64;
        let by_key = rows
            .into_iter()
            .filter_map(|(key, id, status)| Some((key?, (id, status))))
            .collect();
        let stock: Vec<(i64, i64, i64)> = sqlx::query_as(
            "select p.pet_id, p.stock::bigint,
                    coalesce(sum(o.quantity) filter (where o.status <> 'cancelled'), 0)::bigint
             from pet p left join pet_order o on o.pet_id = p.pet_id
             where p.pet_id = any($1) group by p.pet_id, p.stock",
        )
        .bind(pets)
        .fetch_all(db)
        .await?;
        let sold = stock.iter().map(|(_, _, live)| live).sum();
        let oversold = stock
            .iter()
            .map(|(_, _, live)| u64::try_from(live - initial).unwrap_or(0))
            .sum();
        let drift = stock
            .iter()
            .filter(|(_, left, live)| left + live != initial)
            .count() as u64;
        let duplicates: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from pet_order where idempotency_key is not null
             group by user_id, idempotency_key having count(*) > 1) as twice",
        )
        .fetch_one(db)
        .await?;
        let dead_jobs: i64 = sqlx::query_scalar("select count(*) from job where status = 'dead'")
            .fetch_one(db)
            .await?;
        Ok(Self {
            by_key,
            approved,
            cancelled,
            sold,
            oversold,
            drift,
            duplicates: duplicates as u64,
            dead_jobs: dead_jobs as u64,
        })
    }
}
