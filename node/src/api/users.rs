//! `/api/v1/users`: the admin listing and per-account reads, changes and deletion.
//!
//! Users may read, change and delete their own account; admins any. Only admins change roles
//! and statuses. Changes that affect what a token says (role, status, password) and deletion end
//! the account's sessions on every node.

use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    Object, OpenApi,
};
use uuid::Uuid;

use super::{ApiTags, NoContent};
use crate::{
    auth::{sessions, BearerAuth, Role},
    error::{ApiError, ApiResult},
    state::AppState,
    users::{self, User, UserChanges, UserStatus},
};

/// User accounts.
pub struct UsersApi;

/// One page of users.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct UserPage {
    /// The users on this page, oldest first.
    pub items: Vec<User>,
    /// How many users exist.
    pub total: i64,
    /// The page size asked for.
    pub limit: i64,
    /// How many were skipped.
    pub offset: i64,
}

/// Changes to an account; absent fields stay as they are.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    /// New email; unique ignoring case.
    #[oai(validator(max_length = 254, pattern = r"^[^\s@]+@[^\s@]+\.[^\s@]+$"))]
    pub email: Option<String>,
    /// New password (8–128 characters); ends the account's sessions.
    #[oai(validator(min_length = 8, max_length = 128))]
    pub password: Option<String>,
    /// Given name.
    #[oai(validator(max_length = 100))]
    pub first_name: Option<String>,
    /// Family name.
    #[oai(validator(max_length = 100))]
    pub last_name: Option<String>,
    /// Phone number.
    #[oai(validator(max_length = 32))]
    pub phone: Option<String>,
    /// New role (admins only); ends the account's sessions.
    pub role: Option<Role>,
    /// New status (admins only); ends the account's sessions.
    pub status: Option<UserStatus>,
}

fn default_limit() -> i64 {
    20
}

fn default_offset() -> i64 {
    0
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::not_found(format!("user {id} not found"))
}

#[OpenApi(prefix_path = "/api/v1/users", tag = "ApiTags::Users")]
impl UsersApi {
    /// Lists users, oldest first (admins only).
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// Page size, 1–100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// How many to skip, ≥ 0.
        #[oai(default = "default_offset", validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> ApiResult<Json<UserPage>> {
        auth.0.require_admin()?;
        let (items, total) = users::list(&state.db, limit.0, offset.0).await?;
        Ok(Json(UserPage {
            items,
            total,
            limit: limit.0,
            offset: offset.0,
        }))
    }

    /// One account (the user themself or an admin).
    #[oai(path = "/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> ApiResult<Json<User>> {
        auth.0.require_self_or_admin(id.0)?;
        users::find(&state.db, id.0)
            .await?
            .map(Json)
            .ok_or_else(|| not_found(id.0))
    }

    /// Changes an account (the user themself or an admin; role and status: admins only).
    #[oai(path = "/:id", method = "put")]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: Json<UpdateUserRequest>,
    ) -> ApiResult<Json<User>> {
        auth.0.require_self_or_admin(id.0)?;
        let body = body.0;
        if (body.role.is_some() || body.status.is_some()) && !auth.0.is_admin() {
            return Err(ApiError::forbidden("only admins change roles or statuses"));
        }
        let changes = UserChanges {
            email: body.email,
            password: body.password,
            first_name: body.first_name,
            last_name: body.last_name,
            phone: body.phone,
            role: body.role,
            status: body.status,
        };
        let ends_sessions = changes.ends_sessions();
        let mut tx = state.db.begin().await?;
        let user = users::update(&mut *tx, id.0, changes)
            .await?
            .ok_or_else(|| not_found(id.0))?;
        if ends_sessions {
            sessions::revoke_user_sessions(&state, &mut tx, id.0).await?;
        }
        tx.commit().await?;
        Ok(Json(user))
    }

    /// Deletes an account and ends its sessions (the user themself or an admin).
    #[oai(path = "/:id", method = "delete")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        auth.0.require_self_or_admin(id.0)?;
        let mut tx = state.db.begin().await?;
        if !users::delete(&mut *tx, id.0).await? {
            return Err(not_found(id.0));
        }
        // The refresh tokens went with the account (cascade); live access tokens are cut off here.
        sessions::revoke_user_sessions(&state, &mut tx, id.0).await?;
        tx.commit().await?;
        Ok(NoContent::Done)
    }
}
