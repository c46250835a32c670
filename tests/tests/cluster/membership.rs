//! A node's own registry entry, read straight from Redis: registered and announced on start,
//! refreshed with live load, announced draining and deleted on SIGTERM, left to expire after
//! SIGKILL, and kept up through a Redis outage without the node ever stopping to serve.

use std::time::{Duration, Instant};

use petmesh_shared::registry::{MembershipKind, NodeStatus, NODE_TTL_SECS};
use petmesh_tests::{assert_eventually, metrics, TestCluster};
use reqwest::Method;

use crate::support::{registration_in_parts, Registry, SlowBody, TcpProxy, PASSWORD};

/// How long a graceful stop may take here (no slow requests are in flight).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_node_registers_on_start_with_its_settings_and_announces_joined() {
    let mut cluster = TestCluster::builder().nodes(0).start().await;
    let registry = Registry::connect(&cluster).await;
    let mut events = registry.events().await;

    let node = cluster
        .spawn_node(|config| {
            config
                .env("PETMESH_NODE__CLUSTER__WEIGHT", "3")
                .env("PETMESH_NODE__CLUSTER__ZONE", "zone-a")
        })
        .await
        .unwrap();
    let (id, addr) = (node.id().to_owned(), node.addr().to_string());

    let joined = events.next_about(&id).await;
    assert_eq!(joined.kind, MembershipKind::Joined);
    let entry = registry.entry(&id).await.expect("the entry exists");
    for info in [&joined.node, &entry] {
        assert_eq!(info.http_addr, addr);
        assert_eq!((info.weight, info.zone.as_str()), (3, "zone-a"));
        assert_eq!(info.status, NodeStatus::Ready);
        assert!(!info.version.is_empty());
        assert!(info.started_at_ms > 0 && info.started_at_ms <= info.updated_at_ms);
        assert_eq!(info.ws_connections, 0);
    }
    assert!(registry.members().await.contains(&id));
    let ttl_ms = registry.ttl_ms(&id).await;
    assert!(
        0 < ttl_ms && ttl_ms <= NODE_TTL_SECS as i64 * 1000,
        "TTL {ttl_ms} ms"
    );

    // Heartbeats rewrite the entry: it stays, newer each time.
    let first = entry.updated_at_ms;
    assert_eventually!(registry
        .entry(&id)
        .await
        .is_some_and(|e| e.updated_at_ms > first));
}

#[tokio::test]
async fn the_entry_reports_requests_in_flight() {
    let cluster = TestCluster::start(1).await;
    let registry = Registry::connect(&cluster).await;
    let id = cluster.node(0).id().to_owned();

    // A registration whose body arrives in two parts, held open in between.
    let (body, request_body) = SlowBody::new();
    let parts = registration_in_parts("ingrid", 2);
    body.send(parts[0].clone());
    let client = cluster.client(0);
    let request = client
        .request(Method::POST, "/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(request_body);
    let pending = tokio::spawn(async move { client.send(request).await });

    assert_eventually!(
        registry.entry(&id).await.is_some_and(|e| e.in_flight >= 1),
        "the entry counts the held request"
    );
    body.send(parts[1].clone());
    body.finish();
    pending.await.unwrap().unwrap().assert_status(201);
    assert_eventually!(
        registry.entry(&id).await.is_some_and(|e| e.in_flight == 0),
        "the entry no longer counts it"
    );
}

#[tokio::test]
async fn sigterm_announces_draining_then_deregisters_and_exits_zero() {
    let mut cluster = TestCluster::start(1).await;
    let registry = Registry::connect(&cluster).await;
    let id = cluster.node(0).id().to_owned();
    assert_eventually!(registry.entry(&id).await.is_some());
    let mut events = registry.events().await;

    let status = cluster.node_mut(0).terminate(STOP_TIMEOUT).await.unwrap();

    assert!(status.success(), "exit status {status}");
    let draining = events.next_about(&id).await;
    assert_eq!(draining.kind, MembershipKind::Draining);
    assert_eq!(draining.node.status, NodeStatus::Draining);
    let left = events.next_about(&id).await;
    assert_eq!(left.kind, MembershipKind::Left);
    assert_eq!(registry.entry(&id).await, None);
    assert!(!registry.members().await.contains(&id));
    let logs = cluster.node(0).logs().join("\n");
    assert!(logs.contains("deregistered from the cluster"), "{logs}");
    assert!(logs.contains("drained, exiting"), "{logs}");
}

#[tokio::test]
async fn during_the_drain_delay_the_node_still_answers_but_is_not_ready() {
    let mut cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__SERVER__DRAIN_DELAY_MS", "3000")
        .start()
        .await;
    let registry = Registry::connect(&cluster).await;
    let id = cluster.node(0).id().to_owned();
    assert_eventually!(registry.entry(&id).await.is_some());
    let mut events = registry.events().await;
    let client = cluster.client(0);

    cluster.node(0).signal(libc::SIGTERM).unwrap();

    // Draining is announced and the entry says so...
    assert_eq!(events.next_about(&id).await.kind, MembershipKind::Draining);
    let entry = registry.entry(&id).await.expect("still registered");
    assert_eq!(entry.status, NodeStatus::Draining);
    // ...while the node still serves (a balancer that hasn't heard yet loses nothing) but
    // tells probes it is going away.
    let ready = client.get("/health/ready").await.unwrap();
    ready.assert_status(503);
    assert_eq!(ready.body["status"], "draining");
    client.get("/health/live").await.unwrap().assert_status(200);
    // Then it stops as usual.
    let status = cluster.node_mut(0).wait_exit(STOP_TIMEOUT).await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(events.next_about(&id).await.kind, MembershipKind::Left);
}

#[tokio::test]
async fn a_killed_node_s_entry_expires_within_the_ttl() {
    let mut cluster = TestCluster::start(1).await;
    let registry = Registry::connect(&cluster).await;
    let id = cluster.node(0).id().to_owned();
    assert_eventually!(registry.entry(&id).await.is_some());

    cluster.node_mut(0).kill().unwrap();
    let killed_at = Instant::now();

    // Refreshed at most a heartbeat ago, so it outlives the node by most of the TTL...
    assert!(
        registry.entry(&id).await.is_some(),
        "not deleted by a crash"
    );
    // ...and then expires by itself.
    assert_eventually!(registry.entry(&id).await.is_none(), "the entry expires");
    let lived = killed_at.elapsed();
    assert!(
        lived <= Duration::from_secs(NODE_TTL_SECS + 2),
        "expired {lived:?} after the kill"
    );
    // Only readers tidy the id set (protocol step 4); a dead node can't.
    assert!(registry.members().await.contains(&id));
}

#[tokio::test]
async fn a_redis_outage_keeps_the_node_serving_and_registration_resumes() {
    let mut cluster = TestCluster::builder().nodes(0).start().await;
    let proxy = TcpProxy::for_redis(&cluster).await;
    let registry = Registry::connect(&cluster).await;
    let url = proxy.redis_url();
    let node = cluster
        .spawn_node(|config| config.env("REDIS_URL", url))
        .await
        .unwrap();
    let id = node.id().to_owned();
    let client = cluster.client(0);
    assert_eventually!(registry.entry(&id).await.is_some());

    proxy.set_up(false);

    // Heartbeats fail, so the entry expires...
    assert_eventually!(registry.entry(&id).await.is_none(), "the entry expires");
    // The node's own checks notice without any request asking.
    assert_eventually!(
        metrics::value(
            &client.get("/metrics").await.unwrap().text,
            r#"petmesh_node_dependency_up{dependency="redis"}"#
        ) == Some(0.0),
        "the Redis outage shows in the metrics"
    );
    // ...while the node keeps serving whatever needs no Redis, and says it isn't ready.
    client.get("/health/live").await.unwrap().assert_status(200);
    client
        .register("olga", "olga@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
    client
        .get("/health/ready")
        .await
        .unwrap()
        .assert_status(503);
    // The outage is worth one warning, not one per failed heartbeat (several by now).
    let text = client.get("/metrics").await.unwrap().text;
    let failures = metrics::value(&text, "petmesh_node_registry_heartbeat_failures_total")
        .expect("failure counter exposed");
    assert!(failures >= 3.0, "{failures} failures counted");
    let warnings = cluster
        .node(0)
        .logs()
        .iter()
        .filter(|line| line.contains("registry heartbeat failed"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", cluster.node(0).logs());

    let mut events = registry.events().await;
    proxy.set_up(true);

    // Back: the expired entry is rewritten and announced again, so balancers take it back.
    let back = events.next_about(&id).await;
    assert_eq!(back.kind, MembershipKind::Joined);
    assert!(registry.entry(&id).await.is_some());
    assert_eventually!(
        metrics::value(
            &client.get("/metrics").await.unwrap().text,
            r#"petmesh_node_dependency_up{dependency="redis"}"#
        ) == Some(1.0),
        "Redis shows as up again"
    );
    // Logged right after the announcement, which may arrive first.
    assert_eventually!(cluster
        .node(0)
        .logs()
        .iter()
        .any(|line| line.contains("registry reachable again")));
}
