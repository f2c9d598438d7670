//! One route (either kind) → its rules and matches: HTTPRoute matches as written, GRPCRoute service/method
//! matches as paths (`/service/method`), timeouts and retry. Filters and backends are compiled by their modules.
//!
//! GRPCRoute method matches become path matches on `/service/method`: both Exact → Exact path; service only →
//! PathPrefix `/service`; method only → regex `/[^/]+/method`; RegularExpression → regex `/(service)/(method)`
//! with `[^/]+` for the side not given.

use http::{HeaderName, Method};
use mesh::config::ConfigError;

use super::spec::{
    GrpcMethodSpec, MatchSpec, RetrySpec, RouteSpec, TimeoutsSpec, ValueMatchSpec,
    RETRY_ON_ANNOTATION,
};
use super::{backends, filters, Cx, RetryPolicy, RouteKind, Rule, Timeouts};
use crate::retry::RetryOn;
use crate::routes::matching::{HeaderMatch, PathMatch, QueryMatch, RouteMatch, StringMatch};

/// Attempts when `retry` gives none (implementation-specific per GEP-1731; Istio's default).
pub(crate) const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// A backend reference that does not resolve: the `ResolvedRefs=False` reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefProblem {
    /// `BackendNotFound`, `RefNotPermitted` or `InvalidKind`.
    pub reason: &'static str,
    pub message: String,
}

/// One route, compiled independently of its parents.
#[derive(Debug, Default)]
pub(crate) struct CompiledRoute {
    pub rules: Vec<Rule>,
    /// (match, rule index in `rules`, match index in the rule).
    pub matches: Vec<(RouteMatch, usize, usize)>,
    /// `field: message` for each value the waypoint cannot honour: the route is not accepted.
    pub unsupported: Vec<String>,
    pub refs: Vec<RefProblem>,
}

/// The state of compiling one route.
pub(crate) struct RouteCx<'a> {
    pub cx: &'a Cx<'a>,
    pub route: &'a RouteSpec,
    /// Resolve endpoints (only for routes attached to this waypoint; statuses need none).
    pub endpoints: bool,
    pub out: CompiledRoute,
}

impl RouteCx<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        self.route.err(field, message)
    }

    pub fn unsupported(&mut self, field: &str, message: impl std::fmt::Display) {
        self.out.unsupported.push(format!("{field}: {message}"));
    }
}

/// Compiles `route`'s rules; `endpoints`: resolve backend endpoints too.
pub(crate) fn compile_route(
    cx: &Cx<'_>,
    route: &RouteSpec,
    endpoints: bool,
) -> Result<CompiledRoute, ConfigError> {
    let mut rc = RouteCx {
        cx,
        route,
        endpoints,
        out: CompiledRoute::default(),
    };
    let retry_on = retry_on(&rc)?;
    for (ri, rule) in route.body.rules.iter().enumerate() {
        let at = format!("spec.rules[{ri}]");
        let matches = match rule.matches.as_deref() {
            None | Some([]) => vec![RouteMatch::any()],
            Some(ms) => {
                let mut out = Vec::with_capacity(ms.len());
                for (mi, m) in ms.iter().enumerate() {
                    let field = format!("{at}.matches[{mi}]");
                    if let Some(m) = route_match(&mut rc, &field, m)? {
                        out.push(m);
                    }
                }
                out
            }
        };
        let filters = filters::compile(&mut rc, &at, &rule.filters, filters::Level::Rule)?;
        let mut rule_backends = Vec::with_capacity(rule.backend_refs.len());
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let field = format!("{at}.backendRefs[{bi}]");
            rule_backends.push(backends::backend(&mut rc, &field, b, false)?);
        }
        let timeouts = timeouts(&rc, &at, rule.timeouts.as_ref())?;
        let retry = retry(&rc, &at, rule.retry.as_ref(), retry_on.as_ref())?;
        for (mi, m) in matches.into_iter().enumerate() {
            rc.out.matches.push((m, ri, mi));
        }
        rc.out.rules.push(Rule {
            name: format!("{} rule {ri}", route.object()),
            kind: route.kind,
            total_weight: rule_backends.iter().map(|b| b.weight).sum(),
            backends: rule_backends,
            filters,
            timeouts,
            retry,
            retry_resets: route.retry_resets,
        });
    }
    Ok(rc.out)
}

/// One match; `None` when it holds an unsupported value (recorded).
fn route_match(
    rc: &mut RouteCx<'_>,
    field: &str,
    m: &MatchSpec,
) -> Result<Option<RouteMatch>, ConfigError> {
    let path = match rc.route.kind {
        RouteKind::Http => http_path(rc, field, m)?,
        RouteKind::Grpc => grpc_path(rc, field, m)?,
    };
    let method =
        match (rc.route.kind, &m.method) {
            (RouteKind::Http, Some(v)) => {
                let name = v.as_str().unwrap_or_default();
                Some(Method::from_bytes(name.as_bytes()).map_err(|_| {
                    rc.err(&format!("{field}.method"), format!("invalid method {v}"))
                })?)
            }
            _ => None,
        };
    let headers = values(rc, &format!("{field}.headers"), &m.headers, true)?;
    let query = values(rc, &format!("{field}.queryParams"), &m.query_params, false)?;
    let (Some(path), Some(headers), Some(query)) = (path, headers, query) else {
        return Ok(None);
    };
    Ok(Some(RouteMatch {
        path,
        method,
        headers: headers
            .into_iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("checked in values");
                HeaderMatch { name, value }
            })
            .collect(),
        query: query
            .into_iter()
            .map(|(name, value)| QueryMatch { name, value })
            .collect(),
    }))
}

fn http_path(
    rc: &mut RouteCx<'_>,
    field: &str,
    m: &MatchSpec,
) -> Result<Option<PathMatch>, ConfigError> {
    let Some(p) = &m.path else {
        return Ok(Some(PathMatch::prefix("/")));
    };
    let value = p.value.as_deref().unwrap_or("/");
    let field = format!("{field}.path");
    match p.ty.as_deref().unwrap_or("PathPrefix") {
        "Exact" | "PathPrefix" if !value.starts_with('/') => Err(rc.err(
            &format!("{field}.value"),
            format!("path {value:?} must start with '/'"),
        )),
        "Exact" => Ok(Some(PathMatch::Exact(value.to_string()))),
        "PathPrefix" => Ok(Some(PathMatch::prefix(value))),
        "RegularExpression" => {
            let r = rc.cx.regex(value).map(PathMatch::Regex);
            Ok(regex(rc, &field, r))
        }
        other => {
            rc.unsupported(&format!("{field}.type"), format!("path match type {other}"));
            Ok(None)
        }
    }
}

fn grpc_path(
    rc: &mut RouteCx<'_>,
    field: &str,
    m: &MatchSpec,
) -> Result<Option<PathMatch>, ConfigError> {
    let Some(method) = &m.method else {
        return Ok(Some(PathMatch::prefix("/")));
    };
    let field = format!("{field}.method");
    let spec: GrpcMethodSpec = serde_json::from_value(method.clone())
        .map_err(|e| rc.err(&field, format!("not a GRPCRoute method match: {e}")))?;
    let (service, name) = (spec.service.as_deref(), spec.method.as_deref());
    match (spec.ty.as_deref().unwrap_or("Exact"), service, name) {
        (_, None, None) => Err(rc.err(
            &field,
            "one or both of service and method must be specified",
        )),
        ("Exact", s, m)
            if [s, m]
                .into_iter()
                .flatten()
                .any(|v| v.is_empty() || v.contains('/')) =>
        {
            Err(rc.err(&field, "service and method must be names without '/'"))
        }
        ("Exact", Some(s), Some(m)) => Ok(Some(PathMatch::Exact(format!("/{s}/{m}")))),
        ("Exact", Some(s), None) => Ok(Some(PathMatch::prefix(&format!("/{s}")))),
        ("Exact", None, Some(m)) => {
            let r = rc.cx.regex(&format!("/[^/]+/{}", regex::escape(m)));
            Ok(regex(rc, &field, r.map(PathMatch::Regex)))
        }
        ("RegularExpression", s, m) => {
            let part = |p: Option<&str>| p.map_or("[^/]+".to_string(), |p| format!("(?:{p})"));
            let pattern = format!("/{}/{}", part(s), part(m));
            let r = rc.cx.regex(&pattern).map(PathMatch::Regex);
            Ok(regex(rc, &field, r))
        }
        (other, _, _) => {
            rc.unsupported(
                &format!("{field}.type"),
                format!("method match type {other}"),
            );
            Ok(None)
        }
    }
}

/// A compiled regex, or `None` with the syntax error recorded as unsupported.
fn regex<T>(rc: &mut RouteCx<'_>, field: &str, r: Result<T, regex::Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let e = e.to_string().replace('\n', " ");
            rc.unsupported(field, format!("regular expression does not compile: {e}"));
            None
        }
    }
}

/// Header (`header`) or query-parameter matches, the first of equivalent names only (as the spec says).
fn values(
    rc: &mut RouteCx<'_>,
    field: &str,
    list: &[ValueMatchSpec],
    header: bool,
) -> Result<Option<Vec<(String, StringMatch)>>, ConfigError> {
    let mut out: Vec<(String, StringMatch)> = Vec::new();
    let mut ok = true;
    for (i, v) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let name = if header {
            HeaderName::from_bytes(v.name.as_bytes())
                .map_err(|_| {
                    rc.err(
                        &format!("{field}.name"),
                        format!("invalid header name {:?}", v.name),
                    )
                })?
                .as_str()
                .to_string()
        } else {
            v.name.clone()
        };
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let value = match v.ty.as_deref().unwrap_or("Exact") {
            "Exact" => Some(StringMatch::Exact(v.value.clone())),
            "RegularExpression" => {
                let r = rc.cx.regex(&v.value).map(StringMatch::Regex);
                regex(rc, &field, r)
            }
            other => {
                rc.unsupported(&format!("{field}.type"), format!("match type {other}"));
                None
            }
        };
        match value {
            Some(value) => out.push((name, value)),
            None => ok = false,
        }
    }
    Ok(ok.then_some(out))
}

/// A Gateway API duration; `0s` (and absent) is no timeout.
pub(crate) fn duration(
    rc: &RouteCx<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let d = mesh::config::gateway_duration(v).map_err(|e| rc.err(field, e))?;
    Ok((!d.is_zero()).then_some(d))
}

fn timeouts(rc: &RouteCx<'_>, at: &str, t: Option<&TimeoutsSpec>) -> Result<Timeouts, ConfigError> {
    let Some(t) = t else {
        return Ok(Timeouts::default());
    };
    Ok(Timeouts {
        request: duration(rc, &format!("{at}.timeouts.request"), t.request.as_deref())?,
        backend_request: duration(
            rc,
            &format!("{at}.timeouts.backendRequest"),
            t.backend_request.as_deref(),
        )?,
    })
}

fn retry(
    rc: &RouteCx<'_>,
    at: &str,
    r: Option<&RetrySpec>,
    on: Option<&(RetryOn, Vec<u16>)>,
) -> Result<Option<RetryPolicy>, ConfigError> {
    let (retry_on, extra_codes) = on.map_or((RetryOn::DEFAULT, &[][..]), |(o, c)| (*o, &c[..]));
    let Some(r) = r else {
        // The annotation alone is a retry policy with the default attempts.
        return Ok(on.map(|_| RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            codes: extra_codes.to_vec(),
            backoff: None,
            on: retry_on,
        }));
    };
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(a) => u32::try_from(a).map_err(|_| {
            rc.err(
                &format!("{at}.retry.attempts"),
                format!("attempts {a} out of range"),
            )
        })?,
    };
    let mut codes = Vec::with_capacity(r.codes.len() + extra_codes.len());
    for (i, c) in r.codes.iter().enumerate() {
        match u16::try_from(*c) {
            Ok(c) if (400..=599).contains(&c) => codes.push(c),
            _ => {
                let field = format!("{at}.retry.codes[{i}]");
                return Err(rc.err(&field, format!("code {c} is out of range 400-599")));
            }
        }
    }
    codes.extend(
        extra_codes
            .iter()
            .filter(|c| !r.codes.contains(&i64::from(**c))),
    );
    let backoff = duration(rc, &format!("{at}.retry.backoff"), r.backoff.as_deref())?;
    Ok((attempts > 0).then_some(RetryPolicy {
        attempts,
        codes,
        backoff,
        on: retry_on,
    }))
}

/// The route's `retry.waypoint.dev/on` annotation, parsed; an unknown condition is an error naming it.
fn retry_on(rc: &RouteCx<'_>) -> Result<Option<(RetryOn, Vec<u16>)>, ConfigError> {
    let Some(text) = rc.route.retry_on.as_deref() else {
        return Ok(None);
    };
    let field = format!("metadata.annotations[{RETRY_ON_ANNOTATION}]");
    RetryOn::parse(text)
        .map(Some)
        .map_err(|e| rc.err(&field, format!("{e} in {text:?}")))
}
