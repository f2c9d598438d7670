//! Table tests of one match and of the precedence, and a property test: the indexed [`MatchTable::find`] equals
//! the precedence-ordered linear scan on random tables.

use super::*;

fn exact(p: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::Exact(p.into()),
        ..RouteMatch::any()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::prefix(p),
        ..RouteMatch::any()
    }
}

fn header(name: &'static str, value: &str) -> HeaderMatch {
    HeaderMatch {
        name: HeaderName::from_static(name),
        value: StringMatch::Exact(value.into()),
    }
}

fn query(name: &str, value: &str) -> QueryMatch {
    QueryMatch {
        name: name.into(),
        value: StringMatch::Exact(value.into()),
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

fn origin(route: &str, created: Option<&str>, rule: usize) -> Origin {
    Origin {
        created: created.map(Into::into),
        route: route.into(),
        rule,
        match_index: 0,
    }
}

#[test]
fn paths_exact_prefix_segment_wise_and_anchored_regex() {
    let regex = RouteMatch {
        path: PathMatch::regex("/v[0-9]+/.*").unwrap(),
        ..RouteMatch::any()
    };
    let cases = [
        (exact("/a/b"), "/a/b", true),
        (exact("/a/b"), "/a/b/", false),
        (exact("/a/b"), "/a", false),
        (prefix("/foo"), "/foo", true),
        (prefix("/foo"), "/foo/", true),
        (prefix("/foo"), "/foo/x", true),
        (prefix("/foo"), "/foobar", false),
        (prefix("/foo/"), "/foo", true),
        (prefix("/foo/"), "/foobar", false),
        (prefix("/"), "/", true),
        (prefix("/"), "/anything", true),
        (prefix("/foo/bar"), "/foo", false),
        (regex.clone(), "/v1/x", true),
        (regex.clone(), "/v12/", true),
        (regex.clone(), "/x/v1/x", false),
        (regex, "/v1", false),
    ];
    let h = HeaderMap::new();
    for (m, path, want) in cases {
        let req = RequestView::new(&Method::GET, path, &h);
        assert_eq!(m.matches(&req), want, "{:?} vs {path}", m.path);
    }
}

#[test]
fn method_headers_and_query_all_must_hold() {
    let m = RouteMatch {
        path: PathMatch::prefix("/"),
        method: Some(Method::POST),
        headers: vec![
            header("version", "v2"),
            HeaderMatch {
                name: HeaderName::from_static("x-user"),
                value: StringMatch::regex("(alice|bob)").unwrap(),
            },
        ],
        query: vec![query("animal", "whale")],
    };
    let ok = [("VERSION", "v2"), ("x-user", "bob")];
    type Case<'a> = (Method, &'a str, Vec<(&'static str, &'a str)>, bool);
    let cases: Vec<Case> = vec![
        (Method::POST, "/?animal=whale", ok.to_vec(), true),
        (Method::GET, "/?animal=whale", ok.to_vec(), false),
        (Method::POST, "/", ok.to_vec(), false),
        (Method::POST, "/?animal=dolphin", ok.to_vec(), false),
        // The first occurrence counts.
        (
            Method::POST,
            "/?animal=whale&animal=dolphin",
            ok.to_vec(),
            true,
        ),
        (
            Method::POST,
            "/?animal=dolphin&animal=whale",
            ok.to_vec(),
            false,
        ),
        // Percent-decoded names and values.
        (Method::POST, "/?anim%61l=wh%61le", ok.to_vec(), true),
        (Method::POST, "/?x=1&&animal=whale", ok.to_vec(), true),
        (
            Method::POST,
            "/?animal=whale",
            vec![("version", "v2"), ("x-user", "bobby")],
            false,
        ),
        (
            Method::POST,
            "/?animal=whale",
            vec![("version", "v2")],
            false,
        ),
        (
            Method::POST,
            "/?animal=whale",
            vec![("version", "V2"), ("x-user", "bob")],
            false,
        ),
    ];
    for (method, pq, hs, want) in cases {
        let h = headers(&hs);
        let req = RequestView::new(&method, pq, &h);
        assert_eq!(m.matches(&req), want, "{method} {pq} {hs:?}");
    }
}

#[test]
fn repeated_headers_match_on_values_joined_by_comma() {
    let m = RouteMatch {
        headers: vec![header("x-a", "1,2")],
        ..RouteMatch::any()
    };
    let h = headers(&[("x-a", "1"), ("x-a", "2")]);
    assert!(m.matches(&RequestView::new(&Method::GET, "/", &h)));
    let h = headers(&[("x-a", "1")]);
    assert!(!m.matches(&RequestView::new(&Method::GET, "/", &h)));
}

#[test]
fn precedence_follows_the_specification() {
    // Each case: entries (match, origin), then a request that all of them match, and the expected winner.
    let with = |m: RouteMatch, f: &dyn Fn(&mut RouteMatch)| {
        let mut m = m;
        f(&mut m);
        m
    };
    let o = |rule| origin("ns/a", None, rule);
    type Case = (&'static str, Vec<(RouteMatch, Origin)>, &'static str, usize);
    let cases: Vec<Case> = vec![
        (
            "exact beats a longer prefix",
            vec![(prefix("/foo/bar"), o(0)), (exact("/foo/bar"), o(1))],
            "/foo/bar",
            1,
        ),
        (
            "longest prefix",
            vec![(prefix("/foo"), o(0)), (prefix("/foo/bar"), o(1))],
            "/foo/bar/x",
            1,
        ),
        (
            "prefix beats regex",
            vec![
                (
                    RouteMatch {
                        path: PathMatch::regex("/.*").unwrap(),
                        ..RouteMatch::any()
                    },
                    o(0),
                ),
                (prefix("/"), o(1)),
            ],
            "/x",
            1,
        ),
        (
            "method beats headers",
            vec![
                (
                    with(prefix("/"), &|m| {
                        m.headers = vec![header("a", "1"), header("b", "1")]
                    }),
                    o(0),
                ),
                (with(prefix("/"), &|m| m.method = Some(Method::GET)), o(1)),
            ],
            "/",
            1,
        ),
        (
            "more headers",
            vec![
                (
                    with(prefix("/"), &|m| m.headers = vec![header("a", "1")]),
                    o(0),
                ),
                (
                    with(prefix("/"), &|m| {
                        m.headers = vec![header("a", "1"), header("b", "1")]
                    }),
                    o(1),
                ),
            ],
            "/",
            1,
        ),
        (
            "headers beat query",
            vec![
                (
                    with(prefix("/"), &|m| {
                        m.query = vec![query("q", "1"), query("r", "1")]
                    }),
                    o(0),
                ),
                (
                    with(prefix("/"), &|m| m.headers = vec![header("a", "1")]),
                    o(1),
                ),
            ],
            "/",
            1,
        ),
        (
            "more query params",
            vec![
                (
                    with(prefix("/"), &|m| m.query = vec![query("q", "1")]),
                    o(0),
                ),
                (
                    with(prefix("/"), &|m| {
                        m.query = vec![query("q", "1"), query("r", "1")]
                    }),
                    o(1),
                ),
            ],
            "/",
            1,
        ),
        (
            "oldest route",
            vec![
                (prefix("/"), origin("a/z", Some("2024-02-01T00:00:00Z"), 0)),
                (prefix("/"), origin("z/a", Some("2024-01-01T00:00:00Z"), 1)),
            ],
            "/",
            1,
        ),
        (
            "a timestamp beats none",
            vec![
                (prefix("/"), origin("a/a", None, 0)),
                (prefix("/"), origin("z/z", Some("2030-01-01T00:00:00Z"), 1)),
            ],
            "/",
            1,
        ),
        (
            "then namespace/name",
            vec![
                (prefix("/"), origin("ns/b", None, 0)),
                (prefix("/"), origin("ns/a", None, 1)),
            ],
            "/",
            1,
        ),
        (
            "then rule order",
            vec![(prefix("/"), o(1)), (prefix("/"), o(0))],
            "/",
            0,
        ),
    ];
    let h = headers(&[("a", "1"), ("b", "1")]);
    for (what, entries, path_and_query, want) in cases {
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(m, o)| {
                let r = o.rule;
                (m, o, r)
            })
            .collect();
        let table = MatchTable::new(entries);
        let pq = format!("{path_and_query}?q=1&r=1");
        let req = RequestView::new(&Method::GET, &pq, &h);
        assert_eq!(table.find(&req).map(|(r, _)| r), Some(want), "{what}");
        assert_eq!(table.entries()[0].1, want, "{what}: first in order");
    }
}

#[test]
fn find_returns_the_match_that_selected_the_rule() {
    let table = MatchTable::new(vec![
        (prefix("/api/"), origin("a/a", None, 0), 7),
        (exact("/"), origin("a/a", None, 1), 8),
    ]);
    let h = HeaderMap::new();
    let (rule, m) = table
        .find(&RequestView::new(&Method::GET, "/api/x?y", &h))
        .unwrap();
    assert_eq!(rule, 7);
    assert!(matches!(&m.path, PathMatch::Prefix(p) if p == "/api"));
    assert!(table
        .find(&RequestView::new(&Method::GET, "/apix", &h))
        .is_none());
    assert!(MatchTable::default()
        .find(&RequestView::new(&Method::GET, "/", &h))
        .is_none());
}

/// A random match over a small alphabet, so that tables have many overlapping paths.
fn random_match(rng: &mut fastrand::Rng) -> RouteMatch {
    const SEGS: [&str; 4] = ["a", "b", "ab", "c"];
    let mut p = String::new();
    for _ in 0..rng.usize(0..4) {
        p.push('/');
        p.push_str(SEGS[rng.usize(..SEGS.len())]);
    }
    if p.is_empty() || rng.u8(..8) == 0 {
        p.push('/');
    }
    let path = match rng.u8(..10) {
        0..=3 => PathMatch::Exact(p),
        4..=8 => PathMatch::prefix(&p),
        _ => PathMatch::regex(&format!("{}.*", regex::escape(&p))).unwrap(),
    };
    let names = ["x-a", "x-b", "x-c"];
    RouteMatch {
        path,
        method: [None, None, Some(Method::GET), Some(Method::POST)][rng.usize(..4)].clone(),
        headers: (0..rng.usize(0..3))
            .map(|i| HeaderMatch {
                name: HeaderName::from_static(names[i]),
                value: StringMatch::Exact(rng.u8(0..2).to_string()),
            })
            .collect(),
        query: (0..rng.usize(0..3))
            .map(|i| QueryMatch {
                name: names[i].into(),
                value: StringMatch::Exact(rng.u8(0..2).to_string()),
            })
            .collect(),
    }
}

#[test]
fn indexed_find_equals_the_linear_scan_on_random_tables() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let paths = [
        "/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/b/a", "/c", "/a//b", "/ab/c/", "/x", "",
    ];
    let mut hits = [0; 2];
    for table_no in 0..300 {
        let n = rng.usize(0..40);
        let routes = ["ns/a", "ns/b", "other/a"];
        let entries: Vec<_> = (0..n)
            .map(|i| {
                let created = [
                    None,
                    Some("2024-01-01T00:00:00Z"),
                    Some("2023-01-01T00:00:00Z"),
                ][rng.usize(..3)]
                .map(String::from);
                let o = Origin {
                    created,
                    route: routes[rng.usize(..3)].into(),
                    rule: rng.usize(0..3),
                    match_index: i,
                };
                (random_match(&mut rng), o, i)
            })
            .collect();
        let table = MatchTable::new(entries);
        for _ in 0..50 {
            let path = paths[rng.usize(..paths.len())];
            let h = headers(&[
                ("x-a", ["0", "1"][rng.usize(..2)]),
                ("x-b", ["0", "1"][rng.usize(..2)]),
            ]);
            let pq = format!("{path}?x-a={}&x-b={}", rng.u8(0..2), rng.u8(0..2));
            let method = [Method::GET, Method::POST][rng.usize(..2)].clone();
            let req = RequestView::new(&method, &pq, &h);
            let linear = table
                .entries()
                .into_iter()
                .find(|(m, _)| m.matches(&req))
                .map(|(_, r)| r);
            assert_eq!(
                table.find(&req).map(|(r, _)| r),
                linear,
                "table {table_no}, {method} {pq}"
            );
            hits[usize::from(linear.is_some())] += 1;
        }
    }
    // Both outcomes are well represented (the tables are not trivially empty or catch-all).
    assert!(hits.iter().all(|&n| n > 2_000), "misses, hits: {hits:?}");
}

#[test]
fn ten_thousand_rules_are_found_without_a_scan() {
    let entries: Vec<_> = (0..10_000)
        .map(|i| {
            let m = if i % 2 == 0 {
                exact(&format!("/svc{i}/x"))
            } else {
                prefix(&format!("/svc{i}"))
            };
            (m, origin("ns/r", None, i), i)
        })
        .collect();
    let table = MatchTable::new(entries);
    let h = HeaderMap::new();
    for i in 0..10_000 {
        let path = format!("/svc{i}/x");
        assert_eq!(
            table
                .find(&RequestView::new(&Method::GET, &path, &h))
                .map(|(r, _)| r),
            Some(i)
        );
    }
    // Speed is measured by `benches/hot_path.rs` (route/match_10000), not asserted here.
}
