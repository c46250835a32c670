//! Revoked access tokens, shared by every node through Redis.
//!
//! Two kinds of entry, both expiring when the last token they could affect expires:
//! a revoked `jti` (logout, refresh-token reuse) and a per-user cutoff time before which every
//! token of the user is revoked (logout-all, role or status change, deletion). Checking both
//! takes one `MGET`.
//!
//! Redis unreachable means the check cannot be made. REST keeps serving (the architecture's
//! promise for a Redis outage): the token's signature and expiry still hold, the check is
//! skipped, and each skip is logged and counted (`petmesh_node_revocation_checks_skipped_total`),
//! so a revoked token works at most until Redis returns or the token expires. Revoking (logout)
//! does need Redis and fails with 503 while it is down.
//!
//! Every revocation is also announced on the revocation channel ([`RevocationNotice`]) right
//! after it is stored, so each node closes the WebSocket connections of the revoked sessions at
//! once (after an `auth:revoked` event) instead of waiting for their next request.

use std::time::Duration;

use petmesh_shared::registry::RedisKeys;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{tokens::issued_at_millis, Claims};
use crate::{config::Redis, error::ApiError};

/// What a revocation announcement says: these token ids, or every token of a user issued up to
/// a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationNotice {
    /// Revoked token ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jtis: Vec<Uuid>,
    /// The user whose tokens issued up to `before_ms` are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Unix milliseconds; tokens of `user_id` issued at or before it are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<i64>,
}

impl RevocationNotice {
    /// Whether the token with `claims` is among those revoked.
    pub fn revokes(&self, claims: &Claims) -> bool {
        self.jtis.contains(&claims.jti)
            || (self.user_id == Some(claims.sub)
                && self
                    .before_ms
                    .is_some_and(|before| issued_at_millis(claims) <= before))
    }
}

/// Reads and writes revocations in Redis.
#[derive(Clone)]
pub struct Revocations {
    /// Shared Redis pool.
    redis: Redis,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// How long a user cutoff must live: the access token lifetime plus skew.
    cutoff_ttl: Duration,
    /// Checks skipped because Redis was unreachable.
    skipped: prometheus::IntCounter,
}

impl Revocations {
    /// A store over `redis` for tokens that live at most `access_ttl`.
    pub fn new(
        redis: Redis,
        keys: RedisKeys,
        access_ttl: Duration,
        skipped: prometheus::IntCounter,
    ) -> Self {
        Self {
            redis,
            keys,
            cutoff_ttl: access_ttl + Duration::from_secs(60),
            skipped,
        }
    }

    /// 401 when the token was revoked. When Redis cannot tell, the token is accepted (see the
    /// module doc).
    pub async fn ensure_not_revoked(&self, claims: &Claims) -> Result<(), ApiError> {
        let lookup: anyhow::Result<(Option<String>, Option<i64>)> = async {
            let mut conn = self.redis.clone();
            Ok(redis::cmd("MGET")
                .arg(
                    self.keys
                        .revoked_token(&claims.sub.to_string(), &claims.jti.to_string()),
                )
                .arg(self.keys.sessions_revoked_before(&claims.sub.to_string()))
                .query_async(&mut conn)
                .await?)
        }
        .await;
        let (revoked, cutoff) = match lookup {
            Ok(found) => found,
            Err(err) => {
                self.skipped.inc();
                tracing::warn!(error = %err, "revocation check skipped: redis unavailable");
                return Ok(());
            }
        };
        if revoked.is_some() {
            return Err(ApiError::unauthorized("access token has been revoked"));
        }
        if cutoff.is_some_and(|cutoff| issued_at_millis(claims) <= cutoff) {
            return Err(ApiError::unauthorized("access token has been revoked"));
        }
        Ok(())
    }

    /// Revokes the tokens `jti` of user `user_id` until `expires_at` (Unix seconds); past tokens
    /// are skipped.
    pub async fn revoke_tokens(
        &self,
        user_id: Uuid,
        tokens: &[(Uuid, i64)],
    ) -> Result<(), ApiError> {
        let user = user_id.to_string();
        let now = chrono::Utc::now().timestamp();
        let mut pipe = redis::pipe();
        let mut notice = RevocationNotice::default();
        for (jti, expires_at) in tokens {
            // Expired tokens are already refused; keep the key a little past expiry for skew.
            let ttl = expires_at - now + 60;
            if ttl > 0 {
                pipe.set_ex(
                    self.keys.revoked_token(&user, &jti.to_string()),
                    1,
                    ttl as u64,
                )
                .ignore();
                notice.jtis.push(*jti);
            }
        }
        if !notice.jtis.is_empty() {
            let mut conn = self.redis.clone();
            pipe.query_async::<()>(&mut conn).await?;
            self.announce(&notice).await?;
        }
        Ok(())
    }

    /// Revokes every access token of `user_id` issued up to now.
    pub async fn revoke_user_sessions(&self, user_id: Uuid) -> Result<(), ApiError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(self.keys.sessions_revoked_before(&user_id.to_string()))
            .arg(now_ms)
            .arg("EX")
            .arg(self.cutoff_ttl.as_secs())
            .query_async::<()>(&mut conn)
            .await?;
        self.announce(&RevocationNotice {
            user_id: Some(user_id),
            before_ms: Some(now_ms),
            ..Default::default()
        })
        .await
    }

    /// Publishes `notice` on the revocation channel. A separate command from the revocation
    /// itself: in a Redis Cluster the channel and the user's keys live in different slots.
    async fn announce(&self, notice: &RevocationNotice) -> Result<(), ApiError> {
        let mut conn = self.redis.clone();
        redis::cmd("PUBLISH")
            .arg(self.keys.revocation_channel())
            .arg(serde_json::to_string(notice).expect("notices serialise"))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
