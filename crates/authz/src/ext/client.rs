//! One gRPC client per ext_authz provider.
//!
//! - **Connection reuse**: a tonic `Channel` (HTTP/2, multiplexed) connected lazily on the first check and
//!   re-connected after a failure. The provider's address is resolved on each connect, not per check: an IP
//!   `service` is used as is, a host name goes through the caller's [`Resolve`] (the waypoint maps service
//!   names to VIPs or endpoints from its mesh config).
//! - **Timeout**: each check, connecting included, is bounded by the provider's `timeout` (default 200 ms,
//!   [`super::config::DEFAULT_TIMEOUT`]), also sent to the server as `grpc-timeout`.
//! - **Bounded**: at most [`Limits::max_in_flight`] checks per provider at once; one more fails at once with
//!   [`CheckError::Overloaded`] (then the fail mode decides), so a slow authorizer cannot pile up work. Answers
//!   larger than [`Limits::max_response_bytes`] are refused.
//!
//! An [`Authorizer`] must be created inside a Tokio runtime: the channel's worker task is spawned on it and
//! lives as long as that runtime.

use super::config::{MeshConfig, ProviderConfig, ServiceRef};
use super::request::{build_check_request, CheckExtra};
use super::response::{decide, on_error};
use super::{CheckError, Decision};
use crate::attrs;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint, Uri};
use waypoint_proto::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, CheckRequest,
};

/// Maps a provider's `service` host name (and port) to the address to connect to; called on each (re)connect.
/// `None` means unknown: the check fails as unavailable. Closures `Fn(&ServiceRef, u16) -> Option<SocketAddr>`
/// implement it.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, service: &ServiceRef, port: u16) -> Option<SocketAddr>;
}

impl<F> Resolve for F
where
    F: Fn(&ServiceRef, u16) -> Option<SocketAddr> + Send + Sync + 'static,
{
    fn resolve(&self, service: &ServiceRef, port: u16) -> Option<SocketAddr> {
        self(service, port)
    }
}

/// Per-provider bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Checks in flight at once (Envoy's default circuit breaker allows 1024 requests).
    pub max_in_flight: usize,
    /// The largest `CheckResponse` accepted, in bytes.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 1024,
            max_response_bytes: 1 << 20,
        }
    }
}

/// Why an [`Authorizer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("ext_authz provider `{0}`: must be created inside a Tokio runtime")]
    NoRuntime(String),
    #[error("ext_authz provider `{provider}`: {reason}")]
    Endpoint { provider: String, reason: String },
    #[error("ext_authz provider `{0}`: max_in_flight must be at least 1")]
    NoCapacity(String),
}

/// The client of one ext_authz provider. Cheap to share (`&self` methods); checks run concurrently.
pub struct Authorizer {
    config: ProviderConfig,
    client: AuthorizationClient<Channel>,
    permits: Arc<Semaphore>,
    limits: Limits,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("config", &self.config)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Authorizer {
    /// A client for `config`, connecting on first use. Needs a Tokio runtime (see the module doc).
    pub fn new(
        config: ProviderConfig,
        resolver: Arc<dyn Resolve>,
        limits: Limits,
    ) -> Result<Self, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime(config.name));
        }
        if limits.max_in_flight == 0 {
            return Err(BuildError::NoCapacity(config.name));
        }
        let authority = match config.service.ip() {
            Some(ip) => SocketAddr::new(ip, config.port).to_string(),
            None => format!("{}:{}", config.service.host, config.port),
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| BuildError::Endpoint {
                provider: config.name.clone(),
                reason: e.to_string(),
            })?
            .tcp_nodelay(true);
        let connector = Connector {
            service: Arc::new(config.service.clone()),
            port: config.port,
            resolver,
        };
        let channel = endpoint.connect_with_connector_lazy(connector);
        let client =
            AuthorizationClient::new(channel).max_decoding_message_size(limits.max_response_bytes);
        Ok(Authorizer {
            config,
            client,
            permits: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Checks one request: builds the `CheckRequest` from its attributes and decides.
    pub async fn check(&self, request: &attrs::Request<'_>, extra: &CheckExtra<'_>) -> Decision {
        self.check_request(build_check_request(request, extra))
            .await
    }

    /// Sends a prepared `CheckRequest` and decides; never fails: errors go to the provider's fail mode.
    pub async fn check_request(&self, request: CheckRequest) -> Decision {
        let Ok(_permit) = self.permits.try_acquire() else {
            return on_error(
                &self.config,
                CheckError::Overloaded(self.limits.max_in_flight),
            );
        };
        let timeout = self.config.timeout;
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let answer = match tokio::time::timeout(timeout, client.check(request)).await {
            Err(_) => Err(CheckError::Timeout(timeout)),
            Ok(Err(status)) => Err(rpc_error(status, timeout)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        };
        decide(&self.config, answer)
    }
}

/// A failed call, by gRPC status: transport failures are "unavailable", deadlines are timeouts.
fn rpc_error(status: tonic::Status, timeout: std::time::Duration) -> CheckError {
    let mut cause = std::error::Error::source(&status);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return CheckError::Timeout(timeout);
        }
        cause = e.source();
    }
    match status.code() {
        tonic::Code::DeadlineExceeded => CheckError::Timeout(timeout),
        tonic::Code::Unavailable => CheckError::Unavailable(status.message().to_owned()),
        code => CheckError::Rpc {
            code: code as i32,
            message: status.message().to_owned(),
        },
    }
}

/// Resolves the provider on each connect and dials it over plain TCP.
#[derive(Clone)]
struct Connector {
    service: Arc<ServiceRef>,
    port: u16,
    resolver: Arc<dyn Resolve>,
}

type Connecting = Pin<
    Box<
        dyn Future<Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>>> + Send,
    >,
>;

impl tower::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = match self.service.ip() {
            Some(ip) => Some(SocketAddr::new(ip, self.port)),
            None => self.resolver.resolve(&self.service, self.port),
        };
        let service = self.service.clone();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("cannot resolve `{service}`"),
                )
            })?;
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Every ext_authz provider of a mesh config, by name.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<Authorizer>>,
    other: Vec<(String, String)>,
}

/// A CUSTOM policy names a provider this waypoint cannot call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownProvider {
    #[error("ext_authz provider `{0}` is not defined in the mesh config")]
    Missing(String),
    #[error("provider `{name}` is a `{kind}` provider; CUSTOM needs `envoyExtAuthzGrpc`")]
    WrongKind { name: String, kind: String },
}

impl Providers {
    /// A client per `envoyExtAuthzGrpc` provider (none connects until used). Needs a Tokio runtime.
    pub fn new(
        config: MeshConfig,
        resolver: Arc<dyn Resolve>,
        limits: Limits,
    ) -> Result<Self, BuildError> {
        let mut by_name = HashMap::with_capacity(config.providers.len());
        for p in config.providers {
            let name = p.name.clone();
            by_name.insert(
                name,
                Arc::new(Authorizer::new(p, resolver.clone(), limits)?),
            );
        }
        Ok(Providers {
            by_name,
            other: config.other_providers,
        })
    }

    /// The provider a CUSTOM policy's `provider.name` refers to.
    pub fn get(&self, name: &str) -> Result<&Arc<Authorizer>, UnknownProvider> {
        if let Some(a) = self.by_name.get(name) {
            return Ok(a);
        }
        match self.other.iter().find(|(n, _)| n == name) {
            Some((name, kind)) => Err(UnknownProvider::WrongKind {
                name: name.clone(),
                kind: kind.clone(),
            }),
            None => Err(UnknownProvider::Missing(name.to_owned())),
        }
    }

    /// The names of the callable providers.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
