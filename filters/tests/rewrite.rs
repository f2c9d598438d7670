//! `URLRewrite` and the path modifiers shared with `RequestRedirect`: the specification's
//! `ReplacePrefixMatch` table, the conformance suite's rewrites, and `UrlRewrite::apply_path` (table-driven).

use waypoint_filters::{FilterError, PathModifier, UrlRewrite};

/// (request path, prefix match, replace prefix, modified path)
type PrefixCase = (&'static str, &'static str, &'static str, &'static str);

#[test]
fn replace_prefix_match_spec_table() {
    // HTTPPathModifier.ReplacePrefixMatch, every row of the specification's table.
    let cases: [PrefixCase; 11] = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
    ];
    for (path, matched, replacement, want) in cases {
        let m = PathModifier::Prefix(replacement.into());
        assert_eq!(
            m.apply(path, Some(matched)),
            want,
            "{path} | {matched} | {replacement:?}"
        );
    }
}

#[test]
fn replace_prefix_match_more() {
    let cases: &[PrefixCase] = &[
        // The conformance suite (tests/httproute-rewrite-path.yaml, core and mesh).
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/strip-prefix", "/strip-prefix", "/", "/"),
        (
            "/prefix/rewrite-path-and-modify-headers/one",
            "/prefix/rewrite-path-and-modify-headers",
            "/prefix",
            "/prefix/one",
        ),
        // Replacing a prefix by another, or by `/`; trailing slash kept.
        ("/prefix/one", "/prefix", "/replacement", "/replacement/one"),
        ("/prefix/one", "/prefix", "/", "/one"),
        (
            "/prefix/one/",
            "/prefix",
            "/replacement",
            "/replacement/one/",
        ),
        ("/prefix/one/", "/prefix", "/", "/one/"),
        ("/prefix/", "/prefix", "/replacement", "/replacement/"),
        // Deeper replacement, deeper prefix.
        ("/a/b/c/d", "/a/b", "/x/y/z", "/x/y/z/c/d"),
        ("/a/b", "/a/b", "/x/y/z/", "/x/y/z"),
        // The `/` prefix matches everything: the replacement goes in front.
        ("/abc", "/", "/xyz", "/xyz/abc"),
        ("/", "/", "/xyz", "/xyz/"),
        ("/abc/", "/", "/", "/abc/"),
        // Doubled slashes after the prefix are the application's business; kept.
        ("/foo//bar", "/foo", "/xyz", "/xyz//bar"),
        // Matching is per path element: a prefix that is not one (the caller's mistake) changes nothing.
        ("/prefixed/one", "/prefix", "/replacement", "/prefixed/one"),
        ("/other", "/prefix", "/replacement", "/other"),
        // Case-sensitive, as path matching is.
        ("/Prefix/one", "/prefix", "/replacement", "/Prefix/one"),
    ];
    for &(path, matched, replacement, want) in cases {
        let m = PathModifier::Prefix(replacement.into());
        assert_eq!(
            m.apply(path, Some(matched)),
            want,
            "{path} | {matched} | {replacement:?}"
        );
    }
}

#[test]
fn prefix_without_a_prefix_match_keeps_the_path() {
    let m = PathModifier::Prefix("/xyz".into());
    assert_eq!(m.apply("/foo/bar", None), "/foo/bar");
    assert_eq!(m.apply("/", None), "/");
}

#[test]
fn replace_full_path() {
    // (request path, matched prefix, replacement, modified path)
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("/full/one/two", Some("/full/one"), "/one", "/one"),
        (
            "/full/rewrite-path-and-modify-headers/test",
            Some("/full/rewrite-path-and-modify-headers"),
            "/test",
            "/test",
        ),
        ("/anything", None, "/", "/"),
        ("/", Some("/"), "/a/b/", "/a/b/"),
        ("/exact", None, "/other", "/other"),
    ];
    for &(path, matched, replacement, want) in cases {
        let m = PathModifier::Full(replacement.into());
        assert_eq!(m.apply(path, matched), want, "{path} -> {replacement}");
    }
}

fn rewrite(path: Option<PathModifier>) -> UrlRewrite {
    UrlRewrite::new(None, path).unwrap()
}

#[test]
fn apply_path_keeps_the_query_and_says_when_nothing_changes() {
    let prefix = |p: &str| Some(PathModifier::Prefix(p.into()));
    let full = |p: &str| Some(PathModifier::Full(p.into()));
    // (case, modifier, path and query, matched prefix, want)
    type Case = (
        &'static str,
        Option<PathModifier>,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("no path rewrite", None, "/a?b=c", Some("/a"), None),
        (
            "prefix",
            prefix("/one"),
            "/prefix/one/two",
            Some("/prefix/one"),
            Some("/one/two"),
        ),
        (
            "prefix keeps the query",
            prefix("/one"),
            "/prefix/one/two?x=1&y=%2F",
            Some("/prefix/one"),
            Some("/one/two?x=1&y=%2F"),
        ),
        (
            "strip to / keeps the query",
            prefix("/"),
            "/strip-prefix?a=b",
            Some("/strip-prefix"),
            Some("/?a=b"),
        ),
        (
            "empty query kept as sent",
            prefix("/new"),
            "/old/x?",
            Some("/old"),
            Some("/new/x?"),
        ),
        (
            "query with a ? in it",
            prefix("/new"),
            "/old?a=?b",
            Some("/old"),
            Some("/new?a=?b"),
        ),
        (
            "full keeps the query",
            full("/one"),
            "/full/one/two?q",
            Some("/full/one"),
            Some("/one?q"),
        ),
        ("full, same path", full("/same"), "/same?q=1", None, None),
        (
            "prefix, same path",
            prefix("/foo"),
            "/foo/bar?q",
            Some("/foo"),
            None,
        ),
        (
            "prefix / on /, same path",
            prefix("/"),
            "/",
            Some("/"),
            None,
        ),
        (
            "strip on /x/ gives /, a change",
            prefix(""),
            "/x",
            Some("/x"),
            Some("/"),
        ),
        (
            "strip on / of / is no change",
            prefix(""),
            "/",
            Some("/"),
            None,
        ),
        (
            "prefix without a prefix match",
            prefix("/xyz"),
            "/foo?q",
            None,
            None,
        ),
        (
            "prefix adds a trailing element",
            prefix("/xyz"),
            "/?q",
            Some("/"),
            Some("/xyz/?q"),
        ),
    ];
    for (what, path, input, matched, want) in cases {
        assert_eq!(
            rewrite(path).apply_path(input, matched).as_deref(),
            want,
            "{what}"
        );
    }
}

#[test]
fn hostname() {
    // tests/httproute-rewrite-host.yaml: the Host sent upstream is the filter's hostname.
    for host in [
        "one.example.org",
        "example.org",
        "echo",
        "a-1.b-2.svc.cluster.local",
    ] {
        let r = UrlRewrite::new(Some(host.into()), None).unwrap();
        assert_eq!(r.hostname.as_deref(), Some(host));
        assert_eq!(r.apply_path("/a?b", Some("/")), None, "{host}");
    }
    for (host, why) in [
        ("", "empty"),
        ("One.example.org", "uppercase"),
        ("example.org:8080", "port"),
        ("*.example.org", "wildcard"),
        ("a..b", "empty label"),
        ("a-.b", "label ends with -"),
        ("a b", "space"),
        (&*"a".repeat(64), "label longer than 63"),
    ] {
        let err = UrlRewrite::new(Some(host.into()), None).unwrap_err();
        assert!(
            matches!(&err, FilterError::Invalid { field, .. } if field == "urlRewrite.hostname"),
            "{why}: {err:?}"
        );
    }
}

#[test]
fn new_validates_paths() {
    let full = |p: &str| Some(PathModifier::Full(p.into()));
    let prefix = |p: &str| Some(PathModifier::Prefix(p.into()));
    for ok in [
        full("/"),
        full("/a/b"),
        prefix(""),
        prefix("/"),
        prefix("/x/"),
    ] {
        UrlRewrite::new(None, ok.clone()).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    let bad = [
        (full(""), "urlRewrite.path.replaceFullPath"),
        (full("a"), "urlRewrite.path.replaceFullPath"),
        (full("/a#b"), "urlRewrite.path.replaceFullPath"),
        (full("/a\r\n"), "urlRewrite.path.replaceFullPath"),
        (prefix("a"), "urlRewrite.path.replacePrefixMatch"),
        (prefix("/a?b"), "urlRewrite.path.replacePrefixMatch"),
        (prefix("/a\tb"), "urlRewrite.path.replacePrefixMatch"),
    ];
    for (path, field) in bad {
        let err = UrlRewrite::new(None, path.clone()).unwrap_err();
        assert!(
            matches!(&err, FilterError::Invalid { field: f, .. } if f == field),
            "{path:?}: {err:?}"
        );
        assert!(err.to_string().starts_with(field), "{err}");
    }
}

#[test]
fn default_does_nothing() {
    let r = UrlRewrite::default();
    assert_eq!(r.apply_path("/a?b", Some("/a")), None);
    assert_eq!(r.hostname, None);
}
