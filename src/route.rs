//! Routing decisions, as pure functions over a compiled [`RouteTable`]: which rule a request matches (for its
//! caller's namespace) and which weighted backend it goes to. No I/O, no clock: the random draw is passed in, so
//! tables test them.

use crate::error::ProxyError;
use crate::routes::compile::RouteTable;
use crate::routes::matching::{PathMatch, RequestView};
use crate::snapshot::Backend;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed<'a> {
    /// Index into `table.rules`.
    pub rule: usize,
    /// Index into the rule's `backends`; `None` when the rule redirects (the waypoint answers itself).
    pub backend: Option<usize>,
    /// The `PathPrefix` that matched, for `ReplacePrefixMatch` (redirect or rewrite).
    pub matched_prefix: Option<&'a str>,
}

/// The backend index for a draw `r` in `0..total_weight` (weights are cumulative ranges; weight 0 never wins).
/// A rule with no backends, or whose weights are all 0, has no backend: the request is answered 500.
pub fn pick_backend(backends: &[Backend], total_weight: u32, r: u32) -> Result<usize, ProxyError> {
    if total_weight == 0 {
        return Err(ProxyError::NoBackend);
    }
    let mut r = r % total_weight;
    for (i, b) in backends.iter().enumerate() {
        if r < b.weight {
            return Ok(i);
        }
        r -= b.weight;
    }
    Err(ProxyError::NoBackend)
}

/// Routes one request from a caller in `caller_namespace`: rule (404 `NoRoute` when none matches), then — unless
/// the rule redirects — a backend by weighted `draw` (500 `NoBackend` when the rule has none, 500
/// `InvalidBackend` when the drawn reference did not resolve).
pub fn route<'a>(
    table: &'a RouteTable,
    caller_namespace: &str,
    req: &RequestView<'_>,
    draw: u32,
) -> Result<Routed<'a>, ProxyError> {
    let (rule_idx, m) = table
        .select(caller_namespace, req)
        .ok_or(ProxyError::NoRoute)?;
    let matched_prefix = match &m.path {
        PathMatch::Prefix(p) => Some(p.as_str()),
        _ => None,
    };
    let rule = &table.rules[rule_idx];
    if rule.filters.redirect.is_some() {
        return Ok(Routed {
            rule: rule_idx,
            backend: None,
            matched_prefix,
        });
    }
    let b = pick_backend(&rule.backends, rule.total_weight, draw)?;
    if let Some(why) = &rule.backends[b].invalid {
        return Err(ProxyError::InvalidBackend(why.clone()));
    }
    Ok(Routed {
        rule: rule_idx,
        backend: Some(b),
        matched_prefix,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::{HeaderMap, Method};

    use super::*;
    use crate::routes::compile::{RouteKind, Rule, RuleFilters, Timeouts};
    use crate::routes::matching::{MatchTable, Origin, RouteMatch};

    fn backend(name: &str, weight: u32, invalid: bool) -> Backend {
        Backend::new(
            name.into(),
            weight,
            vec![],
            invalid.then(|| "BackendNotFound".to_string()),
        )
    }

    fn rule(i: usize, backends: Vec<Backend>) -> Rule {
        Rule {
            name: format!("rule {i}"),
            kind: RouteKind::Http,
            total_weight: backends.iter().map(|b| b.weight).sum(),
            backends,
            filters: RuleFilters::default(),
            timeouts: Timeouts::default(),
            retry: None,
            retry_resets: false,
        }
    }

    fn table_of(matches: Vec<(PathMatch, usize)>) -> MatchTable {
        MatchTable::new(
            matches
                .into_iter()
                .enumerate()
                .map(|(i, (path, r))| {
                    let m = RouteMatch {
                        path,
                        ..RouteMatch::any()
                    };
                    let o = Origin {
                        created: None,
                        route: "default/r".into(),
                        rule: r,
                        match_index: i,
                    };
                    (m, o, r)
                })
                .collect(),
        )
    }

    fn service(matches: Vec<(PathMatch, usize)>, rules: Vec<Vec<Backend>>) -> RouteTable {
        RouteTable {
            name: "default/reviews".into(),
            hostname: "reviews.default.svc.cluster.local".into(),
            producer: table_of(matches),
            consumers: HashMap::new(),
            downstream_idle: None,
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, b)| rule(i, b))
                .collect(),
        }
    }

    fn get<'a>(t: &'a RouteTable, ns: &str, pq: &str, draw: u32) -> Result<Routed<'a>, ProxyError> {
        let h = HeaderMap::new();
        route(t, ns, &RequestView::new(&Method::GET, pq, &h), draw)
    }

    #[test]
    fn first_match_in_precedence_order_wins_and_query_is_ignored() {
        let svc = service(
            vec![
                (PathMatch::prefix("/"), 2),
                (PathMatch::prefix("/api"), 1),
                (PathMatch::Exact("/api/v1".into()), 0),
            ],
            vec![
                vec![backend("a", 1, false)],
                vec![backend("b", 1, false)],
                vec![backend("c", 1, false)],
            ],
        );
        for (path, rule, prefix) in [
            ("/api/v1", 0, None),
            ("/api/v1?x=1", 0, None),
            ("/api/v1/x", 1, Some("/api")),
            ("/api", 1, Some("/api")),
            ("/apix", 2, Some("/")),
            ("/", 2, Some("/")),
        ] {
            let r = get(&svc, "default", path, 0).unwrap();
            assert_eq!(
                (r.rule, r.backend, r.matched_prefix),
                (rule, Some(0), prefix),
                "{path}"
            );
        }
        let none = service(
            vec![(PathMatch::Exact("/only".into()), 0)],
            vec![vec![backend("a", 1, false)]],
        );
        assert_eq!(get(&none, "default", "/other", 0), Err(ProxyError::NoRoute));
        assert_eq!(ProxyError::NoRoute.status(), 404);
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace() {
        let mut svc = service(
            vec![(PathMatch::prefix("/"), 0)],
            vec![
                vec![backend("producer", 1, false)],
                vec![backend("consumer", 1, false)],
            ],
        );
        svc.consumers.insert(
            "frontend".into(),
            table_of(vec![(PathMatch::Exact("/x".into()), 1)]),
        );
        assert_eq!(get(&svc, "default", "/x", 0).unwrap().rule, 0);
        assert_eq!(get(&svc, "frontend", "/x", 0).unwrap().rule, 1);
        // The consumer table replaces the producer's: no fallback to it.
        assert_eq!(get(&svc, "frontend", "/y", 0), Err(ProxyError::NoRoute));
    }

    #[test]
    fn weighted_pick_covers_exact_ranges() {
        let bs = [
            backend("v1", 90, false),
            backend("v2", 10, false),
            backend("v3", 0, false),
        ];
        for (draw, want) in [
            (0, 0),
            (89, 0),
            (90, 1),
            (99, 1),
            (100, 0),
            (189, 0),
            (190, 1),
        ] {
            assert_eq!(pick_backend(&bs, 100, draw), Ok(want), "draw {draw}");
        }
        // Over one full cycle of draws the split is exactly the weights.
        let v2 = (0..1000)
            .filter(|d| pick_backend(&bs, 100, *d) == Ok(1))
            .count();
        assert_eq!(v2, 100);
        assert_eq!(pick_backend(&[], 0, 5), Err(ProxyError::NoBackend));
        assert_eq!(
            pick_backend(&[backend("z", 0, false)], 0, 5),
            Err(ProxyError::NoBackend)
        );
    }

    #[test]
    fn no_backend_and_invalid_backends_answer_500_for_their_share() {
        let svc = service(
            vec![(PathMatch::prefix("/"), 0), (PathMatch::prefix("/none"), 1)],
            vec![
                vec![backend("good", 50, false), backend("missing", 50, true)],
                vec![],
            ],
        );
        assert_eq!(get(&svc, "default", "/", 10).unwrap().backend, Some(0));
        let err = get(&svc, "default", "/", 60).unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(matches!(err, ProxyError::InvalidBackend(_)));
        let err = get(&svc, "default", "/none", 0).unwrap_err();
        assert_eq!((err.clone(), err.status()), (ProxyError::NoBackend, 500));
    }
}
