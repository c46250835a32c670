//! Users: the account model and its queries, shared by the REST handlers and the bootstrap
//! admin.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::{
    auth::{password, Role},
    error::{ApiError, ResultExt},
    text_enum::text_enum,
};

/// Whether an account may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum UserStatus {
    /// May log in.
    Active,
    /// May not log in; existing sessions were revoked when disabled.
    Disabled,
}

text_enum!(UserStatus { Active => "active", Disabled => "disabled" });

/// A user as clients see it (never with the password hash).
#[derive(Debug, Clone, Object, sqlx::FromRow)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct User {
    /// Server-assigned id.
    #[oai(read_only)]
    #[sqlx(rename = "user_id")]
    pub id: Uuid,
    /// Unique, case-insensitive.
    pub username: String,
    /// Unique, case-insensitive.
    pub email: String,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Phone number, free form.
    pub phone: Option<String>,
    /// `user` or `admin`.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// `active` or `disabled`.
    #[sqlx(try_from = "String")]
    pub status: UserStatus,
    /// When the account was created.
    #[oai(read_only)]
    pub created_at: DateTime<Utc>,
    /// When the account last changed.
    #[oai(read_only)]
    pub updated_at: DateTime<Utc>,
}

/// Columns selected for [`User`].
const USER_COLUMNS: &str =
    "user_id, username, email, first_name, last_name, phone, role, status, created_at, updated_at";

/// What registration (or the admin bootstrap) stores.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Validated username.
    pub username: String,
    /// Validated email.
    pub email: String,
    /// Plain password, hashed before it is stored.
    pub password: String,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// Role of the new account.
    pub role: Role,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New email.
    pub email: Option<String>,
    /// New password (hashed before storing).
    pub password: Option<String>,
    /// New given name.
    pub first_name: Option<String>,
    /// New family name.
    pub last_name: Option<String>,
    /// New phone.
    pub phone: Option<String>,
    /// New role (admins only; checked by the caller).
    pub role: Option<Role>,
    /// New status (admins only; checked by the caller).
    pub status: Option<UserStatus>,
}

impl UserChanges {
    /// Whether existing sessions must end: their tokens carry the old role, or the account can no
    /// longer be used, or the password changed.
    pub fn ends_sessions(&self) -> bool {
        self.role.is_some() || self.status.is_some() || self.password.is_some()
    }

    /// Whether the account stops being an active admin, if it is one: demoted or disabled.
    pub fn removes_admin(&self) -> bool {
        self.role == Some(Role::User) || self.status == Some(UserStatus::Disabled)
    }
}

/// 409 if `id` is the only active admin: demoting, disabling or deleting it would leave no one
/// able to manage accounts, pets and subscribers (and only `create-admin` on a node's command
/// line could repair it). Call it in the transaction that demotes, disables or deletes `id`.
///
/// The active admins' rows stay locked until that transaction ends, in id order, so two admins
/// demoting each other at once cannot both succeed: the second waits for the first, then sees
/// one admin fewer.
pub async fn keep_an_active_admin(tx: &mut PgConnection, id: Uuid) -> Result<(), ApiError> {
    let admins: Vec<Uuid> = sqlx::query_scalar(
        "select user_id from app_user where role = 'admin' and status = 'active'
         order by user_id for update",
    )
    .fetch_all(&mut *tx)
    .await?;
    if admins == [id] {
        return Err(ApiError::conflict(
            "this is the last active admin: it cannot be demoted, disabled or deleted; \
             make another admin first",
        ));
    }
    Ok(())
}

/// 409 for the unique indexes of `app_user`.
fn duplicate(constraint: &str) -> Option<ApiError> {
    match constraint {
        "app_user_username_key" => Some(ApiError::conflict("username is already taken")),
        "app_user_email_key" => Some(ApiError::conflict("email is already registered")),
        _ => None,
    }
}

/// Inserts a user. Duplicate username or email → 409, and nothing is written.
pub async fn create(db: impl PgExecutor<'_>, new: NewUser) -> Result<User, ApiError> {
    let hash = password::hash(new.password).await?;
    let result = sqlx::query_as::<_, User>(&format!(
        "insert into app_user (username, email, password_hash, first_name, last_name, phone, role)
         values ($1, $2, $3, $4, $5, $6, $7)
         returning {USER_COLUMNS}"
    ))
    .bind(&new.username)
    .bind(&new.email)
    .bind(hash)
    .bind(&new.first_name)
    .bind(&new.last_name)
    .bind(&new.phone)
    .bind(new.role.as_str())
    .fetch_one(db)
    .await;
    result.on_constraint(duplicate)
}

/// One user by id.
pub async fn find(db: &PgPool, id: Uuid) -> Result<Option<User>, ApiError> {
    Ok(sqlx::query_as::<_, User>(&format!(
        "select {USER_COLUMNS} from app_user where user_id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// A page of users, oldest first, with the total count.
pub async fn list(db: &PgPool, limit: i64, offset: i64) -> Result<(Vec<User>, i64), ApiError> {
    let users = sqlx::query_as::<_, User>(&format!(
        "select {USER_COLUMNS} from app_user order by created_at, user_id limit $1 offset $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from app_user")
        .fetch_one(db)
        .await?;
    Ok((users, total))
}

/// Applies `changes`; `None` when the user does not exist. Duplicate email → 409.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: UserChanges,
) -> Result<Option<User>, ApiError> {
    let hash = match changes.password {
        Some(password) => Some(password::hash(password).await?),
        None => None,
    };
    let result = sqlx::query_as::<_, User>(&format!(
        "update app_user set
            email = coalesce($2, email),
            password_hash = coalesce($3, password_hash),
            first_name = coalesce($4, first_name),
            last_name = coalesce($5, last_name),
            phone = coalesce($6, phone),
            role = coalesce($7, role),
            status = coalesce($8, status)
         where user_id = $1
         returning {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(&changes.email)
    .bind(hash)
    .bind(&changes.first_name)
    .bind(&changes.last_name)
    .bind(&changes.phone)
    .bind(changes.role.map(Role::as_str))
    .bind(changes.status.map(UserStatus::as_str))
    .fetch_optional(db)
    .await;
    result.on_constraint(duplicate)
}

/// Deletes a user (their refresh tokens go with them); whether they existed.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, ApiError> {
    let done = sqlx::query("delete from app_user where user_id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Makes sure an admin named `username` exists with `password`: creates it, or resets its
/// password and role. Used by `create-admin` and by `PETMESH_ADMIN_PASSWORD` at start-up.
/// Returns whether the account was created.
pub async fn ensure_admin(
    db: &PgPool,
    username: &str,
    email: &str,
    password: &str,
) -> Result<bool, ApiError> {
    let existing: Option<Uuid> =
        sqlx::query_scalar("select user_id from app_user where lower(username) = lower($1)")
            .bind(username)
            .fetch_optional(db)
            .await?;
    match existing {
        Some(id) => {
            let changes = UserChanges {
                password: Some(password.to_owned()),
                role: Some(Role::Admin),
                status: Some(UserStatus::Active),
                ..UserChanges::default()
            };
            update(db, id, changes).await?;
            Ok(false)
        }
        None => {
            let new = NewUser {
                username: username.to_owned(),
                email: email.to_owned(),
                password: password.to_owned(),
                first_name: None,
                last_name: None,
                phone: None,
                role: Role::Admin,
            };
            create(db, new).await?;
            Ok(true)
        }
    }
}
