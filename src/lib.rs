//! `waypoint`: the L7 data plane of an ambient service mesh, on Pingora.
//!
//! A request's path through this crate (see `docs/request-flow.md`):
//! [`downstream`] (HBONE in: mTLS, CONNECT, caller identity) → [`proxy`] (Pingora hooks: identify, route,
//! balance, rewrite, forward, observe) with decisions in [`route`] over the compiled [`snapshot`] → [`upstream`]
//! (HBONE out: HTTP/1.1 straight on the stream, h2c through the relay; or plain TCP). [`error`] is the one
//! place failures become responses.
//! [`server`] wires it together; [`demo`] runs a whole mesh on loopback.

pub mod admin;
pub mod control_plane;
pub mod ctl;
pub mod demo;
pub mod downstream;
pub mod error;
pub mod explain;
pub mod mirror;
pub mod proxy;
pub mod resilience;
pub mod retry;
pub mod route;
pub mod routes;
pub mod security;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod testbed;
pub mod upstream;
