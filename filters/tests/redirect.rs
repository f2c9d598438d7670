//! `RequestRedirect`: the `Location` and status per the Gateway API spec and its conformance suite (core and
//! mesh profiles), and the validation of every field (table-driven).
//!
//! A redirect is written `field=value` separated by spaces (`scheme`, `host`, `port`, `full`, `prefix`,
//! `status`; `prefix=` is an empty replacement); a request as the URL it was sent to, where a port written in
//! the URL is a port the `Host` header carried.

use waypoint_filters::{FilterError, PathModifier, Redirect, RequestParts};

type Fields = (
    Option<String>,
    Option<String>,
    Option<u16>,
    Option<PathModifier>,
    Option<u16>,
);

fn fields(spec: &str) -> Fields {
    let (mut scheme, mut host, mut port, mut path, mut status) = (None, None, None, None, None);
    for field in spec.split_whitespace() {
        let (k, v) = field.split_once('=').expect("field=value");
        match k {
            "scheme" => scheme = Some(v.to_string()),
            "host" => host = Some(v.to_string()),
            "port" => port = Some(v.parse().unwrap()),
            "full" => path = Some(PathModifier::Full(v.to_string())),
            "prefix" => path = Some(PathModifier::Prefix(v.to_string())),
            "status" => status = Some(v.parse().unwrap()),
            _ => panic!("unknown field {k}"),
        }
    }
    (scheme, host, port, path, status)
}

fn new((scheme, host, port, path, status): Fields) -> Result<Redirect, FilterError> {
    Redirect::new(scheme, host, port, path, status)
}

/// `scheme://host[:port]/path[?query]` (an IPv6 host in brackets).
fn request(url: &str) -> RequestParts<'_> {
    let (scheme, rest) = url.split_once("://").unwrap();
    let at = rest.find('/').unwrap();
    let (authority, target) = rest.split_at(at);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], Some(authority[i + 1..].parse().unwrap()))
        }
        _ => (authority, None),
    };
    RequestParts {
        scheme,
        host,
        port,
        path,
        query,
    }
}

/// (case, redirect, request URL, matched prefix, status, Location)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
);

fn check(cases: &[Case]) {
    for &(what, spec, url, matched, status, location) in cases {
        let r = new(fields(spec)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, status, "{what}: status");
        assert_eq!(r.location(&request(url), matched), location, "{what}");
    }
}

#[test]
fn mesh_scheme_host_port_and_status() {
    // tests/mesh/httproute-redirect-{scheme,port,host-and-status,30x}.yaml: Host: echo (no port).
    #[rustfmt::skip]
    check(&[
        ("scheme", "scheme=https", "http://echo/scheme", Some("/scheme"), 302, "https://echo/scheme"),
        ("scheme and host", "scheme=https host=example.org", "http://echo/scheme-and-host", None, 302,
            "https://example.org/scheme-and-host"),
        ("scheme and status", "scheme=https status=301", "http://echo/s", None, 301, "https://echo/s"),
        ("port", "port=8083", "http://echo/port", None, 302, "http://echo:8083/port"),
        ("port and host", "port=8083 host=example.org", "http://echo/p", None, 302, "http://example.org:8083/p"),
        ("port and status", "port=8083 status=301", "http://echo/p", None, 301, "http://echo:8083/p"),
        ("hostname", "host=example.org", "http://echo/h", None, 302, "http://example.org/h"),
        ("host and 301", "host=example.org status=301", "http://echo/h", None, 301, "http://example.org/h"),
        ("host and 302", "host=example.org status=302", "http://echo/h", None, 302, "http://example.org/h"),
        ("host and 303", "host=example.org status=303", "http://echo/h", None, 303, "http://example.org/h"),
        ("host and 307", "host=example.org status=307", "http://echo/h", None, 307, "http://example.org/h"),
        ("host and 308", "host=example.org status=308", "http://echo/h", None, 308, "http://example.org/h"),
    ]);
}

#[test]
fn port_and_scheme() {
    // tests/httproute-redirect-port-and-scheme.go; the mesh's "listener port" is the port the caller dialled.
    #[rustfmt::skip]
    check(&[
        // Listener on port 80 (the Host carries :80, or no port).
        ("80: nil, nil", "host=example.org", "http://a:80/p", None, 302, "http://example.org/p"),
        ("80 implicit: nil, nil", "host=example.org", "http://a/p", None, 302, "http://example.org/p"),
        ("80: nil, 80", "host=example.org port=80", "http://a:80/p", None, 302, "http://example.org/p"),
        ("80: nil, 8080", "host=example.org port=8080", "http://a:80/p", None, 302, "http://example.org:8080/p"),
        ("80: https, nil", "host=example.org scheme=https", "http://a:80/p", None, 302, "https://example.org/p"),
        ("80: https, 443", "host=example.org scheme=https port=443", "http://a:80/p", None, 302,
            "https://example.org/p"),
        ("80: https, 8443", "host=example.org scheme=https port=8443", "http://a:80/p", None, 302,
            "https://example.org:8443/p"),
        // Listener on port 8080.
        ("8080: nil, nil keeps the port", "host=example.org", "http://a:8080/p", None, 302,
            "http://example.org:8080/p"),
        ("8080: nil, 80", "host=example.org port=80", "http://a:8080/p", None, 302, "http://example.org/p"),
        ("8080: https, nil", "host=example.org scheme=https", "http://a:8080/p", None, 302,
            "https://example.org/p"),
        ("8080: http (the request's own), nil: well-known port, as the spec says", "scheme=http",
            "http://a:8080/p", None, 302, "http://a/p"),
        // Listener on port 443 (https).
        ("443: nil, nil", "host=example.org", "https://a:443/p", None, 302, "https://example.org/p"),
        ("443: nil, 443", "host=example.org port=443", "https://a:443/p", None, 302, "https://example.org/p"),
        ("443: nil, 8443", "host=example.org port=8443", "https://a:443/p", None, 302,
            "https://example.org:8443/p"),
        ("443: http, nil", "host=example.org scheme=http", "https://a:443/p", None, 302, "http://example.org/p"),
        ("443: http, 80", "host=example.org scheme=http port=80", "https://a:443/p", None, 302,
            "http://example.org/p"),
        ("443: http, 8080", "host=example.org scheme=http port=8080", "https://a:443/p", None, 302,
            "http://example.org:8080/p"),
        // More.
        ("https on 8443 to http: the new scheme's port", "scheme=http", "https://svc:8443/p", None, 302,
            "http://svc/p"),
        ("443 on http is written", "port=443", "http://echo/p", None, 302, "http://echo:443/p"),
        ("80 on https is written", "scheme=https port=80", "http://echo/p", None, 302, "https://echo:80/p"),
        ("nothing set: the same URL", "status=308", "http://echo:8080/a?b", None, 308, "http://echo:8080/a?b"),
    ]);
}

#[test]
fn paths() {
    // tests/httproute-redirect-path.yaml (and its mesh twin), then the edges.
    #[rustfmt::skip]
    check(&[
        ("prefix", "prefix=/replacement-prefix", "http://echo/original-prefix/lemon", Some("/original-prefix"),
            302, "http://echo/replacement-prefix/lemon"),
        ("full", "full=/full-path-replacement", "http://echo/full/path/original", Some("/full"), 302,
            "http://echo/full-path-replacement"),
        ("path and host", "host=example.org prefix=/replacement-prefix", "http://echo/path-and-host",
            Some("/path-and-host"), 302, "http://example.org/replacement-prefix"),
        ("path and status", "prefix=/replacement-prefix status=301", "http://echo/path-and-status",
            Some("/path-and-status"), 301, "http://echo/replacement-prefix"),
        ("full path and host", "host=example.org full=/replacement-full", "http://echo/full-path-and-host",
            Some("/full-path-and-host"), 302, "http://example.org/replacement-full"),
        ("full path and status", "full=/replacement-full status=301", "http://echo/full-path-and-status",
            Some("/full-path-and-status"), 301, "http://echo/replacement-full"),
        ("prefix to /", "prefix=/", "http://echo/strip", Some("/strip"), 302, "http://echo/"),
        ("prefix to / keeps the rest", "prefix=/", "http://echo/strip/a", Some("/strip"), 302, "http://echo/a"),
        ("prefix to empty", "prefix=", "http://echo/strip/a", Some("/strip"), 302, "http://echo/a"),
        ("trailing slash kept", "prefix=/new", "http://echo/old/a/", Some("/old"), 302, "http://echo/new/a/"),
        ("prefix with trailing slashes", "prefix=/new/", "http://echo/old/a", Some("/old/"), 302,
            "http://echo/new/a"),
        ("prefix / matched", "prefix=/v2", "http://echo/a", Some("/"), 302, "http://echo/v2/a"),
        ("query kept, prefix", "prefix=/r", "http://echo/o/lemon?a=1&b", Some("/o"), 302,
            "http://echo/r/lemon?a=1&b"),
        ("query kept, full", "full=/x", "http://echo/y?q=%20", None, 302, "http://echo/x?q=%20"),
        ("query kept, no path", "scheme=https", "http://echo:8080/y?q", None, 302, "https://echo/y?q"),
        ("empty query dropped", "scheme=https", "http://echo/y?", None, 302, "https://echo/y"),
        ("prefix without a prefix match", "prefix=/new", "http://echo/old/a", None, 302, "http://echo/old/a"),
        ("IPv6 host bracketed", "port=8080", "http://[::1]/a", None, 302, "http://[::1]:8080/a"),
    ]);
    // A host handed over without brackets gets them.
    let r = new(fields("port=8080")).unwrap();
    let req = RequestParts {
        scheme: "http",
        host: "fd00::1",
        port: None,
        path: "/a",
        query: None,
    };
    assert_eq!(r.location(&req, None), "http://[fd00::1]:8080/a");
}

#[test]
fn new_rejects_invalid_fields() {
    #[rustfmt::skip]
    let cases = [
        ("status=300", "requestRedirect.statusCode"),
        ("status=304", "requestRedirect.statusCode"),
        ("status=200", "requestRedirect.statusCode"),
        ("scheme=ftp", "requestRedirect.scheme"),
        ("scheme=HTTPS", "requestRedirect.scheme"),
        ("scheme=", "requestRedirect.scheme"),
        ("host=", "requestRedirect.hostname"),
        ("host=Example.org", "requestRedirect.hostname"),
        ("host=example.org:80", "requestRedirect.hostname"),
        ("host=example.org/x", "requestRedirect.hostname"),
        ("host=*.example.org", "requestRedirect.hostname"),
        ("host=-a.example.org", "requestRedirect.hostname"),
        ("host=a..org", "requestRedirect.hostname"),
        ("port=0", "requestRedirect.port"),
        ("full=x", "requestRedirect.path.replaceFullPath"),
        ("full=", "requestRedirect.path.replaceFullPath"),
        ("full=/a?b", "requestRedirect.path.replaceFullPath"),
        ("full=/a#b", "requestRedirect.path.replaceFullPath"),
        ("prefix=x/", "requestRedirect.path.replacePrefixMatch"),
        ("prefix=/a\u{7f}", "requestRedirect.path.replacePrefixMatch"),
    ];
    for (spec, field) in cases {
        let err = new(fields(spec)).unwrap_err();
        match &err {
            FilterError::Invalid { field: f, .. } => assert_eq!(f, field, "{spec}: {err}"),
            other => panic!("{spec}: {other:?}"),
        }
        assert!(err.to_string().starts_with(field), "{spec}: {err}");
    }
    // Values a space-separated spec cannot carry.
    for path in ["/a b", "/a\nb", "/a\tb"] {
        let err = Redirect::new(
            None,
            None,
            None,
            Some(PathModifier::Full(path.into())),
            None,
        );
        assert!(
            matches!(&err, Err(FilterError::Invalid { field, .. }) if field == "requestRedirect.path.replaceFullPath"),
            "{path:?}: {err:?}"
        );
    }
    let host = "a".repeat(64) + ".org";
    assert!(Redirect::new(None, Some(host), None, None, None).is_err());
}

#[test]
fn new_accepts_valid_fields() {
    for spec in [
        "",
        "scheme=http",
        "scheme=https host=a-b.example.org port=65535 status=308",
        "host=localhost port=1 prefix=",
        "host=10.0.0.1 prefix=/",
        "full=/",
        "full=/a/b%20c",
    ] {
        let r = new(fields(spec)).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(matches!(r.status, 301 | 302 | 303 | 307 | 308), "{spec}");
    }
    assert_eq!(new(fields("")).unwrap().status, 302, "default status");
}
