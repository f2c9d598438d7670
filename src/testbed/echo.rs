//! The echo backend: an HTTP server (HTTP/1.1 and h2c with prior knowledge on one port) that answers every
//! request with a JSON description of what it received and who it is, so tests assert what the application
//! actually saw rather than what the proxy meant to send.
//!
//! The answer ([`Echo`]): method, path with query, host (`Host`, or `:authority` in HTTP/2), every request
//! header, protocol (`HTTP/1.1` or `HTTP/2`), the request body (lossy UTF-8), the instance's identity (service,
//! namespace, pod, port as written in the manifests) and, for requests carrying `x-echo-request-id`, which
//! attempt of that request this is.
//!
//! Controls, as request headers (all ignored when `x-echo-controls-for` names another pod, so a test can make
//! one backend misbehave while its siblings and mirrors answer normally):
//!
//! | header | effect |
//! |---|---|
//! | `x-echo-status: 503` | answer that status (with the same JSON body) |
//! | `x-echo-delay-ms: N` | wait N ms before answering |
//! | `x-echo-set-header: name=value` | set a response header (repeatable) |
//! | `x-echo-fail-first: N` + `x-echo-request-id: ID` | fail the first N attempts of request ID (counted across every echo sharing the [`Attempts`] table: a whole testbed), then answer normally |
//! | `x-echo-fail-mode: reset` | fail by resetting the connection (TCP RST in HTTP/1.1, `RST_STREAM` in HTTP/2) instead of answering 503 |
//! | `x-echo-fail-mode: close` | fail by closing the connection without an answer (FIN in HTTP/1.1) |
//! | `x-echo-fail-mode: hang` | fail by never answering (the request is read; the answer waits [`HANG_LIMIT`]) |
//! | `x-echo-grpc-status: N` | the `grpc-status` trailer of a gRPC answer (default 0) |
//! | `x-echo-body-bytes: N` | answer N bytes of [`pattern`] (`application/octet-stream`, in 64 KiB chunks) instead of the JSON; the [`Echo`] is still recorded in [`EchoServer::seen`] |
//! | `Connection: upgrade` + `Upgrade: websocket` (any token; HTTP/1.1) | answer `101 Switching Protocols` (same `Upgrade`, after any delay; a status or failure above wins and refuses it), then echo every byte of the raw upgraded stream back until the client closes; counted in [`EchoServer::upgrades`] |
//!
//! Per instance ([`EchoOptions`], set at start; [`EchoServer::set_fault`], any time):
//!
//! - **idle close** ([`IdleClose`]): an HTTP/1.1 keep-alive connection left idle (no byte read or written, no
//!   request in flight) for a random time in `min..=max`, drawn anew for each idle period, is closed — the
//!   classic keep-alive race: a request the client sends just then meets a closed socket (a FIN, or a RST when
//!   its bytes arrived before the close). Counted in [`EchoServer::idle_closes`]. The testbed sets it from the
//!   Pod annotation `echo.waypoint.dev/idle-close-ms: "5-30"` (or `TestbedOptions::echo_idle_close`).
//! - **faults** ([`Fault`]): refuse (stop listening and reset open connections, until cleared), reset every
//!   request, close without answering, hang, answer a status, delay every answer. Header controls still apply
//!   on top of `Fault::None` and `Fault::Delay`.
//!
//! Modules: `controls` (reading the headers above), `connection` (HTTP/1.1 or h2c, idle close, resets),
//! `answer` (one request), `upgrade` (101 and the echoed stream), `body` ([`pattern`], gRPC framing).
//!
//! gRPC: a request whose `content-type` starts with `application/grpc` is answered `200`,
//! `content-type: application/grpc`, with one length-prefixed message whose payload is the JSON, and the trailer
//! `grpc-status` (normally over h2c, as gRPC is).

mod answer;
mod body;
mod connection;
mod controls;
mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use body::{grpc_frame, grpc_unframe, pattern};
use connection::serve_connection;

/// At most this many answers are kept per instance for [`EchoServer::seen`].
const SEEN_CAP: usize = 10_000;
/// How long a hanging answer waits before the connection is dropped (so a test cannot leak it forever).
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Closing idle HTTP/1.1 keep-alive connections after a random idle time in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleClose {
    pub min: Duration,
    pub max: Duration,
}

impl IdleClose {
    /// `"5-30"` (milliseconds, a range) or `"20"` (exactly).
    pub fn parse_ms(text: &str) -> Option<IdleClose> {
        let ms = |t: &str| t.trim().parse::<u64>().ok().map(Duration::from_millis);
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (ms(a)?, ms(b)?),
            None => (ms(text)?, ms(text)?),
        };
        (min <= max).then_some(IdleClose { min, max })
    }

    fn draw(&self) -> Duration {
        let (lo, hi) = (self.min.as_micros() as u64, self.max.as_micros() as u64);
        Duration::from_micros(fastrand::u64(lo..=hi))
    }
}

/// Options of one echo instance.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    pub idle_close: Option<IdleClose>,
}

/// An instance-wide failure, injected with [`EchoServer::set_fault`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Stop listening (connections are refused) and reset every open connection, until cleared.
    Refuse,
    /// Read each request, then reset the connection (TCP RST; `RST_STREAM` in HTTP/2).
    Reset,
    /// Read each request, then close the connection without an answer (FIN).
    Close,
    /// Read each request and never answer (until [`HANG_LIMIT`]).
    Hang,
    /// Answer every request with this status (and the usual JSON body).
    Status(u16),
    /// Delay every answer by this much (header controls still apply).
    Delay(Duration),
}

/// Who an echo instance is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoIdentity {
    /// The `app` label of its pod (else the pod name).
    pub service: String,
    pub namespace: String,
    pub pod: String,
    /// The container port as written in the manifests (the listener may be on another, rewritten, port).
    pub port: u16,
}

/// What the echo answers: the request it saw, and who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    /// Path with query, as received.
    pub path: String,
    /// `Host`, or the `:authority` of an HTTP/2 request.
    pub host: String,
    /// Every request header: lowercase name → values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/1.0`.
    pub protocol: String,
    pub body: String,
    pub service: String,
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// Which attempt of `x-echo-request-id` this was (1 = first), 0 without an id.
    pub attempt: u64,
    /// When the echo received the request (local to the instance, not sent).
    #[serde(skip)]
    pub received_at: Option<Instant>,
}

impl Echo {
    /// The first value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().map(String::as_str)
    }

    /// Every value of request header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> &[String] {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Attempts per request id, shared by the echo instances of one testbed so that "fail the first N attempts"
/// holds however a retry is balanced.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<String, u64>>);

impl Attempts {
    /// Counts one more attempt of `id`; returns its number (1 = first).
    pub fn next(&self, id: &str) -> u64 {
        let mut map = self.0.lock().expect("attempts lock");
        let n = map.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    /// Attempts of `id` so far.
    pub fn get(&self, id: &str) -> u64 {
        self.0
            .lock()
            .expect("attempts lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

/// Counters of one echo instance.
#[derive(Debug, Default)]
pub struct EchoStats {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    /// Keep-alive connections closed because they were idle ([`IdleClose`]).
    pub idle_closes: AtomicU64,
    /// Requests being answered now, and the most seen at once.
    pub in_flight: AtomicU32,
    pub max_in_flight: AtomicU32,
    /// Requests answered `101 Switching Protocols` (each then echoes its upgraded stream).
    pub upgrades: AtomicU64,
    /// Attempts per request id seen by this instance.
    attempts: Attempts,
    seen: Mutex<Vec<Echo>>,
}

/// A running echo instance; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    identity: EchoIdentity,
    stats: Arc<EchoStats>,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection of one instance shares.
struct Shared {
    identity: EchoIdentity,
    stats: Arc<EchoStats>,
    attempts: Arc<Attempts>,
    options: EchoOptions,
    fault: watch::Receiver<Fault>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks one) and serves, with its own attempts table.
    pub async fn start(addr: SocketAddr, identity: EchoIdentity) -> io::Result<EchoServer> {
        Self::start_shared(addr, identity, Arc::default()).await
    }

    /// Binds `addr` and serves, counting attempts per request id in `attempts` (shared with other instances).
    pub async fn start_shared(
        addr: SocketAddr,
        identity: EchoIdentity,
        attempts: Arc<Attempts>,
    ) -> io::Result<EchoServer> {
        Self::start_with(addr, identity, attempts, EchoOptions::default()).await
    }

    /// [`EchoServer::start_shared`] with options.
    pub async fn start_with(
        addr: SocketAddr,
        identity: EchoIdentity,
        attempts: Arc<Attempts>,
        options: EchoOptions,
    ) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let (fault, fault_rx) = watch::channel(Fault::None);
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            stats: stats.clone(),
            attempts,
            options,
            fault: fault_rx,
        });
        let task = tokio::spawn(accept_loop(listener, addr, shared));
        Ok(EchoServer {
            addr,
            identity,
            stats,
            fault,
            task,
        })
    }

    /// Injects (or, with [`Fault::None`], clears) an instance-wide failure. [`Fault::Refuse`] takes effect at
    /// once: the listener is closed and open connections are reset; clearing it listens again on the same address.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn identity(&self) -> &EchoIdentity {
        &self.identity
    }
    /// Requests received (failed attempts included).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
    /// Keep-alive connections this instance closed because they were idle.
    pub fn idle_closes(&self) -> u64 {
        self.stats.idle_closes.load(Ordering::Relaxed)
    }
    /// The most requests this instance was answering at once.
    pub fn max_in_flight(&self) -> u32 {
        self.stats.max_in_flight.load(Ordering::Relaxed)
    }
    /// Requests being answered now.
    pub fn in_flight(&self) -> u32 {
        self.stats.in_flight.load(Ordering::Relaxed)
    }
    /// Requests this instance answered `101 Switching Protocols`.
    pub fn upgrades(&self) -> u64 {
        self.stats.upgrades.load(Ordering::Relaxed)
    }
    /// Starts counting [`EchoServer::max_in_flight`] afresh.
    pub fn reset_max_in_flight(&self) {
        self.stats.max_in_flight.store(
            self.stats.in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
    /// Attempts of request `id` that reached this instance.
    pub fn attempts(&self, id: &str) -> u64 {
        self.stats.attempts.get(id)
    }
    /// What this instance answered (or would have), oldest first.
    pub fn seen(&self) -> Vec<Echo> {
        self.stats.seen.lock().expect("seen lock").clone()
    }
}

/// Accepts until dropped; while [`Fault::Refuse`] holds, does not listen at all.
async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut fault = shared.fault.clone();
    let mut listener = Some(listener);
    loop {
        if *fault.borrow_and_update() == Fault::Refuse {
            listener = None;
            if fault.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(tcp, shared.clone()));
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
