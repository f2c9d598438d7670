//! Each field of a rule, positive and `not*` forms, wildcard forms, absent attributes: one ALLOW policy with
//! one rule; the request is allowed exactly when the rule matches.

mod policy_support;

use policy_support::*;

#[test]
fn principals() {
    let bob = || R::from("b", "bob");
    table(&[
        (
            "{from: [{source: {principals: [cluster.local/ns/b/sa/bob]}}]}",
            bob(),
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/b/sa/alice]}}]}",
            bob(),
            false,
        ),
        (
            "{from: [{source: {principals: [x, cluster.local/ns/b/sa/bob]}}]}",
            bob(),
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/b/*]}}]}",
            bob(),
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/c/*]}}]}",
            bob(),
            false,
        ),
        (
            "{from: [{source: {principals: ['*/sa/bob']}}]}",
            bob(),
            true,
        ),
        (
            "{from: [{source: {principals: ['*/sa/bobby']}}]}",
            bob(),
            false,
        ),
        // `*`: any authenticated caller
        ("{from: [{source: {principals: ['*']}}]}", bob(), true),
        (
            "{from: [{source: {principals: ['*']}}]}",
            R::plaintext(),
            false,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/b/sa/BOB]}}]}",
            bob(),
            false,
        ),
        // not-forms: matches when no value does, and when there is no principal at all
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/b/sa/bob]}}]}",
            bob(),
            false,
        ),
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/b/sa/x]}}]}",
            bob(),
            true,
        ),
        (
            "{from: [{source: {notPrincipals: ['*']}}]}",
            R::plaintext(),
            true,
        ),
        ("{from: [{source: {notPrincipals: ['*']}}]}", bob(), false),
        (
            "{from: [{source: {notPrincipals: [x]}}]}",
            R::plaintext(),
            true,
        ),
        // both: must be in the list and not in the not-list
        (
            "{from: [{source: {principals: ['cluster.local/*'], notPrincipals: ['*/sa/bob']}}]}",
            bob(),
            false,
        ),
        (
            "{from: [{source: {principals: ['cluster.local/*'], notPrincipals: ['*/sa/x']}}]}",
            bob(),
            true,
        ),
    ]);
}

#[test]
fn namespaces() {
    table(&[
        (
            "{from: [{source: {namespaces: [b]}}]}",
            R::from("b", "x"),
            true,
        ),
        (
            "{from: [{source: {namespaces: [c]}}]}",
            R::from("b", "x"),
            false,
        ),
        (
            "{from: [{source: {namespaces: ['prod-*']}}]}",
            R::from("prod-eu", "x"),
            true,
        ),
        (
            "{from: [{source: {namespaces: ['*-eu']}}]}",
            R::from("prod-eu", "x"),
            true,
        ),
        (
            "{from: [{source: {namespaces: ['*']}}]}",
            R::from("b", "x"),
            true,
        ),
        (
            "{from: [{source: {namespaces: ['*']}}]}",
            R::plaintext(),
            false,
        ),
        (
            "{from: [{source: {notNamespaces: [b]}}]}",
            R::from("b", "x"),
            false,
        ),
        (
            "{from: [{source: {notNamespaces: [b]}}]}",
            R::from("c", "x"),
            true,
        ),
        (
            "{from: [{source: {notNamespaces: [b]}}]}",
            R::plaintext(),
            true,
        ),
    ]);
}

#[test]
fn ip_blocks_and_remote_ip_blocks() {
    table(&[
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            R::default().ip("10.2.3.4"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            R::default().ip("11.2.3.4"),
            false,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.7]}}]}",
            R::default().ip("10.0.0.7"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.7]}}]}",
            R::default().ip("10.0.0.8"),
            false,
        ),
        (
            "{from: [{source: {ipBlocks: ['fd00::/8']}}]}",
            R::default().ip("fd00::1"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            R::default().ip("::ffff:10.0.0.1"),
            true,
        ),
        (
            "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}",
            R::default().ip("10.0.0.1"),
            false,
        ),
        (
            "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}",
            R::default().ip("192.168.0.1"),
            true,
        ),
        // remoteIpBlocks read the original client address, not the peer
        (
            "{from: [{source: {remoteIpBlocks: [1.2.3.0/24]}}]}",
            R::default().remote("1.2.3.4"),
            true,
        ),
        (
            "{from: [{source: {remoteIpBlocks: [1.2.3.0/24]}}]}",
            R::default().ip("1.2.3.4"),
            false,
        ),
        (
            "{from: [{source: {notRemoteIpBlocks: [1.2.3.0/24]}}]}",
            R::default().remote("1.2.3.4"),
            false,
        ),
        (
            "{from: [{source: {notRemoteIpBlocks: [1.2.3.0/24]}}]}",
            R::default(),
            true,
        ),
    ]);
}

#[test]
fn request_principals() {
    let jwt = || R::default().jwt("https://idp/alice", &["api"], None, "{}");
    table(&[
        (
            "{from: [{source: {requestPrincipals: [https://idp/alice]}}]}",
            jwt(),
            true,
        ),
        (
            "{from: [{source: {requestPrincipals: [https://idp/bob]}}]}",
            jwt(),
            false,
        ),
        (
            "{from: [{source: {requestPrincipals: ['https://idp/*']}}]}",
            jwt(),
            true,
        ),
        (
            "{from: [{source: {requestPrincipals: ['*/alice']}}]}",
            jwt(),
            true,
        ),
        (
            "{from: [{source: {requestPrincipals: ['*']}}]}",
            jwt(),
            true,
        ),
        // no verified JWT: no request principal, whatever the headers say
        (
            "{from: [{source: {requestPrincipals: ['*']}}]}",
            R::default().header("authorization", "Bearer x"),
            false,
        ),
        (
            "{from: [{source: {notRequestPrincipals: ['*']}}]}",
            R::default(),
            true,
        ),
        (
            "{from: [{source: {notRequestPrincipals: ['*']}}]}",
            jwt(),
            false,
        ),
    ]);
}

#[test]
fn sources_are_or_ed_and_fields_and_ed() {
    let r = R::from("b", "bob").ip("10.0.0.1");
    table(&[
        (
            "{from: [{source: {namespaces: [x]}}, {source: {namespaces: [b]}}]}",
            r.clone(),
            true,
        ),
        (
            "{from: [{source: {namespaces: [b], ipBlocks: [10.0.0.0/8]}}]}",
            r.clone(),
            true,
        ),
        (
            "{from: [{source: {namespaces: [b], ipBlocks: [192.168.0.0/16]}}]}",
            r.clone(),
            false,
        ),
        (
            "{to: [{operation: {methods: [POST]}}, {operation: {paths: [/]}}]}",
            r.clone(),
            true,
        ),
        (
            "{to: [{operation: {methods: [GET], paths: [/x]}}]}",
            r.clone(),
            false,
        ),
        (
            "{from: [{source: {namespaces: [b]}}], to: [{operation: {methods: [POST]}}]}",
            r.clone(),
            false,
        ),
    ]);
}

#[test]
fn hosts() {
    table(&[
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local]}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local:8080]}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local:9090]}}]}",
            R::default(),
            false,
        ),
        (
            "{to: [{operation: {hosts: [SVC.ns.svc.CLUSTER.local]}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [example.com]}}]}",
            R::default().host("EXAMPLE.COM"),
            true,
        ),
        (
            "{to: [{operation: {hosts: ['*.cluster.local']}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {hosts: ['svc.*']}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {hosts: ['other.*']}}]}",
            R::default(),
            false,
        ),
        ("{to: [{operation: {hosts: ['*']}}]}", R::default(), true),
        (
            "{to: [{operation: {hosts: ['[::1]']}}]}",
            R::default().host("[::1]:80"),
            true,
        ),
        (
            "{to: [{operation: {notHosts: [svc.ns.svc.cluster.local]}}]}",
            R::default(),
            false,
        ),
        (
            "{to: [{operation: {notHosts: [other]}}]}",
            R::default(),
            true,
        ),
    ]);
}

#[test]
fn ports_and_methods() {
    table(&[
        ("{to: [{operation: {ports: ['8080']}}]}", R::default(), true),
        (
            "{to: [{operation: {ports: ['80', '443']}}]}",
            R::default(),
            false,
        ),
        (
            "{to: [{operation: {notPorts: ['8080']}}]}",
            R::default(),
            false,
        ),
        (
            "{to: [{operation: {notPorts: ['80']}}]}",
            R::default(),
            true,
        ),
        (
            "{to: [{operation: {methods: [GET, HEAD]}}]}",
            R::default(),
            true,
        ),
        ("{to: [{operation: {methods: [get]}}]}", R::default(), false),
        (
            "{to: [{operation: {methods: [POST]}}]}",
            R::default(),
            false,
        ),
        (
            "{to: [{operation: {methods: ['*']}}]}",
            R::default().method("PATCH"),
            true,
        ),
        (
            "{to: [{operation: {notMethods: [DELETE]}}]}",
            R::default().method("DELETE"),
            false,
        ),
        (
            "{to: [{operation: {notMethods: [DELETE]}}]}",
            R::default(),
            true,
        ),
    ]);
}

#[test]
fn paths_are_normalized_before_matching() {
    let deny_admin = |p: &str| {
        matches(
            "{to: [{operation: {notPaths: ['/admin', '/admin/*']}}]}",
            &R::default().path(p),
        )
    };
    // the request is allowed when it does NOT reach /admin after normalization
    for (path, allowed) in [
        ("/public", true),
        ("/admin", false),
        ("/admin/x", false),
        ("/admin?debug=1", false),
        ("/admin/../admin", false),
        ("//admin", false),
        ("/%61dmin", false),
        ("/public/%2e%2e/admin", false),
        ("/public/../admin/", false),
        ("/./admin", false),
        ("\\admin", false),
        ("/admin/.", false),
        ("/admin#x", false),
        // different resources for Istio too: case-sensitive, `;` kept, `%2F` kept escaped
        ("/ADMIN", true),
        ("/admin;x", true),
        ("/admin%2fx", true),
    ] {
        assert_eq!(deny_admin(path), allowed, "{path}");
    }
    table(&[
        (
            "{to: [{operation: {paths: [/api/v1]}}]}",
            R::default().path("/api/v1?x=1"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['/api/*']}}]}",
            R::default().path("/api/v1"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['/api/*']}}]}",
            R::default().path("/apiv1"),
            false,
        ),
        (
            "{to: [{operation: {paths: ['/admin*']}}]}",
            R::default().path("/admin;x"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['/admin*']}}]}",
            R::default().path("/admin%2fx"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['*.png']}}]}",
            R::default().path("/a/b.png?x"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['*']}}]}",
            R::default().path("/anything"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['/users/{*}/orders']}}]}",
            R::default().path("/users/7/orders"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['/users/{*}/orders']}}]}",
            R::default().path("/users/7/x/orders"),
            false,
        ),
        (
            "{to: [{operation: {paths: ['/static/{**}']}}]}",
            R::default().path("/static/a/b.js"),
            true,
        ),
        ("{to: [{operation: {paths: [/x]}}]}", R::l4(), false),
        ("{to: [{operation: {notPaths: [/x]}}]}", R::l4(), true),
    ]);
}
