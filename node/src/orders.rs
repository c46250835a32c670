//! Orders: placing (stock, idempotency, payment job in one transaction), cancelling (stock
//! restored exactly once), delivery, and the reads.
//!
//! Status machine: `placed` → `approved` (payment succeeded) → `delivered`;
//! `placed` | `approved` → `cancelled` (user cancel, or payment failed for good).

use chrono::{DateTime, Utc};
use petmesh_shared::event::EventEnvelope;
use poem_openapi::{Enum, Object};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    auth::Claims,
    error::{ApiError, ResultExt},
    jobs, outbox,
    pets::{self, Pet, PET_COLUMNS},
    state::AppState,
    text_enum::text_enum,
};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Stock reserved, payment pending.
    Placed,
    /// Paid.
    Approved,
    /// Handed over.
    Delivered,
    /// Cancelled by the user or because payment failed for good; stock restored.
    Cancelled,
}

text_enum!(OrderStatus {
    Placed => "placed",
    Approved => "approved",
    Delivered => "delivered",
    Cancelled => "cancelled",
});

/// An order.
#[derive(Debug, Clone, Object, Serialize, Deserialize, sqlx::FromRow)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Server-assigned id.
    #[sqlx(rename = "order_id")]
    pub id: i64,
    /// Who ordered.
    pub user_id: Uuid,
    /// The pet ordered; null once the pet was deleted.
    pub pet_id: Option<i64>,
    /// The pet's name when ordered.
    pub pet_name: String,
    /// Units ordered.
    pub quantity: i32,
    /// Price per unit when ordered.
    pub unit_price: Decimal,
    /// `quantity × unitPrice`.
    pub total: Decimal,
    /// `placed`, `approved`, `delivered` or `cancelled`.
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    /// Why payment failed, when it failed for good.
    pub failure_reason: Option<String>,
    /// When the order was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Columns selected for [`Order`].
pub const ORDER_COLUMNS: &str =
    "order_id, user_id, pet_id, pet_name, quantity, unit_price, total, status, failure_reason, created_at, updated_at";

/// A new order.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// The pet to buy.
    pub pet_id: i64,
    /// Units, 1–100.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub quantity: i32,
    /// Simulated gateway token: `tok_ok`, `tok_declined`, `tok_flaky_<n>`; absent → random
    /// outcome with the configured success rate.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 64, pattern = r"^[^\x00]*$")
    )]
    pub payment_token: Option<String>,
}

/// What inserting an order came to.
enum Placement {
    /// Inserted; the stored response.
    Created(Order),
    /// The idempotency key was taken meanwhile by a concurrent request.
    KeyTaken,
}

/// Places an order for `claims.sub`. With `idempotency_key`, a retry with the same body returns
/// the first response verbatim (from any node); a different body → 422.
pub async fn place(
    state: &AppState,
    claims: &Claims,
    order: PlaceOrder,
    idempotency_key: Option<&str>,
) -> Result<serde_json::Value, ApiError> {
    let request_hash = idempotency_key.map(|_| request_hash(&order));
    if let Some(key) = idempotency_key {
        if let Some(replay) = replay(&state.db, claims.sub, key, request_hash.as_deref()).await? {
            return Ok(replay);
        }
    }
    let depth = jobs::queue_depth(&state.db).await?;
    state.metrics.store.job_queue_depth.set(depth);
    if depth > state.jobs.max_queue_depth {
        return Err(ApiError::overloaded(
            format!("payment queue is full ({depth} jobs waiting); retry later"),
            5,
        ));
    }

    let mut tx = state.db.begin().await?;
    let pet = reserve_stock(&mut tx, order.pet_id, order.quantity).await?;
    match insert(
        &mut tx,
        claims.sub,
        &pet,
        &order,
        idempotency_key,
        request_hash.as_deref(),
    )
    .await?
    {
        Placement::Created(created) => {
            jobs::enqueue_payment(&mut tx, created.id, state.jobs.max_attempts).await?;
            let body = serde_json::to_value(&created).expect("orders serialise");
            if idempotency_key.is_some() {
                sqlx::query("update pet_order set response = $2 where order_id = $1")
                    .bind(created.id)
                    .bind(&body)
                    .execute(&mut *tx)
                    .await?;
            }
            let events = vec![
                pets::event(state, "pet:updated", &pet),
                order_event(state, "order:created", &created),
            ];
            outbox::record(&mut tx, events).await?;
            tx.commit().await?;
            state
                .metrics
                .store
                .orders
                .with_label_values(&["placed"])
                .inc();
            state.job_wakeup.notify_one();
            pets::changed(state, &pet).await;
            Ok(body)
        }
        Placement::KeyTaken => {
            // The stock reservation rolls back with the transaction.
            drop(tx);
            let key = idempotency_key.expect("only keyed orders conflict");
            replay(&state.db, claims.sub, key, request_hash.as_deref())
                .await?
                .ok_or_else(|| {
                    ApiError::conflict(
                        "idempotency key is being used by a concurrent request; retry",
                    )
                })
        }
    }
}

/// The stored first response for `(user, key)`, or 422 if the key was used with another body.
async fn replay(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    key: &str,
    hash: Option<&[u8]>,
) -> Result<Option<serde_json::Value>, ApiError> {
    let found: Option<(Vec<u8>, Option<serde_json::Value>)> = sqlx::query_as(
        "select request_hash, response from pet_order where user_id = $1 and idempotency_key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(db)
    .await?;
    match found {
        None => Ok(None),
        Some((stored, _)) if Some(stored.as_slice()) != hash => Err(ApiError::unprocessable(
            "this Idempotency-Key was already used with a different request body",
        )),
        Some((_, response)) => Ok(response),
    }
}

fn request_hash(order: &PlaceOrder) -> Vec<u8> {
    Sha256::digest(serde_json::to_vec(order).expect("orders serialise")).to_vec()
}

/// Takes `quantity` units of an available pet; the pet turns `sold` at zero stock.
async fn reserve_stock(
    tx: &mut Transaction<'static, Postgres>,
    pet_id: i64,
    quantity: i32,
) -> Result<Pet, ApiError> {
    let reserved = sqlx::query_as::<_, Pet>(&format!(
        "update pet set
            stock = stock - $2,
            status = case when stock - $2 = 0 then 'sold' else status end,
            version = version + 1
         where pet_id = $1 and status = 'available' and stock >= $2
         returning {PET_COLUMNS}"
    ))
    .bind(pet_id)
    .bind(quantity)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(pet) = reserved {
        return Ok(pet);
    }
    match pets::find(&mut **tx, pet_id).await? {
        None => Err(ApiError::not_found(format!("pet {pet_id} not found"))),
        Some(pet) if pet.status != pets::PetStatus::Available => Err(ApiError::conflict(format!(
            "pet {pet_id} is {} and cannot be ordered",
            pet.status.as_str()
        ))),
        Some(pet) => Err(ApiError::conflict(format!(
            "insufficient stock for pet {pet_id}: {} left, {quantity} requested",
            pet.stock
        ))),
    }
}

async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    pet: &Pet,
    order: &PlaceOrder,
    idempotency_key: Option<&str>,
    request_hash: Option<&[u8]>,
) -> Result<Placement, ApiError> {
    let total = pet.price * Decimal::from(order.quantity);
    let inserted = sqlx::query_as::<_, Order>(&format!(
        "insert into pet_order (user_id, pet_id, pet_name, quantity, unit_price, total, payment_token,
                                idempotency_key, request_hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         returning {ORDER_COLUMNS}"
    ))
    .bind(user_id)
    .bind(pet.id)
    .bind(&pet.name)
    .bind(order.quantity)
    .bind(pet.price)
    .bind(total)
    .bind(&order.payment_token)
    .bind(idempotency_key)
    .bind(request_hash)
    .fetch_one(&mut **tx)
    .await
    .on_constraint(|name| (name == "pet_order_idempotency_key").then(|| ApiError::conflict("key taken")));
    match inserted {
        Ok(order) => Ok(Placement::Created(order)),
        Err(ApiError::Conflict(_)) => Ok(Placement::KeyTaken),
        Err(err) => Err(err),
    }
}

/// One order, if `claims` may see it (owner or admin); others get 404, not 403, so order ids
/// reveal nothing.
pub async fn get(state: &AppState, claims: &Claims, id: i64) -> Result<Order, ApiError> {
    let order = find(&state.db, id)
        .await?
        .filter(|o| claims.is_admin() || o.user_id == claims.sub);
    order.ok_or_else(|| ApiError::not_found(format!("order {id} not found")))
}

/// One order.
pub async fn find(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Order>, ApiError> {
    Ok(sqlx::query_as::<_, Order>(&format!(
        "select {ORDER_COLUMNS} from pet_order where order_id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Cancels an order before delivery and restores its stock, exactly once however often it is
/// asked. `reason` is recorded when payment failed.
pub async fn cancel(state: &AppState, claims: &Claims, id: i64) -> Result<Order, ApiError> {
    get(state, claims, id).await?;
    let mut tx = state.db.begin().await?;
    let outcome = cancel_in(&mut tx, id, None).await?;
    let (order, pet) = match outcome {
        Some(cancelled) => cancelled,
        None => {
            let current = find(&mut *tx, id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("order {id} not found")))?;
            return Err(ApiError::conflict(format!(
                "order {id} is {} and cannot be cancelled",
                current.status.as_str()
            )));
        }
    };
    jobs::cancel_payment(&mut tx, id).await?;
    // `order:deleted` is the name existing pet-store clients listen for when an order is
    // cancelled on request; a declined payment's cancellation sends only `order:updated`.
    let mut events = cancel_events(state, &order, pet.as_ref());
    events.push(order_event(state, "order:deleted", &order));
    outbox::record(&mut tx, events).await?;
    tx.commit().await?;
    after_cancel(state, pet.as_ref()).await;
    Ok(order)
}

/// Inside `tx`: marks order `id` cancelled if it is not yet delivered or cancelled and gives its
/// stock back (a sold-out pet becomes available again). `None` when nothing was cancelled.
pub async fn cancel_in(
    tx: &mut Transaction<'static, Postgres>,
    id: i64,
    failure_reason: Option<&str>,
) -> Result<Option<(Order, Option<Pet>)>, ApiError> {
    // The status condition makes this the single point where a cancel can win: of two
    // concurrent cancels (or a cancel and a failed payment), exactly one updates the row.
    let cancelled = sqlx::query_as::<_, Order>(&format!(
        "update pet_order set status = 'cancelled', failure_reason = $2
         where order_id = $1 and status in ('placed', 'approved')
         returning {ORDER_COLUMNS}"
    ))
    .bind(id)
    .bind(failure_reason)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(order) = cancelled else {
        return Ok(None);
    };
    let pet = match order.pet_id {
        Some(pet_id) => {
            sqlx::query_as::<_, Pet>(&format!(
                "update pet set
                stock = stock + $2,
                status = case when status = 'sold' then 'available' else status end,
                version = version + 1
             where pet_id = $1
             returning {PET_COLUMNS}"
            ))
            .bind(pet_id)
            .bind(order.quantity)
            .fetch_optional(&mut **tx)
            .await?
        }
        None => None,
    };
    Ok(Some((order, pet)))
}

/// The events of a cancellation that [`cancel_in`] made, to record with it.
pub fn cancel_events(state: &AppState, order: &Order, pet: Option<&Pet>) -> Vec<EventEnvelope> {
    pet.map(|pet| pets::event(state, "pet:updated", pet))
        .into_iter()
        .chain([order_event(state, "order:updated", order)])
        .collect()
}

/// After a committed cancellation (its events recorded with it): metrics, cache.
pub async fn after_cancel(state: &AppState, pet: Option<&Pet>) {
    state
        .metrics
        .store
        .orders
        .with_label_values(&["cancelled"])
        .inc();
    if let Some(pet) = pet {
        pets::changed(state, pet).await;
    }
}

/// Admin: marks an approved order delivered.
pub async fn deliver(state: &AppState, id: i64) -> Result<Order, ApiError> {
    let mut tx = state.db.begin().await?;
    let delivered = sqlx::query_as::<_, Order>(&format!(
        "update pet_order set status = 'delivered' where order_id = $1 and status = 'approved'
         returning {ORDER_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    match delivered {
        Some(order) => {
            outbox::record(&mut tx, vec![order_event(state, "order:updated", &order)]).await?;
            tx.commit().await?;
            state
                .metrics
                .store
                .orders
                .with_label_values(&["delivered"])
                .inc();
            Ok(order)
        }
        None => match find(&mut *tx, id).await? {
            None => Err(ApiError::not_found(format!("order {id} not found"))),
            Some(order) => Err(ApiError::conflict(format!(
                "order {id} is {}; only approved orders can be delivered",
                order.status.as_str()
            ))),
        },
    }
}

/// The `orders` event `name` about `order`, for its owner (and admins), to record in the
/// outbox with the change.
pub fn order_event(state: &AppState, name: &str, order: &Order) -> EventEnvelope {
    state
        .events
        .domain(name, "orders", order, Some(order.user_id.to_string()))
}

/// Which orders to list.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// Only this user's (forced to the caller for non-admins).
    pub user_id: Option<Uuid>,
    /// Only this status.
    pub status: Option<OrderStatus>,
}

/// Whose orders `claims` may list when asking for `requested` (`None`: every user's, for
/// admins): non-admins see only their own, and naming another user is refused.
pub fn visible_user(claims: &Claims, requested: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
    match requested {
        Some(other) if other != claims.sub && !claims.is_admin() => {
            Err(ApiError::forbidden("only admins list other users' orders"))
        }
        Some(id) => Ok(Some(id)),
        None if claims.is_admin() => Ok(None),
        None => Ok(Some(claims.sub)),
    }
}

/// A page of orders, newest first, with the total.
pub async fn list(
    db: &sqlx::PgPool,
    filter: &OrderFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Order>, i64), ApiError> {
    let status = filter.status.map(OrderStatus::as_str);
    let orders = sqlx::query_as::<_, Order>(&format!(
        "select {ORDER_COLUMNS} from pet_order
         where ($1::uuid is null or user_id = $1) and ($2::text is null or status = $2)
         order by order_id desc limit $3 offset $4"
    ))
    .bind(filter.user_id)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "select count(*) from pet_order where ($1::uuid is null or user_id = $1) and ($2::text is null or status = $2)",
    )
    .bind(filter.user_id)
    .bind(status)
    .fetch_one(db)
    .await?;
    Ok((orders, total))
}
