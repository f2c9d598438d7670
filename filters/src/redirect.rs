//! `RequestRedirect` and `URLRewrite`: pure computations of the new `Location`, path and host.
//!
//! Both filters are validated when the config is compiled ([`Redirect::new`], [`UrlRewrite::new`]), naming the
//! offending field, so applying them on the request path cannot fail. Path replacement follows the Gateway API
//! `HTTPPathModifier` rules: `ReplaceFullPath` replaces the whole path; `ReplacePrefixMatch` replaces the part of
//! the path the rule's `PathPrefix` matched, element-wise, ignoring a trailing `/` on the prefix and on the
//! replacement (see [`PathModifier::apply`] for the specification's table).

use std::fmt::Write as _;

use crate::FilterError;

/// How a path is replaced (`ReplaceFullPath` or `ReplacePrefixMatch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    /// Replaces the matched `PathPrefix` (segment-wise, per the spec), keeping the rest of the path.
    Prefix(String),
}

impl PathModifier {
    /// The new path for `path` (without query) given the `PathPrefix` that matched (`None` when the rule's
    /// match was not a prefix; then `Prefix` behaves as the spec says for a missing prefix match: it replaces
    /// nothing and the path is kept).
    ///
    /// `ReplacePrefixMatch`, as the specification's table has it (a trailing `/` of the prefix or of the
    /// replacement is ignored; a trailing `/` of the request path is kept; an empty result is `/`):
    ///
    /// | request path | prefix match | replacement | new path |
    /// |---|---|---|---|
    /// | `/foo/bar` | `/foo` or `/foo/` | `/xyz` or `/xyz/` | `/xyz/bar` |
    /// | `/foo` | `/foo` | `/xyz` | `/xyz` |
    /// | `/foo/` | `/foo` | `/xyz` | `/xyz/` |
    /// | `/foo/bar` | `/foo` | (empty) or `/` | `/bar` |
    /// | `/foo`, `/foo/` | `/foo` | (empty) or `/` | `/` |
    ///
    /// A prefix that does not match `path` element-wise (the caller passed the wrong one) changes nothing.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        let (head, tail) = self.parts(path, matched_prefix);
        join(head, tail)
    }

    /// The new path as `head + tail` (`/` when both are empty), without allocating.
    fn parts<'a>(&'a self, path: &'a str, matched_prefix: Option<&str>) -> (&'a str, &'a str) {
        match self {
            PathModifier::Full(full) => (full, ""),
            PathModifier::Prefix(replacement) => {
                match matched_prefix.and_then(|p| rest_after(path, p)) {
                    Some(rest) => (trim_slash(replacement), rest),
                    None => (path, ""),
                }
            }
        }
    }

    /// Validates the path of `filter` (`requestRedirect` or `urlRewrite`): `ReplaceFullPath` starts with `/`;
    /// `ReplacePrefixMatch` is empty (strip the prefix, as the specification's table allows) or starts with
    /// `/`; neither holds a `?`, `#`, space or control character (they would change the query or break the
    /// request line).
    fn validate(&self, filter: &str) -> Result<(), FilterError> {
        let (field, value, may_be_empty) = match self {
            PathModifier::Full(v) => ("replaceFullPath", v, false),
            PathModifier::Prefix(v) => ("replacePrefixMatch", v, true),
        };
        let invalid = |message: &str| FilterError::Invalid {
            field: format!("{filter}.path.{field}"),
            message: format!("{message}: {value:?}"),
        };
        if !(value.starts_with('/') || may_be_empty && value.is_empty()) {
            return Err(invalid("must be an absolute path starting with '/'"));
        }
        if value
            .bytes()
            .any(|b| b == b'?' || b == b'#' || b == b' ' || b.is_ascii_control())
        {
            return Err(invalid(
                "must not contain '?', '#', spaces or control characters",
            ));
        }
        Ok(())
    }
}

/// The rest of `path` after `prefix` when `prefix` matches whole path elements (`""` or starting with `/`).
fn rest_after<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = trim_slash(prefix);
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `value` without trailing `/` (so `/` becomes empty).
fn trim_slash(value: &str) -> &str {
    value.trim_end_matches('/')
}

fn join(head: &str, tail: &str) -> String {
    if head.is_empty() && tail.is_empty() {
        return "/".to_string();
    }
    let mut out = String::with_capacity(head.len() + tail.len());
    out.push_str(head);
    out.push_str(tail);
    out
}

/// A compiled `RequestRedirect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: u16,
}

/// What a redirect needs from the request.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// `http` inside the mesh.
    pub scheme: &'a str,
    /// The request's host (from `:authority`/`Host`), without port.
    pub host: &'a str,
    /// The request's port, when the `Host` carried one (else none).
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    /// Validates: status in {301, 302, 303, 307, 308} (302 when not given), scheme `http`/`https`, hostname a
    /// precise RFC 1123 hostname (lowercase, as the CRD's pattern requires; never empty), port not 0, paths as
    /// [`PathModifier`] allows (`ReplaceFullPath` starting with `/`; `ReplacePrefixMatch` empty or starting
    /// with `/`). Errors name the field (`requestRedirect.statusCode`, …).
    pub fn new(
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathModifier>,
        status: Option<u16>,
    ) -> Result<Redirect, FilterError> {
        let status = status.unwrap_or(302);
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Err(invalid(
                "requestRedirect.statusCode",
                format!("{status} is not one of 301, 302, 303, 307, 308"),
            ));
        }
        if let Some(scheme) = &scheme {
            if scheme != "http" && scheme != "https" {
                return Err(invalid(
                    "requestRedirect.scheme",
                    format!("{scheme:?} is not \"http\" or \"https\""),
                ));
            }
        }
        if let Some(hostname) = &hostname {
            check_hostname("requestRedirect.hostname", hostname)?;
        }
        if port == Some(0) {
            return Err(invalid("requestRedirect.port", "must be 1..=65535".into()));
        }
        if let Some(path) = &path {
            path.validate("requestRedirect")?;
        }
        Ok(Redirect {
            scheme,
            hostname,
            port,
            path,
            status,
        })
    }

    /// The `Location` per the Gateway API: scheme and hostname default to the request's; the port is the
    /// redirect's port if set, else — when the redirect sets a scheme — that scheme's well-known port (the spec
    /// says so even when it is the request's own scheme), else the request's port (the port the caller dialled,
    /// the mesh's "listener port"); a well-known port for the scheme (80 for http, 443 for https) is left out of
    /// the URL. The path is replaced as [`PathModifier::apply`] says (kept when the redirect has no path), and
    /// the query is kept.
    pub fn location(&self, req: &RequestParts<'_>, matched_prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let host = self.hostname.as_deref().unwrap_or(req.host);
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => Some(port),
            (None, Some(scheme)) => well_known_port(scheme).or(req.port),
            (None, None) => req.port,
        };
        let port = port.filter(|&p| Some(p) != well_known_port(scheme));
        let (head, tail) = match &self.path {
            Some(path) => path.parts(req.path, matched_prefix),
            None => (req.path, ""),
        };
        let query = req.query.filter(|q| !q.is_empty());

        let mut out = String::with_capacity(
            scheme.len()
                + host.len()
                + head.len()
                + tail.len()
                + query.map_or(0, |q| q.len() + 1)
                + 16,
        );
        out.push_str(scheme);
        out.push_str("://");
        // An IPv6 literal host takes brackets in a URL.
        let bracket = host.contains(':') && !host.starts_with('[');
        if bracket {
            out.push('[');
        }
        out.push_str(host);
        if bracket {
            out.push(']');
        }
        if let Some(port) = port {
            let _ = write!(out, ":{port}");
        }
        if head.is_empty() && tail.is_empty() {
            out.push('/');
        } else {
            out.push_str(head);
            out.push_str(tail);
        }
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

/// 80 for `http`, 443 for `https`.
fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A compiled `URLRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    /// Replaces the `Host` (`:authority`) sent to the backend.
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

impl UrlRewrite {
    /// Validates as [`Redirect::new`] does for the same fields; errors name `urlRewrite.hostname` or
    /// `urlRewrite.path.*`.
    pub fn new(
        hostname: Option<String>,
        path: Option<PathModifier>,
    ) -> Result<UrlRewrite, FilterError> {
        if let Some(hostname) = &hostname {
            check_hostname("urlRewrite.hostname", hostname)?;
        }
        if let Some(path) = &path {
            path.validate("urlRewrite")?;
        }
        Ok(UrlRewrite { hostname, path })
    }

    /// The request target to forward, for the request's `path_and_query` (origin form, `/path?query`) and the
    /// `PathPrefix` that selected the rule (see [`PathModifier::apply`]; `None` when the match was not a
    /// prefix).
    ///
    /// Returns `None` when the path does not change — no path rewrite, or one that yields the same path — so
    /// the proxy keeps the request as it is; that answer allocates nothing. Otherwise the new path followed by
    /// the request's query, unchanged (`?` and all).
    pub fn apply_path(&self, path_and_query: &str, matched_prefix: Option<&str>) -> Option<String> {
        let modifier = self.path.as_ref()?;
        let (path, query) = match path_and_query.find('?') {
            Some(at) => path_and_query.split_at(at),
            None => (path_and_query, ""),
        };
        let (head, tail) = modifier.parts(path, matched_prefix);
        let new_len = head.len() + tail.len();
        let unchanged = if new_len == 0 {
            path == "/"
        } else {
            path.len() == new_len && path.starts_with(head) && path.ends_with(tail)
        };
        if unchanged {
            return None;
        }
        let mut out = String::with_capacity(new_len.max(1) + query.len());
        if new_len == 0 {
            out.push('/');
        } else {
            out.push_str(head);
            out.push_str(tail);
        }
        out.push_str(query);
        Some(out)
    }
}

fn invalid(field: &str, message: String) -> FilterError {
    FilterError::Invalid {
        field: field.to_string(),
        message,
    }
}

/// A precise hostname per the Gateway API CRD pattern: RFC 1123 labels of lowercase letters, digits and `-`
/// (not at either end), separated by `.`, at most 253 characters.
fn check_hostname(field: &str, hostname: &str) -> Result<(), FilterError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if hostname.is_empty() {
        return Err(invalid(field, "must not be empty".into()));
    }
    if hostname.len() > 253 || !hostname.split('.').all(label_ok) {
        return Err(invalid(
            field,
            format!("{hostname:?} is not a valid lowercase RFC 1123 hostname"),
        ));
    }
    Ok(())
}
