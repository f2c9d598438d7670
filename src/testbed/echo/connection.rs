//! One accepted connection of the echo: HTTP/2 or HTTP/1.1 (sniffed from the prior-knowledge preface), the
//! socket that can close with a RST ([`ResetOnDrop`]), the idle-close watch of keep-alive connections
//! ([`idle_closer`]) and the reset of every connection when the instance starts refusing ([`refused`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::answer::answer;
use super::{Fault, IdleClose, Shared};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one connection's idle-close watch needs: when it last moved a byte, and whether a request is open.
#[derive(Default)]
pub(super) struct Activity {
    /// Bumped on every read or write that moved bytes, and when an answer is ready.
    pub epoch: AtomicU64,
    pub in_flight: AtomicU32,
}

/// Serves one connection: HTTP/2 when it opens with the prior-knowledge preface, else HTTP/1.1 (closed when
/// idle, when the instance has [`IdleClose`]; an upgrade hands the socket to [`super::upgrade`]). A
/// [`Fault::Refuse`] resets it.
pub(super) async fn serve_connection(tcp: TcpStream, shared: Arc<Shared>) {
    let h2 = starts_with_h2_preface(&tcp).await;
    let reset = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ResetOnDrop {
        tcp,
        reset: reset.clone(),
        activity: activity.clone(),
    });
    let svc = {
        let (shared, reset, activity) = (shared.clone(), reset.clone(), activity.clone());
        service_fn(move |req| answer(req, shared.clone(), reset.clone(), activity.clone()))
    };
    let conn: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = if h2 {
        let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        Box::pin(async move {
            let _ = c.await;
        })
    } else {
        let c = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades();
        Box::pin(async move {
            let _ = c.await;
        })
    };
    let idle = shared.options.idle_close.filter(|_| !h2);
    let mut fault = shared.fault.clone();
    tokio::select! {
        () = conn => {}
        () = refused(&mut fault) => reset.store(true, Ordering::Relaxed),
        () = idle_closer(idle, &activity) => {
            shared.stats.idle_closes.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Dropping the connection closes the socket: a FIN, or a RST when `reset` is set (or bytes were unread).
    // After an upgrade the socket lives on in the upgraded stream, which closes it the same way.
}

/// Returns when the instance starts refusing.
pub(super) async fn refused(fault: &mut watch::Receiver<Fault>) {
    loop {
        if *fault.borrow_and_update() == Fault::Refuse {
            return;
        }
        if fault.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Returns when the connection has been idle (no byte moved, no request open) for a random time of `idle`;
/// never without `idle`.
async fn idle_closer(idle: Option<IdleClose>, activity: &Activity) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut seen = activity.epoch.load(Ordering::Acquire);
    let mut wait = idle.draw();
    loop {
        tokio::time::sleep(wait).await;
        let now = activity.epoch.load(Ordering::Acquire);
        if now == seen && activity.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        if now != seen {
            // A new idle period: a new random length.
            (seen, wait) = (now, idle.draw());
        }
    }
}

/// Peeks (without consuming) whether the client sent the HTTP/2 connection preface.
async fn starts_with_h2_preface(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A partial preface: wait for the rest (peek returns at once while data is buffered).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The connection's socket; when `reset` is set, closing it sends a TCP RST (zero linger) instead of a FIN.
struct ResetOnDrop {
    tcp: TcpStream,
    reset: Arc<AtomicBool>,
    activity: Arc<Activity>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        }
        r
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
