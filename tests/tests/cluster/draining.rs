//! A node told to stop (SIGTERM) while requests flow through the balancer: it finishes the
//! request it is in the middle of, gets no new ones, and no client sees a failure.

use std::time::Duration;

use petmesh_shared::registry::MembershipKind;
use petmesh_tests::{assert_eventually, eventually, TestCluster};
use reqwest::Method;
use serde_json::json;

use crate::support::{
    admin_row, attempts_sent, registration_in_parts, served_by, until_balanced, Load, Registry,
    SlowBody, PASSWORD,
};

#[tokio::test]
async fn a_draining_node_finishes_its_in_flight_request_and_gets_no_new_ones() {
    let mut cluster = TestCluster::builder().nodes(3).balancer(true).start().await;
    until_balanced(&cluster).await;
    let registry = Registry::connect(&cluster).await;
    let mut events = registry.events().await;
    let entry = cluster.entry_client();

    // A registration through the balancer whose body takes about two seconds to arrive; the
    // node reads the whole body before handling it, so it is in flight there all along.
    let (body, request_body) = SlowBody::new();
    let mut parts = registration_in_parts("dora", 6).into_iter();
    body.send(parts.next().unwrap());
    let request = entry
        .request(Method::POST, "/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(request_body);
    let held = tokio::spawn({
        let entry = entry.clone();
        async move { entry.send(request).await }
    });
    // The only request in flight anywhere, so the balancer's table tells who holds it.
    let holder: String = eventually("the held request reaches a node", || {
        let cluster = &cluster;
        async move {
            let table = cluster
                .balancer()
                .admin_nodes()
                .await
                .map_err(|e| e.to_string())?;
            table
                .as_array()
                .and_then(|rows| rows.iter().find(|row| row["in_flight"] == 1))
                .and_then(|row| row["id"].as_str().map(str::to_owned))
                .ok_or_else(|| table.to_string())
        }
    })
    .await;
    let index = cluster
        .nodes()
        .iter()
        .position(|node| node.id() == holder)
        .unwrap();

    // GETs and POSTs keep coming throughout; none of them may fail. The POST is a refresh with
    // a token no node knows: a 401 proves it reached a node and was answered.
    let load = Load::start(&entry, 2, Duration::from_millis(25), |client, n| {
        if n % 2 == 0 {
            ("get", client.request(Method::GET, "/health/live"))
        } else {
            let body = json!({"refreshToken": "not-a-refresh-token"});
            (
                "post",
                client
                    .request(Method::POST, "/api/v1/auth/refresh")
                    .json(&body),
            )
        }
    });

    cluster.node(index).signal(libc::SIGTERM).unwrap();
    let draining = events.next_about(&holder).await;
    assert_eq!(draining.kind, MembershipKind::Draining);
    assert_eventually!(
        admin_row(&cluster, &holder)
            .await
            .is_some_and(|row| row["status"] == "draining"),
        "the balancer marks {holder} draining"
    );
    let noticed_at = std::time::Instant::now();
    let attempts_when_noticed = attempts_sent(&cluster, &holder).await;

    // The rest of the body, a part every 400 ms: the drain has to wait for it.
    for part in parts {
        tokio::time::sleep(Duration::from_millis(400)).await;
        body.send(part);
    }
    body.finish();
    let resp = held.await.unwrap().unwrap();
    resp.assert_status(201);
    assert_eq!(served_by(&resp), holder);
    let attempts_after = attempts_sent(&cluster, &holder).await;
    let outcomes = load.stop().await;

    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != Ok(if o.kind == "get" { 200 } else { 401 }))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    let late: Vec<_> = outcomes
        .iter()
        .filter(|o| o.sent >= noticed_at && o.node.as_deref() == Some(holder.as_str()))
        .collect();
    assert!(
        late.is_empty(),
        "{holder} got new requests while draining: {late:#?}"
    );
    assert!(
        attempts_after.is_none() || attempts_after == attempts_when_noticed,
        "{holder} got attempts while draining: {attempts_when_noticed:?} then {attempts_after:?}"
    );

    // Its work done, it deregisters and exits 0; the balancer forgets it.
    let status = cluster
        .node_mut(index)
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(events.next_about(&holder).await.kind, MembershipKind::Left);
    assert_eventually!(admin_row(&cluster, &holder).await.is_none());
    // The registration it finished is real.
    entry.login("dora", PASSWORD).await.unwrap();
}
