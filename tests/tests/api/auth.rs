//! Registration, login, sessions and token checks, across nodes.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{EncodingKey, Header};
use petmesh_tests::{assert_error, ApiClient, TestCluster};
use serde_json::json;

use crate::helpers::{admin, refresh, signed_up, PASSWORD};

#[tokio::test]
async fn session_lifecycle_is_honoured_by_another_node() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (cluster.client(0), cluster.client(1));

    let user = signed_up(&a, "alice").await;
    let me = a
        .clone()
        .token(&user.tokens.access_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap();
    me.assert_status(200);
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["id"], user.id.as_str());
    assert!(me.body.get("passwordHash").is_none() && !me.text.contains("argon2"));

    // Refresh on the other node: a new pair, the old refresh token spent.
    let pair = refresh(&b, &user.tokens.refresh_token).await;
    pair.assert_status(200);
    assert_eq!(pair.body["tokenType"], "Bearer");
    assert_eq!(pair.body["expiresIn"], 3600);
    let access = pair.body["accessToken"].as_str().unwrap().to_owned();
    let refresh_token = pair.body["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(refresh_token, user.tokens.refresh_token);
    b.clone()
        .token(&access)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);

    // Logout on node A; node B refuses the access and refresh token at once.
    let logout = a
        .clone()
        .token(&access)
        .post("/api/v1/auth/logout", &json!({}))
        .await
        .unwrap();
    logout.assert_status(204);
    let me = b
        .clone()
        .token(&access)
        .get("/api/v1/auth/me")
        .await
        .unwrap();
    assert_error(&me, 401);
    assert_eq!(me.header("www-authenticate"), Some("Bearer"));
    assert_error(&refresh(&b, &refresh_token).await, 401);
    assert_error(&refresh(&b, &user.tokens.refresh_token).await, 401);
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_its_whole_family() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    let user = signed_up(&a, "bob").await;
    let other_session = a.login("bob", PASSWORD).await.unwrap();

    let second = refresh(&a, &user.tokens.refresh_token).await;
    second.assert_status(200);
    let second_access = second.body["accessToken"].as_str().unwrap().to_owned();
    let second_refresh = second.body["refreshToken"].as_str().unwrap().to_owned();

    // The spent token comes back (a thief, or a replay): refused, and the family dies.
    assert_error(&refresh(&b, &user.tokens.refresh_token).await, 401);
    assert_error(&refresh(&b, &second_refresh).await, 401);
    assert_error(
        &b.clone()
            .token(&second_access)
            .get("/api/v1/auth/me")
            .await
            .unwrap(),
        401,
    );

    // Another session of the same user is a different family and survives.
    b.clone()
        .token(&other_session.access_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
    refresh(&b, &other_session.refresh_token)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn logout_all_ends_every_session_but_not_later_logins() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    let user = signed_up(&a, "carol").await;
    let second = b.login("carol", PASSWORD).await.unwrap();
    let bystander = signed_up(&a, "dave").await;

    a.clone()
        .token(&user.tokens.access_token)
        .post("/api/v1/auth/logout-all", &json!({}))
        .await
        .unwrap()
        .assert_status(204);

    for tokens in [&user.tokens, &second] {
        assert_error(
            &b.clone()
                .token(&tokens.access_token)
                .get("/api/v1/auth/me")
                .await
                .unwrap(),
            401,
        );
        assert_error(&refresh(&b, &tokens.refresh_token).await, 401);
    }
    // A login right after (within the same second) works: the cutoff has millisecond precision.
    let fresh = b.login("carol", PASSWORD).await.unwrap();
    a.clone()
        .token(&fresh.access_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
    // Other users are untouched.
    a.clone()
        .token(&bystander.tokens.access_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
}

#[tokio::test]
async fn login_accepts_username_or_email_and_refuses_wrong_credentials_alike() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    signed_up(&client, "erin").await;

    for body in [
        json!({"username": "erin", "password": PASSWORD}),
        json!({"username": "ERIN@example.com", "password": PASSWORD}),
        json!({"email": "erin@example.com", "password": PASSWORD}),
    ] {
        client
            .post("/api/v1/auth/login", &body)
            .await
            .unwrap()
            .assert_status(200);
    }
    let wrong_password = client
        .post(
            "/api/v1/auth/login",
            &json!({"username": "erin", "password": "not-the-password"}),
        )
        .await
        .unwrap();
    let unknown_user = client
        .post(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_error(&wrong_password, 401);
    assert_error(&unknown_user, 401);
    assert_eq!(
        wrong_password.body["message"], unknown_user.body["message"],
        "must not reveal which accounts exist"
    );
    let both = client
        .post(
            "/api/v1/auth/login",
            &json!({"username": "erin", "email": "erin@example.com", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_error(&both, 400);
}

#[derive(serde::Serialize)]
struct ForgedClaims<'a> {
    sub: &'a str,
    role: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
    iss: &'a str,
    aud: &'a str,
}

fn forge(secret: &str, sub: &str, role: &str, exp_offset_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = ForgedClaims {
        sub,
        role,
        jti: uuid::Uuid::now_v7().to_string(),
        iat: now,
        exp: now + exp_offset_secs,
        iss: "petmesh",
        aud: "petmesh",
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_unsigned_and_expired_tokens_are_rejected() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    let user = signed_up(&client, "frank").await;
    let me = |token: String| {
        let client = client.clone().token(token);
        async move { client.get("/api/v1/auth/me").await.unwrap() }
    };

    // Control: a token made with the cluster's real key works, so the rejections below are
    // about the key, the algorithm and the expiry, nothing else.
    me(forge(cluster.jwt_secret(), &user.id, "user", 600))
        .await
        .assert_status(200);

    let other_key = forge("some-other-key-some-other-key-123", &user.id, "admin", 600);
    assert_error(&me(other_key).await, 401);

    let expired = forge(cluster.jwt_secret(), &user.id, "user", -3600);
    let resp = me(expired).await;
    assert_error(&resp, 401);
    assert!(resp.body["message"].as_str().unwrap().contains("expired"));

    let valid = forge(cluster.jwt_secret(), &user.id, "admin", 600);
    let payload = valid.split('.').nth(1).unwrap();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"HS512","typ":"JWT"}"#,
    ] {
        let unsigned = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header));
        assert_error(&me(unsigned).await, 401);
    }
    for garbage in ["", "not-a-jwt", "a.b.c"] {
        assert_error(&me(garbage.to_owned()).await, 401);
    }
    let basic = client
        .send(
            client
                .request(reqwest::Method::GET, "/api/v1/auth/me")
                .header("authorization", "Basic YWRtaW46YWRtaW4="),
        )
        .await
        .unwrap();
    assert_error(&basic, 401);
    assert_error(&client.get("/api/v1/auth/me").await.unwrap(), 401);
}

#[tokio::test]
async fn registration_validates_input_and_rejects_duplicates() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    signed_up(&client, "grace").await;

    let cases = [
        (
            "short username",
            json!({"username": "ab", "email": "x@example.com", "password": PASSWORD}),
        ),
        (
            "long username",
            json!({"username": "a".repeat(33), "email": "x@example.com", "password": PASSWORD}),
        ),
        (
            "bad characters",
            json!({"username": "has space", "email": "x@example.com", "password": PASSWORD}),
        ),
        (
            "no email shape",
            json!({"username": "heidi", "email": "not-an-email", "password": PASSWORD}),
        ),
        (
            "short password",
            json!({"username": "heidi", "email": "x@example.com", "password": "1234567"}),
        ),
        (
            "long password",
            json!({"username": "heidi", "email": "x@example.com", "password": "p".repeat(129)}),
        ),
        (
            "missing password",
            json!({"username": "heidi", "email": "x@example.com"}),
        ),
        (
            "wrong type",
            json!({"username": 42, "email": "x@example.com", "password": PASSWORD}),
        ),
    ];
    for (what, body) in cases {
        let resp = client.post("/api/v1/auth/register", &body).await.unwrap();
        assert_eq!(resp.status, 400, "{what}: {}", resp.text);
        assert_error(&resp, 400);
    }
    // Edge values are accepted.
    client
        .register("abc", "abc@example.com", "12345678")
        .await
        .unwrap()
        .assert_status(201);
    client
        .register(&"z".repeat(32), "z@example.com", &"p".repeat(128))
        .await
        .unwrap()
        .assert_status(201);

    let dup_name = client
        .register("GRACE", "other@example.com", PASSWORD)
        .await
        .unwrap();
    assert_error(&dup_name, 409);
    let dup_email = client
        .register("grace2", "Grace@Example.com", PASSWORD)
        .await
        .unwrap();
    assert_error(&dup_email, 409);
}

#[tokio::test]
async fn a_failed_registration_leaves_no_row_behind() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0);
    signed_up(&client, "ivan").await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from app_user")
            .fetch_one(cluster.db())
            .await
            .unwrap()
    };
    let before = count().await;

    // The username is new but the email is taken: the insert fails as a whole.
    assert_error(
        &client
            .register("judy", "ivan@example.com", PASSWORD)
            .await
            .unwrap(),
        409,
    );
    assert_error(
        &client.register("judy", "bad", PASSWORD).await.unwrap(),
        400,
    );

    assert_eq!(count().await, before);
    let judy: i64 = sqlx::query_scalar("select count(*) from app_user where username = 'judy'")
        .fetch_one(cluster.db())
        .await
        .unwrap();
    assert_eq!(judy, 0);
    // And nothing blocks a correct retry.
    client
        .register("judy", "judy@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
}

#[tokio::test]
async fn the_bootstrap_admin_exists_with_the_admin_role() {
    let cluster = TestCluster::start(1).await;
    let tokens = admin(&cluster).await;
    let me = cluster
        .client(0)
        .token(&tokens.access_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap();
    me.assert_status(200);
    assert_eq!(me.body["username"], "admin");
    assert_eq!(me.body["role"], "admin");
}

#[tokio::test]
async fn keys_rotate_without_refusing_a_valid_token() {
    // 1. The cluster signs with its secret (kid `default`).
    let mut cluster = TestCluster::start(1).await;
    let user = signed_up(&cluster.client(0), "rotor").await;
    let old_token = user.tokens.access_token.clone();
    let new_key = "k2027=HS256:a-brand-new-key-a-brand-new-key-0123";

    // 2. A node that also lists the new key and signs with it (every node would first list it,
    //    then switch signing): it accepts the old token and issues tokens of the new kid.
    let switched = cluster
        .spawn_node(|config| {
            config
                .env("PETMESH_NODE__AUTH__JWT_KEYS", new_key)
                .env("PETMESH_NODE__AUTH__JWT_SIGNING_KID", "k2027")
        })
        .await
        .unwrap()
        .base_url();
    let switched = ApiClient::new(switched);
    switched
        .clone()
        .token(&old_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
    let new_token = switched
        .login("rotor", PASSWORD)
        .await
        .unwrap()
        .access_token;
    // The old node does not know the new key yet: this is why every node lists it first.
    assert_error(
        &cluster
            .client(0)
            .token(&new_token)
            .get("/api/v1/auth/me")
            .await
            .unwrap(),
        401,
    );

    // 3. After the token lifetime the secret is removed: old tokens get 401, new ones work.
    let rotated = cluster
        .spawn_node(|config| {
            config
                .jwt_secret("")
                .env("PETMESH_NODE__AUTH__JWT_KEYS", new_key)
        })
        .await
        .unwrap()
        .base_url();
    let rotated = ApiClient::new(rotated);
    let refused = rotated
        .clone()
        .token(&old_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap();
    assert_error(&refused, 401);
    assert!(refused.body["message"]
        .as_str()
        .unwrap()
        .contains("key this node does not accept"));
    rotated
        .clone()
        .token(&new_token)
        .get("/api/v1/auth/me")
        .await
        .unwrap()
        .assert_status(200);
}
