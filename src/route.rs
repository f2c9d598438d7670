//! Routing decisions, as pure functions over the compiled [`ServiceRoutes`]: which rule a request matches and
//! which weighted backend it goes to. No I/O, no clock: the random draw is passed in, so tables test them.

use crate::error::ProxyError;
use crate::snapshot::{Backend, ServiceRoutes};

/// The rule index matching `path` (the request path without its query), first match in precedence order.
pub fn match_rule(svc: &ServiceRoutes, path: &str) -> Result<usize, ProxyError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    svc.matches
        .iter()
        .find(|(m, _)| m.matches(path))
        .map(|(_, rule)| *rule)
        .ok_or(ProxyError::NoRoute)
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

/// Routes one request: rule, then backend (a weighted draw), checking that the backend can be used.
pub fn route(svc: &ServiceRoutes, path: &str, draw: u32) -> Result<(usize, usize), ProxyError> {
    let rule_idx = match_rule(svc, path)?;
    let rule = &svc.rules[rule_idx];
    let b = pick_backend(&rule.backends, rule.total_weight, draw)?;
    if let Some(why) = &rule.backends[b].invalid {
        return Err(ProxyError::InvalidBackend(why.clone()));
    }
    Ok((rule_idx, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{PathMatch, Rule};

    fn backend(name: &str, weight: u32, invalid: bool) -> Backend {
        Backend::new(
            name.into(),
            weight,
            vec![],
            invalid.then(|| "BackendNotFound".to_string()),
        )
    }

    fn service(matches: Vec<(PathMatch, usize)>, rules: Vec<Vec<Backend>>) -> ServiceRoutes {
        ServiceRoutes {
            name: "default/reviews".into(),
            hostname: "reviews.default.svc.cluster.local".into(),
            matches,
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, backends)| Rule {
                    name: format!("rule {i}"),
                    total_weight: backends.iter().map(|b| b.weight).sum(),
                    backends,
                })
                .collect(),
        }
    }

    #[test]
    fn path_matches() {
        let exact = PathMatch::Exact("/a/b".into());
        let prefix = PathMatch::Prefix("/a".into());
        let root = PathMatch::Prefix("/".into());
        for (m, path, want) in [
            (&exact, "/a/b", true),
            (&exact, "/a/b/", false),
            (&exact, "/a", false),
            (&prefix, "/a", true),
            (&prefix, "/a/", true),
            (&prefix, "/a/b/c", true),
            (&prefix, "/ab", false),
            (&prefix, "/", false),
            (&root, "/", true),
            (&root, "/anything", true),
        ] {
            assert_eq!(m.matches(path), want, "{m:?} vs {path}");
        }
    }

    #[test]
    fn first_match_in_precedence_order_wins_and_query_is_ignored() {
        // As compiled: exact first, then longer prefixes.
        let svc = service(
            vec![
                (PathMatch::Exact("/api/v1".into()), 0),
                (PathMatch::Prefix("/api".into()), 1),
                (PathMatch::Prefix("/".into()), 2),
            ],
            vec![
                vec![backend("a", 1, false)],
                vec![backend("b", 1, false)],
                vec![backend("c", 1, false)],
            ],
        );
        for (path, rule) in [
            ("/api/v1", 0),
            ("/api/v1?x=1", 0),
            ("/api/v1/x", 1),
            ("/api", 1),
            ("/apix", 2),
            ("/", 2),
        ] {
            assert_eq!(match_rule(&svc, path), Ok(rule), "{path}");
        }
        let none = service(
            vec![(PathMatch::Exact("/only".into()), 0)],
            vec![vec![backend("a", 1, false)]],
        );
        assert_eq!(match_rule(&none, "/other"), Err(ProxyError::NoRoute));
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
    fn an_invalid_backend_answers_500_for_its_share() {
        let svc = service(
            vec![(PathMatch::Prefix("/".into()), 0)],
            vec![vec![
                backend("good", 50, false),
                backend("missing", 50, true),
            ]],
        );
        assert_eq!(route(&svc, "/", 10), Ok((0, 0)));
        let err = route(&svc, "/", 60).unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(matches!(err, ProxyError::InvalidBackend(_)));
    }
}
