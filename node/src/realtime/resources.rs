//! Resource actions over the WebSocket, mirroring REST: the same service functions, the same
//! validators (the request types are poem-openapi objects, parsed with the validation REST
//! applies), the same rules about who may do what, and the same JSON in the answers.
//!
//! | action | REST | payload |
//! | --- | --- | --- |
//! | `pets.list` | `GET /api/v1/pets` | the query parameters as fields (`status` a string or list) |
//! | `pets.get` | `GET /api/v1/pets/{id}` | `{id}` |
//! | `pets.create` | `POST /api/v1/pets` (admins) | the pet |
//! | `pets.update` | `PATCH /api/v1/pets/{id}` (admins) | `{id, version?, ...fields}` (`version` as `If-Match`) |
//! | `pets.delete` | `DELETE /api/v1/pets/{id}` (admins) | `{id, version?}` |
//! | `orders.create` | `POST /api/v1/store/orders` | the order, `idempotencyKey?` |
//! | `orders.get` | `GET /api/v1/store/orders/{id}` | `{id}` |
//! | `orders.list` | `GET /api/v1/store/orders` | `{userId?, status?, limit?, offset?}` |
//! | `orders.cancel` | `DELETE /api/v1/store/orders/{id}` | `{id}` |
//! | `inventory.get` | `GET /api/v1/store/inventory` | `{}` |

use poem_openapi::{
    types::{ParseFromJSON, ToJSON},
    Object,
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::protocol::{field, WsError};
use crate::{
    auth::Claims,
    orders::{self, OrderFilter, OrderStatus, PlaceOrder},
    pets::{
        self,
        listing::{self, CursorText, PetFilter, PetPage, PetSort, SortOrder},
        price::Price,
        PetInput, PetPatch, PetStatus,
    },
    state::AppState,
    text_param::TextParam,
};

/// The resource actions, each answered by [`run`].
pub const RESOURCE_ACTIONS: &[&str] = &[
    "pets.list",
    "pets.get",
    "pets.create",
    "pets.update",
    "pets.delete",
    "orders.create",
    "orders.get",
    "orders.list",
    "orders.cancel",
    "inventory.get",
];

/// Whether `action` is one of the resource actions.
pub fn is_resource_action(action: &str) -> bool {
    RESOURCE_ACTIONS.contains(&action)
}

/// A resource action with its payload parsed as REST parses the request.
#[derive(Debug)]
pub enum ResourceAction {
    /// `pets.list`.
    PetsList {
        /// The filters.
        filter: PetFilter,
        /// Sort and page.
        page: PetPage,
    },
    /// `pets.get`.
    PetsGet {
        /// The pet.
        id: i64,
    },
    /// `pets.create`.
    PetsCreate(PetInput),
    /// `pets.update` (PATCH).
    PetsUpdate {
        /// The pet.
        id: i64,
        /// The version the change is based on (`If-Match`).
        version: Option<i32>,
        /// The changes.
        patch: PetPatch,
    },
    /// `pets.delete`.
    PetsDelete {
        /// The pet.
        id: i64,
        /// The version the deletion is based on (`If-Match`).
        version: Option<i32>,
    },
    /// `orders.create`.
    OrdersCreate {
        /// The order.
        order: PlaceOrder,
        /// `Idempotency-Key`.
        key: Option<String>,
    },
    /// `orders.get`.
    OrdersGet {
        /// The order.
        id: i64,
    },
    /// `orders.list`.
    OrdersList {
        /// Only this user's orders (admins; others may only name themselves).
        user_id: Option<Uuid>,
        /// Only orders in this status.
        status: Option<OrderStatus>,
        /// Page size.
        limit: i64,
        /// Rows to skip.
        offset: i64,
    },
    /// `orders.cancel`.
    OrdersCancel {
        /// The order.
        id: i64,
    },
    /// `inventory.get`.
    InventoryGet,
}

/// Decodes the payload of resource action `action` (one of [`RESOURCE_ACTIONS`]).
pub fn decode(action: &str, payload: &Value) -> Result<ResourceAction, WsError> {
    Ok(match action {
        "pets.list" => {
            // `status` is one status or a list (REST repeats the parameter).
            let statuses = match payload.get("status").filter(|v| !v.is_null()) {
                None => Vec::new(),
                Some(Value::Array(list)) => list.iter().map(parse).collect::<Result<_, _>>()?,
                Some(one) => vec![parse(one)?],
            };
            let query: PetListQuery = parse(&without(payload, &["status"]))?;
            let (filter, page) = query.into_parts(statuses);
            ResourceAction::PetsList { filter, page }
        }
        "pets.get" => ResourceAction::PetsGet { id: id(payload)? },
        "pets.create" => ResourceAction::PetsCreate(parse(payload)?),
        "pets.update" => ResourceAction::PetsUpdate {
            id: id(payload)?,
            version: version(payload)?,
            patch: parse(&without(payload, &["id", "version"]))?,
        },
        "pets.delete" => ResourceAction::PetsDelete {
            id: id(payload)?,
            version: version(payload)?,
        },
        "orders.create" => {
            let key = match payload.get("idempotencyKey").filter(|v| !v.is_null()) {
                None => None,
                Some(Value::String(key)) if (1..=255).contains(&key.chars().count()) => {
                    Some(key.clone())
                }
                Some(_) => {
                    return Err(WsError::invalid(
                        "payload.idempotencyKey must be a string of 1 to 255 characters",
                    ))
                }
            };
            ResourceAction::OrdersCreate {
                order: parse(&without(payload, &["idempotencyKey"]))?,
                key,
            }
        }
        "orders.get" => ResourceAction::OrdersGet { id: id(payload)? },
        "orders.list" => {
            let query: OrderListQuery = parse(payload)?;
            ResourceAction::OrdersList {
                user_id: query.user_id,
                status: query.status,
                limit: query.limit,
                offset: query.offset,
            }
        }
        "orders.cancel" => ResourceAction::OrdersCancel { id: id(payload)? },
        "inventory.get" => ResourceAction::InventoryGet,
        other => {
            return Err(WsError::new(
                super::protocol::ErrorCode::UnknownAction,
                format!("unknown action {other:?}"),
            ))
        }
    })
}

/// Runs `action` for `claims` (the connection has checked [`super::decode::access`]).
pub async fn run(
    state: &AppState,
    claims: &Claims,
    action: ResourceAction,
) -> Result<Value, WsError> {
    match action {
        ResourceAction::PetsList { filter, page } => {
            Ok(json_of(&listing::list(&state.db, &filter, &page).await?))
        }
        ResourceAction::PetsGet { id } => Ok(json_of(&pets::get(state, id).await?)),
        ResourceAction::PetsCreate(input) => {
            claims.require_admin()?;
            Ok(json_of(&pets::create(state, input).await?))
        }
        ResourceAction::PetsUpdate { id, version, patch } => {
            claims.require_admin()?;
            Ok(json_of(&pets::update(state, id, patch, version).await?))
        }
        ResourceAction::PetsDelete { id, version } => {
            claims.require_admin()?;
            pets::delete(state, id, version).await?;
            Ok(Value::Object(Default::default()))
        }
        ResourceAction::OrdersCreate { order, key } => {
            Ok(orders::place(state, claims, order, key.as_deref()).await?)
        }
        ResourceAction::OrdersGet { id } => Ok(json_of(&orders::get(state, claims, id).await?)),
        ResourceAction::OrdersList {
            user_id,
            status,
            limit,
            offset,
        } => {
            let filter = OrderFilter {
                user_id: orders::visible_user(claims, user_id)?,
                status,
            };
            let (items, total) = orders::list(&state.db, &filter, limit, offset).await?;
            Ok(serde_json::json!({
                "items": json_of(&items),
                "total": total,
                "limit": limit,
                "offset": offset,
            }))
        }
        ResourceAction::OrdersCancel { id } => {
            Ok(json_of(&orders::cancel(state, claims, id).await?))
        }
        ResourceAction::InventoryGet => Ok(json_of(&pets::inventory(&state.db).await?)),
    }
}

/// The filters, sort and page of `pets.list`, validated as REST validates its query (prices
/// may also be JSON numbers here, as in bodies). `null` is the same as absent.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct PetListQuery {
    #[oai(nullable, validator(min_length = 1, max_length = 50))]
    category: Option<String>,
    #[oai(nullable, validator(min_length = 1, max_length = 30))]
    tag: Option<String>,
    #[oai(nullable, validator(min_length = 1, max_length = 100))]
    name: Option<String>,
    #[oai(nullable)]
    min_price: Option<Price>,
    #[oai(nullable)]
    max_price: Option<Price>,
    #[oai(default = "default_sort", nullable)]
    sort: PetSort,
    #[oai(default = "default_order", nullable)]
    order: SortOrder,
    #[oai(
        default = "default_limit",
        nullable,
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    limit: i64,
    #[oai(default, nullable, validator(minimum(value = "0")))]
    offset: i64,
    #[oai(nullable)]
    cursor: Option<TextParam<CursorText>>,
}

impl PetListQuery {
    fn into_parts(self, statuses: Vec<PetStatus>) -> (PetFilter, PetPage) {
        (
            PetFilter {
                statuses,
                category: self.category,
                tag: self.tag,
                name: self.name,
                min_price: self.min_price.map(Decimal::from),
                max_price: self.max_price.map(Decimal::from),
            },
            PetPage {
                sort: self.sort,
                order: self.order,
                limit: self.limit,
                offset: self.offset,
                cursor: self.cursor.map(|c| c.0),
            },
        )
    }
}

/// The filters and page of `orders.list`; `null` is the same as absent.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct OrderListQuery {
    #[oai(nullable)]
    user_id: Option<Uuid>,
    #[oai(nullable)]
    status: Option<OrderStatus>,
    #[oai(
        default = "default_limit",
        nullable,
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    limit: i64,
    #[oai(default, nullable, validator(minimum(value = "0")))]
    offset: i64,
}

fn default_sort() -> PetSort {
    PetSort::CreatedAt
}

fn default_order() -> SortOrder {
    SortOrder::Asc
}

fn default_limit() -> i64 {
    20
}

/// Parses `payload` as `T` as REST parses its body: the documented JSON types, then the
/// validators.
fn parse<T: ParseFromJSON>(payload: &Value) -> Result<T, WsError> {
    crate::api::json_body::parse(payload.clone(), "payload").map_err(WsError::invalid)
}

/// `payload` without `fields` (those that are not part of the REST body).
fn without(payload: &Value, fields: &[&str]) -> Value {
    let mut body = payload.clone();
    if let Value::Object(map) = &mut body {
        for name in fields {
            map.remove(*name);
        }
    }
    body
}

/// `payload.id`, a positive integer.
fn id(payload: &Value) -> Result<i64, WsError> {
    field(payload, "id")?
        .as_i64()
        .filter(|id| *id > 0)
        .ok_or_else(|| WsError::invalid("payload.id must be a positive integer"))
}

/// `payload.version`, the `If-Match` of REST: the version a change is based on.
fn version(payload: &Value) -> Result<Option<i32>, WsError> {
    match payload.get("version").filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .filter(|v| *v > 0)
            .map(Some)
            .ok_or_else(|| WsError::invalid("payload.version must be a positive integer")),
    }
}

/// A response body as REST writes it.
fn json_of<T: ToJSON>(value: &T) -> Value {
    value.to_json().unwrap_or(Value::Null)
}
