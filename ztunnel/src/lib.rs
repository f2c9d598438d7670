//! A minimal ambient node proxy (the "ztunnel" tier of an ambient mesh).
//!
//! It speaks for the workloads of its node: outbound connections captured by SOCKS5 ([`socks5`]) or iptables
//! `REDIRECT` ([`redirect`]) are planned against the mesh config ([`outbound::plan`]) and sent over HBONE
//! (mutual TLS + HTTP/2 CONNECT, presenting the source workload's own certificate) to the destination service's
//! waypoint or straight to the destination pod's ztunnel, or passed through as plain TCP; inbound HBONE on each
//! local workload's `ip:15008` is checked ([`inbound`]) and forwarded to the application.
//!
//! Modules:
//! - [`node`]: [`NodeConfig`] and [`Ztunnel`] — start, stats, graceful shutdown.
//! - [`view`]: the compiled, hot-swapped [`view::NodeView`] (the mesh plus which workloads are local).
//! - [`outbound`]: source identification, the pure planner, the executor.
//! - [`inbound`]: the pure destination check and the HBONE CONNECT handler.
//! - [`policy`]: node-tier (L4) AuthorizationPolicy, compiled per snapshot, judged per inbound CONNECT.
//! - [`socks5`], [`redirect`]: the outbound entry points.
//! - [`stats`], [`drain`]: counters; bounded graceful shutdown.
//! - [`ops`]: readiness, Prometheus and admin endpoints.
//!
//! Wire behaviour follows `shared/notes/hbone.md`; the HBONE machinery itself lives in `mesh::hbone`.

pub mod drain;
pub mod inbound;
pub mod node;
pub mod ops;
pub mod outbound;
pub mod policy;
pub mod redirect;
pub mod socks5;
pub mod source;
pub mod stats;
pub mod view;

#[cfg(test)]
mod testdata;

pub use node::{NodeConfig, Ztunnel};
pub use stats::Stats;
