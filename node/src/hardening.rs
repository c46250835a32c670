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

use poem::{
    http::{header, HeaderValue, StatusCode},
    Endpoint, IntoResponse, Request, Response,
};

/// The hardening settings the app is built with (`server.*`).
#[derive(Debug, Clone)]
pub struct Hardening {
    /// Request header limits.
    pub header_limits: HeaderLimits,
    /// Origins allowed cross-origin access; empty: none.
    pub cors_origins: Vec<String>,
}

impl Hardening {
    /// From the server settings.
    pub fn new(server: &crate::config::ServerSettings) -> Self {
        Self {
            header_limits: HeaderLimits {
                max_headers: server.max_headers,
                max_header_bytes: server.max_header_bytes,
            },
            cors_origins: server.cors_origins(),
        }
    }

    /// CORS for the allowed origins: the methods and headers the API uses, no credentials
    /// (tokens travel in `Authorization`, never in cookies), `X-Request-Id` readable.
    pub fn cors(&self) -> poem::middleware::Cors {
        poem::middleware::Cors::new()
            .allow_origins(self.cors_origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
            .allow_headers([
                "authorization",
                "content-type",
                "idempotency-key",
                "if-match",
                "x-request-id",
            ])
            .expose_headers(["etag", "x-request-id", "retry-after"])
            .allow_credentials(false)
            .max_age(600)
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
