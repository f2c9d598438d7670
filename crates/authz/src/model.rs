//! `security.istio.io/v1` `AuthorizationPolicy` and `RequestAuthentication`, as written in manifests (the
//! `spec` only; metadata is the caller's). Field names follow the CRDs; unknown fields are refused so a typo
//! (`notPrincipal`) is an error, not a silently wider policy. `None` and `Some(vec![])` are kept apart where
//! Istio gives them different meanings (a missing `rules` vs `rules: []`; a `{}` rule).

use serde::{Deserialize, Serialize};

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workload selector: a node-tier (ztunnel/sidecar) policy; a waypoint does not enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `None`: no rules field (matches nothing); `Some([])` likewise; `Some([{}])`: matches every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    #[serde(default)]
    pub action: Action,
    /// The CUSTOM provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
}

/// `AuthorizationPolicy.spec.action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

/// `matchLabels` (Istio's selector has no expressions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// `targetRefs[]`: a `Service`, a `ServiceEntry`, a `Gateway` (the waypoint) or a `GatewayClass`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Must equal the policy's namespace when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A rule: every present part must match (`from` and `to` are lists OR-ed within; `when` is AND-ed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Operation,
}

/// `from.source`: each present list must match (a value list is OR-ed; a `not*` list must not match).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to.operation`. Ports are strings in the CRD (`"8080"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `when[]`: `key` is an attribute (`request.headers[x-token]`, `source.ip`, `request.auth.claims[groups]`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `jwtRules[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (a JSON document as a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout (a duration string such as `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// A policy object with the metadata evaluation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named<T> {
    pub namespace: String,
    pub name: String,
    /// `istio.io/dry-run: "true"`.
    pub dry_run: bool,
    pub spec: T,
}

impl<T> Named<T> {
    /// `namespace/name`, as logs and metrics name a policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_policy_and_keeps_empty_rules_apart() {
        let p: AuthorizationPolicySpec = serde_yaml::from_str(
            r#"
targetRefs: [{kind: Service, group: "", name: reviews}]
action: DENY
rules:
- from: [{source: {notPrincipals: ["cluster.local/ns/a/sa/b"], ipBlocks: ["10.0.0.0/8"]}}]
  to: [{operation: {methods: [POST], paths: ["/admin*"], ports: ["9080"]}}]
  when: [{key: "request.headers[x-user]", values: ["bob"]}]
- {}
"#,
        )
        .unwrap();
        assert_eq!(p.action, Action::Deny);
        let rules = p.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1], Rule::default());
        assert_eq!(rules[0].to[0].operation.ports, ["9080"]);
        let none: AuthorizationPolicySpec = serde_yaml::from_str("action: ALLOW").unwrap();
        assert_eq!(none.rules, None);
        let empty: AuthorizationPolicySpec = serde_yaml::from_str("rules: []").unwrap();
        assert_eq!(empty.rules, Some(vec![]));
    }

    #[test]
    fn a_typo_is_an_error() {
        let e = serde_yaml::from_str::<AuthorizationPolicySpec>(
            "rules: [{from: [{source: {notPrincipal: [x]}}]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("notPrincipal"), "{e}");
    }

    #[test]
    fn parses_request_authentication() {
        let r: RequestAuthenticationSpec = serde_yaml::from_str(
            r#"
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
jwtRules:
- issuer: https://issuer.example
  audiences: [api]
  jwksUri: http://127.0.0.1:1/jwks
  fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
  fromParams: [token]
  forwardOriginalToken: true
  outputPayloadToHeader: x-jwt-payload
"#,
        )
        .unwrap();
        assert_eq!(
            r.jwt_rules[0].from_headers[0].prefix.as_deref(),
            Some("Bearer ")
        );
        assert!(r.jwt_rules[0].forward_original_token);
    }
}
