//! Login protection, shared by every node through Redis.
//!
//! Per login name (as typed, case-insensitive, whether an account has it or not):
//! `auth.login_max_failures` consecutive failures lock the name for `auth.login_lock_secs`;
//! once a lock has ended, the next failure locks it again for twice as long as the lock before
//! (up to `auth.login_max_lock_secs`); a successful login resets it. While a name is locked,
//! every attempt is refused (429) without looking at the password, and refusals never extend
//! the lock. Per client address: more than `auth.login_ip_max_failures` failures within
//! `auth.login_ip_window_secs` (over any names, against credential stuffing) refuse that
//! address's logins until the window ends.
//!
//! Keyed by the name as typed rather than by account, so an unknown name behaves exactly like an
//! existing one (same answers, same lock-outs) and the lock of a username never tells whether an
//! email belongs to the same account. Both checks are one script each, evaluated by Redis with
//! its own clock, so every node agrees.
//!
//! Redis unreachable: logins go on without this protection (each skipped check logged and counted
//! in `petmesh_node_login_checks_skipped_total`), the same trade the revocation check makes —
//! nobody is locked out of the service by an outage of a cache.

use std::{net::IpAddr, sync::LazyLock, time::Duration};

use petmesh_shared::registry::RedisKeys;
use prometheus::{IntCounter, IntCounterVec};
use sha2::{Digest, Sha256};

use crate::{
    config::{AuthSettings, Redis},
    metrics::auth::AuthMetrics,
};

/// Whether a login may be tried: `{0, 0}` yes; `{1, ms}` the name is locked for `ms` more;
/// `{2, ms}` the address has spent its failure budget for `ms` more.
static CHECK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local locked_until = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
        if locked_until > now then return {1, locked_until - now} end
        local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
        if failures >= tonumber(ARGV[1]) then
            return {2, math.max(redis.call('PTTL', KEYS[2]), 1)}
        end
        return {0, 0}
        ",
    )
});

/// Records a failed login. ARGV: max failures, first lock ms, longest lock ms, address window ms.
/// Returns `{locked, lock_ms}`: whether this failure locked the name, and for how long.
static FAILED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local max_failures = tonumber(ARGV[1])
        local first_lock, longest_lock = tonumber(ARGV[2]), tonumber(ARGV[3])

        local ip_failures = redis.call('INCR', KEYS[2])
        if ip_failures == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end

        local locked_until = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
        if locked_until > now then return {0, 0} end -- locked meanwhile: never extended
        local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
        local lock = 0
        if level > 0 then
            -- A lock has ended: the first failure after it locks again, twice as long.
            lock = math.min(first_lock * 2 ^ level, longest_lock)
        elseif redis.call('HINCRBY', KEYS[1], 'failures', 1) >= max_failures then
            lock = first_lock
        end
        if lock > 0 then
            redis.call('HSET', KEYS[1], 'until', now + lock, 'level', level + 1, 'failures', 0)
        end
        -- Forgotten after a quiet spell as long as the longest lock.
        redis.call('PEXPIRE', KEYS[1], lock + longest_lock)
        if lock > 0 then return {1, lock} end
        return {0, 0}
        ",
    )
});

/// Why a login is refused before its password is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The login name is locked for this long.
    NameLocked(Duration),
    /// The client address spent its failure budget; it ends in this long.
    AddressBlocked(Duration),
}

impl Refusal {
    /// When the client may try again.
    pub fn retry_after(self) -> Duration {
        match self {
            Self::NameLocked(wait) | Self::AddressBlocked(wait) => wait,
        }
    }
}

/// The login guard of a node.
#[derive(Clone)]
pub struct LoginGuard {
    /// Shared Redis connection.
    redis: Redis,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// The `auth.login_*` settings.
    settings: AuthSettings,
    /// `petmesh_node_login_attempts_total{result}`.
    attempts: IntCounterVec,
    /// `petmesh_node_login_checks_skipped_total`.
    skipped: IntCounter,
}

impl LoginGuard {
    /// A guard over `redis` with the `auth.login_*` settings, counting in `metrics`.
    pub fn new(
        redis: Redis,
        keys: RedisKeys,
        settings: AuthSettings,
        metrics: &AuthMetrics,
    ) -> Self {
        Self {
            redis,
            keys,
            settings,
            attempts: metrics.login_attempts.clone(),
            skipped: metrics.login_checks_skipped.clone(),
        }
    }

    /// The key of a login name: a digest of its lower-cased form.
    fn name_key(&self, name: &str) -> String {
        let digest = Sha256::digest(name.to_lowercase().as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.keys.login_failures(&hex)
    }

    fn address_key(&self, client: IpAddr) -> String {
        self.keys.login_ip_failures(&client.to_string())
    }

    /// Whether a login for `name` from `client` may be tried. Redis unreachable: yes (counted).
    pub async fn check(&self, name: &str, client: IpAddr) -> Result<(), Refusal> {
        let mut conn = self.redis.clone();
        let answer: redis::RedisResult<(u8, u64)> = CHECK
            .key(self.name_key(name))
            .key(self.address_key(client))
            .arg(self.settings.login_ip_max_failures)
            .invoke_async(&mut conn)
            .await;
        let refusal = match answer {
            Ok((1, ms)) => Refusal::NameLocked(Duration::from_millis(ms)),
            Ok((2, ms)) => Refusal::AddressBlocked(Duration::from_millis(ms)),
            Ok(_) => return Ok(()),
            Err(err) => {
                self.skipped.inc();
                tracing::warn!(error = %err, "login protection unavailable (Redis); checking the password without it");
                return Ok(());
            }
        };
        self.count(match refusal {
            Refusal::NameLocked(_) => "name_locked",
            Refusal::AddressBlocked(_) => "address_blocked",
        });
        Err(refusal)
    }

    /// Records a wrong password (or unknown name) for `name` from `client`.
    pub async fn failed(&self, name: &str, client: IpAddr) {
        let settings = &self.settings;
        let mut conn = self.redis.clone();
        let answer: redis::RedisResult<(u8, u64)> = FAILED
            .key(self.name_key(name))
            .key(self.address_key(client))
            .arg(settings.login_max_failures)
            .arg(settings.login_lock_secs * 1000)
            .arg(settings.login_max_lock_secs * 1000)
            .arg(settings.login_ip_window_secs * 1000)
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok((1, ms)) => {
                self.count("locked_out");
                tracing::warn!(%client, lock_ms = ms, "login name locked after failed logins");
            }
            Ok(_) => self.count("failure"),
            Err(err) => {
                self.count("failure");
                tracing::warn!(error = %err, "recording a failed login failed (Redis)");
            }
        }
    }

    /// Records a successful login: the name's failures and lock level are forgotten.
    pub async fn succeeded(&self, name: &str) {
        self.count("success");
        let mut conn = self.redis.clone();
        let reset: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.name_key(name))
            .query_async(&mut conn)
            .await;
        if let Err(err) = reset {
            tracing::warn!(error = %err, "resetting failed logins failed (Redis)");
        }
    }

    fn count(&self, result: &str) {
        self.attempts.with_label_values(&[result]).inc();
    }
}
