//! JWT fixtures: Ed25519 signing keys made in the test (ring), tokens signed with them, and a real JWKS server
//! over HTTP on 127.0.0.1:0 whose key set the test switches (a rotation) and whose fetches it counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// The issuer of every test token.
pub const ISS: &str = "https://issuer.example";
/// The audience the RequestAuthentications require.
pub const AUD: &str = "shop";

/// An Ed25519 key (`EdDSA`) with its `kid`.
pub struct Key {
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl Key {
    pub fn new(kid: &str) -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        Key {
            kid: kid.into(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pkcs8"),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": self.kid,
            "x": B64.encode(self.pair.public_key().as_ref())})
    }

    /// A token with `claims`, signed by this key and naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A valid token for `sub` (issuer [`ISS`], audience [`AUD`], 10 minutes left) with `extra` claims.
    pub fn token(&self, sub: &str, extra: Value) -> String {
        self.sign(&claims(sub, now() + 600, extra))
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// `iss`, `aud`, `sub`, `iat`, `exp` plus `extra`'s members.
pub fn claims(sub: &str, exp: u64, extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now() - 5, "exp": exp});
    for (k, v) in extra.as_object().expect("an object") {
        c[k] = v.clone();
    }
    c
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// A JWKS server on 127.0.0.1:0 answering the current document; stops when dropped.
pub struct JwksServer {
    pub uri: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(keys: &[&Key]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(jwks(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let doc = b.lock().expect("jwks lock").clone();
                        async move {
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(doc)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        JwksServer {
            uri: format!("http://{addr}/.well-known/jwks.json"),
            body,
            hits,
            task,
        }
    }

    /// Publishes another key set (a rotation).
    pub fn serve(&self, keys: &[&Key]) {
        *self.body.lock().expect("jwks lock") = jwks(keys);
    }

    /// Fetches answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A RequestAuthentication `name` in `shop` on Service `api` with one rule for [`ISS`]: `source` is
/// `jwks: '<json>'` or `jwksUri: <uri>`; `extra` more rule fields (YAML, indented four spaces).
pub fn request_authentication(name: &str, source: &str, extra: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: api}}]
  jwtRules:
  - issuer: {ISS}
    audiences: [{AUD}]
    {source}
{extra}
---
"
    )
}
