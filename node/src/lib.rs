//! The petmesh API node.
//!
//! Code tour, in reading order:
//! - [`config`]: settings (defaults → file → `PETMESH_NODE__*`), validated before anything starts.
//! - [`startup`]: builds pools and the listener; runs until a shutdown future resolves.
//! - [`state`]: `AppState`, the context every handler receives.
//! - [`api`]: the OpenAPI service, one module per resource, and the middleware stack.
//! - [`error`]: `ApiError` and the rendering of every failure in the common error body.
//! - [`auth`]: tokens, passwords, revocations and sessions.
//! - [`users`]: the account model and its queries.
//! - [`pets`]: the catalogue (with [`pets::listing`] for filters, sorts and cursors) and
//!   [`cache`], the versioned Redis cache that keeps every node's reads fresh.
//! - [`orders`]: orders with stock, idempotency and cancellation; [`jobs`] is the durable
//!   PostgreSQL queue whose workers run [`payments`] against a simulated gateway.
//! - [`subscribers`]: custom WebSocket event names registered by admins, and the lookup the
//!   WebSocket layer uses to recognise them.
//! - [`events`]: event envelopes and the per-topic Redis logs; [`outbox`] writes domain events
//!   in their change's transaction and relays them to Redis (one node per topic, leased).
//! - [`seed`]: the demo catalogue; [`demo`] is the browser client served at `/`.
//! - [`membership`]: this node's entry in the Redis registry, from start to drain.
//! - [`request_id`], [`metrics`], [`limits`]: cross-cutting middleware; [`routes`] is what
//!   they know of the documented routes; [`text_param`] checks documented patterns without
//!   compiling them on every request. [`monitor`] samples what no request shows
//!   (dependencies, the pool, the job queue) for `/metrics`.

pub mod api;
pub mod auth;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod demo;
pub mod error;
pub mod events;
pub mod hardening;
pub mod jobs;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod monitor;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod pets;
pub mod ratelimit;
pub mod realtime;
pub mod request_id;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod state;
pub mod subscribers;
mod text_enum;
pub mod text_param;
pub mod users;
