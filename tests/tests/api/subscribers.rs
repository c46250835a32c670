//! `/api/v1/subscribers`: custom WebSocket events, admins only. Upsert by `eventListener`,
//! the reads, renames and deletes, validation (also in the table's check), authorisation, and
//! one database behind every node.

use petmesh_tests::{assert_error, ApiClient, TestCluster, TestResponse};
use serde_json::{json, Value};

use crate::helpers::{admin, signed_up};

const BASE: &str = "/api/v1/subscribers";

/// A client for node `index` holding the bootstrap admin's token.
async fn as_admin(cluster: &TestCluster, index: usize) -> ApiClient {
    cluster
        .client(index)
        .token(admin(cluster).await.access_token)
}

/// `POST /api/v1/subscribers` with `body`, asserting `status`; returns the response.
async fn upsert(client: &ApiClient, body: &Value, status: u16) -> TestResponse {
    let resp = client.post(BASE, body).await.unwrap();
    resp.assert_status(status);
    resp
}

/// Registers `name` (expecting a new subscriber) and returns the subscriber's JSON.
async fn create(client: &ApiClient, name: &str) -> Value {
    let resp = upsert(client, &json!({ "eventListener": name }), 201).await;
    resp.body["subscriber"].clone()
}

fn event_listeners(page: &TestResponse) -> Vec<&str> {
    page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["eventListener"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn post_creates_then_replaces_the_subscriber_with_the_same_event_listener() {
    let cluster = TestCluster::start(1).await;
    let admin = as_admin(&cluster, 0).await;

    let first = upsert(&admin, &json!({"eventListener": "chat.message"}), 201).await;
    assert_eq!(first.body["created"], true);
    let created = &first.body["subscriber"];
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "createdAt",
            "description",
            "eventListener",
            "id",
            "replicable",
            "updatedAt"
        ]
    );
    assert_eq!(created["eventListener"], "chat.message");
    assert_eq!(created["replicable"], false, "replicable defaults to false");
    assert!(
        created["description"].is_null(),
        "no description is null: {}",
        first.text
    );
    let id = created["id"].as_str().unwrap();
    uuid::Uuid::parse_str(id).unwrap();

    let second = upsert(
        &admin,
        &json!({"eventListener": "chat.message", "replicable": true, "description": "room chat"}),
        200,
    )
    .await;
    assert_eq!(second.body["created"], false);
    let replaced = &second.body["subscriber"];
    assert_eq!(replaced["id"], id, "the same subscriber, replaced");
    assert_eq!(replaced["replicable"], true);
    assert_eq!(replaced["description"], "room chat");
    assert_eq!(replaced["createdAt"], created["createdAt"]);
    assert_ne!(replaced["updatedAt"], created["updatedAt"]);

    // A replace is complete: what the body leaves out goes back to its default.
    let third = upsert(&admin, &json!({"eventListener": "chat.message"}), 200).await;
    assert_eq!(third.body["created"], false);
    assert_eq!(third.body["subscriber"]["id"], id);
    assert_eq!(third.body["subscriber"]["replicable"], false);
    assert!(third.body["subscriber"]["description"].is_null());

    let stored: i64 = sqlx::query_scalar("select count(*) from subscriber")
        .fetch_one(cluster.db())
        .await
        .unwrap();
    assert_eq!(stored, 1, "three upserts of one name store one row");
    let other = upsert(&admin, &json!({"eventListener": "chat.typing"}), 201).await;
    assert_eq!(other.body["created"], true);
    assert_ne!(other.body["subscriber"]["id"], id);
}

#[tokio::test]
async fn admins_list_read_rename_and_delete_subscribers() {
    let cluster = TestCluster::start(1).await;
    let admin = as_admin(&cluster, 0).await;
    for name in ["game:move", "Alpha", "chat", "beta-1", "game:end"] {
        create(&admin, name).await;
    }

    // By eventListener, in PostgreSQL's order for these names; paged with the total.
    let expected: Vec<String> =
        sqlx::query_scalar("select event_listener from subscriber order by event_listener")
            .fetch_all(cluster.db())
            .await
            .unwrap();
    assert_eq!(expected.len(), 5);
    let all = admin.get(BASE).await.unwrap();
    all.assert_status(200);
    assert_eq!(event_listeners(&all), expected);
    assert_eq!(
        (
            all.body["total"].as_i64(),
            all.body["limit"].as_i64(),
            all.body["offset"].as_i64()
        ),
        (Some(5), Some(20), Some(0))
    );
    let page = admin
        .get(&format!("{BASE}?limit=2&offset=2"))
        .await
        .unwrap();
    page.assert_status(200);
    assert_eq!(event_listeners(&page), expected[2..4]);
    assert_eq!(
        (
            page.body["total"].as_i64(),
            page.body["limit"].as_i64(),
            page.body["offset"].as_i64()
        ),
        (Some(5), Some(2), Some(2))
    );
    let past_the_end = admin.get(&format!("{BASE}?offset=10")).await.unwrap();
    assert!(event_listeners(&past_the_end).is_empty());
    assert_eq!(past_the_end.body["total"], 5);

    // By id and by event name.
    let chat = admin.get(&format!("{BASE}/event/chat")).await.unwrap();
    chat.assert_status(200);
    assert_eq!(chat.body["eventListener"], "chat");
    let path = format!("{BASE}/{}", chat.body["id"].as_str().unwrap());
    let by_id = admin.get(&path).await.unwrap();
    by_id.assert_status(200);
    assert_eq!(by_id.body, chat.body);
    assert_error(
        &admin.get(&format!("{BASE}/event/unknown")).await.unwrap(),
        404,
    );

    // PUT replaces everything, the name included.
    let renamed = admin
        .put(
            &path,
            &json!({"eventListener": "chat:v2", "replicable": true, "description": "v2"}),
        )
        .await
        .unwrap();
    renamed.assert_status(200);
    assert_eq!(renamed.body["id"], chat.body["id"]);
    assert_eq!(renamed.body["eventListener"], "chat:v2");
    assert_eq!(renamed.body["replicable"], true);
    assert_eq!(renamed.body["description"], "v2");
    assert_error(
        &admin.get(&format!("{BASE}/event/chat")).await.unwrap(),
        404,
    );
    let by_new_name = admin.get(&format!("{BASE}/event/chat:v2")).await.unwrap();
    by_new_name.assert_status(200);
    assert_eq!(by_new_name.body, renamed.body);
    // Keeping its own name is no conflict; a missing description is cleared.
    let same_name = admin
        .put(&path, &json!({"eventListener": "chat:v2"}))
        .await
        .unwrap();
    same_name.assert_status(200);
    assert!(same_name.body["description"].is_null());
    assert_eq!(same_name.body["replicable"], false);

    // Unknown ids.
    let missing = format!("{BASE}/{}", uuid::Uuid::new_v4());
    assert_error(&admin.get(&missing).await.unwrap(), 404);
    assert_error(
        &admin
            .put(&missing, &json!({"eventListener": "ghost"}))
            .await
            .unwrap(),
        404,
    );
    assert_error(&admin.delete(&missing).await.unwrap(), 404);
    assert_error(
        &admin.get(&format!("{BASE}/event/ghost")).await.unwrap(),
        404,
    );

    // Delete one, then all.
    admin.delete(&path).await.unwrap().assert_status(204);
    assert_error(&admin.get(&path).await.unwrap(), 404);
    assert_error(&admin.delete(&path).await.unwrap(), 404);
    assert_eq!(admin.get(BASE).await.unwrap().body["total"], 4);
    let cleared = admin.delete(BASE).await.unwrap();
    cleared.assert_status(200);
    assert_eq!(cleared.body, json!({"deleted": 4}));
    let empty = admin.get(BASE).await.unwrap();
    assert!(event_listeners(&empty).is_empty());
    assert_eq!(empty.body["total"], 0);
    let again = admin.delete(BASE).await.unwrap();
    again.assert_status(200);
    assert_eq!(again.body, json!({"deleted": 0}));
}

#[tokio::test]
async fn renaming_onto_a_taken_event_listener_gets_409_and_changes_nothing() {
    let cluster = TestCluster::start(1).await;
    let admin = as_admin(&cluster, 0).await;
    let first = create(&admin, "first").await;
    create(&admin, "second").await;
    let path = format!("{BASE}/{}", first["id"].as_str().unwrap());

    let clash = admin
        .put(
            &path,
            &json!({"eventListener": "second", "replicable": true, "description": "x"}),
        )
        .await
        .unwrap();
    assert_error(&clash, 409);
    assert!(
        clash.body["message"]
            .as_str()
            .unwrap()
            .contains("eventListener"),
        "{}",
        clash.text
    );

    let unchanged = admin.get(&path).await.unwrap();
    unchanged.assert_status(200);
    assert_eq!(unchanged.body, first);
    let second = admin.get(&format!("{BASE}/event/second")).await.unwrap();
    assert_ne!(second.body["id"], first["id"]);
    assert_eq!(second.body["replicable"], false);
}

#[tokio::test]
async fn bad_event_listeners_and_descriptions_get_400_naming_the_field() {
    let cluster = TestCluster::start(1).await;
    let admin = as_admin(&cluster, 0).await;
    let existing = create(&admin, "existing").await;
    let path = format!("{BASE}/{}", existing["id"].as_str().unwrap());

    let reserved = [
        "ping",
        "subscribe",
        "unsubscribe",
        "auth:login",
        "room:message",
        "system:reconnect",
        "pet:created",
        "order:updated",
        "pets.list",
        "orders.create",
        "inventory.get",
    ];
    let too_long = "a".repeat(101);
    let malformed = [
        "",
        "1chat",
        "_chat",
        "-chat",
        "chat room",
        "chat/room",
        "chat!",
        "chät",
        too_long.as_str(),
    ];
    for name in reserved.iter().chain(&malformed) {
        for resp in [
            admin
                .post(BASE, &json!({ "eventListener": name }))
                .await
                .unwrap(),
            admin
                .put(&path, &json!({ "eventListener": name }))
                .await
                .unwrap(),
        ] {
            assert_eq!(resp.status, 400, "{name:?}: {}", resp.text);
            assert_error(&resp, 400);
            let message = resp.body["message"].as_str().unwrap();
            assert!(message.contains("eventListener"), "{name:?}: {message}");
        }
    }
    for name in reserved {
        let resp = admin
            .post(BASE, &json!({ "eventListener": name }))
            .await
            .unwrap();
        assert!(
            resp.body["message"].as_str().unwrap().contains("reserved"),
            "{name}: {}",
            resp.text
        );
    }

    let long_description = json!({"eventListener": "chat", "description": "é".repeat(501)});
    let resp = admin.post(BASE, &long_description).await.unwrap();
    assert_error(&resp, 400);
    let message = resp.body["message"].as_str().unwrap();
    assert!(message.contains("description"), "{message}");
    // Wrong types and missing fields (poem's messages for these name the type, not the field).
    for body in [
        json!({"eventListener": "chat", "description": ["not", "text"]}),
        json!({}),
        json!({"eventListener": 7}),
        json!({"eventListener": "chat", "replicable": "yes"}),
    ] {
        assert_error(&admin.post(BASE, &body).await.unwrap(), 400);
    }

    // Nothing was stored, and the subscriber PUT tried to change is as it was.
    let listed = admin.get(BASE).await.unwrap();
    assert_eq!(event_listeners(&listed), ["existing"]);
    assert_eq!(listed.body["items"][0], existing);

    // The limits themselves are allowed, and names that merely resemble reserved ones.
    let longest = "b".repeat(100);
    let edge = upsert(
        &admin,
        &json!({"eventListener": longest, "description": "é".repeat(500)}),
        201,
    )
    .await;
    assert_eq!(edge.body["subscriber"]["eventListener"], longest.as_str());
    for name in ["pings", "pet", "pets", "Ping", "petshop:open", "a.b:c-d_e"] {
        create(&admin, name).await;
    }

    // Bad paths and query parameters.
    for path in [
        format!("{BASE}/not-a-uuid"),
        format!("{BASE}/event/{}", "c".repeat(101)),
        format!("{BASE}/event/1chat"),
        format!("{BASE}?limit=0"),
        format!("{BASE}?limit=101"),
        format!("{BASE}?offset=-1"),
    ] {
        let resp = admin.get(&path).await.unwrap();
        assert_eq!(resp.status, 400, "{path}: {}", resp.text);
        assert_error(&resp, 400);
    }

    // The table refuses what the API refuses, whoever writes to it.
    for name in [
        "ping",
        "auth:login",
        "pets.list",
        "1chat",
        too_long.as_str(),
    ] {
        let inserted = sqlx::query("insert into subscriber (event_listener) values ($1)")
            .bind(name)
            .execute(cluster.db())
            .await;
        let err = inserted.expect_err(name);
        let constraint = err.as_database_error().and_then(|e| e.constraint());
        assert_eq!(
            constraint,
            Some("subscriber_event_listener_check"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn only_admins_manage_subscribers() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let admin = as_admin(&cluster, 0).await;
    let kept = create(&admin, "kept").await;
    let user = signed_up(&client, "nadia").await;
    let as_user = client.clone().token(&user.tokens.access_token);
    let forged = client.clone().token("not.a.token");

    let item = format!("{BASE}/{}", kept["id"].as_str().unwrap());
    let body = json!({"eventListener": "kept", "replicable": true});
    for (caller, expected) in [(&client, 401), (&forged, 401), (&as_user, 403)] {
        for resp in [
            caller.post(BASE, &body).await.unwrap(),
            caller.get(BASE).await.unwrap(),
            caller.delete(BASE).await.unwrap(),
            caller.get(&item).await.unwrap(),
            caller.put(&item, &body).await.unwrap(),
            caller.delete(&item).await.unwrap(),
            caller.get(&format!("{BASE}/event/kept")).await.unwrap(),
        ] {
            assert_error(&resp, expected);
            if expected == 401 {
                assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
            }
        }
    }

    let after = admin.get(BASE).await.unwrap();
    assert_eq!(after.body["total"], 1, "refused calls changed nothing");
    assert_eq!(after.body["items"][0], kept);
}

#[tokio::test]
async fn a_subscriber_written_through_one_node_is_read_through_another() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (as_admin(&cluster, 0).await, as_admin(&cluster, 1).await);

    let created = upsert(
        &a,
        &json!({"eventListener": "match:score", "replicable": true}),
        201,
    )
    .await
    .body["subscriber"]
        .clone();
    let by_event = b.get(&format!("{BASE}/event/match:score")).await.unwrap();
    by_event.assert_status(200);
    assert_eq!(by_event.body, created);
    let path = format!("{BASE}/{}", created["id"].as_str().unwrap());
    assert_eq!(b.get(&path).await.unwrap().body, created);
    assert_eq!(
        event_listeners(&b.get(BASE).await.unwrap()),
        ["match:score"]
    );

    // Replaced through B (upsert, then PUT), read through A.
    let replaced = upsert(
        &b,
        &json!({"eventListener": "match:score", "description": "goals"}),
        200,
    )
    .await;
    assert_eq!(replaced.body["subscriber"]["id"], created["id"]);
    let on_a = a.get(&path).await.unwrap();
    assert_eq!(on_a.body["description"], "goals");
    assert_eq!(on_a.body["replicable"], false);
    b.put(&path, &json!({"eventListener": "match:final"}))
        .await
        .unwrap()
        .assert_status(200);
    assert_error(
        &a.get(&format!("{BASE}/event/match:score")).await.unwrap(),
        404,
    );
    a.get(&format!("{BASE}/event/match:final"))
        .await
        .unwrap()
        .assert_status(200);

    a.delete(&path).await.unwrap().assert_status(204);
    assert_error(&b.get(&path).await.unwrap(), 404);
}

#[tokio::test]
async fn openapi_documents_every_subscriber_operation_and_its_statuses() {
    let cluster = TestCluster::start(1).await;
    let spec = cluster.client(0).get("/openapi.json").await.unwrap();
    spec.assert_status(200);
    let paths = &spec.body["paths"];
    for (path, method, statuses) in [
        (BASE, "post", &["200", "201", "400", "401", "403"][..]),
        (BASE, "get", &["200", "400", "401", "403"]),
        (BASE, "delete", &["200", "401", "403"]),
        (
            "/api/v1/subscribers/{id}",
            "get",
            &["200", "401", "403", "404"],
        ),
        (
            "/api/v1/subscribers/{id}",
            "put",
            &["200", "400", "401", "403", "404", "409"],
        ),
        (
            "/api/v1/subscribers/{id}",
            "delete",
            &["204", "401", "403", "404"],
        ),
        (
            "/api/v1/subscribers/event/{eventListener}",
            "get",
            &["200", "400", "401", "403", "404"],
        ),
    ] {
        let operation = &paths[path][method];
        assert_eq!(operation["tags"], json!(["Subscribers"]), "{method} {path}");
        for status in statuses {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} does not document {status}"
            );
        }
    }
    let subscriber = &spec.body["components"]["schemas"]["Subscriber"];
    assert_eq!(subscriber["properties"]["description"]["nullable"], true);
    let mut required: Vec<&str> = subscriber["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        [
            "createdAt",
            "eventListener",
            "id",
            "replicable",
            "updatedAt"
        ]
    );
}
