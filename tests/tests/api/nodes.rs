//! Node-level behaviour: health, metrics, documentation, several nodes over one database,
//! shutdown, and refusal of bad configuration.

use std::time::Duration;

use petmesh_tests::{assert_error, node::node_binary, TestCluster};
use serde_json::json;

use crate::helpers::{admin, signed_up};

#[tokio::test]
async fn two_nodes_serve_the_same_data() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    let victor = signed_up(&a, "victor").await;

    // Written on A, read on B, changed on B, read on A.
    let as_victor_b = b.clone().token(&victor.tokens.access_token);
    let path = format!("/api/v1/users/{}", victor.id);
    as_victor_b.get(&path).await.unwrap().assert_status(200);
    as_victor_b
        .put(&path, &json!({"lastName": "Mesh"}))
        .await
        .unwrap()
        .assert_status(200);
    let on_a = a
        .clone()
        .token(&victor.tokens.access_token)
        .get(&path)
        .await
        .unwrap();
    assert_eq!(on_a.body["lastName"], "Mesh");

    let as_admin = b.clone().token(admin(&cluster).await.access_token);
    let listed = as_admin.get("/api/v1/users").await.unwrap();
    assert!(listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["username"] == "victor"));
    assert_error(
        &b.register("victor", "v2@example.com", "password123")
            .await
            .unwrap(),
        409,
    );
}

#[tokio::test]
async fn health_endpoints_report_the_node_and_its_dependencies() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let live = client.get("/health/live").await.unwrap();
    live.assert_status(200);
    assert_eq!(live.body["status"], "ok");
    let ready = client.get("/health/ready").await.unwrap();
    ready.assert_status(200);
    assert_eq!(ready.body["status"], "ready");
    let report = client.get("/health").await.unwrap();
    report.assert_status(200);
    assert_eq!(report.body["nodeId"], cluster.node(0).id());
    for dependency in ["postgres", "redis"] {
        assert_eq!(
            report.body["checks"][dependency]["status"], "up",
            "{}",
            report.text
        );
        assert!(
            report.body["checks"][dependency]["latencyMs"]
                .as_f64()
                .unwrap()
                >= 0.0
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let user = signed_up(&client, "wendy").await;
    let as_user = client.clone().token(&user.tokens.access_token);
    for _ in 0..3 {
        as_user
            .get(&format!("/api/v1/users/{}", user.id))
            .await
            .unwrap()
            .assert_status(200);
    }
    client.get("/does/not/exist").await.unwrap();

    let text = client.get("/metrics").await.unwrap().text;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("petmesh_node_http_requests_total{")
                && l.contains(r#"route="/api/v1/users/{id}""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no counter for the user route: {text}"));
    assert!(line.contains(r#"method="GET""#));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(!text.contains(&user.id), "raw paths must not become labels");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(text.contains("petmesh_node_http_request_duration_seconds_bucket{"));
}

#[tokio::test]
async fn openapi_documents_every_endpoint_with_its_errors() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let spec = client.get("/openapi.json").await.unwrap();
    spec.assert_status(200);
    let paths = spec.body["paths"].as_object().unwrap();
    for (path, method, statuses) in [
        ("/api/v1/auth/register", "post", &["201", "400", "409"][..]),
        ("/api/v1/auth/login", "post", &["200", "400", "401"]),
        ("/api/v1/auth/refresh", "post", &["200", "401"]),
        ("/api/v1/auth/logout", "post", &["204", "401"]),
        ("/api/v1/auth/logout-all", "post", &["204", "401"]),
        ("/api/v1/auth/me", "get", &["200", "401"]),
        ("/api/v1/users", "get", &["200", "400", "401", "403"]),
        ("/api/v1/users/{id}", "get", &["200", "401", "403", "404"]),
        (
            "/api/v1/users/{id}",
            "put",
            &["200", "400", "403", "404", "409"],
        ),
        ("/api/v1/users/{id}", "delete", &["204", "403", "404"]),
        ("/health/ready", "get", &["200", "503"]),
    ] {
        let operation = &paths[path][method];
        for status in statuses {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} does not document {status}"
            );
        }
    }
    assert!(spec.body["components"]["schemas"]["ErrorBody"].is_object());
    let docs = client.get("/documentation/").await.unwrap();
    docs.assert_status(200);
    assert!(docs.text.to_lowercase().contains("swagger"));
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut cluster = TestCluster::start(1).await;
    let status = cluster
        .node_mut(0)
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let logs = cluster.node(0).logs().join("\n");
    assert!(logs.contains("drained, exiting"), "{logs}");
}

#[tokio::test]
async fn invalid_configuration_stops_start_up_with_one_line_naming_the_setting() {
    let output = tokio::process::Command::new(node_binary().unwrap())
        .arg("serve")
        .env("PETMESH_NODE__ENVIRONMENT", "production")
        .env("PETMESH_NODE__SERVER__PORT", "eighty")
        .env_remove("PETMESH_NODE__AUTH__JWT_SECRET")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("invalid configuration: server.port (PETMESH_NODE__SERVER__PORT)"),
        "{stderr}"
    );

    // The default secret alone is refused outside development.
    let output = tokio::process::Command::new(node_binary().unwrap())
        .arg("serve")
        .env("PETMESH_NODE__ENVIRONMENT", "production")
        .env_remove("PETMESH_NODE__AUTH__JWT_SECRET")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("auth.jwt_secret (PETMESH_NODE__AUTH__JWT_SECRET)"));
}

#[tokio::test]
async fn help_lists_the_subcommands() {
    let output = tokio::process::Command::new(node_binary().unwrap())
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for subcommand in ["serve", "migrate", "create-admin"] {
        assert!(help.contains(subcommand), "{help}");
    }
}
