//! Integration tests of petmesh-balancer: the real balancer (in-process, through its library
//! `Application`) on loopback sockets in front of real mock backends (and a real Redis for
//! discovery). One binary, one module per concern; `support` holds the builders.

mod balancing;
mod bodies;
mod console;
mod discovery;
mod failures;
mod forwarding;
mod shutdown;
mod support;
mod websocket;
