//! Discovery through a real Redis registry: nodes joining, draining, leaving, Redis going away.

use std::time::{Duration, Instant};

use petmesh_shared::registry::{
    MembershipEvent, MembershipKind, NodeInfo, NodeStatus, RedisKeys, NODE_TTL_SECS,
};
use redis::aio::MultiplexedConnection;

use crate::support::{
    client, eventually, settings, spread, MockBackend, RedisServer, TestBalancer,
};

/// Writes the registry the way a node does (protocol step 1, or 3 for `Left`).
async fn announce(
    redis: &mut MultiplexedConnection,
    keys: &RedisKeys,
    backend: &MockBackend,
    kind: MembershipKind,
) {
    let node = NodeInfo {
        id: backend.id.clone(),
        http_addr: backend.addr.to_string(),
        version: "test".into(),
        weight: 1,
        zone: String::new(),
        status: if kind == MembershipKind::Joined {
            NodeStatus::Ready
        } else {
            NodeStatus::Draining
        },
        started_at_ms: 0,
        updated_at_ms: 0,
        in_flight: 0,
        ws_connections: 0,
    };
    let mut pipe = redis::pipe();
    if kind == MembershipKind::Left {
        pipe.del(keys.node(&node.id)).srem(keys.nodes(), &node.id);
    } else {
        pipe.set_ex(
            keys.node(&node.id),
            serde_json::to_string(&node).unwrap(),
            NODE_TTL_SECS,
        )
        .sadd(keys.nodes(), &node.id);
    }
    let event = MembershipEvent { kind, node };
    pipe.publish(
        keys.membership_channel(),
        serde_json::to_string(&event).unwrap(),
    );
    let () = pipe.query_async(redis).await.unwrap();
}

/// A balancer reading cluster `cluster` from `redis`, resyncing rarely (events must do the work).
async fn balancer(redis: &RedisServer, cluster: &str) -> TestBalancer {
    let mut settings = settings(&[]);
    settings.redis.url = redis.url();
    settings.cluster.name = cluster.into();
    settings.discovery.resync_interval_ms = 60_000;
    TestBalancer::start(settings).await
}

/// Waits until `/admin/nodes` lists exactly `ids`.
async fn wait_for_nodes(balancer: &TestBalancer, ids: &[&str]) {
    eventually("node set", || async {
        let nodes = balancer.admin_json("/admin/nodes").await;
        let listed: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        (listed == ids).then_some(()).ok_or(nodes.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_gets_traffic_within_a_second_and_a_draining_one_none() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let keys = RedisKeys::new("join");
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    announce(&mut conn, &keys, &a, MembershipKind::Joined).await;
    let balancer = balancer(&redis, "join").await;
    wait_for_nodes(&balancer, &["a"]).await;
    let client = client();

    // Joined: routable as soon as the event is read.
    let announced = Instant::now();
    announce(&mut conn, &keys, &b, MembershipKind::Joined).await;
    eventually("b gets traffic", || async {
        let counts = spread(&client, &balancer.url("/pets"), 2).await;
        counts
            .contains_key("b")
            .then_some(())
            .ok_or(format!("{counts:?}"))
    })
    .await;
    assert!(
        announced.elapsed() < Duration::from_secs(1),
        "{:?}",
        announced.elapsed()
    );

    // Draining: no new work from the moment the event is read.
    let announced = Instant::now();
    announce(&mut conn, &keys, &a, MembershipKind::Draining).await;
    eventually("a drained", || async {
        let nodes = balancer.admin_json("/admin/nodes").await;
        let a = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "a")
            .cloned();
        (a.unwrap()["status"] == "draining")
            .then_some(())
            .ok_or(nodes.to_string())
    })
    .await;
    assert!(announced.elapsed() < Duration::from_secs(1));
    let served_before = a.requests();
    let counts = spread(&client, &balancer.url("/pets"), 30).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");
    assert_eq!(a.requests(), served_before);

    // Left: removed from the set.
    announce(&mut conn, &keys, &a, MembershipKind::Left).await;
    wait_for_nodes(&balancer, &["b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_known_nodes_are_kept_while_redis_is_down() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let keys = RedisKeys::new("outage");
    let a = MockBackend::start("a").await;
    announce(&mut conn, &keys, &a, MembershipKind::Joined).await;
    let mut settings = settings(&[]);
    settings.redis.url = redis.url();
    settings.cluster.name = "outage".into();
    settings.discovery.resync_interval_ms = 100;
    settings.redis.timeout_ms = 200;
    let balancer = TestBalancer::start(settings).await;
    wait_for_nodes(&balancer, &["a"]).await;

    drop(conn);
    drop(redis);
    // Several failed resyncs later the node is still served.
    eventually("discovery failures counted", || async {
        let metrics = balancer.admin_text("/metrics").await;
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("petmesh_balancer_discovery_failures_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        (failures >= 3).then_some(()).ok_or(failures.to_string())
    })
    .await;
    let counts = spread(&client(), &balancer.url("/pets"), 5).await;
    assert_eq!(counts.get("a"), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_survive_a_change_of_the_node_set() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let keys = RedisKeys::new("tunnels");
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    announce(&mut conn, &keys, &a, MembershipKind::Joined).await;
    let balancer = balancer(&redis, "tunnels").await;
    wait_for_nodes(&balancer, &["a"]).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(balancer.ws_url("/ws"))
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();

    announce(&mut conn, &keys, &b, MembershipKind::Joined).await;
    wait_for_nodes(&balancer, &["a", "b"]).await;
    announce(&mut conn, &keys, &a, MembershipKind::Left).await;
    wait_for_nodes(&balancer, &["b"]).await;

    socket.send(Message::text("still there?")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("a: still there?")
    );
    let metrics = balancer.admin_text("/metrics").await;
    assert!(
        metrics.contains("petmesh_balancer_websocket_connections{node=\"a\"} 1"),
        "the departed node's tunnel is still counted"
    );
}
