//! Authentication: who is calling, and may they.
//!
//! - [`tokens`]: access tokens (JWT, HS256) and opaque refresh tokens.
//! - [`password`]: argon2id hashing on a blocking thread.
//! - [`revocation`]: revoked access tokens kept in Redis until they would have expired, so a
//!   logout on one node is honoured by every node.
//! - [`sessions`]: login, refresh (with rotation and reuse detection), logout, logout-all; the
//!   service code shared by REST and WebSocket.
//!
//! [`BearerAuth`] is the poem-openapi security scheme: a handler that takes it requires a valid,
//! unrevoked access token.

pub mod lockout;
pub mod password;
pub mod revocation;
pub mod sessions;
pub mod tokens;

use poem::Request;
use poem_openapi::{auth::Bearer, Enum, SecurityScheme};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState, text_enum::text_enum};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum Role {
    /// A customer: manages their own account and orders.
    User,
    /// An operator: manages every user and the catalogue.
    Admin,
}

text_enum!(Role { User => "user", Admin => "admin" });

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The user's role when the token was issued (role changes revoke the user's tokens).
    pub role: Role,
    /// Token id: a UUIDv7, whose embedded millisecond timestamp is the precise issue time used
    /// by logout-all (`iat` has only second resolution).
    pub jti: Uuid,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

impl Claims {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Allows the user `user_id` themself or an admin; others get 403.
    pub fn require_self_or_admin(&self, user_id: Uuid) -> Result<(), ApiError> {
        if self.sub == user_id || self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("you may only access your own account"))
        }
    }

    /// Allows admins only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("admin role required"))
        }
    }
}

/// The access token a request presents: `Authorization: Bearer <token>`, or else the `token`
/// query parameter (browsers cannot set headers on a WebSocket handshake).
pub fn presented_token(req: &poem::Request) -> Option<String> {
    if let Some(value) = req.headers().get(poem::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    req.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "token").then(|| value.to_owned())
        })
    })
}

/// `Authorization: Bearer <access token>`; a handler taking this requires a valid token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Claims);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Claims> {
    let state = req
        .data::<AppState>()
        .expect("AppState is attached to every API route");
    Ok(authenticate(state, &bearer.token).await?)
}

/// The claims of a valid access token: verifies signature, algorithm, issuer and expiry, then
/// asks Redis whether the token was revoked. The one check behind REST's `BearerAuth` and the
/// WebSocket handshake and `auth:login`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let claims = state
        .tokens
        .verify(token)
        .map_err(|reason| ApiError::unauthorized(format!("invalid access token: {reason}")))?;
    state.revocations.ensure_not_revoked(&claims).await?;
    Ok(claims)
}
