//! Abuse resistance across the cluster: login lock-outs that every node agrees on, whatever
//! address the guesses come from, and client addresses that a client cannot forge.

use std::{net::IpAddr, time::Duration};

use petmesh_tests::{ApiClient, TestCluster, TestResponse};
use serde_json::json;

use crate::support::{served_by, until_balanced, PASSWORD};

/// The first lock of these tests: short, so that waiting for its end stays cheap.
const LOCK_SECS: u64 = 2;

/// A cluster of 3 nodes and a balancer with a short login lock.
async fn guarded_cluster(extra: &[(&str, &str)]) -> TestCluster {
    let mut builder = TestCluster::builder()
        .nodes(3)
        .balancer(true)
        .env("PETMESH_NODE__AUTH__LOGIN_LOCK_SECS", LOCK_SECS.to_string())
        .env("PETMESH_NODE__AUTH__LOGIN_MAX_LOCK_SECS", "60");
    for (key, value) in extra {
        builder = builder.env(*key, *value);
    }
    let cluster = builder.start().await;
    until_balanced(&cluster).await;
    cluster
}

/// Client address number `n` (127.0.0.10 and up: none of them a trusted proxy).
fn address(n: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + n as u8])
}

async fn login(client: &ApiClient, name: &str, password: &str) -> TestResponse {
    client
        .post(
            "/api/v1/auth/login",
            &json!({"username": name, "password": password}),
        )
        .await
        .unwrap()
}

/// `Retry-After` of a 429, in seconds.
#[track_caller]
fn retry_after(resp: &TestResponse) -> u64 {
    assert_eq!(resp.status, 429, "{}", resp.text);
    resp.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", resp.headers))
}

/// What one login name goes through: 20 wrong passwords from 20 addresses spread over the
/// nodes, the right one during the lock, a failure after it, then the right one again.
/// Returns every answer's status and body, for comparing names with and without an account.
async fn lock_out_and_recover(cluster: &TestCluster, name: &str) -> Vec<(u16, serde_json::Value)> {
    let entry = cluster.entry_client();
    let mut seen = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for n in 0..20 {
        let resp = login(
            &entry.clone().from_address(address(n)),
            name,
            "wrong-password",
        )
        .await;
        nodes.insert(served_by(&resp));
        seen.push((resp.status, resp.body.clone()));
    }
    assert_eq!(nodes.len(), 3, "the guesses reached every node: {nodes:?}");
    let statuses: Vec<u16> = seen.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 15], "{statuses:?}");

    // The right password does not open a locked name, and does not extend the lock.
    let during = login(&entry, name, PASSWORD).await;
    let first_wait = retry_after(&during);
    assert!((1..=LOCK_SECS).contains(&first_wait), "{first_wait}");
    seen.push((during.status, during.body.clone()));

    // The lock ends on time (the documented contract: wait Retry-After).
    tokio::time::sleep(Duration::from_secs(first_wait)).await;
    // The first failure after a lock locks again, twice as long.
    let failure = login(
        &entry.clone().from_address(address(21)),
        name,
        "wrong-again",
    )
    .await;
    assert_eq!(failure.status, 401, "{}", failure.text);
    seen.push((failure.status, failure.body.clone()));
    let relocked = login(&entry, name, PASSWORD).await;
    let second_wait = retry_after(&relocked);
    assert!(
        second_wait > LOCK_SECS && second_wait <= 2 * LOCK_SECS,
        "second lock {second_wait} s after a first of {LOCK_SECS} s"
    );
    seen.push((relocked.status, relocked.body.clone()));
    tokio::time::sleep(Duration::from_secs(second_wait)).await;
    let after = login(&entry, name, PASSWORD).await;
    seen.push((after.status, serde_json::Value::Null));
    seen
}

#[tokio::test]
async fn wrong_passwords_from_many_addresses_lock_the_name_on_every_node() {
    let cluster = guarded_cluster(&[]).await;
    let entry = cluster.entry_client();
    entry
        .register("lockme", "lockme@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);

    let known = lock_out_and_recover(&cluster, "lockme").await;
    assert_eq!(
        known.last().unwrap().0,
        200,
        "the right password after the lock"
    );
    // A success resets: five more failures are needed for the next lock.
    for _ in 0..4 {
        assert_eq!(login(&entry, "lockme", "nope").await.status, 401);
    }
    entry.login("lockme", PASSWORD).await.unwrap();

    // A name without an account goes through exactly the same answers (but the last: its
    // "right password" is just another wrong one, and it is not locked any more).
    let unknown = lock_out_and_recover(&cluster, "nobody-here").await;
    assert_eq!(unknown.last().unwrap().0, 401);
    // The waits in the messages may differ by a second; nothing else may.
    let without_digits = |answers: &[(u16, serde_json::Value)]| {
        answers
            .iter()
            .map(|(status, body)| {
                (
                    *status,
                    body.to_string().replace(|c: char| c.is_ascii_digit(), ""),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_digits(&known[..known.len() - 1]),
        without_digits(&unknown[..unknown.len() - 1])
    );
}

#[tokio::test]
async fn one_address_guessing_many_names_runs_out_of_failures() {
    let cluster = guarded_cluster(&[("PETMESH_NODE__AUTH__LOGIN_IP_MAX_FAILURES", "6")]).await;
    let entry = cluster.entry_client();
    entry
        .register("stuffed", "stuffed@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
    let attacker = entry.clone().from_address(address(1));
    for n in 0..6 {
        let resp = login(&attacker, &format!("victim{n}"), "123456").await;
        assert_eq!(resp.status, 401, "{}", resp.text);
    }
    // Over its budget: refused for any name, even with the right password...
    let refused = login(&attacker, "stuffed", PASSWORD).await;
    assert!(retry_after(&refused) > 0);
    assert!(refused.body["message"]
        .as_str()
        .unwrap()
        .contains("from this address"));
    // ...while everybody else logs in.
    entry
        .clone()
        .from_address(address(2))
        .login("stuffed", PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_x_forwarded_for_names_nobody_else() {
    let cluster = guarded_cluster(&[("PETMESH_NODE__AUTH__LOGIN_IP_MAX_FAILURES", "3")]).await;
    let forge = |client: ApiClient, n: usize| async move {
        let request = client
            .request(reqwest::Method::POST, "/api/v1/auth/login")
            .header("x-forwarded-for", format!("198.51.100.{n}"))
            .json(&json!({"username": format!("who{n}"), "password": "guess"}));
        client.send(request).await.unwrap()
    };
    // Through the balancer and straight to a node, a new forged address every time: the
    // failures still add up on the real address.
    for (via, client) in [
        ("balancer", cluster.entry_client().from_address(address(3))),
        ("node", cluster.client(1).from_address(address(4))),
    ] {
        let mut statuses = Vec::new();
        for n in 0..4 {
            statuses.push(forge(client.clone(), n).await.status);
        }
        assert_eq!(statuses, [401, 401, 401, 429], "via the {via}");
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs_or_error_bodies() {
    let cluster = TestCluster::builder()
        .nodes(2)
        .balancer(true)
        .env("PETMESH_NODE__LOG__LEVEL", "petmesh_node=debug,info")
        .balancer_env(
            "PETMESH_BALANCER__LOG__LEVEL",
            "petmesh_balancer=debug,info",
        )
        .start()
        .await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();
    let password = "a-very-private-passphrase-42";
    let mut secrets = vec![
        cluster.jwt_secret().to_owned(),
        cluster.admin_password().to_owned(),
        password.to_owned(),
    ];
    let mut bodies = Vec::new();

    // Everything that handles a secret: registration, logins right and wrong, refresh (and a
    // replayed refresh token), the WebSocket login, logout, and malformed credentials.
    bodies.push(
        entry
            .register("keeper", "keeper@example.com", password)
            .await
            .unwrap(),
    );
    bodies.push(
        entry
            .register("keeper2", "k2@example.com", "short")
            .await
            .unwrap(),
    );
    bodies.push(login(&entry, "keeper", "not-the-passphrase").await);
    let tokens = entry.login("keeper", password).await.unwrap();
    secrets.push(tokens.access_token.clone());
    secrets.push(tokens.refresh_token.clone());
    let admin = entry
        .login("admin", cluster.admin_password())
        .await
        .unwrap();
    secrets.push(admin.access_token.clone());
    for _ in 0..2 {
        bodies.push(
            entry
                .post(
                    "/api/v1/auth/refresh",
                    &json!({"refreshToken": tokens.refresh_token}),
                )
                .await
                .unwrap(),
        );
    }
    bodies.push(
        entry
            .post(
                "/api/v1/auth/login",
                &json!({"username": "keeper", "password": 12345678}),
            )
            .await
            .unwrap(),
    );
    let mut ws =
        petmesh_tests::WsClient::login(&cluster.balancer().base_url(), &admin.access_token)
            .await
            .unwrap();
    ws.request("ping", json!({})).await.unwrap();
    bodies.push(
        entry
            .clone()
            .token(format!("{}x", admin.access_token))
            .get("/api/v1/auth/me")
            .await
            .unwrap(),
    );
    entry
        .clone()
        .token(&admin.access_token)
        .post("/api/v1/auth/logout", &json!({}))
        .await
        .unwrap()
        .assert_status(204);

    let mut logs: Vec<String> = cluster.nodes().iter().flat_map(|n| n.logs()).collect();
    let balancer_logs = cluster.balancer().logs();
    assert!(
        balancer_logs.len() < 500,
        "the balancer's log tail overflowed"
    );
    for node in cluster.nodes() {
        assert!(
            node.logs().len() < 500,
            "{}'s log tail overflowed",
            node.id()
        );
    }
    logs.extend(balancer_logs);
    assert!(logs.len() > 20, "debug logs were written: {}", logs.len());
    for secret in &secrets {
        for line in &logs {
            assert!(
                !line.contains(secret.as_str()),
                "a secret in the logs: {line}"
            );
        }
        for body in &bodies {
            assert!(
                !body.text.contains(secret.as_str()),
                "a secret in an answer: {}",
                body.text
            );
        }
    }
}
