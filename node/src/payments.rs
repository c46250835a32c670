//! Payment jobs against a simulated gateway.
//!
//! The gateway decides by token: `tok_ok` approves, `tok_declined` declines for good,
//! `tok_flaky_<n>` fails (retryably) on the first `n` attempts and then approves; no token
//! approves with probability `payments.success_rate`. An approved payment approves the order; a
//! declined one, or one that exhausted its attempts, cancels it and restores the stock.

use std::time::Duration;

use rand::Rng;

use crate::{
    error::ApiError,
    jobs::{finish, Backoff, Job, Outcome},
    orders::{self, Order, ORDER_COLUMNS},
    outbox,
    state::AppState,
};

/// What the gateway said.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Paid.
    Approved,
    /// Refused for good, with the reason.
    Declined(String),
    /// Did not work this time; worth retrying.
    Failed(String),
}

/// The simulated gateway's answer for attempt `attempt` (from 1) of a payment with `token`.
pub fn decide(token: Option<&str>, attempt: i32, success_rate: f64) -> Decision {
    match token {
        Some("tok_ok") => Decision::Approved,
        Some("tok_declined") => Decision::Declined("card declined".into()),
        Some(token) => match token
            .strip_prefix("tok_flaky_")
            .and_then(|n| n.parse::<i32>().ok())
        {
            Some(failures) if attempt <= failures => Decision::Failed(format!(
                "gateway unavailable (attempt {attempt} of a flaky token)"
            )),
            Some(_) => Decision::Approved,
            None => Decision::Declined(format!("unknown payment token {token}")),
        },
        None if rand::thread_rng().gen_bool(success_rate) => Decision::Approved,
        None => Decision::Declined("payment declined by the gateway".into()),
    }
}

/// Runs one attempt of a payment job.
pub async fn run(state: &AppState, job: &Job, backoff: &Backoff) -> Result<(), ApiError> {
    let started_at = chrono::Utc::now();
    let order_id = job.payload["orderId"].as_i64().unwrap_or_default();
    let current: Option<(String, Option<String>)> =
        sqlx::query_as("select status, payment_token from pet_order where order_id = $1")
            .bind(order_id)
            .fetch_optional(&state.db)
            .await?;
    let decision = match &current {
        Some((status, token)) if status == "placed" => {
            tokio::time::sleep(Duration::from_millis(state.payments.simulated_latency_ms)).await;
            Some(decide(
                token.as_deref(),
                job.attempts,
                state.payments.success_rate,
            ))
        }
        // Cancelled (or gone) meanwhile: nothing to charge.
        _ => None,
    };

    let mut tx = state.db.begin().await?;
    let mut approved: Option<Order> = None;
    let mut cancelled = None;
    let outcome = match decision {
        None => Outcome::Done,
        Some(Decision::Approved) => {
            approved = sqlx::query_as::<_, Order>(&format!(
                "update pet_order set status = 'approved' where order_id = $1 and status = 'placed'
                 returning {ORDER_COLUMNS}"
            ))
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
            Outcome::Done
        }
        Some(Decision::Declined(reason)) => {
            cancelled = orders::cancel_in(&mut tx, order_id, Some(&reason)).await?;
            Outcome::Done
        }
        Some(Decision::Failed(err)) => Outcome::Retry(err),
    };
    let Some(outcome) = finish(&mut tx, job, &state.node_id, started_at, outcome, backoff).await?
    else {
        tracing::warn!(
            job_id = job.job_id,
            "lost the lease of a job; leaving it to its new holder"
        );
        return Ok(());
    };
    if let Outcome::Dead(reason) = &outcome {
        cancelled = orders::cancel_in(&mut tx, order_id, Some(reason)).await?;
    }
    // The outcome's events commit with it, so subscribers hear of exactly the outcome that
    // stuck (not of one rolled back because the lease was lost).
    let mut events = Vec::new();
    if let Some(order) = &approved {
        events.push(orders::order_event(state, "order:updated", order));
    }
    if let Some((order, pet)) = &cancelled {
        events.extend(orders::cancel_events(state, order, pet.as_ref()));
    }
    outbox::record(&mut tx, events).await?;
    tx.commit().await?;

    let label = match &outcome {
        Outcome::Done => "done",
        Outcome::Retry(_) => "retry",
        Outcome::Dead(_) => "dead",
    };
    tracing::info!(
        job_id = job.job_id,
        order_id,
        attempt = job.attempts,
        outcome = label,
        "payment attempt finished"
    );
    let metrics = &state.metrics.store;
    if !matches!(outcome, Outcome::Retry(_)) {
        let waited = (chrono::Utc::now() - job.created_at)
            .to_std()
            .unwrap_or_default();
        metrics
            .job_duration
            .with_label_values(&[&job.kind, label])
            .observe(waited.as_secs_f64());
        metrics
            .job_attempts
            .with_label_values(&[&job.kind])
            .observe(f64::from(job.attempts));
    }
    if matches!(outcome, Outcome::Dead(_)) {
        metrics
            .job_dead_letters
            .with_label_values(&[&job.kind])
            .inc();
    }
    if approved.is_some() {
        metrics.orders.with_label_values(&["approved"]).inc();
    }
    if let Some((_, pet)) = cancelled {
        orders::after_cancel(state, pet.as_ref()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_decide_the_outcome() {
        assert_eq!(decide(Some("tok_ok"), 1, 0.0), Decision::Approved);
        assert!(matches!(
            decide(Some("tok_declined"), 1, 1.0),
            Decision::Declined(_)
        ));
        assert!(matches!(
            decide(Some("tok_flaky_2"), 1, 1.0),
            Decision::Failed(_)
        ));
        assert!(matches!(
            decide(Some("tok_flaky_2"), 2, 1.0),
            Decision::Failed(_)
        ));
        assert_eq!(decide(Some("tok_flaky_2"), 3, 1.0), Decision::Approved);
        assert!(matches!(
            decide(Some("tok_bogus"), 1, 1.0),
            Decision::Declined(_)
        ));
        assert_eq!(decide(None, 1, 1.0), Decision::Approved);
        assert!(matches!(decide(None, 1, 0.0), Decision::Declined(_)));
    }
}
