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
//! - [`request_id`], [`metrics`], [`limits`]: cross-cutting middleware.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod request_id;
pub mod startup;
pub mod state;
pub mod users;
