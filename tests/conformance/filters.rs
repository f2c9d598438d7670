//! Filters, rule level and backend level: request and response header modifiers, redirects (each field, each
//! status, `Location` asserted), URL rewrites (asserting what the echo saw), and request mirrors (the shadow
//! gets a copy, the client the primary's answer, unslowed; percent and fraction).

use std::time::Duration;

use waypoint::testbed::eventually;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_modifier_sets_adds_and_removes() {
    let tb = mesh(&http_route(
        "request-headers",
        "  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: new}, {name: x-fresh, value: fresh}]
        add: [{name: x-add, value: b}]
        remove: [x-remove]
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let r = send(
        &tb,
        Req::get(ECHO, "/")
            .header("x-set", "old")
            .header("x-add", "a")
            .header("x-remove", "gone")
            .header("x-untouched", "kept"),
    )
    .await;
    let e = r.echo();
    assert_eq!(e.header_values("x-set"), ["new"]);
    assert_eq!(e.header_values("x-fresh"), ["fresh"]);
    assert_eq!(e.header_values("x-add"), ["a", "b"]);
    assert_eq!(e.header("x-remove"), None);
    assert_eq!(e.header("x-untouched"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_modifier_sets_adds_and_removes() {
    let tb = mesh(&http_route(
        "response-headers",
        "  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp-set, value: new}]
        add: [{name: x-resp-add, value: b}]
        remove: [x-resp-remove]
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let r = send(
        &tb,
        Req::get(ECHO, "/")
            .header("x-echo-set-header", "x-resp-set=old")
            .header("x-echo-set-header", "x-resp-add=a")
            .header("x-echo-set-header", "x-resp-remove=1"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_values("x-resp-set"), ["new"]);
    assert_eq!(r.header_values("x-resp-add"), ["a", "b"]);
    assert_eq!(r.header("x-resp-remove"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_level_request_header_modifier() {
    let tb = mesh(&http_route(
        "backend-filters",
        "  - backendRefs:
    - name: echo-v1
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: v1}]}}
    - name: echo-v2
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: v2}]}}
",
    ))
    .await;
    let results = client(&tb).send_many(&Req::get(ECHO, "/"), 40, 2).await;
    let mut seen = BTreeMap::<String, u64>::new();
    for r in results {
        let r = r.expect("answer");
        let e = r.echo();
        let want = e.pod.trim_start_matches("echo-").trim_end_matches("-0");
        assert_eq!(e.header("x-backend"), Some(want), "{}", e.pod);
        *seen.entry(e.pod.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
}

const HOST: &str = ECHO;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_each_field() {
    let tb = mesh(&http_route(
        "redirects",
        "  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /hostname}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}}]
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /all}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: example.org, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /everything}}
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let cases = [
        ("/scheme", 302, format!("https://{HOST}/scheme")),
        ("/hostname/x", 302, "http://example.org/hostname/x".into()),
        ("/port", 302, format!("http://{HOST}:8083/port")),
        ("/full/a/b", 302, format!("http://{HOST}/replaced")),
        ("/prefix/one/two", 302, format!("http://{HOST}/new/one/two")),
        ("/all/x", 301, "https://example.org:8443/everything".into()),
    ];
    let mut wrong = vec![];
    for (path, status, location) in cases {
        let r = get(&tb, path).await;
        let got = (r.status, r.header("location").unwrap_or("-").to_string());
        if got != (status, location.clone()) {
            wrong.push(format!(
                "{path}: want {status} {location}, got {got:?} ({})",
                outcome(&r)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        tb.echo("echo-v1-0").requests(),
        0,
        "redirects never reach a backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect_status_codes() {
    let mut rules = String::new();
    for code in [301, 302, 303, 307, 308] {
        rules.push_str(&format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /s{code}}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: example.org, statusCode: {code}}}}}]
"
        ));
    }
    let tb = mesh(&http_route("status-codes", &rules)).await;
    for code in [301, 302, 303, 307, 308] {
        let r = get(&tb, &format!("/s{code}")).await;
        assert_eq!(r.status, code);
        assert_eq!(
            r.header("location"),
            Some(format!("http://example.org/s{code}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_hostname_and_full_path() {
    let tb = mesh(&http_route(
        "rewrite",
        "  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let host = get(&tb, "/host/x?q=1").await;
    assert_eq!(host.echo().host, "rewritten.example");
    assert_eq!(host.echo().path, "/host/x?q=1");
    let full = get(&tb, "/full/a/b?x=y").await;
    assert_eq!(full.echo().path, "/one?x=y");
    assert_eq!(full.echo().host, ECHO, "the host is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_prefix() {
    let tb = mesh(&http_route(
        "rewrite-prefix",
        "  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let cases = [
        ("/prefix/one/two", "/new/one/two"),
        ("/prefix", "/new"),
        ("/prefix/", "/new/"),
        ("/prefix/one?q=1", "/new/one?q=1"),
        ("/strip/x", "/x"),
        ("/strip", "/"),
    ];
    let mut wrong = vec![];
    for (sent, want) in cases {
        let r = get(&tb, sent).await;
        let got = r.echo.as_ref().map_or(outcome(&r), |e| e.path.clone());
        if got != want {
            wrong.push(format!("{sent}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

const MIRRORS: &str = "  - matches: [{path: {type: PathPrefix, value: /one}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /two}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v3, port: 80}}}
    backendRefs: [{name: echo-v1, port: 80}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mirror_copies_without_slowing_the_request() {
    let tb = mesh(&http_route("mirror", MIRRORS)).await;
    // The shadow takes 3 s to answer; the client must not wait for it.
    let slow_shadow = |path: &str| {
        Req::get(ECHO, path)
            .header("x-echo-controls-for", "echo-v2-0")
            .header("x-echo-delay-ms", "3000")
    };
    let r = send(&tb, slow_shadow("/one?copy=1").header("x-marker", "m1")).await;
    assert_eq!(
        outcome(&r),
        "echo-v1-0",
        "the client gets the primary's answer"
    );
    assert!(
        r.elapsed < Duration::from_millis(1500),
        "took {:?}",
        r.elapsed
    );
    let copied = |pod: &str, path: &str| {
        tb.echo(pod)
            .seen()
            .iter()
            .any(|e| e.path == path && e.method == "GET")
    };
    assert!(
        eventually(Duration::from_secs(5), || copied(
            "echo-v2-0",
            "/one?copy=1"
        ))
        .await,
        "the shadow never saw the copy"
    );
    let copy = tb.echo("echo-v2-0").seen().into_iter().next().unwrap();
    assert_eq!(copy.header("x-marker"), Some("m1"));
    assert_eq!(tb.echo("echo-v3-0").requests(), 0);

    let r = send(&tb, Req::get(ECHO, "/two")).await;
    assert_eq!(outcome(&r), "echo-v1-0");
    for shadow in ["echo-v2-0", "echo-v3-0"] {
        assert!(
            eventually(Duration::from_secs(5), || copied(shadow, "/two")).await,
            "{shadow} never saw its copy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mirror_percent_and_fraction() {
    let tb = mesh(&http_route(
        "mirror-share",
        "  - matches: [{path: {type: PathPrefix, value: /percent}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, percent: 50}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /fraction}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v3, port: 80}, fraction: {numerator: 1, denominator: 4}}}]
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let n = 400;
    for (path, shadow, p) in [
        ("/percent", "echo-v2-0", 0.5),
        ("/fraction", "echo-v3-0", 0.25),
    ] {
        let counts = tally(&tb, &Req::get(ECHO, path), n).await;
        assert_eq!(counts.get("echo-v1-0"), Some(&(n as u64)), "{counts:?}");
        let echo = tb.echo(shadow);
        let copies = settled(Duration::from_millis(500), Duration::from_secs(10), || {
            echo.requests()
        })
        .await;
        let copies = BTreeMap::from([("copies".to_string(), copies)]);
        assert_share(&copies, "copies", n, p);
    }
}
