//! Test-only shortcuts built on the harness.

use petmesh_tests::{ApiClient, TestCluster, Tokens};
use serde_json::json;

/// The password every test user gets.
pub const PASSWORD: &str = "s3cret-passw0rd";

/// A registered, logged-in user.
pub struct TestUser {
    /// Server-assigned id.
    pub id: String,
    /// Tokens from their login.
    pub tokens: Tokens,
}

/// Registers `username` through `client` and logs them in.
pub async fn signed_up(client: &ApiClient, username: &str) -> TestUser {
    let resp = client
        .register(username, &format!("{username}@example.com"), PASSWORD)
        .await
        .unwrap();
    resp.assert_status(201);
    let tokens = client.login(username, PASSWORD).await.unwrap();
    TestUser {
        id: resp.body["id"].as_str().expect("user id").to_owned(),
        tokens,
    }
}

/// Tokens of the bootstrap admin the harness configured.
pub async fn admin(cluster: &TestCluster) -> Tokens {
    cluster
        .client(0)
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
}

/// `POST /api/v1/auth/refresh` with `refresh_token` on `client`.
pub async fn refresh(client: &ApiClient, refresh_token: &str) -> petmesh_tests::TestResponse {
    client
        .post(
            "/api/v1/auth/refresh",
            &json!({ "refreshToken": refresh_token }),
        )
        .await
        .unwrap()
}
