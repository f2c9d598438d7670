//! RequestAuthentication with `jwksUri`: a real JWKS server over HTTP (and HTTPS with a CA made here) on
//! 127.0.0.1:0. First fetch shared by concurrent requests, key rotation (unknown-`kid` refetch and periodic
//! refresh), refetch rate limit, server down (last good kept; first fetch failing fails closed), hanging and
//! malformed or oversized JWKS, TLS trust, reuse across recompiles.

#[path = "jwt/support.rs"]
mod support;

use std::time::{Duration, Instant};

use authz::jwt::{Authenticator, JwtError, JwtOptions};
use authz::model::{JwtRule, Named, RequestAuthenticationSpec};
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::{bearer, named, Answer, JwksServer, SigningKey};

const ISS: &str = "https://issuer.example";
/// How long an eventually-true condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn policies(uri: &str, timeout: Option<&str>) -> Vec<Named<RequestAuthenticationSpec>> {
    let rule = JwtRule {
        issuer: ISS.into(),
        jwks_uri: Some(uri.into()),
        timeout: timeout.map(str::to_owned),
        ..Default::default()
    };
    vec![named("remote", vec![rule])]
}

fn compile(uri: &str, opts: &JwtOptions) -> Authenticator {
    Authenticator::compile(&policies(uri, None), opts).unwrap()
}

/// Options for tests: refetch on every unknown kid, quick retries.
fn quick() -> JwtOptions {
    JwtOptions {
        kid_refetch_interval: Duration::ZERO,
        retry_backoff: Duration::from_millis(20),
        fetch_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

fn token(key: &SigningKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    key.sign(&json!({"iss": ISS, "sub": "alice", "exp": exp}))
}

async fn verdict(a: &Authenticator, token: &str) -> Result<bool, JwtError> {
    a.authenticate(&bearer(token), None)
        .await
        .map(|v| v.is_some())
}

/// Polls `f` until it holds, failing the test after [`PATIENCE`].
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + PATIENCE;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn first_fetch_is_shared_and_waited_for() {
    let key = SigningKey::ec(Some("a"), Algorithm::ES256);
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&key]))).await;
    let a = compile(&server.uri, &quick());
    let t = token(&key);
    let results = futures_join_all((0..8).map(|_| verdict(&a, &t))).await;
    assert!(results.iter().all(|r| *r == Ok(true)), "{results:?}");
    assert_eq!(server.hits(), 1);
    assert_eq!(a.jwks_status()[0].keys, Some(1));
}

#[tokio::test]
async fn rotation_by_unknown_kid_refetch() {
    let (old, new) = (
        SigningKey::ec(Some("old"), Algorithm::ES256),
        SigningKey::ed25519(Some("new")),
    );
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&old]))).await;
    let a = compile(&server.uri, &quick());
    assert_eq!(verdict(&a, &token(&old)).await, Ok(true));
    server.serve_keys(&[&new]);
    // The new kid is unknown: one refetch, then it verifies.
    assert_eq!(verdict(&a, &token(&new)).await, Ok(true));
    assert_eq!(server.hits(), 2);
    // The old key is gone from the refreshed set.
    assert_eq!(verdict(&a, &token(&old)).await, Err(JwtError::UnknownKey));
}

#[tokio::test]
async fn rotation_by_periodic_refresh() {
    // Keys without kid: nothing triggers a refetch, only the refresh interval brings the new set.
    let (old, new) = (
        SigningKey::ec(None, Algorithm::ES256),
        SigningKey::ec(None, Algorithm::ES256),
    );
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&old]))).await;
    let opts = JwtOptions {
        refresh_interval: Duration::from_millis(100),
        ..quick()
    };
    let a = compile(&server.uri, &opts);
    assert_eq!(verdict(&a, &token(&old)).await, Ok(true));
    assert_eq!(verdict(&a, &token(&new)).await, Err(JwtError::BadSignature));
    server.serve_keys(&[&new]);
    eventually("the new key verifies", async || {
        verdict(&a, &token(&new)).await == Ok(true)
    })
    .await;
    assert_eq!(verdict(&a, &token(&old)).await, Err(JwtError::BadSignature));
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let key = SigningKey::ec(Some("a"), Algorithm::ES256);
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&key]))).await;
    let opts = JwtOptions {
        kid_refetch_interval: Duration::from_secs(3600),
        ..quick()
    };
    let a = compile(&server.uri, &opts);
    assert_eq!(verdict(&a, &token(&key)).await, Ok(true));
    let stranger = |kid: &str| token(&SigningKey::ec(Some(kid), Algorithm::ES256));
    assert_eq!(verdict(&a, &stranger("x")).await, Err(JwtError::UnknownKey));
    assert_eq!(server.hits(), 2, "the first unknown kid refetches");
    for kid in ["y", "z", "w"] {
        assert_eq!(verdict(&a, &stranger(kid)).await, Err(JwtError::UnknownKey));
    }
    assert_eq!(
        server.hits(),
        2,
        "later unknown kids within the interval do not"
    );
}

#[tokio::test]
async fn server_down_keeps_the_last_good_set() {
    let key = SigningKey::ed25519(Some("a"));
    let mut server = JwksServer::http(Answer::Body(200, support::jwks(&[&key]))).await;
    let a = compile(&server.uri, &quick());
    assert_eq!(verdict(&a, &token(&key)).await, Ok(true));
    server.stop().await;
    // An unknown kid makes it refetch; the fetch fails; the loaded set stays.
    assert_eq!(
        verdict(&a, &token(&SigningKey::ed25519(Some("b")))).await,
        Err(JwtError::UnknownKey)
    );
    assert_eq!(verdict(&a, &token(&key)).await, Ok(true));
    let status = &a.jwks_status()[0];
    assert_eq!(status.keys, Some(1));
    assert!(status.last_error.is_some(), "{status:?}");
}

#[tokio::test]
async fn first_fetch_failing_fails_closed_then_recovers() {
    let key = SigningKey::ec(Some("a"), Algorithm::ES384);
    let server = JwksServer::http(Answer::Body(503, "busy".into())).await;
    let a = compile(&server.uri, &quick());
    assert_eq!(
        verdict(&a, &token(&key)).await,
        Err(JwtError::JwksUnavailable)
    );
    let status = &a.jwks_status()[0];
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("503"),
        "{status:?}"
    );
    // A request without a token is not affected.
    assert_eq!(a.authenticate(&HeaderMap::new(), None).await, Ok(None));
    // The fetcher retries with backoff and picks the set up once the server is healthy.
    server.serve_keys(&[&key]);
    eventually("the retry loads the set", async || {
        verdict(&a, &token(&key)).await == Ok(true)
    })
    .await;
}

#[tokio::test]
async fn refused_connection_fails_closed() {
    let mut server = JwksServer::http(Answer::Body(200, "{}".into())).await;
    server.stop().await;
    let a = compile(&server.uri, &quick());
    let key = SigningKey::ed25519(None);
    assert_eq!(
        verdict(&a, &token(&key)).await,
        Err(JwtError::JwksUnavailable)
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn a_hanging_server_costs_at_most_the_fetch_timeout() {
    let server = JwksServer::http(Answer::Hang).await;
    let a = Authenticator::compile(&policies(&server.uri, Some("300ms")), &quick()).unwrap();
    let started = Instant::now();
    let key = SigningKey::ed25519(None);
    assert_eq!(
        verdict(&a, &token(&key)).await,
        Err(JwtError::JwksUnavailable)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(a.jwks_status()[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("no answer within"));
}

#[tokio::test]
async fn malformed_or_oversized_jwks_is_refused() {
    let key = SigningKey::ec(Some("a"), Algorithm::ES256);
    let opts = JwtOptions {
        max_jwks_bytes: 2048,
        ..quick()
    };
    let cases = [
        ("not json".to_string(), "not a JWKS"),
        (json!({"keys": 5}).to_string(), "not a JWKS"),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "!!", "y": "!!"}]}).to_string(),
            "keys[0]",
        ),
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
            "no usable key",
        ),
        (
            format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(4096)),
            "at most 2048 bytes",
        ),
    ];
    for (body, error) in cases {
        let server = JwksServer::http(Answer::Body(200, body)).await;
        let a = compile(&server.uri, &opts);
        assert_eq!(
            verdict(&a, &token(&key)).await,
            Err(JwtError::JwksUnavailable),
            "{error}"
        );
        let status = &a.jwks_status()[0];
        assert!(
            status.last_error.as_deref().unwrap_or("").contains(error),
            "{status:?}"
        );
    }
    // A malformed set published after a good one: the good one stays.
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&key]))).await;
    let a = compile(&server.uri, &opts);
    assert_eq!(verdict(&a, &token(&key)).await, Ok(true));
    server.set(Answer::Body(200, "{".into()));
    assert_eq!(
        verdict(&a, &token(&SigningKey::ec(Some("b"), Algorithm::ES256))).await,
        Err(JwtError::UnknownKey)
    );
    assert_eq!(server.hits(), 2);
    assert_eq!(verdict(&a, &token(&key)).await, Ok(true));
}

#[tokio::test]
async fn https_jwks_is_trusted_only_through_the_configured_roots() {
    let key = SigningKey::ed25519(Some("a"));
    let (server, client_tls) = JwksServer::https(Answer::Body(200, support::jwks(&[&key]))).await;
    assert!(server.uri.starts_with("https://127.0.0.1:"));
    let trusted = compile(
        &server.uri,
        &JwtOptions {
            tls: Some(client_tls),
            ..quick()
        },
    );
    assert_eq!(verdict(&trusted, &token(&key)).await, Ok(true));
    // The public web roots do not know the test CA.
    let public = compile(&server.uri, &quick());
    assert_eq!(
        verdict(&public, &token(&key)).await,
        Err(JwtError::JwksUnavailable)
    );
    let status = &public.jwks_status()[0];
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("certificate"),
        "{status:?}"
    );
}

#[tokio::test]
async fn recompiling_reuses_the_loaded_set_and_dropping_stops_the_fetcher() {
    let key = SigningKey::ec(Some("a"), Algorithm::ES256);
    let server = JwksServer::http(Answer::Body(200, support::jwks(&[&key]))).await;
    let opts = JwtOptions {
        refresh_interval: Duration::from_millis(50),
        ..quick()
    };
    let first = compile(&server.uri, &opts);
    assert_eq!(verdict(&first, &token(&key)).await, Ok(true));
    let second =
        Authenticator::compile_reusing(&policies(&server.uri, None), &opts, Some(&first)).unwrap();
    drop(first);
    assert_eq!(
        second.jwks_status()[0].keys,
        Some(1),
        "loaded before any request"
    );
    assert_eq!(verdict(&second, &token(&key)).await, Ok(true));
    // The refresh keeps going while an authenticator holds the set ...
    let seen = server.hits();
    eventually("a periodic refresh", async || server.hits() > seen).await;
    // ... and stops with the last one.
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = server.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.hits(),
        after_drop,
        "no fetch after the authenticator is gone"
    );
}

/// Runs the futures concurrently on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}
