//! Stage "authorize", at the destination, in Istio's order: RequestAuthentication (a JWT, when present, must
//! verify: else 401) → CUSTOM (the external authorizers the matching CUSTOM policies name; any denial decides,
//! with the authorizer's own response) → DENY → ALLOW (403 `RBAC: access denied`). AUDIT matches and dry-run
//! policies are logged (target `waypoint::authz`), never enforced.
//!
//! Every attribute comes from verified facts: the source principal and namespace from the HBONE peer
//! certificate ([`ConnInfo`]), the request principal from a JWT verified here. Headers cannot forge either.

use std::sync::atomic::{AtomicU64, Ordering};

use authz::attrs::{Http, Request, RequestAuth};
use authz::ext::{self, Allowed, CheckExtra, Denied, Providers};
use authz::jwt::HeaderEdit;
use authz::policy::Verdict;
use pingora::http::RequestHeader;

use crate::downstream::ConnInfo;
use crate::error::ProxyError;
use crate::security::ServiceSecurity;

/// What an authorized request carries on: header edits for the upstream request and what decided.
#[derive(Debug, Default)]
pub struct Authorized {
    /// From the JWT rules (`forwardOriginalToken: false`, `outputPayloadToHeader`, ...).
    pub jwt_edits: Vec<HeaderEdit>,
    /// From an allowing external authorizer.
    pub ext: Option<Allowed>,
    /// `namespace/name` of the policy that decided, when one did (for the access log).
    pub policy: Option<String>,
}

/// Why a request was refused, and what the client gets.
#[derive(Debug)]
pub enum Refusal {
    /// 401: a token was present and did not verify.
    Unauthenticated(&'static str),
    /// 403 `RBAC: access denied`: a DENY matched, or ALLOW policies apply and none matched.
    Denied { policy: Option<String> },
    /// The external authorizer's response (or its provider's `statusOnError`).
    Custom { provider: String, denied: Denied },
    /// The path cannot be normalized for matching (`%00`, a bad escape): 400.
    BadPath,
    /// A CUSTOM policy names a provider the mesh config does not define: fail closed.
    UnknownProvider(String),
}

impl Refusal {
    /// The error the boundary answers (the CUSTOM denial is written by the caller).
    pub fn error(&self) -> ProxyError {
        match self {
            Refusal::Unauthenticated(_) => ProxyError::Unauthenticated,
            Refusal::Denied { .. } => ProxyError::Forbidden,
            Refusal::Custom { .. } | Refusal::UnknownProvider(_) => ProxyError::ExtAuthzDenied,
            Refusal::BadPath => ProxyError::BadRequest,
        }
    }
}

/// Counters of decisions (exported with the proxy's stats).
#[derive(Debug, Default)]
pub struct AuthzStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub custom_denied: AtomicU64,
    pub audited: AtomicU64,
    pub dry_run_denied: AtomicU64,
    /// Denials by deciding policy (`ns/name`, or `-` when no ALLOW matched); at most [`MAX_POLICY_SERIES`]
    /// policies, the rest counted as `other`. Locked only on a denial.
    pub denied_by: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The most policies [`AuthzStats::denied_by`] keeps apart.
pub const MAX_POLICY_SERIES: usize = 1000;

impl AuthzStats {
    fn count_denial(&self, policy: Option<&str>) {
        let mut m = self.denied_by.lock().unwrap_or_else(|e| e.into_inner());
        let key = policy.unwrap_or("-");
        if let Some(n) = m.get_mut(key) {
            *n += 1;
        } else if m.len() < MAX_POLICY_SERIES {
            m.insert(key.to_string(), 1);
        } else {
            *m.entry("other".to_string()).or_default() += 1;
        }
    }

    /// Prometheus text of the decision counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE waypoint_authz_decisions_total counter");
        for (decision, n) in [
            ("allowed", &self.allowed),
            ("denied", &self.denied),
            ("unauthenticated", &self.unauthenticated),
            ("custom_denied", &self.custom_denied),
            ("audited", &self.audited),
            ("dry_run_denied", &self.dry_run_denied),
        ] {
            let _ = writeln!(
                out,
                "waypoint_authz_decisions_total{{decision=\"{decision}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE waypoint_authz_denied_total counter");
        let m = self.denied_by.lock().unwrap_or_else(|e| e.into_inner());
        for (policy, n) in m.iter() {
            let policy = policy.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "waypoint_authz_denied_total{{policy=\"{policy}\"}} {n}"
            );
        }
    }
}

/// Judges one request. `providers`: the CUSTOM providers of the mesh config (none: a CUSTOM match fails closed).
pub async fn authorize(
    sec: &ServiceSecurity,
    conn: &ConnInfo,
    req: &RequestHeader,
    providers: Option<&Providers>,
    stats: &AuthzStats,
) -> Result<Authorized, Refusal> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    // A path that cannot be normalized (`%00`, a bad escape) is refused before anything else, as Envoy's
    // connection manager does, whether or not some policy matches on paths (the set normalizes only then).
    if authz::path::normalize(path).is_err() {
        return Err(Refusal::BadPath);
    }
    let mut out = Authorized::default();
    let mut auth: Option<RequestAuth> = None;
    if let Some(authn) = &sec.authn {
        match authn.authenticate(&req.headers, req.uri.query()).await {
            Ok(Some(v)) => {
                out.jwt_edits = v.edits;
                auth = Some(v.auth);
            }
            Ok(None) => {}
            Err(e) => {
                stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "waypoint::authz", error = %e, "JWT rejected");
                return Err(Refusal::Unauthenticated(e.code()));
            }
        }
    }
    if sec.policies.is_empty() {
        stats.allowed.fetch_add(1, Ordering::Relaxed);
        return Ok(out);
    }
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let attrs = Request {
        source_principal: Some(&conn.principal),
        source_namespace: Some(&conn.peer_identity.namespace),
        source_ip: conn.peer_addr.ip(),
        remote_ip: conn.peer_addr.ip(),
        destination_ip: conn.destination.ip(),
        destination_port: conn.destination.port(),
        http: Some(Http {
            host,
            method: req.method.as_str(),
            path,
            headers: &req.headers,
            auth: auth.as_ref(),
        }),
    };
    let decision = sec
        .policies
        .evaluate(&attrs)
        .map_err(|_| Refusal::BadPath)?;
    if let Some(a) = decision.audit {
        stats.audited.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "waypoint::authz", policy = a.policy.key(), rule = a.rule,
            method = %req.method, path, caller = %conn.principal, "AUDIT policy matched");
    }
    if let Some(shadow) = &decision.shadow {
        if shadow.verdict != decision.verdict {
            if shadow.verdict == Verdict::Deny {
                stats.dry_run_denied.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(target: "waypoint::authz",
                policy = shadow.decided_by.map(|m| m.policy.key()).unwrap_or("-"),
                verdict = ?shadow.verdict, method = %req.method, path, caller = %conn.principal,
                "dry-run policy would change the verdict");
        }
    }
    for name in decision.providers() {
        let Some(authorizer) = providers.and_then(|p| p.get(name).ok()) else {
            stats.custom_denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "waypoint::authz", provider = name,
                "CUSTOM policy names a provider the mesh config does not define: denied");
            return Err(Refusal::UnknownProvider(name.to_string()));
        };
        let extra = CheckExtra {
            source_port: conn.peer_addr.port(),
            protocol: protocol(req),
            scheme: "http",
            ..CheckExtra::default()
        };
        let d = authorizer.check(&attrs, &extra).await;
        if let Some(e) = &d.error {
            tracing::warn!(target: "waypoint::authz", provider = name, error = %e,
                "ext_authz gave no decision: the provider's fail mode applies");
        }
        match d.verdict {
            ext::Verdict::Allow(a) => match &mut out.ext {
                None => out.ext = Some(a),
                Some(prev) => {
                    prev.request_headers.extend(a.request_headers);
                    prev.remove_request_headers.extend(a.remove_request_headers);
                    prev.response_headers.extend(a.response_headers);
                }
            },
            ext::Verdict::Deny(denied) => {
                stats.custom_denied.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Custom {
                    provider: name.to_string(),
                    denied,
                });
            }
        }
    }
    out.policy = decision.decided_by.map(|m| m.policy.key().to_string());
    if decision.allowed() {
        stats.allowed.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    } else {
        stats.denied.fetch_add(1, Ordering::Relaxed);
        stats.count_denial(out.policy.as_deref());
        Err(Refusal::Denied { policy: out.policy })
    }
}

fn protocol(req: &RequestHeader) -> &'static str {
    match req.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Applies the authorized request's header edits to the upstream request (JWT plan, then the authorizer's).
pub fn apply_edits(a: &Authorized, req: &mut RequestHeader) -> pingora::Result<()> {
    for e in &a.jwt_edits {
        match e {
            HeaderEdit::Remove(name) => {
                req.remove_header(name);
            }
            HeaderEdit::Set(name, value) => req.insert_header(name.clone(), value.clone())?,
        }
    }
    if let Some(ext) = &a.ext {
        // The authorizer's edits follow Envoy's append actions; apply them to a copy of the headers and write
        // the differences through Pingora's header API (which keeps its case map in step).
        let mut headers = req.headers.clone();
        ext.apply_to_request(&mut headers);
        for name in req.headers.keys().cloned().collect::<Vec<_>>() {
            if !headers.contains_key(&name) {
                req.remove_header(&name);
            }
        }
        for name in headers.keys() {
            let new: Vec<_> = headers.get_all(name).iter().cloned().collect();
            let old: Vec<_> = req.headers.get_all(name).iter().cloned().collect();
            if new != old {
                req.remove_header(name);
                for v in new {
                    req.append_header(name.clone(), v)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_counted_by_policy_and_bounded() {
        let s = AuthzStats::default();
        s.count_denial(Some("shop/deny-admin"));
        s.count_denial(Some("shop/deny-admin"));
        s.count_denial(None);
        for i in 0..MAX_POLICY_SERIES + 10 {
            s.count_denial(Some(&format!("ns/p{i}")));
        }
        let m = s.denied_by.lock().unwrap();
        assert_eq!(m["shop/deny-admin"], 2);
        assert_eq!(m["-"], 1);
        assert!(m.len() <= MAX_POLICY_SERIES + 1, "{}", m.len());
        assert!(m["other"] >= 10);
        drop(m);
        let mut out = String::new();
        s.render(&mut out);
        assert!(
            out.contains("waypoint_authz_denied_total{policy=\"shop/deny-admin\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("waypoint_authz_decisions_total{decision=\"denied\"} 0"),
            "{out}"
        );
    }
}
