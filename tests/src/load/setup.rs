//! What a load run needs before it starts: users with tokens, the catalogue's size, pets to
//! read and pets to order.
//!
//! Users are registered afresh for every run (`load-<run>-<n>`), so runs never share
//! accounts or idempotency keys. With the admin password, the run also creates pets of its
//! own with a large stock for its orders, so that orders keep succeeding however long it
//! runs; without it, orders go to the catalogue's available pets (and get 409 once they
//! sell out).

use anyhow::{bail, Context as _};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use rand::distributions::{Alphanumeric, DistString as _};
use serde_json::json;

use crate::client::ApiClient;

/// The password of every load user.
pub const LOAD_PASSWORD: &str = "load-generator-password";

/// The bootstrap admin's user name (the node's default).
pub const ADMIN_USERNAME: &str = "admin";

/// Stock of each pet a run creates for its orders.
const ORDER_PET_STOCK: i64 = 1_000_000;

/// Registrations and logins in flight at once while preparing (each is an argon2 hash).
const PREPARE_CONCURRENCY: usize = 4;

/// One user of the load.
#[derive(Clone, Debug)]
pub struct LoadUser {
    /// The user name (password [`LOAD_PASSWORD`]).
    pub username: String,
    /// An access token.
    pub token: String,
}

/// Users, tokens and pets of one run, shared by all its requests.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `http://host:port` of the target (the balancer), no trailing slash.
    pub base_url: String,
    /// The run's id, part of its user names.
    pub run_id: String,
    /// The users requests are made as, drawn at random.
    pub users: Vec<LoadUser>,
    /// Pets `get` reads.
    pub pet_ids: Vec<i64>,
    /// Pets `order` orders.
    pub order_pet_ids: Vec<i64>,
    /// How many pets the catalogue has, for `browse` offsets.
    pub catalogue_size: usize,
    /// An admin token, when the admin password was given.
    pub admin_token: Option<String>,
}

/// How to prepare a run.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    /// Users to register and log in.
    pub users: usize,
    /// The bootstrap admin's password, to create order pets with a large stock.
    pub admin_password: Option<String>,
    /// How many pets to create for orders (with the admin password).
    pub order_pets: usize,
}

impl Setup {
    /// Registers and logs in the users, reads the catalogue, and (with the admin password)
    /// creates the pets orders go to.
    pub async fn prepare(base_url: &str, options: &SetupOptions) -> anyhow::Result<Self> {
        let api = ApiClient::new(base_url);
        let run_id = Alphanumeric
            .sample_string(&mut rand::thread_rng(), 6)
            .to_lowercase();
        let users: Vec<LoadUser> = stream::iter(0..options.users.max(1))
            .map(|n| {
                let api = api.clone();
                let username = format!("load-{run_id}-{n}");
                async move { register_and_login(&api, username).await }
            })
            .buffered(PREPARE_CONCURRENCY)
            .try_collect()
            .await?;
        let admin_token = match &options.admin_password {
            Some(password) => Some(
                api.login(ADMIN_USERNAME, password)
                    .await
                    .context("logging in as the admin")?
                    .access_token,
            ),
            None => None,
        };
        let reader = api.clone().token(users[0].token.clone());
        let page = reader
            .get("/api/v1/pets?limit=100&status=available")
            .await?;
        if page.status != 200 {
            bail!("listing pets: {} {}", page.status, page.text);
        }
        let mut pet_ids: Vec<i64> = page.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pet| pet["id"].as_i64())
            .collect();
        let mut catalogue_size = page.body["total"].as_u64().unwrap_or(0) as usize;
        let order_pet_ids = match &admin_token {
            Some(token) => {
                let admin = api.clone().token(token.clone());
                let created = create_order_pets(&admin, &run_id, options.order_pets).await?;
                catalogue_size += created.len();
                pet_ids.extend(&created);
                created
            }
            None => pet_ids.clone(),
        };
        if pet_ids.is_empty() {
            bail!("the catalogue has no available pet: seed it (`petmesh-node seed`) or give the admin password");
        }
        Ok(Self {
            base_url: api.base_url().to_owned(),
            run_id,
            users,
            pet_ids,
            order_pet_ids,
            catalogue_size,
            admin_token,
        })
    }
}

/// Registers `username` (a 409 is fine: the name exists from an earlier attempt) and logs in.
pub async fn register_and_login(api: &ApiClient, username: String) -> anyhow::Result<LoadUser> {
    let email = format!("{username}@load.example.com");
    let registered = api.register(&username, &email, LOAD_PASSWORD).await?;
    if registered.status != 201 && registered.status != 409 {
        bail!(
            "registering {username}: {} {}",
            registered.status,
            registered.text
        );
    }
    let tokens = api.login(&username, LOAD_PASSWORD).await?;
    Ok(LoadUser {
        username,
        token: tokens.access_token,
    })
}

/// Creates `count` pets of stock `stock` named after the run, as the admin; returns their ids.
pub async fn create_pets(
    admin: &ApiClient,
    run_id: &str,
    count: usize,
    stock: i64,
) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let body = json!({
            "name": format!("load {run_id} {n}"),
            "category": "load",
            "price": "9.99",
            "stock": stock,
            "status": "available",
        });
        let resp = admin.post("/api/v1/pets", &body).await?;
        if resp.status != 201 {
            bail!("creating a pet: {} {}", resp.status, resp.text);
        }
        ids.push(
            resp.body["id"]
                .as_i64()
                .context("a created pet has an id")?,
        );
    }
    Ok(ids)
}

async fn create_order_pets(
    admin: &ApiClient,
    run_id: &str,
    count: usize,
) -> anyhow::Result<Vec<i64>> {
    create_pets(admin, run_id, count.max(1), ORDER_PET_STOCK).await
}
