//! `/api/v1/subscribers`: custom WebSocket events, registered and managed by admins only.
//!
//! `POST` is an upsert keyed by `eventListener` (201 when it created, 200 when it replaced),
//! so a deployment script can register its events again on every run; `PUT` on an id is how a
//! subscriber is renamed.

use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    ApiResponse, Object, OpenApi,
};
use uuid::Uuid;

use super::{json_body::JsonBody, ApiTags, NoContent};
use crate::{
    auth::BearerAuth,
    error::{ApiError, ApiResult},
    state::AppState,
    subscribers::{self, Subscriber, SubscriberInput, SubscriberUpsert},
};

/// Custom WebSocket events.
pub struct SubscribersApi;

/// What `POST` did.
#[derive(ApiResponse)]
pub enum SubscriberUpserted {
    /// A new subscriber was registered (`created` is `true`).
    #[oai(status = 201)]
    Created(Json<SubscriberUpsert>),
    /// The subscriber with this `eventListener` was replaced, keeping its id (`created` is
    /// `false`).
    #[oai(status = 200)]
    Replaced(Json<SubscriberUpsert>),
}

/// One page of subscribers.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriberPage {
    /// The subscribers on this page, by `eventListener`.
    pub items: Vec<Subscriber>,
    /// How many subscribers exist.
    pub total: i64,
    /// The page size asked for.
    pub limit: i64,
    /// How many were skipped.
    pub offset: i64,
}

/// What `DELETE /api/v1/subscribers` removed.
#[derive(Debug, Object)]
pub struct SubscribersDeleted {
    /// How many subscribers were deleted.
    pub deleted: u64,
}

fn default_limit() -> i64 {
    20
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::not_found(format!("subscriber {id} not found"))
}

#[OpenApi(prefix_path = "/api/v1/subscribers", tag = "ApiTags::Subscribers")]
impl SubscribersApi {
    /// Registers a custom event, or replaces the one with the same `eventListener` (admins).
    #[oai(path = "/", method = "post", operation_id = "upsertSubscriber")]
    async fn upsert(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: JsonBody<SubscriberInput>,
    ) -> ApiResult<SubscriberUpserted> {
        auth.0.require_admin()?;
        let upsert = subscribers::upsert(&state.db, &body.0).await?;
        Ok(if upsert.created {
            SubscriberUpserted::Created(Json(upsert))
        } else {
            SubscriberUpserted::Replaced(Json(upsert))
        })
    }

    /// Lists subscribers by `eventListener` (admins).
    #[oai(path = "/", method = "get", operation_id = "listSubscribers")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// Page size, 1–100 (default 20).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// How many to skip, ≥ 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> ApiResult<Json<SubscriberPage>> {
        auth.0.require_admin()?;
        let (items, total) = subscribers::list(&state.db, limit.0, offset.0).await?;
        Ok(Json(SubscriberPage {
            items,
            total,
            limit: limit.0,
            offset: offset.0,
        }))
    }

    /// Deletes every subscriber and says how many there were (admins).
    #[oai(path = "/", method = "delete", operation_id = "deleteAllSubscribers")]
    async fn delete_all(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
    ) -> ApiResult<Json<SubscribersDeleted>> {
        auth.0.require_admin()?;
        let deleted = subscribers::delete_all(&state.db).await?;
        Ok(Json(SubscribersDeleted { deleted }))
    }

    /// The subscriber for an event name (admins). A name that could never be registered → 400.
    #[oai(
        path = "/event/:eventListener",
        method = "get",
        operation_id = "getSubscriberByEventListener"
    )]
    async fn get_by_event_listener(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// The event name.
        #[oai(
            name = "eventListener",
            validator(
                min_length = 1,
                max_length = 100,
                pattern = r"^[A-Za-z][A-Za-z0-9_.:-]*$"
            )
        )]
        event_listener: Path<String>,
    ) -> ApiResult<Json<Subscriber>> {
        auth.0.require_admin()?;
        subscribers::find_by_event_listener(&state.db, &event_listener.0)
            .await?
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no subscriber for eventListener `{}`",
                    event_listener.0
                ))
            })
    }

    /// One subscriber (admins).
    #[oai(path = "/:id", method = "get", operation_id = "getSubscriber")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> ApiResult<Json<Subscriber>> {
        auth.0.require_admin()?;
        subscribers::find(&state.db, id.0)
            .await?
            .map(Json)
            .ok_or_else(|| not_found(id.0))
    }

    /// Replaces a subscriber, `eventListener` included (admins). Renaming onto another
    /// subscriber's `eventListener` → 409.
    #[oai(path = "/:id", method = "put", operation_id = "replaceSubscriber")]
    async fn replace(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<SubscriberInput>,
    ) -> ApiResult<Json<Subscriber>> {
        auth.0.require_admin()?;
        subscribers::update(&state.db, id.0, &body.0)
            .await?
            .map(Json)
            .ok_or_else(|| not_found(id.0))
    }

    /// Deletes a subscriber (admins).
    #[oai(path = "/:id", method = "delete", operation_id = "deleteSubscriber")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        auth.0.require_admin()?;
        if !subscribers::delete(&state.db, id.0).await? {
            return Err(not_found(id.0));
        }
        Ok(NoContent::Done)
    }
}
