//! Protocol upgrades (websocket-style): an HTTP/1.1 request with `Connection: upgrade` and `Upgrade: <token>`
//! is answered `101 Switching Protocols` (the same `Upgrade` token, `x-echo-pod`, any `x-echo-set-header`),
//! and the raw stream that follows echoes every byte back until the client closes its side (then the echo
//! closes too). A [`Fault::Refuse`](super::Fault::Refuse) resets upgraded streams like any connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::answer::internal_error;
use super::body::Body;
use super::connection::refused;
use super::controls::Controls;
use super::Shared;

/// How much of the upgraded stream is read (and echoed) at once.
const CHUNK: usize = 16 * 1024;

/// Answers `101 Switching Protocols` to `token` and echoes the upgraded stream in a task of its own.
pub(super) fn switch(
    on_upgrade: OnUpgrade,
    token: &str,
    controls: &Controls,
    shared: &Arc<Shared>,
    reset: &Arc<AtomicBool>,
) -> Response<Body> {
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, token)
        .header("x-echo-pod", shared.identity.pod.as_str());
    for (k, v) in &controls.set_headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    match resp.body(Empty::<Bytes>::new().boxed()) {
        Ok(resp) => {
            shared.stats.upgrades.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(echo_stream(on_upgrade, shared.clone(), reset.clone()));
            resp
        }
        Err(e) => internal_error(&e),
    }
}

/// Once hyper has sent the 101 and handed the socket over: every byte read is written back; the client's
/// FIN ends it (answered with ours), a [`Fault::Refuse`](super::Fault::Refuse) resets it.
async fn echo_stream(on_upgrade: OnUpgrade, shared: Arc<Shared>, reset: Arc<AtomicBool>) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let mut fault = shared.fault.clone();
    let echo = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if io.write_all(&buf[..n]).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
        let _ = io.shutdown().await;
    };
    tokio::select! {
        () = echo => {}
        () = refused(&mut fault) => reset.store(true, Ordering::Relaxed),
    }
    // Dropping the stream drops the socket: a FIN, or a RST when `reset` is set.
}
