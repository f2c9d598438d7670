//! The destination's security, compiled with each snapshot: for every service this waypoint serves, the
//! AuthorizationPolicies it enforces ([`authz::policy::PolicySet`], attached by `targetRefs` to the Service, to
//! the waypoint Gateway, or from the root namespace to the `istio-waypoint` GatewayClass) and the
//! RequestAuthentications that verify its JWTs ([`authz::jwt::Authenticator`], attached the same way).
//!
//! Policies the waypoint does not enforce (a `selector` or namespace-wide policy belongs to the node tier) are
//! reported as diagnostics, never silently dropped. A policy that does not compile rejects the whole config
//! (the last good snapshot keeps serving), naming the policy and field. Authenticators are reused across
//! snapshots for unchanged `jwksUri`s, so a swap does not refetch keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use authz::jwt::{Authenticator, JwtOptions};
use authz::model::{Named, PolicyTargetReference, RequestAuthenticationSpec};
use authz::policy::{Diagnostic, DiagnosticKind, PolicySet, WaypointPolicies};
use mesh::config::{ConfigError, GatewayRef, Mesh};

/// The security of one served service.
#[derive(Debug, Default)]
pub struct ServiceSecurity {
    pub policies: Arc<PolicySet>,
    /// `None`: no RequestAuthentication applies (no token is verified; a token is passed on untouched).
    pub authn: Option<Arc<Authenticator>>,
}

impl ServiceSecurity {
    /// Nothing to check: no policy, no JWT rule.
    pub fn is_open(&self) -> bool {
        self.policies.is_empty() && self.authn.is_none()
    }
}

/// Authenticators by service key, kept across snapshots (see [`Authenticator::compile_reusing`]).
#[derive(Debug, Default)]
pub struct AuthnCache(Mutex<HashMap<String, Arc<Authenticator>>>);

/// Per served service (`namespace/name`): its security; plus what the user should know.
#[derive(Debug, Default)]
pub struct Compiled {
    pub services: HashMap<String, Arc<ServiceSecurity>>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The root namespace of mesh-wide policy (Istio's default).
pub const ROOT_NAMESPACE: &str = authz::policy::DEFAULT_ROOT_NAMESPACE;

/// Compiles the security of `services` (`namespace/name` keys of the services bound to `gateway`).
pub fn compile<'a>(
    mesh: &Mesh,
    gateway: &GatewayRef,
    services: impl IntoIterator<Item = &'a str>,
    cache: &AuthnCache,
) -> Result<Compiled, ConfigError> {
    let keys: Vec<&str> = services.into_iter().collect();
    let pairs = keys.iter().filter_map(|k| k.split_once('/'));
    let policies = PolicySet::for_waypoint(
        &mesh.authorization_policies,
        (&gateway.namespace, &gateway.name),
        pairs,
        ROOT_NAMESPACE,
    )
    .map_err(|e| ConfigError {
        file: PathBuf::new(),
        object: format!("AuthorizationPolicy {}", e.policy),
        field: e.field,
        message: e.message,
    })?;
    let WaypointPolicies {
        services: by_ns,
        gateway: wide,
        mut diagnostics,
    } = policies;
    let (authn_by_service, authn_diags) =
        request_authentications(&mesh.request_authentications, gateway, &keys);
    diagnostics.extend(authn_diags);
    let mut previous = cache.0.lock().unwrap_or_else(|p| p.into_inner());
    let mut next_cache = HashMap::new();
    let mut out = Compiled {
        services: HashMap::new(),
        diagnostics,
    };
    for key in keys {
        mesh::config::background::checkpoint();
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let policies = by_ns
            .get(ns)
            .and_then(|m| m.get(name))
            .unwrap_or(&wide)
            .clone();
        let authn = match authn_by_service.get(key) {
            Some(ras) if !ras.is_empty() => {
                let a = Authenticator::compile_reusing(
                    ras,
                    &JwtOptions::default(),
                    previous.get(key).map(|a| a.as_ref()),
                )
                .map_err(|e| ConfigError {
                    file: PathBuf::new(),
                    object: format!("RequestAuthentication {}", e.policy),
                    field: e.field.clone(),
                    message: e.reason.to_string(),
                })?;
                let a = Arc::new(a);
                if tokio::runtime::Handle::try_current().is_ok() {
                    a.start();
                }
                next_cache.insert(key.to_string(), a.clone());
                Some(a)
            }
            _ => None,
        };
        out.services.insert(
            key.to_string(),
            Arc::new(ServiceSecurity { policies, authn }),
        );
    }
    *previous = next_cache;
    Ok(out)
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The RequestAuthentications that apply to each served service: `targetRefs` naming the Service (same
/// namespace) or the waypoint Gateway (all its services). Others near this waypoint are reported as not
/// enforced by it.
fn request_authentications(
    all: &[Named<RequestAuthenticationSpec>],
    gateway: &GatewayRef,
    services: &[&str],
) -> (
    HashMap<String, Vec<Named<RequestAuthenticationSpec>>>,
    Vec<Diagnostic>,
) {
    let mut by_service: HashMap<String, Vec<Named<RequestAuthenticationSpec>>> = HashMap::new();
    let mut diags = Vec::new();
    let mut sorted: Vec<&Named<RequestAuthenticationSpec>> = all.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for ra in sorted {
        let targets: Vec<&PolicyTargetReference> = ra
            .spec
            .target_ref
            .iter()
            .chain(&ra.spec.target_refs)
            .collect();
        let near = ra.namespace == gateway.namespace
            || services
                .iter()
                .any(|k| k.split_once('/').is_some_and(|(ns, _)| ns == ra.namespace));
        if targets.is_empty() {
            if near {
                diags.push(Diagnostic {
                    policy: ra.key(),
                    rule: None,
                    kind: DiagnosticKind::NotEnforcedByWaypoint,
                    message:
                        "RequestAuthentication without targetRefs: not enforced by the waypoint"
                            .into(),
                });
            }
            continue;
        }
        for t in targets {
            match (t.group.as_str(), t.kind.as_str()) {
                (GATEWAY_GROUP, "Gateway")
                    if ra.namespace == gateway.namespace && t.name == gateway.name =>
                {
                    for s in services {
                        by_service
                            .entry(s.to_string())
                            .or_default()
                            .push(ra.clone());
                    }
                }
                ("" | "core", "Service") => {
                    let key = format!("{}/{}", ra.namespace, t.name);
                    if services.contains(&key.as_str()) {
                        by_service.entry(key).or_default().push(ra.clone());
                    }
                }
                _ => {}
            }
        }
    }
    (by_service, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ra(
        ns: &str,
        name: &str,
        targets: &[(&str, &str, &str)],
    ) -> Named<RequestAuthenticationSpec> {
        Named {
            namespace: ns.into(),
            name: name.into(),
            dry_run: false,
            spec: RequestAuthenticationSpec {
                target_refs: targets
                    .iter()
                    .map(|(g, k, n)| PolicyTargetReference {
                        group: g.to_string(),
                        kind: k.to_string(),
                        name: n.to_string(),
                        namespace: None,
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn request_authentications_attach_by_target() {
        let gw = GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        };
        let all = [
            ra(
                "default",
                "to-gw",
                &[(GATEWAY_GROUP, "Gateway", "waypoint")],
            ),
            ra("default", "to-reviews", &[("", "Service", "reviews")]),
            ra("other", "foreign-svc", &[("", "Service", "reviews")]),
            ra("default", "no-targets", &[]),
        ];
        let services = ["default/reviews", "default/ratings"];
        let (by, diags) = request_authentications(&all, &gw, &services);
        let names = |k: &str| by[k].iter().map(|r| r.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("default/reviews"), ["to-gw", "to-reviews"]);
        assert_eq!(names("default/ratings"), ["to-gw"]);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].policy, "default/no-targets");
    }
}
