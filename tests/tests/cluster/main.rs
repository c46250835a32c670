//! Cluster integration tests: real Redis, PostgreSQL, `petmesh-node` and `petmesh-balancer`
//! processes on free loopback ports (issue 4, membership and balancing).
//!
//! - [`membership`]: a node's own registry entry, from start to drain, read straight from Redis.
//! - [`abuse`]: login lock-outs the whole cluster agrees on; client addresses nobody can forge.
//! - [`balancers`]: several balancers: one WebSocket limit per address, independent routing.
//! - [`discovery`]: the balancer following the registry: new nodes, departed ones.
//! - [`failover`]: nodes dying under load, and no node left at all.
//! - [`draining`]: a SIGTERMed node finishing its work while getting none.
//! - [`strategies`]: how requests spread across real nodes.
//! - [`outbox`]: domain events surviving a frozen Redis, a dead relay and replays, in commit
//!   order.
//! - [`realtime`]: WebSocket clients surviving the loss or drain of their node.
//! - [`redis_cluster`]: a Redis Cluster master killed, and a slot moved, under steady
//!   publishing.
//! - [`rate_limits`]: budgets that hold for the whole cluster, with or without Redis.
//! - [`operations`]: the balancer's `check-config` and `healthcheck`; the metrics dashboards
//!   and alerts read.

mod abuse;
mod balancers;
mod discovery;
mod draining;
mod failover;
mod membership;
mod operations;
mod outbox;
mod rate_limits;
mod realtime;
mod redis_cluster;
mod strategies;
mod support;
