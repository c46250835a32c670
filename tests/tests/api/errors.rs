//! Every class of bad input gets its status and the common error body; never a 500.

use petmesh_tests::{assert_error, TestCluster};
use reqwest::Method;

use crate::helpers::signed_up;

#[tokio::test]
async fn every_bad_input_class_gets_its_status_and_the_error_format() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__SERVER__BODY_LIMIT_BYTES", "4096")
        .start()
        .await;
    let client = cluster.client(0);
    let user = signed_up(&client, "uma").await;
    let send = |method: Method, path: &str| client.request(method, path);

    // 404: unknown route, anywhere in the tree.
    for path in ["/nope", "/api/v1/nope", "/api/v2/auth/login"] {
        let resp = client.get(path).await.unwrap();
        assert_error(&resp, 404);
        assert!(resp.body["message"].as_str().unwrap().contains(path));
    }
    // 400, not 500: text PostgreSQL cannot store (a NUL character).
    let nul = client
        .register("nul\u{0}name", "nul@example.com", "password123")
        .await
        .unwrap();
    assert_error(&nul, 400);
    let nul = client
        .post("/api/v1/auth/register", &serde_json::json!({"username": "nulname", "email": "nul@example.com", "password": "password123", "lastName": "a\u{0}b"}))
        .await
        .unwrap();
    assert_error(&nul, 400);
    // 405 names the allowed methods (RFC 9110).
    let trace = client
        .send(send(
            Method::TRACE,
            "/api/v1/users/00000000-0000-0000-0000-000000000000",
        ))
        .await
        .unwrap();
    assert_error(&trace, 405);
    assert_eq!(trace.header("allow"), Some("DELETE, GET, HEAD, PUT"));
    // 405: known route, wrong method.
    assert_error(
        &client
            .send(send(Method::DELETE, "/api/v1/auth/login"))
            .await
            .unwrap(),
        405,
    );
    assert_error(
        &client
            .send(send(Method::GET, "/api/v1/auth/register"))
            .await
            .unwrap(),
        405,
    );
    // 400: malformed JSON, wrong shape, failed validation.
    for body in ["{bad", "", "[]", "null", r#"{"username":"x"}"#] {
        let req = send(Method::POST, "/api/v1/auth/register")
            .header("content-type", "application/json")
            .body(body);
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 400, "body {body:?}: {}", resp.text);
        assert_error(&resp, 400);
    }
    // 413: declared too large, and chunked too large.
    let big = format!(r#"{{"username":"{}"}}"#, "x".repeat(8192));
    let declared = send(Method::POST, "/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(big.clone());
    let too_large = client.send(declared).await.unwrap();
    assert_error(&too_large, 413);
    // The body was not read, so the connection cannot be reused: the server says so.
    assert_eq!(too_large.header("connection"), Some("close"));
    let stream = futures_stream(big.into_bytes());
    let chunked = send(Method::POST, "/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream));
    assert_error(&client.send(chunked).await.unwrap(), 413);
    // 415: wrong or missing content type.
    let form = send(Method::POST, "/api/v1/auth/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=a&password=b");
    assert_error(&client.send(form).await.unwrap(), 415);
    let bare = send(Method::POST, "/api/v1/auth/login").body(r#"{"username":"a","password":"b"}"#);
    assert_error(&client.send(bare).await.unwrap(), 415);
    // 409: conflict.
    assert_error(
        &client
            .register("uma", "uma2@example.com", "password123")
            .await
            .unwrap(),
        409,
    );
    // 401: no token on a protected route.
    assert_error(&client.get("/api/v1/users").await.unwrap(), 401);
    // 400: malformed path parameter.
    let as_user = client.clone().token(&user.tokens.access_token);
    assert_error(&as_user.get("/api/v1/users/123").await.unwrap(), 400);

    // A request within the limits still works after all that.
    as_user
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
    // And no request above was answered with a 5xx.
    let metrics = client.get("/metrics").await.unwrap().text;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("petmesh_node_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}

/// A body with no `Content-Length`: sent with `Transfer-Encoding: chunked`.
fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    futures_util::stream::iter(chunks)
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let given = client
        .send(
            client
                .request(Method::GET, "/health/live")
                .header("x-request-id", "trace-me-42"),
        )
        .await
        .unwrap();
    assert_eq!(given.header("x-request-id"), Some("trace-me-42"));
    let generated = client.get("/nope").await.unwrap();
    let id = generated
        .header("x-request-id")
        .expect("generated id")
        .to_owned();
    assert!(id.len() >= 16);
    let other = client.get("/nope").await.unwrap();
    assert_ne!(other.header("x-request-id"), Some(id.as_str()));
}
