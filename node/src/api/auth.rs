//! `/api/v1/auth`: registration, login, token refresh, logout, logout-all, me.

use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, Object, OpenApi};

use super::{json_body::JsonBody, ApiTags, NoContent};
use crate::{
    auth::{sessions, sessions::TokenPair, BearerAuth, Role},
    client_ip::ClientIp,
    error::{ApiError, ApiResult},
    state::AppState,
    users::{self, NewUser, User},
};

/// Registration, login and sessions.
pub struct AuthApi;

/// A new account. Optional fields may be `null`, the same as leaving them out; text never
/// contains U+0000, which PostgreSQL cannot store.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// 3–32 characters of `A-Z a-z 0-9 _ . -`; unique ignoring case.
    #[oai(validator(min_length = 3, max_length = 32, pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub username: String,
    // Something@something.something, the parts without `@`, controls or white space. White
    // space is spelled out: `\s` means other characters in Rust's regex (which checks it here)
    // than in ECMAScript's (which JSON Schema tools use), U+0085 for one.
    /// An email address; unique ignoring case.
    #[oai(validator(
        max_length = 254,
        pattern = r"^[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+@[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+\.[^@\x00-\x20\x7F-\x9F\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF]+$"
    ))]
    pub email: String,
    /// 8–128 characters.
    #[oai(validator(min_length = 8, max_length = 128))]
    pub password: String,
    /// Given name.
    #[oai(nullable, validator(max_length = 100, pattern = r"^[^\x00]*$"))]
    pub first_name: Option<String>,
    /// Family name.
    #[oai(nullable, validator(max_length = 100, pattern = r"^[^\x00]*$"))]
    pub last_name: Option<String>,
    /// Phone number.
    #[oai(nullable, validator(max_length = 32, pattern = r"^[^\x00]*$"))]
    pub phone: Option<String>,
}

/// Credentials: exactly one of `username` (which may also hold an email) and `email` (`null`
/// counts as absent), and the password.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct LoginRequest {
    /// Username or email.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 254, pattern = r"^[^\x00]*$")
    )]
    pub username: Option<String>,
    /// Email, as an alternative to `username`.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 254, pattern = r"^[^\x00]*$")
    )]
    pub email: Option<String>,
    /// The password.
    #[oai(validator(max_length = 128))]
    pub password: String,
}

/// A refresh token to exchange.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RefreshRequest {
    /// The refresh token from login or the previous refresh.
    #[oai(validator(min_length = 1, max_length = 512))]
    pub refresh_token: String,
}

/// Registration answer.
#[derive(ApiResponse)]
pub enum Registered {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<User>),
}

#[OpenApi(prefix_path = "/api/v1/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Creates an account with role `user`. Duplicate username or email → 409.
    #[oai(path = "/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        state: Data<&AppState>,
        body: JsonBody<RegisterRequest>,
    ) -> ApiResult<Registered> {
        let body = body.0;
        let new = NewUser {
            username: body.username,
            email: body.email,
            password: body.password,
            first_name: body.first_name,
            last_name: body.last_name,
            phone: body.phone,
            role: Role::User,
        };
        Ok(Registered::Created(Json(
            users::create(&state.db, new).await?,
        )))
    }

    // The `oneOf` saying "exactly one of username and email" is added in `api::document`.
    /// Exchanges credentials for an access token (JWT) and a refresh token. Guarded against
    /// guessing: after `auth.login_max_failures` failures in a row a login name is locked
    /// (429 with `Retry-After`, even for the right password), and so is a client address after
    /// `auth.login_ip_max_failures` failures within `auth.login_ip_window_secs`.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        client: Data<&ClientIp>,
        body: JsonBody<LoginRequest>,
    ) -> ApiResult<Json<TokenPair>> {
        let login = match (&body.username, &body.email) {
            (Some(login), None) | (None, Some(login)) => login,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `username` and `email`",
                ))
            }
        };
        Ok(Json(
            sessions::login(&state, login, &body.password, client.0 .0).await?,
        ))
    }

    /// Spends a refresh token for a new pair. Each refresh token works once; presenting a spent
    /// one revokes every token of its session.
    #[oai(path = "/refresh", method = "post", operation_id = "refreshTokens")]
    async fn refresh(
        &self,
        state: Data<&AppState>,
        body: JsonBody<RefreshRequest>,
    ) -> ApiResult<Json<TokenPair>> {
        Ok(Json(sessions::refresh(&state, &body.refresh_token).await?))
    }

    /// Revokes the presented access token and its session's refresh token, on every node.
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, state: Data<&AppState>, auth: BearerAuth) -> ApiResult<NoContent> {
        sessions::logout(&state, &auth.0).await?;
        Ok(NoContent::Done)
    }

    /// Revokes every session of the caller, on every node.
    #[oai(path = "/logout-all", method = "post", operation_id = "logoutAll")]
    async fn logout_all(&self, state: Data<&AppState>, auth: BearerAuth) -> ApiResult<NoContent> {
        sessions::logout_all(&state, auth.0.sub).await?;
        Ok(NoContent::Done)
    }

    /// The caller's account.
    #[oai(path = "/me", method = "get", operation_id = "getMe")]
    async fn me(&self, state: Data<&AppState>, auth: BearerAuth) -> ApiResult<Json<User>> {
        users::find(&state.db, auth.0.sub)
            .await?
            .map(Json)
            .ok_or_else(|| ApiError::unauthorized("account no longer exists"))
    }
}
