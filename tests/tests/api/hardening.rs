//! Hardening every answer and request carries: security headers, `Cache-Control: no-store` on
//! token answers, header limits with readable 431s, CORS only for allowed origins, and the
//! WebSocket `Origin` allowlist — straight to a node and through the balancer.

use petmesh_tests::{assert_error, ApiClient, TestCluster, TestResponse};
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

use crate::helpers::PASSWORD;

#[track_caller]
fn assert_secure_headers(resp: &TestResponse) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "frame-ancestors 'none'"),
    ] {
        assert_eq!(
            resp.header(name),
            Some(value),
            "{name} on {} {}",
            resp.status,
            resp.text
        );
    }
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_tokens_are_never_cached() {
    let cluster = TestCluster::builder().nodes(1).balancer(true).start().await;
    for client in [cluster.client(0), cluster.entry_client()] {
        let live = client.get("/health/live").await.unwrap();
        live.assert_status(200);
        assert_secure_headers(&live);
        let missing = client.get("/api/v1/no/such/route").await.unwrap();
        assert_error(&missing, 404);
        assert_secure_headers(&missing);
        assert_eq!(live.header("cache-control"), None);
    }
    let client = cluster.client(0);
    client
        .register("hazel", "hazel@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
    let login = client
        .post(
            "/api/v1/auth/login",
            &json!({"username": "hazel", "password": PASSWORD}),
        )
        .await
        .unwrap();
    login.assert_status(200);
    assert_secure_headers(&login);
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let refused = client
        .post(
            "/api/v1/auth/login",
            &json!({"username": "hazel", "password": "wrong-one"}),
        )
        .await
        .unwrap();
    assert_error(&refused, 401);
    assert_eq!(refused.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_a_readable_431() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__SERVER__MAX_HEADERS", "20")
        .env("PETMESH_NODE__SERVER__MAX_HEADER_BYTES", "4096")
        .start()
        .await;
    let client = cluster.client(0);
    let mut many = client.request(Method::GET, "/health/live");
    for n in 0..30 {
        many = many.header(format!("x-extra-{n}"), "1");
    }
    let resp = client.send(many).await.unwrap();
    assert_error(&resp, 431);
    assert!(
        resp.body["message"]
            .as_str()
            .unwrap()
            .contains("at most 20"),
        "{}",
        resp.text
    );

    let large = client
        .request(Method::GET, "/health/live")
        .header("x-large", "a".repeat(5000));
    let resp = client.send(large).await.unwrap();
    assert_error(&resp, 431);
    assert!(
        resp.body["message"]
            .as_str()
            .unwrap()
            .contains("at most 4096"),
        "{}",
        resp.text
    );

    // Within both limits: served.
    let fine = client
        .request(Method::GET, "/health/live")
        .header("x-fine", "a".repeat(1000));
    client.send(fine).await.unwrap().assert_status(200);
}

/// A CORS preflight from `origin` for a POST with a JSON body and a token.
async fn preflight(client: &ApiClient, origin: &str) -> TestResponse {
    let request = client
        .request(Method::OPTIONS, "/api/v1/pets")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        );
    client.send(request).await.unwrap()
}

#[tokio::test]
async fn cross_origin_access_is_off_unless_the_origin_is_listed() {
    let mut cluster = TestCluster::start(1).await;
    let closed = cluster.client(0);
    let resp = preflight(&closed, "https://shop.example").await;
    assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");
    let get = closed
        .send(
            closed
                .request(Method::GET, "/health/live")
                .header("origin", "https://shop.example"),
        )
        .await
        .unwrap();
    assert_eq!(get.header("access-control-allow-origin"), None);

    let open = cluster
        .spawn_node(|config| {
            config.env(
                "PETMESH_NODE__SERVER__CORS_ALLOWED_ORIGINS",
                "https://shop.example",
            )
        })
        .await
        .unwrap()
        .base_url();
    let open = ApiClient::new(open);
    let allowed = preflight(&open, "https://shop.example").await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://shop.example"),
        "{allowed:?}"
    );
    assert!(allowed
        .header("access-control-allow-headers")
        .is_some_and(|h| h.to_lowercase().contains("authorization")));
    assert_eq!(allowed.header("access-control-allow-credentials"), None);
    let other = preflight(&open, "https://evil.example").await;
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
}

/// A WebSocket handshake to `base_url` with `Origin: origin`: the HTTP status it got.
async fn handshake(base_url: &str, origin: &str) -> u16 {
    let url = format!("{}/ws", base_url.replacen("http", "ws", 1));
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("handshake with {origin}: {err}"),
    }
}

#[tokio::test]
async fn websocket_origins_are_checked_through_the_balancer_too() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .balancer(true)
        .env(
            "PETMESH_NODE__REALTIME__ALLOWED_ORIGINS",
            "https://shop.example",
        )
        .start()
        .await;
    for base_url in [cluster.node(0).base_url(), cluster.balancer().base_url()] {
        assert_eq!(
            handshake(&base_url, "https://shop.example").await,
            101,
            "{base_url}"
        );
        assert_eq!(
            handshake(&base_url, "https://evil.example").await,
            403,
            "{base_url}"
        );
    }
}
