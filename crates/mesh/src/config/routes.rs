//! Route kinds (`HTTPRoute`, `GRPCRoute`), `ReferenceGrant` and a waypoint listener's `allowedRoutes`, admitted
//! as the API server would: what the CRDs' schema and CEL rules reject is a [`ConfigError`] naming the field.
//!
//! The checks walk the route's JSON form, so HTTPRoute and GRPCRoute share them (their generated types differ
//! only in name). What Kubernetes accepts but the waypoint cannot honour (a filter type it does not implement, a
//! regex it cannot compile) is not checked here: the route compiler reports it in the route's status.

use std::collections::BTreeMap;

use gateway_api::gateways::{
    GatewayListenersAllowedRoutes, GatewayListenersAllowedRoutesNamespacesFrom as FromNamespaces,
};
use serde_json::Value;

use super::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use super::parse::Ctx;
use super::{ConfigError, Sourced};

/// The largest `backendRefs[].weight` (CRD maximum).
const MAX_WEIGHT: i64 = 1_000_000;

/// Which namespaces' routes a waypoint Gateway's listener admits (`allowedRoutes.namespaces`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RouteNamespaces {
    /// Only the Gateway's own namespace (the default).
    #[default]
    Same,
    All,
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, all must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry: `operator` is `In`, `NotIn`, `Exists` or `DoesNotExist`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelExpression {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    _ => value.is_none(), // DoesNotExist (validated at parse)
                }
            })
    }
}

/// Checks an HTTPRoute and fills in its namespace.
pub(super) fn http_route(
    ctx: &Ctx<'_>,
    namespace: String,
    mut route: HttpRoute,
) -> Result<Sourced<HttpRoute>, ConfigError> {
    let spec = to_json(ctx, &route.spec)?;
    check_route(ctx, &spec, true)?;
    route.metadata.namespace = Some(namespace);
    Ok(Sourced {
        file: ctx.file.to_path_buf(),
        object: route,
    })
}

/// Checks a GRPCRoute and fills in its namespace.
pub(super) fn grpc_route(
    ctx: &Ctx<'_>,
    namespace: String,
    mut route: GrpcRoute,
) -> Result<Sourced<GrpcRoute>, ConfigError> {
    let spec = to_json(ctx, &route.spec)?;
    check_route(ctx, &spec, false)?;
    route.metadata.namespace = Some(namespace);
    Ok(Sourced {
        file: ctx.file.to_path_buf(),
        object: route,
    })
}

/// Fills in a ReferenceGrant's namespace (its fields are all required strings, checked by the type).
pub(super) fn reference_grant(
    ctx: &Ctx<'_>,
    namespace: String,
    mut grant: ReferenceGrant,
) -> Result<Sourced<ReferenceGrant>, ConfigError> {
    for (i, f) in grant.spec.from.iter().enumerate() {
        if f.namespace.is_empty() {
            return Err(ctx.err(
                &format!("spec.from[{i}].namespace"),
                "namespace is required",
            ));
        }
    }
    grant.metadata.namespace = Some(namespace);
    Ok(Sourced {
        file: ctx.file.to_path_buf(),
        object: grant,
    })
}

/// The HBONE listener's `allowedRoutes` (listener `i`) → (namespaces, kind names).
pub(super) fn allowed_routes(
    ctx: &Ctx<'_>,
    i: usize,
    allowed: Option<&GatewayListenersAllowedRoutes>,
) -> Result<(RouteNamespaces, Vec<String>), ConfigError> {
    let Some(allowed) = allowed else {
        return Ok((RouteNamespaces::Same, Vec::new()));
    };
    let field = format!("spec.listeners[{i}].allowedRoutes");
    let kinds = allowed
        .kinds
        .iter()
        .flatten()
        .map(|k| k.kind.clone())
        .collect();
    let Some(ns) = &allowed.namespaces else {
        return Ok((RouteNamespaces::Same, kinds));
    };
    let namespaces = match ns.from.as_ref().unwrap_or(&FromNamespaces::Same) {
        FromNamespaces::Same => RouteNamespaces::Same,
        FromNamespaces::All => RouteNamespaces::All,
        FromNamespaces::Selector => {
            let Some(sel) = &ns.selector else {
                return Err(ctx.err(
                    &format!("{field}.namespaces.selector"),
                    "selector must be specified when from is Selector",
                ));
            };
            let mut match_expressions = Vec::new();
            for (j, e) in sel.match_expressions.iter().flatten().enumerate() {
                let values = e.values.clone().unwrap_or_default();
                let ok = match e.operator.as_str() {
                    "In" | "NotIn" => !values.is_empty(),
                    "Exists" | "DoesNotExist" => values.is_empty(),
                    _ => false,
                };
                if !ok {
                    return Err(ctx.err(
                        &format!("{field}.namespaces.selector.matchExpressions[{j}]"),
                        format!(
                            "operator {:?} with {} values is not a valid label selector",
                            e.operator,
                            values.len()
                        ),
                    ));
                }
                match_expressions.push(LabelExpression {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values,
                });
            }
            RouteNamespaces::Selector(LabelSelector {
                match_labels: sel.match_labels.clone().unwrap_or_default(),
                match_expressions,
            })
        }
    };
    Ok((namespaces, kinds))
}

fn to_json<T: serde::Serialize>(ctx: &Ctx<'_>, spec: &T) -> Result<Value, ConfigError> {
    serde_json::to_value(spec).map_err(|e| ctx.err("spec", e.to_string()))
}

/// The elements of the array at `v[key]`, if any.
fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The checks shared by HTTPRoute (`http`) and GRPCRoute.
fn check_route(ctx: &Ctx<'_>, spec: &Value, http: bool) -> Result<(), ConfigError> {
    for (i, p) in items(spec, "parentRefs") {
        if let Some(port) = int(p, "port") {
            port_in_range(ctx, &format!("spec.parentRefs[{i}].port"), port)?;
        }
    }
    for (r, rule) in items(spec, "rules") {
        let at = format!("spec.rules[{r}]");
        for (b, backend) in items(rule, "backendRefs") {
            let field = format!("{at}.backendRefs[{b}]");
            backend_ref(ctx, &field, backend)?;
            if let Some(w) = int(backend, "weight") {
                if w < 0 {
                    return Err(ctx.err(
                        &format!("{field}.weight"),
                        format!("weight {w} is negative"),
                    ));
                }
                if w > MAX_WEIGHT {
                    return Err(ctx.err(
                        &format!("{field}.weight"),
                        format!("weight {w} is above {MAX_WEIGHT}"),
                    ));
                }
            }
            filters(ctx, &field, backend)?;
        }
        filters(ctx, &at, rule)?;
        if http {
            http_rule(ctx, &at, rule)?;
        } else {
            for (m, matched) in items(rule, "matches") {
                if let Some(method) = matched.get("method") {
                    grpc_method(ctx, &format!("{at}.matches[{m}].method"), method)?;
                }
            }
        }
    }
    Ok(())
}

/// A backend (or mirror) reference: port in range, and present for a Service.
fn backend_ref(ctx: &Ctx<'_>, field: &str, b: &Value) -> Result<(), ConfigError> {
    let service = text(b, "group").unwrap_or("").is_empty()
        && text(b, "kind").unwrap_or("Service") == "Service";
    match int(b, "port") {
        Some(port) => port_in_range(ctx, &format!("{field}.port"), port),
        None if service => Err(ctx.err(
            &format!("{field}.port"),
            "port is required for a Service reference",
        )),
        None => Ok(()),
    }
}

fn port_in_range(ctx: &Ctx<'_>, field: &str, port: i64) -> Result<(), ConfigError> {
    let port = i32::try_from(port).unwrap_or(-1);
    ctx.port(|| field.to_string(), port).map(|_| ())
}

/// The field a filter `type` carries its configuration in.
fn config_key(ty: &str) -> String {
    match ty {
        "URLRewrite" => "urlRewrite".into(),
        "CORS" => "cors".into(),
        _ => {
            let mut c = ty.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    }
}

/// `filters` of a rule or backend: each filter's configuration is the one its `type` names; no type but
/// RequestMirror and ExtensionRef twice; not both RequestRedirect and URLRewrite.
fn filters(ctx: &Ctx<'_>, at: &str, owner: &Value) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for (f, filter) in items(owner, "filters") {
        let field = format!("{at}.filters[{f}]");
        let ty = text(filter, "type").unwrap_or_default();
        let key = config_key(ty);
        let Some(config) = filter.get(&key).filter(|v| !v.is_null()) else {
            return Err(ctx.err(
                &format!("{field}.{key}"),
                format!("{key} must be specified for a {ty} filter"),
            ));
        };
        if let Some(other) = filter
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, v)| *k != "type" && **k != key && !v.is_null())
        {
            return Err(ctx.err(
                &format!("{field}.{}", other.0),
                format!("{} must not be set for a {ty} filter", other.0),
            ));
        }
        if !matches!(ty, "RequestMirror" | "ExtensionRef") && seen.contains(&ty) {
            return Err(ctx.err(&field, format!("a {ty} filter cannot be repeated")));
        }
        seen.push(ty);
        let cfield = format!("{field}.{key}");
        match ty {
            "RequestMirror" => mirror(ctx, &cfield, config)?,
            "RequestRedirect" | "URLRewrite" => {
                if let Some(path) = config.get("path") {
                    path_modifier(ctx, &format!("{cfield}.path"), path)?;
                }
                if let Some(port) = int(config, "port") {
                    port_in_range(ctx, &format!("{cfield}.port"), port)?;
                }
            }
            _ => {}
        }
    }
    if seen.contains(&"RequestRedirect") && seen.contains(&"URLRewrite") {
        return Err(ctx.err(
            &format!("{at}.filters"),
            "RequestRedirect and URLRewrite filters cannot be used together",
        ));
    }
    Ok(())
}

fn mirror(ctx: &Ctx<'_>, field: &str, m: &Value) -> Result<(), ConfigError> {
    if let Some(b) = m.get("backendRef") {
        backend_ref(ctx, &format!("{field}.backendRef"), b)?;
    }
    if let Some(p) = int(m, "percent").filter(|p| !(0..=100).contains(p)) {
        return Err(ctx.err(
            &format!("{field}.percent"),
            format!("percent {p} is out of range 0-100"),
        ));
    }
    if let Some(f) = m.get("fraction") {
        let num = int(f, "numerator").unwrap_or(0);
        let den = int(f, "denominator").unwrap_or(100);
        if num < 0 || den < 1 || num > den {
            return Err(ctx.err(
                &format!("{field}.fraction"),
                format!(
                    "fraction {num}/{den}: need 0 <= numerator <= denominator, denominator >= 1"
                ),
            ));
        }
    }
    if m.get("percent").is_some() && m.get("fraction").is_some() {
        return Err(ctx.err(field, "only one of percent or fraction may be specified"));
    }
    Ok(())
}

fn path_modifier(ctx: &Ctx<'_>, field: &str, p: &Value) -> Result<(), ConfigError> {
    let ty = text(p, "type").unwrap_or_default();
    for (want, key) in [
        ("ReplaceFullPath", "replaceFullPath"),
        ("ReplacePrefixMatch", "replacePrefixMatch"),
    ] {
        let set = p.get(key).is_some_and(|v| !v.is_null());
        if (ty == want) != set {
            return Err(ctx.err(
                &format!("{field}.{key}"),
                format!("{key} must be specified exactly when type is {want}"),
            ));
        }
    }
    Ok(())
}

/// HTTPRoute rule checks: paths, ReplacePrefixMatch with one PathPrefix match, redirect without backends,
/// timeouts and retry.
fn http_rule(ctx: &Ctx<'_>, at: &str, rule: &Value) -> Result<(), ConfigError> {
    for (m, matched) in items(rule, "matches") {
        let Some(path) = matched.get("path") else {
            continue;
        };
        let ty = text(path, "type").unwrap_or("PathPrefix");
        let field = format!("{at}.matches[{m}].path.value");
        if let Some(v) = text(path, "value").filter(|_| ty != "RegularExpression") {
            if !v.starts_with('/') {
                return Err(ctx.err(&field, format!("path {v:?} must start with '/'")));
            }
            let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
            if bad.iter().any(|b| v.contains(b)) || v.ends_with("/..") || v.ends_with("/.") {
                return Err(ctx.err(
                    &field,
                    format!("path {v:?} must not contain '//', '/./', '/../', '%2f', '#' or end in '/.' or '/..'"),
                ));
            }
        }
    }
    let filters: Vec<&Value> = items(rule, "filters").map(|(_, f)| f).collect();
    let prefix_modifier = filters.iter().any(|f| {
        ["requestRedirect", "urlRewrite"].iter().any(|k| {
            f.get(k)
                .and_then(|c| c.get("path"))
                .and_then(|p| text(p, "type"))
                == Some("ReplacePrefixMatch")
        })
    });
    if prefix_modifier {
        let matches: Vec<&Value> = items(rule, "matches").map(|(_, m)| m).collect();
        let one_prefix = match matches.as_slice() {
            [] => true,
            [m] => m
                .get("path")
                .is_none_or(|p| text(p, "type").unwrap_or("PathPrefix") == "PathPrefix"),
            _ => false,
        };
        if !one_prefix {
            return Err(ctx.err(
                &format!("{at}.matches"),
                "a ReplacePrefixMatch path modifier needs exactly one PathPrefix match",
            ));
        }
    }
    let redirect = filters
        .iter()
        .any(|f| text(f, "type") == Some("RequestRedirect"));
    if redirect && items(rule, "backendRefs").next().is_some() {
        return Err(ctx.err(
            &format!("{at}.filters"),
            "a RequestRedirect filter must not be used together with backendRefs",
        ));
    }
    if let Some(t) = rule.get("timeouts") {
        let request = duration(ctx, &format!("{at}.timeouts.request"), text(t, "request"))?;
        let backend = duration(
            ctx,
            &format!("{at}.timeouts.backendRequest"),
            text(t, "backendRequest"),
        )?;
        if let (Some(r), Some(b)) = (request, backend) {
            if !r.is_zero() && b > r {
                return Err(ctx.err(
                    &format!("{at}.timeouts.backendRequest"),
                    "backendRequest timeout cannot be longer than request timeout",
                ));
            }
        }
    }
    if let Some(retry) = rule.get("retry") {
        if let Some(a) = int(retry, "attempts").filter(|a| *a < 0) {
            return Err(ctx.err(
                &format!("{at}.retry.attempts"),
                format!("attempts {a} is negative"),
            ));
        }
        for (c, code) in items(retry, "codes") {
            let code = code.as_i64().unwrap_or(0);
            if !(400..=599).contains(&code) {
                return Err(ctx.err(
                    &format!("{at}.retry.codes[{c}]"),
                    format!("code {code} is out of range 400-599"),
                ));
            }
        }
        duration(ctx, &format!("{at}.retry.backoff"), text(retry, "backoff"))?;
    }
    Ok(())
}

/// A Gateway API duration (GEP-2257: `1h2m3s4ms`, at most four parts of at most five digits).
fn duration(
    ctx: &Ctx<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    gateway_duration(v).map(Some).map_err(|e| ctx.err(field, e))
}

/// Parses a Gateway API duration (GEP-2257), to the millisecond; the error says what is wrong with `v`.
pub fn gateway_duration(v: &str) -> Result<std::time::Duration, String> {
    let d: gateway_api::Duration = v.parse().map_err(|e| format!("duration {v:?}: {e}"))?;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(std::time::Duration::from_millis(ms))
}

/// A GRPCRoute method match: service or method given; Exact values are plain names.
fn grpc_method(ctx: &Ctx<'_>, field: &str, m: &Value) -> Result<(), ConfigError> {
    let (service, method) = (text(m, "service"), text(m, "method"));
    if service.is_none() && method.is_none() {
        return Err(ctx.err(field, "one or both of service and method must be specified"));
    }
    if text(m, "type").unwrap_or("Exact") == "Exact" {
        for (key, v) in [("service", service), ("method", method)] {
            if let Some(v) = v.filter(|v| v.is_empty() || v.contains('/')) {
                return Err(ctx.err(
                    &format!("{field}.{key}"),
                    format!("{key} {v:?} must be a non-empty name without '/'"),
                ));
            }
        }
    }
    Ok(())
}
