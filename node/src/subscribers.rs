//! Subscribers: custom WebSocket event names registered by admins, and the queries REST and the
//! WebSocket layer share.
//!
//! A subscriber is keyed by its `eventListener`, the event name clients may emit; the WebSocket
//! layer asks [`find_by_event_listener`] whether a name it receives is one. Names the protocol
//! itself uses are refused here and, as a backstop, by the table's check constraint.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::{ApiError, ResultExt};

/// Longest `eventListener`, in characters.
pub const EVENT_LISTENER_MAX_CHARS: usize = 100;

/// Longest `description`, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 500;

/// Protocol actions an `eventListener` may not be.
pub const RESERVED_NAMES: [&str; 3] = ["ping", "subscribe", "unsubscribe"];

/// Prefixes of the protocol's own actions and events (`auth:login`, `pet:created`,
/// `pets.list`, ...), which an `eventListener` may not start with.
pub const RESERVED_PREFIXES: [&str; 8] = [
    "auth:",
    "room:",
    "system:",
    "pet:",
    "order:",
    "pets.",
    "orders.",
    "inventory.",
];

/// A registered custom event.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize, sqlx::FromRow)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Subscriber {
    /// Server-assigned id.
    #[oai(read_only)]
    #[sqlx(rename = "subscriber_id")]
    pub id: Uuid,
    /// The event name clients emit; unique.
    pub event_listener: String,
    /// Whether the event is re-broadcast to the other members of the sender's room.
    pub replicable: bool,
    /// What the event is for; null when not given.
    #[oai(nullable)]
    pub description: Option<String>,
    /// When the subscriber was registered.
    #[oai(read_only)]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[oai(read_only)]
    pub updated_at: DateTime<Utc>,
}

/// Columns selected for [`Subscriber`].
const SUBSCRIBER_COLUMNS: &str =
    "subscriber_id, event_listener, replicable, description, created_at, updated_at";

/// A subscriber's writable fields, complete (create, replace).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriberInput {
    /// 1–100 characters: a letter, then letters, digits and `_ . : -`. Not a name the WebSocket
    /// protocol uses: `ping`, `subscribe`, `unsubscribe`, or anything starting with `auth:`,
    /// `room:`, `system:`, `pet:`, `order:`, `pets.`, `orders.` or `inventory.`.
    #[oai(validator(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z][A-Za-z0-9_.:-]*$"
    ))]
    pub event_listener: String,
    /// Re-broadcast to the sender's room; default `false` (also when `null`).
    #[oai(default, nullable)]
    pub replicable: bool,
    /// Up to 500 characters (never U+0000); absent or null for none.
    #[oai(nullable, validator(max_length = 500, pattern = r"^[^\x00]*$"))]
    pub description: Option<String>,
}

/// What an upsert did: the subscriber as stored, and whether it is new.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriberUpsert {
    /// `true` when the subscriber was created, `false` when an existing one with the same
    /// `eventListener` was replaced.
    pub created: bool,
    /// The subscriber as stored.
    pub subscriber: Subscriber,
}

/// Row of the upsert: the subscriber and whether the insert (not the update) happened.
#[derive(sqlx::FromRow)]
struct UpsertRow {
    #[sqlx(flatten)]
    subscriber: Subscriber,
    created: bool,
}

/// Checks an event name against the rules above; 400 naming the field otherwise.
///
/// The schema already checks length and characters for REST; this repeats them because the
/// WebSocket layer and other callers come in without the schema.
pub fn validate_event_listener(name: &str) -> Result<(), ApiError> {
    if !is_well_formed_event_name(name) {
        return Err(ApiError::bad_request(format!(
            "eventListener must be 1–{EVENT_LISTENER_MAX_CHARS} characters: a letter, then \
             letters, digits, `_`, `.`, `:` or `-`"
        )));
    }
    if RESERVED_NAMES.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(ApiError::bad_request(format!(
            "eventListener `{name}` is reserved by the WebSocket protocol"
        )));
    }
    Ok(())
}

/// Whether `name` has the shape of a custom event name: a letter, then up to
/// `EVENT_LISTENER_MAX_CHARS - 1` of `A-Z a-z 0-9 _ . : -` (reserved names not checked).
pub fn is_well_formed_event_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.len() <= EVENT_LISTENER_MAX_CHARS
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn validate(input: &SubscriberInput) -> Result<(), ApiError> {
    validate_event_listener(&input.event_listener)?;
    if input
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > DESCRIPTION_MAX_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "description must be at most {DESCRIPTION_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// Client errors for the constraints of `subscriber`. The checks only fire if the validation
/// above and the migration disagree; they still get a 400, not a 500.
fn constraint_error(constraint: &str) -> Option<ApiError> {
    match constraint {
        "subscriber_event_listener_key" => Some(ApiError::conflict(
            "another subscriber already has this eventListener",
        )),
        "subscriber_event_listener_check" => Some(ApiError::bad_request(
            "eventListener is malformed or reserved by the WebSocket protocol",
        )),
        "subscriber_description_check" => Some(ApiError::bad_request(format!(
            "description must be at most {DESCRIPTION_MAX_CHARS} characters"
        ))),
        _ => None,
    }
}

/// Creates the subscriber for `input.eventListener`, or replaces every writable field of the
/// existing one (keeping its id).
///
/// One statement, so two concurrent upserts of the same name cannot both insert: the loser
/// updates. `xmax = 0` holds only for a row version this statement inserted, which is how
/// PostgreSQL tells an insert from the `do update` branch in `returning`.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    input: &SubscriberInput,
) -> Result<SubscriberUpsert, ApiError> {
    validate(input)?;
    let row = sqlx::query_as::<_, UpsertRow>(&format!(
        "insert into subscriber (event_listener, replicable, description)
         values ($1, $2, $3)
         on conflict (event_listener) do update set
            replicable = excluded.replicable,
            description = excluded.description
         returning {SUBSCRIBER_COLUMNS}, (xmax = 0) as created"
    ))
    .bind(&input.event_listener)
    .bind(input.replicable)
    .bind(&input.description)
    .fetch_one(db)
    .await
    .on_constraint(constraint_error)?;
    Ok(SubscriberUpsert {
        created: row.created,
        subscriber: row.subscriber,
    })
}

/// A page of subscribers by `eventListener`, with the total count.
pub async fn list(
    db: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Subscriber>, i64), ApiError> {
    let subscribers = sqlx::query_as::<_, Subscriber>(&format!(
        "select {SUBSCRIBER_COLUMNS} from subscriber order by event_listener limit $1 offset $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from subscriber")
        .fetch_one(db)
        .await?;
    Ok((subscribers, total))
}

/// One subscriber by id.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Subscriber>, ApiError> {
    Ok(sqlx::query_as::<_, Subscriber>(&format!(
        "select {SUBSCRIBER_COLUMNS} from subscriber where subscriber_id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// The subscriber registered for the event `name`, if any. The WebSocket layer calls this for
/// an action it does not know itself: a subscriber makes it a custom event.
pub async fn find_by_event_listener(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<Subscriber>, ApiError> {
    Ok(sqlx::query_as::<_, Subscriber>(&format!(
        "select {SUBSCRIBER_COLUMNS} from subscriber where event_listener = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await?)
}

/// Replaces every writable field of subscriber `id`; `None` when it does not exist. Renaming
/// onto another subscriber's `eventListener` → 409.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    input: &SubscriberInput,
) -> Result<Option<Subscriber>, ApiError> {
    validate(input)?;
    sqlx::query_as::<_, Subscriber>(&format!(
        "update subscriber set event_listener = $2, replicable = $3, description = $4
         where subscriber_id = $1
         returning {SUBSCRIBER_COLUMNS}"
    ))
    .bind(id)
    .bind(&input.event_listener)
    .bind(input.replicable)
    .bind(&input.description)
    .fetch_optional(db)
    .await
    .on_constraint(constraint_error)
}

/// Deletes subscriber `id`; whether it existed.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, ApiError> {
    let done = sqlx::query("delete from subscriber where subscriber_id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes every subscriber; how many there were.
pub async fn delete_all(db: impl PgExecutor<'_>) -> Result<u64, ApiError> {
    let done = sqlx::query("delete from subscriber").execute(db).await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str) -> String {
        match validate_event_listener(name) {
            Ok(()) => panic!("{name:?} was accepted"),
            Err(ApiError::BadRequest(body)) => body.0.message,
            Err(other) => panic!("{name:?}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn well_formed_unreserved_names_are_accepted() {
        for name in [
            "a",
            "chat",
            "Chat.message",
            "game:move",
            "x-1_y.z:w",
            "pings",
            "subscribers",
            "pet",
            "petx:created",
            "authors:new",
            "Auth:login",
            "inventory",
            &"a".repeat(EVENT_LISTENER_MAX_CHARS),
        ] {
            assert!(validate_event_listener(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn malformed_names_are_refused_naming_the_field() {
        for name in [
            "",
            "1abc",
            "_abc",
            "has space",
            "slash/es",
            "émoji",
            "a\u{0}b",
            &"a".repeat(EVENT_LISTENER_MAX_CHARS + 1),
        ] {
            assert!(refused(name).contains("eventListener"), "{name:?}");
        }
    }

    #[test]
    fn protocol_names_are_reserved() {
        for name in [
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
        ] {
            assert!(refused(name).contains("reserved"), "{name:?}");
        }
    }

    #[test]
    fn descriptions_longer_than_the_limit_are_refused() {
        let input = |description: String| SubscriberInput {
            event_listener: "chat".into(),
            replicable: false,
            description: Some(description),
        };
        assert!(validate(&input("é".repeat(DESCRIPTION_MAX_CHARS))).is_ok());
        assert!(validate(&input("é".repeat(DESCRIPTION_MAX_CHARS + 1))).is_err());
    }
}
