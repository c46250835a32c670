//! The HTTP surface: the OpenAPI service (one `#[OpenApi]` struct per resource), the spec at
//! `/openapi.json` (generated, then completed by [`document`]), Swagger UI at `/documentation`,
//! `/metrics`, the demo client at `/` ([`crate::demo`], outside the document), and the
//! middleware stack that every request passes through. Request bodies are read by
//! [`json_body::JsonBody`], as strictly as the document describes them.

pub mod auth;
pub mod document;
pub mod health;
pub mod image_body;
pub mod json_body;
pub mod pets;
pub mod store;
pub mod subscribers;
pub mod users;

use std::sync::Arc;

use poem::{
    endpoint::make_sync,
    get, handler,
    http::HeaderMap,
    web::{Data, Html},
    Endpoint, EndpointExt, Response, Route,
};
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

/// A documented header parameter's value, refusing what poem-openapi's `Header` would drop.
///
/// `Header` skips field values that are not visible ASCII, as if the field were absent, so a
/// malformed `If-Match` would become no precondition at all and a malformed `Idempotency-Key`
/// no key. This refuses such values (and a repeated field) with 400 and otherwise passes
/// `parsed` (the `Header` value, already checked against the document) through.
pub fn header_param(
    headers: &HeaderMap,
    name: &str,
    parsed: Option<String>,
) -> Result<Option<String>, crate::error::ApiError> {
    let values = headers.get_all(name);
    if values.iter().count() > 1 || values.iter().any(|v| v.to_str().is_err()) {
        return Err(crate::error::ApiError::bad_request(format!(
            "{name} must be one field of visible ASCII characters"
        )));
    }
    Ok(parsed)
}

/// The OpenAPI service of the node; [`document::document`] completes what it generates.
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
    let generated = api.spec();
    let spec = document::document(&generated);
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    let table = Arc::new(RouteTable::from_paths(&paths));
    let served = serde_json::to_string_pretty(&spec).expect("the spec serialises");
    // Swagger UI embeds the document it shows; it shows the served one.
    let swagger = api.swagger_ui_html().replacen(&generated, &served, 1);
    let routes = Route::new()
        .at(
            "/openapi.json",
            make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(served.clone())
            }),
        )
        .nest(
            "/documentation",
            Route::new().at("/", make_sync(move |_| Html(swagger.clone()))),
        )
        .at("/metrics", get(serve_metrics))
        .at("/ws", crate::realtime::websocket)
        .at("/asyncapi.json", get(crate::realtime::asyncapi))
        .nest("/", api);
    // Exactly `/`: every other path still goes to the API (and its 404).
    let routes = crate::demo::in_front_of(routes);
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
