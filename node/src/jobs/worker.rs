//! The claim loop every node runs: `concurrency` workers, each claiming one job at a time,
//! keeping its lease alive while it runs, and sleeping until the poll interval passes or a job
//! is enqueued on this node.

use std::{sync::Arc, time::Duration};

use tokio::sync::{watch, Notify};

use super::{claim, renew, Backoff, Job};
use crate::{payments, state::AppState};

/// The workers of one node.
pub struct Workers {
    /// Shared handler state (database, metrics, events).
    state: AppState,
    /// Wakes idle workers when this node enqueues a job.
    wakeup: Arc<Notify>,
}

impl Workers {
    /// Workers over `state`, configured by its `jobs` settings.
    pub fn new(state: AppState) -> Self {
        let wakeup = Arc::clone(&state.job_wakeup);
        Self { state, wakeup }
    }

    /// Spawns the workers; they stop claiming when `shutdown` turns true and finish the job in
    /// hand. The returned handles complete when they have stopped.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let this = Arc::new(self);
        (0..this.state.jobs.concurrency)
            .map(|_| {
                let (this, shutdown) = (Arc::clone(&this), shutdown.clone());
                tokio::spawn(async move { this.run(shutdown).await })
            })
            .collect()
    }

    async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let lease = Duration::from_secs(self.state.jobs.lease_secs);
        let poll = Duration::from_millis(self.state.jobs.poll_interval_ms);
        while !*shutdown.borrow() {
            match claim(&self.state.db, &self.state.node_id, lease).await {
                Ok(Some(job)) => self.run_job(job, lease).await,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.wakeup.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claiming a job failed");
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Runs one job while a side task renews its lease every third of the lease.
    async fn run_job(&self, job: Job, lease: Duration) {
        let (db, node_id, job_id) = (
            self.state.db.clone(),
            self.state.node_id.to_string(),
            job.job_id,
        );
        let renewal = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(lease / 3);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match renew(&db, job_id, &node_id, lease).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(err) => tracing::warn!(job_id, error = %err, "renewing a job lease failed"),
                }
            }
        });
        let backoff = Backoff {
            base: Duration::from_millis(self.state.jobs.backoff_base_ms),
            cap: Duration::from_millis(self.state.jobs.backoff_cap_ms),
        };
        if let Err(err) = payments::run(&self.state, &job, &backoff).await {
            // The lease runs out and the job is retried, here or on another node.
            tracing::warn!(job_id = job.job_id, error = ?err, "job attempt failed unexpectedly");
        }
        renewal.abort();
    }
}
