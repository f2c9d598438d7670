//! Helpers for the policy tables: policies from YAML, requests from a few owned fields.
#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;

use authz::attrs::{Http, Request, RequestAuth};
use authz::model::{AuthorizationPolicySpec, Named};
use authz::policy::{CompiledPolicy, Decision, PolicySet, Tier, Verdict};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `ns/name` with a spec in YAML.
pub fn pol(key: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
    let (namespace, name) = key.split_once('/').expect("ns/name");
    let spec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{key}: {e}\n{yaml}"));
    Named {
        namespace: namespace.into(),
        name: name.into(),
        dry_run: false,
        spec,
    }
}

pub fn dry(mut p: Named<AuthorizationPolicySpec>) -> Named<AuthorizationPolicySpec> {
    p.dry_run = true;
    p
}

pub fn set(tier: Tier, policies: &[Named<AuthorizationPolicySpec>]) -> PolicySet {
    let compiled = policies.iter().map(|p| {
        Arc::new(
            CompiledPolicy::compile(p, tier)
                .unwrap_or_else(|e| panic!("{e}"))
                .0,
        )
    });
    PolicySet::new(tier, compiled).unwrap()
}

/// An owned request: defaults are an authenticated caller `ns/a sa/a` GET `/` on `svc:8080`.
#[derive(Clone, Debug)]
pub struct R {
    pub principal: Option<String>,
    pub namespace: Option<String>,
    pub source_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    /// `false`: an L4 connection (node tier).
    pub http: bool,
    pub host: String,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub auth: Option<RequestAuth>,
}

impl Default for R {
    fn default() -> Self {
        R {
            principal: Some("cluster.local/ns/a/sa/a".into()),
            namespace: Some("a".into()),
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            dest_ip: "10.96.0.10".parse().unwrap(),
            dest_port: 8080,
            http: true,
            host: "svc.ns.svc.cluster.local:8080".into(),
            method: "GET".into(),
            path: "/".into(),
            headers: HeaderMap::new(),
            auth: None,
        }
    }
}

impl R {
    pub fn request(&self) -> Request<'_> {
        Request {
            source_principal: self.principal.as_deref(),
            source_namespace: self.namespace.as_deref(),
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination_ip: self.dest_ip,
            destination_port: self.dest_port,
            http: self.http.then(|| Http {
                host: &self.host,
                method: &self.method,
                path: &self.path,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }),
        }
    }
    /// Caller `cluster.local/ns/<ns>/sa/<sa>`.
    pub fn from(ns: &str, sa: &str) -> R {
        R {
            principal: Some(format!("cluster.local/ns/{ns}/sa/{sa}")),
            namespace: Some(ns.into()),
            ..R::default()
        }
    }
    pub fn plaintext() -> R {
        R {
            principal: None,
            namespace: None,
            ..R::default()
        }
    }
    pub fn l4() -> R {
        R {
            http: false,
            ..R::default()
        }
    }
    pub fn path(mut self, p: &str) -> R {
        self.path = p.into();
        self
    }
    pub fn method(mut self, m: &str) -> R {
        self.method = m.into();
        self
    }
    pub fn host(mut self, h: &str) -> R {
        self.host = h.into();
        self
    }
    pub fn port(mut self, p: u16) -> R {
        self.dest_port = p;
        self
    }
    pub fn ip(mut self, ip: &str) -> R {
        self.source_ip = ip.parse().unwrap();
        self
    }
    pub fn remote(mut self, ip: &str) -> R {
        self.remote_ip = ip.parse().unwrap();
        self
    }
    pub fn dest(mut self, ip: &str) -> R {
        self.dest_ip = ip.parse().unwrap();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> R {
        self.headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
        self
    }
    /// A verified JWT: `iss/sub`, audiences, presenter, and claims as JSON.
    pub fn jwt(mut self, principal: &str, aud: &[&str], azp: Option<&str>, claims: &str) -> R {
        self.auth = Some(RequestAuth {
            principal: principal.into(),
            audiences: aud.iter().map(|s| s.to_string()).collect(),
            presenter: azp.map(str::to_string),
            claims: serde_json::from_str(claims).unwrap(),
        });
        self
    }
}

pub fn decide<'p>(set: &'p PolicySet, r: &R) -> Decision<'p> {
    set.evaluate(&r.request()).expect("path normalizes")
}

/// The verdict of `policies` at the waypoint tier.
pub fn verdict(policies: &[Named<AuthorizationPolicySpec>], r: &R) -> Verdict {
    decide(&set(Tier::Waypoint, policies), r).verdict
}

pub const ALLOW: Verdict = Verdict::Allow;
pub const DENY: Verdict = Verdict::Deny;

/// Whether `rule` (one YAML rule) matches `r`.
pub fn matches(rule: &str, r: &R) -> bool {
    let p = pol("ns/p", &format!("rules:\n- {rule}"));
    verdict(&[p], r) == ALLOW
}

pub fn table(cases: &[(&str, R, bool)]) {
    for (i, (rule, r, want)) in cases.iter().enumerate() {
        assert_eq!(matches(rule, r), *want, "case {i}: rule {rule} on {r:?}");
    }
}
