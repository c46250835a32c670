//! Access tokens (JWT) and refresh tokens (opaque).

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Claims, Role};
use crate::config::{
    jwt::{JwtKeyMaterial, JwtKeySet, DEFAULT_KID},
    AuthSettings,
};

/// Clock skew tolerated on `exp` (and `nbf`) between nodes and clients.
const LEEWAY_SECS: u64 = 5;

/// One verification key, ready for `jsonwebtoken`.
#[derive(Clone)]
struct VerifyingKey {
    /// Its algorithm: a token signed with another one is refused.
    validation: Validation,
    /// The key.
    decoding: DecodingKey,
}

/// Signs and verifies access tokens. Built once from the settings; cheap to clone.
#[derive(Clone)]
pub struct TokenKeys {
    /// The signing key's kid (the `kid` header of every token issued).
    signing_kid: String,
    /// The signing key's algorithm.
    signing_algorithm: Algorithm,
    /// The signing key.
    encoding: EncodingKey,
    /// Every accepted key by kid; a token without `kid` is checked with `default`.
    verifying: Arc<HashMap<String, VerifyingKey>>,
    /// The `iss` written into tokens.
    issuer: String,
    /// The `aud` written into tokens.
    audience: String,
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
    /// Keys from the auth settings, as validated (see [`crate::config::jwt`]): every listed key
    /// verifies tokens of its own algorithm only, with issuer, audience and expiry checked.
    pub fn new(settings: &AuthSettings, keys: &JwtKeySet) -> anyhow::Result<Self> {
        let mut verifying = HashMap::new();
        let mut signing = None;
        for key in &keys.keys {
            let (algorithm, decoding, encoding) = match &key.material {
                JwtKeyMaterial::Hs256(secret) => (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                ),
                JwtKeyMaterial::EdDsa {
                    private_pkcs8,
                    public,
                } => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_der(public),
                    private_pkcs8.as_deref().map(EncodingKey::from_ed_der),
                ),
            };
            let mut validation = Validation::new(algorithm);
            validation.set_issuer(&[settings.jwt_issuer.as_str()]);
            validation.set_audience(&[settings.jwt_audience.as_str()]);
            validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub", "jti"]);
            validation.leeway = LEEWAY_SECS;
            if key.kid == keys.signing_kid {
                signing = Some((
                    algorithm,
                    encoding.context("the signing key has no private part")?,
                ));
            }
            verifying.insert(
                key.kid.clone(),
                VerifyingKey {
                    validation,
                    decoding,
                },
            );
        }
        let (signing_algorithm, encoding) =
            signing.with_context(|| format!("no key `{}` to sign with", keys.signing_kid))?;
        Ok(Self {
            signing_kid: keys.signing_kid.clone(),
            signing_algorithm,
            encoding,
            verifying: Arc::new(verifying),
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            access_ttl: Duration::from_secs(settings.access_token_ttl_secs),
            refresh_ttl: Duration::from_secs(settings.refresh_token_ttl_secs),
        })
    }

    /// Issues an access token for `user_id` with `role`, signed with the signing key.
    pub fn issue(&self, user_id: Uuid, role: Role) -> anyhow::Result<AccessToken> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            role,
            jti: Uuid::now_v7(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let mut header = Header::new(self.signing_algorithm);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok(AccessToken { token, claims })
    }

    /// Verifies the key (by `kid`), its algorithm, the signature, issuer, audience and expiry;
    /// the error says which check failed.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        use jsonwebtoken::errors::ErrorKind;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_owned())?;
        let kid = header.kid.as_deref().unwrap_or(DEFAULT_KID);
        let key = self
            .verifying
            .get(kid)
            .ok_or_else(|| "signed with a key this node does not accept".to_owned())?;
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => "token expired".to_owned(),
                ErrorKind::InvalidSignature => "bad signature".to_owned(),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    "algorithm not accepted".to_owned()
                }
                ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
                ErrorKind::InvalidAudience => "wrong audience".to_owned(),
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

    fn keys_of(settings: AuthSettings) -> TokenKeys {
        let set = settings.jwt_key_set(false).unwrap();
        TokenKeys::new(&settings, &set).unwrap()
    }

    fn keys(secret: &str) -> TokenKeys {
        keys_of(AuthSettings {
            jwt_secret: secret.into(),
            ..AuthSettings::default()
        })
    }

    fn ed25519_pkcs8() -> String {
        use base64::engine::general_purpose::STANDARD;
        use ring::signature::Ed25519KeyPair;
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        STANDARD.encode(der.as_ref())
    }

    const ONE: &str = "key-one-key-one-key-one-key-one!";
    const TWO: &str = "key-two-key-two-key-two-key-two!";

    #[test]
    fn rotation_adds_a_key_switches_signing_then_drops_the_old_key() {
        let ed = ed25519_pkcs8();
        let user = Uuid::new_v4();
        // 1. One secret.
        let before = keys(ONE).issue(user, Role::User).unwrap();
        // 2. A new EdDSA key next to it, still signing with the secret: every node accepts
        //    both before any signs with the new one.
        let both = |signing: &str| {
            keys_of(AuthSettings {
                jwt_secret: ONE.into(),
                jwt_keys: format!("2027-01=EdDSA:{ed}").into(),
                jwt_signing_kid: signing.into(),
                ..AuthSettings::default()
            })
        };
        assert_eq!(both("").verify(&before.token).unwrap().sub, user);
        // 3. Signing switched: new tokens carry the new kid and EdDSA; old ones still verify.
        let after = both("2027-01").issue(user, Role::User).unwrap();
        let header = jsonwebtoken::decode_header(&after.token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("2027-01"));
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert!(both("2027-01").verify(&before.token).is_ok());
        assert!(both("").verify(&after.token).is_ok());
        // 4. The secret removed after the token lifetime: old tokens are refused, new ones not.
        let only_new = keys_of(AuthSettings {
            jwt_secret: "".into(),
            jwt_keys: format!("2027-01=EdDSA:{ed}").into(),
            ..AuthSettings::default()
        });
        assert_eq!(
            only_new.verify(&before.token).unwrap_err(),
            "signed with a key this node does not accept"
        );
        assert!(only_new.verify(&after.token).is_ok());
    }

    #[test]
    fn a_token_must_use_its_key_s_algorithm_and_audience() {
        let keys = keys(ONE);
        let issued = keys.issue(Uuid::new_v4(), Role::User).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        // HS512 under the HS256 key's kid.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","typ":"JWT","kid":"default"}"#);
        assert!(keys.verify(&format!("{header}.{payload}.sig")).is_err());
        let other_audience = keys_of(AuthSettings {
            jwt_secret: ONE.into(),
            jwt_audience: "someone-else".into(),
            ..AuthSettings::default()
        });
        assert_eq!(
            other_audience.verify(&issued.token).unwrap_err(),
            "wrong audience"
        );
    }

    #[test]
    fn issued_tokens_verify_with_the_same_key_only() {
        let issued = keys(ONE).issue(Uuid::new_v4(), Role::Admin).unwrap();
        let claims = keys(ONE).verify(&issued.token).unwrap();
        assert_eq!(claims.sub, issued.claims.sub);
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(
            keys(TWO).verify(&issued.token).unwrap_err(),
            "bad signature"
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let keys = keys(ONE);
        let issued = keys.issue(Uuid::new_v4(), Role::User).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(keys.verify(&format!("{header}.{payload}.")).is_err());
    }

    #[test]
    fn issue_time_comes_from_the_jti_with_millisecond_precision() {
        let issued = keys(ONE).issue(Uuid::new_v4(), Role::User).unwrap();
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
