//! The OpenAPI document and the server agree (issue 12, item 7): what the document allows is
//! accepted, what it forbids is refused with 400 in the common error body, for each rule the
//! schema fuzzing (scripts/check-openapi) found them disagreeing on, and the last active admin
//! cannot be demoted, disabled or deleted.

use petmesh_tests::{assert_error, ApiClient, TestCluster, TestResponse, WsClient};
use reqwest::{header::HeaderValue, Method};
use serde_json::{json, Value};

use crate::helpers::{admin, create_pet, signed_up, PASSWORD};

async fn patch(client: &ApiClient, path: &str, if_match: Option<HeaderValue>) -> TestResponse {
    let mut request = client
        .request(Method::PATCH, path)
        .json(&json!({"stock": 3}));
    if let Some(value) = if_match {
        request = request.header("if-match", value);
    }
    client.send(request).await.unwrap()
}

#[tokio::test]
async fn prices_are_decimal_strings_or_json_numbers_rounded_to_the_cent() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.client(0).token(admin(&cluster).await.access_token);
    let priced = |price: Value| json!({"name": "Rex", "category": "dogs", "price": price});
    for (price, stored) in [
        (json!("129.99"), "129.99"),
        (json!("0"), "0"),
        (json!("9999999999.99"), "9999999999.99"),
        (json!(129.99), "129.99"),
        (json!(12), "12"),
        (json!(0.125), "0.12"),
        (json!(0.135), "0.14"),
        (json!(1e-7), "0"),
    ] {
        let created = admin
            .post("/api/v1/pets", &priced(price.clone()))
            .await
            .unwrap();
        created.assert_status(201);
        assert_eq!(created.body["price"], stored, "{price}");
    }
    for price in [
        json!(""),
        json!("12.345"),
        json!("-1"),
        json!("1e3"),
        json!(" 12"),
        json!("10000000000"),
        json!(-0.01),
        json!(1e10),
        json!(true),
        json!(null),
        json!({"amount": 1}),
    ] {
        let refused = admin
            .post("/api/v1/pets", &priced(price.clone()))
            .await
            .unwrap();
        assert_eq!(refused.status, 400, "{price}: {}", refused.text);
        assert_error(&refused, 400);
    }

    let spec = cluster.client(0).get("/openapi.json").await.unwrap();
    let schema = &spec.body["components"]["schemas"]["Price"];
    assert_eq!(schema["anyOf"][0]["type"], "string");
    assert_eq!(
        schema["anyOf"][0]["pattern"],
        r"^[0-9]{1,10}(\.[0-9]{1,2})?$"
    );
    assert_eq!(schema["anyOf"][1]["type"], "number");
    let price = &spec.body["components"]["schemas"]["PetInput"]["properties"]["price"];
    assert_eq!(
        price["allOf"][0]["$ref"], "#/components/schemas/Price",
        "{price}"
    );
}

#[tokio::test]
async fn strings_refuse_numbers_and_booleans_over_rest_and_websocket() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let admin = cluster.client(0).token(&token);
    for (path, body, field) in [
        (
            "/api/v1/subscribers",
            json!({"eventListener": "chat:typing", "description": false}),
            "body.description must be a string",
        ),
        (
            "/api/v1/pets",
            json!({"name": 5, "category": "dogs", "price": "1"}),
            "body.name must be a string",
        ),
        (
            "/api/v1/pets",
            json!({"name": "Rex", "category": "dogs", "price": "1", "tags": [1]}),
            "body.tags[0] must be a string",
        ),
        (
            "/api/v1/auth/register",
            json!({"username": "num", "email": "num@example.com", "password": PASSWORD, "phone": 5550100}),
            "body.phone must be a string",
        ),
    ] {
        let refused = admin.post(path, &body).await.unwrap();
        assert_error(&refused, 400);
        assert!(
            refused.body["message"].as_str().unwrap().contains(field),
            "{body}: {}",
            refused.text
        );
    }
    let subscribers = admin.get("/api/v1/subscribers").await.unwrap();
    assert_eq!(subscribers.body["total"], 0, "nothing was stored");

    // The WebSocket resource actions parse their payloads by the same rule.
    let mut ws = WsClient::login(&cluster.node(0).base_url(), &token)
        .await
        .unwrap();
    let refused = ws
        .request(
            "pets.create",
            json!({"name": 5, "category": "dogs", "price": "1"}),
        )
        .await
        .unwrap();
    assert_eq!(refused.error_code(), "VALIDATION_ERROR");
    assert!(
        refused.frame["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("payload.name must be a string"),
        "{}",
        refused.frame
    );
    let created = ws
        .request(
            "pets.create",
            json!({"name": "Rex", "category": "dogs", "price": 10.5, "tags": null}),
        )
        .await
        .unwrap();
    assert_eq!(created.ok()["price"], "10.5");
}

#[tokio::test]
async fn null_is_the_same_as_absent_for_optional_fields_and_refused_for_required_ones() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let admin = client.clone().token(admin(&cluster).await.access_token);

    let registered = client
        .post(
            "/api/v1/auth/register",
            &json!({"username": "nell", "email": "nell@example.com", "password": PASSWORD,
                    "firstName": null, "phone": null}),
        )
        .await
        .unwrap();
    registered.assert_status(201);
    let path = format!("/api/v1/users/{}", registered.body["id"].as_str().unwrap());
    let changed = admin
        .put(
            &path,
            &json!({"email": null, "firstName": "Nell", "role": null}),
        )
        .await
        .unwrap();
    changed.assert_status(200);
    assert_eq!(changed.body["email"], "nell@example.com");
    assert_eq!(changed.body["firstName"], "Nell");
    assert_eq!(changed.body["role"], "user");

    let pet = create_pet(&admin, "Nullable", "5", 1).await;
    let pet_path = format!("/api/v1/pets/{}", pet["id"]);
    let patched = admin
        .send(
            admin
                .request(Method::PATCH, &pet_path)
                .json(&json!({"name": null, "price": null, "stock": 4})),
        )
        .await
        .unwrap();
    patched.assert_status(200);
    assert_eq!(
        (
            &patched.body["name"],
            &patched.body["price"],
            &patched.body["stock"]
        ),
        (&json!("Nullable"), &json!("5"), &json!(4))
    );

    for body in [
        json!({"name": null, "category": "dogs", "price": "1"}),
        json!({"name": "Rex", "category": "dogs", "price": "1", "tags": [null]}),
    ] {
        assert_error(&admin.post("/api/v1/pets", &body).await.unwrap(), 400);
    }

    let spec = client.get("/openapi.json").await.unwrap();
    let properties = &spec.body["components"]["schemas"]["UpdateUserRequest"]["properties"];
    for field in [
        "email",
        "password",
        "firstName",
        "lastName",
        "phone",
        "role",
        "status",
    ] {
        assert_eq!(properties[field]["nullable"], true, "{field}");
    }
    let pet_input = &spec.body["components"]["schemas"]["PetInput"]["properties"];
    assert!(pet_input["name"].get("nullable").is_none());
}

#[tokio::test]
async fn login_takes_exactly_one_of_username_and_email_as_the_document_says() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    signed_up(&client, "olga").await;
    let login = |body: Value| {
        let client = client.clone();
        async move { client.post("/api/v1/auth/login", &body).await.unwrap() }
    };
    login(json!({"username": "olga", "password": PASSWORD}))
        .await
        .assert_status(200);
    login(json!({"email": "olga@example.com", "password": PASSWORD}))
        .await
        .assert_status(200);
    login(json!({"username": null, "email": "olga@example.com", "password": PASSWORD}))
        .await
        .assert_status(200);
    for body in [
        json!({"username": "olga", "email": "olga@example.com", "password": PASSWORD}),
        json!({"password": PASSWORD}),
        json!({"username": null, "email": null, "password": PASSWORD}),
    ] {
        assert_error(&login(body).await, 400);
    }

    let spec = client.get("/openapi.json").await.unwrap();
    let one_of = &spec.body["components"]["schemas"]["LoginRequest"]["oneOf"];
    assert_eq!(one_of[0]["required"], json!(["username"]));
    assert_eq!(one_of[1]["required"], json!(["email"]));
}

#[tokio::test]
async fn if_match_is_one_tag_or_star_or_empty_and_anything_else_is_refused() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.client(0).token(admin(&cluster).await.access_token);
    let pet = create_pet(&admin, "Tag", "1", 1).await;
    let path = format!("/api/v1/pets/{}", pet["id"]);

    // Empty is an empty list of tags: no precondition, as if absent.
    let empty = patch(&admin, &path, Some(HeaderValue::from_static(""))).await;
    empty.assert_status(200);
    let etag = empty.header("etag").unwrap().to_owned();
    patch(&admin, &path, Some(HeaderValue::from_static("*")))
        .await
        .assert_status(200);
    // Well-formed tags that name no current version: the precondition fails.
    for stale in [etag.as_str(), "\"abc\"", "W/\"1\"", "\"99999999999\""] {
        let resp = patch(&admin, &path, Some(HeaderValue::from_str(stale).unwrap())).await;
        assert_error(&resp, 412);
    }
    // Malformed values: refused as the document's pattern refuses them, even those poem would
    // otherwise read as no header at all.
    for malformed in [
        HeaderValue::from_static("abc"),
        HeaderValue::from_static("\"1\", \"2\""),
        HeaderValue::from_bytes(b"\"\xc2\x84\"").unwrap(),
        HeaderValue::from_bytes(b"\xc2\x84").unwrap(),
    ] {
        let resp = patch(&admin, &path, Some(malformed.clone())).await;
        assert_eq!(resp.status, 400, "{malformed:?}: {}", resp.text);
        assert_error(&resp, 400);
    }
    let now = admin.get(&path).await.unwrap();
    assert_eq!(
        now.header("etag"),
        Some("\"3\""),
        "only the two good writes"
    );
}

#[tokio::test]
async fn an_empty_idempotency_key_is_none_and_a_non_ascii_one_is_refused() {
    let cluster = TestCluster::start(1).await;
    let admin_client = cluster.client(0).token(admin(&cluster).await.access_token);
    let pet = create_pet(&admin_client, "Keyed", "3", 10).await;
    let user = signed_up(&cluster.client(0), "kim").await;
    let buyer = cluster.client(0).token(&user.tokens.access_token);
    let order = |key: HeaderValue| {
        buyer
            .request(Method::POST, "/api/v1/store/orders")
            .header("idempotency-key", key)
            .json(&json!({"petId": pet["id"], "quantity": 1, "paymentToken": "tok_ok"}))
    };
    let first = buyer
        .send(order(HeaderValue::from_static("")))
        .await
        .unwrap();
    first.assert_status(201);
    let second = buyer
        .send(order(HeaderValue::from_static("")))
        .await
        .unwrap();
    second.assert_status(201);
    assert_ne!(
        first.body["id"], second.body["id"],
        "an empty key is no key"
    );
    let refused = buyer
        .send(order(HeaderValue::from_bytes(b"k\xc3\xa9y").unwrap()))
        .await
        .unwrap();
    assert_error(&refused, 400);
}

#[tokio::test]
async fn price_filters_and_cursors_take_exactly_what_the_document_describes() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.client(0).token(admin(&cluster).await.access_token);
    for (name, price) in [("A", "1"), ("B", "2"), ("C", "3")] {
        create_pet(&admin, name, price, 1).await;
    }
    for query in ["minPrice=", "minPrice=abc", "minPrice=1.234", "maxPrice=-1"] {
        let resp = admin.get(&format!("/api/v1/pets?{query}")).await.unwrap();
        assert_eq!(resp.status, 400, "{query}: {}", resp.text);
    }
    // An empty range is no error: nothing is in it.
    let empty = admin
        .get("/api/v1/pets?minPrice=10&maxPrice=5")
        .await
        .unwrap();
    empty.assert_status(200);
    assert_eq!(
        (
            empty.body["total"].as_i64(),
            empty.body["items"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    // A cursor carries its sort and order: given with another sort, it still resumes its own.
    let first = admin
        .get("/api/v1/pets?sort=price&order=desc&limit=1")
        .await
        .unwrap();
    assert_eq!(first.body["items"][0]["name"], "C");
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    assert!(cursor.starts_with("price:desc:"), "{cursor}");
    let next = admin
        .get(&format!(
            "/api/v1/pets?sort=name&limit=1&cursor={}",
            urlencode(&cursor)
        ))
        .await
        .unwrap();
    next.assert_status(200);
    assert_eq!(next.body["items"][0]["name"], "B");
    // An offset with a cursor skips rows after it.
    let skipped = admin
        .get(&format!(
            "/api/v1/pets?limit=1&offset=1&cursor={}",
            urlencode(&cursor)
        ))
        .await
        .unwrap();
    assert_eq!(skipped.body["items"][0]["name"], "A");
    // Any string of the documented shape is a position; others are refused.
    let handmade = admin
        .get("/api/v1/pets?cursor=price:asc:0:1.5")
        .await
        .unwrap();
    handmade.assert_status(200);
    assert_eq!(handmade.body["items"][0]["name"], "B");
    for bad in [
        "not-a-cursor",
        "price:asc:1:1.234",
        "name:asc:1:",
        "weight:asc:1:1",
    ] {
        let resp = admin
            .get(&format!("/api/v1/pets?cursor={}", urlencode(bad)))
            .await
            .unwrap();
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
    }
}

#[tokio::test]
async fn text_with_nul_is_refused_where_it_would_be_stored_and_matches_nothing_in_filters() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let admin = client.clone().token(admin(&cluster).await.access_token);
    for (path, body) in [
        (
            "/api/v1/pets",
            json!({"name": "a\u{0}b", "category": "dogs", "price": "1"}),
        ),
        (
            "/api/v1/pets",
            json!({"name": "ab", "category": "dogs", "price": "1", "tags": ["\u{0}"]}),
        ),
        (
            "/api/v1/auth/login",
            json!({"username": "a\u{0}", "password": "x"}),
        ),
        (
            "/api/v1/auth/register",
            json!({"username": "zed", "email": "zed@exa\u{0}mple.com", "password": PASSWORD}),
        ),
    ] {
        let resp = admin.post(path, &body).await.unwrap();
        assert_error(&resp, 400);
        assert!(
            resp.body["message"].as_str().unwrap().contains("pattern"),
            "{}",
            resp.text
        );
    }
    // A filter with U+0000 matches nothing, as no stored text has it.
    for query in ["name=%00", "category=a%00", "tag=%00b"] {
        let empty = admin.get(&format!("/api/v1/pets?{query}")).await.unwrap();
        empty.assert_status(200);
        assert_eq!(empty.body["total"], 0, "{query}");
    }
}

#[tokio::test]
async fn only_delivered_can_be_set_on_an_order_and_the_document_lists_only_it() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.client(0).token(admin(&cluster).await.access_token);
    let spec = admin.get("/openapi.json").await.unwrap();
    let status = &spec.body["components"]["schemas"]["StatusChange"]["properties"]["status"];
    let name = status["allOf"][0]["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(
        spec.body["components"]["schemas"][name]["enum"],
        json!(["delivered"])
    );
    let resp = admin
        .send(
            admin
                .request(Method::PATCH, "/api/v1/store/orders/1/status")
                .json(&json!({"status": "cancelled"})),
        )
        .await
        .unwrap();
    assert_error(&resp, 400);
}

#[tokio::test]
async fn the_document_links_each_resource_from_creation_to_deletion() {
    let cluster = TestCluster::start(1).await;
    let spec = cluster.client(0).get("/openapi.json").await.unwrap();
    let paths = &spec.body["paths"];
    let links = |path: &str, method: &str, status: &str| {
        paths[path][method]["responses"][status]["links"]
            .as_object()
            .map(|links| {
                let mut targets: Vec<String> = links
                    .values()
                    .map(|l| l["operationId"].as_str().unwrap().to_owned())
                    .collect();
                targets.sort();
                targets
            })
            .unwrap_or_default()
    };
    assert_eq!(
        links("/api/v1/pets", "post", "201"),
        [
            "deletePet",
            "getPet",
            "patchPet",
            "placeOrder",
            "replacePet",
            "uploadFile"
        ]
    );
    assert_eq!(
        links("/api/v1/pets/{id}/uploadImage", "post", "200"),
        ["getPetImage"]
    );
    assert_eq!(
        links("/api/v1/store/orders", "post", "201"),
        ["cancelOrder", "getOrder", "setOrderStatus"]
    );
    assert_eq!(
        links("/api/v1/subscribers", "post", "201"),
        [
            "deleteSubscriber",
            "getSubscriber",
            "getSubscriberByEventListener",
            "replaceSubscriber"
        ]
    );
    let replace = &paths["/api/v1/pets"]["post"]["responses"]["201"]["links"]["ReplacePet"];
    assert_eq!(replace["parameters"]["If-Match"], "$response.header.ETag");
    assert_eq!(
        paths["/api/v1/pets/{id}"]["put"]["operationId"],
        "replacePet"
    );
    // Swagger UI shows the same document.
    let docs = cluster.client(0).get("/documentation/").await.unwrap();
    assert!(docs.text.contains("\"placeOrder\""));
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_disabled_or_deleted() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let boss = admin(&cluster).await;
    let as_boss = client.clone().token(&boss.access_token);
    let boss_id = as_boss.get("/api/v1/auth/me").await.unwrap().body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let boss_path = format!("/api/v1/users/{boss_id}");

    for change in [
        json!({"role": "user"}),
        json!({"status": "disabled"}),
        json!({"role": "user", "status": "disabled"}),
    ] {
        let refused = as_boss.put(&boss_path, &change).await.unwrap();
        assert_error(&refused, 409);
    }
    assert_error(&as_boss.delete(&boss_path).await.unwrap(), 409);
    // Nothing changed and the session lives on.
    let me = as_boss.get("/api/v1/auth/me").await.unwrap();
    me.assert_status(200);
    assert_eq!(
        (&me.body["role"], &me.body["status"]),
        (&json!("admin"), &json!("active"))
    );
    // Changes that keep an admin are fine.
    as_boss
        .put(&boss_path, &json!({"firstName": "Boss", "role": "admin"}))
        .await
        .unwrap()
        .assert_status(200);

    // With a second admin, either may step down; then the other is the last one.
    let boss = client
        .login("admin", cluster.admin_password())
        .await
        .unwrap();
    let as_boss = client.clone().token(&boss.access_token);
    let deputy = signed_up(&client, "deputy").await;
    as_boss
        .put(
            &format!("/api/v1/users/{}", deputy.id),
            &json!({"role": "admin"}),
        )
        .await
        .unwrap()
        .assert_status(200);
    as_boss
        .put(&boss_path, &json!({"role": "user"}))
        .await
        .unwrap()
        .assert_status(200);
    let deputy_tokens = client.login("deputy", PASSWORD).await.unwrap();
    let as_deputy = client.clone().token(&deputy_tokens.access_token);
    let deputy_path = format!("/api/v1/users/{}", deputy.id);
    assert_error(
        &as_deputy
            .put(&deputy_path, &json!({"status": "disabled"}))
            .await
            .unwrap(),
        409,
    );
    assert_error(&as_deputy.delete(&deputy_path).await.unwrap(), 409);
    // A disabled admin is not an active one: the deputy stays the last.
    as_deputy
        .put(&boss_path, &json!({"role": "admin", "status": "disabled"}))
        .await
        .unwrap()
        .assert_status(200);
    assert_error(
        &as_deputy
            .put(&deputy_path, &json!({"role": "user"}))
            .await
            .unwrap(),
        409,
    );
    // Demoting, disabling or deleting a user who is not the last admin is no concern of this rule.
    as_deputy
        .delete(&boss_path)
        .await
        .unwrap()
        .assert_status(204);
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let cluster = TestCluster::start(2).await;
    let client = cluster.client(0);
    let boss = admin(&cluster).await;
    let as_boss = client.clone().token(&boss.access_token);
    let boss_id = as_boss.get("/api/v1/auth/me").await.unwrap().body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deputy = signed_up(&client, "rival").await;
    as_boss
        .put(
            &format!("/api/v1/users/{}", deputy.id),
            &json!({"role": "admin"}),
        )
        .await
        .unwrap()
        .assert_status(200);
    let deputy_tokens = cluster.client(1).login("rival", PASSWORD).await.unwrap();
    let as_deputy = cluster.client(1).token(&deputy_tokens.access_token);

    let demote = json!({"role": "user"});
    let (deputy_path, boss_path) = (
        format!("/api/v1/users/{}", deputy.id),
        format!("/api/v1/users/{boss_id}"),
    );
    let boss_demotes = as_boss.put(&deputy_path, &demote);
    let deputy_demotes = as_deputy.put(&boss_path, &demote);
    let (a, b) = tokio::join!(boss_demotes, deputy_demotes);
    let statuses = [a.unwrap().status, b.unwrap().status];
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one demotion wins: {statuses:?}"
    );
    // The other was refused as the last admin's (409), or, had the winner committed first, its
    // token was already revoked (401).
    assert!(
        statuses.iter().all(|s| [200, 401, 409].contains(s)),
        "{statuses:?}"
    );

    let mut admins = 0;
    for name in ["admin", "rival"] {
        let password = if name == "admin" {
            cluster.admin_password()
        } else {
            PASSWORD
        };
        let tokens = client.login(name, password).await.unwrap();
        let me = client
            .clone()
            .token(&tokens.access_token)
            .get("/api/v1/auth/me")
            .await
            .unwrap();
        if me.body["role"] == "admin" {
            admins += 1;
        }
    }
    assert_eq!(admins, 1);
}

/// Percent-encodes a query value (cursors hold `:` and may hold spaces).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
