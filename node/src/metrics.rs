//! Prometheus metrics of the node and the middleware that records every HTTP request by route
//! template (never the raw path, so label cardinality stays bounded), method and status.
//!
//! Every series whose labels are known in advance exists from start-up (at 0), as Prometheus'
//! instrumentation guidelines ask, so dashboards and alerts never see a metric appear late.

pub mod auth;
pub mod dependencies;
pub mod outbox;
pub mod ratelimit;
pub mod realtime;
pub mod store;

use std::time::Instant;

use self::{
    auth::AuthMetrics, dependencies::DependencyMetrics, outbox::OutboxMetrics,
    ratelimit::RateLimitMetrics, realtime::RealtimeMetrics, store::StoreMetrics,
};
use crate::routes::RouteTable;
use poem::{Endpoint, IntoResponse, PathPattern, Request, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The node's registry and collectors. One per process, shared through `AppState`.
pub struct Metrics {
    /// Everything `/metrics` exposes.
    pub registry: Registry,
    /// `petmesh_node_http_requests_total{method,route,status}`.
    http_requests: IntCounterVec,
    /// `petmesh_node_http_request_duration_seconds{method,route,status}`.
    http_duration: HistogramVec,
    /// `petmesh_node_http_requests_in_flight`; also reported in the registry entry.
    pub http_in_flight: IntGauge,
    /// `petmesh_node_websocket_connections`: open WebSocket connections, reported in the
    /// registry entry for least-connections balancing.
    pub ws_connections: IntGauge,
    /// `petmesh_node_registry_heartbeat_failures_total`: registry writes that failed (Redis
    /// unreachable); the entry expires after a few of them in a row.
    pub registry_failures: IntCounter,
    /// `petmesh_node_draining`: 1 once shutdown has begun.
    pub draining: IntGauge,
    /// PostgreSQL and Redis reachability, the PostgreSQL pool.
    pub dependencies: DependencyMetrics,
    /// Logins and their protection.
    pub auth: AuthMetrics,
    /// Request rate limits.
    pub rate_limits: RateLimitMetrics,
    /// Orders, jobs, cache and events.
    pub store: StoreMetrics,
    /// WebSocket connections, messages and broadcasts.
    pub realtime: RealtimeMetrics,
    /// The event outbox and its relay.
    pub outbox: OutboxMetrics,
}

impl Metrics {
    /// Creates and registers the collectors.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let labels = &["method", "route", "status"];
        let http_requests = IntCounterVec::new(
            Opts::new(
                "petmesh_node_http_requests_total",
                "HTTP requests served, by route template, method and status.",
            ),
            labels,
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "petmesh_node_http_request_duration_seconds",
                "HTTP request latency from first byte read to response ready.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            labels,
        )?;
        let http_in_flight = IntGauge::new(
            "petmesh_node_http_requests_in_flight",
            "HTTP requests being served now.",
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        let ws_connections = IntGauge::new(
            "petmesh_node_websocket_connections",
            "WebSocket connections open now.",
        )?;
        let registry_failures = IntCounter::new(
            "petmesh_node_registry_heartbeat_failures_total",
            "Registry heartbeats (and announcements) that could not be written to Redis.",
        )?;
        registry.register(Box::new(http_in_flight.clone()))?;
        registry.register(Box::new(ws_connections.clone()))?;
        registry.register(Box::new(registry_failures.clone()))?;
        let info = IntGaugeVec::new(
            Opts::new("petmesh_node_info", "The running version (value 1)."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let draining = IntGauge::new(
            "petmesh_node_draining",
            "1 once the node is shutting down (readiness 503, no new work), else 0.",
        )?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(draining.clone()))?;
        let dependencies = DependencyMetrics::register(&registry)?;
        let auth = AuthMetrics::register(&registry)?;
        let rate_limits = RateLimitMetrics::register(&registry)?;
        let store = StoreMetrics::register(&registry)?;
        let realtime = RealtimeMetrics::register(&registry)?;
        let outbox = OutboxMetrics::register(&registry)?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            ws_connections,
            registry_failures,
            draining,
            dependencies,
            auth,
            rate_limits,
            store,
            realtime,
            outbox,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text format is UTF-8")
    }

    /// Middleware body: times the request and counts it under its route template.
    pub async fn track<E: Endpoint>(
        &self,
        routes: &RouteTable,
        next: E,
        req: Request,
    ) -> poem::Result<Response> {
        let method = req.method().as_str().to_owned();
        let started = Instant::now();
        self.http_in_flight.inc();
        let result = next.call(req).await.map(IntoResponse::into_response);
        self.http_in_flight.dec();
        let (status, route) = match &result {
            Ok(resp) => (
                resp.status(),
                resp.data::<PathPattern>().map(|p| p.0.clone()),
            ),
            Err(err) => (err.status(), err.data::<PathPattern>().map(|p| p.0.clone())),
        };
        let route = match route.as_deref() {
            Some(pattern) if !pattern.is_empty() => routes.label(pattern).to_owned(),
            _ => "unmatched".to_owned(),
        };
        let labels = [method.as_str(), route.as_str(), status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
