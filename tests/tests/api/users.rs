//! `/api/v1/users`: who may see and change which account.

use petmesh_tests::{assert_error, TestCluster};
use serde_json::json;

use crate::helpers::{admin, refresh, signed_up, PASSWORD};

#[tokio::test]
async fn only_admins_list_users_with_pagination_and_total() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let user = signed_up(&client, "kim").await;
    for name in ["lee", "max", "ned"] {
        signed_up(&client, name).await;
    }

    let as_user = client.clone().token(&user.tokens.access_token);
    assert_error(&as_user.get("/api/v1/users").await.unwrap(), 403);
    assert_error(&client.get("/api/v1/users").await.unwrap(), 401);

    let as_admin = client.clone().token(admin(&cluster).await.access_token);
    let all = as_admin.get("/api/v1/users?limit=100").await.unwrap();
    all.assert_status(200);
    assert_eq!(all.body["total"], 5, "admin + 4 users");
    let names: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "kim", "lee", "max", "ned"], "oldest first");

    let page = as_admin
        .get("/api/v1/users?limit=2&offset=2")
        .await
        .unwrap();
    page.assert_status(200);
    let names: Vec<&str> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lee", "max"]);
    assert_eq!(
        (
            page.body["total"].as_i64(),
            page.body["limit"].as_i64(),
            page.body["offset"].as_i64()
        ),
        (Some(5), Some(2), Some(2))
    );

    for bad in [
        "limit=0",
        "limit=101",
        "limit=10000",
        "offset=-1",
        "limit=abc",
    ] {
        let resp = as_admin.get(&format!("/api/v1/users?{bad}")).await.unwrap();
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
        assert_error(&resp, 400);
    }
}

#[tokio::test]
async fn a_user_cannot_read_change_or_delete_another_user() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let olga = signed_up(&client, "olga").await;
    let paul = signed_up(&client, "paul").await;
    let as_olga = client.clone().token(&olga.tokens.access_token);
    let paul_path = format!("/api/v1/users/{}", paul.id);

    assert_error(&as_olga.get(&paul_path).await.unwrap(), 403);
    assert_error(
        &as_olga
            .put(&paul_path, &json!({"firstName": "Hacked"}))
            .await
            .unwrap(),
        403,
    );
    assert_error(&as_olga.delete(&paul_path).await.unwrap(), 403);

    let as_paul = client.clone().token(&paul.tokens.access_token);
    let paul_now = as_paul.get(&paul_path).await.unwrap();
    paul_now.assert_status(200);
    assert!(paul_now.body["firstName"].is_null(), "paul was not changed");

    assert_error(&as_olga.get("/api/v1/users/not-a-uuid").await.unwrap(), 400);
}

#[tokio::test]
async fn a_user_cannot_raise_their_own_role_or_change_their_status() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let quinn = signed_up(&client, "quinn").await;
    let as_quinn = client.clone().token(&quinn.tokens.access_token);
    let path = format!("/api/v1/users/{}", quinn.id);

    assert_error(
        &as_quinn
            .put(&path, &json!({"role": "admin"}))
            .await
            .unwrap(),
        403,
    );
    assert_error(
        &as_quinn
            .put(&path, &json!({"status": "active"}))
            .await
            .unwrap(),
        403,
    );
    assert_error(
        &as_quinn.put(&path, &json!({"role": "root"})).await.unwrap(),
        400,
    );

    let me = as_quinn.get("/api/v1/auth/me").await.unwrap();
    assert_eq!(me.body["role"], "user");
    assert_error(&as_quinn.get("/api/v1/users").await.unwrap(), 403);
}

#[tokio::test]
async fn users_manage_their_own_account() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let rita = signed_up(&client, "rita").await;
    signed_up(&client, "sam").await;
    let as_rita = client.clone().token(&rita.tokens.access_token);
    let path = format!("/api/v1/users/{}", rita.id);

    let updated = as_rita
        .put(&path, &json!({"firstName": "Rita", "phone": "+1 555 0100"}))
        .await
        .unwrap();
    updated.assert_status(200);
    assert_eq!(
        (
            updated.body["firstName"].as_str(),
            updated.body["phone"].as_str()
        ),
        (Some("Rita"), Some("+1 555 0100"))
    );
    assert_eq!(
        updated.body["email"], "rita@example.com",
        "absent fields stay"
    );

    assert_error(
        &as_rita
            .put(&path, &json!({"email": "SAM@example.com"}))
            .await
            .unwrap(),
        409,
    );
    assert_error(
        &as_rita
            .put(&path, &json!({"password": "short"}))
            .await
            .unwrap(),
        400,
    );

    as_rita.delete(&path).await.unwrap().assert_status(204);
    assert_error(&as_rita.get("/api/v1/auth/me").await.unwrap(), 401);
    assert_error(&refresh(&client, &rita.tokens.refresh_token).await, 401);
    assert!(client.login("rita", PASSWORD).await.is_err());
}

#[tokio::test]
async fn admin_changes_to_role_and_status_take_effect_on_every_node() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    let tina = signed_up(&a, "tina").await;
    let as_admin = a.clone().token(admin(&cluster).await.access_token);
    let path = format!("/api/v1/users/{}", tina.id);

    let promoted = as_admin
        .put(&path, &json!({"role": "admin"}))
        .await
        .unwrap();
    promoted.assert_status(200);
    assert_eq!(promoted.body["role"], "admin");
    // The old token says `user`: it is revoked everywhere, and a new login carries the new role.
    assert_error(
        &b.clone()
            .token(&tina.tokens.access_token)
            .get("/api/v1/auth/me")
            .await
            .unwrap(),
        401,
    );
    let fresh = b.login("tina", PASSWORD).await.unwrap();
    b.clone()
        .token(&fresh.access_token)
        .get("/api/v1/users")
        .await
        .unwrap()
        .assert_status(200);

    as_admin
        .put(&path, &json!({"status": "disabled"}))
        .await
        .unwrap()
        .assert_status(200);
    assert_error(
        &b.clone()
            .token(&fresh.access_token)
            .get("/api/v1/auth/me")
            .await
            .unwrap(),
        401,
    );
    let login = b
        .post(
            "/api/v1/auth/login",
            &json!({"username": "tina", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_error(&login, 403);

    let missing = format!("/api/v1/users/{}", uuid::Uuid::new_v4());
    assert_error(&as_admin.get(&missing).await.unwrap(), 404);
    assert_error(&as_admin.delete(&missing).await.unwrap(), 404);
    as_admin.delete(&path).await.unwrap().assert_status(204);
    assert_error(&as_admin.get(&path).await.unwrap(), 404);
}
