//! Integration tests of the node API: real PostgreSQL, real Redis, real `petmesh-node`
//! processes on free loopback ports, driven over HTTP. One binary, one module per area.

mod auth;
mod bodies;
mod contract;
mod demo;
mod errors;
mod events;
mod hardening;
mod helpers;
mod images;
mod nodes;
mod orders;
mod pacing;
mod pets;
mod realtime;
mod subscribers;
mod users;
