//! Domain events: each pet and order change is published once to Redis, after it committed,
//! with the next offset of its topic, in commit order within the topic (topics are relayed
//! independently, so there is no order across them).

use futures_util::StreamExt;
use petmesh_tests::TestCluster;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::helpers::{admin, create_pet};

#[tokio::test]
async fn every_pet_and_order_change_is_published_exactly_once() {
    let cluster = TestCluster::start(2).await;
    let client = redis::Client::open(cluster.redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .psubscribe(format!("petmesh:{}:events:*", cluster.cluster_name()))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();

    let token = admin(&cluster).await.access_token;
    let (a, b) = (
        cluster.client(0).token(&token),
        cluster.client(1).token(&token),
    );
    let pet = create_pet(&a, "Herald", "4.00", 3).await;
    let pet_id = pet["id"].as_i64().unwrap();
    let path = format!("/api/v1/pets/{pet_id}");
    b.send(
        b.request(reqwest::Method::PATCH, &path)
            .json(&json!({"name": "Herald II"})),
    )
    .await
    .unwrap()
    .assert_status(200);
    let order = a
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok"}),
        )
        .await
        .unwrap();
    order.assert_status(201);
    // A rejected change publishes nothing.
    let stale = b
        .send(
            b.request(reqwest::Method::PATCH, &path)
                .header("if-match", "\"1\"")
                .json(&json!({"name": "Nope"})),
        )
        .await
        .unwrap();
    stale.assert_status(412);

    // The payment approves the order; then a marker change closes the sequence, so the check
    // below sees every event published before it, and nothing is awaited by sleeping.
    let mut seen: Vec<(String, String, Value)> = Vec::new();
    let mut marker_sent = false;
    loop {
        let message = timeout(petmesh_tests::eventually::patience(), messages.next())
            .await
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"))
            .expect("subscription open");
        // `<epoch> <seq> <envelope JSON>`
        let text = message.get_payload::<String>().unwrap();
        let mut parts = text.splitn(3, ' ');
        let (epoch, seq) = (parts.next().unwrap(), parts.next().unwrap());
        let mut envelope: Value = serde_json::from_str(parts.next().unwrap()).unwrap();
        envelope["offset"] = json!(format!("{epoch}:{seq}"));
        let event = envelope["event"].as_str().unwrap().to_owned();
        let channel = message.get_channel_name().to_owned();
        if event == "pet:created" && envelope["payload"]["name"] == "Marker" {
            break;
        }
        if event == "order:updated" && !marker_sent {
            create_pet(&a, "Marker", "1.00", 1).await;
            marker_sent = true;
        }
        seen.push((event, channel, envelope));
    }

    let of_topic = |prefix: &str| -> Vec<&str> {
        seen.iter()
            .map(|(e, _, _)| e.as_str())
            .filter(|e| e.starts_with(prefix))
            .collect()
    };
    assert_eq!(
        of_topic("pet:"),
        ["pet:created", "pet:updated", "pet:updated"],
        "{seen:?}"
    );
    assert_eq!(
        of_topic("order:"),
        ["order:created", "order:updated"],
        "{seen:?}"
    );
    let keys = petmesh_shared::registry::RedisKeys::new(cluster.cluster_name());
    for (event, channel, envelope) in &seen {
        let topic = if event.starts_with("pet:") {
            "pets"
        } else {
            "orders"
        };
        assert_eq!(channel, &keys.event_channel(topic));
        assert_eq!(envelope["topic"], topic);
        assert!(envelope["timestamp"].as_i64().unwrap() > 0);
    }
    // Offsets of a topic follow each other, without gaps, in one epoch.
    for topic in ["pets", "orders"] {
        let offsets: Vec<(String, u64)> = seen
            .iter()
            .filter(|(_, _, envelope)| envelope["topic"] == topic)
            .map(|(_, _, envelope)| {
                let (epoch, seq) = envelope["offset"]
                    .as_str()
                    .unwrap()
                    .split_once(':')
                    .unwrap();
                (epoch.to_owned(), seq.parse().unwrap())
            })
            .collect();
        for pair in offsets.windows(2) {
            assert_eq!(pair[0].0, pair[1].0, "one epoch per topic");
            assert_eq!(
                pair[0].1 + 1,
                pair[1].1,
                "consecutive offsets on {topic}: {offsets:?}"
            );
        }
    }
    let of = |prefix: &str| -> Vec<&Value> {
        seen.iter()
            .filter(|(e, _, _)| e.starts_with(prefix))
            .map(|(_, _, envelope)| envelope)
            .collect()
    };
    let (pet_events, order_events) = (of("pet:"), of("order:"));
    assert_eq!(pet_events[1]["payload"]["name"], "Herald II");
    assert_eq!(
        pet_events[2]["payload"]["stock"], 2,
        "the order took one unit"
    );
    assert_eq!(order_events[1]["payload"]["status"], "approved");
    assert!(
        order_events[0]["owner"].is_string(),
        "order events name their owner"
    );
}
