//! HTTPRoutes and GRPCRoutes → per-service route tables (see the module doc of [`crate::routes`]).
//!
//! Contract used by the proxy (other code depends on these types; keep them):
//! - [`RouteTable::select`] picks the rule for a request from a caller namespace (consumer routes in the
//!   caller's namespace replace the producer routes for that caller, per GAMMA).
//! - A [`Rule`] carries its weighted [`crate::snapshot::Backend`]s, [`RuleFilters`], [`Timeouts`] and
//!   [`RetryPolicy`].

use std::collections::HashMap;
use std::time::Duration;

use waypoint_filters::{HeaderModifier, MirrorFraction, Redirect, UrlRewrite};

use super::matching::{MatchTable, RequestView, RouteMatch};
use crate::snapshot::Backend;

/// The protocol spoken to the application (from the Service port's `appProtocol`, or the route kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppProtocol {
    #[default]
    Http1,
    /// HTTP/2 prior knowledge (`appProtocol: http2`, `grpc`, `kubernetes.io/h2c`, and GRPCRoute backends).
    H2c,
}

/// The routes of one Service port.
#[derive(Debug)]
pub struct RouteTable {
    /// `namespace/name`.
    pub name: String,
    pub hostname: String,
    pub rules: Vec<Rule>,
    /// Producer routes (in the Service's namespace) and routes attached to the waypoint Gateway.
    pub producer: MatchTable,
    /// Consumer routes by the caller namespace they apply to.
    pub consumers: HashMap<String, MatchTable>,
}

impl RouteTable {
    /// The rule (index into `rules`) and the match that selected it, for a caller from `caller_namespace`.
    pub fn select<'a>(
        &'a self,
        caller_namespace: &str,
        req: &RequestView<'_>,
    ) -> Option<(usize, &'a RouteMatch)> {
        self.consumers
            .get(caller_namespace)
            .unwrap_or(&self.producer)
            .find(req)
    }
}

/// Which kind of route a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

/// One rule: where its traffic goes and what happens on the way.
#[derive(Debug)]
pub struct Rule {
    /// `HTTPRoute namespace/name rule N` (or `GRPCRoute ...`), for logs.
    pub name: String,
    pub kind: RouteKind,
    pub backends: Vec<Backend>,
    pub total_weight: u32,
    pub filters: RuleFilters,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
}

/// A rule's (or a backend's) filters, compiled.
#[derive(Debug, Default)]
pub struct RuleFilters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// When set, the waypoint answers the redirect itself; backends are not used.
    pub redirect: Option<Redirect>,
    pub rewrite: Option<UrlRewrite>,
    pub mirrors: Vec<Mirror>,
}

/// A `RequestMirror`: a copy of the request to another backend, fire-and-forget.
#[derive(Debug)]
pub struct Mirror {
    pub backend: Backend,
    pub fraction: MirrorFraction,
}

/// `timeouts` (GEP-1742).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, across retries.
    pub request: Option<Duration>,
    /// One try to a backend.
    pub backend_request: Option<Duration>,
}

/// `retry` (GEP-1731).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub attempts: u32,
    /// Response statuses that are retried (connect failures and resets before a response always are).
    pub codes: Vec<u16>,
    /// Base of the exponential backoff between tries.
    pub backoff: Option<Duration>,
}
