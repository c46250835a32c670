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
        listing::{self, PetFilter, PetPage, PetSort, SortOrder},
        PetInput, PetPatch, PetStatus,
    },
    state::AppState,
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

/// Runs resource action `action` for `claims`.
pub async fn run(
    state: &AppState,
    claims: &Claims,
    action: &str,
    payload: &Value,
) -> Result<Value, WsError> {
    match action {
        "pets.list" => {
            // `status` is one status or a list (REST repeats the parameter).
            let statuses = match payload.get("status").filter(|v| !v.is_null()) {
                None => Vec::new(),
                Some(Value::Array(list)) => list.iter().map(parse).collect::<Result<_, _>>()?,
                Some(one) => vec![parse(one)?],
            };
            let query: PetListQuery = parse(&without(payload, &["status"]))?;
            let (filter, page) = query.into_parts(statuses);
            filter.validate()?;
            Ok(json_of(&listing::list(&state.db, &filter, &page).await?))
        }
        "pets.get" => Ok(json_of(&pets::get(state, id(payload)?).await?)),
        "pets.create" => {
            claims.require_admin()?;
            let input: PetInput = parse(payload)?;
            Ok(json_of(&pets::create(state, input).await?))
        }
        "pets.update" => {
            claims.require_admin()?;
            let (id, version) = (id(payload)?, version(payload)?);
            let patch: PetPatch = parse(&without(payload, &["id", "version"]))?;
            Ok(json_of(&pets::update(state, id, patch, version).await?))
        }
        "pets.delete" => {
            claims.require_admin()?;
            pets::delete(state, id(payload)?, version(payload)?).await?;
            Ok(Value::Object(Default::default()))
        }
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
            let order: PlaceOrder = parse(&without(payload, &["idempotencyKey"]))?;
            Ok(orders::place(state, claims, order, key.as_deref()).await?)
        }
        "orders.get" => Ok(json_of(&orders::get(state, claims, id(payload)?).await?)),
        "orders.list" => {
            let query: OrderListQuery = parse(payload)?;
            let filter = OrderFilter {
                user_id: orders::visible_user(claims, query.user_id)?,
                status: query.status,
            };
            let (items, total) =
                orders::list(&state.db, &filter, query.limit, query.offset).await?;
            Ok(serde_json::json!({
                "items": json_of(&items),
                "total": total,
                "limit": query.limit,
                "offset": query.offset,
            }))
        }
        "orders.cancel" => Ok(json_of(&orders::cancel(state, claims, id(payload)?).await?)),
        "inventory.get" => Ok(json_of(&pets::inventory(&state.db).await?)),
        other => Err(WsError::new(
            super::protocol::ErrorCode::UnknownAction,
            format!("unknown action {other:?}"),
        )),
    }
}

/// The filters, sort and page of `pets.list`, validated as REST validates its query.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct PetListQuery {
    #[oai(validator(min_length = 1, max_length = 50))]
    category: Option<String>,
    #[oai(validator(min_length = 1, max_length = 30))]
    tag: Option<String>,
    #[oai(validator(min_length = 1, max_length = 100))]
    name: Option<String>,
    min_price: Option<Decimal>,
    max_price: Option<Decimal>,
    #[oai(default = "default_sort")]
    sort: PetSort,
    #[oai(default = "default_order")]
    order: SortOrder,
    #[oai(
        default = "default_limit",
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    limit: i64,
    #[oai(default, validator(minimum(value = "0")))]
    offset: i64,
    #[oai(validator(max_length = 512))]
    cursor: Option<String>,
}

impl PetListQuery {
    fn into_parts(self, statuses: Vec<PetStatus>) -> (PetFilter, PetPage) {
        (
            PetFilter {
                statuses,
                category: self.category,
                tag: self.tag,
                name: self.name,
                min_price: self.min_price,
                max_price: self.max_price,
            },
            PetPage {
                sort: self.sort,
                order: self.order,
                limit: self.limit,
                offset: self.offset,
                cursor: self.cursor,
            },
        )
    }
}

/// The filters and page of `orders.list`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct OrderListQuery {
    user_id: Option<Uuid>,
    status: Option<OrderStatus>,
    #[oai(
        default = "default_limit",
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    limit: i64,
    #[oai(default, validator(minimum(value = "0")))]
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

/// Parses `payload` as `T` with the validators REST applies to it.
fn parse<T: ParseFromJSON>(payload: &Value) -> Result<T, WsError> {
    T::parse_from_json(Some(payload.clone()))
        .map_err(|err| WsError::invalid(format!("payload: {}", err.into_message())))
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
