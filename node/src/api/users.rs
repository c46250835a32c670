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

use super::{json_body::JsonBody, ApiTags, NoContent};
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

/// Changes to an account; absent (or `null`) fields stay as they are. Text never contains
/// U+0000.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    // Something@something.something, the parts without `@`, controls or white space. White
    // space is spelled out: `\s` means other characters in Rust's regex (which checks it here)
    // than in ECMAScript's (which JSON Schema tools use), U+0085 for one.
    /// New email; unique ignoring case.
    #[oai(
        nullable,
        validator(
            max_length = 254,
            pattern = r"^[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+@[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+\.[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+$"
        )
    )]
    pub email: Option<String>,
    /// New password (8–128 characters); ends the account's sessions.
    #[oai(nullable, validator(min_length = 8, max_length = 128))]
    pub password: Option<String>,
    /// Given name.
    #[oai(nullable, validator(max_length = 100, pattern = r"^[^\x00]*$"))]
    pub first_name: Option<String>,
    /// Family name.
    #[oai(nullable, validator(max_length = 100, pattern = r"^[^\x00]*$"))]
    pub last_name: Option<String>,
    /// Phone number.
    #[oai(nullable, validator(max_length = 32, pattern = r"^[^\x00]*$"))]
    pub phone: Option<String>,
    /// New role (admins only); ends the account's sessions. The last active admin cannot be
    /// demoted (409).
    #[oai(nullable)]
    pub role: Option<Role>,
    /// New status (admins only); ends the account's sessions. The last active admin cannot be
    /// disabled (409).
    #[oai(nullable)]
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
    #[oai(path = "/", method = "get", operation_id = "listUsers")]
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
    #[oai(path = "/:id", method = "get", operation_id = "getUser")]
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

    /// Changes an account (the user themself or an admin; role and status: admins only). The
    /// last active admin cannot be demoted or disabled (409).
    #[oai(path = "/:id", method = "put", operation_id = "updateUser")]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<UpdateUserRequest>,
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
        if changes.removes_admin() {
            users::keep_an_active_admin(&mut tx, id.0).await?;
        }
        let user = users::update(&mut *tx, id.0, changes)
            .await?
            .ok_or_else(|| not_found(id.0))?;
        if ends_sessions {
            sessions::revoke_user_sessions(&state, &mut tx, id.0).await?;
        }
        tx.commit().await?;
        Ok(Json(user))
    }

    /// Deletes an account and ends its sessions (the user themself or an admin). The last
    /// active admin cannot be deleted (409).
    #[oai(path = "/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        auth.0.require_self_or_admin(id.0)?;
        let mut tx = state.db.begin().await?;
        users::keep_an_active_admin(&mut tx, id.0).await?;
        if !users::delete(&mut *tx, id.0).await? {
            return Err(not_found(id.0));
        }
        // The refresh tokens went with the account (cascade); live access tokens are cut off here.
        sessions::revoke_user_sessions(&state, &mut tx, id.0).await?;
        tx.commit().await?;
        Ok(NoContent::Done)
    }
}
