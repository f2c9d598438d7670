//! RequestAuthentication: JWT extraction, verification against JWKS (inline or fetched and refreshed), and
//! the [`crate::attrs::RequestAuth`] a verified token yields.
//!
//! An [`Authenticator`] is compiled from the RequestAuthentications that apply to one destination (the caller
//! selects them). [`Authenticator::authenticate`] then follows Istio, whose Envoy config is `requires_any` of
//! one provider per `jwtRules[]` entry plus `allow_missing`:
//!
//! - no token at any configured location: `Ok(None)`, the request goes on unauthenticated (an
//!   AuthorizationPolicy may still demand a `requestPrincipal`);
//! - a token is found: it is matched to the rules whose issuer equals its `iss` and that read that location,
//!   in policy order; the first rule that accepts it wins and yields the [`RequestAuth`] plus the header edits
//!   to apply ([`HeaderEdit`]). If several tokens are present, any one that verifies is enough;
//! - otherwise the first failure is returned ([`JwtError`]; the proxy answers 401): bad signature, expired,
//!   not yet valid, wrong audience, unknown key, malformed, or an issuer no rule names.
//!
//! Keys: inline `jwks` are parsed at compile time; a `jwksUri` is fetched by a background tokio task (the
//! `fetch` submodule: refresh every 20 min, unknown-`kid` refetch, last good set kept on failure). A request
//! never fetches. It waits, bounded by the fetch timeout, only (a) when its issuer's keys have not been loaded
//! yet, failing closed (401) if that first fetch fails, and (b) for a rate-limited refetch after an unknown
//! `kid`. Failing closed rather than letting the token through unverified is the only safe choice; waiting
//! (rather than failing at once) keeps a freshly started waypoint from rejecting valid callers. Call
//! [`Authenticator::start`] after compiling to fetch before the first request. Clock skew (default 60 s)
//! applies to both `exp` and `nbf`. Accepted algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA;
//! HMAC and `none` are refused (no shared secrets from a JWKS).

mod config;
mod error;
mod extract;
mod fetch;
mod keys;
mod output;
mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::attrs::RequestAuth;
use crate::model::{Named, RequestAuthenticationSpec};
use config::{Compiled, Keys, Rule};
pub use error::{CompileError, JwtError};
use fetch::RemoteJwks;
pub use output::HeaderEdit;
use token::{check_claims, Token};

/// Knobs that are not in the CRD. [`JwtOptions::default`] follows Istio.
#[derive(Clone, Debug)]
pub struct JwtOptions {
    /// Tolerance on `exp` and `nbf`. Default 60 s.
    pub clock_skew: Duration,
    /// How often a `jwksUri` is refetched. Default 20 min (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
    pub refresh_interval: Duration,
    /// Fetch timeout when a rule sets no `timeout`. Default 5 s (Istio's).
    pub fetch_timeout: Duration,
    /// First retry after a failed fetch; doubles up to `refresh_interval`. Default 1 s.
    pub retry_backoff: Duration,
    /// At most one early refetch per URI for a token with an unknown `kid` in this interval. Default 30 s.
    pub kid_refetch_interval: Duration,
    /// Largest JWKS body accepted. Default 256 KiB.
    pub max_jwks_bytes: usize,
    /// Most keys in one JWKS. Default 64.
    pub max_keys: usize,
    /// TLS for `https` JWKS URIs. `None`: the public web PKI roots (`webpki-roots`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self {
            clock_skew: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(20 * 60),
            fetch_timeout: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            kid_refetch_interval: Duration::from_secs(30),
            max_jwks_bytes: 256 * 1024,
            max_keys: 64,
            tls: None,
        }
    }
}

/// A verified token: the facts for authorization and what to change in the forwarded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub auth: RequestAuth,
    /// Apply in order to the upstream request headers.
    pub edits: Vec<HeaderEdit>,
    /// `namespace/name` of the RequestAuthentication whose rule accepted the token (for the access log).
    pub policy: Arc<str>,
}

/// One `jwtRules[]` entry of an [`Authenticator`], for a debug view ([`Authenticator::rules`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleInfo {
    /// `namespace/name` of the RequestAuthentication.
    pub policy: String,
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    /// Where the keys are fetched from; `None`: inline `jwks`.
    pub jwks_uri: Option<String>,
    /// Where the token is looked for (`header authorization (prefix "Bearer ")`, `query parameter token`).
    pub locations: Vec<String>,
}

/// The RequestAuthentications of one destination, compiled. Cheap to share (`Arc` it in the snapshot).
pub struct Authenticator {
    compiled: Compiled,
    skew: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<_> = self.compiled.rules.iter().map(|r| &r.issuer).collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .finish()
    }
}

/// One `jwksUri`'s state, for a debug endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksStatus {
    pub uri: String,
    /// Keys loaded; `None` until a fetch succeeded.
    pub keys: Option<usize>,
    /// The last fetch error, cleared by a successful fetch.
    pub last_error: Option<String>,
}

impl Authenticator {
    /// Compiles the policies (in the order given: it is the order rules are tried). No I/O: remote key sets
    /// are fetched once [`Authenticator::start`] is called or the first request needs them.
    pub fn compile(
        policies: &[Named<RequestAuthenticationSpec>],
        opts: &JwtOptions,
    ) -> Result<Self, CompileError> {
        Self::compile_reusing(policies, opts, None)
    }

    /// As [`Authenticator::compile`], taking over `previous`'s fetchers (loaded keys, running task) for the
    /// `jwksUri`s whose settings did not change, so a config swap does not refetch every key set.
    pub fn compile_reusing(
        policies: &[Named<RequestAuthenticationSpec>],
        opts: &JwtOptions,
        previous: Option<&Authenticator>,
    ) -> Result<Self, CompileError> {
        let reuse = previous.map_or(&[][..], |p| &p.compiled.remotes[..]);
        Ok(Self {
            compiled: config::compile(policies, opts, reuse)?,
            skew: opts.clock_skew.as_secs(),
        })
    }

    /// No rule: every request passes unauthenticated.
    pub fn is_empty(&self) -> bool {
        self.compiled.rules.is_empty()
    }

    /// Starts fetching every `jwksUri` in the background. Needs a tokio runtime; idempotent.
    pub fn start(&self) {
        for remote in &self.compiled.remotes {
            remote.start();
        }
    }

    /// The remote key sets and how their fetches fare.
    pub fn jwks_status(&self) -> Vec<JwksStatus> {
        self.compiled
            .remotes
            .iter()
            .map(|r| {
                let (keys, last_error) = r.status();
                JwksStatus {
                    uri: r.settings.uri.to_string(),
                    keys,
                    last_error,
                }
            })
            .collect()
    }

    /// Every compiled `jwtRules[]` entry, in the order tokens are tried (for a debug view).
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.compiled
            .rules
            .iter()
            .map(|r| RuleInfo {
                policy: r.policy.to_string(),
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                jwks_uri: match &r.keys {
                    Keys::Inline(_) => None,
                    Keys::Remote(remote) => Some(remote.settings.uri.to_string()),
                },
                locations: r
                    .locations
                    .iter()
                    .map(|&at| match &self.compiled.locations[at] {
                        extract::Location::Header { name, prefix } if prefix.is_empty() => {
                            format!("header {name}")
                        }
                        extract::Location::Header { name, prefix } => {
                            format!("header {name} (prefix {prefix:?})")
                        }
                        extract::Location::Param(p) => format!("query parameter {p}"),
                        extract::Location::Cookie(c) => format!("cookie {c}"),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Judges the request's token(s) now. `query` is the request target's query (without `?`).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Verified>, JwtError> {
        self.authenticate_at(headers, query, SystemTime::now())
            .await
    }

    /// As [`Authenticator::authenticate`], at a given time.
    pub async fn authenticate_at(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<Verified>, JwtError> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut first_error = None;
        for (at, location) in self.compiled.locations.iter().enumerate() {
            let Some(raw) = location.extract(headers, query) else {
                continue;
            };
            let token = match Token::parse(&raw) {
                Ok(t) => t,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let mut rules =
                self.compiled.rules.iter().filter(|r| {
                    r.locations.contains(&at) && token.issuer() == Some(r.issuer.as_str())
                });
            let Some(first) = rules.next() else {
                first_error.get_or_insert(JwtError::UnknownIssuer);
                continue;
            };
            for rule in std::iter::once(first).chain(rules) {
                match self.verify(rule, &token, now).await {
                    Ok(()) => {
                        let edits = rule.output.plan(location, token.payload_b64, &token.claims);
                        return Ok(Some(Verified {
                            auth: token.into_auth(),
                            edits,
                            policy: rule.policy.clone(),
                        }));
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }

    /// One rule's verdict on a token whose issuer it names: signature (refetching an unknown `kid` once if
    /// allowed), then time window and audiences.
    async fn verify(&self, rule: &Rule, token: &Token<'_>, now: u64) -> Result<(), JwtError> {
        match &rule.keys {
            Keys::Inline(keys) => token.verify_signature(keys)?,
            Keys::Remote(remote) => verify_remote(remote, token).await?,
        }
        check_claims(&token.claims, &rule.audiences, now, self.skew)
    }
}

async fn verify_remote(remote: &Arc<RemoteJwks>, token: &Token<'_>) -> Result<(), JwtError> {
    let (keys, seen) = remote.current().await?;
    match token.verify_signature(&keys) {
        Err(JwtError::UnknownKey) => match remote.refetched(seen).await {
            Some(keys) => token.verify_signature(&keys),
            None => Err(JwtError::UnknownKey),
        },
        verdict => verdict,
    }
}
