//! Sessions: login, refresh with rotation, logout and logout-all.
//!
//! A session is a refresh-token family (see `migrations/*_create_refresh_token.sql`). Database
//! changes and the matching Redis revocations happen inside one transaction that commits only
//! after Redis accepted the revocation, so a failure leaves the session as it was.

use std::net::IpAddr;

use poem_openapi::Object;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{
    lockout::Refusal,
    password,
    tokens::{hash_refresh_token, new_refresh_token},
    Claims, Role,
};
use crate::{error::ApiError, state::AppState};

/// A new access and refresh token.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque, single use: exchange it at `/api/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

const INVALID_CREDENTIALS: &str = "invalid username/email or password";
const INVALID_REFRESH: &str = "refresh token is invalid, expired or revoked";

/// Checks credentials (`login` is a username or an email) of a client at `client` and starts a
/// session. Guarded against guessing (see [`super::lockout`]): a locked name or an address over
/// its failure budget gets 429 before the password is looked at.
pub async fn login(
    state: &AppState,
    login: &str,
    password: &str,
    client: IpAddr,
) -> Result<TokenPair, ApiError> {
    let guard = &state.login_guard;
    if let Err(refusal) = guard.check(login, client).await {
        let wait = refusal.retry_after().as_secs_f64().ceil() as u64;
        let message = match refusal {
            Refusal::NameLocked(_) => {
                format!("too many failed logins for this name; try again in {wait} s")
            }
            Refusal::AddressBlocked(_) => {
                format!("too many failed logins from this address; try again in {wait} s")
            }
        };
        return Err(ApiError::too_many_requests(message, wait.max(1)));
    }
    let user: Option<(Uuid, String, String, String)> = sqlx::query_as(
        "select user_id, password_hash, role, status from app_user
         where lower(username) = lower($1) or lower(email) = lower($1)",
    )
    .bind(login)
    .fetch_optional(&state.db)
    .await?;
    let stored_hash = user.as_ref().map(|u| u.1.clone());
    if !password::verify(password.to_owned(), stored_hash).await? {
        guard.failed(login, client).await;
        return Err(ApiError::unauthorized(INVALID_CREDENTIALS));
    }
    guard.succeeded(login).await;
    let (user_id, _, role, status) = user.expect("verified users exist");
    if status != "active" {
        return Err(ApiError::forbidden("account is disabled"));
    }
    let mut tx = state.db.begin().await?;
    let pair = issue_pair(
        state,
        &mut tx,
        user_id,
        Role::try_from(role).map_err(anyhow::Error::msg)?,
        Uuid::new_v4(),
    )
    .await?;
    tx.commit().await?;
    Ok(pair)
}

/// Spends `refresh_token` for a new pair. A token presented twice revokes its whole family.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<TokenPair, ApiError> {
    let mut tx = state.db.begin().await?;
    // `for update` serialises concurrent refreshes of one token: exactly one can spend it.
    let row: Option<(Uuid, Uuid, bool, bool, bool, String, String)> = sqlx::query_as(
        "select t.user_id, t.family_id, t.used_at is not null, t.revoked_at is not null,
                t.expires_at < now(), u.role, u.status
         from refresh_token t join app_user u using (user_id)
         where t.token_hash = $1
         for update of t",
    )
    .bind(hash_refresh_token(refresh_token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, family_id, used, revoked, expired, role, status)) = row else {
        return Err(ApiError::unauthorized(INVALID_REFRESH));
    };
    if used && !revoked {
        tracing::warn!(%user_id, %family_id, "refresh token reused; revoking its family");
        revoke_family(state, &mut tx, family_id).await?;
        tx.commit().await?;
        return Err(ApiError::unauthorized(INVALID_REFRESH));
    }
    if used || revoked || expired || status != "active" {
        return Err(ApiError::unauthorized(INVALID_REFRESH));
    }
    sqlx::query("update refresh_token set used_at = now() where token_hash = $1")
        .bind(hash_refresh_token(refresh_token))
        .execute(&mut *tx)
        .await?;
    let pair = issue_pair(
        state,
        &mut tx,
        user_id,
        Role::try_from(role).map_err(anyhow::Error::msg)?,
        family_id,
    )
    .await?;
    tx.commit().await?;
    Ok(pair)
}

/// Ends the session the access token belongs to: the token itself and its refresh family.
pub async fn logout(state: &AppState, claims: &Claims) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    let family: Option<Uuid> =
        sqlx::query_scalar("select family_id from refresh_token where access_jti = $1")
            .bind(claims.jti)
            .fetch_optional(&mut *tx)
            .await?;
    match family {
        // The family's tokens include this one (it was found by its `access_jti`).
        Some(family_id) => revoke_family(state, &mut tx, family_id).await?,
        None => {
            state
                .revocations
                .revoke_tokens(claims.sub, &[(claims.jti, claims.exp)])
                .await?
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Ends every session of `user_id`.
pub async fn logout_all(state: &AppState, user_id: Uuid) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    revoke_user_sessions(state, &mut tx, user_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Revokes every refresh token and access token of `user_id` inside `tx` (used by logout-all and
/// by role, status and account changes). Commit `tx` afterwards.
pub async fn revoke_user_sessions(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
) -> Result<(), ApiError> {
    sqlx::query(
        "update refresh_token set revoked_at = now() where user_id = $1 and revoked_at is null",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    state.revocations.revoke_user_sessions(user_id).await
}

async fn revoke_family(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    family_id: Uuid,
) -> Result<(), ApiError> {
    // Every token of a family belongs to one user.
    let live: Vec<(Uuid, Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "update refresh_token set revoked_at = coalesce(revoked_at, now())
         where family_id = $1
         returning user_id, access_jti, access_expires_at",
    )
    .bind(family_id)
    .fetch_all(&mut **tx)
    .await?;
    let Some(&(user_id, _, _)) = live.first() else {
        return Ok(());
    };
    let tokens: Vec<(Uuid, i64)> = live
        .into_iter()
        .map(|(_, jti, exp)| (jti, exp.timestamp()))
        .collect();
    state.revocations.revoke_tokens(user_id, &tokens).await
}

async fn issue_pair(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    role: Role,
    family_id: Uuid,
) -> Result<TokenPair, ApiError> {
    let access = state.tokens.issue(user_id, role)?;
    let refresh_token = new_refresh_token();
    sqlx::query(
        "insert into refresh_token (user_id, family_id, token_hash, access_jti, access_expires_at, expires_at)
         values ($1, $2, $3, $4, to_timestamp($5), now() + make_interval(secs => $6))",
    )
    .bind(user_id)
    .bind(family_id)
    .bind(hash_refresh_token(&refresh_token))
    .bind(access.claims.jti)
    .bind(access.claims.exp as f64)
    .bind(state.tokens.refresh_ttl.as_secs() as f64)
    .execute(&mut **tx)
    .await?;
    Ok(TokenPair {
        access_token: access.token,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: state.tokens.access_ttl.as_secs(),
    })
}
