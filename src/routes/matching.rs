//! Request matching: one [`RouteMatch`] (path, method, headers, query parameters; all must hold) and the Gateway
//! API precedence between matches, compiled into a [`MatchTable`].
//!
//! Precedence (HTTPRoute spec, across every rule of every route attached to the same parent): Exact path, then
//! PathPrefix with the most characters, then (implementation-specific) RegularExpression paths, then a method
//! match, then the most header matches, then the most query-parameter matches; remaining ties go to the oldest
//! route (creation timestamp), then `namespace/name` alphabetically, then rule order, then match order.

use http::{HeaderMap, HeaderName, Method};

/// A path match. Prefixes are normalized (no trailing `/` unless `/`) and match whole segments.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(regex::Regex),
}

/// A header or query-parameter value match.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    /// Anchored: the whole value must match.
    Regex(regex::Regex),
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
        todo!("{req:?}")
    }
}

/// Where a match comes from, for the precedence tie-breakers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// `metadata.creationTimestamp` as RFC 3339 text (sorts chronologically); `None` sorts last.
    pub created: Option<String>,
    /// `namespace/name` of the route.
    pub route: String,
    pub rule: usize,
    pub match_index: usize,
}

/// All matches of one parent's rules, in precedence order, each pointing at its rule (an index the caller
/// defines). `find` returns the first that matches; it must stay fast with 10,000 rules (index exact paths and
/// prefixes rather than scanning every entry).
#[derive(Debug, Default)]
pub struct MatchTable {
    // implementation detail
}

impl MatchTable {
    /// Builds the table from `(match, origin, rule index)` entries, sorted by precedence.
    pub fn new(entries: Vec<(RouteMatch, Origin, usize)>) -> MatchTable {
        todo!("{}", entries.len())
    }

    /// The rule index and the match of the highest-precedence match for `req` (the match tells a
    /// `ReplacePrefixMatch` rewrite which prefix matched).
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, &RouteMatch)> {
        todo!("{req:?}")
    }

    /// The entries in precedence order (for the config dump and tests).
    pub fn entries(&self) -> Vec<(&RouteMatch, usize)> {
        todo!()
    }
}
