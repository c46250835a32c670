//! The default of every node setting (the values the README's configuration table lists).

use std::net::IpAddr;

use petmesh_shared::redis_conn::RedisMode;
use secrecy::SecretString;

use super::{
    AuthSettings, BootstrapSettings, CacheSettings, ClusterSettings, DatabaseSettings, JobSettings,
    LogSettings, PaymentSettings, PetSettings, RateLimitSettings, RealtimeSettings, RedisSettings,
    ServerSettings, DEFAULT_DRAIN_DELAY_MS, DEVELOPMENT_JWT_SECRET,
};

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            grace_period_secs: 10,
            drain_delay_ms: DEFAULT_DRAIN_DELAY_MS,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            cors_allowed_origins: String::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/petmesh".into(),
            max_connections: 20,
            acquire_timeout_ms: 3000,
            migrate_on_start: false,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 1000,
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            name: "default".into(),
            advertise_addr: String::new(),
            weight: 1,
            zone: String::new(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: DEVELOPMENT_JWT_SECRET.into(),
            jwt_keys: SecretString::from(""),
            jwt_signing_kid: String::new(),
            jwt_issuer: "petmesh".into(),
            jwt_audience: "petmesh".into(),
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            login_max_failures: 5,
            login_lock_secs: 60,
            login_max_lock_secs: 3600,
            login_ip_max_failures: 50,
            login_ip_window_secs: 3600,
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            anonymous_per_hour: 100,
            authenticated_per_hour: 1000,
            login_per_hour: 0,
            writes_per_hour: 0,
            trusted_proxies: "127.0.0.1/32,::1/128"
                .parse()
                .expect("the default trusted proxies parse"),
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_interval_ms: 500,
            lease_secs: 30,
            backoff_base_ms: 1000,
            backoff_cap_ms: 60_000,
            max_attempts: 5,
            max_queue_depth: 10_000,
        }
    }
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            success_rate: 0.95,
            simulated_latency_ms: 50,
        }
    }
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            history_len: 10_000,
            history_ttl_secs: 86_400,
            send_queue: 256,
            max_frame_bytes: 64 * 1024,
            auth_timeout_ms: 10_000,
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            rate_per_minute: 100,
            rate_burst: 20,
            request_timeout_ms: 10_000,
            handshakes_per_second: 300,
            handshake_burst: 50,
            handshake_max_wait_ms: 10_000,
            allowed_origins: String::new(),
        }
    }
}

impl Default for PetSettings {
    fn default() -> Self {
        Self {
            max_image_bytes: 5 * 1024 * 1024,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { pet_ttl_secs: 60 }
    }
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self {
            admin_username: "admin".into(),
            admin_email: "admin@petmesh.local".into(),
            admin_password: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: None,
            level: "info".into(),
        }
    }
}

// === clients and derived values ===
