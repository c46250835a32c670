//! The WebSocket protocol against real nodes: request/response rules, authentication, events
//! across nodes, who receives what, rooms, recovery from offsets, revocation, slow consumers.

use std::time::Duration;

use petmesh_tests::{eventually::patience, metrics, ws::RawWs, TestCluster, WsClient};
use serde_json::{json, Value};

use crate::helpers::{admin, create_pet, place_order, refresh, signed_up, TestUser};

/// Signs up one user per name, the i-th through node i, each connected over WebSocket to the
/// node it signed up on.
async fn connected_users<const N: usize>(
    cluster: &TestCluster,
    names: [&str; N],
) -> [(TestUser, WsClient); N] {
    let mut users = Vec::with_capacity(N);
    for (i, name) in names.iter().enumerate() {
        let user = signed_up(&cluster.client(i), name).await;
        let ws = WsClient::login(&cluster.node(i).base_url(), &user.tokens.access_token)
            .await
            .unwrap();
        users.push((user, ws));
    }
    users
        .try_into()
        .unwrap_or_else(|_| unreachable!("one user per name"))
}

/// A pet event named `event` about the pet called `name`.
fn is_pet_event(event: &Value, name: &str, pet: &str) -> bool {
    event["event"] == name && event["payload"]["name"] == pet
}

/// A client whose stream ends without a close handshake is gone, not in error: the node counts
/// it as `client_gone` (a reconnect storm ends thousands of connections so, and counted as
/// errors they would hide real protocol errors) and ends the connection without a close frame.
#[tokio::test]
async fn a_client_gone_without_a_close_handshake_is_counted_as_gone() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let mut gone = RawWs::connect(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    let pong = gone.request("ping", json!({})).await.unwrap();
    assert_eq!(pong["status"], "success", "{pong}");

    gone.end_writing().await.unwrap();
    assert_eq!(gone.read_to_end(patience()).await.unwrap(), None);
    // Counted before the socket closed, so already there.
    let text = cluster.client(0).get("/metrics").await.unwrap().text;
    let count = |reason: &str| {
        let series = format!("petmesh_node_ws_connections_closed_total{{reason=\"{reason}\"}}");
        metrics::value(&text, &series).unwrap_or_else(|| panic!("{series} in {text}"))
    };
    assert_eq!(count("client_gone"), 1.0);
    assert_eq!(count("error"), 0.0);
}

#[tokio::test]
async fn bad_frames_get_error_responses_and_the_connection_stays_open() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let base = cluster.node(0).base_url();
    let mut ws = WsClient::connect(&base, None).await.unwrap();

    // Unauthenticated: ping works, anything else asks to authenticate.
    ws.request("ping", json!({})).await.unwrap().ok();
    let refused = ws
        .request("subscribe", json!({"topics": ["pets"]}))
        .await
        .unwrap();
    assert_eq!(refused.error_code(), "UNAUTHORIZED");

    // The short form of existing pet-store clients logs in too.
    ws.send_text(json!({"event": "auth:login", "data": {"token": token}, "id": 9}).to_string())
        .await
        .unwrap();
    let login = ws.any_response().await.unwrap();
    assert_eq!(login.frame["id"], 9);
    assert_eq!(login.ok()["role"], "admin");

    let cases = [
        ("{not json".to_owned(), "INVALID_JSON"),
        ("[1]".to_owned(), "INVALID_JSON"),
        (json!({"id": "a"}).to_string(), "VALIDATION_ERROR"),
        (json!({"id": "b", "action": "no.such.thing"}).to_string(), "UNKNOWN_ACTION"),
        (json!({"id": "c", "action": "subscribe", "payload": {}}).to_string(), "VALIDATION_ERROR"),
        (
            json!({"id": "d", "action": "subscribe", "payload": {"topics": ["user:nope"]}}).to_string(),
            "VALIDATION_ERROR",
        ),
        (
            json!({"id": "e", "action": "room:message", "payload": {"roomId": "r1", "content": "hi"}})
                .to_string(),
            "FORBIDDEN",
        ),
        (json!({"id": "f", "action": "auth:login", "payload": {"token": "garbage"}}).to_string(), "UNAUTHORIZED"),
    ];
    for (frame, code) in cases {
        ws.send_text(frame.clone()).await.unwrap();
        let response = ws.any_response().await.unwrap();
        assert_eq!(response.error_code(), code, "{frame} → {}", response.frame);
        assert!(response.frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Still open and still authenticated.
    ws.subscribe(&["pets"]).await.unwrap();

    // A frame over realtime.max_frame_bytes (64 KiB) closes the connection with 1009.
    ws.send_text("x".repeat(70 * 1024)).await.unwrap();
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_with_4401() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__REALTIME__AUTH_TIMEOUT_MS", "300")
        .start()
        .await;
    let mut ws = WsClient::connect(&cluster.node(0).base_url(), None)
        .await
        .unwrap();
    ws.request("ping", json!({})).await.unwrap().ok();
    let (code, reason) = ws.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4401, "authentication timed out"));

    // A token on the handshake authenticates at once; a bad one is refused with 401.
    let token = admin(&cluster).await.access_token;
    let mut ws = WsClient::connect(&cluster.node(0).base_url(), Some(&token))
        .await
        .unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    let refused = WsClient::connect(&cluster.node(0).base_url(), Some("not-a-token")).await;
    let Err(refused) = refused else {
        panic!("a bad token was accepted on the handshake");
    };
    assert!(refused.to_string().contains("401"), "{refused}");
}

#[tokio::test]
async fn a_subscriber_on_one_node_receives_a_pet_created_through_another() {
    let cluster = TestCluster::start(3).await;
    let token = admin(&cluster).await.access_token;
    let user = signed_up(&cluster.client(1), "watcher").await;
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &user.tokens.access_token)
        .await
        .unwrap();
    let subscribed = ws
        .request("subscribe", json!({"topics": ["pets"]}))
        .await
        .unwrap();
    assert!(subscribed.ok()["topics"]["pets"].get("offset").is_some());

    create_pet(&cluster.client(2).token(&token), "Comet", "9.50", 2).await;
    let event = ws
        .event_where(|e| is_pet_event(e, "pet:created", "Comet"))
        .await
        .unwrap();
    assert_eq!(event["topic"], "pets");
    assert!(event["offset"].as_str().is_some_and(|o| o.contains(':')));
    assert!(event["timestamp"].as_i64().is_some());
}

#[tokio::test]
async fn order_events_reach_their_owner_and_admins_only() {
    let cluster = TestCluster::start(2).await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Biscuit", "3.00", 5).await["id"]
        .as_i64()
        .unwrap();
    let owner = signed_up(&cluster.client(0), "owner").await;
    let other = signed_up(&cluster.client(1), "other").await;

    let mut admin_ws = WsClient::login(&cluster.node(1).base_url(), &token)
        .await
        .unwrap();
    admin_ws.subscribe(&["orders"]).await.unwrap();
    let mut owner_ws = WsClient::login(&cluster.node(0).base_url(), &owner.tokens.access_token)
        .await
        .unwrap();
    owner_ws
        .request(
            "subscribe",
            json!({"topics": [format!("user:{}", owner.id)]}),
        )
        .await
        .unwrap()
        .ok();
    let mut other_ws = WsClient::login(&cluster.node(1).base_url(), &other.tokens.access_token)
        .await
        .unwrap();
    other_ws.subscribe(&["orders"]).await.unwrap();
    // Another user's topic is not theirs to read.
    let refused = other_ws
        .request(
            "subscribe",
            json!({"topics": [format!("user:{}", owner.id)]}),
        )
        .await
        .unwrap();
    assert_eq!(refused.error_code(), "FORBIDDEN");

    let order = place_order(
        &cluster.client(1).token(&owner.tokens.access_token),
        pet_id,
        "tok_ok",
    )
    .await;
    order.assert_status(201);
    let order_id = order.body["id"].clone();

    let is_this_order = |e: &Value| e["event"] == "order:created" && e["payload"]["id"] == order_id;
    let seen_by_owner = owner_ws.event_where(is_this_order).await.unwrap();
    assert_eq!(seen_by_owner["topic"], format!("user:{}", owner.id));
    let seen_by_admin = admin_ws.event_where(is_this_order).await.unwrap();
    assert_eq!(seen_by_admin["topic"], "orders");
    assert_eq!(seen_by_admin["offset"], seen_by_owner["offset"]);

    // The other user saw nothing of it: a change of their own arrives with nothing before it.
    let own = place_order(
        &cluster.client(0).token(&other.tokens.access_token),
        pet_id,
        "tok_ok",
    )
    .await;
    own.assert_status(201);
    let first = other_ws.next_event().await.unwrap();
    assert_eq!(first["event"], "order:created");
    assert_eq!(
        first["payload"]["id"], own.body["id"],
        "saw someone else's order: {first}"
    );
}

#[tokio::test]
async fn unsubscribing_one_topic_name_keeps_the_other_on_the_same_log() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.client(0).token(&admin(&cluster).await.access_token);
    let pet_id = create_pet(&admin, "Biscuit", "3.00", 5).await["id"]
        .as_i64()
        .unwrap();
    let user = signed_up(&cluster.client(0), "buyer").await;
    let own_topic = format!("user:{}", user.id);
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &user.tokens.access_token)
        .await
        .unwrap();
    ws.subscribe(&["orders", &own_topic, "pets"]).await.unwrap();
    let buyer = cluster.client(0).token(&user.tokens.access_token);

    // `orders` and `user:<id>` read the same log: leaving one keeps the other.
    let left = ws
        .request(
            "unsubscribe",
            json!({"topics": ["orders", "no-such-topic"]}),
        )
        .await
        .unwrap();
    assert_eq!(left.ok()["topics"], json!(["orders"]));
    let order = place_order(&buyer, pet_id, "tok_ok").await;
    order.assert_status(201);
    create_pet(&admin, "Fence-1", "1.00", 1).await;
    let (before, _) = ws
        .events_until(|e| is_pet_event(e, "pet:created", "Fence-1"))
        .await
        .unwrap();
    let created: Vec<_> = before
        .iter()
        .filter(|e| e["event"] == "order:created")
        .collect();
    assert_eq!(created.len(), 1, "one copy of the order event: {before:?}");
    assert_eq!(created[0]["topic"], own_topic.as_str());
    assert_eq!(created[0]["payload"]["id"], order.body["id"]);
    assert!(
        before
            .iter()
            .all(|e| e["topic"] == "pets" || e["topic"] == own_topic.as_str()),
        "an event under the topic it left: {before:?}"
    );

    // Leaving the last topic on the log ends its events; the connection keeps `pets`.
    let left = ws
        .request("unsubscribe", json!({"topics": [own_topic]}))
        .await
        .unwrap();
    assert_eq!(left.ok()["topics"], json!([own_topic]));
    place_order(&buyer, pet_id, "tok_ok")
        .await
        .assert_status(201);
    create_pet(&admin, "Fence-2", "1.00", 1).await;
    let (before, _) = ws
        .events_until(|e| is_pet_event(e, "pet:created", "Fence-2"))
        .await
        .unwrap();
    assert!(
        before.iter().all(|e| e["topic"] == "pets"),
        "order events after leaving every order topic: {before:?}"
    );
}

#[tokio::test]
async fn room_messages_reach_members_on_every_node_and_no_one_else() {
    let cluster = TestCluster::start(3).await;
    let [(alice, mut a), (bob, mut b), (_carol, mut c)] =
        connected_users(&cluster, ["alice", "bob", "carol"]).await;

    a.request("room:join", json!({"roomId": "kennel"}))
        .await
        .unwrap()
        .ok();
    let joined = a
        .event_where(|e| e["event"] == "room:joined")
        .await
        .unwrap();
    assert_eq!(joined["payload"]["userId"], alice.id);
    b.request("room:join", json!({"roomId": "kennel"}))
        .await
        .unwrap()
        .ok();
    let bob_joined = a
        .event_where(|e| e["event"] == "room:joined" && e["payload"]["userId"] == bob.id)
        .await
        .unwrap();
    assert_eq!(bob_joined["topic"], "room:kennel");
    c.request("room:join", json!({"roomId": "elsewhere"}))
        .await
        .unwrap()
        .ok();

    let sent = a
        .request(
            "room:message",
            json!({"roomId": "kennel", "content": "walk at five", "type": "notification"}),
        )
        .await
        .unwrap();
    sent.ok();
    for member in [&mut a, &mut b] {
        let message = member
            .event_where(|e| e["event"] == "room:message")
            .await
            .unwrap();
        assert_eq!(message["payload"]["content"], "walk at five");
        assert_eq!(message["payload"]["type"], "notification");
        assert_eq!(message["payload"]["userId"], alice.id);
        assert_eq!(message["payload"]["roomId"], "kennel");
        assert!(message["payload"]["timestamp"].as_i64().is_some());
    }
    // Carol is not a member: a message in her own room is the first room message she sees.
    c.request(
        "room:message",
        json!({"roomId": "elsewhere", "content": "mine"}),
    )
    .await
    .unwrap()
    .ok();
    let first = c
        .event_where(|e| e["event"] == "room:message")
        .await
        .unwrap();
    assert_eq!(first["payload"]["content"], "mine");
    // Nor may she subscribe to a room she has not joined.
    let refused = c
        .request("subscribe", json!({"topics": ["room:kennel"]}))
        .await
        .unwrap();
    assert_eq!(refused.error_code(), "FORBIDDEN");

    // Leaving (or disconnecting) tells the others.
    b.request("room:leave", json!({"roomId": "kennel"}))
        .await
        .unwrap()
        .ok();
    let left = a.event_where(|e| e["event"] == "room:left").await.unwrap();
    assert_eq!(left["payload"]["userId"], bob.id);
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_client_resuming_from_its_offset_gets_exactly_what_it_missed() {
    let cluster = TestCluster::start(2).await;
    let token = admin(&cluster).await.access_token;
    let admin_api = cluster.client(1).token(&token);
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    create_pet(&admin_api, "Before", "1.00", 1).await;
    let seen = ws
        .event_where(|e| is_pet_event(e, "pet:created", "Before"))
        .await
        .unwrap();
    let offset = seen["offset"].as_str().unwrap().to_owned();
    ws.close().await.unwrap();

    for name in ["Missed1", "Missed2", "Missed3"] {
        create_pet(&admin_api, name, "1.00", 1).await;
    }
    let mut ws = WsClient::login(&cluster.node(1).base_url(), &token)
        .await
        .unwrap();
    let resumed = ws
        .request(
            "subscribe",
            json!({"topics": ["pets"], "since": {"pets": offset}}),
        )
        .await
        .unwrap();
    let result = &resumed.ok()["topics"]["pets"];
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(result["missed"], 3);
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(ws.next_event().await.unwrap()["payload"]["name"].clone());
    }
    assert_eq!(
        names,
        [json!("Missed1"), json!("Missed2"), json!("Missed3")]
    );
    // Live again, with nothing repeated in between; subscribing again changes nothing.
    ws.subscribe(&["pets"]).await.unwrap();
    create_pet(&admin_api, "After", "1.00", 1).await;
    create_pet(&admin_api, "After2", "1.00", 1).await;
    let next = ws.next_event().await.unwrap();
    assert!(is_pet_event(&next, "pet:created", "After"), "{next}");
    let next = ws.next_event().await.unwrap();
    assert!(is_pet_event(&next, "pet:created", "After2"), "{next}");

    // An offset from another history is refused as a whole, never replayed in part.
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    let lost = ws
        .request(
            "subscribe",
            json!({"topics": ["pets"], "since": {"pets": "otherepoch:1"}}),
        )
        .await
        .unwrap();
    assert_eq!(lost.ok()["topics"]["pets"]["recovered"], false);
    assert!(lost.ok()["topics"]["pets"]["reason"].as_str().is_some());
    assert_eq!(ws.pending_events(), 0);
}

#[tokio::test]
async fn logout_on_one_node_closes_the_sessions_socket_on_another() {
    let cluster = TestCluster::start(2).await;
    let user = signed_up(&cluster.client(0), "leaver").await;
    let other_session = cluster
        .client(0)
        .login("leaver", crate::helpers::PASSWORD)
        .await
        .unwrap();
    let mut ws = WsClient::login(&cluster.node(1).base_url(), &user.tokens.access_token)
        .await
        .unwrap();
    let mut untouched = WsClient::login(&cluster.node(1).base_url(), &other_session.access_token)
        .await
        .unwrap();

    cluster
        .client(0)
        .token(&user.tokens.access_token)
        .post("/api/v1/auth/logout", &json!({}))
        .await
        .unwrap()
        .assert_status(204);
    let revoked = ws
        .event_where(|e| e["event"] == "auth:revoked")
        .await
        .unwrap();
    assert!(revoked.get("offset").is_none());
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 4401);
    // Another session of the same user stays connected.
    untouched.round_trip().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_while_a_normal_client_keeps_its_latency() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__REALTIME__SEND_QUEUE", "32")
        .env("PETMESH_NODE__REALTIME__RATE_PER_MINUTE", "1000000")
        .env("PETMESH_NODE__REALTIME__RATE_BURST", "100000")
        .start()
        .await;
    let base = cluster.node(0).base_url();
    let users = [
        signed_up(&cluster.client(0), "sleepy").await,
        signed_up(&cluster.client(0), "lively").await,
        signed_up(&cluster.client(0), "talker").await,
    ];
    // The sleepy client joins, then never reads again (and has a small receive buffer).
    let mut sleepy = RawWs::connect(&base, &users[0].tokens.access_token)
        .await
        .unwrap();
    let joined = sleepy
        .request("room:join", json!({"roomId": "flood"}))
        .await
        .unwrap();
    assert_eq!(joined["status"], "success", "{joined}");
    let mut lively = WsClient::login(&base, &users[1].tokens.access_token)
        .await
        .unwrap();
    let mut talker = WsClient::login(&base, &users[2].tokens.access_token)
        .await
        .unwrap();
    for ws in [&mut lively, &mut talker] {
        ws.request("room:join", json!({"roomId": "flood"}))
            .await
            .unwrap()
            .ok();
    }
    let quiet_latency = lively.round_trip().await.unwrap();

    // 4 KB messages fill the sleepy client's socket buffers, then its queue of 32.
    let content = "x".repeat(4000);
    let mut worst = Duration::ZERO;
    let mut sent = 0;
    loop {
        for _ in 0..20 {
            talker
                .request(
                    "room:message",
                    json!({"roomId": "flood", "content": content}),
                )
                .await
                .unwrap()
                .ok();
            sent += 1;
        }
        worst = worst.max(lively.round_trip().await.unwrap());
        // The lively client reads everything sent to it.
        while lively.pending_events() > 0 {
            lively.next_event().await.unwrap();
        }
        let metrics = cluster.client(0).get("/metrics").await.unwrap();
        if metrics
            .text
            .contains("petmesh_node_ws_slow_consumer_disconnects_total 1")
        {
            break;
        }
        assert!(sent < 5_000, "the sleepy client was never closed");
    }
    // Its close frame (1013) goes out only if the socket drains in time; either way the
    // connection ends.
    match sleepy.closed_after_silence().await {
        Ok((code, _)) => assert_eq!(code, 1013),
        Err(err) => assert!(err.to_string().contains("ended"), "{err}"),
    }
    // Generous: the point is that the slow client never stalled the others.
    assert!(
        worst < Duration::from_secs(2),
        "a normal client's round trip went from {quiet_latency:?} to {worst:?}"
    );
    lively.round_trip().await.unwrap();
}

/// Registers custom event `name` as admin.
async fn register_event(cluster: &TestCluster, token: &str, name: &str, replicable: bool) -> Value {
    let resp = cluster
        .client(0)
        .token(token)
        .post(
            "/api/v1/subscribers",
            &json!({"eventListener": name, "replicable": replicable}),
        )
        .await
        .unwrap();
    resp.assert_status(201);
    resp.body["subscriber"].clone()
}

#[tokio::test]
async fn replicable_custom_events_reach_the_rooms_other_members_and_others_stay_put() {
    let cluster = TestCluster::start(3).await;
    let token = admin(&cluster).await.access_token;
    let typing = register_event(&cluster, &token, "chat.typing", true).await;
    register_event(&cluster, &token, "audit.note", false).await;
    let [(alice, mut a), (_bob, mut b), (_carol, mut c)] =
        connected_users(&cluster, ["alice", "bob", "carol"]).await;
    for (ws, room) in [(&mut a, "den"), (&mut b, "den"), (&mut c, "yard")] {
        ws.request("room:join", json!({"roomId": room}))
            .await
            .unwrap()
            .ok();
    }

    // Short form, as existing clients send it.
    a.send_text(
        json!({"event": "chat.typing", "data": {"roomId": "den", "typing": true}}).to_string(),
    )
    .await
    .unwrap();
    let emitted = a.any_response().await.unwrap();
    let processed = &emitted.ok()["subscribers"];
    assert_eq!(processed[0]["id"], typing["id"]);
    assert_eq!(emitted.ok()["broadcast"]["topic"], "room:den");

    let received = b
        .event_where(|e| e["event"] == "chat.typing")
        .await
        .unwrap();
    assert_eq!(received["topic"], "room:den");
    assert_eq!(received["payload"]["typing"], true);
    assert_eq!(received["payload"]["userId"], alice.id);
    assert_eq!(received["payload"]["subscriberId"], typing["id"]);
    assert!(received["payload"]["timestamp"].as_i64().is_some());

    // Non-replicable: processed (the response says by whom) but never re-broadcast.
    let note = a
        .request("audit.note", json!({"roomId": "den", "text": "x"}))
        .await
        .unwrap();
    assert_eq!(note.ok()["subscribers"][0]["eventListener"], "audit.note");
    assert_eq!(note.ok()["broadcast"], Value::Null);
    a.request(
        "room:message",
        json!({"roomId": "den", "content": "marker"}),
    )
    .await
    .unwrap()
    .ok();
    // Bob's next room event after the typing one is the marker: no audit.note in between.
    let next = b
        .event_where(|e| e["topic"] == "room:den" && e["event"] != "room:joined")
        .await
        .unwrap();
    assert_eq!(next["event"], "room:message", "{next}");
    // The sender does not get its own custom event back; Carol (another room) gets nothing.
    let first_for_alice = a
        .event_where(|e| e["topic"] == "room:den" && e["event"] != "room:joined")
        .await
        .unwrap();
    assert_eq!(
        first_for_alice["event"], "room:message",
        "{first_for_alice}"
    );
    c.request("room:message", json!({"roomId": "yard", "content": "own"}))
        .await
        .unwrap()
        .ok();
    let first_for_carol = c
        .event_where(|e| e["event"] != "room:joined")
        .await
        .unwrap();
    assert_eq!(
        first_for_carol["payload"]["content"], "own",
        "{first_for_carol}"
    );

    // Unregistered names, and rooms the sender is not in, are refused.
    let unknown = a.request("chat.unknown", json!({})).await.unwrap();
    assert_eq!(unknown.error_code(), "UNKNOWN_ACTION");
    let outside = a
        .request("chat.typing", json!({"roomId": "yard"}))
        .await
        .unwrap();
    assert_eq!(outside.error_code(), "FORBIDDEN");
}

#[tokio::test]
async fn resource_actions_follow_the_rest_rules_and_answer_like_rest() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let base = cluster.node(0).base_url();
    let user = signed_up(&cluster.client(0), "shopper").await;
    let other = signed_up(&cluster.client(0), "nosy").await;
    let mut admin_ws = WsClient::login(&base, &token).await.unwrap();
    let mut ws = WsClient::login(&base, &user.tokens.access_token)
        .await
        .unwrap();
    let mut nosy = WsClient::login(&base, &other.tokens.access_token)
        .await
        .unwrap();

    let pet =
        json!({"name": "Ws Rex", "category": "dogs", "tags": ["ws"], "price": "12.50", "stock": 2});
    assert_eq!(
        ws.request("pets.create", pet.clone())
            .await
            .unwrap()
            .error_code(),
        "FORBIDDEN"
    );
    let created = admin_ws.request("pets.create", pet).await.unwrap();
    let pet_id = created.ok()["id"].as_i64().unwrap();
    let bad = admin_ws
        .request(
            "pets.create",
            json!({"name": "", "category": "dogs", "price": "1.00", "stock": 1}),
        )
        .await
        .unwrap();
    assert_eq!(bad.error_code(), "VALIDATION_ERROR");

    // Same JSON as REST.
    let rest = cluster
        .client(0)
        .token(&user.tokens.access_token)
        .get(&format!("/api/v1/pets/{pet_id}"))
        .await
        .unwrap();
    let got = ws.request("pets.get", json!({"id": pet_id})).await.unwrap();
    assert_eq!(got.ok(), &rest.body);
    let listed = ws
        .request(
            "pets.list",
            json!({"status": "available", "tag": "ws", "limit": 5}),
        )
        .await
        .unwrap();
    assert_eq!(listed.ok()["total"], 1);
    assert_eq!(listed.ok()["items"][0]["id"], pet_id);
    let bad_limit = ws.request("pets.list", json!({"limit": 0})).await.unwrap();
    assert_eq!(bad_limit.error_code(), "VALIDATION_ERROR");

    let stale = admin_ws
        .request(
            "pets.update",
            json!({"id": pet_id, "version": 99, "name": "Nope"}),
        )
        .await
        .unwrap();
    assert_eq!(stale.error_code(), "PRECONDITION_FAILED");
    let renamed = admin_ws
        .request(
            "pets.update",
            json!({"id": pet_id, "version": 1, "name": "Ws Max"}),
        )
        .await
        .unwrap();
    assert_eq!(renamed.ok()["name"], "Ws Max");

    let order = ws
        .request(
            "orders.create",
            json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok", "idempotencyKey": "k1"}),
        )
        .await
        .unwrap();
    let order_id = order.ok()["id"].as_i64().unwrap();
    let replay = ws
        .request(
            "orders.create",
            json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok", "idempotencyKey": "k1"}),
        )
        .await
        .unwrap();
    assert_eq!(
        replay.ok()["id"],
        order_id,
        "the idempotency key replays the order"
    );
    let hidden = nosy
        .request("orders.get", json!({"id": order_id}))
        .await
        .unwrap();
    assert_eq!(hidden.error_code(), "NOT_FOUND");
    let theirs = nosy.request("orders.list", json!({})).await.unwrap();
    assert_eq!(theirs.ok()["total"], 0);
    let refused = nosy
        .request("orders.list", json!({"userId": user.id}))
        .await
        .unwrap();
    assert_eq!(refused.error_code(), "FORBIDDEN");
    let mine = ws.request("orders.list", json!({})).await.unwrap();
    assert_eq!(mine.ok()["total"], 1);
    let cancelled = ws
        .request("orders.cancel", json!({"id": order_id}))
        .await
        .unwrap();
    assert_eq!(cancelled.ok()["status"], "cancelled");
    let again = ws
        .request("orders.cancel", json!({"id": order_id}))
        .await
        .unwrap();
    assert_eq!(again.error_code(), "CONFLICT");
    let inventory = ws.request("inventory.get", json!({})).await.unwrap();
    assert!(inventory.ok()["available"].as_i64().unwrap() >= 1);
    let gone = admin_ws
        .request("pets.delete", json!({"id": pet_id}))
        .await
        .unwrap();
    gone.ok();
    assert_eq!(
        ws.request("pets.get", json!({"id": pet_id}))
            .await
            .unwrap()
            .error_code(),
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn requests_over_the_rate_limit_are_refused_and_the_connection_stays() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__REALTIME__RATE_BURST", "3")
        .env("PETMESH_NODE__REALTIME__RATE_PER_MINUTE", "1")
        .start()
        .await;
    let mut ws = WsClient::connect(&cluster.node(0).base_url(), None)
        .await
        .unwrap();
    for _ in 0..3 {
        ws.request("ping", json!({})).await.unwrap().ok();
    }
    let limited = ws.request("ping", json!({})).await.unwrap();
    assert_eq!(limited.error_code(), "RATE_LIMITED");
    assert_eq!(
        limited.frame["id"], "r4",
        "the refusal answers the request it refuses"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_one_that_answers_pings_is_not() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__REALTIME__PING_INTERVAL_SECS", "1")
        .env("PETMESH_NODE__REALTIME__IDLE_TIMEOUT_SECS", "3")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let base = cluster.node(0).base_url();
    // This client reads (so its WebSocket library answers the node's pings) but sends nothing.
    let mut reader = WsClient::login(&base, &token).await.unwrap();
    // This one never reads again: its pings go unanswered.
    let mut silent = petmesh_tests::ws::RawWs::connect(&base, &token)
        .await
        .unwrap();
    let silence_ended = tokio::sync::Notify::new();
    let (closed, reading) = tokio::join!(
        async {
            let closed = silent.closed_after_silence().await;
            silence_ended.notify_one();
            closed
        },
        reader.read_until(silence_ended.notified())
    );
    let (code, reason) = closed.unwrap();
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    // The reader outlived the idle timeout too, answering pings only.
    reading.unwrap();
    reader.round_trip().await.unwrap();
}

#[tokio::test]
async fn a_node_fills_a_gap_in_a_topic_from_its_history_before_delivering_further() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    let admin_api = cluster.client(0).token(&token);
    create_pet(&admin_api, "First", "1.00", 1).await;
    ws.event_where(|e| is_pet_event(e, "pet:created", "First"))
        .await
        .unwrap();

    // An event whose pub/sub message is lost: it gets its offset and its place in the history,
    // but is never published.
    let redis = redis::Client::open(cluster.redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys = petmesh_shared::registry::RedisKeys::new(cluster.cluster_name());
    let seq: u64 = redis::cmd("HINCRBY")
        .arg(keys.topic_offsets("pets"))
        .arg("seq")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let lost = json!({"event": "pet:updated", "topic": "pets", "payload": {"name": "Lost"}, "timestamp": 1, "nodeId": "elsewhere"});
    let _: String = redis::cmd("XADD")
        .arg(keys.topic_history("pets"))
        .arg(format!("{seq}-0"))
        .arg("e")
        .arg(lost.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    create_pet(&admin_api, "Second", "1.00", 1).await;
    let next = ws.next_event().await.unwrap();
    assert_eq!(
        next["payload"]["name"], "Lost",
        "the gap is filled first: {next}"
    );
    assert!(next["offset"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{seq}")));
    let after = ws.next_event().await.unwrap();
    assert!(is_pet_event(&after, "pet:created", "Second"), "{after}");
    let metrics = cluster.client(0).get("/metrics").await.unwrap();
    assert!(
        metrics.text.contains("petmesh_node_ws_gap_fills_total 1"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_node_listens_in_redis_only_to_topics_its_clients_use() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let redis = redis::Client::open(cluster.redis_url()).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    let channels = |pattern: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(pattern)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    let events = format!("petmesh:{}:events:*", cluster.cluster_name());
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    assert_eq!(channels(events.clone()).await, Vec::<String>::new());
    ws.subscribe(&["pets"]).await.unwrap();
    assert_eq!(
        channels(events.clone()).await,
        [petmesh_shared::registry::RedisKeys::new(cluster.cluster_name()).event_channel("pets")]
    );
}

#[tokio::test]
async fn after_redis_loses_its_data_events_flow_again_in_a_new_epoch() {
    // A Redis of the cluster's own, so that every node (and so the outbox relay of the pets
    // topic, whichever node leases it) publishes where the subscriber listens.
    let mut cluster = TestCluster::builder().nodes(1).own_redis().start().await;
    let base = cluster.node(0).base_url();
    let token = admin(&cluster).await.access_token;
    let admin_api = cluster.client(0).token(&token);
    let mut ws = WsClient::login(&base, &token).await.unwrap();
    ws.subscribe(&["pets"]).await.unwrap();
    create_pet(&admin_api, "Before", "1.00", 1).await;
    let before = ws
        .event_where(|e| is_pet_event(e, "pet:created", "Before"))
        .await
        .unwrap();

    cluster.own_redis().restart().await.unwrap();

    // Events published while the node's connections come back may be lost (counted); keep
    // changing pets until one arrives: delivery must resume by itself.
    let mut attempt = 0;
    let after = loop {
        attempt += 1;
        let name = format!("After{attempt}");
        create_pet(&admin_api, &name, "1.00", 1).await;
        match tokio::time::timeout(
            Duration::from_millis(500),
            ws.event_where(|e| e["event"] == "pet:created"),
        )
        .await
        {
            Ok(event) => break event.unwrap(),
            Err(_) => assert!(attempt < 60, "no event arrived after Redis came back"),
        }
    };
    let epoch = |e: &Value| {
        e["offset"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_ne!(
        epoch(&before),
        epoch(&after),
        "the lost history starts a new epoch"
    );
}

#[tokio::test]
async fn auth_refresh_keeps_a_socket_open_past_its_first_tokens_expiry() {
    let cluster = TestCluster::builder()
        .nodes(2)
        .env("PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS", "3")
        .start()
        .await;
    let user = signed_up(&cluster.client(0), "longlived").await;
    let other = signed_up(&cluster.client(0), "stranger").await;

    let mut anonymous = WsClient::connect(&cluster.node(1).base_url(), None)
        .await
        .unwrap();
    let refused = anonymous
        .request("auth:refresh", json!({"token": user.tokens.access_token}))
        .await
        .unwrap();
    assert_eq!(
        refused.error_code(),
        "UNAUTHORIZED",
        "a refresh needs a session"
    );

    let mut ws = WsClient::connect(&cluster.node(1).base_url(), None)
        .await
        .unwrap();
    let login = ws
        .request("auth:login", json!({"token": user.tokens.access_token}))
        .await
        .unwrap();
    let first_expiry = login.ok()["expiresAt"].as_i64().unwrap();
    // Tokens carry whole seconds: the new one must be issued in a later second to expire later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pair = refresh(&cluster.client(0), &user.tokens.refresh_token).await;
    pair.assert_status(200);
    let newer = pair.body["accessToken"].as_str().unwrap();

    let foreign = ws
        .request("auth:refresh", json!({"token": other.tokens.access_token}))
        .await
        .unwrap();
    assert_eq!(foreign.error_code(), "FORBIDDEN");
    let forged = ws
        .request("auth:refresh", json!({"token": "not.a.token"}))
        .await
        .unwrap();
    assert_eq!(forged.error_code(), "UNAUTHORIZED");
    let refreshed = ws
        .request("auth:refresh", json!({"token": newer}))
        .await
        .unwrap();
    assert_eq!(refreshed.ok()["userId"], json!(user.id));
    let second_expiry = refreshed.ok()["expiresAt"].as_i64().unwrap();
    assert!(
        second_expiry > first_expiry,
        "{first_expiry} → {second_expiry}"
    );

    // The socket is told only when the newer token expires, not at the first one's expiry.
    let expired = ws
        .event_where(|e| e["event"] == "auth:expired")
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        now >= second_expiry,
        "auth:expired at {now}, the refreshed token expires at {second_expiry}: {expired}"
    );
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 4401);
}

#[tokio::test]
async fn a_connection_whose_token_expires_is_told_and_closed() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS", "2")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    let expired = ws
        .event_where(|e| e["event"] == "auth:expired")
        .await
        .unwrap();
    assert!(expired.get("offset").is_none());
    let (code, reason) = ws.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
}
