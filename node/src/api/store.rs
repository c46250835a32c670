//! `/api/v1/store`: orders and the inventory.

use poem::{http::HeaderMap, web::Data};
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    ApiResponse, Enum, Object, OpenApi,
};
use uuid::Uuid;

use super::{header_param, json_body::JsonBody, ApiTags};
use crate::{
    auth::BearerAuth,
    error::{ApiError, ApiResult},
    orders::{self, Order, OrderFilter, OrderStatus, PlaceOrder},
    pets::{self, Inventory},
    state::AppState,
};

/// Orders and inventory.
pub struct StoreApi;

/// An order was placed (or an identical request with the same `Idempotency-Key` was replayed).
#[derive(ApiResponse)]
pub enum OrderPlaced {
    /// The order.
    #[oai(status = 201)]
    Created(Json<Order>),
}

/// One page of orders.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderPage {
    /// Orders, newest first.
    pub items: Vec<Order>,
    /// How many match.
    pub total: i64,
    /// Page size asked for.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

/// A status change by an admin.
#[derive(Debug, Object)]
pub struct StatusChange {
    /// `delivered` (from `approved`); payments approve orders and `DELETE` cancels them.
    pub status: NewOrderStatus,
}

/// The statuses an admin sets by hand: only `delivered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum NewOrderStatus {
    /// Handed over (from `approved`; 409 from any other status).
    Delivered,
}

fn default_limit() -> i64 {
    20
}

#[OpenApi(prefix_path = "/api/v1/store", tag = "ApiTags::Store")]
impl StoreApi {
    /// Places an order: stock is taken at once and payment runs in the background (the order
    /// turns `approved`, or `cancelled` with its stock restored). With `Idempotency-Key`, a retry
    /// with the same body returns the same order from any node; another body → 422. A full
    /// payment queue → 503 with `Retry-After`.
    #[oai(path = "/orders", method = "post", operation_id = "placeOrder")]
    async fn place(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// Client-chosen key (up to 255 printable ASCII characters) that makes retries safe;
        /// empty is the same as absent.
        #[oai(
            name = "Idempotency-Key",
            validator(max_length = 255, pattern = r"^[ -~]*$")
        )]
        idempotency_key: Header<Option<String>>,
        headers: &HeaderMap,
        body: JsonBody<PlaceOrder>,
    ) -> ApiResult<OrderPlaced> {
        let key = header_param(headers, "Idempotency-Key", idempotency_key.0)?;
        let key = key.as_deref().filter(|key| !key.is_empty());
        let stored = orders::place(&state, &auth.0, body.0, key).await?;
        let order: Order = serde_json::from_value(stored).map_err(|e| ApiError::internal(&e))?;
        Ok(OrderPlaced::Created(Json(order)))
    }

    /// Lists orders, newest first: your own; admins see all and may filter by user.
    #[oai(path = "/orders", method = "get", operation_id = "listOrders")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// Only this user's orders (admins; others may only name themselves).
        #[oai(name = "userId")]
        user_id: Query<Option<Uuid>>,
        /// Only orders in this status.
        status: Query<Option<OrderStatus>>,
        /// Page size, 1–100 (default 20).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// Rows to skip.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> ApiResult<Json<OrderPage>> {
        let filter = OrderFilter {
            user_id: orders::visible_user(&auth.0, user_id.0)?,
            status: status.0,
        };
        let (items, total) = orders::list(&state.db, &filter, limit.0, offset.0).await?;
        Ok(Json(OrderPage {
            items,
            total,
            limit: limit.0,
            offset: offset.0,
        }))
    }

    /// One order (its owner or an admin; 404 for anyone else).
    #[oai(path = "/orders/:id", method = "get", operation_id = "getOrder")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Order>> {
        Ok(Json(orders::get(&state, &auth.0, id.0).await?))
    }

    /// Cancels an order before delivery (owner or admin) and restores its stock; a second
    /// cancel → 409 and restores nothing.
    #[oai(path = "/orders/:id", method = "delete", operation_id = "cancelOrder")]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Order>> {
        Ok(Json(orders::cancel(&state, &auth.0, id.0).await?))
    }

    /// Marks an approved order delivered (admins).
    #[oai(
        path = "/orders/:id/status",
        method = "patch",
        operation_id = "setOrderStatus"
    )]
    async fn set_status(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<StatusChange>,
    ) -> ApiResult<Json<Order>> {
        auth.0.require_admin()?;
        match body.status {
            NewOrderStatus::Delivered => Ok(Json(orders::deliver(&state, id.0).await?)),
        }
    }

    /// Pets by status and the total stock.
    #[oai(path = "/inventory", method = "get", operation_id = "getInventory")]
    async fn inventory(
        &self,
        state: Data<&AppState>,
        _auth: BearerAuth,
    ) -> ApiResult<Json<Inventory>> {
        Ok(Json(pets::inventory(&state.db).await?))
    }
}
