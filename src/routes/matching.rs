//! Request matching: one [`RouteMatch`] (path, method, headers, query parameters; all must hold) and the Gateway
//! API precedence between matches, compiled into a [`MatchTable`].
//!
//! Precedence (HTTPRoute spec, across every rule of every route attached to the same parent): Exact path, then
//! PathPrefix with the most characters, then (implementation-specific) RegularExpression paths (longer patterns
//! first, as Istio orders them), then a method match, then the most header matches, then the most
//! query-parameter matches; remaining ties go to the oldest route (creation timestamp), then `namespace/name`
//! alphabetically, then rule order, then match order.
//!
//! Choices where the specification leaves room: a header sent several times is matched on its values joined by
//! `,` (RFC 9110 §5.3); a query parameter is matched on its first occurrence, name and value percent-decoded
//! (`%41` is `A`; `+` stays `+`, as in Envoy's matcher); regular expressions are the `regex` crate's syntax,
//! anchored (the whole path or value must match).
//!
//! [`MatchTable::find`] does not scan every entry: exact paths are a hash look-up, prefixes are looked up at
//! each `/` boundary of the request path (longest first), and only regex paths are scanned. Because every
//! exact entry outranks every prefix entry, a longer prefix outranks a shorter one, and regexes come last, the
//! first hit in that order is the one the precedence-ordered linear scan would find.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};

/// A path match. Prefixes are normalized (no trailing `/` unless `/`) and match whole segments.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole path must match (build it with [`PathMatch::regex`]).
    Regex(regex::Regex),
}

impl PathMatch {
    /// A normalized prefix: `/foo/` → `/foo`, `` → `/`.
    pub fn prefix(p: &str) -> PathMatch {
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
    }

    /// An anchored regular expression.
    pub fn regex(pattern: &str) -> Result<PathMatch, regex::Error> {
        anchored(pattern).map(PathMatch::Regex)
    }

    /// Whether `path` (without query) matches. `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// `^(?:pattern)$`.
pub fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// A header or query-parameter value match.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    /// Anchored: the whole value must match (build it with [`StringMatch::regex`]).
    Regex(regex::Regex),
}

impl StringMatch {
    /// An anchored regular expression.
    pub fn regex(pattern: &str) -> Result<StringMatch, regex::Error> {
        anchored(pattern).map(StringMatch::Regex)
    }

    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(s) => s.as_bytes() == value,
            StringMatch::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// A header match (name case-insensitive; a header sent several times matches on its values joined by `,`).
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

/// A query-parameter match (name exact, case-sensitive; the first occurrence counts, as the spec allows).
#[derive(Clone, Debug)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

/// One match of a rule: everything given must hold.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

/// What a match looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// Splits `path_and_query` at `?`.
    pub fn new(method: &'a Method, path_and_query: &'a str, headers: &'a HeaderMap) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        RequestView {
            method,
            path,
            query,
            headers,
        }
    }
}

impl RouteMatch {
    /// The match of a rule with no `matches`: every request (PathPrefix `/`).
    pub fn any() -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: vec![],
            query: vec![],
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| header_matches(h, req.headers))
            && self.query.iter().all(|q| {
                req.query
                    .and_then(|qs| query_value(qs, &q.name))
                    .is_some_and(|v| q.value.matches(v.as_bytes()))
            })
    }

    /// The precedence key of the match itself (before the [`Origin`] tie-breakers); smaller sorts first.
    fn rank(&self) -> (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Regex(re) => (2, re.as_str().len()),
        };
        (
            kind,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }
}

fn header_matches(h: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&h.name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    match values.next() {
        None => h.value.matches(first.as_bytes()),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(v.as_bytes());
            }
            h.value.matches(&joined)
        }
    }
}

/// The percent-decoded value of the first parameter named `name` (also decoded) in a raw query string.
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

/// `%XX` escapes decoded (invalid ones kept as they are); not valid UTF-8 afterwards: replaced lossily.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Where a match comes from, for the precedence tie-breakers.
///
/// Ordered as the tie-breakers go: the oldest route first (a route without a timestamp after every route with
/// one), then `namespace/name`, then rule, then match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `metadata.creationTimestamp` as RFC 3339 text (sorts chronologically); `None` sorts last.
    pub created: Option<String>,
    /// `namespace/name` of the route.
    pub route: String,
    pub rule: usize,
    pub match_index: usize,
}

impl Ord for Origin {
    fn cmp(&self, other: &Self) -> Ordering {
        fn key(o: &Origin) -> (bool, Option<&str>) {
            (o.created.is_none(), o.created.as_deref())
        }
        key(self)
            .cmp(&key(other))
            .then_with(|| self.route.cmp(&other.route))
            .then(self.rule.cmp(&other.rule))
            .then(self.match_index.cmp(&other.match_index))
    }
}

impl PartialOrd for Origin {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// All matches of one parent's rules, in precedence order, each pointing at its rule (an index the caller
/// defines). `find` returns the first that matches; it stays fast with 10,000 rules (see the module doc).
#[derive(Debug, Default)]
pub struct MatchTable {
    /// In precedence order.
    entries: Vec<(RouteMatch, Origin, usize)>,
    /// Exact path → positions in `entries`, ascending.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Normalized prefix → positions in `entries`, ascending.
    prefix: HashMap<Box<str>, Vec<u32>>,
    /// Regex paths: positions in `entries`, ascending.
    regex: Vec<u32>,
}

impl MatchTable {
    /// Builds the table from `(match, origin, rule index)` entries, sorted by precedence.
    pub fn new(mut entries: Vec<(RouteMatch, Origin, usize)>) -> MatchTable {
        entries.sort_by(|a, b| a.0.rank().cmp(&b.0.rank()).then_with(|| a.1.cmp(&b.1)));
        let mut table = MatchTable::default();
        for (i, (m, _, _)) in entries.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 matches");
            match &m.path {
                PathMatch::Exact(p) => table.exact.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Prefix(p) => table.prefix.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Regex(_) => table.regex.push(i),
            }
        }
        table.entries = entries;
        table
    }

    /// The rule index and the match of the highest-precedence match for `req` (the match tells a
    /// `ReplacePrefixMatch` rewrite which prefix matched).
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, &RouteMatch)> {
        let first = |list: &[u32]| {
            list.iter().find_map(|&i| {
                let (m, _, rule) = &self.entries[i as usize];
                m.matches(req).then_some((*rule, m))
            })
        };
        let path = req.path;
        if let Some(hit) = self.exact.get(path).and_then(|l| first(l)) {
            return Some(hit);
        }
        if !self.prefix.is_empty() {
            // Longest first: the whole path, then the part before each `/` from the right, then `/`.
            let cuts = std::iter::once(path.len()).chain(
                path.bytes()
                    .enumerate()
                    .rev()
                    .filter(|&(i, b)| b == b'/' && i > 0)
                    .map(|(i, _)| i),
            );
            for cut in cuts {
                if let Some(hit) = self.prefix.get(&path[..cut]).and_then(|l| first(l)) {
                    return Some(hit);
                }
            }
            if path != "/" {
                if let Some(hit) = self.prefix.get("/").and_then(|l| first(l)) {
                    return Some(hit);
                }
            }
        }
        first(&self.regex)
    }

    /// The entries in precedence order (for the config dump and tests).
    pub fn entries(&self) -> Vec<(&RouteMatch, usize)> {
        self.entries.iter().map(|(m, _, r)| (m, *r)).collect()
    }

    /// The entries with their origins, in precedence order.
    pub fn origins(&self) -> impl Iterator<Item = (&RouteMatch, &Origin, usize)> {
        self.entries.iter().map(|(m, o, r)| (m, o, *r))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
