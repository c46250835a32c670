//! The access-token keys the auth settings describe: several verification keys by `kid`, one
//! of which signs.
//!
//! `auth.jwt_keys` lists keys as `kid=ALG:material`, comma-separated: `HS256` with the secret
//! (at least 32 bytes, as text), or `EdDSA` with a base64 Ed25519 key in DER — the PKCS#8
//! private key (signs and verifies; `openssl genpkey -algorithm ed25519 -outform DER | base64
//! -w0`) or the raw 32-byte public key (verifies only). `auth.jwt_secret`, when set, is one
//! more HS256 key with the kid `default` (what tokens without a `kid` are checked with), so a
//! deployment that started with a single secret rotates by adding keys next to it.
//! `auth.jwt_signing_kid` names the signing key; empty means `default` when the secret is set,
//! else the only key listed.

use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::ExposeSecret;

use super::{AuthSettings, DEVELOPMENT_JWT_SECRET};

/// The kid of `auth.jwt_secret`, and of tokens issued before keys had ids.
pub const DEFAULT_KID: &str = "default";

/// Shortest HS256 secret accepted outside development (RFC 7518: at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

/// One key's algorithm and material.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKeyMaterial {
    /// HMAC-SHA256 with this secret.
    Hs256(Vec<u8>),
    /// Ed25519: the PKCS#8 private key (when this node may sign with it) and the public key.
    EdDsa {
        /// PKCS#8 DER, if given.
        private_pkcs8: Option<Vec<u8>>,
        /// The raw 32-byte public key.
        public: Vec<u8>,
    },
}

impl std::fmt::Debug for JwtKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never reaches logs or error messages.
        match self {
            Self::Hs256(_) => f.write_str("HS256(..)"),
            Self::EdDsa { private_pkcs8, .. } => {
                write!(f, "EdDSA(private: {})", private_pkcs8.is_some())
            }
        }
    }
}

/// A verification (and possibly signing) key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// The `kid` header of the tokens it signs.
    pub kid: String,
    /// Algorithm and material.
    pub material: JwtKeyMaterial,
}

/// Every key the node accepts, and the one it signs with.
#[derive(Debug, Clone)]
pub struct JwtKeySet {
    /// Verification keys, by kid (unique).
    pub keys: Vec<JwtKey>,
    /// The kid of the signing key; it has private material.
    pub signing_kid: String,
}

impl AuthSettings {
    /// The key set, or the problems with it as (setting, message) pairs. `development` accepts
    /// the built-in development secret.
    pub fn jwt_key_set(&self, development: bool) -> Result<JwtKeySet, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        let secret = self.jwt_secret.expose_secret();
        let builtin = secret == DEVELOPMENT_JWT_SECRET;
        let listed = self.jwt_keys.expose_secret().trim();
        match parse_keys(listed, development) {
            Ok(parsed) => keys.extend(parsed),
            Err(message) => problems.push(("auth.jwt_keys", message)),
        }
        // The built-in secret only stands in when nothing else is configured, in development.
        let secret_in_use = !secret.is_empty() && (!builtin || listed.is_empty());
        if secret_in_use {
            if builtin && !development {
                problems.push((
                    "auth.jwt_secret",
                    "the built-in development secret is refused outside environment=development; set a secret of at least 32 bytes, or auth.jwt_keys".to_owned(),
                ));
            } else if !development && secret.len() < MIN_SECRET_BYTES {
                problems.push((
                    "auth.jwt_secret",
                    format!("must be at least {MIN_SECRET_BYTES} bytes outside development"),
                ));
            }
            if keys.iter().any(|k| k.kid == DEFAULT_KID) {
                problems.push((
                    "auth.jwt_keys",
                    format!(
                        "kid `{DEFAULT_KID}` is auth.jwt_secret's; give the listed key another kid"
                    ),
                ));
            }
            keys.insert(
                0,
                JwtKey {
                    kid: DEFAULT_KID.to_owned(),
                    material: JwtKeyMaterial::Hs256(secret.as_bytes().to_vec()),
                },
            );
        }
        if keys.is_empty() && problems.is_empty() {
            problems.push((
                "auth.jwt_secret",
                "no key: set auth.jwt_secret or auth.jwt_keys".to_owned(),
            ));
        }
        let signing_kid = match self.jwt_signing_kid.trim() {
            "" if keys.first().is_some_and(|k| k.kid == DEFAULT_KID) => DEFAULT_KID.to_owned(),
            "" if keys.len() == 1 => keys[0].kid.clone(),
            "" if !keys.is_empty() => {
                problems.push((
                    "auth.jwt_signing_kid",
                    "several keys are listed: name the one that signs".to_owned(),
                ));
                String::new()
            }
            "" => String::new(),
            kid => kid.to_owned(),
        };
        if !signing_kid.is_empty() {
            match keys.iter().find(|k| k.kid == signing_kid) {
                None => problems.push((
                    "auth.jwt_signing_kid",
                    format!("no key has kid `{signing_kid}`"),
                )),
                Some(JwtKey {
                    material:
                        JwtKeyMaterial::EdDsa {
                            private_pkcs8: None,
                            ..
                        },
                    ..
                }) => problems.push((
                    "auth.jwt_signing_kid",
                    format!(
                        "key `{signing_kid}` is a public key: signing needs its PKCS#8 private key"
                    ),
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(JwtKeySet { keys, signing_kid })
        } else {
            Err(problems)
        }
    }
}

/// Parses `kid=ALG:material, ...`; every problem in one message.
fn parse_keys(list: &str, development: bool) -> Result<Vec<JwtKey>, String> {
    let mut keys: Vec<JwtKey> = Vec::new();
    let mut errors = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item
            .split_once('=')
            .and_then(|(kid, rest)| {
                rest.split_once(':')
                    .map(|(alg, m)| (kid.trim(), alg.trim(), m.trim()))
            })
            .ok_or_else(|| "an entry is not `kid=ALG:material`".to_owned())
            .and_then(|(kid, alg, material)| {
                if kid.is_empty()
                    || !kid
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "kid `{kid}` must be letters, digits, `-`, `_` or `.`"
                    ));
                }
                let material = match alg {
                    "HS256" if !development && material.len() < MIN_SECRET_BYTES => {
                        return Err(format!(
                            "key `{kid}`: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes"
                        ))
                    }
                    "HS256" => JwtKeyMaterial::Hs256(material.as_bytes().to_vec()),
                    "EdDSA" => ed25519(material).map_err(|why| format!("key `{kid}`: {why}"))?,
                    other => {
                        return Err(format!(
                            "key `{kid}`: algorithm `{other}` is not HS256 or EdDSA"
                        ))
                    }
                };
                Ok(JwtKey {
                    kid: kid.to_owned(),
                    material,
                })
            });
        match parsed {
            Ok(key) if keys.iter().any(|k| k.kid == key.kid) => {
                errors.push(format!("kid `{}` is listed twice", key.kid))
            }
            Ok(key) => keys.push(key),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors.join("; "))
    }
}

/// An Ed25519 key from base64 DER: PKCS#8 private key, or the raw 32-byte public key.
fn ed25519(material: &str) -> Result<JwtKeyMaterial, &'static str> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let der = STANDARD
        .decode(material)
        .map_err(|_| "the material is not base64")?;
    if der.len() == 32 {
        return Ok(JwtKeyMaterial::EdDsa {
            private_pkcs8: None,
            public: der,
        });
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| "not an Ed25519 PKCS#8 private key (DER) or a 32-byte public key")?;
    Ok(JwtKeyMaterial::EdDsa {
        public: pair.public_key().as_ref().to_vec(),
        private_pkcs8: Some(der),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh Ed25519 PKCS#8 key, base64, as `auth.jwt_keys` takes it.
    fn ed25519_pkcs8() -> String {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        STANDARD.encode(der.as_ref())
    }

    fn settings(secret: &str, keys: &str, signing: &str) -> AuthSettings {
        AuthSettings {
            jwt_secret: secret.into(),
            jwt_keys: keys.into(),
            jwt_signing_kid: signing.into(),
            ..AuthSettings::default()
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_secret_alone_is_the_default_key_and_signs() {
        let set = settings(SECRET, "", "").jwt_key_set(false).unwrap();
        assert_eq!(set.signing_kid, DEFAULT_KID);
        assert_eq!(set.keys.len(), 1);
    }

    #[test]
    fn listed_keys_sit_next_to_the_secret_until_signing_switches() {
        let keys = format!("k2=HS256:{SECRET}x, ed=EdDSA:{}", ed25519_pkcs8());
        let set = settings(SECRET, &keys, "").jwt_key_set(false).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["default", "k2", "ed"]);
        assert_eq!(set.signing_kid, "default");
        let set = settings(SECRET, &keys, "ed").jwt_key_set(false).unwrap();
        assert_eq!(set.signing_kid, "ed");
        // The development secret does not stand in once keys are listed.
        let set = settings(DEVELOPMENT_JWT_SECRET, &keys, "k2")
            .jwt_key_set(false)
            .unwrap();
        assert_eq!(set.keys.len(), 2);
    }

    #[test]
    fn problems_are_named() {
        let problems = |s: AuthSettings| s.jwt_key_set(false).unwrap_err();
        let named =
            |p: Vec<(&'static str, String)>| p.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(
            named(problems(settings(DEVELOPMENT_JWT_SECRET, "", ""))),
            ["auth.jwt_secret"]
        );
        assert_eq!(
            named(problems(settings("short", "", ""))),
            ["auth.jwt_secret"]
        );
        assert_eq!(
            named(problems(settings(SECRET, "k1=HS256:short", ""))),
            ["auth.jwt_keys"]
        );
        assert_eq!(
            named(problems(settings(SECRET, "k1=RS256:abc", ""))),
            ["auth.jwt_keys"]
        );
        assert_eq!(
            named(problems(settings(SECRET, "k1=EdDSA:bm90IGEga2V5", ""))),
            ["auth.jwt_keys"]
        );
        assert_eq!(
            named(problems(settings(SECRET, "", "nope"))),
            ["auth.jwt_signing_kid"]
        );
        let two = format!("a=HS256:{SECRET}, b=HS256:{SECRET}");
        assert_eq!(
            named(problems(settings("", &two, ""))),
            ["auth.jwt_signing_kid"]
        );
        let twice = format!("a=HS256:{SECRET}, a=HS256:{SECRET}");
        assert!(problems(settings("", &twice, "a"))[0].1.contains("twice"));
        // A public key verifies but cannot sign.
        let public = settings(
            "",
            "pub=EdDSA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "pub",
        );
        assert!(problems(public)[0].1.contains("public key"));
        // Material never shows in the messages.
        let message = format!(
            "{:?}",
            problems(settings(SECRET, "k1=HS256:tooshortsecret", ""))
        );
        assert!(!message.contains("tooshortsecret"), "{message}");
    }
}
