//! Reconnect storms are paced: beyond the rate (after a burst of one here) a WebSocket
//! handshake waits for its turn, and one that would wait longer than the bound is refused with
//! 503, `Retry-After` and the common error body — at the node (`realtime.handshake*`) and at
//! the balancer (`limits.ws_handshake*`, before it connects to a node) — and each side counts
//! both in its metrics.

use futures_util::future::join_all;
use petmesh_tests::{assert_eventually, metrics, TestCluster};
use tokio_tungstenite::tungstenite::{self, http::Response};

/// Handshakes started at once: one a second is admitted, one more may wait 1.5 s, so most of
/// them are refused (and a few admitted: the ones that come after a slot frees up).
const AT_ONCE: usize = 10;

/// What one handshake got: its status, the refusal's response if refused.
struct Outcome {
    status: u16,
    refusal: Option<Response<Option<Vec<u8>>>>,
}

/// [`AT_ONCE`] handshakes to `base_url`'s `/ws`, all started together; the admitted ones stay
/// open until the outcomes are returned.
async fn storm(base_url: &str) -> Vec<Outcome> {
    let url = format!("{}/ws", base_url.replacen("http", "ws", 1));
    let attempts = (0..AT_ONCE).map(|_| tokio_tungstenite::connect_async(url.clone()));
    let mut open = Vec::new();
    let outcomes = join_all(attempts)
        .await
        .into_iter()
        .map(|attempt| match attempt {
            Ok((socket, response)) => {
                open.push(socket);
                Outcome {
                    status: response.status().as_u16(),
                    refusal: None,
                }
            }
            Err(tungstenite::Error::Http(response)) => Outcome {
                status: response.status().as_u16(),
                refusal: Some(*response),
            },
            Err(err) => panic!("handshake: {err}"),
        })
        .collect();
    drop(open);
    outcomes
}

/// Asserts that some handshakes were admitted and the rest refused with a readable 503;
/// returns how many were refused.
fn assert_paced(outcomes: &[Outcome]) -> usize {
    let statuses: Vec<u16> = outcomes.iter().map(|o| o.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 101 || *s == 503),
        "{statuses:?}"
    );
    let admitted = statuses.iter().filter(|s| **s == 101).count();
    assert!(
        (2..AT_ONCE).contains(&admitted),
        "one at once, one waiting, the rest refused: {statuses:?}"
    );
    for refusal in outcomes.iter().filter_map(|o| o.refusal.as_ref()) {
        assert!(refusal.headers().contains_key("retry-after"), "{refusal:?}");
        let body: serde_json::Value =
            serde_json::from_slice(refusal.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body["statusCode"], 503, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("handshakes")),
            "{body}"
        );
    }
    AT_ONCE - admitted
}

#[tokio::test]
async fn a_node_lets_handshakes_beyond_its_rate_wait_and_refuses_those_that_would_wait_too_long() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__REALTIME__HANDSHAKES_PER_SECOND", "1")
        .env("PETMESH_NODE__REALTIME__HANDSHAKE_BURST", "1")
        .env("PETMESH_NODE__REALTIME__HANDSHAKE_MAX_WAIT_MS", "1500")
        .start()
        .await;
    let refused = assert_paced(&storm(&cluster.node(0).base_url()).await);

    let text = cluster.client(0).get("/metrics").await.unwrap().text;
    let count = |outcome: &str| {
        let series = format!("petmesh_node_ws_handshakes_paced_total{{outcome=\"{outcome}\"}}");
        metrics::value(&text, &series).unwrap_or_else(|| panic!("{series} in {text}"))
    };
    assert_eq!(count("refused"), refused as f64);
    assert!(count("waited") >= 1.0, "{}", count("waited"));
}

#[tokio::test]
async fn the_balancer_paces_handshakes_before_it_connects_to_a_node() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .balancer(true)
        .env("PETMESH_NODE__REALTIME__HANDSHAKES_PER_SECOND", "0")
        .balancer_env("PETMESH_BALANCER__LIMITS__WS_HANDSHAKES_PER_SECOND", "1")
        .balancer_env("PETMESH_BALANCER__LIMITS__WS_HANDSHAKE_BURST", "1")
        .balancer_env("PETMESH_BALANCER__LIMITS__WS_HANDSHAKE_MAX_WAIT_MS", "1500")
        .start()
        .await;
    let balancer = cluster.balancer();
    balancer
        .until_routing_to(&["node-1"], std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let outcomes = storm(&balancer.base_url()).await;
    let refused = assert_paced(&outcomes);
    for refusal in outcomes.iter().filter_map(|o| o.refusal.as_ref()) {
        assert_eq!(
            refusal.headers()["x-petmesh-proxy-error"],
            "too_many_handshakes",
            "{refusal:?}"
        );
    }

    let text = balancer.admin_client().get("/metrics").await.unwrap().text;
    let refusals = metrics::value(
        &text,
        "petmesh_balancer_proxy_errors_total{kind=\"too_many_handshakes\"}",
    );
    assert_eq!(refusals, Some(refused as f64), "{text}");
    let waited = metrics::value(&text, "petmesh_balancer_ws_handshakes_paced_total");
    assert!(waited.is_some_and(|n| n >= 1.0), "{waited:?}");
    // Refused at the balancer, never sent on: the node opened only the admitted ones (it
    // counts each as its connection starts, just after the 101).
    let admitted = (AT_ONCE - refused) as f64;
    let opened = || async {
        let node = cluster.client(0).get("/metrics").await.unwrap().text;
        metrics::value(&node, "petmesh_node_ws_connections_opened_total").unwrap_or(0.0)
    };
    assert_eventually!(opened().await >= admitted, "the node opened {admitted}");
    assert_eq!(opened().await, admitted);
}
