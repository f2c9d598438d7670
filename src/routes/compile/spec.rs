//! One neutral form of HTTPRoute and GRPCRoute for the compiler.
//!
//! The gateway-api crate generates a distinct type per kind, channel and nesting level (a rule filter, a backend
//! filter and a GRPCRoute filter are three types of the same shape). The compiler reads the route's JSON form
//! into these few structs instead (serde, camelCase), so both kinds share one code path; a match's `method` is
//! kept as JSON because it is a string in HTTPRoute and an object (`service`, `method`, `type`) in GRPCRoute.

use std::path::PathBuf;

use mesh::config::{ConfigError, Mesh};
use serde::Deserialize;
use serde_json::Value;

use super::RouteKind;

/// A route, either kind, as the compiler reads it.
#[derive(Debug)]
pub(crate) struct RouteSpec {
    pub kind: RouteKind,
    pub file: PathBuf,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp`, RFC 3339 with nanoseconds (so the text sorts chronologically).
    pub created: Option<String>,
    /// The annotation [`RETRY_RESETS_ANNOTATION`] is `"true"`: resets before the response are retried for
    /// every method, not only idempotent ones.
    pub retry_resets: bool,
    /// The annotation [`RETRY_ON_ANNOTATION`], unparsed (the rule compiler reports its errors).
    pub retry_on: Option<String>,
    pub body: Body,
}

/// Opts a route into retrying non-idempotent requests after a reset before any response byte (Envoy's `reset`
/// retry condition): only for handlers that are safe to run twice.
pub const RETRY_RESETS_ANNOTATION: &str = "retry.waypoint.dev/reset-before-response";

/// Istio's `retryOn` list for every rule of the route (`5xx`, `gateway-error`, `connect-failure`,
/// `refused-stream`, `reset`, `reset-before-request`, `retriable-4xx`, `retriable-status-codes`, bare status
/// codes): see [`crate::retry::RetryOn`].
pub const RETRY_ON_ANNOTATION: &str = "retry.waypoint.dev/on";

impl RouteSpec {
    /// `HTTPRoute ns/name`.
    pub fn object(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }

    pub fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            object: self.object(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Body {
    pub parent_refs: Vec<ParentRef>,
    pub rules: Vec<RuleSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ParentRef {
    /// Default `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// Default `Gateway`.
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    pub section_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RuleSpec {
    pub matches: Option<Vec<MatchSpec>>,
    pub filters: Vec<FilterSpec>,
    pub backend_refs: Vec<BackendRefSpec>,
    pub timeouts: Option<TimeoutsSpec>,
    pub retry: Option<RetrySpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct MatchSpec {
    pub path: Option<PathSpec>,
    /// HTTPRoute: `"GET"`; GRPCRoute: `{service, method, type}`.
    pub method: Option<Value>,
    pub headers: Vec<ValueMatchSpec>,
    pub query_params: Vec<ValueMatchSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PathSpec {
    #[serde(rename = "type")]
    pub ty: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ValueMatchSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: Option<String>,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct GrpcMethodSpec {
    pub service: Option<String>,
    pub method: Option<String>,
    #[serde(rename = "type")]
    pub ty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct FilterSpec {
    #[serde(rename = "type")]
    pub ty: String,
    pub request_header_modifier: Option<HeaderModifierSpec>,
    pub response_header_modifier: Option<HeaderModifierSpec>,
    pub request_redirect: Option<RedirectSpec>,
    pub url_rewrite: Option<RewriteSpec>,
    pub request_mirror: Option<MirrorSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HeaderModifierSpec {
    pub set: Vec<NameValue>,
    pub add: Vec<NameValue>,
    pub remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RedirectSpec {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
    pub port: Option<i64>,
    pub status_code: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PathModifierSpec {
    #[serde(rename = "type")]
    pub ty: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RewriteSpec {
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct MirrorSpec {
    pub backend_ref: BackendRefSpec,
    pub percent: Option<i64>,
    pub fraction: Option<FractionSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FractionSpec {
    pub numerator: i64,
    pub denominator: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BackendRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    pub weight: Option<i64>,
    pub filters: Vec<FilterSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct TimeoutsSpec {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RetrySpec {
    pub attempts: Option<i64>,
    pub codes: Vec<i64>,
    pub backoff: Option<String>,
}

/// A `parentRef` as written (defaults not applied), read before a route is converted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParentName<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

/// Which routes [`routes`] reads: every one, or those with a parent `keep` accepts (`keep(route namespace,
/// parent)`), the others skipped before any conversion.
pub(crate) type Keep<'a> = Option<&'a dyn Fn(&str, ParentName<'_>) -> bool>;

/// The HTTPRoutes and GRPCRoutes of the mesh that `keep` selects, in the neutral form.
pub(crate) fn routes(mesh: &Mesh, keep: Keep<'_>) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut out = Vec::new();
    // The metadata type is k8s-openapi's; only its fields are read here.
    macro_rules! push {
        ($kind:expr, $routes:expr) => {
            for r in $routes {
                mesh::config::background::checkpoint();
                let m = &r.object.metadata;
                if let Some(keep) = keep {
                    let ns = m.namespace.as_deref().unwrap_or("default");
                    let parents = r.object.spec.parent_refs.as_deref().unwrap_or_default();
                    let named = parents.iter().any(|p| {
                        let p = ParentName {
                            group: p.group.as_deref(),
                            kind: p.kind.as_deref(),
                            name: &p.name,
                            namespace: p.namespace.as_deref(),
                        };
                        keep(ns, p)
                    });
                    if !named {
                        continue;
                    }
                }
                let created = m.creation_timestamp.as_ref().map(|t| format!("{:.9}", t.0));
                let mut route = RouteSpec {
                    kind: $kind,
                    file: r.file.clone(),
                    namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
                    name: m.name.clone().unwrap_or_default(),
                    created,
                    retry_resets: m
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(RETRY_RESETS_ANNOTATION))
                        .is_some_and(|v| v == "true"),
                    retry_on: m
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(RETRY_ON_ANNOTATION))
                        .cloned(),
                    body: Body::default(),
                };
                route.body = neutral(&r.object.spec).map_err(|e| route.err("spec", e))?;
                out.push(route);
            }
        };
    }
    push!(RouteKind::Http, &mesh.http_routes);
    push!(RouteKind::Grpc, &mesh.grpc_routes);
    Ok(out)
}

/// The neutral form of a generated type of the same shape.
///
/// Through JSON text rather than a [`Value`] tree: the tree costs an allocation per object, key and string, and
/// the conversion of every served route is most of a compile. Should the text not convert, the tree path runs
/// again for its error message (the message a config error has always carried).
fn neutral<T: serde::Serialize, U: serde::de::DeserializeOwned>(spec: &T) -> Result<U, String> {
    let fast = serde_json::to_vec(spec)
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    match fast {
        Some(v) => Ok(v),
        None => serde_json::to_value(spec)
            .and_then(serde_json::from_value)
            .map_err(|e| e.to_string()),
    }
}
