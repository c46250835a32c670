//! Request limits: body size and handling time.
//!
//! poem's own `SizeLimit` insists on a `Content-Length` (it answers 411 otherwise, even for
//! bodiless GETs), so the body limit is ours: declared lengths are checked up front, chunked
//! bodies are read up to the limit and refused as soon as they pass it.

use std::time::Duration;

use futures_util::StreamExt;
use poem::{
    http::{header, StatusCode},
    Body, Endpoint, IntoResponse, Request, Response,
};

/// Request limits, from `server.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body.
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
}

impl Limits {
    /// Middleware body: applies both limits.
    pub async fn apply<E: Endpoint>(self, next: E, mut req: Request) -> poem::Result<Response> {
        let too_large = || {
            poem::Error::from_string(
                format!(
                    "request body exceeds the limit of {} bytes",
                    self.body_limit_bytes
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(len) if len > self.body_limit_bytes as u64 => return Err(too_large()),
            Some(_) => {}
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                let mut stream = Box::pin(req.take_body().into_bytes_stream());
                let mut collected = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        poem::Error::from_string(
                            format!("reading request body: {e}"),
                            StatusCode::BAD_REQUEST,
                        )
                    })?;
                    if collected.len() + chunk.len() > self.body_limit_bytes {
                        return Err(too_large());
                    }
                    collected.extend_from_slice(&chunk);
                }
                req.set_body(Body::from(collected));
            }
            None => {}
        }
        match tokio::time::timeout(self.request_timeout, next.call(req)).await {
            Ok(result) => result.map(IntoResponse::into_response),
            Err(_) => Err(poem::Error::from_string(
                format!(
                    "request timed out after {} s",
                    self.request_timeout.as_secs()
                ),
                StatusCode::SERVICE_UNAVAILABLE,
            )),
        }
    }
}
