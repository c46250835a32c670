//! `/api/v1/pets`: filters, sorting and pagination against a brute-force filter of the seeded
//! catalogue; conditional writes; authorisation; bad parameters; cache freshness across nodes.

use std::collections::HashSet;

use petmesh_tests::{assert_error, ApiClient, TestCluster};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::{admin, create_pet, seed, signed_up};

/// Every pet, read through the API with cursor pagination.
async fn all_pets(client: &ApiClient) -> Vec<Value> {
    let mut pets = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/pets?limit=100&sort=createdAt&cursor={c}"),
            None => "/api/v1/pets?limit=100&sort=createdAt".to_owned(),
        };
        let page = client.get(&path).await.unwrap();
        page.assert_status(200);
        pets.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pets,
        }
    }
}

/// Which pets a filter keeps, computed by brute force.
type Keep = Box<dyn Fn(&Value) -> bool>;

fn price(pet: &Value) -> Decimal {
    pet["price"].as_str().unwrap().parse().unwrap()
}

fn ids(pets: &[Value]) -> Vec<i64> {
    pets.iter().map(|p| p["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn filters_sorts_and_pages_return_exactly_the_right_rows() {
    let cluster = TestCluster::start(1).await;
    seed(&cluster);
    let client = cluster.client(0);
    let user = signed_up(&client, "browser").await;
    let client = client.token(&user.tokens.access_token);

    // Cursor paging visits every pet exactly once.
    let all = all_pets(&client).await;
    assert!(
        all.len() >= 200,
        "seed loads a few hundred pets, got {}",
        all.len()
    );
    let unique: HashSet<i64> = ids(&all).into_iter().collect();
    assert_eq!(unique.len(), all.len());
    let total: i64 = sqlx::query_scalar("select count(*) from pet")
        .fetch_one(cluster.db())
        .await
        .unwrap();
    assert_eq!(all.len() as i64, total);

    let cases: Vec<(&str, Keep)> = vec![
        ("status=available", Box::new(|p| p["status"] == "available")),
        (
            "status=pending&status=sold",
            Box::new(|p| p["status"] == "pending" || p["status"] == "sold"),
        ),
        ("category=cats", Box::new(|p| p["category"] == "cats")),
        (
            "tag=trained",
            Box::new(|p| p["tags"].as_array().unwrap().iter().any(|t| t == "trained")),
        ),
        (
            "name=LUN",
            Box::new(|p| p["name"].as_str().unwrap().to_lowercase().contains("lun")),
        ),
        (
            "minPrice=100&maxPrice=500.50",
            Box::new(|p| price(p) >= Decimal::new(100, 0) && price(p) <= Decimal::new(50050, 2)),
        ),
        (
            "category=dogs&status=available&minPrice=1000",
            Box::new(|p| {
                p["category"] == "dogs"
                    && p["status"] == "available"
                    && price(p) >= Decimal::new(1000, 0)
            }),
        ),
    ];
    for (query, keep) in cases {
        let mut expected: Vec<&Value> = all.iter().filter(|p| keep(p)).collect();
        expected.sort_by(|a, b| {
            price(a)
                .cmp(&price(b))
                .then(a["id"].as_i64().cmp(&b["id"].as_i64()))
        });
        let expected_ids: Vec<i64> = expected.iter().map(|p| p["id"].as_i64().unwrap()).collect();
        assert!(
            !expected_ids.is_empty(),
            "{query} matches nothing in the seed; pick another filter"
        );

        // Offset pages of 7, sorted by price.
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let page = client
                .get(&format!(
                    "/api/v1/pets?{query}&sort=price&limit=7&offset={offset}"
                ))
                .await
                .unwrap();
            page.assert_status(200);
            assert_eq!(
                page.body["total"].as_u64().unwrap() as usize,
                expected_ids.len(),
                "{query}"
            );
            let items = page.body["items"].as_array().unwrap();
            if items.is_empty() {
                break;
            }
            got.extend(ids(items));
            offset += 7;
        }
        assert_eq!(got, expected_ids, "{query} by offset");

        // Cursor pages of 9, descending: the same rows reversed.
        let mut got = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = client
                .get(&format!(
                    "/api/v1/pets?{query}&sort=price&order=desc&limit=9{cursor}"
                ))
                .await
                .unwrap();
            page.assert_status(200);
            got.extend(ids(page.body["items"].as_array().unwrap()));
            match page.body["nextCursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        let mut reversed = expected_ids.clone();
        reversed.reverse();
        assert_eq!(got, reversed, "{query} by cursor, descending");
    }

    // Sorting by name matches PostgreSQL's own ordering of the same rows.
    let by_name = client
        .get("/api/v1/pets?sort=name&limit=100")
        .await
        .unwrap();
    let expected: Vec<i64> =
        sqlx::query_scalar("select pet_id from pet order by name, pet_id limit 100")
            .fetch_all(cluster.db())
            .await
            .unwrap();
    assert_eq!(ids(by_name.body["items"].as_array().unwrap()), expected);

    // findByStatus, the classic call.
    let found = client
        .get("/api/v1/pets/findByStatus?status=sold")
        .await
        .unwrap();
    found.assert_status(200);
    let expected: Vec<i64> = ids(&all
        .iter()
        .filter(|p| p["status"] == "sold")
        .cloned()
        .collect::<Vec<_>>());
    let mut got = ids(found.body.as_array().unwrap());
    got.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);

    // Inventory agrees with the rows.
    let inventory = client.get("/api/v1/store/inventory").await.unwrap();
    inventory.assert_status(200);
    let count = |s: &str| all.iter().filter(|p| p["status"] == s).count() as i64;
    assert_eq!(
        inventory.body["available"].as_i64(),
        Some(count("available"))
    );
    assert_eq!(inventory.body["sold"].as_i64(), Some(count("sold")));
    let stock: i64 = all.iter().map(|p| p["stock"].as_i64().unwrap()).sum();
    assert_eq!(inventory.body["totalStock"].as_i64(), Some(stock));
}

#[tokio::test]
async fn bad_query_parameters_get_400_in_the_error_format() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let user = signed_up(&client, "picky").await;
    let client = client.token(&user.tokens.access_token);
    for query in [
        "limit=0",
        "limit=10000",
        "limit=-5",
        "status=flying",
        "minPrice=abc",
        "sort=weight",
        "order=sideways",
        "offset=-1",
        "cursor=not-a-cursor",
    ] {
        let resp = client.get(&format!("/api/v1/pets?{query}")).await.unwrap();
        assert_eq!(resp.status, 400, "{query}: {}", resp.text);
        assert_error(&resp, 400);
    }
    // A cursor carries its sort: given with another, it resumes its own (tests/api/contract.rs).
    create_pet(
        &client.clone().token(admin(&cluster).await.access_token),
        "A",
        "1",
        1,
    )
    .await;
    create_pet(
        &client.clone().token(admin(&cluster).await.access_token),
        "B",
        "2",
        1,
    )
    .await;
    let page = client.get("/api/v1/pets?sort=price&limit=1").await.unwrap();
    let cursor = page.body["nextCursor"].as_str().unwrap();
    let next = client
        .get(&format!("/api/v1/pets?sort=name&limit=1&cursor={cursor}"))
        .await
        .unwrap();
    next.assert_status(200);
    assert_eq!(next.body["items"][0]["name"], "B");
    for path in [
        "/api/v1/pets/abc",
        "/api/v1/pets/1.5",
        "/api/v1/store/orders/xyz",
    ] {
        assert_error(&client.get(path).await.unwrap(), 400);
    }
    assert_error(&client.get("/api/v1/pets/987654321").await.unwrap(), 404);
    assert_error(&client.get("/api/v1/pets/findByStatus").await.unwrap(), 400);
}

#[tokio::test]
async fn only_admins_write_pets_and_stale_if_match_gets_412() {
    let cluster = TestCluster::start(2).await;
    let user = signed_up(&cluster.client(0), "customer").await;
    let as_user = cluster.client(0).token(&user.tokens.access_token);
    let token = admin(&cluster).await.access_token;
    let (admin_a, admin_b) = (
        cluster.client(0).token(&token),
        cluster.client(1).token(&token),
    );

    let body = json!({"name": "Rex", "category": "dogs", "price": "10.00", "stock": 1});
    assert_error(&as_user.post("/api/v1/pets", &body).await.unwrap(), 403);
    assert_error(
        &cluster.client(0).post("/api/v1/pets", &body).await.unwrap(),
        401,
    );

    let created = admin_a.post("/api/v1/pets", &body).await.unwrap();
    created.assert_status(201);
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.body["price"], "10");
    let path = format!("/api/v1/pets/{}", created.body["id"]);

    assert_error(&as_user.put(&path, &body).await.unwrap(), 403);
    assert_error(&as_user.delete(&path).await.unwrap(), 403);
    let patch = as_user
        .request(reqwest::Method::PATCH, &path)
        .json(&json!({"stock": 5}));
    assert_error(&as_user.send(patch).await.unwrap(), 403);

    // Two admins both start from version 1; the second write must not silently win.
    let first = admin_a
        .send(
            admin_a
                .request(reqwest::Method::PATCH, &path)
                .header("if-match", "\"1\"")
                .json(&json!({"price": "12.50"})),
        )
        .await
        .unwrap();
    first.assert_status(200);
    assert_eq!(first.header("etag"), Some("\"2\""));
    let second = admin_b
        .send(
            admin_b
                .request(reqwest::Method::PATCH, &path)
                .header("if-match", "\"1\"")
                .json(&json!({"price": "99.00"})),
        )
        .await
        .unwrap();
    assert_error(&second, 412);
    let stale_put = admin_b
        .send(
            admin_b
                .request(reqwest::Method::PUT, &path)
                .header("if-match", "\"1\"")
                .json(&body),
        )
        .await
        .unwrap();
    assert_error(&stale_put, 412);
    let stale_delete = admin_b
        .send(
            admin_b
                .request(reqwest::Method::DELETE, &path)
                .header("if-match", "\"1\""),
        )
        .await
        .unwrap();
    assert_error(&stale_delete, 412);
    let now = admin_b.get(&path).await.unwrap();
    assert_eq!(now.body["price"], "12.5");

    // Bad bodies.
    for bad in [
        json!({"name": "", "category": "dogs", "price": "1"}),
        json!({"name": "X", "category": "dogs", "price": "-1"}),
        json!({"name": "X", "category": "dogs", "price": "1.234"}),
        json!({"name": "X", "category": "dogs", "price": "1", "stock": -1}),
        json!({"name": "X", "category": "dogs", "price": "1", "status": "flying"}),
        json!({"name": "X", "category": "dogs"}),
    ] {
        let resp = admin_a.post("/api/v1/pets", &bad).await.unwrap();
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
    }

    let current = admin_a
        .send(
            admin_a
                .request(reqwest::Method::DELETE, &path)
                .header("if-match", "\"2\""),
        )
        .await
        .unwrap();
    current.assert_status(204);
    assert_error(&admin_b.get(&path).await.unwrap(), 404);
}

#[tokio::test]
async fn every_node_serves_the_last_acknowledged_write() {
    let cluster = TestCluster::start(3).await;
    let token = admin(&cluster).await.access_token;
    let clients: Vec<ApiClient> = (0..3).map(|i| cluster.client(i).token(&token)).collect();
    let pet = create_pet(&clients[0], "Fresh", "1.00", 1).await;
    let path = format!("/api/v1/pets/{}", pet["id"]);
    // Warm every node's view (and the shared cache) with version 1.
    for client in &clients {
        client.get(&path).await.unwrap().assert_status(200);
    }
    for round in 0..15 {
        let writer = &clients[round % 3];
        // Prices are exact decimals; the API writes them normalised ("2", "2.5").
        let price = format!("{}.5", round + 2);
        let written = writer
            .send(
                writer
                    .request(reqwest::Method::PATCH, &path)
                    .json(&json!({"price": price})),
            )
            .await
            .unwrap();
        written.assert_status(200);
        for reader in &clients {
            let read = reader.get(&path).await.unwrap();
            assert_eq!(
                read.body["price"],
                price.as_str(),
                "round {round}: a node served a stale pet"
            );
            assert_eq!(read.body["version"], written.body["version"]);
        }
    }
    clients[1].delete(&path).await.unwrap().assert_status(204);
    for reader in &clients {
        assert_error(&reader.get(&path).await.unwrap(), 404);
    }
}

#[tokio::test]
async fn with_redis_down_reads_and_writes_go_to_postgresql() {
    let mut cluster = TestCluster::start(1).await;
    // A node with a Redis of its own, which the test then stops.
    let redis = petmesh_tests::RedisServer::start().await.unwrap();
    let node = cluster
        .spawn_node(|config| config.env("REDIS_URL", redis.url()))
        .await
        .unwrap();
    let client = ApiClient::new(node.base_url());
    let token = client
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token;
    let client = client.token(token);
    let pet = create_pet(&client, "Resilient", "8.00", 4).await;
    let path = format!("/api/v1/pets/{}", pet["id"]);
    client.get(&path).await.unwrap().assert_status(200);

    drop(redis);

    let read = client.get(&path).await.unwrap();
    read.assert_status(200);
    assert_eq!(read.body["name"], "Resilient");
    client
        .get("/api/v1/pets?name=resil")
        .await
        .unwrap()
        .assert_status(200);
    let patched = client
        .send(
            client
                .request(reqwest::Method::PATCH, &path)
                .json(&json!({"price": "9"})),
        )
        .await
        .unwrap();
    patched.assert_status(200);
    assert_eq!(client.get(&path).await.unwrap().body["price"], "9");
    client
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet["id"], "quantity": 1, "paymentToken": "tok_ok"}),
        )
        .await
        .unwrap()
        .assert_status(201);
    // What needs Redis says so; readiness reports the dependency down.
    assert_error(
        &client
            .post("/api/v1/auth/logout", &json!({}))
            .await
            .unwrap(),
        503,
    );
    assert_eq!(client.get("/health/ready").await.unwrap().status, 503);
    let metrics = client.get("/metrics").await.unwrap().text;
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("petmesh_node_revocation_checks_skipped_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(skipped >= 1.0, "{metrics}");
}
