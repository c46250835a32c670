//! The busy topic of `slow-consumers`: large pets created on `pets` at a steady rate, so that
//! a reader that stops falls behind by many bytes a second, as it would on a busy topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::ApiClient;
use crate::load::Setup;

/// Large pets created per second on `pets`, and their `photoUrls` (each 2 000 bytes; a pet
/// has at most 10).
const PUBLISH_RATE: f64 = 10.0;
const PHOTO_URLS: usize = 10;

/// Creates large pets on `pets` at [`PUBLISH_RATE`] (open loop) until stopped.
pub(super) struct Publisher {
    task: tokio::task::JoinHandle<()>,
    /// Pets created, and creations that failed.
    created: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Publisher {
    pub(super) fn start(setup: &Setup) -> anyhow::Result<Self> {
        let token = setup
            .admin_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the publisher needs the admin's token"))?;
        let admin = ApiClient::new(setup.base_url.as_str()).token(token);
        let run_id = setup.run_id.clone();
        let (created, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (created_in, failed_in) = (Arc::clone(&created), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / PUBLISH_RATE);
            for n in 0u32.. {
                tokio::time::sleep_until((started + interval * n).into()).await;
                let (admin, created, failed) = (
                    admin.clone(),
                    Arc::clone(&created_in),
                    Arc::clone(&failed_in),
                );
                let body = large_pet(&run_id, n);
                tokio::spawn(async move {
                    match admin.post("/api/v1/pets", &body).await {
                        Ok(resp) if resp.status == 201 => created.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        });
        Ok(Self {
            task,
            created,
            failed,
        })
    }

    /// Stops creating; returns the pets created and the failures.
    pub(super) fn stop(self) -> (u64, u64) {
        self.task.abort();
        (
            self.created.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A pet whose event is ≈ 20 KB: [`PHOTO_URLS`] URLs of 2 000 bytes.
fn large_pet(run_id: &str, n: u32) -> serde_json::Value {
    let urls: Vec<String> = (0..PHOTO_URLS)
        .map(|i| {
            let prefix = format!("https://img.example.com/{run_id}/{n}/{i}/");
            format!("{prefix}{}", "x".repeat(2000 - prefix.len()))
        })
        .collect();
    json!({
        "name": format!("large {run_id} {n}"),
        "category": "load",
        "price": "9.99",
        "stock": 1,
        "status": "available",
        "photoUrls": urls,
    })
}
