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

/// Loads the demo catalogue into the cluster's database with `petmesh-node seed`.
pub fn seed(cluster: &TestCluster) {
    let output = cluster
        .node_config()
        .command("seed")
        .unwrap()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "seed failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates a pet as admin and returns its JSON.
pub async fn create_pet(
    admin: &ApiClient,
    name: &str,
    price: &str,
    stock: i64,
) -> serde_json::Value {
    let resp = admin
        .post(
            "/api/v1/pets",
            &json!({"name": name, "category": "dogs", "tags": ["test"], "price": price, "stock": stock}),
        )
        .await
        .unwrap();
    resp.assert_status(201);
    resp.body
}

/// `POST /api/v1/store/orders` for one unit of `pet_id` paid with `payment_token`, through
/// `client` (whose token is the buyer's).
pub async fn place_order(
    client: &ApiClient,
    pet_id: i64,
    payment_token: &str,
) -> petmesh_tests::TestResponse {
    client
        .post(
            "/api/v1/store/orders",
            &json!({"petId": pet_id, "quantity": 1, "paymentToken": payment_token}),
        )
        .await
        .unwrap()
}
