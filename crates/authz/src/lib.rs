//! `authz`: Istio's destination-side security policy, shared by the waypoint (L7) and the ztunnel (L4).
//!
//! - [`model`]: the `security.istio.io/v1` objects as written (`AuthorizationPolicy`, `RequestAuthentication`),
//!   serde types with the CRDs' field names.
//! - [`attrs`]: what a request is judged on ([`attrs::Request`]): the caller's verified identity, addresses and,
//!   at L7, host, method, normalized path, headers and the verified JWT ([`attrs::RequestAuth`]).
//! - [`path`]: path normalization before matching.
//! - [`policy`]: compiled policies and their evaluation at either tier.
//! - [`jwt`]: RequestAuthentication (JWT verification, JWKS fetch and refresh).
//! - [`ext`]: the CUSTOM action's external authorizer client.
//! - [`report`]: what of a policy a waypoint enforces, as its `WaypointAccepted` status condition.
//!
//! Nothing here trusts a header for identity: the source principal comes from the HBONE peer certificate, the
//! request principal only from a JWT this crate verified.

pub mod attrs;
pub mod ext;
pub mod jwt;
pub mod model;
pub mod path;
pub mod policy;
pub mod report;
