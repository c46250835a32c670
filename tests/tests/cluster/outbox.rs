//! Durable event publication (issue 13, item 4): domain events wait in the PostgreSQL outbox
//! while Redis is away and reach every subscriber afterwards, in commit order and exactly once,
//! whichever node relays them and whatever happens to it.

use std::time::{Duration, Instant};

use petmesh_tests::{
    eventually, process::send_signal, ApiClient, TestCluster, TestResponse, WsClient,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::until_balanced;

/// How long the scenario of the issue keeps Redis frozen.
const FREEZE: Duration = Duration::from_secs(10);

/// Time between two creations while Redis is frozen.
const PACE: Duration = Duration::from_millis(250);

/// How long one creation may take while Redis is frozen.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after Redis thaws every subscriber must have every event of the freeze.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Logs in as the bootstrap admin through `client`.
async fn admin_token(cluster: &TestCluster, client: &ApiClient) -> String {
    client
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token
}

/// Creates a pet called `name`, answering within `timeout`.
async fn create_pet(
    api: &ApiClient,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<TestResponse> {
    api.send(
        api.request(Method::POST, "/api/v1/pets")
            .json(&json!({"name": name, "category": "dogs", "price": "1.00", "stock": 1}))
            .timeout(timeout),
    )
    .await
}

/// A `pets` subscriber on `base_url`.
async fn subscriber(base_url: &str, token: &str) -> WsClient {
    let mut ws = WsClient::login(base_url, token).await.unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    ws
}

/// The `pet:created` events `ws` receives up to and including the one of pet `last`: (name,
/// offset sequence number, when it arrived).
async fn created_until(ws: &mut WsClient, last: &str) -> Vec<(String, u64, Instant)> {
    let mut seen = Vec::new();
    loop {
        let event = ws.next_event().await.unwrap();
        if event["event"] != "pet:created" {
            continue;
        }
        let name = event["payload"]["name"].as_str().unwrap().to_owned();
        seen.push((name.clone(), seq_of(&event), Instant::now()));
        if name == last {
            return seen;
        }
    }
}

/// The sequence number of an event's offset (`<epoch>:<seq>`).
fn seq_of(event: &Value) -> u64 {
    let offset = event["offset"].as_str().unwrap();
    offset.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Asserts `seen` names each of `expected` once, in that order, with consecutive offsets.
fn assert_exactly_in_order(seen: &[(String, u64, Instant)], expected: &[String], who: &str) {
    let names: Vec<&str> = seen.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, expected, "{who}: every event once, in order");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "{who}: consecutive offsets");
    }
}

async fn rows_pending(cluster: &TestCluster) -> i64 {
    sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(cluster.db())
        .await
        .unwrap()
}

/// Waits until every delivered row is deleted (a subscriber may see an event before its
/// relay has marked it).
async fn until_pruned(cluster: &TestCluster) {
    eventually("the delivered outbox rows are pruned", || async {
        match rows_pending(cluster).await {
            0 => Ok(()),
            n => Err(format!("{n} rows left")),
        }
    })
    .await;
}

async fn pets_relay(cluster: &TestCluster) -> Option<String> {
    sqlx::query_scalar("select holder from outbox_relay where topic = 'pets'")
        .fetch_optional(cluster.db())
        .await
        .unwrap()
}

#[tokio::test]
async fn pets_created_while_redis_is_frozen_reach_every_subscriber_in_order_once_it_thaws() {
    let mut cluster = TestCluster::builder()
        .nodes(3)
        .balancer(true)
        .own_redis()
        .start()
        .await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();
    let token = admin_token(&cluster, &entry).await;
    let api = entry.token(&token);
    // One subscriber on each node, each reading all the time (so it answers pings).
    let mut readers = Vec::new();
    for node in cluster.nodes() {
        let mut ws = subscriber(&node.base_url(), &token).await;
        readers.push(tokio::spawn(async move {
            let warm_up = created_until(&mut ws, "before").await;
            (created_until(&mut ws, "after").await, warm_up)
        }));
    }
    create_pet(&api, "before", CREATE_TIMEOUT)
        .await
        .unwrap()
        .assert_status(201);

    let redis = cluster.own_redis().pid();
    send_signal(redis, libc::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    // A steady stream of creations for the whole freeze; each request runs on its own, so a
    // slow answer does not slow the pace.
    let mut creations = Vec::new();
    let mut pace = tokio::time::interval(PACE);
    let mut i = 0;
    while frozen_at.elapsed() < FREEZE - PACE {
        pace.tick().await;
        let (api, name) = (api.clone(), format!("frozen-{i}"));
        creations.push(tokio::spawn(async move {
            let started = Instant::now();
            let created = create_pet(&api, &name, CREATE_TIMEOUT).await;
            (name, created, started.elapsed())
        }));
        i += 1;
    }
    tokio::time::sleep_until((frozen_at + FREEZE).into()).await;
    send_signal(redis, libc::SIGCONT).unwrap();
    let thawed_at = Instant::now();

    let mut window: Vec<String> = Vec::new();
    let mut slowest = Duration::ZERO;
    for creation in creations {
        let (name, created, took) = creation.await.unwrap();
        let created = created.unwrap_or_else(|e| panic!("creating {name}: {e:#}"));
        created.assert_status(201);
        slowest = slowest.max(took);
        window.push(name);
    }
    eprintln!(
        "{} pets created while Redis was frozen; slowest answer {slowest:?}",
        window.len()
    );
    // Through a node rather than the balancer: right after the thaw the registry entries that
    // expired meanwhile are being written again.
    let node_api = cluster.client(0).token(&token);
    create_pet(&node_api, "after", CREATE_TIMEOUT)
        .await
        .unwrap()
        .assert_status(201);

    // Requests answered around the thaw commit in an order of their own: the order to see is
    // the commit order, the same for every subscriber (the first one's), holding each pet of
    // the window once. That it is the commit order is `concurrent_writers_...` below.
    let mut reference: Option<Vec<String>> = None;
    for (index, reader) in readers.into_iter().enumerate() {
        let (seen, _) = tokio::time::timeout(CATCH_UP + Duration::from_secs(25), reader)
            .await
            .unwrap_or_else(|_| panic!("subscriber {index} never saw every event"))
            .unwrap();
        let who = format!("subscriber on node {index}");
        let expected = reference.get_or_insert_with(|| {
            let names: Vec<String> = seen.iter().map(|(name, ..)| name.clone()).collect();
            let mut sorted = names[..names.len() - 1].to_vec();
            sorted.sort();
            let mut window = window.clone();
            window.sort();
            assert_eq!(sorted, window, "{who}: every pet of the window once");
            names
        });
        assert_exactly_in_order(&seen, expected, &who);
        let last_of_window = seen[seen.len() - 2].2;
        let caught_up = last_of_window.saturating_duration_since(thawed_at);
        eprintln!("subscriber on node {index}: whole window {caught_up:?} after the thaw");
        assert!(
            caught_up <= CATCH_UP,
            "subscriber on node {index} had the window only {caught_up:?} after the thaw"
        );
    }
    until_pruned(&cluster).await;
}

#[tokio::test]
async fn when_the_relaying_node_dies_another_takes_over_losing_and_repeating_nothing() {
    let mut cluster = TestCluster::builder()
        .nodes(3)
        .own_redis()
        .env("PETMESH_NODE__OUTBOX__LEASE_SECS", "2")
        .start()
        .await;
    let token = admin_token(&cluster, &cluster.client(0)).await;
    let first = cluster.client(0).token(&token);
    create_pet(&first, "first", CREATE_TIMEOUT)
        .await
        .unwrap()
        .assert_status(201);
    let holder = eventually("a node relays the pets topic", || async {
        pets_relay(&cluster).await.ok_or("no lease yet")
    })
    .await;
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.id() == holder)
        .unwrap();
    let survivor = (victim + 1) % 3;
    let mut ws = subscriber(&cluster.node(survivor).base_url(), &token).await;

    // Redis frozen: the events stay in the outbox (and the victim's timed-out appends wait in
    // Redis's socket, to be run after the thaw: replays the new relay must not repeat).
    let redis = cluster.own_redis().pid();
    send_signal(redis, libc::SIGSTOP).unwrap();
    let writer = cluster.client(survivor).token(&token);
    let expected: Vec<String> = (0..10).map(|i| format!("pending-{i}")).collect();
    for name in &expected {
        create_pet(&writer, name, CREATE_TIMEOUT)
            .await
            .unwrap()
            .assert_status(201);
    }
    assert!(rows_pending(&cluster).await >= 10);
    cluster.node_mut(victim).kill().unwrap();
    send_signal(redis, libc::SIGCONT).unwrap();

    let mut expected = expected;
    let last = "after-takeover".to_owned();
    create_pet(&writer, &last, CREATE_TIMEOUT)
        .await
        .unwrap()
        .assert_status(201);
    expected.push(last.clone());
    let seen = tokio::time::timeout(
        petmesh_tests::eventually::patience(),
        created_until(&mut ws, &last),
    )
    .await
    .expect("the new relay delivers the pending events");
    // The subscription started after `first`, whose event may or may not precede the rest.
    let seen: Vec<_> = seen.into_iter().filter(|(n, ..)| n != "first").collect();
    assert_exactly_in_order(&seen, &expected, "subscriber");
    let new_holder = pets_relay(&cluster).await.unwrap();
    assert_ne!(new_holder, holder, "a surviving node relays now");
}

#[tokio::test]
async fn outbox_rows_appended_before_a_relay_crash_are_not_delivered_twice() {
    let cluster = TestCluster::start(1).await;
    let token = admin_token(&cluster, &cluster.client(0)).await;
    let api = cluster.client(0).token(&token);
    let mut ws = subscriber(&cluster.node(0).base_url(), &token).await;
    for name in ["one", "two", "three"] {
        create_pet(&api, name, CREATE_TIMEOUT)
            .await
            .unwrap()
            .assert_status(201);
    }
    let delivered = created_until(&mut ws, "three").await;
    until_pruned(&cluster).await;

    // The state a relay leaves when it dies after appending rows 2 and 3 but before marking
    // them delivered: the rows are back, and the relay (woken by the next write) reads them.
    sqlx::query(
        "insert into outbox (topic, seq, event, payload, node_id, occurred_at)
         select 'pets', seq, 'pet:created', jsonb_build_object('name', 'replayed-' || seq),
                'node-1', 0
         from generate_series(2, 3) as seq",
    )
    .execute(cluster.db())
    .await
    .unwrap();
    sqlx::query("update outbox_relay set delivered_seq = 1 where topic = 'pets'")
        .execute(cluster.db())
        .await
        .unwrap();
    create_pet(&api, "four", CREATE_TIMEOUT)
        .await
        .unwrap()
        .assert_status(201);

    let after = created_until(&mut ws, "four").await;
    let names: Vec<&str> = after.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, ["four"], "the replayed rows were skipped");
    assert_eq!(
        after[0].1,
        delivered[2].1 + 1,
        "no offset was spent on them"
    );
    until_pruned(&cluster).await;
}

#[tokio::test]
async fn concurrent_writers_events_are_relayed_in_commit_order() {
    let cluster = TestCluster::start(3).await;
    let token = admin_token(&cluster, &cluster.client(0)).await;
    let api = cluster.client(0).token(&token);
    let created = create_pet(&api, "contended", CREATE_TIMEOUT).await.unwrap();
    created.assert_status(201);
    let path = format!("/api/v1/pets/{}", created.body["id"]);
    let mut ws = subscriber(&cluster.node(1).base_url(), &token).await;

    // 30 updates of one pet from three nodes at once. Each bumps the version under the pet's
    // row lock, so versions number the updates in commit order.
    let writes = 30;
    let mut updates = Vec::new();
    for i in 0..writes {
        let client = cluster.client(i % 3).token(&token);
        let path = path.clone();
        updates.push(tokio::spawn(async move {
            client
                .send(
                    client
                        .request(Method::PATCH, &path)
                        .json(&json!({"stock": i})),
                )
                .await
                .unwrap()
                .assert_status(200)
                .body["version"]
                .as_i64()
                .unwrap()
        }));
    }
    for update in updates {
        update.await.unwrap();
    }
    let mut versions = Vec::new();
    while versions.len() < writes {
        let event = ws.next_event().await.unwrap();
        if event["event"] == "pet:updated" {
            versions.push(event["payload"]["version"].as_i64().unwrap());
        }
    }
    let expected: Vec<i64> = (2..2 + writes as i64).collect();
    assert_eq!(
        versions, expected,
        "events in the order the updates committed"
    );
}
