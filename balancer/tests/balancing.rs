//! Strategies over HTTP and what every proxied response carries.

use std::collections::BTreeMap;

use petmesh_balancer::config::StrategyName;

use crate::support::{client, settings, spread, MockBackend, TestBalancer};

/// Whether `count` is within ±5 % of `expected`.
fn within_5_percent(count: usize, expected: f64) -> bool {
    (count as f64 - expected).abs() <= expected * 0.05
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_within_5_percent() {
    let backends = [
        MockBackend::start("a").await,
        MockBackend::start("b").await,
        MockBackend::start("c").await,
    ];
    let balancer = TestBalancer::start(settings(&backends.iter().collect::<Vec<_>>())).await;

    let counts = spread(&client(), &balancer.url("/pets"), 999).await;

    assert_eq!(counts.len(), 3, "{counts:?}");
    for (node, count) in &counts {
        assert!(within_5_percent(*count, 333.0), "{node}: {count} of 999");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_within_5_percent() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let mut settings = settings(&[]);
    settings.discovery.static_upstreams = format!("{}@3,{}@1", a.upstream(), b.upstream());
    settings.strategy.http = StrategyName::WeightedRoundRobin;
    let balancer = TestBalancer::start(settings).await;

    let counts = spread(&client(), &balancer.url("/pets"), 1000).await;

    assert!(within_5_percent(counts["a"], 750.0), "{counts:?}");
    assert!(within_5_percent(counts["b"], 250.0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_maps_the_same_key_to_the_same_node() {
    let backends = [
        MockBackend::start("a").await,
        MockBackend::start("b").await,
        MockBackend::start("c").await,
    ];
    let mut settings = settings(&backends.iter().collect::<Vec<_>>());
    settings.strategy.http = StrategyName::ConsistentHash;
    settings.strategy.hash_key = "header:x-user".to_owned().try_into().unwrap();
    let balancer = TestBalancer::start(settings).await;
    let client = client();

    let mut homes: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let response = client
                .get(balancer.url("/pets"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let node = response.headers()["x-petmesh-node"]
                .to_str()
                .unwrap()
                .to_owned();
            let home = homes.entry(format!("user-{user}")).or_insert(node.clone());
            assert_eq!(*home, node, "user-{user} moved in round {round}");
        }
    }
    let used: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(used.len() > 1, "30 keys should not all hash to one node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_responses_name_the_node_and_requests_carry_forwarding_headers() {
    let backend = MockBackend::start("only").await;
    let balancer = TestBalancer::start(settings(&[&backend])).await;

    let response = client()
        .get(balancer.url("/pets?status=available"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-petmesh-node"], "only");
    let echo: serde_json::Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    assert_eq!(echo["path"], "/pets");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(headers["x-request-id"].as_str().unwrap().len(), 32);
    assert!(
        headers.get("x-hop").is_none(),
        "headers named in Connection are dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_nodes_metrics_and_service_discovery_targets() {
    let backend = MockBackend::start("n1").await;
    let balancer = TestBalancer::start(settings(&[&backend])).await;
    spread(&client(), &balancer.url("/"), 3).await;

    let nodes = balancer.admin_json("/admin/nodes").await;
    assert_eq!(nodes[0]["id"], "n1");
    assert_eq!(nodes[0]["status"], "ready");
    assert_eq!(nodes[0]["breaker"], "closed");
    assert_eq!(nodes[0]["requests"], 3);
    let sd = balancer.admin_json("/admin/sd").await;
    assert_eq!(
        sd,
        serde_json::json!([{"targets": [backend.addr.to_string()], "labels": {"node": "n1", "cluster": "default"}}])
    );
    let health = balancer.admin_json("/health").await;
    assert_eq!(health["status"], "ok");
    let metrics = balancer.admin_text("/metrics").await;
    assert!(metrics.contains("petmesh_balancer_upstream_requests_total{node=\"n1\"} 3"));
    assert!(metrics.contains(
        "petmesh_balancer_picks_total{node=\"n1\",strategy=\"round-robin\",traffic=\"http\"} 3"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_one_after_another_are_spread_evenly_over_the_workers() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.workers = 4;
    let balancer = TestBalancer::start(settings).await;

    // Each client keeps its one connection open; the kernel alone would often pile several
    // onto one worker's listener.
    let mut clients = Vec::new();
    for _ in 0..16 {
        let client = client();
        let response = client.get(balancer.url("/pets")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        clients.push(client);
    }

    let metrics = balancer.admin_text("/metrics").await;
    let per_worker: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("petmesh_balancer_worker_connections{"))
        .filter_map(|line| line.rsplit(' ').next())
        .collect();
    assert_eq!(per_worker, ["4", "4", "4", "4"], "{metrics}");
}
