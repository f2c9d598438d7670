//! RequestAuthentication with inline JWKS: every algorithm, every rejection, token locations, header
//! outputs, several rules (`requires_any`), compile errors. Keys are generated here; time is fixed
//! (`authenticate_at`) so the `exp` / `nbf` / skew cases are exact. Remote JWKS: `jwt_remote.rs`.

#[path = "jwt/support.rs"]
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authz::jwt::{Authenticator, HeaderEdit, JwtError, JwtOptions, Verified};
use authz::model::{ClaimToHeader, JwtHeader, JwtRule, Named};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::{bearer, headers, jwks, merge, named, SigningKey};

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_700_000_000;

/// What a request authenticates as: a principal, nobody (no token), or a rejection.
type Principal = Result<Option<String>, JwtError>;

fn rule(issuer: &str, keys: &[&SigningKey]) -> JwtRule {
    JwtRule {
        issuer: issuer.into(),
        jwks: Some(jwks(keys)),
        ..Default::default()
    }
}

fn authenticator(rules: Vec<JwtRule>) -> Authenticator {
    Authenticator::compile(&[named("ra", rules)], &JwtOptions::default()).unwrap()
}

/// Standard claims merged with `extra`.
fn claims(extra: Value) -> Value {
    merge(
        json!({"iss": ISS, "sub": "alice", "exp": NOW + 3600}),
        extra,
    )
}

async fn check(
    a: &Authenticator,
    h: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Verified>, JwtError> {
    a.authenticate_at(h, query, UNIX_EPOCH + Duration::from_secs(NOW))
        .await
}

async fn principal(a: &Authenticator, h: &HeaderMap, query: Option<&str>) -> Principal {
    check(a, h, query)
        .await
        .map(|v| v.map(|v| v.auth.principal))
}

fn alice() -> Principal {
    Ok(Some(format!("{ISS}/alice")))
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    use Algorithm::*;
    let keys = [
        SigningKey::rsa(Some("r"), RS256),
        SigningKey::rsa(Some("r"), RS384),
        SigningKey::rsa(Some("r"), RS512),
        SigningKey::rsa(Some("r"), PS256),
        SigningKey::rsa(Some("r"), PS384),
        SigningKey::rsa(Some("r"), PS512),
        SigningKey::ec(Some("e"), ES256),
        SigningKey::ec(Some("e"), ES384),
        SigningKey::ed25519(Some("d")),
        SigningKey::ed25519(None),
    ];
    let stranger = SigningKey::ec(None, ES256);
    for key in &keys {
        let a = authenticator(vec![rule(ISS, &[key])]);
        let token = key.sign(&claims(json!({})));
        assert_eq!(
            principal(&a, &bearer(&token), None).await,
            alice(),
            "{:?}",
            key.alg
        );
        // The same token against a set whose only key has another kid or family: no key fits.
        let other = authenticator(vec![rule(ISS, &[&stranger])]);
        assert_eq!(
            principal(&other, &bearer(&token), None).await,
            Err(JwtError::UnknownKey),
            "{:?}",
            key.alg
        );
    }
}

#[tokio::test]
async fn rejections_table() {
    let key = SigningKey::ec(Some("k1"), Algorithm::ES256);
    let impostor = SigningKey::ec(Some("k1"), Algorithm::ES256);
    let unknown = SigningKey::ec(Some("k2"), Algorithm::ES256);
    let a = authenticator(vec![JwtRule {
        audiences: vec!["api".into()],
        ..rule(ISS, &[&key])
    }]);
    let ok = |extra: Value| key.sign(&merge(claims(json!({"aud": "api"})), extra));
    let valid = ok(json!({}));
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(json!({"aud": "api", "sub": "admin"})).to_string());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.x",
        b64(json!({"alg": "none"})),
        b64(claims(json!({"aud": "api"})))
    );
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(json!({"aud": "api"})),
        &jsonwebtoken::EncodingKey::from_secret(key.jwk.to_string().as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, String, Principal)> = vec![
        ("valid", valid.clone(), alice()),
        (
            "bad signature",
            impostor.sign(&claims(json!({"aud": "api"}))),
            Err(JwtError::BadSignature),
        ),
        ("tampered payload", tampered, Err(JwtError::BadSignature)),
        (
            "expired",
            ok(json!({"exp": NOW - 61})),
            Err(JwtError::Expired),
        ),
        ("expired within skew", ok(json!({"exp": NOW - 59})), alice()),
        (
            "nbf in the future",
            ok(json!({"nbf": NOW + 61})),
            Err(JwtError::NotYetValid),
        ),
        ("nbf within skew", ok(json!({"nbf": NOW + 59})), alice()),
        ("no exp", ok(json!({"exp": null})), alice()),
        (
            "wrong issuer",
            ok(json!({"iss": "https://evil.example"})),
            Err(JwtError::UnknownIssuer),
        ),
        (
            "no issuer",
            ok(json!({"iss": null})),
            Err(JwtError::UnknownIssuer),
        ),
        (
            "wrong audience",
            ok(json!({"aud": "web"})),
            Err(JwtError::AudienceMismatch),
        ),
        (
            "one audience of several",
            ok(json!({"aud": ["web", "api"]})),
            alice(),
        ),
        (
            "no audience",
            key.sign(&claims(json!({}))),
            Err(JwtError::AudienceMismatch),
        ),
        (
            "unknown kid",
            unknown.sign(&claims(json!({"aud": "api"}))),
            Err(JwtError::UnknownKey),
        ),
        (
            "malformed",
            "not-a-jwt".into(),
            Err(JwtError::Malformed("not three dot-separated parts")),
        ),
        ("alg none", alg_none, Err(JwtError::UnsupportedAlgorithm)),
        (
            "HS256 keyed with the public key",
            hs256,
            Err(JwtError::UnsupportedAlgorithm),
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(principal(&a, &bearer(&token), None).await, want, "{name}");
    }
    // No token, or an Authorization header of another scheme: not authenticated, not rejected.
    assert_eq!(principal(&a, &HeaderMap::new(), None).await, Ok(None));
    assert_eq!(
        principal(
            &a,
            &headers(&[("authorization", "Basic dXNlcjpwdw==")]),
            None
        )
        .await,
        Ok(None)
    );
    // Zero skew: one second late is expired.
    let strict = Authenticator::compile(
        &[named("ra", vec![rule(ISS, &[&key])])],
        &JwtOptions {
            clock_skew: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let late = key.sign(&claims(json!({"exp": NOW - 1})));
    assert_eq!(
        principal(&strict, &bearer(&late), None).await,
        Err(JwtError::Expired)
    );
    let now = SystemTime::now();
    let fresh = key.sign(&claims(
        json!({"exp": now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 60}),
    ));
    assert!(strict
        .authenticate(&bearer(&fresh), None)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn token_locations() {
    let key = SigningKey::ed25519(None);
    let t = key.sign(&claims(json!({})));
    let custom = authenticator(vec![JwtRule {
        from_headers: vec![JwtHeader {
            name: "x-jwt".into(),
            prefix: Some("Token ".into()),
        }],
        from_params: vec!["jwt".into()],
        from_cookies: vec!["session".into()],
        ..rule(ISS, &[&key])
    }]);
    let defaults = authenticator(vec![rule(ISS, &[&key])]);
    let q = |name: &str| format!("a=1&{name}={t}");
    let cases: Vec<(&Authenticator, HeaderMap, Option<String>, Principal)> = vec![
        (
            &custom,
            headers(&[("x-jwt", &format!("Token {t}"))]),
            None,
            alice(),
        ),
        (&custom, headers(&[("x-jwt", &t)]), None, Ok(None)),
        (&custom, HeaderMap::new(), Some(q("jwt")), alice()),
        (
            &custom,
            headers(&[("cookie", &format!("theme=dark; session={t}"))]),
            None,
            alice(),
        ),
        (&custom, bearer(&t), None, Ok(None)),
        (&custom, HeaderMap::new(), Some(q("access_token")), Ok(None)),
        (
            &custom,
            headers(&[("x-jwt", "Token garbage")]),
            None,
            Err(JwtError::Malformed("not three dot-separated parts")),
        ),
        (&defaults, bearer(&t), None, alice()),
        (
            &defaults,
            HeaderMap::new(),
            Some(q("access_token")),
            alice(),
        ),
        (
            &defaults,
            headers(&[("x-jwt", &t)]),
            Some(q("jwt")),
            Ok(None),
        ),
    ];
    for (i, (a, h, query, want)) in cases.into_iter().enumerate() {
        assert_eq!(principal(a, &h, query.as_deref()).await, want, "case {i}");
    }
}

#[tokio::test]
async fn header_outputs() {
    let key = SigningKey::ec(None, Algorithm::ES384);
    let c = claims(json!({"org": {"team": "payments"}, "level": 3}));
    let t = key.sign(&c);
    let payload = t.split('.').nth(1).unwrap().to_owned();
    let edits = |r: JwtRule, h: HeaderMap, q: Option<String>| async move {
        let a = authenticator(vec![r]);
        check(&a, &h, q.as_deref()).await.unwrap().unwrap().edits
    };
    let name = |s: &'static str| HeaderName::from_static(s);
    let set =
        |h: &'static str, v: &str| HeaderEdit::Set(name(h), HeaderValue::from_str(v).unwrap());
    // Default: the token header is not forwarded.
    assert_eq!(
        edits(rule(ISS, &[&key]), bearer(&t), None).await,
        [HeaderEdit::Remove(name("authorization"))]
    );
    // A token in the query is left in place (as Envoy does).
    assert_eq!(
        edits(
            rule(ISS, &[&key]),
            HeaderMap::new(),
            Some(format!("access_token={t}"))
        )
        .await,
        []
    );
    let forward = JwtRule {
        forward_original_token: true,
        ..rule(ISS, &[&key])
    };
    assert_eq!(edits(forward.clone(), bearer(&t), None).await, []);
    let with_outputs = JwtRule {
        output_payload_to_header: Some("x-jwt-payload".into()),
        output_claim_to_headers: vec![
            ClaimToHeader {
                header: "x-team".into(),
                claim: "org.team".into(),
            },
            ClaimToHeader {
                header: "x-level".into(),
                claim: "level".into(),
            },
            ClaimToHeader {
                header: "x-group".into(),
                claim: "group".into(),
            },
        ],
        ..forward
    };
    let got = edits(with_outputs, bearer(&t), None).await;
    assert_eq!(
        got,
        [
            set("x-jwt-payload", &payload),
            set("x-team", "payments"),
            set("x-level", "3"),
            HeaderEdit::Remove(name("x-group"))
        ]
    );
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&payload)
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&decoded).unwrap(), c);
}

#[tokio::test]
async fn several_rules_any_may_accept() {
    let ka = SigningKey::ec(Some("a"), Algorithm::ES256);
    let kb = SigningKey::ed25519(Some("b"));
    let iss_b = "https://b.example";
    let policies = [
        named(
            "first",
            vec![
                JwtRule {
                    audiences: vec!["one".into()],
                    ..rule(ISS, &[&ka])
                },
                JwtRule {
                    audiences: vec!["two".into()],
                    ..rule(ISS, &[&ka])
                },
            ],
        ),
        named(
            "second",
            vec![JwtRule {
                from_params: vec!["b".into()],
                ..rule(iss_b, &[&kb])
            }],
        ),
    ];
    let a = Authenticator::compile(&policies, &JwtOptions::default()).unwrap();
    let ta = |aud: &str| ka.sign(&claims(json!({"aud": aud})));
    let tb = kb.sign(&claims(json!({"iss": iss_b, "sub": "bob"})));
    let v = check(&a, &bearer(&ta("two")), None).await.unwrap().unwrap();
    assert_eq!(
        (v.auth.principal.as_str(), &*v.policy),
        (&*format!("{ISS}/alice"), "default/first")
    );
    assert_eq!(
        principal(&a, &bearer(&ta("three")), None).await,
        Err(JwtError::AudienceMismatch)
    );
    let v = check(&a, &HeaderMap::new(), Some(&format!("b={tb}")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.auth.principal.as_str(), &*v.policy),
        ("https://b.example/bob", "default/second")
    );
    // Issuer b's token where only the first policy looks: no rule for that issuer there.
    assert_eq!(
        principal(&a, &bearer(&tb), None).await,
        Err(JwtError::UnknownIssuer)
    );
    // One valid token is enough; an invalid one alone is rejected.
    let q = format!("b={tb}");
    assert_eq!(
        principal(&a, &bearer("x.y.z"), Some(&q)).await,
        Ok(Some("https://b.example/bob".into()))
    );
    assert!(principal(&a, &bearer("x.y.z"), None).await.is_err());
}

#[tokio::test]
async fn request_auth_facts() {
    let key = SigningKey::ed25519(None);
    let a = authenticator(vec![rule(ISS, &[&key])]);
    let t = key.sign(&claims(
        json!({"aud": ["api", "web"], "azp": "frontend", "groups": ["dev"], "org": {"id": 7}}),
    ));
    let auth = check(&a, &bearer(&t), None).await.unwrap().unwrap().auth;
    assert_eq!(auth.principal, format!("{ISS}/alice"));
    assert_eq!(auth.audiences, ["api", "web"]);
    assert_eq!(auth.presenter.as_deref(), Some("frontend"));
    assert_eq!(
        (
            auth.claims["groups"][0].as_str(),
            auth.claims["org"]["id"].as_i64()
        ),
        (Some("dev"), Some(7))
    );
}

#[test]
fn compile_errors_name_the_policy_and_field() {
    let key = SigningKey::ed25519(None);
    let base = rule(ISS, &[&key]);
    let remote = |uri: &str| JwtRule {
        jwks: None,
        jwks_uri: Some(uri.into()),
        ..base.clone()
    };
    let cases: Vec<(JwtRule, &str, &str)> = vec![
        (
            JwtRule {
                jwks: Some("{\"keys\": 3}".into()),
                ..base.clone()
            },
            "spec.jwtRules[1].jwks",
            "not a JWKS",
        ),
        (
            JwtRule {
                jwks: Some("{\"keys\": []}".into()),
                ..base.clone()
            },
            "spec.jwtRules[1].jwks",
            "no usable key",
        ),
        (
            JwtRule {
                issuer: String::new(),
                ..base.clone()
            },
            "spec.jwtRules[1].issuer",
            "required",
        ),
        (
            JwtRule {
                jwks: None,
                ..base.clone()
            },
            "spec.jwtRules[1].jwksUri",
            "required",
        ),
        (remote("not a uri"), "spec.jwtRules[1].jwksUri", "not a URI"),
        (
            remote("ftp://keys.example/jwks"),
            "spec.jwtRules[1].jwksUri",
            "not an http(s) URL",
        ),
        (
            remote("/jwks"),
            "spec.jwtRules[1].jwksUri",
            "not an http(s) URL",
        ),
        (
            JwtRule {
                timeout: Some("5 seconds".into()),
                ..remote("https://k.example/jwks")
            },
            "spec.jwtRules[1].timeout",
            "not a duration",
        ),
        (
            JwtRule {
                from_headers: vec![JwtHeader {
                    name: "bad header".into(),
                    prefix: None,
                }],
                ..base.clone()
            },
            "spec.jwtRules[1].fromHeaders[0].name",
            "not a header name",
        ),
        (
            JwtRule {
                from_cookies: vec!["a;b".into()],
                ..base.clone()
            },
            "spec.jwtRules[1].fromCookies[0]",
            "not a cookie name",
        ),
        (
            JwtRule {
                output_payload_to_header: Some("x y".into()),
                ..base.clone()
            },
            "spec.jwtRules[1].outputPayloadToHeader",
            "not a header name",
        ),
        (
            JwtRule {
                output_claim_to_headers: vec![ClaimToHeader {
                    header: "x-a".into(),
                    claim: String::new(),
                }],
                ..base.clone()
            },
            "spec.jwtRules[1].outputClaimToHeaders[0].claim",
            "empty",
        ),
    ];
    for (bad, field, reason) in cases {
        let policies = [Named {
            namespace: "shop".into(),
            ..named("api-jwt", vec![base.clone(), bad])
        }];
        let e = Authenticator::compile(&policies, &JwtOptions::default()).unwrap_err();
        assert_eq!(
            (e.policy.as_str(), e.field.as_str()),
            ("shop/api-jwt", field),
            "{e}"
        );
        assert!(e.reason.contains(reason), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("RequestAuthentication shop/api-jwt: {field}: ")),
            "{e}"
        );
    }
    // Inline keys win over a jwksUri, which is then not checked (as in Istio).
    let both = JwtRule {
        jwks_uri: Some("not a uri".into()),
        ..base.clone()
    };
    assert!(Authenticator::compile(&[named("ra", vec![both])], &JwtOptions::default()).is_ok());
    assert!(Authenticator::compile(&[], &JwtOptions::default())
        .unwrap()
        .is_empty());
}
