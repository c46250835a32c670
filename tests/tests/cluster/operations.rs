//! What operators rely on: the balancer binary's `check-config` and `healthcheck`, and the
//! metrics dashboards and alerts read — present from start-up (at 0 where nothing happened
//! yet) and following the cluster's state; and that the balancer process runs without
//! transparent huge pages.

use std::time::Duration;

use petmesh_tests::{
    assert_eventually, balancer::balancer_binary, metrics, process::run_isolated, TestCluster,
};

use crate::support::until_balanced;

/// Runs `petmesh-balancer <subcommand>` with only `env`.
async fn balancer_command(subcommand: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_isolated(&balancer_binary().unwrap(), subcommand, env).await
}

#[tokio::test]
async fn balancer_check_config_names_every_problem_and_healthcheck_asks_the_admin_api() {
    let (code, stderr) = balancer_command("check-config", &[("REDIS_URL", "redis://h:1")]).await;
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let (code, stderr) = balancer_command(
        "check-config",
        &[
            ("PETMESH_BALANCER__STRATEGY__HTTP", "fastest"),
            ("PETMESH_BALANCER__HEALTH__INTERVALL_MS", "100"),
        ],
    )
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("strategy.http (PETMESH_BALANCER__STRATEGY__HTTP)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("PETMESH_BALANCER__HEALTH__INTERVALL_MS"),
        "{stderr}"
    );

    let cluster = TestCluster::builder().nodes(1).balancer(true).start().await;
    let admin_port = cluster.balancer().admin_addr().port().to_string();
    let (code, stderr) = balancer_command(
        "healthcheck",
        &[("PETMESH_BALANCER__ADMIN__PORT", &admin_port)],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn dashboard_metrics_exist_from_start_up_and_follow_a_draining_node() {
    // A long drain delay keeps the SIGTERMed node serving (and scrapable) while it drains.
    let mut cluster = TestCluster::builder()
        .nodes(2)
        .balancer(true)
        .env("PETMESH_NODE__SERVER__DRAIN_DELAY_MS", "600000")
        .start()
        .await;
    until_balanced(&cluster).await;
    let ids: Vec<String> = cluster.nodes().iter().map(|n| n.id().to_owned()).collect();
    let node = cluster.client(0);
    let admin = cluster.balancer().admin_client();

    let text = node.get("/metrics").await.unwrap().text;
    let at = |series: &str| metrics::value(&text, series);
    assert_eq!(at(r#"petmesh_node_info{version="0.1.0"}"#), Some(1.0));
    assert_eq!(at("petmesh_node_draining"), Some(0.0));
    assert_eq!(
        at(r#"petmesh_node_dependency_up{dependency="postgres"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"petmesh_node_dependency_up{dependency="redis"}"#),
        Some(1.0)
    );
    assert_eq!(at("petmesh_node_db_pool_max_connections"), Some(20.0));
    for series in [
        "petmesh_node_job_queue_depth",
        "petmesh_node_job_queue_dead_letters",
        "petmesh_node_job_queue_oldest_age_seconds",
        r#"petmesh_node_orders_total{status="placed"}"#,
        r#"petmesh_node_job_dead_letters_total{kind="payment"}"#,
        r#"petmesh_node_ws_connections_closed_total{reason="slow_consumer"}"#,
        "petmesh_node_ws_slow_consumer_disconnects_total",
        r#"petmesh_node_events_published_total{event="pet:created",result="error"}"#,
    ] {
        assert_eq!(at(series), Some(0.0), "{series}");
    }

    // The node-state gauges are refreshed by the balancer's periodic round, which may come a
    // little after `/admin/nodes` lists the nodes.
    assert_eventually!(
        metrics::value(
            &admin.get("/metrics").await.unwrap().text,
            r#"petmesh_balancer_nodes{state="ready"}"#
        ) == Some(2.0),
        "the balancer's gauges count both nodes ready"
    );
    let text = admin.get("/metrics").await.unwrap().text;
    let at = |series: &str| metrics::value(&text, series);
    assert_eq!(at("petmesh_balancer_discovery_up"), Some(1.0));
    assert_eq!(
        at(r#"petmesh_balancer_proxy_errors_total{kind="no_healthy_node"}"#),
        Some(0.0)
    );
    for id in &ids {
        assert_eq!(
            at(&format!(r#"petmesh_balancer_node_healthy{{node="{id}"}}"#)),
            Some(1.0)
        );
        assert_eq!(
            at(&format!(r#"petmesh_balancer_node_draining{{node="{id}"}}"#)),
            Some(0.0)
        );
        for (state, value) in [("closed", 1.0), ("half_open", 0.0), ("open", 0.0)] {
            let series =
                format!(r#"petmesh_balancer_node_breaker_state{{node="{id}",state="{state}"}}"#);
            assert_eq!(at(&series), Some(value), "{series}");
        }
    }

    cluster.node_mut(0).signal(libc::SIGTERM).unwrap();
    assert_eventually!(
        metrics::value(
            &node.get("/metrics").await.unwrap().text,
            "petmesh_node_draining"
        ) == Some(1.0),
        "the node reports itself draining"
    );
    let draining = format!(r#"petmesh_balancer_node_draining{{node="{}"}}"#, ids[0]);
    assert_eventually!(
        {
            let text = admin.get("/metrics").await.unwrap().text;
            metrics::value(&text, &draining) == Some(1.0)
                && metrics::value(&text, r#"petmesh_balancer_nodes{state="draining"}"#) == Some(1.0)
        },
        "the balancer reports {} draining",
        ids[0]
    );
}

#[tokio::test]
async fn a_node_gone_without_draining_is_counted_lost_and_a_drained_one_is_not() {
    let mut cluster = TestCluster::builder().nodes(3).balancer(true).start().await;
    until_balanced(&cluster).await;
    let admin = cluster.balancer().admin_client();
    let series = |text: &str, name: &str| metrics::value(text, name).unwrap_or(f64::NAN);

    cluster
        .node_mut(1)
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    cluster.node_mut(2).kill().unwrap();
    // The killed node's registry entry expires; the drained one said `left`.
    assert_eventually!(
        {
            let text = admin.get("/metrics").await.unwrap().text;
            series(&text, r#"petmesh_balancer_nodes{state="ready"}"#) == 1.0
                && series(&text, r#"petmesh_balancer_nodes{state="unhealthy"}"#) == 0.0
                && series(&text, r#"petmesh_balancer_nodes{state="draining"}"#) == 0.0
        },
        "both nodes have left the balancer's set"
    );
    let text = admin.get("/metrics").await.unwrap().text;
    assert_eq!(
        series(&text, "petmesh_balancer_nodes_lost_total"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_balancer_runs_without_transparent_huge_pages() {
    // Huge pages made a reconnect storm cost the balancer a third more CPU (zeroing 2 MiB
    // pages that mimalloc had purged; `disable_transparent_huge_pages` in its main.rs).
    let cluster = TestCluster::builder().nodes(1).balancer(true).start().await;
    let pid = cluster.balancer().pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}
