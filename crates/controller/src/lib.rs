//! `waypoint-controller`: waypoints from Gateways. For each `Gateway` of class `istio-waypoint` it creates and
//! owns the waypoint's Deployment, Service (HBONE, 15008) and ServiceAccount, scoped as the Gateway says
//! (`istio.io/waypoint-for`, `istio.io/for-service-account`), deletes them when the Gateway goes, and writes
//! the Gateway's status (`Accepted`, `Programmed`, `status.addresses`) as Istio's waypoint controller does.
//!
//! - [`desired`]: Gateway → the three objects (pure, table-tested), or why the Gateway is refused.
//! - [`diff`]: ownership, "already says it", the merge patch, orphans (pure).
//! - [`gateway_status`]: the Gateway's status for an outcome, and drift (pure).
//! - [`reconcile`]: the API writes of one Gateway, and orphan deletes.
//! - [`controller`]: the loop — reflectors, passes, leader-only writes, [`controller::PassReport`].
//! - [`cli`]: `waypoint controller`'s flags ([`ControllerArgs`]) and [`run`].
//!
//! `docs/controller.md` has the objects, flags and the RBAC the controller needs. Tested against the fake API
//! server of `kube-source` only: no cluster runs on the build machines.

pub mod cli;
pub mod controller;
pub mod desired;
pub mod diff;
pub mod gateway_status;
pub mod reconcile;

pub use cli::{run, ControllerArgs, ControllerError};
pub use controller::{Controller, ControllerConfig, PassReport};
pub use desired::{desired, is_waypoint, Desired, InvalidGateway, Options};
