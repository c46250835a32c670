//! What every response and request header set is held to, whoever produced it:
//!
//! - security headers on every response: `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: no-referrer`, frame protection (`X-Frame-Options: DENY` and CSP
//!   `frame-ancestors 'none'`), and `Cache-Control: no-store` on the auth endpoints, whose
//!   answers carry tokens;
//! - request header limits: more than `server.max_headers` fields or `server.max_header_bytes`
//!   of them get 431 in the common error body (hyper's own, coarser limits — 100 fields,
//!   ~400 KiB — stay behind these as the last line).
//!
//! Cross-origin access (CORS) is off unless `server.cors_allowed_origins` lists origins; see
//! [`crate::api::app`].

use std::sync::Arc;

use poem::{
    http::{header, HeaderValue, StatusCode},
    Endpoint, IntoResponse, Request, Response,
};

/// The hardening settings the app is built with (`server.*`).
#[derive(Debug, Clone)]
pub struct Hardening {
    /// Request header limits.
    pub header_limits: HeaderLimits,
    /// Cross-origin access (none unless origins are listed).
    pub cors: Cors,
}

impl Hardening {
    /// From the server settings.
    pub fn new(server: &crate::config::ServerSettings) -> Self {
        Self {
            header_limits: HeaderLimits {
                max_headers: server.max_headers,
                max_header_bytes: server.max_header_bytes,
            },
            cors: Cors::new(server.cors_origins()),
        }
    }
}

/// Cross-origin access for the listed origins (CORS): preflights answered, the allowed origin
/// echoed; the API's methods and headers, no credentials (tokens travel in `Authorization`,
/// never in cookies). Requests from other origins get no CORS headers, so browsers keep their
/// answers from the page; same-origin and non-browser clients are unaffected.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Allowed origins, exactly as browsers send them (`https://shop.example`).
    origins: Arc<[String]>,
}

/// Methods a cross-origin page may use.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
/// Request headers a cross-origin page may send.
const CORS_HEADERS: &str = "authorization, content-type, idempotency-key, if-match, x-request-id";
/// Response headers a cross-origin page may read.
const CORS_EXPOSED: &str =
    "etag, x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";

impl Cors {
    /// For `origins`; empty allows none.
    pub fn new(origins: Vec<String>) -> Self {
        Self {
            origins: origins.into(),
        }
    }

    /// Middleware body.
    pub async fn apply<E: Endpoint>(&self, next: E, req: Request) -> poem::Result<Response> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .filter(|o| {
                self.origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
            })
            .map(str::to_owned);
        let Some(origin) = origin else {
            return next.call(req).await.map(IntoResponse::into_response);
        };
        let preflight = req.method() == poem::http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut resp = if preflight {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            let headers = resp.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            resp
        } else {
            let mut resp = next.call(req).await?.into_response();
            resp.headers_mut().insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSED),
            );
            resp
        };
        let headers = resp.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        Ok(resp)
    }
}

/// Header limits, from `server.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Most header fields a request may have.
    pub max_headers: usize,
    /// Most bytes of header names and values a request may have.
    pub max_header_bytes: usize,
}

impl HeaderLimits {
    /// Middleware body: refuses requests over either limit with 431.
    pub async fn apply<E: Endpoint>(self, next: E, req: Request) -> poem::Result<Response> {
        let headers = req.headers();
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let too_many = headers.len() > self.max_headers;
        if too_many || bytes > self.max_header_bytes {
            let message = if too_many {
                format!(
                    "{} request header fields; at most {} are accepted",
                    headers.len(),
                    self.max_headers
                )
            } else {
                format!(
                    "{bytes} bytes of request headers; at most {} are accepted",
                    self.max_header_bytes
                )
            };
            return Err(poem::Error::from_string(
                message,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ));
        }
        next.call(req).await.map(IntoResponse::into_response)
    }
}

/// Middleware: adds the security headers to whatever the inner layers answered.
pub async fn secure_headers<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let sensitive = req.uri().path().starts_with("/api/v1/auth/");
    let mut resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    let headers = resp.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if sensitive {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(resp)
}
