//! The admin API, on its own port so it can be firewalled apart from client traffic:
//!
//! - `GET /`: the cluster console, one self-contained HTML page (no external requests) showing
//!   every node live, the membership events and the strategies ([`crate::console`]);
//! - `GET /admin/stream`: the console's server-sent events: a snapshot of every node once a
//!   second, membership and health events as they happen (sampled only while someone reads);
//! - `GET /health`: 200 while the balancer runs (with node counts);
//! - `GET /metrics`: Prometheus text;
//! - `GET /admin/nodes`: every node with its state, breaker, counts and latency;
//! - `GET /admin/sd`: Prometheus HTTP service discovery, one target group per live node.
//!
//! It runs on the control-plane runtime, never on a worker, so a scrape cannot slow the data
//! path down.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

use crate::{backend::NodeState, console, error::error_response, state::BalancerState};

/// Every admin answer's body: whole, or the console's endless event stream.
type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// One row of `/admin/nodes`.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// Failure domain from the node's registry entry; empty when unknown (static upstreams).
    pub zone: String,
    /// Relative weight.
    pub weight: u32,
    /// `ready` or `draining` (what the node announced).
    pub status: &'static str,
    /// The health probes' verdict.
    pub healthy: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// HTTP requests open at the node.
    pub in_flight: i64,
    /// Open WebSocket tunnels to the node.
    pub ws_connections: i64,
    /// Attempts sent to the node.
    pub requests: u64,
    /// Failed attempts.
    pub errors: u64,
    /// Time to response headers.
    pub latency: LatencyView,
}

/// Latency summary of one node.
#[derive(Debug, Serialize)]
pub struct LatencyView {
    /// Responses measured.
    pub count: u64,
    /// Mean time to response headers, milliseconds.
    pub mean_ms: f64,
}

/// The current `/admin/nodes` table.
pub fn nodes(state: &BalancerState) -> Vec<NodeView> {
    state
        .membership
        .current()
        .iter()
        .map(|node| node_view(node))
        .collect()
}

/// One node's `/admin/nodes` row.
pub fn node_view(node: &NodeState) -> NodeView {
    let count = node.stats.latency.get_sample_count();
    let sum = node.stats.latency.get_sample_sum();
    NodeView {
        id: node.id().to_owned(),
        addr: node.backend.addr.clone(),
        zone: node.zone.clone(),
        weight: node.backend.weight,
        status: if node.is_draining() {
            "draining"
        } else {
            "ready"
        },
        healthy: node.health.is_healthy(),
        breaker: node.breaker.state().as_str(),
        in_flight: node.stats.in_flight.get(),
        ws_connections: node.stats.ws_connections.get(),
        requests: node.stats.requests.get(),
        errors: node.stats.errors.get(),
        latency: LatencyView {
            count,
            mean_ms: if count == 0 {
                0.0
            } else {
                sum * 1000.0 / count as f64
            },
        },
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn run(
    state: Arc<BalancerState>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
            _ = crate::state::stopped(&mut shutdown) => return,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(route(&state, &request, shutdown)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(
    state: &Arc<BalancerState>,
    request: &Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<AdminBody> {
    if request.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the admin API only answers GET",
        );
    }
    match request.uri().path() {
        "/" => console::uncached(
            Full::new(Bytes::from_static(console::PAGE.as_bytes())).boxed_unsync(),
            "text/html; charset=utf-8",
        ),
        "/admin/stream" => console::stream::open(state, shutdown),
        "/health" => {
            let nodes = state.membership.current();
            let eligible = nodes.iter().filter(|n| n.is_eligible()).count();
            json_response(&json!({
                "status": "ok",
                "nodes": nodes.len(),
                "eligibleNodes": eligible,
            }))
        }
        "/metrics" => {
            let mut response = whole(Bytes::from(state.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/admin/nodes" => json_response(&nodes(state)),
        "/admin/sd" => {
            let cluster = &state.settings.cluster.name;
            let groups: Vec<_> = state
                .membership
                .current()
                .iter()
                .map(|node| {
                    json!({
                        "targets": [node.backend.addr],
                        "labels": {"node": node.id(), "cluster": cluster},
                    })
                })
                .collect();
            json_response(&groups)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

/// A response with all of `body`.
fn whole(body: Bytes) -> Response<AdminBody> {
    Response::new(Full::new(body).boxed_unsync())
}

/// [`error_response`] with an admin body.
fn error(status: StatusCode, kind: &str, message: &str) -> Response<AdminBody> {
    error_response::<Full<Bytes>>(status, kind, message).map(BodyExt::boxed_unsync)
}

fn json_response(value: &impl Serialize) -> Response<AdminBody> {
    let body = serde_json::to_vec(value).expect("admin views serialise");
    let mut response = whole(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
