//! The CUSTOM action: an external authorizer over gRPC (`envoy.service.auth.v3.Authorization/Check`), with
//! providers named in a mesh config file, per-provider timeout and fail-open/fail-closed.
//!
//! Any server that Envoy's ext_authz filter can use (OPA's envoy plugin, oauth2 proxies, home-grown ones) works
//! unchanged: the messages are Envoy's (`waypoint_proto::envoy::service::auth::v3`).
//!
//! - [`config`]: `extensionProviders[].envoyExtAuthzGrpc` of an Istio mesh config ([`parse_mesh_config`]).
//! - [`request`]: the `CheckRequest` built from a request's verified attributes ([`build_check_request`]).
//! - [`response`]: the `CheckResponse` mapped to a [`Verdict`], and errors to the provider's fail mode; pure.
//! - [`client`]: one [`Authorizer`] per provider (a lazily connected, reused HTTP/2 channel, a timeout per check,
//!   a cap on checks in flight), and [`Providers`], all of a mesh config's by name.
//!
//! ```text
//!  attrs::Request ─▶ build_check_request ─▶ Authorizer::check ──gRPC──▶ ext_authz server
//!                                                │  OK      → Allow { upstream header edits, response headers }
//!                                                │  DENIED  → Deny  { the server's status, headers, body }
//!                                                └─ timeout / down / overloaded / gRPC error
//!                                                     → failOpen ? Allow : Deny { statusOnError (403) }
//! ```

pub mod client;
pub mod config;
pub mod request;
pub mod response;

pub use client::{Authorizer, BuildError, Limits, Providers, Resolve, UnknownProvider};
pub use config::{parse_mesh_config, ConfigError, MeshConfig, ProviderConfig, ServiceRef};
pub use request::{build_check_request, CheckExtra};

use http::{HeaderName, HeaderValue, StatusCode};
use std::time::Duration;

/// The outcome of one check: the verdict, and the error that put the provider's fail mode in charge (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// `Some` when the authorizer did not decide (timeout, down, overloaded, bad answer) and the verdict is the
    /// provider's `failOpen` / `statusOnError`. For the access log and metrics.
    pub error: Option<CheckError>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow(_))
    }
}

/// Allow (with edits to the request and response) or deny (with the response the client gets).
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Allow(Allowed),
    Deny(Denied),
}

/// What an allowing authorizer asked for. Apply [`Allowed::apply_to_request`] to the request sent upstream and
/// [`Allowed::apply_to_response`] to the response sent back to the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowed {
    /// Headers to add to / set on the upstream request (`OkHttpResponse.headers`).
    pub request_headers: Vec<HeaderAction>,
    /// Headers to remove from the upstream request (`headers_to_remove`; never `host` or a pseudo-header).
    pub remove_request_headers: Vec<HeaderName>,
    /// Headers to add to the client's response (`response_headers_to_add`).
    pub response_headers: Vec<HeaderAction>,
}

/// The response a denied client gets (`DeniedHttpResponse`, or `statusOnError` with no body on a fail-closed error).
#[derive(Clone, Debug, PartialEq)]
pub struct Denied {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

/// One header edit, with Envoy's `HeaderAppendAction` semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderAction {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: AppendAction,
}

/// `envoy.config.core.v3.HeaderValueOption.HeaderAppendAction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    /// Add another value (or the header).
    Append,
    /// Add only when the header is absent.
    AddIfAbsent,
    /// Replace every value (or add the header).
    Overwrite,
    /// Replace every value only when the header is present.
    OverwriteIfExists,
}

/// Why the authorizer gave no decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("ext_authz timed out after {0:?}")]
    Timeout(Duration),
    #[error("ext_authz unavailable: {0}")]
    Unavailable(String),
    #[error("ext_authz overloaded: {0} checks already in flight")]
    Overloaded(usize),
    /// The RPC itself failed with a gRPC status (e.g. `UNIMPLEMENTED`), as opposed to a `CheckResponse` that
    /// carries a non-OK status, which is a denial.
    #[error("ext_authz call failed with gRPC status {code}: {message}")]
    Rpc { code: i32, message: String },
    #[error("ext_authz answered something unusable: {0}")]
    BadResponse(String),
}

impl CheckError {
    /// A short label for metrics and the access log.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckError::Timeout(_) => "timeout",
            CheckError::Unavailable(_) => "unavailable",
            CheckError::Overloaded(_) => "overloaded",
            CheckError::Rpc { .. } => "rpc_error",
            CheckError::BadResponse(_) => "bad_response",
        }
    }
}
