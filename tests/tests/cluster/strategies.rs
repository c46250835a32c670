//! How requests spread over real nodes, with the weights the nodes register themselves.

use petmesh_tests::TestCluster;

use crate::support::{spread, until_balanced};

/// The balancer setting that picks the HTTP strategy.
const HTTP_STRATEGY: &str = "PETMESH_BALANCER__STRATEGY__HTTP";

/// Panics unless every node served within ±5 % of what it should have.
#[track_caller]
fn assert_within_5_percent(
    counts: &std::collections::BTreeMap<String, usize>,
    expected: &[(&str, usize)],
) {
    assert_eq!(counts.len(), expected.len(), "{counts:?}");
    for (id, want) in expected {
        let got = counts.get(*id).copied().unwrap_or(0);
        let slack = want.div_ceil(20);
        assert!(
            got.abs_diff(*want) <= slack,
            "{id} served {got}, expected {want} ± {slack}: {counts:?}"
        );
    }
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_three_nodes() {
    let cluster = TestCluster::builder()
        .nodes(3)
        .balancer_env(HTTP_STRATEGY, "round-robin")
        .start()
        .await;
    until_balanced(&cluster).await;

    let counts = spread(&cluster, 300).await;

    assert_within_5_percent(
        &counts,
        &[("node-1", 100), ("node-2", 100), ("node-3", 100)],
    );
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_the_nodes_register() {
    let mut cluster = TestCluster::builder()
        .nodes(0)
        .balancer_env(HTTP_STRATEGY, "weighted-round-robin")
        .start()
        .await;
    for weight in 1..=3 {
        cluster
            .spawn_node(|config| config.env("PETMESH_NODE__CLUSTER__WEIGHT", weight.to_string()))
            .await
            .unwrap();
    }
    until_balanced(&cluster).await;

    let counts = spread(&cluster, 600).await;

    assert_within_5_percent(
        &counts,
        &[("node-1", 100), ("node-2", 200), ("node-3", 300)],
    );
}
