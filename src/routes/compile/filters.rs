//! Route filters (rule level and backend level) → [`RuleFilters`], through the `waypoint-filters` constructors.
//!
//! Supported: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect (rule level, HTTPRoute),
//! URLRewrite (HTTPRoute), RequestMirror (each a resolved [`Backend`]; weight unused). Other types
//! (ExtensionRef, CORS, ExternalAuth, and RequestRedirect on a backend) are unsupported values: the route is
//! not accepted. A filter error the API server would have rejected (an invalid header name, a redirect status
//! outside 301/302/303/307/308, a percent above 100) is a [`ConfigError`]; a header value that Kubernetes
//! admits but HTTP does not (a control character) is an unsupported value.

use mesh::config::ConfigError;
use waypoint_filters::{
    FilterError, HeaderModifier, MirrorFraction, PathModifier, Redirect, UrlRewrite,
};

use super::rules::RouteCx;
use super::spec::{FilterSpec, HeaderModifierSpec, PathModifierSpec};
use super::{backends, Mirror, RouteKind, RuleFilters};

/// Where the filters are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Rule,
    Backend,
}

/// The filters of a rule or backend at `at` (`spec.rules[0]` or `spec.rules[0].backendRefs[1]`).
pub(crate) fn compile(
    rc: &mut RouteCx<'_>,
    at: &str,
    filters: &[FilterSpec],
    level: Level,
) -> Result<RuleFilters, ConfigError> {
    let mut out = RuleFilters::default();
    let http = rc.route.kind == RouteKind::Http;
    for (fi, f) in filters.iter().enumerate() {
        let field = format!("{at}.filters[{fi}]");
        let missing = |key: &str| {
            rc.err(
                &format!("{field}.{key}"),
                format!("{key} must be specified for a {} filter", f.ty),
            )
        };
        match f.ty.as_str() {
            "RequestHeaderModifier" => {
                let spec = f
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("requestHeaderModifier"))?;
                let key = format!("{field}.requestHeaderModifier");
                out.request_headers = header_modifier(rc, &field, &key, spec)?;
            }
            "ResponseHeaderModifier" => {
                let spec = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("responseHeaderModifier"))?;
                let key = format!("{field}.responseHeaderModifier");
                out.response_headers = header_modifier(rc, &field, &key, spec)?;
            }
            "RequestRedirect" if http && level == Level::Rule => {
                let spec = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let key = format!("{field}.requestRedirect");
                let port = match spec.port {
                    None => None,
                    Some(p) => {
                        Some(u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                            rc.err(
                                &format!("{key}.port"),
                                format!("port {p} is out of range 1-65535"),
                            )
                        })?)
                    }
                };
                let status = match spec.status_code {
                    None => None,
                    Some(s) => Some(u16::try_from(s).map_err(|_| {
                        rc.err(
                            &format!("{key}.statusCode"),
                            format!("status {s} is not a redirect status"),
                        )
                    })?),
                };
                let path = path_modifier(rc, &key, spec.path.as_ref())?;
                let redirect = Redirect::new(
                    spec.scheme.clone(),
                    spec.hostname.clone(),
                    port,
                    path,
                    status,
                );
                out.redirect = checked(rc, &field, &key, redirect)?;
            }
            "URLRewrite" if http => {
                let spec = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                let key = format!("{field}.urlRewrite");
                let path = path_modifier(rc, &key, spec.path.as_ref())?;
                let rewrite = UrlRewrite::new(spec.hostname.clone(), path);
                out.rewrite = checked(rc, &field, &key, rewrite)?;
            }
            "RequestMirror" => {
                let spec = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let key = format!("{field}.requestMirror");
                let backend =
                    backends::backend(rc, &format!("{key}.backendRef"), &spec.backend_ref, true)?;
                let fraction = spec.fraction.as_ref().map(|f| (f.numerator, f.denominator));
                if let Some(fraction) = checked(
                    rc,
                    &field,
                    &key,
                    MirrorFraction::new(spec.percent, fraction),
                )? {
                    out.mirrors.push(Mirror { backend, fraction });
                }
            }
            other => {
                let place = match level {
                    Level::Rule => "",
                    Level::Backend => " on a backend",
                };
                rc.unsupported(
                    &format!("{field}.type"),
                    format!("filter type {other}{place} is not supported by this waypoint"),
                );
            }
        }
    }
    Ok(out)
}

fn header_modifier(
    rc: &mut RouteCx<'_>,
    filter: &str,
    field: &str,
    spec: &HeaderModifierSpec,
) -> Result<Option<HeaderModifier>, ConfigError> {
    let pairs = |l: &[super::spec::NameValue]| -> Vec<(String, String)> {
        l.iter()
            .map(|nv| (nv.name.clone(), nv.value.clone()))
            .collect()
    };
    let m = HeaderModifier::compile(&pairs(&spec.set), &pairs(&spec.add), &spec.remove);
    checked(rc, filter, field, m)
}

fn path_modifier(
    rc: &RouteCx<'_>,
    at: &str,
    spec: Option<&PathModifierSpec>,
) -> Result<Option<PathModifier>, ConfigError> {
    let Some(p) = spec else { return Ok(None) };
    let field = format!("{at}.path");
    let (value, make): (Option<&String>, fn(String) -> PathModifier) = match p.ty.as_str() {
        "ReplaceFullPath" => (p.replace_full_path.as_ref(), PathModifier::Full),
        "ReplacePrefixMatch" => (p.replace_prefix_match.as_ref(), PathModifier::Prefix),
        other => {
            return Err(rc.err(
                &format!("{field}.type"),
                format!("unknown path modifier type {other:?}"),
            ))
        }
    };
    let value = value.ok_or_else(|| rc.err(&field, format!("{} needs its value", p.ty)))?;
    Ok(Some(make(value.clone())))
}

/// A filter constructor's result: an invalid value Kubernetes would admit (a header value HTTP refuses) is
/// recorded as unsupported (`None`); anything else invalid is a [`ConfigError`]. `filter` is the filter's
/// field path (`spec.rules[0].filters[1]`), which the constructors' field names (`requestRedirect.port`)
/// continue; `field` is the filter's configuration (`...filters[1].requestRedirect`).
fn checked<T>(
    rc: &mut RouteCx<'_>,
    filter: &str,
    field: &str,
    r: Result<T, FilterError>,
) -> Result<Option<T>, ConfigError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e @ FilterError::InvalidValue { .. }) => {
            rc.unsupported(field, e);
            Ok(None)
        }
        Err(FilterError::Invalid {
            field: sub,
            message,
        }) => {
            let field = if sub.is_empty() {
                field.to_string()
            } else {
                format!("{filter}.{sub}")
            };
            Err(rc.err(&field, message))
        }
        Err(e) => Err(rc.err(field, e.to_string())),
    }
}
