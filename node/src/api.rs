//! The HTTP surface: the OpenAPI service (one `#[OpenApi]` struct per resource), the spec at
//! `/openapi.json`, Swagger UI at `/documentation`, `/metrics`, and the middleware stack that
//! every request passes through.

pub mod auth;
pub mod health;
pub mod pets;
pub mod store;
pub mod subscribers;
pub mod users;

use std::sync::Arc;

use poem::{get, handler, web::Data, Endpoint, EndpointExt, Route};
use poem_openapi::{ApiResponse, OpenApiService, Tags};

use crate::{
    error::render_errors,
    hardening::{secure_headers, Hardening},
    limits::Limits,
    request_id::with_request_id,
    routes::RouteTable,
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
    /// The pet catalogue.
    Pets,
    /// Orders and inventory.
    Store,
    /// Custom WebSocket events (admins).
    Subscribers,
}

/// A success without a body.
#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// The OpenAPI service of the node (also used to print the spec).
pub fn service() -> OpenApiService<
    (
        health::HealthApi,
        auth::AuthApi,
        users::UsersApi,
        pets::PetsApi,
        store::StoreApi,
        subscribers::SubscribersApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            health::HealthApi,
            auth::AuthApi,
            users::UsersApi,
            pets::PetsApi,
            store::StoreApi,
            subscribers::SubscribersApi,
        ),
        "petmesh",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The petmesh pet-store API. Errors always have the body \
         `{\"statusCode\":N,\"error\":\"<reason phrase>\",\"message\":\"...\"}`.",
    )
}

/// The whole node endpoint with its middleware, outermost first:
/// state → security headers → CORS → request id and span → metrics →
/// client address → rate limits → error rendering → header limits → body and time limits →
/// routes.
pub fn app(state: AppState, limits: Limits, hardening: Hardening) -> impl Endpoint {
    let api = service();
    let spec: serde_json::Value =
        serde_json::from_str(&api.spec()).expect("the generated spec is JSON");
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    let table = Arc::new(RouteTable::from_paths(&paths));
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/documentation", api.swagger_ui())
        .at("/metrics", get(serve_metrics))
        .at("/ws", crate::realtime::websocket)
        .at("/asyncapi.json", get(crate::realtime::asyncapi))
        .nest("/", api);
    let metrics = Arc::clone(&state.metrics);
    let trusted = state.trusted_proxies.clone();
    let (limiter, tokens) = (state.rate_limiter.clone(), state.tokens.clone());
    let header_limits = hardening.header_limits;
    let cors = hardening.cors;
    routes
        .around(move |ep, req| limits.apply(ep, req))
        .around(move |ep, req| header_limits.apply(ep, req))
        .around({
            let table = Arc::clone(&table);
            move |ep, req| {
                let table = Arc::clone(&table);
                async move { render_errors(&table, ep, req).await }
            }
        })
        // Sees every answer rendered, so it can add its headers to each.
        .around(move |ep, req| {
            let (limiter, tokens) = (limiter.clone(), tokens.clone());
            async move { limiter.apply(&tokens, ep, req).await }
        })
        .around(move |ep, req| {
            let trusted = trusted.clone();
            async move { trusted.tag(ep, req).await }
        })
        .around(move |ep, req| {
            let (metrics, table) = (Arc::clone(&metrics), Arc::clone(&table));
            async move { metrics.track(&table, ep, req).await }
        })
        .around(with_request_id)
        .around(move |ep, req| {
            let cors = cors.clone();
            async move { cors.apply(ep, req).await }
        })
        .around(secure_headers)
        .data(state)
}

/// Prometheus text exposition.
#[handler]
fn serve_metrics(state: Data<&AppState>) -> String {
    state.metrics.render()
}
