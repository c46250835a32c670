//! A durable job queue in PostgreSQL.
//!
//! 1. Enqueue: a row in `job`, inserted in the same transaction as the change that needs it, so
//!    a committed order always has its payment job and a rolled-back one never does.
//! 2. Claim: a worker takes the most urgent due job with `for update skip locked` (workers on
//!    every node never block each other), marks it `running` and leases it to its node until
//!    `locked_until`. A lease that runs out (its node died) makes the job due again.
//! 3. Finish: `done`, or a retry at `now + backoff` (exponential, jittered, capped), or a dead
//!    letter after `max_attempts`. Every transition checks the lease is still ours, so a node
//!    that lost its lease cannot overwrite the new holder's work.
//!
//! [`worker`] runs the claim loop; job kinds are handled in [`crate::payments`].

pub mod worker;

use std::time::Duration;

use rand::Rng;
use sqlx::{PgExecutor, Postgres, Transaction};

/// The payment job kind.
pub const PAYMENT: &str = "payment";

/// A claimed job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    /// Id.
    pub job_id: i64,
    /// Kind (`payment`).
    pub kind: String,
    /// Kind-specific data.
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempts: i32,
    /// Attempts allowed before it becomes a dead letter.
    pub max_attempts: i32,
    /// When it was enqueued.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Enqueues the payment of `order_id` inside `tx`.
pub async fn enqueue_payment(
    tx: &mut Transaction<'static, Postgres>,
    order_id: i64,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into job (kind, payload, max_attempts) values ($1, $2, $3)")
        .bind(PAYMENT)
        .bind(serde_json::json!({ "orderId": order_id }))
        .bind(max_attempts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inside `tx`: retires the waiting payment job of a cancelled order. A job already running
/// sees the order is no longer `placed` and does nothing.
pub async fn cancel_payment(
    tx: &mut Transaction<'static, Postgres>,
    order_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update job set status = 'done', finished_at = now(), last_error = 'order cancelled'
         where kind = $1 and status = 'queued' and payload->>'orderId' = $2",
    )
    .bind(PAYMENT)
    .bind(order_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Jobs waiting or running.
pub async fn queue_depth(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from job where status in ('queued', 'running')")
        .fetch_one(db)
        .await
}

/// The queue as [`crate::monitor`] samples it for `/metrics`.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct QueueStats {
    /// Jobs queued or running.
    pub depth: i64,
    /// Jobs that exhausted their attempts and are kept as dead letters.
    pub dead_letters: i64,
    /// Seconds since the oldest queued job became due; 0 when none is due.
    pub oldest_due_secs: f64,
}

/// Samples the whole cluster's queue: three index scans (the partial indexes on queued,
/// running and dead jobs), never the finished jobs.
pub async fn queue_stats(db: impl PgExecutor<'_>) -> Result<QueueStats, sqlx::Error> {
    sqlx::query_as::<_, QueueStats>(
        "select (select count(*) from job where status = 'queued')
              + (select count(*) from job where status = 'running') as depth,
                (select count(*) from job where status = 'dead') as dead_letters,
                coalesce((select extract(epoch from now() - min(run_at))::float8
                          from job where status = 'queued' and run_at <= now()), 0) as oldest_due_secs",
    )
    .fetch_one(db)
    .await
}

/// Claims the most urgent due job for `node_id` for `lease`, if any.
pub async fn claim(
    db: impl PgExecutor<'_>,
    node_id: &str,
    lease: Duration,
) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(
        "update job set status = 'running', attempts = attempts + 1, locked_by = $1,
                        locked_until = now() + make_interval(secs => $2)
         where job_id = (
             select job_id from job
             where (status = 'queued' and run_at <= now())
                or (status = 'running' and locked_until < now())
             order by priority desc, run_at
             limit 1
             for update skip locked)
         returning job_id, kind, payload, attempts, max_attempts, created_at",
    )
    .bind(node_id)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await
}

/// Extends the lease of a job we hold; false when we no longer hold it.
pub async fn renew(
    db: impl PgExecutor<'_>,
    job_id: i64,
    node_id: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update job set locked_until = now() + make_interval(secs => $3)
         where job_id = $1 and locked_by = $2 and status = 'running'",
    )
    .bind(job_id)
    .bind(node_id)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a job attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished (successfully or with a final business outcome).
    Done,
    /// Failed in a way worth retrying.
    Retry(String),
    /// Failed for good: keep as a dead letter.
    Dead(String),
}

/// Inside `tx`: records the attempt and moves the job on according to `outcome` (a retry past
/// `max_attempts` becomes dead). Returns the final outcome, or `None` if we lost the lease (the
/// caller must roll back).
pub async fn finish(
    tx: &mut Transaction<'static, Postgres>,
    job: &Job,
    node_id: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    outcome: Outcome,
    backoff: &Backoff,
) -> Result<Option<Outcome>, sqlx::Error> {
    let outcome = match outcome {
        Outcome::Retry(err) if job.attempts >= job.max_attempts => {
            Outcome::Dead(format!("gave up after {} attempts: {err}", job.attempts))
        }
        other => other,
    };
    let (status, error, delay) = match &outcome {
        Outcome::Done => ("done", None, Duration::ZERO),
        Outcome::Retry(err) => ("queued", Some(err.as_str()), backoff.delay(job.attempts)),
        Outcome::Dead(err) => ("dead", Some(err.as_str()), Duration::ZERO),
    };
    let moved = sqlx::query(
        "update job set status = $3, last_error = $4, locked_by = null, locked_until = null,
                        run_at = now() + make_interval(secs => $5),
                        finished_at = case when $3 in ('done', 'dead') then now() end
         where job_id = $1 and locked_by = $2 and status = 'running'",
    )
    .bind(job.job_id)
    .bind(node_id)
    .bind(status)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query(
        "insert into job_attempt (job_id, attempt, node_id, started_at, error, retry_at)
         values ($1, $2, $3, $4, $5, case when $6 then now() + make_interval(secs => $7) end)
         on conflict (job_id, attempt) do nothing",
    )
    .bind(job.job_id)
    .bind(job.attempts)
    .bind(node_id)
    .bind(started_at)
    .bind(error)
    .bind(matches!(outcome, Outcome::Retry(_)))
    .bind(delay.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(Some(outcome))
}

/// Exponential backoff with "equal jitter": the n-th retry waits between half and all of
/// `min(cap, base × 2^(n-1))`. Half of it is certain, so delays grow with every attempt (until
/// the cap) while the random half keeps nodes from retrying in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before retrying after attempt `attempt` (from 1).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.clamp(1, 30) as u32 - 1;
        let full = self
            .base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.cap);
        let half = full / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_each_attempt_until_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let delays: Vec<Duration> = (1..=6).map(|n| backoff.delay(n)).collect();
            assert!(
                delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100)
            );
            for pair in delays[..4].windows(2) {
                assert!(pair[1] >= pair[0], "{delays:?}");
            }
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(1000)));
        }
    }
}
