//! Fixtures for the JWT tests: signing keys generated in the test (RSA, P-256, P-384, Ed25519) with their
//! public JWKs, token signing, and a real JWKS server over HTTP or HTTPS on 127.0.0.1:0 whose answer the
//! test changes (keys, status, malformed body, hanging, stopped).

#![allow(dead_code)] // shared by two test binaries, each using a part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use authz::model::{JwtRule, Named, RequestAuthenticationSpec};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// A private key able to sign tokens and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

/// One RSA key per test binary (RSA key generation is slow in debug builds); `kid` set per use.
static RSA: LazyLock<(Vec<u8>, Value)> = LazyLock::new(|| {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let jwk = json!({"kty": "RSA", "n": B64.encode(key.n().to_bytes_be()), "e": B64.encode(key.e().to_bytes_be())});
    (key.to_pkcs1_der().unwrap().as_bytes().to_vec(), jwk)
});

impl SigningKey {
    fn with_kid(mut jwk: Value, kid: Option<&str>) -> Value {
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    pub fn rsa(kid: Option<&str>, alg: Algorithm) -> Self {
        let (der, jwk) = &*RSA;
        SigningKey {
            kid: kid.map(str::to_owned),
            alg,
            encoding: EncodingKey::from_rsa_der(der),
            jwk: Self::with_kid(jwk.clone(), kid),
        }
    }

    /// A fresh P-256 (`ES256`) or P-384 (`ES384`) key.
    pub fn ec(kid: Option<&str>, alg: Algorithm) -> Self {
        let (signing, crv, half) = match alg {
            Algorithm::ES256 => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            Algorithm::ES384 => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
            other => panic!("{other:?} is not an EC algorithm"),
        };
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref(); // 0x04 || x || y
        let jwk = json!({"kty": "EC", "crv": crv,
            "x": B64.encode(&point[1..1 + half]), "y": B64.encode(&point[1 + half..])});
        SigningKey {
            kid: kid.map(str::to_owned),
            alg,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: Self::with_kid(jwk, kid),
        }
    }

    pub fn ed25519(kid: Option<&str>) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk =
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref())});
        SigningKey {
            kid: kid.map(str::to_owned),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: Self::with_kid(jwk, kid),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A RequestAuthentication `default/<name>` with these rules.
pub fn named(name: &str, rules: Vec<JwtRule>) -> Named<RequestAuthenticationSpec> {
    Named {
        namespace: "default".into(),
        name: name.into(),
        dry_run: false,
        spec: RequestAuthenticationSpec {
            jwt_rules: rules,
            ..Default::default()
        },
    }
}

/// `base` with `extra`'s members set (a `null` removes the member).
pub fn merge(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

pub fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}"))])
}

/// A JWKS document holding these keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// What the JWKS server answers.
#[derive(Clone)]
pub enum Answer {
    Body(u16, String),
    /// Accept the request and never answer (a fetch timeout).
    Hang,
}

/// A JWKS server on 127.0.0.1:0. Dropping it (or [`JwksServer::stop`]) closes the port.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub uri: String,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl JwksServer {
    pub async fn http(answer: Answer) -> Self {
        Self::start(answer, None).await
    }

    /// Over TLS with a certificate for 127.0.0.1 from a CA made here; returns the client config trusting it.
    pub async fn https(answer: Answer) -> (Self, Arc<rustls::ClientConfig>) {
        let (server, client) = tls_configs();
        (Self::start(answer, Some(server)).await, client)
    }

    async fn start(answer: Answer, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let task = tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            while let Ok((tcp, _)) = listener.accept().await {
                let (a, h, acceptor) = (a.clone(), h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let answer = a.lock().unwrap().clone();
                        async move {
                            let (status, body) = match answer {
                                Answer::Body(status, body) => (status, body),
                                Answer::Hang => std::future::pending().await,
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        None => http.serve_connection(TokioIo::new(tcp), service).await,
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(tls), service).await
                        }
                    };
                });
            }
        });
        JwksServer {
            addr,
            uri: format!("{scheme}://{addr}/jwks"),
            answer,
            hits,
            task: Some(task),
        }
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn serve_keys(&self, keys: &[&SigningKey]) {
        self.set(Answer::Body(200, jwks(keys)));
    }

    /// Requests answered (or accepted, when hanging) so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting: the port refuses connections once this returns.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}
