//! Gateway API routing for the waypoint: what a request matches and where it goes.
//!
//! - [`matching`]: one rule match (path, method, headers, query) and the specification's precedence between
//!   matches, compiled into a [`matching::MatchTable`] that finds a request's rule quickly as routes grow.
//! - [`compile`]: HTTPRoutes and GRPCRoutes attached to a Service (GAMMA producer and consumer routes) or to the
//!   waypoint Gateway → per-service route tables, with backends, filters, timeouts and retry.
//! - [`status`]: the conditions a Gateway API controller would write for each route and parent
//!   (`Accepted`, `ResolvedRefs` and their reasons), shown by `waypoint check` and the admin endpoint.

pub mod compile;
pub mod matching;
pub mod status;
