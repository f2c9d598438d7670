//! Resilience beyond the route: Istio `DestinationRule.trafficPolicy` for a destination service.
//!
//! - [`policy`]: the compiled policy (connection pool limits, outlier detection, load balancer).
//! - [`balance`]: endpoint choice (ROUND_ROBIN, LEAST_REQUEST with power of two choices, RANDOM, consistent
//!   hash on a header, cookie, query parameter or the source IP), skipping ejected endpoints.
//! - [`breaker`]: circuit breaking (`connectionPool` limits): over a limit, fail fast with 503 `UO`.
//! - [`outlier`]: outlier detection: eject an endpoint after consecutive errors, bring it back, never all.
//! - [`reuse`]: `maxRequestsPerConnection`: requests counted per upstream connection.
//!
//! Their state lives in [`ResilienceState`], owned by the proxy and keyed by service and endpoint address, not in
//! the config snapshot: a hot swap keeps in-flight counts, ejections and hash placement.

pub mod balance;
pub mod breaker;
pub mod outlier;
pub mod policy;
pub mod reuse;

/// State that outlives config snapshots.
#[derive(Debug, Default)]
pub struct ResilienceState {
    pub breakers: breaker::Breakers,
    pub outliers: outlier::Outliers,
    pub load: balance::LoadCounters,
    /// JWT authenticators by service, so a swap keeps loaded key sets (see [`crate::security`]).
    pub authn: crate::security::AuthnCache,
    /// Where each snapshot interns its destinations' telemetry labels (`None`: no telemetry).
    pub telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
}
