//! Access tokens (JWT) and refresh tokens (opaque).

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Claims, Role};
use crate::config::AuthSettings;

/// Clock skew tolerated on `exp` between nodes.
const LEEWAY_SECS: u64 = 5;

/// Signs and verifies access tokens. Built once from the settings; cheap to clone.
#[derive(Clone)]
pub struct TokenKeys {
    /// HS256 signing key.
    encoding: EncodingKey,
    /// HS256 verification key.
    decoding: DecodingKey,
    /// Only HS256, the issuer, and `exp` are accepted; `alg: none` and other algorithms never.
    validation: Validation,
    /// The `iss` written into tokens.
    issuer: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
}

/// A freshly issued access token with its claims.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The encoded JWT.
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

impl TokenKeys {
    /// Keys from the auth settings.
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[settings.jwt_issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "jti"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.jwt_issuer.clone(),
            access_ttl: Duration::from_secs(settings.access_token_ttl_secs),
            refresh_ttl: Duration::from_secs(settings.refresh_token_ttl_secs),
        }
    }

    /// Issues an access token for `user_id` with `role`.
    pub fn issue(&self, user_id: Uuid, role: Role) -> anyhow::Result<AccessToken> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            role,
            jti: Uuid::now_v7(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: self.issuer.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(AccessToken { token, claims })
    }

    /// Verifies signature, algorithm, issuer and expiry; the error says which check failed.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => "token expired".to_owned(),
                ErrorKind::InvalidSignature => "bad signature".to_owned(),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    "algorithm not accepted".to_owned()
                }
                ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
                _ => "malformed token".to_owned(),
            })
    }
}

/// A new opaque refresh token: 256 random bits, URL-safe base64.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database stores instead of the refresh token itself.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The issue time of a token in Unix milliseconds, from its UUIDv7 `jti`.
pub fn issued_at_millis(claims: &Claims) -> i64 {
    match claims.jti.get_timestamp() {
        Some(ts) => {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        }
        // Not a v7 id (cannot happen for tokens we issued): fall back to the coarse claim.
        None => claims.iat * 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&AuthSettings {
            jwt_secret: secret.into(),
            ..AuthSettings::default()
        })
    }

    #[test]
    fn issued_tokens_verify_with_the_same_key_only() {
        let issued = keys("key-one-key-one-key-one-key-one!")
            .issue(Uuid::new_v4(), Role::Admin)
            .unwrap();
        let claims = keys("key-one-key-one-key-one-key-one!")
            .verify(&issued.token)
            .unwrap();
        assert_eq!(claims.sub, issued.claims.sub);
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(
            keys("key-two-key-two-key-two-key-two!")
                .verify(&issued.token)
                .unwrap_err(),
            "bad signature"
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let keys = keys("key-one-key-one-key-one-key-one!");
        let issued = keys.issue(Uuid::new_v4(), Role::User).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(keys.verify(&format!("{header}.{payload}.")).is_err());
    }

    #[test]
    fn issue_time_comes_from_the_jti_with_millisecond_precision() {
        let issued = keys("key-one-key-one-key-one-key-one!")
            .issue(Uuid::new_v4(), Role::User)
            .unwrap();
        let millis = issued_at_millis(&issued.claims);
        assert!((millis / 1000 - issued.claims.iat).abs() <= 1);
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_eq!(a.len(), 43);
        assert_eq!(hash_refresh_token(&a).len(), 32);
    }
}
