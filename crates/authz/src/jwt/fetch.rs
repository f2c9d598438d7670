//! A `jwksUri` key set, fetched in the background and read lock-free on the request path.
//!
//! - One tokio task per URI fetches the set (bounded body, whole-fetch timeout), then refetches every
//!   `refresh_interval` (Istio: 20 min). A failed fetch keeps the last good set and retries with a doubling
//!   backoff (from `retry_backoff` up to the refresh interval).
//! - Requests read the current set from an [`ArcSwapOption`]. Before the first fetch has finished a request
//!   waits for it, at most the fetch timeout; if no set could be loaded it fails closed
//!   ([`JwtError::JwksUnavailable`], a 401). This bounded wait is the only time a request waits on the network,
//!   besides an unknown `kid` below.
//! - A token whose `kid` is not in the set asks for an early refetch (a rotation published new keys), at most
//!   once per `kid_refetch_interval` for the URI, and waits for that fetch (bounded by the fetch timeout);
//!   requests arriving while a fetch is in flight wait for it rather than fail. Random `kid`s can therefore
//!   not make the waypoint hammer the issuer.
//! - The task is started by the first request (or [`RemoteJwks::start`]) and stops when the set is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwapOption, Guard};
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::error::JwtError;
use super::keys::KeySet;

/// How a remote set is fetched; two rules with equal settings share one fetcher.
#[derive(Clone, Debug)]
pub(crate) struct FetchSettings {
    pub(crate) uri: Uri,
    pub(crate) timeout: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) kid_refetch_interval: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) max_keys: usize,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl PartialEq for FetchSettings {
    fn eq(&self, o: &Self) -> bool {
        self.uri == o.uri
            && self.timeout == o.timeout
            && self.refresh_interval == o.refresh_interval
            && self.retry_backoff == o.retry_backoff
            && self.kid_refetch_interval == o.kid_refetch_interval
            && self.max_bytes == o.max_bytes
            && self.max_keys == o.max_keys
            && match (&self.tls, &o.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// `last_refetch` before any refetch was asked for.
const NEVER: u64 = u64::MAX;

/// One remote key set and its fetcher's state.
pub(crate) struct RemoteJwks {
    pub(crate) settings: FetchSettings,
    keys: ArcSwapOption<KeySet>,
    /// Finished fetch attempts (successful or not); bumped after `keys` is stored.
    attempts: AtomicU64,
    in_flight: AtomicBool,
    /// When the last unknown-`kid` refetch was granted, in ms since `epoch`.
    last_refetch: AtomicU64,
    epoch: Instant,
    last_error: ArcSwapOption<String>,
    /// Wakes waiters after every attempt.
    done: Notify,
    /// Wakes the task for an early fetch.
    wake: Arc<Notify>,
    started: AtomicBool,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for RemoteJwks {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl RemoteJwks {
    pub(crate) fn new(settings: FetchSettings) -> Arc<Self> {
        Arc::new(RemoteJwks {
            settings,
            keys: ArcSwapOption::empty(),
            attempts: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            last_refetch: AtomicU64::new(NEVER),
            epoch: Instant::now(),
            last_error: ArcSwapOption::empty(),
            done: Notify::new(),
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            task: OnceLock::new(),
        })
    }

    /// Starts the background fetcher unless it runs already. Needs a tokio runtime.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = tokio::spawn(run(Arc::downgrade(self), self.wake.clone()));
        let _ = self.task.set(task.abort_handle());
    }

    /// The current set, waiting (at most the fetch timeout) for the first fetch if none has finished.
    pub(crate) async fn current(self: &Arc<Self>) -> Result<(Arc<KeySet>, u64), JwtError> {
        self.start();
        let seen = self.attempts.load(Ordering::Acquire);
        if let Some(keys) = self.keys.load_full() {
            return Ok((keys, seen));
        }
        // Not loaded yet: wait for the first fetch, or for a retry that is under way.
        if seen == 0 || self.in_flight.load(Ordering::Acquire) {
            self.wait_after(seen).await;
        }
        let seen = self.attempts.load(Ordering::Acquire);
        self.keys
            .load_full()
            .map(|k| (k, seen))
            .ok_or(JwtError::JwksUnavailable)
    }

    /// After an unknown `kid` in a set read at attempt `seen`: the set from a newer fetch, when one is allowed
    /// (rate limit) or already in flight; `None` otherwise.
    pub(crate) async fn refetched(&self, seen: u64) -> Option<Arc<KeySet>> {
        if self.attempts.load(Ordering::Acquire) == seen {
            let now = self.epoch.elapsed().as_millis() as u64;
            let last = self.last_refetch.load(Ordering::Acquire);
            let allowed = last == NEVER
                || now.saturating_sub(last)
                    >= self.settings.kid_refetch_interval.as_millis() as u64;
            let granted = allowed
                && self
                    .last_refetch
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            if granted {
                self.wake.notify_one();
            } else if !self.in_flight.load(Ordering::Acquire) {
                return None;
            }
            self.wait_after(seen).await;
            if self.attempts.load(Ordering::Acquire) == seen {
                return None;
            }
        }
        self.keys.load_full()
    }

    /// Waits until more than `seen` attempts have finished, at most the fetch timeout (plus a little, so a
    /// fetch that takes its whole timeout still reports before the waiter gives up).
    async fn wait_after(&self, seen: u64) {
        let deadline =
            tokio::time::Instant::now() + self.settings.timeout + Duration::from_millis(100);
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.attempts.load(Ordering::Acquire) > seen {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Number of keys loaded (`None` before a successful fetch) and the last fetch error, for diagnostics.
    pub(crate) fn status(&self) -> (Option<usize>, Option<String>) {
        let keys: Guard<_> = self.keys.load();
        let error = self.last_error.load();
        (
            keys.as_ref().map(|k| k.len()),
            error.as_ref().map(|e| e.to_string()),
        )
    }
}

/// The fetch loop. Holds only a weak reference between fetches, so dropping the set ends it.
async fn run(weak: Weak<RemoteJwks>, wake: Arc<Notify>) {
    let Some(me) = weak.upgrade() else { return };
    let client = client(me.settings.tls.clone());
    let mut backoff = me.settings.retry_backoff;
    drop(me);
    loop {
        let Some(me) = weak.upgrade() else { return };
        let s = &me.settings;
        me.in_flight.store(true, Ordering::Release);
        let result = fetch(&client, &s.uri, s.timeout, s.max_bytes)
            .await
            .and_then(|body| KeySet::parse(&body, s.max_keys));
        let pause = match result {
            Ok(keys) => {
                tracing::debug!(uri = %s.uri, keys = keys.len(), "JWKS fetched");
                me.keys.store(Some(Arc::new(keys)));
                me.last_error.store(None);
                backoff = s.retry_backoff;
                s.refresh_interval
            }
            Err(e) => {
                tracing::warn!(uri = %s.uri, error = %e, kept_last_good = me.keys.load().is_some(), "JWKS fetch failed");
                me.last_error.store(Some(Arc::new(e)));
                let pause = backoff;
                backoff = (backoff * 2).min(s.refresh_interval);
                pause
            }
        };
        me.in_flight.store(false, Ordering::Release);
        me.attempts.fetch_add(1, Ordering::AcqRel);
        me.done.notify_waiters();
        drop(me);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Public web PKI roots, for issuers such as Google or Auth0 (no dependency on the image's CA bundle).
static WEB_ROOTS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
});

fn client(tls: Option<Arc<rustls::ClientConfig>>) -> HttpsClient {
    let mut config = (*tls.unwrap_or_else(|| WEB_ROOTS.clone())).clone();
    config.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// One GET of the set: a 2xx answer within `timeout`, the body at most `max_bytes`.
async fn fetch(
    client: &HttpsClient,
    uri: &Uri,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Bytes, String> {
    let request = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the body (at most {max_bytes} bytes): {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
