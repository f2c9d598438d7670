//! `jwtRules[]` compiled: issuer, audiences, token locations, key source and outputs checked once, with
//! errors that name the policy and the field (`default/api: spec.jwtRules[0].jwksUri: ...`).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;

use super::error::CompileError;
use super::extract::Location;
use super::fetch::{FetchSettings, RemoteJwks};
use super::keys::KeySet;
use super::output::Output;
use super::JwtOptions;
use crate::model::{JwtRule, Named, RequestAuthenticationSpec};

/// Where a rule's keys come from.
pub(crate) enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// One compiled `jwtRules[]` entry.
pub(crate) struct Rule {
    /// `namespace/name` of the RequestAuthentication.
    pub(crate) policy: Arc<str>,
    pub(crate) issuer: String,
    /// Empty: any audience.
    pub(crate) audiences: Vec<String>,
    /// Indexes into [`Compiled::locations`].
    pub(crate) locations: Vec<usize>,
    pub(crate) keys: Keys,
    pub(crate) output: Output,
}

/// Every rule of the destination, with the token locations they use (each location once).
pub(crate) struct Compiled {
    pub(crate) rules: Vec<Rule>,
    pub(crate) locations: Vec<Location>,
    pub(crate) remotes: Vec<Arc<RemoteJwks>>,
}

/// Compiles the policies; `reuse` offers an existing fetcher with the same settings (a config swap keeps
/// the loaded keys and the running task).
pub(crate) fn compile(
    policies: &[Named<RequestAuthenticationSpec>],
    opts: &JwtOptions,
    reuse: &[Arc<RemoteJwks>],
) -> Result<Compiled, CompileError> {
    let mut out = Compiled {
        rules: Vec::new(),
        locations: Vec::new(),
        remotes: Vec::new(),
    };
    for policy in policies {
        let key: Arc<str> = policy.key().into();
        for (i, rule) in policy.spec.jwt_rules.iter().enumerate() {
            let field = |f: &str| format!("spec.jwtRules[{i}]{f}");
            let err = |f: &str, reason: String| CompileError::new(&key, field(f), reason);
            if rule.issuer.is_empty() {
                return Err(err(".issuer", "required".into()));
            }
            let keys = keys(rule, opts, &mut out.remotes, reuse).map_err(|(f, r)| err(f, r))?;
            let mut locations = Vec::new();
            for loc in locations_of(rule).map_err(|(f, r)| err(&f, r))? {
                let at = match out.locations.iter().position(|l| *l == loc) {
                    Some(at) => at,
                    None => {
                        out.locations.push(loc);
                        out.locations.len() - 1
                    }
                };
                if !locations.contains(&at) {
                    locations.push(at);
                }
            }
            out.rules.push(Rule {
                policy: key.clone(),
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                locations,
                keys,
                output: output(rule).map_err(|(f, r)| err(&f, r))?,
            });
        }
    }
    Ok(out)
}

type FieldError = (&'static str, String);

/// Inline `jwks` wins over `jwksUri` (as in Istio); one of them is required (OpenID discovery from the
/// issuer is not done here).
fn keys(
    rule: &JwtRule,
    opts: &JwtOptions,
    remotes: &mut Vec<Arc<RemoteJwks>>,
    reuse: &[Arc<RemoteJwks>],
) -> Result<Keys, FieldError> {
    if let Some(jwks) = &rule.jwks {
        let set = KeySet::parse(jwks.as_bytes(), opts.max_keys).map_err(|e| (".jwks", e))?;
        return Ok(Keys::Inline(Arc::new(set)));
    }
    let Some(uri) = &rule.jwks_uri else {
        return Err((
            ".jwksUri",
            "one of jwks or jwksUri is required (OpenID discovery is not supported)".into(),
        ));
    };
    let uri: Uri = uri
        .parse()
        .map_err(|e| (".jwksUri", format!("{uri:?} is not a URI: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err((
            ".jwksUri",
            format!("{uri} is not an http(s) URL with a host"),
        ));
    }
    let timeout = match &rule.timeout {
        None => opts.fetch_timeout,
        Some(t) => parse_timeout(t).map_err(|e| (".timeout", e))?,
    };
    let settings = FetchSettings {
        uri,
        timeout,
        refresh_interval: opts.refresh_interval,
        retry_backoff: opts.retry_backoff,
        kid_refetch_interval: opts.kid_refetch_interval,
        max_bytes: opts.max_jwks_bytes,
        max_keys: opts.max_keys,
        tls: opts.tls.clone(),
    };
    let remote = remotes
        .iter()
        .chain(reuse)
        .find(|r| r.settings == settings)
        .cloned()
        .unwrap_or_else(|| RemoteJwks::new(settings));
    if !remotes.iter().any(|r| Arc::ptr_eq(r, &remote)) {
        remotes.push(remote.clone());
    }
    Ok(Keys::Remote(remote))
}

/// The rule's locations, or Istio's defaults when it names none.
fn locations_of(rule: &JwtRule) -> Result<Vec<Location>, (String, String)> {
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        return Ok(Location::defaults().into());
    }
    let mut out = Vec::new();
    for (j, h) in rule.from_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            (
                format!(".fromHeaders[{j}].name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        out.push(Location::Header {
            name,
            prefix: h.prefix.clone().unwrap_or_default(),
        });
    }
    for (j, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err((format!(".fromParams[{j}]"), "empty".into()));
        }
        out.push(Location::Param(p.clone()));
    }
    for (j, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() || c.contains([';', '=', ' ']) {
            return Err((
                format!(".fromCookies[{j}]"),
                format!("{c:?} is not a cookie name"),
            ));
        }
        out.push(Location::Cookie(c.clone()));
    }
    Ok(out)
}

fn output(rule: &JwtRule) -> Result<Output, (String, String)> {
    let header = |name: &str, f: String| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (f, format!("{name:?} is not a header name")))
    };
    let payload_header = match &rule.output_payload_to_header {
        None => None,
        Some(h) => Some(header(h, ".outputPayloadToHeader".into())?),
    };
    let mut claims = Vec::new();
    for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
        let name = header(&c.header, format!(".outputClaimToHeaders[{j}].header"))?;
        if c.claim.is_empty() {
            return Err((format!(".outputClaimToHeaders[{j}].claim"), "empty".into()));
        }
        claims.push((name, c.claim.clone()));
    }
    Ok(Output {
        forward_original_token: rule.forward_original_token,
        payload_header,
        claims,
    })
}

/// A fetch timeout as written in the CRD (a protobuf Duration such as `5s` or `0.5s`; `ms` and `m` are
/// accepted too). Positive, at most 5 minutes.
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 5s, 1.5s or 500ms");
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(bad());
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let secs = number.parse::<f64>().map_err(|_| bad())? * scale;
    if secs <= 0.0 || secs > 300.0 {
        return Err(format!("{text:?} is outside (0s, 5m]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_table() {
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("5s", Ok(Duration::from_secs(5))),
            ("0.5s", Ok(Duration::from_millis(500))),
            ("250ms", Ok(Duration::from_millis(250))),
            ("1m", Ok(Duration::from_secs(60))),
            (" 2s ", Ok(Duration::from_secs(2))),
            ("0s", Err("outside")),
            ("10m", Err("outside")),
            ("5", Err("not a duration")),
            ("s", Err("not a duration")),
            ("-1s", Err("not a duration")),
            ("1e3ms", Err("not a duration")),
            ("1.2.3s", Err("not a duration")),
            ("5h", Err("not a duration")),
        ];
        for (text, want) in cases {
            match (parse_timeout(text), want) {
                (Ok(d), Ok(w)) => assert_eq!(d, *w, "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
