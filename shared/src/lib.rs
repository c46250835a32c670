//! What the petmesh binaries agree on.
//!
//! Code tour:
//! - [`error_body`]: the one JSON error body every failure is reported in.
//! - [`event`]: the envelope of domain events published cluster-wide.
//! - [`registry`]: the Redis key layout (every key a node or balancer touches is named here).
//! - [`redis_conn`]: connecting to Redis, standalone or a Redis Cluster (commands, pub/sub).
//! - [`config`]: layered configuration loading (defaults → file → environment) and the
//!   one-line problem reports used when start-up is refused.
//! - [`telemetry`]: the tracing subscriber (JSON or pretty).
//! - [`shutdown`]: the future that resolves on SIGTERM or SIGINT.
//! - [`probe`]: the `healthcheck` subcommand's one HTTP GET (container HEALTHCHECKs).
//! - [`pacing`]: the schedule at which WebSocket handshakes are admitted in a reconnect storm.

pub mod config;
pub mod error_body;
pub mod event;
pub mod pacing;
pub mod probe;
pub mod redis_conn;
pub mod registry;
pub mod shutdown;
pub mod telemetry;
