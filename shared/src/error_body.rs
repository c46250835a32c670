//! The common error body: `{"statusCode":404,"error":"Not Found","message":"..."}`.
//!
//! Every failure a client can see, from a node or from the balancer, uses this shape, so clients
//! need exactly one error parser.

use serde::{Deserialize, Serialize};

/// Header a node sets on a 503 caused by a dependency every node shares (`database` or
/// `redis`): another node would answer the same, so the balancer neither retries the request
/// elsewhere nor counts the answer against the node's circuit breaker.
pub const DEPENDENCY_DOWN_HEADER: &str = "x-petmesh-dependency-down";

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The HTTP status code, repeated for clients that only see the body.
    pub status_code: u16,
    /// The status code's reason phrase, e.g. `Not Found`.
    pub error: String,
    /// What was wrong, in words a client developer can act on.
    pub message: String,
}

impl ErrorBody {
    /// Builds the body for `status` with the canonical reason phrase.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status_code: status,
            error: reason_phrase(status).to_owned(),
            message: message.into(),
        }
    }
}

/// The canonical reason phrase of a status code (`"Unknown"` for codes without one).
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_camel_case_with_reason_phrase() {
        let body = ErrorBody::new(413, "body exceeds 10 bytes");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"statusCode": 413, "error": "Payload Too Large", "message": "body exceeds 10 bytes"})
        );
    }
}
