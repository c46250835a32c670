//! The HTTP surface: the OpenAPI service (one `#[OpenApi]` struct per resource), the spec at
//! `/openapi.json`, Swagger UI at `/documentation`, `/metrics`, and the middleware stack that
//! every request passes through.

pub mod auth;
pub mod health;
pub mod users;

use std::sync::Arc;

use poem::{get, handler, web::Data, Endpoint, EndpointExt, Route};
use poem_openapi::{ApiResponse, OpenApiService, Tags};

use crate::{
    error::render_errors, limits::Limits, metrics::RouteLabels, request_id::with_request_id,
    state::AppState,
};

/// Groups of operations in the OpenAPI document.
#[derive(Tags)]
pub enum ApiTags {
    /// Registration, login, tokens and sessions.
    Auth,
    /// User accounts.
    Users,
    /// Liveness, readiness and dependency health.
    Health,
}

/// A success without a body.
#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// The OpenAPI service of the node (also used to print the spec).
pub fn service() -> OpenApiService<(health::HealthApi, auth::AuthApi, users::UsersApi), ()> {
    OpenApiService::new(
        (health::HealthApi, auth::AuthApi, users::UsersApi),
        "petmesh",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The petmesh pet-store API. Errors always have the body \
         `{\"statusCode\":N,\"error\":\"<reason phrase>\",\"message\":\"...\"}`.",
    )
}

/// The whole node endpoint with its middleware, outermost first:
/// state → request id and span → metrics → error rendering → limits → routes.
pub fn app(state: AppState, limits: Limits) -> impl Endpoint {
    let api = service();
    let spec: serde_json::Value =
        serde_json::from_str(&api.spec()).expect("the generated spec is JSON");
    let labels = RouteLabels::new(
        spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, _)| path.as_str()),
    );
    let labels = Arc::new(labels);
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/documentation", api.swagger_ui())
        .at("/metrics", get(serve_metrics))
        .nest("/", api);
    let metrics = Arc::clone(&state.metrics);
    routes
        .around(move |ep, req| limits.apply(ep, req))
        .around(render_errors)
        .around(move |ep, req| {
            let (metrics, labels) = (Arc::clone(&metrics), Arc::clone(&labels));
            async move { metrics.track(&labels, ep, req).await }
        })
        .around(with_request_id)
        .data(state)
}

/// Prometheus text exposition.
#[handler]
fn serve_metrics(state: Data<&AppState>) -> String {
    state.metrics.render()
}
