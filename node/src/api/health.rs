//! Health endpoints. Liveness says the process runs; readiness says this node should get
//! traffic (dependencies reachable and not draining); `/health` details each dependency.

use std::collections::BTreeMap;

use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::{monitor, state::AppState};

/// Liveness, readiness and details.
pub struct HealthApi;

/// `{"status": "ok"}`-style answer.
#[derive(Debug, Object)]
pub struct Status {
    /// `ok`, `ready`, `not_ready` or `draining`.
    pub status: String,
}

/// One dependency's check.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DependencyHealth {
    /// `up` or `down`.
    pub status: String,
    /// How long the check took.
    pub latency_ms: f64,
    /// Why it is down.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

/// Details of the node and its dependencies.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct HealthReport {
    /// `ready`, `not_ready` or `draining`.
    pub status: String,
    /// This node's id.
    pub node_id: String,
    /// Build version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// `postgres` and `redis`.
    pub checks: BTreeMap<String, DependencyHealth>,
}

/// Readiness answer.
#[derive(ApiResponse)]
pub enum Readiness {
    /// Ready for traffic.
    #[oai(status = 200)]
    Ready(Json<Status>),
    /// Not ready: a dependency is down or the node is draining.
    #[oai(status = 503)]
    NotReady(Json<Status>),
}

/// Detailed answer.
#[derive(ApiResponse)]
pub enum Report {
    /// Everything up.
    #[oai(status = 200)]
    Healthy(Json<HealthReport>),
    /// Something down, or draining.
    #[oai(status = 503)]
    Unhealthy(Json<HealthReport>),
}

#[OpenApi(prefix_path = "/health", tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up and serving HTTP.
    #[oai(path = "/live", method = "get", operation_id = "liveness")]
    async fn live(&self) -> Json<Status> {
        Json(Status {
            status: "ok".into(),
        })
    }

    /// Readiness: PostgreSQL and Redis answer and the node is not draining.
    #[oai(path = "/ready", method = "get", operation_id = "readiness")]
    async fn ready(&self, state: Data<&AppState>) -> Readiness {
        let status = overall(&state, &check_all(&state).await);
        match status {
            "ready" => Readiness::Ready(Json(Status {
                status: status.into(),
            })),
            _ => Readiness::NotReady(Json(Status {
                status: status.into(),
            })),
        }
    }

    /// Details: each dependency with its latency.
    #[oai(path = "/", method = "get", operation_id = "health")]
    async fn report(&self, state: Data<&AppState>) -> Report {
        let checks = check_all(&state).await;
        let status = overall(&state, &checks);
        let report = HealthReport {
            status: status.into(),
            node_id: state.node_id.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: state.started_at.elapsed().as_secs(),
            checks,
        };
        match status {
            "ready" => Report::Healthy(Json(report)),
            _ => Report::Unhealthy(Json(report)),
        }
    }
}

fn overall(state: &AppState, checks: &BTreeMap<String, DependencyHealth>) -> &'static str {
    if state.is_draining() {
        "draining"
    } else if checks.values().all(|c| c.status == "up") {
        "ready"
    } else {
        "not_ready"
    }
}

async fn check_all(state: &AppState) -> BTreeMap<String, DependencyHealth> {
    monitor::check_dependencies(state)
        .await
        .into_iter()
        .map(|check| {
            let health = DependencyHealth {
                status: if check.error.is_none() { "up" } else { "down" }.into(),
                latency_ms: check.took.as_secs_f64() * 1000.0,
                error: check.error,
            };
            (check.dependency.to_owned(), health)
        })
        .collect()
}
