//! Istio security objects (`security.istio.io` `v1` and `v1beta1`): `AuthorizationPolicy` and
//! `RequestAuthentication`, read into [`authz::model`] types with their namespace, name and the
//! `istio.io/dry-run` annotation.
//!
//! An AuthorizationPolicy is compiled once at load ([`authz::policy::validate`]), so a bad value (a CIDR, a
//! port, an unknown `when` key, a cross-namespace target, ...) is a [`ConfigError`] naming the file, the object
//! and the field (`spec.rules[0].from[0].source.ipBlocks[1]`); its warnings are logged. A
//! RequestAuthentication is checked for what the CRD validates (targets, issuer, `jwks` JSON, `jwksUri` URL,
//! header names); JWT verification itself is `authz::jwt`'s.

use authz::model::{AuthorizationPolicySpec, Named, RequestAuthenticationSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::parse::Ctx;
use super::ConfigError;

/// `istio.io/dry-run`: `"true"` evaluates the policy without enforcing it.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The object as read: metadata and spec (`spec` may be omitted: `{}`, an ALLOW-nothing policy).
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub(super) struct Raw<T> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: T,
}

fn dry_run(ctx: &Ctx<'_>, meta: &ObjectMeta) -> Result<bool, ConfigError> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .map(|v| v.trim())
    {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => Ok(false),
        Some(v) => Err(ctx.err(
            &format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
            format!("{v:?} is not \"true\" or \"false\""),
        )),
    }
}

/// Validates (compiles) an `AuthorizationPolicy`.
pub(super) fn authorization_policy(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    raw: Raw<AuthorizationPolicySpec>,
) -> Result<Named<AuthorizationPolicySpec>, ConfigError> {
    let policy = Named {
        dry_run: dry_run(ctx, &raw.metadata)?,
        namespace,
        name,
        spec: raw.spec,
    };
    let warnings = authz::policy::validate(&policy).map_err(|e| ctx.err(&e.field, e.message))?;
    for w in warnings {
        tracing::warn!(file = %ctx.file.display(), object = %ctx.object, "{}", w.message);
    }
    Ok(policy)
}

/// Checks a `RequestAuthentication` as its CRD does.
pub(super) fn request_authentication(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    raw: Raw<RequestAuthenticationSpec>,
) -> Result<Named<RequestAuthenticationSpec>, ConfigError> {
    let spec = raw.spec;
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        return Err(ctx.err(
            "spec.targetRef",
            "only one of targetRef and targetRefs may be set",
        ));
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err(ctx.err(
            "spec.selector",
            "only one of targetRefs and selector may be set",
        ));
    }
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        if rule.issuer.trim().is_empty() {
            return Err(ctx.err(&at("issuer"), "issuer is required"));
        }
        if let Some(uri) = &rule.jwks_uri {
            let ok = uri.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(ctx.err(&at("jwksUri"), format!("{uri:?} is not an http(s) URL")));
            }
        }
        if let Some(jwks) = &rule.jwks {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(jwks) {
                return Err(ctx.err(&at("jwks"), format!("not a JSON document: {e}")));
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(ctx.err(
                    &at(&format!("fromHeaders[{j}].name")),
                    format!("{:?} is not a header name", h.name),
                ));
            }
        }
        for (j, p) in rule.from_params.iter().enumerate() {
            if p.is_empty() {
                return Err(ctx.err(
                    &at(&format!("fromParams[{j}]")),
                    "a parameter name is required",
                ));
            }
        }
    }
    Ok(Named {
        dry_run: dry_run(ctx, &raw.metadata)?,
        namespace,
        name,
        spec,
    })
}
