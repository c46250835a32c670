//! `ApiError`: every failure a handler can return, documented in the OpenAPI document, and the
//! middleware that renders every other error (unknown route, wrong method, unparsable body,
//! missing token...) in the same `{"statusCode","error","message"}` body.

use petmesh_shared::error_body::ErrorBody;

use crate::routes::RouteTable;
use poem::{
    http::{header, Method, StatusCode},
    Endpoint, IntoResponse, PathPattern, Request, Response,
};
use poem_openapi::{payload::Json, ApiResponse};

/// What a handler returns on failure. Each variant is one documented status.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed or fails validation.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing, malformed, expired, forged or revoked credentials.
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        /// Always `Bearer`, per RFC 6750.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// Authenticated, but not allowed to do this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource (or not visible to the caller).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with existing data (duplicate, stale state).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `If-Match` names a version that is no longer current.
    #[oai(status = 412)]
    PreconditionFailed(Json<ErrorBody>),
    /// The request is well-formed but cannot be processed (an idempotency key reused with a
    /// different body).
    #[oai(status = 422)]
    UnprocessableEntity(Json<ErrorBody>),
    /// The request body is larger than the configured limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The request body's content type is not `application/json` (or, for an upload, the
    /// file is not an image of an accepted type).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Too many attempts (failed logins); retry after the given time.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// A bug; details are in the node's log under the request id.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A dependency (PostgreSQL, Redis) is unavailable or the node is overloaded; retry later.
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Seconds to wait before retrying, when the node can tell.
        #[oai(header = "Retry-After")]
        Option<u64>,
        /// `database` or `redis` when that shared dependency is the cause: every node would
        /// answer the same, so load balancers should not retry elsewhere.
        #[oai(header = "X-Petmesh-Dependency-Down")]
        Option<String>,
    ),
}

/// A dependency every node shares; when it is down, every node fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// PostgreSQL.
    Database,
    /// Redis.
    Redis,
}

impl Dependency {
    /// The name used in messages and in [`petmesh_shared::error_body::DEPENDENCY_DOWN_HEADER`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Redis => "redis",
        }
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(body(400, message))
    }

    /// 401 with `message` and `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(body(401, message), "Bearer".into())
    }

    /// 403 with `message`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(body(403, message))
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(body(404, message))
    }

    /// 409 with `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(body(409, message))
    }

    /// 412 with `message`.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::PreconditionFailed(body(412, message))
    }

    /// 422 with `message`.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::UnprocessableEntity(body(422, message))
    }

    /// 413 with `message`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::PayloadTooLarge(body(413, message))
    }

    /// 415 with `message`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::UnsupportedMediaType(body(415, message))
    }

    /// 503 with `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(body(503, message), None, None)
    }

    /// 503 because `dependency`, which every node shares, is unavailable (see
    /// [`petmesh_shared::error_body::DEPENDENCY_DOWN_HEADER`]).
    pub fn dependency_down(dependency: Dependency) -> Self {
        let message = format!("{} unavailable, retry later", dependency.name());
        Self::Unavailable(body(503, message), None, Some(dependency.name().to_owned()))
    }

    /// 429 with `message` and `Retry-After: retry_after_secs`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::TooManyRequests(body(429, message), retry_after_secs)
    }

    /// 503 with `message` and `Retry-After: retry_after_secs`.
    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(body(503, message), Some(retry_after_secs), None)
    }

    /// The body every variant carries (what the WebSocket protocol reports as its error).
    pub fn body(&self) -> &ErrorBody {
        match self {
            Self::BadRequest(body)
            | Self::Unauthorized(body, _)
            | Self::Forbidden(body)
            | Self::NotFound(body)
            | Self::Conflict(body)
            | Self::PreconditionFailed(body)
            | Self::UnprocessableEntity(body)
            | Self::PayloadTooLarge(body)
            | Self::UnsupportedMediaType(body)
            | Self::TooManyRequests(body, _)
            | Self::Internal(body)
            | Self::Unavailable(body, _, _) => &body.0,
        }
    }

    /// 500 after logging `cause` with its whole chain; the client sees no detail.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error_chain(cause), "internal error");
        Self::Internal(body(
            500,
            "internal error; see the node log for this request id",
        ))
    }
}

fn body(status: u16, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody::new(status, message))
}

/// `outer: middle: inner`, so one log line tells the whole story.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

// === conversions, so `?` works in handlers ===

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            // SQLSTATE class 22, "data exception": the values sent were unacceptable to
            // PostgreSQL (a NUL character in text, a number out of range). The client's fault.
            sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")) => {
                Self::bad_request(format!("invalid value: {}", db.message()))
            }
            _ if database_down(&err) => {
                tracing::warn!(error = %error_chain(&err), "database unavailable");
                Self::dependency_down(Dependency::Database)
            }
            _ => Self::internal(&err),
        }
    }
}

/// Whether `err` says PostgreSQL cannot serve at all (no connection, or a server that is going
/// away or starting), rather than that this query was wrong.
fn database_down(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| means_database_down(&code)),
        _ => false,
    }
}

/// Whether a SQLSTATE says PostgreSQL itself cannot serve, rather than that the query was
/// wrong: class 08 (connection exception), 57P01–57P03 (shutting down, crashed, starting up:
/// what a restart looks like to the connections it ends) and 53300 (too many connections).
fn means_database_down(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
        {
            tracing::warn!(error = %error_chain(&err), "redis unavailable");
            Self::dependency_down(Dependency::Redis)
        } else {
            Self::internal(&err)
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(err.as_ref())
    }
}

/// Turns database constraint violations into client errors at the call site.
pub trait ResultExt<T> {
    /// `map` gets the name of the violated constraint and returns the client error for it, or
    /// `None` to treat it as any other database error.
    fn on_constraint(self, map: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, map: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError> {
        self.map_err(|err| {
            let mapped = match &err {
                sqlx::Error::Database(db) => db.constraint().and_then(map),
                _ => None,
            };
            mapped.unwrap_or_else(|| err.into())
        })
    }
}

// === rendering of errors that did not come from a handler ===

/// Middleware: renders every `poem::Error` that is not already an [`ApiError`] response in the
/// common error body, keeping the matched route for metrics.
pub async fn render_errors<E: Endpoint>(
    routes: &RouteTable,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|len| len != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    match next.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) if err.is_from_response() => Ok(err.into_response()),
        Err(err) => {
            let allow = err
                .data::<PathPattern>()
                .filter(|_| err.status() == StatusCode::METHOD_NOT_ALLOWED)
                .and_then(|pattern| routes.allowed(&pattern.0))
                .and_then(|allow| header::HeaderValue::from_str(allow).ok());
            let mut resp = error_response(err, &method, &path);
            if let Some(allow) = allow {
                resp.headers_mut().insert(header::ALLOW, allow);
            }
            // Rejected before the handler read the body (413, 415, ...): the unread bytes
            // make the connection unusable, so tell the client not to reuse it rather than
            // let its next request race the server's close.
            if has_body {
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        }
    }
}

fn error_response(err: poem::Error, method: &Method, path: &str) -> Response {
    let status = err.status();
    let message = describe(&err, status, method, path);
    if status.is_server_error() {
        tracing::error!(error = %err, status = status.as_u16(), "request failed");
    }
    let mut resp = Json(ErrorBody::new(status.as_u16(), message))
        .with_status(status)
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(pattern) = err.data::<PathPattern>() {
        resp.set_data(pattern.clone());
    }
    resp
}

/// A message a client can act on. poem's own messages are kept where they are already good
/// (payload and parameter parse errors name the field); the terse ones get rewritten.
fn describe(err: &poem::Error, status: StatusCode, method: &Method, path: &str) -> String {
    use poem::error::{MethodNotAllowedError, NotFoundError};
    use poem_openapi::error::{AuthorizationError, ParsePathError};
    if let Some(parse) = err.downcast_ref::<ParsePathError>() {
        // poem names path parameters by position (`param0`); the path says which one it was.
        format!("malformed path parameter in {path}: {}", parse.reason)
    } else if err.is::<NotFoundError>() {
        format!("no route for {method} {path}")
    } else if err.is::<MethodNotAllowedError>() {
        format!("method {method} is not allowed on {path}")
    } else if err.is::<AuthorizationError>() {
        "missing or malformed Authorization header; expected `Authorization: Bearer <access token>`"
            .into()
    } else if status.is_server_error() {
        "internal error; see the node log for this request id".into()
    } else {
        let text = err.to_string();
        if text.is_empty() {
            petmesh_shared::error_body::reason_phrase(status.as_u16()).to_owned()
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use petmesh_shared::error_body::DEPENDENCY_DOWN_HEADER;
    use poem::IntoResponse;

    use super::*;

    #[test]
    fn a_shared_dependency_503_names_it_in_the_header_the_balancer_reads() {
        let response = ApiError::dependency_down(Dependency::Database).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(DEPENDENCY_DOWN_HEADER).unwrap(),
            "database"
        );
        let other = ApiError::unavailable("node is shutting down").into_response();
        assert!(other.headers().get(DEPENDENCY_DOWN_HEADER).is_none());
    }

    #[test]
    fn a_restarting_or_unreachable_postgresql_is_told_apart_from_a_bad_query() {
        for down in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert!(means_database_down(down), "{down}");
        }
        // A syntax error, a unique violation, a statement timeout: the query, not the server.
        for query in ["42601", "23505", "57014"] {
            assert!(!means_database_down(query), "{query}");
        }
    }
}
