//! `explain`: what the waypoint would do with one request, decided from a config snapshot without sending it.
//!
//! [`explain`] is one pure function, snapshot + [`Query`] → [`Explanation`]: the service the destination
//! names, the route rule that matches (route, rule, the match that won, consumer routes by the caller's
//! namespace), the backends with weights (and why a reference is invalid), the filters (header modifiers, URL
//! rewrite with the new path, redirect with its `Location`, mirrors), timeouts and retry policy, each
//! backend's `DestinationRule` settings (load balancer, connection-pool limits, outlier detection), the
//! authorization verdict with the deciding policy and a per-policy trace ([`authz::policy::PolicySet::explain`]),
//! the RequestAuthentication rules that apply, and the policy diagnostics of this waypoint.
//!
//! It reuses the data path's own decisions ([`crate::routes::compile::RouteTable::select`], the weighted
//! shares of [`crate::route`], [`crate::retry::backoff`], the filters' `location` / `apply_path`), so it cannot
//! drift from what the proxy does. Two front ends only format it: `waypoint explain` (from a manifests
//! directory compiled in-process, or from a running waypoint's admin port: [`source`]) and the admin endpoint
//! `/explain` (`crate::admin::explain`), as text ([`render`]) or JSON. JWT claims are out of scope: a token in
//! the headers is not verified, so `request.auth.*` conditions never match here.

mod describe;
pub mod render;
pub mod source;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::routes::compile::RouteTable;
use crate::routes::matching::RequestView;
use crate::snapshot::Snapshot;

pub use describe::{
    Authorization, BackendInfo, DecidedBy, Diagnostic, Endpoint, Filters, HeaderEdits, Mirror,
    OutlierInfo, PolicyInfo, PolicyRow, PoolInfo, RedirectInfo, RetryInfo, RewriteInfo, RuleRow,
    TimeoutsInfo,
};

/// The request to explain, as given on the command line or in the admin endpoint's query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// The caller: `spiffe://td/ns/x/sa/y` or `ns/sa` (in the trust domain given to [`explain`]); `None`: an
    /// unauthenticated caller (no principal, no namespace).
    pub from: Option<String>,
    /// The destination as dialled: `host:port`, the host a service hostname (`reviews.default.svc.cluster.local`,
    /// or a prefix of one ending at a dot, `reviews.default`) or a VIP. The port may be left out when the
    /// service has one port.
    pub to: String,
    /// Default `GET`.
    pub method: Option<String>,
    /// Path and query; default `/`.
    pub path: Option<String>,
    /// Request headers, in order (`Host` defaults to `to`).
    pub headers: Vec<(String, String)>,
    /// The caller's address, for `ipBlocks` / `source.ip` (default `0.0.0.0`).
    pub source_ip: Option<IpAddr>,
}

/// Why a request cannot be explained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown service {to:?}: this waypoint serves {known}")]
    UnknownService { to: String, known: String },
    #[error("{0}")]
    BadInput(String),
}

/// What the waypoint would do with the request (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub request: RequestInfo,
    pub service: ServiceInfo,
    /// What the caller would get.
    pub outcome: Outcome,
    /// `None`: no rule matches (404 `NR`).
    pub route: Option<RouteInfo>,
    pub authorization: Authorization,
    /// The RequestAuthentication rules of the service: a token, when present, must verify against one (else
    /// 401); without one the request goes on unauthenticated.
    pub authentication: Vec<authz::jwt::RuleInfo>,
    /// Policies near this waypoint that it does not enforce, or not as written.
    pub diagnostics: Vec<Diagnostic>,
}

/// The request as judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The caller's principal (`td/ns/x/sa/y`), `None` when unauthenticated.
    pub principal: Option<String>,
    pub source_namespace: Option<String>,
    pub source_ip: IpAddr,
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
}

/// The destination service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `namespace/name`.
    pub name: String,
    pub hostname: String,
    /// VIP:port (the HBONE `:authority`).
    pub address: SocketAddr,
}

/// What the caller would get, in the order the proxy decides: authorization, route, redirect, backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The status the waypoint answers itself; `None`: forwarded (the backend answers).
    pub status: Option<u16>,
    /// The response flag (`NR`, ...), when the waypoint answers an error.
    pub flag: Option<String>,
    pub summary: String,
}

/// The rule that matches and what it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Index into the service's rules.
    pub rule_index: usize,
    /// `HTTPRoute namespace/name rule N`.
    pub rule: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// `namespace/name` of the route; `None` for the default rule (no accepted producer route).
    pub route: Option<String>,
    /// The rule's and the match's index within the route.
    pub route_rule: usize,
    pub match_index: usize,
    /// The match that won, e.g. `PathPrefix /api, method GET, header x-user Exact "jason"`.
    pub matched: String,
    /// Set when consumer routes of the caller's namespace replaced the producer routes.
    pub consumer_namespace: Option<String>,
    pub backends: Vec<BackendInfo>,
    pub filters: Filters,
    pub timeouts: TimeoutsInfo,
    pub retry: RetryInfo,
}

/// Explains `q` against `snapshot`; `trust_domain` completes an `ns/sa` caller.
pub fn explain(
    snapshot: &Snapshot,
    q: &Query,
    trust_domain: &str,
) -> Result<Explanation, ExplainError> {
    let bad = ExplainError::BadInput;
    let (principal, namespace) = match q.from.as_deref() {
        None | Some("") => (None, None),
        Some(from) => {
            let (p, ns) = caller(from, trust_domain).map_err(bad)?;
            (Some(p), Some(ns))
        }
    };
    let address = resolve(snapshot, &q.to)?;
    let table = snapshot.services[&address].clone();
    let method_text = q.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| bad(format!("bad method {method_text:?}")))?;
    let path = q.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        return Err(bad(format!("the path must start with '/': {path:?}")));
    }
    let headers = header_map(&q.headers, &q.to)?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&q.to)
        .to_string();
    let source_ip = q.source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    let sec = snapshot.security(address).cloned().unwrap_or_default();
    let attrs = authz::attrs::Request {
        source_principal: principal.as_deref(),
        source_namespace: namespace.as_deref(),
        source_ip,
        remote_ip: source_ip,
        destination_ip: address.ip(),
        destination_port: address.port(),
        http: Some(authz::attrs::Http {
            host: &host,
            method: method.as_str(),
            path: &path,
            headers: &headers,
            auth: None,
        }),
    };
    let authorization = match sec.policies.explain(&attrs) {
        Ok(e) => describe::authorization(&e),
        Err(e) => describe::bad_path(&e.to_string()),
    };
    let view = RequestView::new(&method, &path, &headers);
    let route = route_info(&table, namespace.as_deref().unwrap_or(""), &view, &host);
    let outcome = outcome(&authorization, route.as_ref());
    Ok(Explanation {
        request: RequestInfo {
            principal,
            source_namespace: namespace,
            source_ip,
            method: method.to_string(),
            path,
            host,
            headers: q.headers.clone(),
        },
        service: ServiceInfo {
            name: table.name.clone(),
            hostname: table.hostname.clone(),
            address,
        },
        outcome,
        route,
        authorization,
        authentication: sec.authn.as_ref().map(|a| a.rules()).unwrap_or_default(),
        diagnostics: snapshot
            .policy_diagnostics
            .iter()
            .map(describe::diagnostic)
            .collect(),
    })
}

/// The caller's principal (`td/ns/x/sa/y`) and namespace from `spiffe://td/ns/x/sa/y` or `ns/sa`.
pub fn caller(from: &str, trust_domain: &str) -> Result<(String, String), String> {
    let principal = match from.strip_prefix("spiffe://") {
        Some(rest) => rest.to_string(),
        None => match from.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                format!("{trust_domain}/ns/{ns}/sa/{sa}")
            }
            _ => {
                return Err(format!(
                    "bad source {from:?}: expected spiffe://<trust domain>/ns/<ns>/sa/<sa> or <ns>/<sa>"
                ))
            }
        },
    };
    let parts: Vec<&str> = principal.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
            Ok((principal.clone(), ns.to_string()))
        }
        _ => Err(format!(
            "bad source {from:?}: expected spiffe://<trust domain>/ns/<ns>/sa/<sa> or <ns>/<sa>"
        )),
    }
}

/// The VIP:port of the service `to` names (see [`Query::to`]).
pub fn resolve(snapshot: &Snapshot, to: &str) -> Result<SocketAddr, ExplainError> {
    let unknown = || {
        let mut known: Vec<String> = snapshot
            .services
            .iter()
            .map(|(a, t)| format!("{}:{} ({a})", t.hostname, a.port()))
            .collect();
        known.sort();
        ExplainError::UnknownService {
            to: to.to_string(),
            known: if known.is_empty() {
                "no service".into()
            } else {
                known.join(", ")
            },
        }
    };
    let (host, port) = split_host_port(to).ok_or_else(|| {
        ExplainError::BadInput(format!("bad destination {to:?}: expected host:port"))
    })?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    let mut hits: Vec<(SocketAddr, &RouteTable)> = snapshot
        .services
        .iter()
        .filter(|(a, t)| match ip {
            Some(ip) => a.ip() == ip,
            None => t.hostname == host || t.hostname.starts_with(&format!("{host}.")),
        })
        .map(|(a, t)| (*a, t.as_ref()))
        .collect();
    hits.sort_by_key(|(a, _)| *a);
    let mut names: Vec<&str> = hits.iter().map(|(_, t)| t.name.as_str()).collect();
    names.dedup();
    if names.len() > 1 {
        return Err(ExplainError::BadInput(format!(
            "{to:?} is ambiguous: {}; give the full hostname",
            names.join(", ")
        )));
    }
    match port {
        Some(port) => hits
            .iter()
            .find(|(a, _)| a.port() == port)
            .map(|(a, _)| *a)
            .ok_or_else(unknown),
        None if hits.len() == 1 => Ok(hits[0].0),
        None if hits.is_empty() => Err(unknown()),
        None => Err(ExplainError::BadInput(format!(
            "{to:?} has several ports ({}); give one",
            hits.iter()
                .map(|(a, _)| a.port().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `host[:port]`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(to: &str) -> Option<(&str, Option<u16>)> {
    if to.is_empty() {
        return None;
    }
    if let Some(rest) = to.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    if to.parse::<IpAddr>().is_ok() {
        return Some((to, None));
    }
    match to.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((to, None)),
    }
}

fn header_map(headers: &[(String, String)], to: &str) -> Result<HeaderMap, ExplainError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError::BadInput(format!("bad header name {name:?}")))?;
        let v = HeaderValue::from_str(value.trim())
            .map_err(|_| ExplainError::BadInput(format!("bad value of header {name:?}")))?;
        map.append(n, v);
    }
    if !map.contains_key(http::header::HOST) {
        if let Ok(v) = HeaderValue::from_str(to) {
            map.insert(http::header::HOST, v);
        }
    }
    Ok(map)
}

/// The rule `req` from `caller_ns` matches, and everything it does.
fn route_info(
    table: &RouteTable,
    caller_ns: &str,
    req: &RequestView<'_>,
    host: &str,
) -> Option<RouteInfo> {
    let consumer = table.consumers.get(caller_ns);
    let (rule_index, m) = table.select(caller_ns, req)?;
    let origin = consumer
        .unwrap_or(&table.producer)
        .origins()
        .find(|(candidate, _, _)| std::ptr::eq(*candidate, m))
        .map(|(_, o, _)| o.clone());
    let rule = &table.rules[rule_index];
    let matched_prefix = match &m.path {
        crate::routes::matching::PathMatch::Prefix(p) => Some(p.as_str()),
        _ => None,
    };
    let parts = describe::Parts {
        host,
        path_and_query: req_path_and_query(req),
        matched_prefix,
    };
    Some(RouteInfo {
        rule_index,
        rule: rule.name.clone(),
        kind: rule.kind.name().to_string(),
        route: origin
            .as_ref()
            .map(|o| o.route.clone())
            .filter(|r| !r.is_empty()),
        route_rule: origin.as_ref().map_or(0, |o| o.rule),
        match_index: origin.as_ref().map_or(0, |o| o.match_index),
        matched: describe::route_match(m),
        consumer_namespace: consumer.map(|_| caller_ns.to_string()),
        backends: rule
            .backends
            .iter()
            .map(|b| describe::backend(b, rule.total_weight, &parts))
            .collect(),
        filters: describe::filters(&rule.filters, &parts),
        timeouts: describe::timeouts(&rule.timeouts),
        retry: describe::retry(rule.retry.as_ref(), rule.retry_resets),
    })
}

fn req_path_and_query(req: &RequestView<'_>) -> String {
    match req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.to_string(),
    }
}

/// What the caller gets, in the proxy's order: authorize → route → redirect → backend.
pub fn outcome(authz: &Authorization, route: Option<&RouteInfo>) -> Outcome {
    let answer = |status: u16, flag: Option<&str>, summary: String| Outcome {
        status: Some(status),
        flag: flag.map(str::to_string),
        summary,
    };
    if authz.bad_path {
        return answer(
            400,
            None,
            "the path cannot be normalized for authorization".into(),
        );
    }
    let custom = if authz.custom_providers.is_empty() {
        String::new()
    } else {
        format!(
            " (after the CUSTOM providers {} allow it)",
            authz.custom_providers.join(", ")
        )
    };
    if authz.verdict == "deny" {
        let by = authz
            .decided_by
            .as_ref()
            .map_or("no ALLOW policy matched".to_string(), |d| {
                format!("{} {} rules[{}]", d.action, d.policy, d.rule)
            });
        return answer(403, None, format!("403 RBAC: access denied, by {by}"));
    }
    let Some(route) = route else {
        return answer(404, Some("NR"), "404: no route rule matches".into());
    };
    if let Some(r) = &route.filters.redirect {
        return answer(
            r.status,
            None,
            format!("{} redirect to {}{custom}", r.status, r.location),
        );
    }
    if route.backends.iter().all(|b| b.weight == 0) {
        return answer(500, None, "500: the rule has no backend with weight".into());
    }
    let mut notes = Vec::new();
    for b in route.backends.iter().filter(|b| b.weight > 0) {
        if let Some(why) = &b.invalid {
            notes.push(format!(
                "{:.1}% answered 500 ({}: {why})",
                b.share_percent, b.name
            ));
        } else if b.endpoints.is_empty() {
            notes.push(format!(
                "{:.1}% answered 503 ({}: no endpoints)",
                b.share_percent, b.name
            ));
        }
    }
    let mut summary = format!("forwarded by {}{custom}", route.rule);
    if !notes.is_empty() {
        summary.push_str("; ");
        summary.push_str(&notes.join("; "));
    }
    Outcome {
        status: None,
        flag: None,
        summary,
    }
}
