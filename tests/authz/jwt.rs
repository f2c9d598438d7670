//! RequestAuthentication through the running waypoint: a valid token lets its request principal and claims be
//! matched by the AuthorizationPolicy; a token that does not verify (bad signature, expired, wrong audience,
//! garbage) is 401 with `www-authenticate`; no token passes authentication and meets the policy (403 when it
//! requires a request principal); keys inline (`jwks`) or fetched (`jwksUri`), rotated while the waypoint runs.

use serde_json::json;

use super::tokens::{self, Key, ISS};
use super::*;

fn bearer(path: &str, token: &str) -> Req {
    Req::get(API, path).header("authorization", &format!("Bearer {token}"))
}

/// Asserts the JWT rejection: 401, `www-authenticate: Bearer ...`, Envoy's wording, the app not reached.
#[track_caller]
fn assert_unauthenticated(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", verdict(r));
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: www-authenticate {challenge:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim_end(),
        "Jwt verification fails",
        "{what}"
    );
    assert!(r.echo.is_none(), "{what}: the application answered");
}

/// ALLOW on api: `/me` for any verified token; everything for `alice`, for a `role: admin` claim, or for the
/// nested claim `realm.team: ops`.
fn allow_policy() -> String {
    policy(
        "allow-jwt",
        &service("api"),
        &format!(
            "  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: [/me]}}}}]
  - from: [{{source: {{requestPrincipals: [\"{ISS}/alice\"]}}}}]
  - when: [{{key: \"request.auth.claims[role]\", values: [admin]}}]
  - when: [{{key: \"request.auth.claims[realm][team]\", values: [ops]}}]"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_jwks_tokens_and_claims_decide() {
    let key = Key::new("k1");
    let ra = tokens::request_authentication(
        "jwt",
        &format!("jwks: '{}'", tokens::jwks(&[&key])),
        "    outputPayloadToHeader: x-jwt-payload",
    );
    let tb = mesh(&format!("{ra}{}", allow_policy())).await;
    let (alice, bob) = (key.token("alice", json!({})), key.token("bob", json!({})));
    let admin = key.token("carol", json!({"role": "admin"}));
    let ops = key.token("dave", json!({"realm": {"team": "ops"}}));

    // Valid tokens: the request principal and the claims are what the policy matches.
    let mut seen = vec![];
    for (who, token, path) in [
        ("alice", &alice, "/orders"),
        ("bob", &bob, "/me"),
        ("bob", &bob, "/orders"),
        ("carol (role admin)", &admin, "/orders"),
        ("dave (realm.team ops)", &ops, "/orders"),
    ] {
        let r = send(&tb, "frontend", bearer(path, token)).await;
        seen.push(format!("{who} {path}: {}", verdict(&r)));
    }
    assert_eq!(
        seen,
        [
            "alice /orders: 200 api-0",
            "bob /me: 200 api-0",
            "bob /orders: 403 RBAC",
            "carol (role admin) /orders: 200 api-0",
            "dave (realm.team ops) /orders: 200 api-0",
        ]
    );
    // What the application got: no token (forwardOriginalToken is false), the payload as asked.
    let r = send(&tb, "frontend", bearer("/orders", &alice)).await;
    let e = r.echo();
    assert_eq!(
        e.header("authorization"),
        None,
        "the token is not forwarded"
    );
    let payload = e.header("x-jwt-payload").expect("outputPayloadToHeader");
    assert!(
        payload.len() > 20 && !payload.contains('.'),
        "base64url of the payload: {payload:?}"
    );

    // The token in the default query parameter `access_token` works too.
    let r = get(&tb, "frontend", API, &format!("/me?access_token={bob}")).await;
    assert_eq!(verdict(&r), "200 api-0");

    // No token: authentication passes, the policy needs a request principal.
    assert_rbac_denied(&get(&tb, "frontend", API, "/me").await, "no token");

    // Tokens that do not verify: 401, whatever the policy would say.
    let other = Key::new("k1"); // same kid, another key: a bad signature
    let expired = key.sign(&tokens::claims("alice", tokens::now() - 3600, json!({})));
    let wrong_aud = key.sign(&tokens::claims(
        "alice",
        tokens::now() + 600,
        json!({"aud": "bank"}),
    ));
    let unknown_iss = key.sign(&tokens::claims(
        "alice",
        tokens::now() + 600,
        json!({"iss": "https://evil.example"}),
    ));
    let mut tampered = alice.clone();
    tampered.insert(alice.find('.').unwrap() + 2, 'x');
    for (what, token) in [
        ("bad signature", other.token("alice", json!({}))),
        ("expired an hour ago", expired),
        ("wrong audience", wrong_aud),
        ("unknown issuer", unknown_iss),
        ("tampered payload", tampered),
        ("not a JWT", "abc.def".to_string()),
    ] {
        let r = send(&tb, "frontend", bearer("/me", &token)).await;
        assert_unauthenticated(&r, what);
    }
    assert_eq!(
        tb.echo("api-0").requests(),
        6,
        "only the verified and allowed requests reached the app"
    );

    // web has no RequestAuthentication: a token there is just a header, passed on untouched.
    let r = send(
        &tb,
        "frontend",
        Req::get(WEB, "/").header("authorization", "Bearer abc.def"),
    )
    .await;
    assert_eq!(verdict(&r), "200 web-0");
    assert_eq!(r.echo().header("authorization"), Some("Bearer abc.def"));
    tb.shutdown().await;
}

/// Waits (bounded) until the JWKS server answered `at_least` fetches.
async fn fetched(server: &tokens::JwksServer, at_least: usize) {
    let patience = std::time::Duration::from_secs(10);
    let ok = waypoint::testbed::eventually(patience, || server.hits() >= at_least).await;
    assert!(
        ok,
        "JWKS fetched {} times, expected {at_least}",
        server.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_keys_rotate_through_the_running_waypoint() {
    let (old, new) = (Key::new("2024"), Key::new("2025"));
    let server = tokens::JwksServer::start(&[&old]).await;
    let ra = tokens::request_authentication("jwt", &format!("jwksUri: {}", server.uri), "");
    let require = policy(
        "require-jwt",
        &service("api"),
        "  action: ALLOW\n  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]",
    );
    let tb = mesh(&format!("{ra}{require}")).await;
    fetched(&server, 1).await;

    let r = send(&tb, "frontend", bearer("/", &old.token("alice", json!({})))).await;
    assert_eq!(verdict(&r), "200 api-0", "a token of the published key");
    let expired = old.sign(&tokens::claims("alice", tokens::now() - 600, json!({})));
    assert_unauthenticated(
        &send(&tb, "frontend", bearer("/", &expired)).await,
        "expired",
    );
    assert_rbac_denied(&get(&tb, "frontend", API, "/").await, "no token");
    let before = server.hits();

    // The issuer rotates: only the new key is published. The first token naming the new kid makes the waypoint
    // refetch at once (no restart, no wait for the 20-minute refresh) and is accepted.
    server.serve(&[&new]);
    let r = send(&tb, "frontend", bearer("/", &new.token("alice", json!({})))).await;
    assert_eq!(verdict(&r), "200 api-0", "a token of the rotated-in key");
    assert_eq!(server.hits(), before + 1, "exactly one refetch");
    // The retired key's tokens are refused now (its kid is gone; refetches are rate-limited, so no new fetch).
    let r = send(&tb, "frontend", bearer("/", &old.token("alice", json!({})))).await;
    assert_unauthenticated(&r, "a token of the retired key");
    assert_eq!(
        server.hits(),
        before + 1,
        "a retired kid does not hammer the issuer"
    );
    // And the new key keeps working without further fetches.
    let r = send(&tb, "frontend", bearer("/", &new.token("bob", json!({})))).await;
    assert_eq!(verdict(&r), "200 api-0");
    assert_eq!(server.hits(), before + 1);
    tb.shutdown().await;
}
