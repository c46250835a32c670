//! The default of every balancer setting (the values the README's configuration table lists).

use std::net::IpAddr;

use petmesh_shared::{redis_conn::RedisMode, telemetry::LogFormat};

use super::{
    BreakerSettings, ClusterSettings, DiscoverySettings, HealthSettings, LimitSettings,
    ListenSettings, LogSettings, RedisSettings, RetrySettings, Settings, ShutdownSettings,
    StrategyName, StrategySettings,
};
use crate::selection::HashKey;

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: ListenSettings {
                host: IpAddr::from([0, 0, 0, 0]),
                port: 8080,
            },
            admin: ListenSettings {
                host: IpAddr::from([0, 0, 0, 0]),
                port: 8081,
            },
            cluster: ClusterSettings {
                name: "default".into(),
            },
            redis: RedisSettings::default(),
            discovery: DiscoverySettings::default(),
            strategy: StrategySettings::default(),
            health: HealthSettings::default(),
            breaker: BreakerSettings::default(),
            retry: RetrySettings::default(),
            limits: LimitSettings::default(),
            panic_threshold: 0.5,
            shutdown: ShutdownSettings {
                grace_period_secs: 10,
            },
            workers: 0,
            log: LogSettings::default(),
        }
    }
}

impl Default for ListenSettings {
    fn default() -> Self {
        Settings::default().listen
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Settings::default().cluster
    }
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Settings::default().shutdown
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 2000,
        }
    }
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            static_upstreams: String::new(),
            resync_interval_ms: 5000,
        }
    }
}

impl Default for StrategySettings {
    fn default() -> Self {
        Self {
            http: StrategyName::RoundRobin,
            ws: StrategyName::LeastConnections,
            hash_key: HashKey::ClientIp,
            bounded_load_factor: 1.25,
            virtual_nodes: 160,
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            path: "/health/ready".into(),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            backoff_initial_ms: 1000,
            backoff_max_ms: 30_000,
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            budget_ratio: 0.2,
            min_per_second: 10,
            max_attempts: 3,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            ws_per_ip: 10,
            ws_handshakes_per_second: 1000,
            ws_handshake_burst: 100,
            ws_handshake_max_wait_ms: 10_000,
            ws_lease_ms: 15_000,
            ws_lease_refresh_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            connect_timeout_ms: 1000,
            response_timeout_ms: 30_000,
            ws_send_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}
