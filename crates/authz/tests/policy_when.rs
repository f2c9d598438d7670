//! `when` conditions: every supported key, `values` and `notValues`, absent attributes, nested and list
//! claims. One ALLOW policy with one rule; the request is allowed exactly when the rule matches.

mod policy_support;

use policy_support::*;

#[test]
fn when_headers() {
    table(&[
        ("{when: [{key: 'request.headers[x-user]', values: [bob]}]}", R::default().header("x-user", "bob"), true),
        ("{when: [{key: 'request.headers[X-User]', values: [bob]}]}", R::default().header("x-user", "bob"), true),
        ("{when: [{key: 'request.headers[x-user]', values: [bob]}]}", R::default().header("x-user", "Bob"), false),
        ("{when: [{key: 'request.headers[x-user]', values: ['b*']}]}", R::default().header("x-user", "bob"), true),
        ("{when: [{key: 'request.headers[x-user]', values: ['*']}]}", R::default().header("x-user", ""), true),
        ("{when: [{key: 'request.headers[x-user]', values: ['*']}]}", R::default(), false),
        ("{when: [{key: 'request.headers[x-user]', notValues: [bob]}]}", R::default(), true),
        ("{when: [{key: 'request.headers[x-user]', notValues: [bob]}]}", R::default().header("x-user", "bob"), false),
        // several values are matched joined with ',' (Envoy): no smuggling a second value past a match
        ("{when: [{key: 'request.headers[x-user]', values: [bob]}]}", R::default().header("x-user", "bob").header("x-user", "eve"), false),
        ("{when: [{key: 'request.headers[x-user]', values: ['bob,eve']}]}", R::default().header("x-user", "bob").header("x-user", "eve"), true),
        ("{when: [{key: 'request.headers[:authority]', values: ['svc.*']}]}", R::default(), true),
        // values and notValues together: both must hold
        ("{when: [{key: 'request.headers[x]', values: ['a*'], notValues: [ab]}]}", R::default().header("x", "ac"), true),
        ("{when: [{key: 'request.headers[x]', values: ['a*'], notValues: [ab]}]}", R::default().header("x", "ab"), false),
        // conditions are AND-ed
        ("{when: [{key: 'request.headers[a]', values: ['1']}, {key: 'request.headers[b]', values: ['2']}]}", R::default().header("a", "1"), false),
        ("{when: [{key: 'request.headers[a]', values: ['1']}, {key: 'request.headers[b]', values: ['2']}]}", R::default().header("a", "1").header("b", "2"), true),
    ]);
}

#[test]
fn when_connection_attributes() {
    table(&[
        (
            "{when: [{key: source.ip, values: [10.0.0.0/8]}]}",
            R::default(),
            true,
        ),
        (
            "{when: [{key: source.ip, notValues: [10.0.0.0/8]}]}",
            R::default(),
            false,
        ),
        (
            "{when: [{key: remote.ip, values: [1.2.3.4]}]}",
            R::default().remote("1.2.3.4"),
            true,
        ),
        (
            "{when: [{key: destination.ip, values: [10.96.0.0/12]}]}",
            R::default(),
            true,
        ),
        (
            "{when: [{key: destination.ip, values: [10.96.0.0/12]}]}",
            R::default().dest("10.1.0.1"),
            false,
        ),
        (
            "{when: [{key: destination.port, values: ['8080']}]}",
            R::default(),
            true,
        ),
        (
            "{when: [{key: destination.port, notValues: ['8080']}]}",
            R::default(),
            false,
        ),
        (
            "{when: [{key: source.namespace, values: [a]}]}",
            R::default(),
            true,
        ),
        (
            "{when: [{key: source.principal, values: ['*/sa/a']}]}",
            R::default(),
            true,
        ),
        (
            "{when: [{key: source.principal, values: ['*']}]}",
            R::plaintext(),
            false,
        ),
        // no SNI reaches the waypoint inside HBONE
        (
            "{when: [{key: connection.sni, values: ['*']}]}",
            R::default(),
            false,
        ),
        (
            "{when: [{key: connection.sni, notValues: [x]}]}",
            R::default(),
            true,
        ),
    ]);
}

#[test]
fn when_request_auth() {
    let claims = r#"{"iss": "https://idp", "groups": ["dev", "ops"], "org": {"team": {"name": "core"}}, "admin": true, "n": 3}"#;
    let jwt = || R::default().jwt("https://idp/alice", &["api", "web"], Some("cli"), claims);
    table(&[
        (
            "{when: [{key: request.auth.principal, values: [https://idp/alice]}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: request.auth.principal, values: ['*']}]}",
            R::default(),
            false,
        ),
        (
            "{when: [{key: request.auth.audiences, values: [web]}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: request.auth.audiences, values: [db]}]}",
            jwt(),
            false,
        ),
        (
            "{when: [{key: request.auth.presenter, values: [cli]}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: request.auth.presenter, values: ['*']}]}",
            R::default().jwt("i/s", &[], None, "{}"),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[iss]', values: ['https://idp']}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: 'request.auth.claims[groups]', values: [ops]}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: 'request.auth.claims[groups]', values: [root]}]}",
            jwt(),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[groups]', notValues: [ops]}]}",
            jwt(),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[org][team][name]', values: [core]}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: 'request.auth.claims[org][team]', values: ['*']}]}",
            jwt(),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[org][x][name]', values: [core]}]}",
            jwt(),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[admin]', values: ['true']}]}",
            jwt(),
            true,
        ),
        (
            "{when: [{key: 'request.auth.claims[n]', values: ['3']}]}",
            jwt(),
            false,
        ),
        // no JWT: no claim; the notValues form matches
        (
            "{when: [{key: 'request.auth.claims[groups]', values: ['*']}]}",
            R::default(),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[groups]', notValues: [ops]}]}",
            R::default(),
            true,
        ),
    ]);
}
