//! Orders against real nodes: no oversell under concurrency, idempotency across nodes,
//! cancellation exactly once, and the payment jobs (retries with backoff, declines, takeover of
//! a dead node's job).

use std::time::Duration;

use futures_util::future::join_all;
use petmesh_tests::{assert_error, eventually, ApiClient, TestCluster, WsClient};
use serde_json::{json, Value};

use crate::helpers::{admin, create_pet, signed_up};

async fn pet(client: &ApiClient, id: i64) -> Value {
    let resp = client.get(&format!("/api/v1/pets/{id}")).await.unwrap();
    resp.assert_status(200);
    resp.body
}

/// Waits until order `id` reaches `status`, and returns it.
async fn order_reaches(client: &ApiClient, id: i64, status: &str) -> Value {
    eventually(&format!("order {id} to become {status}"), || async {
        let order = client
            .get(&format!("/api/v1/store/orders/{id}"))
            .await
            .map_err(|e| e.to_string())?;
        if order.body["status"] == status {
            Ok(order.body)
        } else {
            Err(format!("order is {}", order.body["status"]))
        }
    })
    .await
}

#[tokio::test]
async fn concurrent_orders_over_three_nodes_never_oversell() {
    let cluster = TestCluster::start(3).await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Popular", "5.00", 50).await["id"]
        .as_i64()
        .unwrap();
    let mut buyers = Vec::new();
    for i in 0..4 {
        buyers.push(signed_up(&cluster.client(i % 3), &format!("buyer{i}")).await);
    }

    let requests = (0..200).map(|n| {
        let client = cluster
            .client(n % 3)
            .token(&buyers[n % 4].tokens.access_token);
        async move {
            client
                .post(
                    "/api/v1/store/orders",
                    &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok"}),
                )
                .await
                .unwrap()
        }
    });
    let responses = join_all(requests).await;
    let created = responses.iter().filter(|r| r.status == 201).count();
    let refused: Vec<_> = responses.iter().filter(|r| r.status != 201).collect();
    assert_eq!(created, 50, "exactly the stock is sold");
    for resp in &refused {
        assert_error(resp, 409);
    }

    let (stock, status, orders): (i32, String, i64) = sqlx::query_as(
        "select stock, status, (select count(*) from pet_order where pet_id = $1) from pet where pet_id = $1",
    )
    .bind(pet_id)
    .fetch_one(cluster.db())
    .await
    .unwrap();
    assert_eq!((stock, status.as_str(), orders), (0, "sold", 50));
    let seen = pet(&cluster.client(2).token(&token), pet_id).await;
    assert_eq!(
        (seen["stock"].as_i64(), seen["status"].as_str()),
        (Some(0), Some("sold"))
    );
}

#[tokio::test]
async fn one_idempotency_key_sent_to_two_nodes_at_once_creates_one_order() {
    let cluster = TestCluster::start(2).await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Once", "7.25", 10).await["id"]
        .as_i64()
        .unwrap();
    let buyer = signed_up(&cluster.client(0), "careful").await;
    let body = json!({"petId": pet_id, "quantity": 2, "paymentToken": "tok_ok"});

    let send = |node: usize, body: Value| {
        let client = cluster.client(node).token(&buyer.tokens.access_token);
        async move {
            let req = client
                .request(reqwest::Method::POST, "/api/v1/store/orders")
                .header("idempotency-key", "order-abc-1")
                .json(&body);
            client.send(req).await.unwrap()
        }
    };
    let (a, b) = tokio::join!(send(0, body.clone()), send(1, body.clone()));
    a.assert_status(201);
    b.assert_status(201);
    assert_eq!(
        a.text, b.text,
        "both nodes answer with the same order, byte for byte"
    );
    assert_eq!(a.body["total"], "14.5", "exact decimal, normalised");

    let orders: i64 =
        sqlx::query_scalar("select count(*) from pet_order where idempotency_key = 'order-abc-1'")
            .fetch_one(cluster.db())
            .await
            .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(
        pet(&cluster.client(1).token(&token), pet_id).await["stock"],
        8,
        "stock taken once"
    );

    // A later retry (after payment changed the order) still replays the first response.
    order_reaches(
        &cluster.client(0).token(&token),
        a.body["id"].as_i64().unwrap(),
        "approved",
    )
    .await;
    let replay = send(1, body.clone()).await;
    replay.assert_status(201);
    assert_eq!(replay.text, a.text);
    // The same key with another body is a client error, and changes nothing.
    let misuse = send(
        0,
        json!({"petId": pet_id, "quantity": 3, "paymentToken": "tok_ok"}),
    )
    .await;
    assert_error(&misuse, 422);
    assert_eq!(
        pet(&cluster.client(0).token(&token), pet_id).await["stock"],
        8
    );
}

#[tokio::test]
async fn cancel_restores_stock_exactly_once_even_when_sent_twice() {
    let cluster = TestCluster::builder()
        .nodes(2)
        // Keep the order `placed` while it is cancelled: the gateway takes its time.
        .env("PETMESH_NODE__PAYMENTS__SIMULATED_LATENCY_MS", "3000")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Returned", "3.00", 5).await["id"]
        .as_i64()
        .unwrap();
    let buyer = signed_up(&cluster.client(0), "fickle").await;
    let as_buyer = |n: usize| cluster.client(n).token(&buyer.tokens.access_token);

    let order = as_buyer(0)
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 5}),
        )
        .await
        .unwrap();
    order.assert_status(201);
    let path = format!("/api/v1/store/orders/{}", order.body["id"]);
    assert_eq!(
        pet(&as_buyer(0), pet_id).await["status"],
        "sold",
        "stock 0 → sold"
    );

    // The owner watches its orders on the other node.
    let mut watcher = WsClient::login(&cluster.node(1).base_url(), &buyer.tokens.access_token)
        .await
        .unwrap();
    watcher.subscribe(&["orders"]).await.unwrap();

    let (buyer_a, buyer_b) = (as_buyer(0), as_buyer(1));
    let (first, second) = tokio::join!(buyer_a.delete(&path), buyer_b.delete(&path));
    let mut statuses = [first.unwrap(), second.unwrap()];
    statuses.sort_by_key(|r| r.status);
    statuses[0].assert_status(200);
    assert_eq!(statuses[0].body["status"], "cancelled");
    assert_error(&statuses[1], 409);

    // `order:updated` (cancelled), then `order:deleted` with the cancelled order.
    let updated = watcher
        .event_where(|e| e["event"] == "order:updated" || e["event"] == "order:deleted")
        .await
        .unwrap();
    assert_eq!(updated["event"], "order:updated", "{updated}");
    assert_eq!(updated["payload"]["status"], "cancelled");
    let deleted = watcher
        .event_where(|e| e["event"] == "order:deleted")
        .await
        .unwrap();
    assert_eq!(deleted["topic"], "orders");
    assert_eq!(deleted["payload"]["id"], order.body["id"]);
    assert_eq!(deleted["payload"]["status"], "cancelled");

    let after = pet(&as_buyer(1), pet_id).await;
    assert_eq!(
        (after["stock"].as_i64(), after["status"].as_str()),
        (Some(5), Some("available"))
    );
    // The payment job, whenever it looks, finds nothing to charge.
    let other = signed_up(&cluster.client(1), "nosy").await;
    assert_error(
        &cluster
            .client(1)
            .token(&other.tokens.access_token)
            .get(&path)
            .await
            .unwrap(),
        404,
    );
    assert_error(
        &cluster
            .client(1)
            .token(&other.tokens.access_token)
            .delete(&path)
            .await
            .unwrap(),
        404,
    );
}

/// One row of `job_attempt`.
#[derive(Debug, sqlx::FromRow)]
struct Attempt {
    attempt: i32,
    started_at: chrono::DateTime<chrono::Utc>,
    error: Option<String>,
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: chrono::DateTime<chrono::Utc>,
}

#[tokio::test]
async fn a_flaky_payment_is_approved_on_the_third_attempt_after_growing_delays() {
    let cluster = TestCluster::builder()
        .nodes(2)
        .env("PETMESH_NODE__JOBS__BACKOFF_BASE_MS", "300")
        .env("PETMESH_NODE__JOBS__POLL_INTERVAL_MS", "50")
        .env("PETMESH_NODE__PAYMENTS__SIMULATED_LATENCY_MS", "5")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Eventually", "9.99", 3).await["id"]
        .as_i64()
        .unwrap();
    let buyer = signed_up(&cluster.client(0), "patient").await;
    let order = cluster
        .client(1)
        .token(&buyer.tokens.access_token)
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_flaky_2"}),
        )
        .await
        .unwrap();
    order.assert_status(201);
    assert_eq!(order.body["status"], "placed");
    let id = order.body["id"].as_i64().unwrap();
    order_reaches(
        &cluster.client(0).token(&buyer.tokens.access_token),
        id,
        "approved",
    )
    .await;

    let attempts: Vec<Attempt> = sqlx::query_as(
        "select a.attempt, a.started_at, a.error, a.retry_at, a.finished_at
         from job_attempt a join job j using (job_id)
         where j.payload->>'orderId' = $1 order by a.attempt",
    )
    .bind(id.to_string())
    .fetch_all(cluster.db())
    .await
    .unwrap();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "{attempts:?}");
    assert!(
        attempts[0].error.is_some() && attempts[1].error.is_some() && attempts[2].error.is_none()
    );
    let delay = |i: usize| attempts[i].retry_at.unwrap() - attempts[i].finished_at;
    assert!(
        delay(1) > delay(0),
        "backoff grows: {} then {}",
        delay(0),
        delay(1)
    );
    assert!(
        delay(0) >= chrono::Duration::milliseconds(150),
        "at least half the base: {}",
        delay(0)
    );
    for i in 0..2 {
        assert!(
            attempts[i + 1].started_at >= attempts[i].retry_at.unwrap(),
            "attempt {} ran before its scheduled time",
            i + 2
        );
    }
    let job: (String, i32) =
        sqlx::query_as("select status, attempts from job where payload->>'orderId' = $1")
            .bind(id.to_string())
            .fetch_one(cluster.db())
            .await
            .unwrap();
    assert_eq!(job, ("done".to_owned(), 3));
}

#[tokio::test]
async fn a_declined_payment_cancels_the_order_and_restores_stock() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Unpaid", "20.00", 2).await["id"]
        .as_i64()
        .unwrap();
    let buyer = signed_up(&cluster.client(0), "broke").await;
    let as_buyer = cluster.client(0).token(&buyer.tokens.access_token);
    let order = as_buyer
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 2, "paymentToken": "tok_declined"}),
        )
        .await
        .unwrap();
    order.assert_status(201);
    let cancelled = order_reaches(&as_buyer, order.body["id"].as_i64().unwrap(), "cancelled").await;
    assert_eq!(cancelled["failureReason"], "card declined");
    let after = pet(&as_buyer, pet_id).await;
    assert_eq!(
        (after["stock"].as_i64(), after["status"].as_str()),
        (Some(2), Some("available"))
    );
    // Cancelling again is refused and restores nothing more.
    assert_error(
        &as_buyer
            .delete(&format!("/api/v1/store/orders/{}", order.body["id"]))
            .await
            .unwrap(),
        409,
    );
    assert_eq!(pet(&as_buyer, pet_id).await["stock"], 2);
}

#[tokio::test]
async fn a_job_held_by_a_killed_node_is_finished_by_another_after_its_lease() {
    // Node 1's gateway never answers in time; its lease is short and renewed while it waits.
    let mut cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__JOBS__LEASE_SECS", "2")
        .env("PETMESH_NODE__JOBS__POLL_INTERVAL_MS", "100")
        .env("PETMESH_NODE__PAYMENTS__SIMULATED_LATENCY_MS", "600000")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let pet_id = create_pet(&cluster.client(0).token(&token), "Orphan", "1.00", 1).await["id"]
        .as_i64()
        .unwrap();
    let order = cluster
        .client(0)
        .token(&token)
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok"}),
        )
        .await
        .unwrap();
    order.assert_status(201);
    let id = order.body["id"].as_i64().unwrap().to_string();
    let holder = cluster.node(0).id().to_owned();
    let db = cluster.db().clone();
    let job_state = || {
        let (db, id) = (db.clone(), id.clone());
        async move {
            sqlx::query_as::<_, (String, Option<String>, i32)>(
                "select status, locked_by, attempts from job where payload->>'orderId' = $1",
            )
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    eventually("node 1 to hold the payment job", || async {
        let state = job_state().await;
        if state.0 == "running" && state.1.as_deref() == Some(holder.as_str()) {
            Ok(())
        } else {
            Err(format!("{state:?}"))
        }
    })
    .await;
    // Renewal keeps the job with its live holder past one lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        job_state().await.1.as_deref(),
        Some(holder.as_str()),
        "a live holder keeps its lease"
    );

    cluster.node_mut(0).kill().unwrap();
    let rescuer = cluster
        .spawn_node(|config| config.env("PETMESH_NODE__PAYMENTS__SIMULATED_LATENCY_MS", "5"))
        .await
        .unwrap();
    let rescuer_id = rescuer.id().to_owned();
    let as_admin = ApiClient::new(rescuer.base_url()).token(&token);
    order_reaches(&as_admin, id.parse().unwrap(), "approved").await;
    let state = job_state().await;
    assert_eq!(
        (state.0.as_str(), state.2),
        ("done", 2),
        "taken over as the second attempt"
    );
    let finisher: String = sqlx::query_scalar("select node_id from job_attempt a join job j using (job_id) where j.payload->>'orderId' = $1 and a.attempt = 2")
        .bind(&id)
        .fetch_one(cluster.db())
        .await
        .unwrap();
    assert_eq!(finisher, rescuer_id);
}

#[tokio::test]
async fn a_full_payment_queue_turns_new_orders_away_with_retry_after() {
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__JOBS__MAX_QUEUE_DEPTH", "2")
        .env("PETMESH_NODE__JOBS__CONCURRENCY", "1")
        .env("PETMESH_NODE__PAYMENTS__SIMULATED_LATENCY_MS", "600000")
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let as_admin = cluster.client(0).token(&token);
    let pet_id = create_pet(&as_admin, "Busy", "1.00", 10).await["id"]
        .as_i64()
        .unwrap();
    let order = json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok"});
    for _ in 0..3 {
        as_admin
            .post("/api/v1/store/orders", &order)
            .await
            .unwrap()
            .assert_status(201);
    }
    let refused = as_admin.post("/api/v1/store/orders", &order).await.unwrap();
    assert_error(&refused, 503);
    assert!(
        refused
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some(),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        pet(&as_admin, pet_id).await["stock"],
        7,
        "a refused order takes no stock"
    );
}

#[tokio::test]
async fn users_see_their_own_orders_and_admins_deliver_approved_ones() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let as_admin = cluster.client(0).token(&token);
    let pet_id = create_pet(&as_admin, "Shared", "2.00", 10).await["id"]
        .as_i64()
        .unwrap();
    let (ann, ben) = (
        signed_up(&cluster.client(0), "ann").await,
        signed_up(&cluster.client(0), "ben").await,
    );
    let (as_ann, as_ben) = (
        cluster.client(0).token(&ann.tokens.access_token),
        cluster.client(0).token(&ben.tokens.access_token),
    );
    let mut ann_orders = Vec::new();
    for _ in 0..2 {
        let placed = as_ann
            .post(
                "/api/v1/store/orders",
                &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_ok"}),
            )
            .await
            .unwrap();
        ann_orders.push(placed.body["id"].as_i64().unwrap());
    }
    let ben_order = as_ben
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 1, "paymentToken": "tok_declined"}),
        )
        .await
        .unwrap()
        .body["id"]
        .as_i64()
        .unwrap();

    let own = as_ann.get("/api/v1/store/orders").await.unwrap();
    own.assert_status(200);
    let listed: Vec<i64> = own.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        listed,
        [ann_orders[1], ann_orders[0]],
        "own orders only, newest first"
    );
    assert_eq!(own.body["total"], 2);
    assert_error(
        &as_ann
            .get(&format!("/api/v1/store/orders?userId={}", ben.id))
            .await
            .unwrap(),
        403,
    );

    let all = as_admin
        .get("/api/v1/store/orders?limit=100")
        .await
        .unwrap();
    assert_eq!(all.body["total"], 3);
    let bens = as_admin
        .get(&format!("/api/v1/store/orders?userId={}", ben.id))
        .await
        .unwrap();
    assert_eq!(bens.body["items"][0]["id"], ben_order);
    order_reaches(&as_admin, ben_order, "cancelled").await;
    let cancelled = as_admin
        .get("/api/v1/store/orders?status=cancelled")
        .await
        .unwrap();
    assert_eq!(cancelled.body["total"], 1);
    assert_error(
        &as_admin
            .get("/api/v1/store/orders?status=lost")
            .await
            .unwrap(),
        400,
    );

    let approved = order_reaches(&as_admin, ann_orders[0], "approved").await;
    let status_path = format!("/api/v1/store/orders/{}/status", approved["id"]);
    let deliver = |client: &ApiClient, status: &str| {
        client
            .request(reqwest::Method::PATCH, &status_path)
            .json(&json!({ "status": status }))
    };
    assert_error(
        &as_ann.send(deliver(&as_ann, "delivered")).await.unwrap(),
        403,
    );
    assert_error(
        &as_admin.send(deliver(&as_admin, "approved")).await.unwrap(),
        400,
    );
    let delivered = as_admin
        .send(deliver(&as_admin, "delivered"))
        .await
        .unwrap();
    delivered.assert_status(200);
    assert_eq!(delivered.body["status"], "delivered");
    assert_error(
        &as_admin
            .send(deliver(&as_admin, "delivered"))
            .await
            .unwrap(),
        409,
    );
    // Delivered orders can no longer be cancelled.
    assert_error(
        &as_ann
            .delete(&format!("/api/v1/store/orders/{}", approved["id"]))
            .await
            .unwrap(),
        409,
    );
    let cancelled_path = format!("/api/v1/store/orders/{ben_order}/status");
    let late = as_admin
        .request(reqwest::Method::PATCH, &cancelled_path)
        .json(&json!({"status": "delivered"}));
    assert_error(&as_admin.send(late).await.unwrap(), 409);
}
