//! Nodes dying: under a steady load of GETs the balancer retries around a killed node and stops
//! sending it anything within a second; with no node left it answers 503 in the error format.

use std::time::{Duration, Instant};

use petmesh_tests::{assert_error, eventually, TestCluster};
use reqwest::Method;
use serde_json::json;

use crate::support::{attempts_sent, until_balanced, Load, Outcome, PASSWORD};

#[tokio::test]
async fn no_get_fails_when_a_node_is_killed_under_load() {
    let killed = kill_a_node_under_load().await;

    let failed: Vec<_> = killed
        .outcomes
        .iter()
        .filter(|o| o.status != Ok(200))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed: {failed:#?}",
        failed.len(),
        killed.outcomes.len()
    );
    let after_kill = killed
        .outcomes
        .iter()
        .filter(|o| o.sent >= killed.at)
        .count();
    assert!(after_kill >= 100, "only {after_kill} GETs after the kill");
}

// The balancer marks a node unhealthy at its first refused connect (within milliseconds of the
// kill), so neither the breaker's half-open trial after `breaker.backoff_initial_ms` nor any
// worker's later pick reaches it before the probes have seen it ready again.
#[tokio::test]
async fn a_killed_node_gets_no_attempts_after_a_second() {
    let killed = kill_a_node_under_load().await;

    assert!(
        killed.attempts_after_3s.is_none() || killed.attempts_after_3s == killed.attempts_after_1s,
        "the dead node got attempts after 1 s: {:?} at 1 s, {:?} at 3 s",
        killed.attempts_after_1s,
        killed.attempts_after_3s
    );
}

/// What a steady load of GETs saw around the SIGKILL of one of three nodes.
struct KilledUnderLoad {
    /// Every GET of the load, in the order sent.
    outcomes: Vec<Outcome>,
    /// When the node was killed.
    at: Instant,
    /// Attempts the balancer had sent the dead node one second after the kill (`None`: no
    /// longer listed).
    attempts_after_1s: Option<u64>,
    /// The same, three seconds after the kill.
    attempts_after_3s: Option<u64>,
}

/// Three nodes behind the balancer, about 100 `GET /api/v1/auth/me` a second (each through a
/// node, PostgreSQL and Redis); once the victim has served some, it is SIGKILLed and the load
/// runs on for three more seconds.
async fn kill_a_node_under_load() -> KilledUnderLoad {
    let mut cluster = TestCluster::builder().nodes(3).balancer(true).start().await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();
    entry
        .register("kim", "kim@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
    let tokens = entry.login("kim", PASSWORD).await.unwrap();
    let as_kim = entry.token(tokens.access_token);
    let load = Load::start(&as_kim, 3, Duration::from_millis(30), |client, _| {
        ("me", client.request(Method::GET, "/api/v1/auth/me"))
    });
    let victim = cluster.node(1).id().to_owned();
    eventually("the load reaches the victim", || {
        let cluster = &cluster;
        let victim = victim.as_str();
        async move {
            match attempts_sent(cluster, victim).await {
                Some(n) if n >= 20 => Ok(()),
                other => Err(other),
            }
        }
    })
    .await;

    cluster.node_mut(1).kill().unwrap();
    let killed_at = tokio::time::Instant::now();

    // Measurement windows, not synchronisation: what the balancer has sent the dead node by one
    // second after the kill should be all it ever sends, checked two seconds later (long enough
    // for probes, breaker backoff and a registry resync to have had their say).
    tokio::time::sleep_until(killed_at + Duration::from_secs(1)).await;
    let attempts_after_1s = attempts_sent(&cluster, &victim).await;
    tokio::time::sleep_until(killed_at + Duration::from_secs(3)).await;
    let attempts_after_3s = attempts_sent(&cluster, &victim).await;
    KilledUnderLoad {
        outcomes: load.stop().await,
        at: killed_at.into_std(),
        attempts_after_1s,
        attempts_after_3s,
    }
}

#[tokio::test]
async fn with_every_node_gone_the_balancer_answers_503_in_the_error_format() {
    let mut cluster = TestCluster::builder().nodes(2).balancer(true).start().await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();

    // One leaves properly, one crashes.
    let stopped = cluster
        .node_mut(0)
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(stopped.success());
    cluster.node_mut(1).kill().unwrap();

    let resp = eventually("the balancer answers 503", || {
        let entry = entry.clone();
        async move {
            let resp = entry
                .get("/api/v1/auth/me")
                .await
                .map_err(|e| format!("{e:#}"))?;
            if resp.status == 503 {
                Ok(resp)
            } else {
                Err(format!("{} {}", resp.status, resp.text))
            }
        }
    })
    .await;
    assert_error(&resp, 503);
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
    // The balancer's own answer (its kind depends on whether it still knows the nodes).
    assert!(
        resp.header("x-petmesh-proxy-error").is_some(),
        "{:?}",
        resp.headers
    );
    // Not only for requests that could have been retried.
    let post = entry
        .post(
            "/api/v1/auth/login",
            &json!({"username": "a", "password": "b"}),
        )
        .await
        .unwrap();
    assert_error(&post, 503);
    assert!(post.header("retry-after").is_some());
}
