//! WebSockets through the balancer when nodes go away: a client whose node is killed
//! reconnects and resumes from its offsets without losing or repeating an event; a draining
//! node tells its clients to reconnect elsewhere.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use petmesh_tests::{eventually, TestCluster, WsClient};
use serde_json::{json, Value};

use crate::support::until_balanced;

/// Records a `pet:created` event's pet name and offset.
fn take(event: &Value, names: &mut Vec<String>, last: &mut Option<String>) {
    if event["event"] == "pet:created" {
        names.push(event["payload"]["name"].as_str().unwrap().to_owned());
        *last = Some(event["offset"].as_str().unwrap().to_owned());
    }
}

/// The node serving `ws` (from its `ping` answer).
async fn node_of(ws: &mut WsClient) -> String {
    let pong = ws.request("ping", json!({})).await.unwrap();
    pong.ok()["nodeId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_subscriber_whose_node_is_killed_resumes_through_the_balancer_missing_nothing() {
    let mut cluster = TestCluster::builder().nodes(3).balancer(true).start().await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();
    let token = entry
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token;
    let mut ws = WsClient::login(entry.base_url(), &token).await.unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    let victim_id = node_of(&mut ws).await;
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.id() == victim_id)
        .expect("the WebSocket is on one of the nodes");
    let publisher = cluster.client((victim + 1) % 3).token(&token);
    let published = Arc::new(AtomicUsize::new(0));
    let progress = published.clone();

    // A steady stream of 40 pet creations through another node, paced, while the victim dies.
    let total = 40;
    let publishing = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(40));
        for i in 0..total {
            pace.tick().await;
            let resp = publisher
                .post(
                    "/api/v1/pets",
                    &json!({"name": format!("p{i}"), "category": "dogs", "price": "1.00", "stock": 1}),
                )
                .await
                .unwrap();
            resp.assert_status(201);
            progress.fetch_add(1, Ordering::SeqCst);
        }
    });

    let mut names: Vec<String> = Vec::new();
    let mut last_offset: Option<String> = None;
    while names.len() < 5 {
        let event = ws.next_event().await.unwrap();
        take(&event, &mut names, &mut last_offset);
    }
    cluster.node_mut(victim).kill().unwrap();
    // Whatever was already on the wire is still read; then the connection ends.
    while let Ok(event) = ws.next_event().await {
        take(&event, &mut names, &mut last_offset);
    }

    // Let a few events pass while the client is away, so the resume has something to replay.
    let away_from = names.len() + 3;
    eventually(
        "three events published while the client is away",
        || async {
            let count = published.load(Ordering::SeqCst);
            if count >= away_from {
                Ok(())
            } else {
                Err(format!("{count} published"))
            }
        },
    )
    .await;
    let mut ws = WsClient::login(entry.base_url(), &token).await.unwrap();
    assert_ne!(node_of(&mut ws).await, victim_id);
    let resumed = ws
        .request(
            "subscribe",
            json!({"topics": ["pets"], "since": {"pets": last_offset.clone().unwrap()}}),
        )
        .await
        .unwrap();
    assert_eq!(
        resumed.ok()["topics"]["pets"]["recovered"],
        true,
        "{}",
        resumed.frame
    );
    while names.len() < total {
        let event = ws.next_event().await.unwrap();
        take(&event, &mut names, &mut last_offset);
    }
    publishing.await.unwrap();
    let expected: Vec<String> = (0..total).map(|i| format!("p{i}")).collect();
    assert_eq!(names, expected, "every event exactly once, in order");
}

#[tokio::test]
async fn a_draining_node_tells_its_websocket_clients_to_reconnect() {
    let mut cluster = TestCluster::builder().nodes(2).balancer(true).start().await;
    until_balanced(&cluster).await;
    let token = cluster
        .entry_client()
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token;
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    cluster.node(0).signal(libc::SIGTERM).unwrap();
    let reconnect = ws
        .event_where(|e| e["event"] == "system:reconnect")
        .await
        .unwrap();
    assert_eq!(reconnect["payload"]["nodeId"], cluster.node(0).id());
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 1012);
    let status = cluster
        .node_mut(0)
        .wait_exit(petmesh_tests::eventually::patience())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
