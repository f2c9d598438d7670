//! The compiled config's parts as plain, serializable facts for [`super::Explanation`]: matches, backends,
//! filters (with the rewritten path and the redirect's `Location` computed for the request), timeouts, retry,
//! `DestinationRule` policy, and the authorization trace.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypoint_filters::{HeaderModifier, PathModifier, RequestParts};

use crate::resilience::policy::{HashOn, LoadBalancer, TrafficPolicy};
use crate::retry::{RetryOn, CLOSE_DETECTION};
use crate::routes::compile::{AppProtocol, RetryPolicy, RuleFilters, Timeouts};
use crate::routes::matching::{PathMatch, RouteMatch, StringMatch};
use crate::snapshot::Backend;

/// What filters need from the request.
pub(super) struct Parts<'a> {
    pub host: &'a str,
    pub path_and_query: String,
    pub matched_prefix: Option<&'a str>,
}

/// One weighted backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `namespace/name:port`.
    pub name: String,
    pub weight: u32,
    /// Its share of the rule's traffic, in percent.
    pub share_percent: f64,
    /// Why the reference is invalid (its share is answered 500).
    pub invalid: Option<String>,
    /// `http1` or `h2c`.
    pub protocol: String,
    pub endpoints: Vec<Endpoint>,
    /// Backend-level filters (after the rule's).
    pub filters: Filters,
    /// The Service port's `DestinationRule.trafficPolicy` (defaults without one).
    pub policy: PolicyInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    /// The identity expected over HBONE; `None`: plain TCP (not in the mesh).
    pub identity: Option<String>,
}

/// Filters of a rule or backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<RedirectInfo>,
    pub rewrite: Option<RewriteInfo>,
    pub mirrors: Vec<Mirror>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectInfo {
    pub status: u16,
    /// The `Location` this request would get.
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteInfo {
    /// The new `Host`.
    pub hostname: Option<String>,
    /// `ReplaceFullPath /x` or `ReplacePrefixMatch /x`.
    pub path_modifier: Option<String>,
    /// The path and query sent to the backend, when it changes.
    pub new_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: String,
    pub percent: f64,
}

/// `timeouts`, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsInfo {
    /// The whole request, across retries; `None`: no deadline.
    pub request_ms: Option<u64>,
    /// One try; `None`: none.
    pub backend_request_ms: Option<u64>,
}

/// The retry policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryInfo {
    /// `false`: the rule has no `retry`; close detection applies (retries of connect failures and resets).
    pub configured: bool,
    /// Retries after the first try.
    pub attempts: u32,
    pub codes: Vec<u16>,
    /// The minimum wait before the first retry (doubles per retry, up to 10×, plus jitter).
    pub backoff_ms: u64,
    /// Istio `retryOn` conditions.
    pub retry_on: Vec<String>,
    /// Resets before the response are retried for every method (route annotation), not only idempotent ones.
    pub reset_before_response: bool,
}

/// A backend's `DestinationRule` policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, or `consistent hash on ...`.
    pub load_balancer: String,
    /// The circuit breaker (`connectionPool`); `None` = unlimited.
    pub connection_pool: PoolInfo,
    /// `None`: no outlier detection.
    pub outlier_detection: Option<OutlierInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierInfo {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

/// The authorization verdict and trace ([`authz::policy::Explanation`], as plain data).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// `allow` or `deny`.
    pub verdict: String,
    /// `no_policy`, `no_deny_matched`, `deny_matched`, `allow_matched`, `no_allow_matched`, or `bad_path`.
    pub reason: String,
    /// The path cannot be normalized (the proxy answers 400).
    pub bad_path: bool,
    pub decided_by: Option<DecidedBy>,
    /// CUSTOM providers asked first (any may deny).
    pub custom_providers: Vec<String>,
    /// The AUDIT policy that matched.
    pub audit: Option<DecidedBy>,
    /// What dry-run policies would make of it.
    pub shadow_verdict: Option<String>,
    pub shadow_decided_by: Option<DecidedBy>,
    /// Every policy of the service, in evaluation order.
    pub policies: Vec<PolicyRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBy {
    pub policy: String,
    /// `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`.
    pub action: String,
    pub rule: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    pub policy: String,
    pub action: String,
    pub dry_run: bool,
    pub provider: Option<String>,
    pub matched_rule: Option<usize>,
    pub rules: Vec<RuleRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    pub rule: usize,
    pub matched: bool,
    /// The first field that did not match.
    pub failed: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub policy: String,
    pub rule: Option<usize>,
    pub kind: String,
    pub message: String,
}

/// A unit enum's serde name (`"allow"`, `"ALLOW"`, `"no_policy"`).
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn authorization(e: &authz::policy::Explanation) -> Authorization {
    let decided = |d: &Option<authz::policy::DecidedBy>| {
        d.as_ref().map(|d| DecidedBy {
            policy: d.policy.clone(),
            action: name(&d.action),
            rule: d.rule,
        })
    };
    Authorization {
        verdict: name(&e.verdict),
        reason: name(&e.reason),
        bad_path: false,
        decided_by: decided(&e.decided_by),
        custom_providers: e.custom_providers.clone(),
        audit: decided(&e.audit),
        shadow_verdict: e.shadow_verdict.as_ref().map(name),
        shadow_decided_by: decided(&e.shadow_decided_by),
        policies: e
            .policies
            .iter()
            .map(|p| PolicyRow {
                policy: p.policy.clone(),
                action: name(&p.action),
                dry_run: p.dry_run,
                provider: p.provider.clone(),
                matched_rule: p.matched_rule,
                rules: p
                    .rules
                    .iter()
                    .map(|r| RuleRow {
                        rule: r.rule,
                        matched: r.matched,
                        failed: r.failed.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The path cannot be normalized: the proxy answers 400 before any policy.
pub(super) fn bad_path(why: &str) -> Authorization {
    Authorization {
        verdict: "deny".into(),
        reason: format!("bad_path: {why}"),
        bad_path: true,
        ..Authorization::default()
    }
}

pub(super) fn diagnostic(d: &authz::policy::Diagnostic) -> Diagnostic {
    Diagnostic {
        policy: d.policy.clone(),
        rule: d.rule,
        kind: name(&d.kind),
        message: d.message.clone(),
    }
}

/// `PathPrefix /api, method GET, header x-user Exact "jason", query v Regex "1|2"`.
pub(super) fn route_match(m: &RouteMatch) -> String {
    let value = |v: &StringMatch| match v {
        StringMatch::Exact(s) => format!("Exact {s:?}"),
        StringMatch::Regex(re) => format!("RegularExpression {:?}", unanchored(re.as_str())),
    };
    let mut out = vec![match &m.path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("PathPrefix {p}"),
        PathMatch::Regex(re) => format!("RegularExpression {}", unanchored(re.as_str())),
    }];
    if let Some(method) = &m.method {
        out.push(format!("method {method}"));
    }
    for h in &m.headers {
        out.push(format!("header {} {}", h.name, value(&h.value)));
    }
    for q in &m.query {
        out.push(format!("query {} {}", q.name, value(&q.value)));
    }
    out.join(", ")
}

/// The pattern as written (the compiler anchors it as `^(?:...)$`).
fn unanchored(re: &str) -> &str {
    re.strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(re)
}

pub(super) fn backend(b: &Backend, total_weight: u32, parts: &Parts<'_>) -> BackendInfo {
    let share_percent = if total_weight == 0 {
        0.0
    } else {
        f64::from(b.weight) * 100.0 / f64::from(total_weight)
    };
    BackendInfo {
        name: b.name.clone(),
        weight: b.weight,
        share_percent,
        invalid: b.invalid.clone(),
        protocol: match b.protocol {
            AppProtocol::Http1 => "http1",
            AppProtocol::H2c => "h2c",
        }
        .into(),
        endpoints: b
            .endpoints
            .iter()
            .map(|u| Endpoint {
                address: u.addr.to_string(),
                identity: u.hbone.as_ref().map(|h| h.identity.to_string()),
            })
            .collect(),
        filters: filters(&b.filters, parts),
        policy: policy(&b.policy),
    }
}

pub(super) fn filters(f: &RuleFilters, parts: &Parts<'_>) -> Filters {
    let (host, port) = match parts.host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (parts.host, None),
        },
        _ => (parts.host, None),
    };
    let (path, query) = match parts.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (parts.path_and_query.as_str(), None),
    };
    Filters {
        request_headers: f.request_headers.as_ref().map(header_edits),
        response_headers: f.response_headers.as_ref().map(header_edits),
        redirect: f.redirect.as_ref().map(|r| RedirectInfo {
            status: r.status,
            location: r.location(
                &RequestParts {
                    scheme: "http",
                    host,
                    port,
                    path,
                    query,
                },
                parts.matched_prefix,
            ),
        }),
        rewrite: f.rewrite.as_ref().map(|rw| RewriteInfo {
            hostname: rw.hostname.clone(),
            path_modifier: rw.path.as_ref().map(|p| match p {
                PathModifier::Full(p) => format!("ReplaceFullPath {p}"),
                PathModifier::Prefix(p) => format!("ReplacePrefixMatch {p}"),
            }),
            new_path: rw.apply_path(&parts.path_and_query, parts.matched_prefix),
        }),
        mirrors: f
            .mirrors
            .iter()
            .map(|m| Mirror {
                backend: m.backend.name.clone(),
                percent: f64::from(m.fraction.ppm) / 10_000.0,
            })
            .collect(),
    }
}

fn header_edits(m: &HeaderModifier) -> HeaderEdits {
    let pairs = |l: &[(http::HeaderName, http::HeaderValue)]| {
        l.iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    };
    HeaderEdits {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|n| n.to_string()).collect(),
    }
}

pub(super) fn timeouts(t: &Timeouts) -> TimeoutsInfo {
    TimeoutsInfo {
        request_ms: t.request.map(ms),
        backend_request_ms: t.backend_request.map(ms),
    }
}

/// Istio's `retryOn` names, in its documentation's order.
const RETRY_ON: [&str; 8] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "refused-stream",
    "reset",
    "reset-before-request",
    "retriable-4xx",
    "retriable-status-codes",
];

pub(super) fn retry(p: Option<&RetryPolicy>, reset_before_response: bool) -> RetryInfo {
    let policy = p.unwrap_or(&CLOSE_DETECTION);
    let on = if p.is_some() {
        policy.on
    } else {
        policy.on.difference(RetryOn::RETRIABLE_STATUS_CODES)
    };
    RetryInfo {
        configured: p.is_some(),
        attempts: policy.attempts,
        codes: policy.codes.clone(),
        backoff_ms: ms(crate::retry::backoff(policy, 2, 0)),
        retry_on: RETRY_ON
            .iter()
            .filter(|n| RetryOn::condition(n).is_some_and(|c| on.contains(c)))
            .map(|n| n.to_string())
            .collect(),
        reset_before_response,
    }
}

pub(super) fn policy(p: &TrafficPolicy) -> PolicyInfo {
    let c = &p.connection_pool;
    PolicyInfo {
        load_balancer: match &p.load_balancer {
            LoadBalancer::RoundRobin => "ROUND_ROBIN".into(),
            LoadBalancer::LeastRequest => "LEAST_REQUEST".into(),
            LoadBalancer::Random => "RANDOM".into(),
            LoadBalancer::ConsistentHash(on) => match on {
                HashOn::Header(h) => format!("consistent hash on header {h}"),
                HashOn::Cookie { name, .. } => format!("consistent hash on cookie {name}"),
                HashOn::QueryParameter(q) => format!("consistent hash on query parameter {q}"),
                HashOn::SourceIp => "consistent hash on source IP".into(),
            },
        },
        connection_pool: PoolInfo {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_requests_per_connection: c.max_requests_per_connection,
            max_retries: c.max_retries,
            idle_timeout_ms: c.idle_timeout.map(ms),
            connect_timeout_ms: c.connect_timeout.map(ms),
        },
        outlier_detection: p.outlier.as_ref().map(|o| OutlierInfo {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway: o.consecutive_gateway,
            interval_ms: ms(o.interval),
            base_ejection_time_ms: ms(o.base_ejection_time),
            max_ejection_percent: o.max_ejection_percent,
        }),
    }
}
