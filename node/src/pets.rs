//! Pets: the catalogue model and the service functions REST and WebSocket actions call.
//!
//! Every write bumps the pet's `version` (its ETag), records one event in the outbox in its
//! transaction ([`crate::outbox`]) and refreshes the cache after commit; `If-Match` makes updates conditional so two admins never silently
//! overwrite each other.

pub mod images;
pub mod listing;
pub mod price;

use chrono::{DateTime, Utc};
use petmesh_shared::event::EventEnvelope;
use poem_openapi::{Enum, Object};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use self::price::Price;
use crate::{cache::Cached, error::ApiError, outbox, state::AppState, text_enum::text_enum};

/// Whether a pet can be ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum PetStatus {
    /// In the shop; can be ordered while stock lasts.
    Available,
    /// Reserved; cannot be ordered.
    Pending,
    /// Gone (stock reached 0, or marked sold).
    Sold,
}

text_enum!(PetStatus { Available => "available", Pending => "pending", Sold => "sold" });

/// A pet in the catalogue.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize, sqlx::FromRow)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Pet {
    /// Server-assigned id.
    #[oai(read_only)]
    #[sqlx(rename = "pet_id")]
    pub id: i64,
    /// Name.
    pub name: String,
    /// Category, e.g. `dogs`.
    pub category: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Photo URLs.
    pub photo_urls: Vec<String>,
    /// `available`, `pending` or `sold`.
    #[sqlx(try_from = "String")]
    pub status: PetStatus,
    /// Exact decimal price, as a string (e.g. `"129.99"`).
    pub price: Decimal,
    /// Units in stock, never negative.
    pub stock: i32,
    /// Bumped by every change; the ETag is `"<version>"`.
    #[oai(read_only)]
    pub version: i32,
    /// When the pet was added.
    #[oai(read_only)]
    pub created_at: DateTime<Utc>,
    /// When the pet last changed.
    #[oai(read_only)]
    pub updated_at: DateTime<Utc>,
}

/// Columns selected for [`Pet`].
pub const PET_COLUMNS: &str =
    "pet_id, name, category, tags, photo_urls, status, price, stock, version, created_at, updated_at";

impl Pet {
    /// The ETag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// A pet's writable fields, complete (create, replace). Optional fields may also be `null`,
/// which means the same as leaving them out (as everywhere in request bodies). Text never
/// contains U+0000, which PostgreSQL cannot store.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct PetInput {
    /// 1–100 characters.
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^[^\x00]*$"))]
    pub name: String,
    /// 1–50 characters.
    #[oai(validator(min_length = 1, max_length = 50, pattern = r"^[^\x00]*$"))]
    pub category: String,
    /// Up to 20 tags of 1–30 characters.
    #[oai(
        default,
        nullable,
        validator(
            max_items = 20,
            min_length = 1,
            max_length = 30,
            pattern = r"^[^\x00]*$"
        )
    )]
    pub tags: Vec<String>,
    /// Up to 10 URLs of 1–2048 characters.
    #[oai(
        default,
        nullable,
        validator(
            max_items = 10,
            min_length = 1,
            max_length = 2048,
            pattern = r"^[^\x00]*$"
        )
    )]
    pub photo_urls: Vec<String>,
    /// Default `available`.
    #[oai(default = "default_status", nullable)]
    pub status: PetStatus,
    /// The price.
    pub price: Price,
    /// ≥ 0, default 0.
    #[oai(
        default,
        nullable,
        validator(minimum(value = "0"), maximum(value = "1000000"))
    )]
    pub stock: i32,
}

fn default_status() -> PetStatus {
    PetStatus::Available
}

/// Changes to a pet; absent (or `null`) fields stay as they are.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "camelCase")]
pub struct PetPatch {
    /// 1–100 characters.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 100, pattern = r"^[^\x00]*$")
    )]
    pub name: Option<String>,
    /// 1–50 characters.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 50, pattern = r"^[^\x00]*$")
    )]
    pub category: Option<String>,
    /// Up to 20 tags of 1–30 characters.
    #[oai(
        nullable,
        validator(
            max_items = 20,
            min_length = 1,
            max_length = 30,
            pattern = r"^[^\x00]*$"
        )
    )]
    pub tags: Option<Vec<String>>,
    /// Up to 10 URLs of 1–2048 characters.
    #[oai(
        nullable,
        validator(
            max_items = 10,
            min_length = 1,
            max_length = 2048,
            pattern = r"^[^\x00]*$"
        )
    )]
    pub photo_urls: Option<Vec<String>>,
    /// New status.
    #[oai(nullable)]
    pub status: Option<PetStatus>,
    /// New price.
    #[oai(nullable)]
    pub price: Option<Price>,
    /// ≥ 0.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1000000")))]
    pub stock: Option<i32>,
}

impl From<PetInput> for PetPatch {
    fn from(input: PetInput) -> Self {
        Self {
            name: Some(input.name),
            category: Some(input.category),
            tags: Some(input.tags),
            photo_urls: Some(input.photo_urls),
            status: Some(input.status),
            price: Some(input.price),
            stock: Some(input.stock),
        }
    }
}

/// Price range and precision, tag and URL lengths: what the schema already says (and REST and
/// WebSocket parsing check), again for any caller that builds a patch by hand.
fn validate(patch: &PetPatch) -> Result<(), ApiError> {
    if let Some(Price(price)) = patch.price {
        if price.is_sign_negative()
            || price.scale() > 2
            || price >= Decimal::from(10_000_000_000i64)
        {
            return Err(ApiError::bad_request(
                "price must be ≥ 0, below 10000000000, with at most 2 decimal places",
            ));
        }
    }
    if let Some(tags) = &patch.tags {
        if tags.iter().any(|t| t.is_empty() || t.chars().count() > 30) {
            return Err(ApiError::bad_request("tags must be 1–30 characters each"));
        }
    }
    if let Some(urls) = &patch.photo_urls {
        if urls.iter().any(|u| u.is_empty() || u.len() > 2048) {
            return Err(ApiError::bad_request(
                "photoUrls must be 1–2048 characters each",
            ));
        }
    }
    Ok(())
}

/// Parses an `If-Match` value (one entity tag, `*` or empty) into the version it names; `*`
/// (any) and an empty value (an empty list, RFC 9110 § 5.6.1, as if absent) are `None`. A tag
/// that names no version of ours can never match: 412.
pub fn expected_version(if_match: Option<&str>) -> Result<Option<i32>, ApiError> {
    let Some(value) = if_match.map(str::trim) else {
        return Ok(None);
    };
    if value == "*" || value.is_empty() {
        return Ok(None);
    }
    let tag = value.trim_start_matches("W/").trim_matches('"');
    tag.parse::<i32>().map(Some).map_err(|_| {
        ApiError::precondition_failed(format!("If-Match {value} names no version of this pet"))
    })
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("pet {id} not found"))
}

/// One pet, from the cache when it has it.
pub async fn get(state: &AppState, id: i64) -> Result<Pet, ApiError> {
    match state.pet_cache.get::<Pet>(id).await {
        Cached::Present(pet) => return Ok(*pet),
        Cached::Deleted => return Err(not_found(id)),
        Cached::Unknown => {}
    }
    let pet = find(&state.db, id).await?.ok_or_else(|| not_found(id))?;
    state.pet_cache.store(pet.id, pet.version, &pet).await;
    Ok(pet)
}

/// One pet, from the database.
pub async fn find(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Pet>, ApiError> {
    Ok(
        sqlx::query_as::<_, Pet>(&format!("select {PET_COLUMNS} from pet where pet_id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Adds a pet.
pub async fn create(state: &AppState, input: PetInput) -> Result<Pet, ApiError> {
    let patch = PetPatch::from(input);
    validate(&patch)?;
    let mut tx = state.db.begin().await?;
    let pet = sqlx::query_as::<_, Pet>(&format!(
        "insert into pet (name, category, tags, photo_urls, status, price, stock)
         values ($1, $2, $3, $4, $5, $6, $7) returning {PET_COLUMNS}"
    ))
    .bind(&patch.name)
    .bind(&patch.category)
    .bind(&patch.tags)
    .bind(&patch.photo_urls)
    .bind(patch.status.map(PetStatus::as_str))
    .bind(patch.price.map(Decimal::from))
    .bind(patch.stock)
    .fetch_one(&mut *tx)
    .await?;
    outbox::record(&mut tx, vec![event(state, "pet:created", &pet)]).await?;
    tx.commit().await?;
    changed(state, &pet).await;
    Ok(pet)
}

/// Applies `patch` if the pet is at `expected` version (any version when `None`).
pub async fn update(
    state: &AppState,
    id: i64,
    patch: PetPatch,
    expected: Option<i32>,
) -> Result<Pet, ApiError> {
    validate(&patch)?;
    let mut tx = state.db.begin().await?;
    let updated = sqlx::query_as::<_, Pet>(&format!(
        "update pet set
            name = coalesce($3, name),
            category = coalesce($4, category),
            tags = coalesce($5, tags),
            photo_urls = coalesce($6, photo_urls),
            status = coalesce($7, status),
            price = coalesce($8, price),
            stock = coalesce($9, stock),
            version = version + 1
         where pet_id = $1 and ($2::integer is null or version = $2)
         returning {PET_COLUMNS}"
    ))
    .bind(id)
    .bind(expected)
    .bind(&patch.name)
    .bind(&patch.category)
    .bind(&patch.tags)
    .bind(&patch.photo_urls)
    .bind(patch.status.map(PetStatus::as_str))
    .bind(patch.price.map(Decimal::from))
    .bind(patch.stock)
    .fetch_optional(&mut *tx)
    .await?;
    match updated {
        Some(pet) => {
            outbox::record(&mut tx, vec![event(state, "pet:updated", &pet)]).await?;
            tx.commit().await?;
            changed(state, &pet).await;
            Ok(pet)
        }
        None => {
            drop(tx);
            Err(stale_or_missing(state, id).await)
        }
    }
}

/// Deletes a pet if it is at `expected` version (any version when `None`). Its orders keep
/// their copy of its name and price.
pub async fn delete(state: &AppState, id: i64, expected: Option<i32>) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    let deleted = sqlx::query_as::<_, Pet>(&format!(
        "delete from pet where pet_id = $1 and ($2::integer is null or version = $2) returning {PET_COLUMNS}"
    ))
    .bind(id)
    .bind(expected)
    .fetch_optional(&mut *tx)
    .await?;
    match deleted {
        Some(pet) => {
            outbox::record(&mut tx, vec![event(state, "pet:deleted", &pet)]).await?;
            tx.commit().await?;
            state.pet_cache.store_deleted(pet.id, pet.version).await;
            Ok(())
        }
        None => {
            drop(tx);
            Err(stale_or_missing(state, id).await)
        }
    }
}

/// After a conditional write matched nothing: 404 if the pet is gone, 412 if it moved on.
async fn stale_or_missing(state: &AppState, id: i64) -> ApiError {
    match find(&state.db, id).await {
        Ok(Some(current)) => ApiError::precondition_failed(format!(
            "pet {id} is at version {} (ETag {}); re-read it and retry",
            current.version,
            current.etag()
        )),
        Ok(None) => not_found(id),
        Err(err) => err,
    }
}

/// The `pets` event `name` about `pet`, to record in the outbox with the change.
pub fn event(state: &AppState, name: &str, pet: &Pet) -> EventEnvelope {
    state.events.domain(name, "pets", pet, None)
}

/// After a committed change to `pet` (its event recorded with it): refresh the cache.
pub async fn changed(state: &AppState, pet: &Pet) {
    state.pet_cache.store(pet.id, pet.version, pet).await;
}

/// Counts of pets by status and the total stock.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Inventory {
    /// Pets with status `available`.
    pub available: i64,
    /// Pets with status `pending`.
    pub pending: i64,
    /// Pets with status `sold`.
    pub sold: i64,
    /// Units in stock across all pets.
    pub total_stock: i64,
}

/// The inventory summary.
pub async fn inventory(db: impl PgExecutor<'_>) -> Result<Inventory, ApiError> {
    let (available, pending, sold, total_stock): (i64, i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'available'),
                count(*) filter (where status = 'pending'),
                count(*) filter (where status = 'sold'),
                coalesce(sum(stock), 0)::bigint
         from pet",
    )
    .fetch_one(db)
    .await?;
    Ok(Inventory {
        available,
        pending,
        sold,
        total_stock,
    })
}
