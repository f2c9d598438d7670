//! Compiled rules: each `from.source`, `to.operation` and `when` condition becomes a list of [`Check`]s (one
//! attribute, its pre-parsed values, negated for the `not*` forms), judged against a [`View`] of the request.
//!
//! Semantics (Istio's): a rule matches when every present part matches — `from` (any source), `to` (any
//! operation), `when` (every condition). Within a source or operation every present field must match; a field
//! matches when the attribute matches any value; a `not*` field when it matches none. An absent attribute
//! (no principal, no JWT, no such header, no HTTP at L4) matches no value, so its `not*` form matches.

use std::borrow::Cow;

use http::HeaderName;

use super::matcher::{strip_port, Hosts, Ips, PathMatch, Strs};
use crate::attrs::{Http, Request};
use crate::path::{self, PathError};

/// The attribute a check reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    /// `principals`, `source.principal`.
    Principal,
    /// `namespaces`, `source.namespace`.
    Namespace,
    /// `ipBlocks`, `source.ip`.
    SourceIp,
    /// `remoteIpBlocks`, `remote.ip`.
    RemoteIp,
    /// `destination.ip`.
    DestinationIp,
    /// `ports`, `destination.port`.
    DestinationPort,
    /// `requestPrincipals`, `request.auth.principal`.
    RequestPrincipal,
    /// `hosts`.
    Host,
    /// `methods`.
    Method,
    /// `paths` (normalized, no query).
    Path,
    /// `request.headers[name]` (several values are joined with `,`, as Envoy does).
    Header(HeaderName),
    /// `request.headers[:authority]` / `[host]`.
    Authority,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter`.
    Presenter,
    /// `request.auth.claims[a][b]…`: the keys, outermost first.
    Claim(Box<[Box<str>]>),
    /// `connection.sni`: HBONE gives the waypoint no per-connection SNI, so it is always absent.
    Sni,
}

impl Attr {
    /// Observable at L4 by the node tier (Istio's ztunnel: principals, namespaces, ipBlocks, ports, and the
    /// `when` keys `source.ip`, `source.namespace`, `source.principal`, `destination.ip`, `destination.port`).
    pub fn is_l4(&self) -> bool {
        matches!(
            self,
            Attr::Principal
                | Attr::Namespace
                | Attr::SourceIp
                | Attr::DestinationIp
                | Attr::DestinationPort
        )
    }
}

/// Pre-parsed values of one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Values {
    Strs(Strs),
    Hosts(Hosts),
    Paths(Vec<PathMatch>),
    Ips(Ips),
    Ports(Vec<u16>),
}

/// One field of a source / operation, or one half (`values` / `notValues`) of a `when` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub attr: Attr,
    pub values: Values,
    /// A `not*` field / `notValues`: matches when no value matches.
    pub negate: bool,
    /// Where it came from, for traces: `from[0].source.notPrincipals`, `when[1].values`.
    pub label: Box<str>,
}

/// A compiled `rules[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    /// Each source is a list of checks (AND); the list is OR-ed; empty = no `from`.
    pub from: Vec<Vec<Check>>,
    pub to: Vec<Vec<Check>>,
    /// AND-ed.
    pub when: Vec<Check>,
    /// Node tier, ALLOW: the rule uses HTTP attributes, so it never matches (Istio's ztunnel).
    pub never: bool,
    /// The fields the node tier could not enforce (dropped for DENY, `never` for ALLOW).
    pub l7_fields: Vec<Box<str>>,
}

/// Why a rule did not match: the label of the first check that failed, or the node-tier exclusion.
pub(crate) const NOT_AT_L4: &str = "uses HTTP attributes: never matches at L4";

impl CompiledRule {
    /// `None` when the rule matches; else the first failing check's label.
    pub fn mismatch<'p>(&'p self, v: &View<'_>) -> Option<&'p str> {
        if self.never {
            return Some(NOT_AT_L4);
        }
        for part in [&self.from, &self.to] {
            if part.is_empty() {
                continue;
            }
            let mut first_fail = None;
            let any = part
                .iter()
                .any(|checks| match checks.iter().find(|c| !c.eval(v)) {
                    None => true,
                    Some(c) => {
                        first_fail.get_or_insert(&*c.label);
                        false
                    }
                });
            if !any {
                return first_fail.or(Some("from/to"));
            }
        }
        self.when.iter().find(|c| !c.eval(v)).map(|c| &*c.label)
    }

    pub fn uses_path(&self) -> bool {
        self.from
            .iter()
            .chain(&self.to)
            .flatten()
            .chain(&self.when)
            .any(|c| c.attr == Attr::Path)
    }
}

/// A request as checks read it: the attributes plus the normalized path and the host without its port,
/// computed once per evaluation.
pub(crate) struct View<'a> {
    pub req: Request<'a>,
    pub path: Cow<'a, str>,
    pub bare_host: &'a str,
}

impl<'a> View<'a> {
    /// `normalize`: whether any rule reads the path (else it is not normalized at all).
    pub fn new(req: &Request<'a>, normalize: bool) -> Result<View<'a>, PathError> {
        let (path, bare_host) = match req.http {
            Some(h) if normalize => (path::normalize(h.path)?, strip_port(h.host)),
            Some(h) => (Cow::Borrowed(""), strip_port(h.host)),
            None => (Cow::Borrowed(""), ""),
        };
        Ok(View {
            req: *req,
            path,
            bare_host,
        })
    }
    fn http(&self) -> Option<&Http<'a>> {
        self.req.http.as_ref()
    }
}

impl Check {
    pub fn eval(&self, v: &View<'_>) -> bool {
        self.hit(v) != self.negate
    }

    /// Whether the attribute matches any value (false when it is absent).
    fn hit(&self, v: &View<'_>) -> bool {
        let r = &v.req;
        let strs = |s: Option<&str>| match (&self.values, s) {
            (Values::Strs(m), Some(s)) => m.any(s.as_bytes()),
            _ => false,
        };
        let ips = |ip| matches!(&self.values, Values::Ips(m) if m.any(ip));
        match &self.attr {
            Attr::Principal => strs(r.source_principal.filter(|p| !p.is_empty())),
            Attr::Namespace => strs(r.source_namespace.filter(|n| !n.is_empty())),
            Attr::SourceIp => ips(r.source_ip),
            Attr::RemoteIp => ips(r.remote_ip),
            Attr::DestinationIp => ips(r.destination_ip),
            Attr::DestinationPort => {
                matches!(&self.values, Values::Ports(p) if p.contains(&r.destination_port))
            }
            Attr::RequestPrincipal => strs(v.http().and_then(|h| h.auth).map(|a| &*a.principal)),
            Attr::Host => match (&self.values, v.http()) {
                (Values::Hosts(m), Some(h)) => m.any(h.host, v.bare_host),
                _ => false,
            },
            Attr::Authority => strs(v.http().map(|h| h.host)),
            Attr::Method => strs(v.http().map(|h| h.method)),
            Attr::Path => match (&self.values, v.http()) {
                (Values::Paths(m), Some(_)) => m.iter().any(|p| p.matches(&v.path)),
                _ => false,
            },
            Attr::Header(name) => {
                let (Values::Strs(m), Some(h)) = (&self.values, v.http()) else {
                    return false;
                };
                let mut all = h.headers.get_all(name).iter();
                let Some(first) = all.next() else {
                    return false;
                };
                match all.next() {
                    None => m.any(first.as_bytes()),
                    Some(second) => {
                        // Rare: several values are matched joined, as Envoy's header matcher does.
                        let mut joined = first.as_bytes().to_vec();
                        for value in std::iter::once(second).chain(all) {
                            joined.push(b',');
                            joined.extend_from_slice(value.as_bytes());
                        }
                        m.any(&joined)
                    }
                }
            }
            Attr::Audiences => match (&self.values, v.http().and_then(|h| h.auth)) {
                (Values::Strs(m), Some(a)) => a.audiences.iter().any(|aud| m.any(aud.as_bytes())),
                _ => false,
            },
            Attr::Presenter => strs(
                v.http()
                    .and_then(|h| h.auth)
                    .and_then(|a| a.presenter.as_deref()),
            ),
            Attr::Claim(keys) => {
                let (Values::Strs(m), Some(a)) = (&self.values, v.http().and_then(|h| h.auth))
                else {
                    return false;
                };
                let mut value = &a.claims;
                for k in keys.iter() {
                    match value.get(&**k) {
                        Some(inner) => value = inner,
                        None => return false,
                    }
                }
                claim_matches(m, value)
            }
            Attr::Sni => false,
        }
    }
}

/// A claim matches when it is a string that matches, or a list with a string element that matches.
fn claim_matches(m: &Strs, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => m.any(s.as_bytes()),
        Value::Array(items) => items
            .iter()
            .any(|i| matches!(i, Value::String(s) if m.any(s.as_bytes()))),
        Value::Bool(b) => m.any(if *b { b"true" } else { b"false" }),
        _ => false,
    }
}
