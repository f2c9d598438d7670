//! `RequestRedirect` and `URLRewrite`: pure computations of the new `Location`, path and host.

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
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        todo!("{path}{matched_prefix:?}")
    }
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
    /// Validates: status in {301, 302, 303, 307, 308}, scheme `http`/`https`, non-empty hostname, paths starting
    /// with `/`.
    pub fn new(
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathModifier>,
        status: Option<u16>,
    ) -> Result<Redirect, FilterError> {
        todo!("{scheme:?}{hostname:?}{port:?}{path:?}{status:?}")
    }

    /// The `Location` per the Gateway API: scheme and hostname default to the request's; the port is the
    /// redirect's port if set, else the request's port when the scheme is unchanged, else the new scheme's well-
    /// known port — and a well-known port for the scheme (80 for http, 443 for https) is left out of the URL;
    /// the query is kept.
    pub fn location(&self, req: &RequestParts<'_>, matched_prefix: Option<&str>) -> String {
        todo!("{req:?}{matched_prefix:?}")
    }
}

/// A compiled `URLRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// A `RequestMirror` fraction: whether this request is mirrored, given a uniform draw in `0..1_000_000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorFraction {
    /// Parts per million (100% = 1,000,000).
    pub ppm: u32,
}

impl MirrorFraction {
    /// From `percent` (0..=100) or `fraction` (numerator/denominator, denominator default 100); neither = 100%.
    pub fn new(
        percent: Option<i64>,
        fraction: Option<(i64, Option<i64>)>,
    ) -> Result<MirrorFraction, FilterError> {
        todo!("{percent:?}{fraction:?}")
    }

    pub fn selected(&self, draw_ppm: u32) -> bool {
        draw_ppm < self.ppm
    }
}
