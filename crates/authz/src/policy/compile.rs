//! `Named<AuthorizationPolicySpec>` → [`CompiledPolicy`]: every value parsed once (CIDRs, ports, string forms,
//! path templates, `when` keys), Istio's validation applied (which policy, which field:
//! `spec.rules[0].from[0].source.ipBlocks[1]`), and, at [`Tier::Node`], ztunnel's treatment of HTTP attributes.

use http::HeaderName;

use super::matcher::{parse_port, Hosts, Ips, PathMatch, Strs};
use super::rule::{Attr, Check, CompiledRule, Values};
use super::{Diagnostic, DiagnosticKind, PolicyError, Tier};
use crate::model::{Action, AuthorizationPolicySpec, Condition, Named, Operation, Source};

/// One AuthorizationPolicy, compiled for a tier. Cheap to share behind an `Arc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    key: String,
    namespace_len: usize,
    action: Action,
    dry_run: bool,
    provider: Option<String>,
    /// `None`: the spec has no `rules` (or `rules: []`): the policy matches nothing.
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) uses_path: bool,
}

impl CompiledPolicy {
    /// Compiles and validates `policy` for `tier`; also returns warnings (at [`Tier::Node`]: the rules with
    /// HTTP attributes, [`DiagnosticKind::NotEnforceableAtL4`]). The action is not checked against the tier
    /// here (the node tier skips AUDIT and CUSTOM when it selects policies).
    pub fn compile(
        policy: &Named<AuthorizationPolicySpec>,
        tier: Tier,
    ) -> Result<(CompiledPolicy, Vec<Diagnostic>), PolicyError> {
        let key = policy.key();
        let err = |field: String, message: String| PolicyError {
            policy: key.clone(),
            field,
            message,
        };
        let spec = &policy.spec;
        check_targets(policy).map_err(|(f, m)| err(f, m))?;
        let provider = match (spec.action, &spec.provider) {
            (Action::Custom, Some(p)) if !p.name.is_empty() => Some(p.name.clone()),
            (Action::Custom, _) => {
                return Err(err(
                    "spec.provider.name".into(),
                    "a CUSTOM policy needs a provider".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(err(
                    "spec.provider".into(),
                    "provider is only allowed with action CUSTOM".into(),
                ))
            }
            (_, None) => None,
        };
        let mut diagnostics = Vec::new();
        let mut rules = Vec::new();
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}]");
            let mut compiled = CompiledRule::default();
            for (j, from) in rule.from.iter().enumerate() {
                let at = format!("{at}.from[{j}].source");
                let checks = source(&from.source, &at).map_err(|(f, m)| err(f, m))?;
                compiled.from.push(checks);
            }
            for (j, to) in rule.to.iter().enumerate() {
                let at = format!("{at}.to[{j}].operation");
                let checks = operation(&to.operation, &at).map_err(|(f, m)| err(f, m))?;
                compiled.to.push(checks);
            }
            for (j, cond) in rule.when.iter().enumerate() {
                let at = format!("{at}.when[{j}]");
                compiled
                    .when
                    .extend(condition(cond, &at).map_err(|(f, m)| err(f, m))?);
            }
            if tier == Tier::Node {
                node_tier(&mut compiled, spec.action);
                if !compiled.l7_fields.is_empty() {
                    let fields = compiled.l7_fields.join(", ");
                    let effect = if spec.action == Action::Allow {
                        "this ALLOW rule never matches at L4 (more restrictive than written)"
                    } else {
                        "enforced without those fields (more restrictive than written)"
                    };
                    diagnostics.push(Diagnostic {
                        policy: key.clone(),
                        rule: Some(i),
                        kind: DiagnosticKind::NotEnforceableAtL4,
                        message: format!(
                            "not enforceable at L4: HTTP attributes ({fields}) need a waypoint; {effect}"
                        ),
                    });
                }
            }
            rules.push(compiled);
        }
        if spec.action == Action::Custom && rules.is_empty() {
            diagnostics.push(Diagnostic {
                policy: key.clone(),
                rule: None,
                kind: DiagnosticKind::CustomWithoutRules,
                message: "a CUSTOM policy without rules is never triggered; add a rule `{}` to ask the provider for every request".into(),
            });
        }
        let uses_path = rules.iter().any(CompiledRule::uses_path);
        Ok((
            CompiledPolicy {
                namespace_len: policy.namespace.len(),
                key,
                action: spec.action,
                dry_run: policy.dry_run,
                provider,
                rules,
                uses_path,
            },
            diagnostics,
        ))
    }

    /// `namespace/name`.
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn namespace(&self) -> &str {
        &self.key[..self.namespace_len]
    }
    pub fn name(&self) -> &str {
        &self.key[self.namespace_len + 1..]
    }
    pub fn action(&self) -> Action {
        self.action
    }
    /// `istio.io/dry-run: "true"`: evaluated and recorded, never enforced.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
    /// The CUSTOM provider's name.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Validates a policy as the waypoint would load it (used by manifest loading); returns its warnings.
pub fn validate(policy: &Named<AuthorizationPolicySpec>) -> Result<Vec<Diagnostic>, PolicyError> {
    CompiledPolicy::compile(policy, Tier::Waypoint).map(|(_, d)| d)
}

type FieldError = (String, String);

/// `targetRef` / `targetRefs` / `selector`, as the CRD's validation has them.
fn check_targets(p: &Named<AuthorizationPolicySpec>) -> Result<(), FieldError> {
    let spec = &p.spec;
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        return Err((
            "spec.targetRef".into(),
            "only one of targetRef and targetRefs may be set".into(),
        ));
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err((
            "spec.selector".into(),
            "only one of targetRefs and selector may be set".into(),
        ));
    }
    let refs = spec
        .target_ref
        .iter()
        .map(|t| ("spec.targetRef".to_string(), t))
        .chain(
            spec.target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
        );
    for (at, t) in refs {
        let known = matches!(
            (t.group.as_str(), t.kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
                | ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
        );
        if !known {
            return Err((
                format!("{at}.kind"),
                format!(
                    "unsupported target {}/{} (Service, gateway.networking.k8s.io Gateway or GatewayClass, networking.istio.io ServiceEntry)",
                    if t.group.is_empty() { "core" } else { &t.group },
                    t.kind
                ),
            ));
        }
        if t.name.is_empty() {
            return Err((format!("{at}.name"), "name is required".into()));
        }
        if let Some(ns) = t.namespace.as_deref().filter(|n| !n.is_empty()) {
            if ns != p.namespace {
                return Err((
                    format!("{at}.namespace"),
                    format!(
                        "cross-namespace target {ns:?} is not allowed (the policy is in {:?})",
                        p.namespace
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn strs(attr: Attr, values: &[String], negate: bool, label: String) -> Option<Check> {
    (!values.is_empty()).then(|| Check {
        attr,
        values: Values::Strs(Strs::parse(values)),
        negate,
        label: label.into(),
    })
}

fn ips(
    attr: Attr,
    values: &[String],
    negate: bool,
    at: &str,
    field: &str,
) -> Result<Option<Check>, FieldError> {
    if values.is_empty() {
        return Ok(None);
    }
    let nets = values
        .iter()
        .enumerate()
        .map(|(i, v)| Ips::parse_one(v).map_err(|m| (format!("{at}.{field}[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Check {
        attr,
        values: Values::Ips(Ips::new(nets)),
        negate,
        label: format!("{at}.{field}").into(),
    }))
}

fn ports(
    values: &[String],
    negate: bool,
    at: &str,
    field: &str,
) -> Result<Option<Check>, FieldError> {
    if values.is_empty() {
        return Ok(None);
    }
    let ports = values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_port(v).map_err(|m| (format!("{at}.{field}[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Check {
        attr: Attr::DestinationPort,
        values: Values::Ports(ports),
        negate,
        label: format!("{at}.{field}").into(),
    }))
}

fn source(s: &Source, at: &str) -> Result<Vec<Check>, FieldError> {
    let l = |f: &str| format!("{at}.{f}");
    let checks: Vec<Check> = [
        strs(Attr::Principal, &s.principals, false, l("principals")),
        strs(Attr::Principal, &s.not_principals, true, l("notPrincipals")),
        strs(
            Attr::RequestPrincipal,
            &s.request_principals,
            false,
            l("requestPrincipals"),
        ),
        strs(
            Attr::RequestPrincipal,
            &s.not_request_principals,
            true,
            l("notRequestPrincipals"),
        ),
        strs(Attr::Namespace, &s.namespaces, false, l("namespaces")),
        strs(Attr::Namespace, &s.not_namespaces, true, l("notNamespaces")),
        ips(Attr::SourceIp, &s.ip_blocks, false, at, "ipBlocks")?,
        ips(Attr::SourceIp, &s.not_ip_blocks, true, at, "notIpBlocks")?,
        ips(
            Attr::RemoteIp,
            &s.remote_ip_blocks,
            false,
            at,
            "remoteIpBlocks",
        )?,
        ips(
            Attr::RemoteIp,
            &s.not_remote_ip_blocks,
            true,
            at,
            "notRemoteIpBlocks",
        )?,
    ]
    .into_iter()
    .flatten()
    .collect();
    if checks.is_empty() {
        return Err((at.into(), "`from.source` must not be empty".into()));
    }
    Ok(checks)
}

fn paths(
    values: &[String],
    negate: bool,
    at: &str,
    field: &str,
) -> Result<Option<Check>, FieldError> {
    if values.is_empty() {
        return Ok(None);
    }
    let paths = values
        .iter()
        .enumerate()
        .map(|(i, v)| PathMatch::parse(v).map_err(|m| (format!("{at}.{field}[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Check {
        attr: Attr::Path,
        values: Values::Paths(paths),
        negate,
        label: format!("{at}.{field}").into(),
    }))
}

fn hosts(values: &[String], negate: bool, label: String) -> Option<Check> {
    (!values.is_empty()).then(|| Check {
        attr: Attr::Host,
        values: Values::Hosts(Hosts::parse(values)),
        negate,
        label: label.into(),
    })
}

fn operation(o: &Operation, at: &str) -> Result<Vec<Check>, FieldError> {
    let l = |f: &str| format!("{at}.{f}");
    let checks: Vec<Check> = [
        hosts(&o.hosts, false, l("hosts")),
        hosts(&o.not_hosts, true, l("notHosts")),
        ports(&o.ports, false, at, "ports")?,
        ports(&o.not_ports, true, at, "notPorts")?,
        strs(Attr::Method, &o.methods, false, l("methods")),
        strs(Attr::Method, &o.not_methods, true, l("notMethods")),
        paths(&o.paths, false, at, "paths")?,
        paths(&o.not_paths, true, at, "notPaths")?,
    ]
    .into_iter()
    .flatten()
    .collect();
    if checks.is_empty() {
        return Err((at.into(), "`to.operation` must not be empty".into()));
    }
    Ok(checks)
}

/// A `when` condition: one check for `values`, one for `notValues` (both must hold when both are set).
fn condition(c: &Condition, at: &str) -> Result<Vec<Check>, FieldError> {
    let key = c.key.trim();
    let key_err = |m: String| (format!("{at}.key"), m);
    if key.is_empty() {
        return Err(key_err("`key` must not be empty".into()));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err((
            at.into(),
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        ));
    }
    enum Kind {
        Strs,
        Ips,
        Ports,
    }
    let (attr, kind) = if let Some(inner) = bracketed(key, "request.headers") {
        let [name] = inner.map_err(key_err)?[..] else {
            return Err(key_err(format!("{key}: one header name expected")));
        };
        let attr = match name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Attr::Authority,
            n if n.starts_with(':') => {
                return Err(key_err(format!("{key}: pseudo-header {n} is not supported (use :authority, or to.operation for the method and path)")))
            }
            n => Attr::Header(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| key_err(format!("{key}: {name:?} is not a header name")))?,
            ),
        };
        (attr, Kind::Strs)
    } else if let Some(inner) = bracketed(key, "request.auth.claims") {
        let keys = inner.map_err(key_err)?;
        (
            Attr::Claim(keys.into_iter().map(Box::from).collect()),
            Kind::Strs,
        )
    } else {
        match key {
            "source.ip" => (Attr::SourceIp, Kind::Ips),
            "remote.ip" => (Attr::RemoteIp, Kind::Ips),
            "destination.ip" => (Attr::DestinationIp, Kind::Ips),
            "destination.port" => (Attr::DestinationPort, Kind::Ports),
            "source.namespace" => (Attr::Namespace, Kind::Strs),
            "source.principal" => (Attr::Principal, Kind::Strs),
            "request.auth.principal" => (Attr::RequestPrincipal, Kind::Strs),
            "request.auth.audiences" => (Attr::Audiences, Kind::Strs),
            "request.auth.presenter" => (Attr::Presenter, Kind::Strs),
            "connection.sni" => (Attr::Sni, Kind::Strs),
            k if k.starts_with("experimental.") => {
                return Err(key_err(format!(
                    "{k}: experimental attributes are not supported"
                )))
            }
            k => return Err(key_err(format!("unknown attribute {k:?}"))),
        }
    };
    let mut out = Vec::new();
    for (values, negate, field) in [
        (&c.values, false, "values"),
        (&c.not_values, true, "notValues"),
    ] {
        if values.is_empty() {
            continue;
        }
        let label = format!("{at}.{field} ({key})");
        let check = match kind {
            Kind::Strs => strs(attr.clone(), values, negate, label),
            Kind::Ips => ips(attr.clone(), values, negate, at, field)?.map(|mut c| {
                c.label = label.into();
                c
            }),
            Kind::Ports => ports(values, negate, at, field)?.map(|mut c| {
                c.label = label.into();
                c
            }),
        };
        out.extend(check);
    }
    Ok(out)
}

/// `prefix[a][b]` → `Some(Ok([a, b]))`; `None` when `key` is not `prefix[…]`.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<Result<Vec<&'k str>, String>> {
    let rest = key.strip_prefix(prefix)?;
    if !rest.starts_with('[') {
        return None;
    }
    let mut out = Vec::new();
    let mut r = rest;
    while !r.is_empty() {
        let Some(inner_end) = r.strip_prefix('[').and_then(|x| x.find(']')) else {
            return Some(Err(format!("{key}: expected {prefix}[name]")));
        };
        let inner = &r[1..=inner_end];
        if inner.is_empty() || inner.contains('[') {
            return Some(Err(format!("{key}: empty or malformed [name]")));
        }
        out.push(inner);
        r = &r[inner_end + 2..];
    }
    Some(Ok(out))
}

/// Istio's ztunnel on a rule with HTTP attributes: ALLOW → the rule never matches; DENY → the HTTP checks are
/// dropped (so a source or operation left empty matches everything: fails closed).
fn node_tier(rule: &mut CompiledRule, action: Action) {
    let mut l7 = Vec::new();
    for checks in rule.from.iter_mut().chain(rule.to.iter_mut()) {
        checks.retain(|c| {
            let keep = c.attr.is_l4();
            if !keep {
                l7.push(c.label.clone());
            }
            keep
        });
    }
    rule.when.retain(|c| {
        let keep = c.attr.is_l4();
        if !keep {
            l7.push(c.label.clone());
        }
        keep
    });
    if !l7.is_empty() && action == Action::Allow {
        rule.never = true;
    }
    rule.l7_fields = l7;
}
