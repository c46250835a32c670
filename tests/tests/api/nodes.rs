//! Node-level behaviour: health, metrics, documentation, several nodes over one database,
//! shutdown, and refusal of bad configuration.

use std::time::Duration;

use petmesh_tests::{assert_error, node::node_binary, process::run_isolated, TestCluster};
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

/// Runs `petmesh-node <subcommand>` with only `env`.
async fn node_command(subcommand: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_isolated(&node_binary().unwrap(), subcommand, env).await
}

#[tokio::test]
async fn invalid_configuration_stops_start_up_with_one_line_per_problem() {
    // A wrong type and a refused default at once: both are named, each on its own line.
    let (code, stderr) = node_command(
        "serve",
        &[
            ("PETMESH_NODE__ENVIRONMENT", "production"),
            ("PETMESH_NODE__SERVER__PORT", "eighty"),
        ],
    )
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("invalid configuration: server.port (PETMESH_NODE__SERVER__PORT)"),
        "{stderr}"
    );
    assert!(
        lines[1]
            .starts_with("invalid configuration: auth.jwt_secret (PETMESH_NODE__AUTH__JWT_SECRET)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_config_names_every_unknown_or_invalid_setting_and_connects_to_nothing() {
    let secret = (
        "PETMESH_NODE__AUTH__JWT_SECRET",
        "0123456789abcdef0123456789abcdef",
    );
    // Nothing listens at these URLs: check-config must not try.
    let unreachable = [
        ("DATABASE_URL", "postgres://petmesh@127.0.0.1:1/petmesh"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ];
    let (code, stderr) =
        node_command("check-config", &[secret, unreachable[0], unreachable[1]]).await;
    assert_eq!((code, stderr.as_str()), (Some(0), ""));

    let (code, stderr) = node_command(
        "check-config",
        &[
            secret,
            ("PETMESH_NODE__SERVER__PROT", "9000"),
            ("PETMESH_NODE__JOBS__CONCURRENCY", "many"),
            ("PETMESH_NODE__CLUSTER__WEIGHT", "0"),
            ("PETMESH_NODE_LOG__LEVEL", "debug"),
        ],
    )
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    for named in [
        "PETMESH_NODE_LOG__LEVEL",
        "jobs.concurrency (PETMESH_NODE__JOBS__CONCURRENCY)",
        "server.prot (PETMESH_NODE__SERVER__PROT): unknown field `prot`",
        "cluster.weight (PETMESH_NODE__CLUSTER__WEIGHT)",
    ] {
        assert!(stderr.contains(named), "{named} not in {stderr}");
    }
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}

#[tokio::test]
async fn healthcheck_asks_the_running_node() {
    let cluster = TestCluster::start(1).await;
    let port = cluster.node(0).addr().port().to_string();
    let (code, stderr) = node_command(
        "healthcheck",
        &[
            ("PETMESH_NODE__ENVIRONMENT", "development"),
            ("PETMESH_NODE__SERVER__PORT", &port),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free_port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let (code, stderr) = node_command(
        "healthcheck",
        &[
            ("PETMESH_NODE__ENVIRONMENT", "development"),
            ("PETMESH_NODE__SERVER__PORT", &free_port),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connecting to 127.0.0.1:"), "{stderr}");
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
