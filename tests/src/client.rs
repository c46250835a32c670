//! A small HTTP client for tests: JSON in, status + headers + JSON out.
//!
//! Tests assert on statuses and bodies, including error bodies, so [`TestResponse`] never
//! turns a 4xx or 5xx into an `Err`: only transport failures are errors. Bodies are parsed
//! eagerly into a `serde_json::Value`, which keeps assertions one-liners
//! (`resp.body["name"] == "Rex"`) without a typed model per endpoint.

use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Upper bound for one request, so a hung node fails a test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one base URL (a node, later the balancer), optionally with a bearer token.
/// Cheap to clone; clones share the connection pool.
#[derive(Clone, Debug)]
pub struct ApiClient {
    /// The connection pool; no proxy, whatever the environment says.
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base_url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
}

/// A response, fully read.
#[derive(Clone, Debug)]
pub struct TestResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Value::Null` when it is empty or not JSON.
    pub body: Value,
    /// The body as text, whatever it contains.
    pub text: String,
}

/// The tokens `POST /api/v1/auth/login` returns.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tokens {
    /// Short-lived JWT for the `Authorization` header.
    pub access_token: String,
    /// Long-lived opaque token for `POST /api/v1/auth/refresh`.
    pub refresh_token: String,
}

// === impl ApiClient ===

impl ApiClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:41234`), without a token.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            // Only fails when the TLS backend can't initialise, and there is none.
            .expect("building an HTTP client");
        Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// This client, connecting from `source` (a loopback address such as `127.0.0.23`: all of
    /// 127.0.0.0/8 reaches loopback), so that one test can play many client addresses.
    pub fn from_address(mut self, source: std::net::IpAddr) -> Self {
        self.http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .local_address(source)
            .build()
            .expect("building an HTTP client");
        self
    }

    /// This client, sending `token` as a bearer token from now on.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// This client without a token.
    pub fn anonymous(mut self) -> Self {
        self.token = None;
        self
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<TestResponse> {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post(&self, path: &str, body: &impl Serialize) -> anyhow::Result<TestResponse> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// `PUT path` with `body` as JSON.
    pub async fn put(&self, path: &str, body: &impl Serialize) -> anyhow::Result<TestResponse> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<TestResponse> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// A request to `path` with the token attached, for anything the shortcuts don't cover
    /// (extra headers, raw bodies); pass it to [`ApiClient::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and reads the whole response. Only transport errors are errors.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<TestResponse> {
        let request = request.build().context("building the request")?;
        let what = format!("{} {}", request.method(), request.url());
        let response = self
            .http
            .execute(request)
            .await
            .with_context(|| format!("sending {what}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the response to {what}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(TestResponse {
            status,
            headers,
            body,
            text,
        })
    }

    /// `POST /api/v1/auth/register`; the response is returned whatever its status.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<TestResponse> {
        let body = json!({ "username": username, "email": email, "password": password });
        self.post("/api/v1/auth/register", &body).await
    }

    /// `POST /api/v1/auth/login`; anything but 200 with both tokens is an error.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Tokens> {
        let body = json!({ "username": username, "password": password });
        let resp = self.post("/api/v1/auth/login", &body).await?;
        if resp.status != 200 {
            bail!("login as {username} failed: {} {}", resp.status, resp.text);
        }
        serde_json::from_value(resp.body).with_context(|| {
            format!(
                "login response for {username} lacks the tokens: {}",
                resp.text
            )
        })
    }
}

// === impl TestResponse ===

impl TestResponse {
    /// Panics, showing the body, unless the status is `expected`. Returns `self` for chaining.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status, expected,
            "expected status {expected}, got {}; body: {}",
            self.status, self.text
        );
        self
    }

    /// The value of header `name` if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// Panics unless `resp` has status `status` and the common error body
/// `{"statusCode": status, "error": "<canonical reason phrase>", "message": "<non-empty>"}`.
#[track_caller]
pub fn assert_error(resp: &TestResponse, status: u16) {
    resp.assert_status(status);
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or_else(|| panic!("{status} has no canonical reason phrase"));
    assert_eq!(
        resp.body["statusCode"],
        json!(status),
        "statusCode in error body: {}",
        resp.text
    );
    assert_eq!(
        resp.body["error"],
        json!(reason),
        "error in error body: {}",
        resp.text
    );
    let message = resp.body["message"].as_str().unwrap_or_default();
    assert!(
        !message.trim().is_empty(),
        "error body needs a non-empty message: {}",
        resp.text
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: Value) -> TestResponse {
        TestResponse {
            status,
            headers: HeaderMap::new(),
            text: body.to_string(),
            body,
        }
    }

    #[test]
    fn assert_error_accepts_the_common_error_body() {
        let resp = response(
            404,
            json!({"statusCode": 404, "error": "Not Found", "message": "pet 7 not found"}),
        );
        assert_error(&resp, 404);
    }

    #[test]
    #[should_panic(expected = "error in error body")]
    fn assert_error_rejects_a_wrong_reason_phrase() {
        let resp = response(
            409,
            json!({"statusCode": 409, "error": "Duplicate", "message": "taken"}),
        );
        assert_error(&resp, 409);
    }

    #[test]
    #[should_panic(expected = "non-empty message")]
    fn assert_error_rejects_an_empty_message() {
        let resp = response(
            400,
            json!({"statusCode": 400, "error": "Bad Request", "message": ""}),
        );
        assert_error(&resp, 400);
    }

    #[test]
    #[should_panic(expected = "expected status 401")]
    fn assert_error_rejects_another_status() {
        assert_error(&response(200, json!({})), 401);
    }

    #[test]
    fn tokens_deserialise_from_the_login_response() {
        let tokens: Tokens = serde_json::from_value(json!({
            "accessToken": "a.b.c", "refreshToken": "r", "tokenType": "Bearer", "expiresIn": 900
        }))
        .unwrap();
        assert_eq!(tokens.access_token, "a.b.c");
        assert_eq!(tokens.refresh_token, "r");
    }

    #[test]
    fn base_url_loses_its_trailing_slash() {
        assert_eq!(ApiClient::new("http://x:1/").base_url(), "http://x:1");
    }
}
