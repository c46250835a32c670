//! A small, steady, bounded load through the balancer, every outcome recorded with its time
//! and the node that served it, so a test can look at what happened around an event (a node
//! killed or drained) afterwards.
//!
//! The machine has two cores shared by the test, Redis, PostgreSQL, three nodes and the
//! balancer, so the load is paced (a few workers, one request each per pace) rather than as
//! fast as possible: enough to see every node many times a second, not enough to starve them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petmesh_tests::ApiClient;
use reqwest::RequestBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::SERVED_BY;

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent.
    pub sent: Instant,
    /// Its status, or the transport error.
    pub status: Result<u16, String>,
    /// The `X-Petmesh-Node` of its response.
    pub node: Option<String>,
    /// Which request of the load it was (from `make`).
    pub kind: &'static str,
}

/// Workers sending requests until stopped.
pub struct Load {
    /// Tells the workers to stop.
    stop: watch::Sender<bool>,
    /// The workers, each returning what it saw.
    workers: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `workers` workers, each sending one request built by `make` (labelled with the
    /// `&'static str` it returns) every `pace`, one at a time, through `client`.
    pub fn start(
        client: &ApiClient,
        workers: usize,
        pace: Duration,
        make: impl Fn(&ApiClient, usize) -> (&'static str, RequestBuilder) + Send + Sync + 'static,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let make = Arc::new(make);
        let workers = (0..workers)
            .map(|worker| {
                let (client, make, mut stopped) =
                    (client.clone(), Arc::clone(&make), stopped.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut ticker = tokio::time::interval(pace);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for n in 0.. {
                        tokio::select! {
                            _ = ticker.tick() => {}
                            _ = stopped.wait_for(|stop| *stop) => break,
                        }
                        let (kind, request) = make(&client, worker + n);
                        let sent = Instant::now();
                        let (status, node) = match client.send(request).await {
                            Ok(resp) => {
                                (Ok(resp.status), resp.header(SERVED_BY).map(str::to_owned))
                            }
                            Err(e) => (Err(format!("{e:#}")), None),
                        };
                        outcomes.push(Outcome {
                            sent,
                            status,
                            node,
                            kind,
                        });
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers (each finishes its current request) and returns every outcome, in
    /// the order sent.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.send_replace(true);
        let mut outcomes = Vec::new();
        for worker in self.workers {
            outcomes.extend(worker.await.expect("a load worker panicked"));
        }
        outcomes.sort_by_key(|o| o.sent);
        outcomes
    }
}
