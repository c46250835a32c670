//! Prometheus metrics of the node and the middleware that records every HTTP request by route
//! template (never the raw path, so label cardinality stays bounded), method and status.

use std::{collections::HashMap, time::Instant};

use poem::{Endpoint, IntoResponse, PathPattern, Request, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The node's registry and collectors. One per process, shared through `AppState`.
pub struct Metrics {
    /// Everything `/metrics` exposes.
    pub registry: Registry,
    /// `petmesh_node_http_requests_total{method,route,status}`.
    http_requests: IntCounterVec,
    /// `petmesh_node_http_request_duration_seconds{method,route,status}`.
    http_duration: HistogramVec,
    /// `petmesh_node_http_requests_in_flight`.
    pub http_in_flight: IntGauge,
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
        registry.register(Box::new(http_in_flight.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
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
        routes: &RouteLabels,
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

/// Maps poem-openapi's internal route patterns (`/api/v1/users/:param0`) back to the documented
/// templates (`/api/v1/users/{id}`), so dashboards use the names readers know from the API docs.
#[derive(Debug, Default)]
pub struct RouteLabels {
    /// Internal pattern → documented template, for templates with path parameters.
    documented: HashMap<String, String>,
}

impl RouteLabels {
    /// Labels for the documented `paths` (the keys of the OpenAPI document's `paths`).
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let documented = paths
            .into_iter()
            .filter(|path| path.contains('{'))
            .map(|path| (internal_pattern(path), path.to_owned()))
            .collect();
        Self { documented }
    }

    /// The label for a matched pattern.
    pub fn label<'a>(&'a self, pattern: &'a str) -> &'a str {
        self.documented.get(pattern).map_or(pattern, String::as_str)
    }
}

/// poem-openapi numbers path parameters in order: `/a/{x}/b/{y}` is routed as
/// `/a/:param0/b/:param1`.
fn internal_pattern(documented: &str) -> String {
    let mut next = 0;
    documented
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                next += 1;
                format!(":param{}", next - 1)
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_patterns_map_back_to_documented_templates() {
        let labels = RouteLabels::new(["/api/v1/users/{id}", "/a/{x}/b/{y}", "/health"]);
        assert_eq!(labels.label("/api/v1/users/:param0"), "/api/v1/users/{id}");
        assert_eq!(labels.label("/a/:param0/b/:param1"), "/a/{x}/b/{y}");
        assert_eq!(labels.label("/health"), "/health");
    }
}
