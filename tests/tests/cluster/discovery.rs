//! The balancer following the registry the nodes write: a node that joins gets traffic at once.

use std::time::{Duration, Instant};

use petmesh_tests::{eventually, TestCluster};

use crate::support::{until_balanced, SERVED_BY};

#[tokio::test]
async fn a_new_node_gets_traffic_within_a_second_of_becoming_ready() {
    let mut cluster = TestCluster::builder().nodes(2).balancer(true).start().await;
    until_balanced(&cluster).await;
    let client = cluster.entry_client();

    let id = cluster
        .spawn_node(|config| config)
        .await
        .unwrap()
        .id()
        .to_owned();
    let ready_at = Instant::now();

    eventually("the new node serves a request through the balancer", || {
        let (client, id) = (client.clone(), id.clone());
        async move {
            let resp = client
                .get("/health/live")
                .await
                .map_err(|e| format!("{e:#}"))?;
            match resp.header(SERVED_BY) {
                Some(node) if node == id => Ok(()),
                other => Err(format!("{} from {other:?}", resp.status)),
            }
        }
    })
    .await;
    let waited = ready_at.elapsed();
    assert!(
        waited <= Duration::from_secs(1),
        "{id} got its first request {waited:?} after it was ready"
    );
}
