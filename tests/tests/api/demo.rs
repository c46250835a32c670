//! The demo client at `GET /` (issue 15, item 2): an HTML page served by every node, outside
//! the OpenAPI document, leaving unknown paths and their metrics label as they were. The page
//! itself is driven in a browser by `scripts/test-e2e`.

use petmesh_tests::{assert_error, TestCluster};
use reqwest::Method;

#[tokio::test]
async fn the_root_serves_the_demo_page_outside_the_openapi_document() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);

    let page = client.get("/").await.unwrap();
    page.assert_status(200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.text.starts_with("<!doctype html>"),
        "{}",
        &page.text[..80]
    );
    assert!(page.text.contains("id=\"login-form\""));
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    // The common security headers still apply.
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let head = client
        .send(client.request(Method::HEAD, "/"))
        .await
        .unwrap();
    head.assert_status(200);

    let spec = client.get("/openapi.json").await.unwrap();
    let paths = spec.body["paths"].as_object().unwrap();
    assert!(!paths.is_empty());
    assert!(
        paths
            .keys()
            .all(|path| path.starts_with("/api/v1/") || path.starts_with("/health")),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(!paths.contains_key("/"));

    // Only `/` itself: other paths are the API's, unknown ones 404 as before, and are counted
    // as `unmatched`, while the page has its own label.
    for path in ["/index.html", "/nope", "//"] {
        assert_error(&client.get(path).await.unwrap(), 404);
    }
    assert_error(
        &client.post("/", &serde_json::json!({})).await.unwrap(),
        405,
    );
    let metrics = client.get("/metrics").await.unwrap().text;
    assert!(
        metrics
            .contains(r#"petmesh_node_http_requests_total{method="GET",route="/",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"petmesh_node_http_requests_total{method="GET",route="unmatched",status="404"} 3"#
        ),
        "{metrics}"
    );
}
