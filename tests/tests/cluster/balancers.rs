//! Several balancers in front of the same nodes: the WebSocket limit per client address holds
//! across all of them (counts in Redis under leases, so a killed balancer's counts lapse), each
//! routes on its own, and without Redis each admits its share.

use std::{net::IpAddr, time::Duration};

use petmesh_tests::{
    assert_eventually, eventually::eventually, metrics, BalancerProcess, TestCluster,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Error},
    WebSocketStream,
};

use crate::support::{Load, TcpProxy};

/// The node setting that keeps an unauthenticated WebSocket open (the tests hold sockets for
/// longer than the default 10 s).
const AUTH_TIMEOUT: (&str, &str) = ("PETMESH_NODE__REALTIME__AUTH_TIMEOUT_MS", "600000");

fn address(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 150 + n])
}

/// An open WebSocket through a balancer, or the status its handshake was refused with.
async fn open_from(
    source: IpAddr,
    balancer: &BalancerProcess,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let addr = balancer.addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(err) => panic!("handshake: {err}"),
    }
}

/// A metric of a balancer's `/metrics`.
async fn balancer_metric(balancer: &BalancerProcess, series: &str) -> Option<f64> {
    let text = balancer.admin_client().get("/metrics").await.unwrap().text;
    metrics::value(&text, series)
}

/// Requests a balancer has sent to the nodes so far.
async fn upstream_requests(balancer: &BalancerProcess) -> f64 {
    let mut sum = 0.0;
    for node in ["node-1", "node-2"] {
        let series = format!("petmesh_balancer_upstream_requests_total{{node=\"{node}\"}}");
        sum += balancer_metric(balancer, &series).await.unwrap_or(0.0);
    }
    sum
}

/// Two nodes and two balancers allowing `ws_per_ip` WebSockets per address (with the
/// balancer settings `extra`), each routing to both nodes.
async fn two_balancers(ws_per_ip: u32, extra: &[(&str, &str)]) -> TestCluster {
    let builder = TestCluster::builder()
        .nodes(2)
        .balancers(2)
        .env(AUTH_TIMEOUT.0, AUTH_TIMEOUT.1)
        .balancer_env("PETMESH_BALANCER__LIMITS__WS_PER_IP", ws_per_ip.to_string());
    let builder = extra.iter().fold(builder, |builder, (key, value)| {
        builder.balancer_env(*key, *value)
    });
    let cluster = builder.balancers(2).start().await;
    let ids: Vec<&str> = cluster.nodes().iter().map(|n| n.id()).collect();
    for balancer in cluster.balancers() {
        balancer
            .until_routing_to(&ids, petmesh_tests::eventually::patience())
            .await
            .unwrap();
    }
    cluster
}

#[tokio::test]
async fn one_address_gets_the_websocket_limit_across_both_balancers() {
    let cluster = two_balancers(3, &[]).await;
    let [first, second] = cluster.balancers() else {
        panic!("two balancers")
    };
    let source = address(1);
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let balancer = if n % 2 == 0 { first } else { second };
        match open_from(source, balancer).await {
            Ok(socket) => {
                statuses.push(101);
                open.push(socket);
            }
            Err(status) => statuses.push(status),
        }
    }
    assert_eq!(statuses, [101, 101, 101, 429, 429, 429]);
    // Another address has its own slots.
    assert!(open_from(address(2), second).await.is_ok());

    // Closing one (opened through the first balancer) frees a slot for the second.
    drop(open.remove(0));
    let reopened = eventually("a freed slot usable through the other balancer", || async {
        open_from(source, second).await
    })
    .await;
    assert_eq!(
        open_from(source, first).await.unwrap_err(),
        429,
        "full again"
    );
    drop(reopened);
}

#[tokio::test]
async fn a_killed_balancers_slots_lapse_after_its_lease() {
    let mut cluster = two_balancers(
        2,
        &[
            ("PETMESH_BALANCER__LIMITS__WS_LEASE_MS", "2000"),
            ("PETMESH_BALANCER__LIMITS__WS_LEASE_REFRESH_MS", "500"),
        ],
    )
    .await;
    let source = address(3);
    let _held = [
        open_from(source, &cluster.balancers()[0]).await.unwrap(),
        open_from(source, &cluster.balancers()[0]).await.unwrap(),
    ];
    assert_eq!(
        open_from(source, &cluster.balancers()[1])
            .await
            .unwrap_err(),
        429
    );
    cluster.balancer_at_mut(0).kill().unwrap();
    let second = &cluster.balancers()[1];
    let _reopened = eventually("the killed balancer's slots lapse", || async {
        open_from(source, second).await
    })
    .await;
}

#[tokio::test]
async fn killing_one_balancer_fails_no_request_through_the_other() {
    let mut cluster = two_balancers(10, &[]).await;
    let survivor = cluster.balancers()[1].client();
    let load = Load::start(&survivor, 4, Duration::from_millis(20), |client, _| {
        ("live", client.request(reqwest::Method::GET, "/health/live"))
    });
    let before_kill = eventually("requests flow through the survivor", || async {
        let sent = upstream_requests(&cluster.balancers()[1]).await;
        if sent >= 40.0 {
            Ok(sent)
        } else {
            Err(sent)
        }
    })
    .await;
    cluster.balancer_at_mut(0).kill().unwrap();
    eventually("requests keep flowing after the kill", || async {
        let sent = upstream_requests(&cluster.balancers()[1]).await;
        if sent >= before_kill + 40.0 {
            Ok(sent)
        } else {
            Err(sent)
        }
    })
    .await;
    let outcomes = load.stop().await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != Ok(200)).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let nodes: std::collections::BTreeSet<_> =
        outcomes.iter().filter_map(|o| o.node.clone()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "the survivor routes to every node: {nodes:?}"
    );
}

#[tokio::test]
async fn without_redis_each_balancer_admits_its_share() {
    let mut cluster = TestCluster::builder()
        .nodes(1)
        .env(AUTH_TIMEOUT.0, AUTH_TIMEOUT.1)
        .start()
        .await;
    // Both balancers reach Redis through a proxy that can play the outage.
    let proxy = TcpProxy::for_redis(&cluster).await;
    let url = proxy.redis_url();
    for _ in 0..2 {
        cluster
            .spawn_balancer(&[
                ("REDIS_URL", url.as_str()),
                ("PETMESH_BALANCER__LIMITS__WS_PER_IP", "4"),
                ("PETMESH_BALANCER__LIMITS__WS_LEASE_MS", "3000"),
                ("PETMESH_BALANCER__LIMITS__WS_LEASE_REFRESH_MS", "500"),
            ])
            .await
            .unwrap();
    }
    for balancer in cluster.balancers() {
        balancer
            .until_routing_to(&["node-1"], petmesh_tests::eventually::patience())
            .await
            .unwrap();
        // Each must have counted the other before the outage (it divides by that count).
        assert_eventually!(
            balancer_metric(balancer, "petmesh_balancer_balancers").await == Some(2.0),
            "a balancer counts 2 balancers"
        );
    }

    proxy.set_up(false);
    let source = address(4);
    let mut open = Vec::new();
    for balancer in cluster.balancers() {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            match open_from(source, balancer).await {
                Ok(socket) => {
                    statuses.push(101);
                    open.push(socket);
                }
                Err(status) => statuses.push(status),
            }
        }
        assert_eq!(statuses, [101, 101, 429], "4 / 2 balancers each, no 5xx");
        assert!(
            balancer_metric(balancer, "petmesh_balancer_websocket_limit_fallbacks_total")
                .await
                .is_some_and(|n| n >= 1.0)
        );
        let warnings = balancer
            .logs()
            .iter()
            .filter(|l| l.contains("each balancer enforces the WebSocket limit on its own"))
            .count();
        assert_eq!(warnings, 1, "one warning per outage");
    }
}
