//! The HTTP side of the load: one request of each [`Kind`], how its answer is classified,
//! and orders sent again with the same `Idempotency-Key` until they get a definite answer.
//!
//! Requests go through one `reqwest` client (a keep-alive pool) with a per-request timeout.
//! Bodies are always read to the end so connections go back to the pool.

use std::time::Duration;

use rand::Rng as _;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::mix::Kind;
use super::setup::{Setup, LOAD_PASSWORD};

/// The response header naming the node that served a request through the balancer.
pub const SERVED_BY: &str = "x-petmesh-node";

/// Why a request did not get the answer it wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No TCP connection to the target.
    Connect,
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection broke during the exchange (reset, truncated body).
    Transport,
    /// A 5xx answer (the balancer's own 502/503/504 included).
    Http5xx,
    /// 429: a rate limit or lock-out.
    Http429,
    /// Any other 4xx that the load did not expect (409 of a sold-out pet is not an error).
    Http4xx,
    /// 409 because another attempt of the same order (same key) is still running: not an
    /// answer yet, so the order is sent again.
    KeyInUse,
    /// A 2xx whose body was not what the API documents.
    BadBody,
}

impl ErrorClass {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Transport => "transport",
            ErrorClass::Http5xx => "5xx",
            ErrorClass::Http429 => "429",
            ErrorClass::Http4xx => "4xx",
            ErrorClass::KeyInUse => "409_key_in_use",
            ErrorClass::BadBody => "bad_body",
        }
    }

    fn of_transport(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            ErrorClass::Timeout
        } else if error.is_connect() {
            ErrorClass::Connect
        } else {
            ErrorClass::Transport
        }
    }

    fn of_status(status: StatusCode) -> Self {
        match status.as_u16() {
            429 => ErrorClass::Http429,
            500.. => ErrorClass::Http5xx,
            _ => ErrorClass::Http4xx,
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer the request asked for (2xx).
    Ok,
    /// A definite, correct refusal: 409 for an order of a pet without stock.
    Refused,
    /// Anything else, by class.
    Failed(ErrorClass),
}

/// One finished request (for an order: all its attempts together).
#[derive(Clone, Debug)]
pub struct Done {
    /// What was asked.
    pub kind: Kind,
    /// How it ended.
    pub outcome: Outcome,
    /// The last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// The node that gave the last answer (`X-Petmesh-Node`).
    pub node: Option<String>,
    /// Attempts made (1 unless an order was sent again).
    pub attempts: u32,
}

/// How orders are sent again: same key, same body, growing pauses.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Most attempts per order, the first included.
    pub max_attempts: u32,
    /// The pause before the second attempt; doubles after each attempt.
    pub backoff: Duration,
    /// The longest pause (also caps a `Retry-After`).
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Everything the client learnt about one order (one idempotency key).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRecord {
    /// The `Idempotency-Key`.
    pub key: String,
    /// Index of the user (in [`Setup::users`]) who placed it.
    pub user: usize,
    /// The pet ordered.
    pub pet_id: i64,
    /// Units ordered.
    pub quantity: u32,
    /// Status of each attempt, `None` for a transport failure.
    pub statuses: Vec<Option<u16>>,
    /// Every distinct order id the 201 answers carried (more than one would be a duplicate).
    pub order_ids: Vec<i64>,
    /// The node of the last answer.
    pub node: Option<String>,
    /// How the order ended, as the load classifies it.
    #[serde(skip)]
    pub outcome: Option<Outcome>,
}

/// The HTTP client of a load run and the data it sends requests about.
#[derive(Clone, Debug)]
pub struct HttpLoad {
    /// One keep-alive pool for every request.
    client: reqwest::Client,
    /// Base URL, users, tokens and pets.
    setup: std::sync::Arc<Setup>,
    /// How orders are retried.
    retry: RetryPolicy,
    /// The payment token orders carry (`tok_ok` approves at once).
    payment_token: String,
}

impl HttpLoad {
    /// A load against `setup`'s target with `timeout` per attempt, `max_connections` idle
    /// connections kept, and orders retried by `retry`.
    pub fn new(
        setup: std::sync::Arc<Setup>,
        timeout: Duration,
        max_connections: usize,
        retry: RetryPolicy,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(max_connections)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            setup,
            retry,
            payment_token: "tok_ok".into(),
        })
    }

    /// Orders carry `token` as their `paymentToken` from now on.
    pub fn payment_token(mut self, token: impl Into<String>) -> Self {
        self.payment_token = token.into();
        self
    }

    /// What the load runs against.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// Sends one request of `kind`, its user and pet drawn with `rng`.
    pub async fn execute(&self, kind: Kind, rng: &mut impl rand::Rng) -> Done {
        let user = rng.gen_range(0..self.setup.users.len());
        match kind {
            Kind::Browse => {
                let offset = rng.gen_range(0..self.setup.catalogue_size.max(1)) / 20 * 20;
                let path = format!("/api/v1/pets?limit=20&offset={offset}");
                self.simple(kind, Method::GET, &path, user, None).await
            }
            Kind::Get => {
                let pet = self.setup.pet_ids[rng.gen_range(0..self.setup.pet_ids.len())];
                let path = format!("/api/v1/pets/{pet}");
                self.simple(kind, Method::GET, &path, user, None).await
            }
            Kind::Login => {
                let body =
                    json!({"username": self.setup.users[user].username, "password": LOAD_PASSWORD});
                self.simple(kind, Method::POST, "/api/v1/auth/login", user, Some(body))
                    .await
            }
            Kind::Order => {
                let pet_id =
                    self.setup.order_pet_ids[rng.gen_range(0..self.setup.order_pet_ids.len())];
                let key = format!("load-{}", uuid::Uuid::new_v4().simple());
                let record = self.place_order(user, pet_id, 1, key).await;
                let outcome = record
                    .outcome
                    .unwrap_or(Outcome::Failed(ErrorClass::Transport));
                Done {
                    kind,
                    outcome,
                    status: record.statuses.last().copied().flatten(),
                    node: record.node,
                    attempts: u32::try_from(record.statuses.len()).unwrap_or(u32::MAX),
                }
            }
        }
    }

    /// One attempt of a request whose only good answer is 2xx.
    async fn simple(
        &self,
        kind: Kind,
        method: Method,
        path: &str,
        user: usize,
        body: Option<Value>,
    ) -> Done {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.setup.base_url));
        request = match body {
            Some(body) => request.json(&body),
            None => request.bearer_auth(&self.setup.users[user].token),
        };
        let (outcome, status, node) = match request.send().await {
            Err(e) => (Outcome::Failed(ErrorClass::of_transport(&e)), None, None),
            Ok(resp) => {
                let status = resp.status();
                let node = served_by(&resp);
                match resp.bytes().await {
                    Err(e) => (
                        Outcome::Failed(ErrorClass::of_transport(&e)),
                        Some(status.as_u16()),
                        node,
                    ),
                    Ok(_) if status.is_success() => (Outcome::Ok, Some(status.as_u16()), node),
                    Ok(_) => (
                        Outcome::Failed(ErrorClass::of_status(status)),
                        Some(status.as_u16()),
                        node,
                    ),
                }
            }
        };
        Done {
            kind,
            outcome,
            status,
            node,
            attempts: 1,
        }
    }

    /// Places an order of `quantity` units of `pet_id` as user `user` with idempotency key
    /// `key`, sending it again with the same key and body after a transport failure, a 5xx,
    /// a 429, or a 409 saying the key is in use by a concurrent request, until a definite
    /// answer or [`RetryPolicy::max_attempts`].
    pub async fn place_order(
        &self,
        user: usize,
        pet_id: i64,
        quantity: u32,
        key: String,
    ) -> OrderRecord {
        let body =
            json!({"petId": pet_id, "quantity": quantity, "paymentToken": self.payment_token});
        let url = format!("{}/api/v1/store/orders", self.setup.base_url);
        let mut record = OrderRecord {
            key,
            user,
            pet_id,
            quantity,
            ..OrderRecord::default()
        };
        let mut pause = self.retry.backoff;
        loop {
            let sent = self
                .client
                .post(&url)
                .bearer_auth(&self.setup.users[user].token)
                .header("idempotency-key", &record.key)
                .json(&body)
                .send()
                .await;
            let (outcome, retry_after) = match sent {
                Err(e) => {
                    record.statuses.push(None);
                    (Outcome::Failed(ErrorClass::of_transport(&e)), None)
                }
                Ok(resp) => {
                    let status = resp.status();
                    record.statuses.push(Some(status.as_u16()));
                    record.node = served_by(&resp);
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.bytes().await {
                        Err(e) => (Outcome::Failed(ErrorClass::of_transport(&e)), None),
                        Ok(bytes) => {
                            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            (
                                order_outcome(status, &body, &mut record.order_ids),
                                retry_after,
                            )
                        }
                    }
                }
            };
            let again = match outcome {
                Outcome::Ok | Outcome::Refused => false,
                Outcome::Failed(ErrorClass::Http4xx | ErrorClass::BadBody) => false,
                Outcome::Failed(_) => true,
            };
            let attempts = u32::try_from(record.statuses.len()).unwrap_or(u32::MAX);
            if !again || attempts >= self.retry.max_attempts {
                record.outcome = Some(outcome);
                return record;
            }
            let jitter = rand::thread_rng().gen_range(0.5..1.0);
            let wait = retry_after
                .unwrap_or(pause.mul_f64(jitter))
                .min(self.retry.backoff_max);
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(self.retry.backoff_max);
        }
    }
}

/// Classifies an order's answer; a 201's order id is added to `ids` if new.
fn order_outcome(status: StatusCode, body: &Value, ids: &mut Vec<i64>) -> Outcome {
    match status.as_u16() {
        200 | 201 => match body["id"].as_i64() {
            Some(id) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
                Outcome::Ok
            }
            None => Outcome::Failed(ErrorClass::BadBody),
        },
        // The key is being used by a concurrent attempt of this same order (the first one
        // is still running somewhere): not an answer yet.
        409 if body["message"]
            .as_str()
            .is_some_and(|m| m.contains("concurrent request")) =>
        {
            Outcome::Failed(ErrorClass::KeyInUse)
        }
        409 => Outcome::Refused,
        _ => Outcome::Failed(ErrorClass::of_status(status)),
    }
}

fn served_by(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
