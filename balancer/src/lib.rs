//! petmesh-balancer: the HTTP and WebSocket load balancer in front of the petmesh nodes.
//!
//! Code tour, in reading order:
//! - [`config`]: the settings (operator manual) and their validation.
//! - [`startup`]: [`Application`]: binds, reads the node set, runs until told to stop.
//! - [`worker`]: one event loop per core (own listener, snapshot, upstream pool, retry budget);
//!   [`spread`] keeps client connections even over them, [`deadline`] keeps their timeouts.
//! - [`proxy`]: the request path; [`proxy::http`] rewrites messages, [`proxy::upstream`] is the
//!   HTTP/1.1 client to the nodes, [`proxy::ws`] splices WebSockets, [`proxy::linger`] reads
//!   away the rest of a body answered early (so that the client can read the answer).
//! - [`error`]: [`ProxyError`](error::ProxyError) and the one status mapping.
//! - [`backend`]: nodes and the membership the workers snapshot.
//! - [`selection`]: the strategies, one per file.
//! - [`health`], [`breaker`], [`retry`]: when a node is skipped and when a request is retried.
//! - [`discovery`] and [`background`]: where nodes come from and the loops that apply it.
//! - [`admin`] and [`metrics`]: what operators see; [`console`] is the live page on the admin
//!   port and its event stream.
//! - [`ws_limit`]: the WebSocket limit per client IP, held across every balancer in Redis.
//! - [`state`]: what all threads share.

pub mod admin;
pub mod backend;
pub mod background;
pub mod breaker;
pub mod config;
pub mod console;
pub mod deadline;
pub mod discovery;
pub mod error;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod selection;
pub mod spread;
pub mod startup;
pub mod state;
pub mod worker;
pub mod ws_limit;

pub use config::Settings;
pub use startup::Application;
