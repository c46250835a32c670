//! Request ids: taken from `X-Request-Id` when the caller (or the balancer) sent a sane one,
//! generated otherwise; echoed in the response and attached to every log line of the request.

use std::time::Instant;

use poem::{
    http::{HeaderName, HeaderValue},
    Endpoint, IntoResponse, Request, Response,
};
use tracing::Instrument;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, available to handlers through `Data<&RequestId>`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Ids longer than this, or with characters outside visible ASCII, are replaced: they end up in
/// logs and headers.
const MAX_LEN: usize = 128;

fn accept(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let sane =
        !text.is_empty() && text.len() <= MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| text.to_owned())
}

/// Middleware: assigns the id, opens the request span, logs the outcome, echoes the header.
pub async fn with_request_id<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(accept)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.set_data(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    async move {
        let started = Instant::now();
        let mut resp = next.call(req).await?.into_response();
        let status = resp.status().as_u16();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Successes at debug: an access log line per request costs real CPU under load.
        match status {
            500.. => tracing::warn!(status, latency_ms, "request failed"),
            400..=499 => tracing::info!(status, latency_ms, "request rejected"),
            _ => tracing::debug!(status, latency_ms, "request served"),
        }
        if let Ok(value) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        Ok(resp)
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_accepted() {
        assert_eq!(
            accept(&HeaderValue::from_static("abc-123")),
            Some("abc-123".into())
        );
        assert_eq!(accept(&HeaderValue::from_static("has space")), None);
        assert_eq!(accept(&HeaderValue::from_static("")), None);
        assert_eq!(
            accept(&HeaderValue::from_str(&"x".repeat(129)).unwrap()),
            None
        );
    }
}
