//! The demo application: a tiny HTTP/1.1 server standing in for one `reviews` pod.
//!
//! Answers every request `200` with body `reviews-<version>\n`, header `x-version: <version>`, and echoes the
//! `x-forwarded-client-cert` it received as `x-seen-xfcc` (so a test can see what identity the waypoint
//! asserted). Counts connections accepted, which is how tests see upstream connection reuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Counters of one app instance.
#[derive(Debug, Default)]
pub struct AppStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
}

/// A running app instance; stops when dropped.
pub struct App {
    pub addr: SocketAddr,
    pub version: String,
    pub stats: Arc<AppStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start(addr: SocketAddr, version: &str) -> std::io::Result<App> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(AppStats::default());
        let (st, ver) = (stats.clone(), version.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let (st, ver) = (st.clone(), ver.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        st.requests.fetch_add(1, Ordering::Relaxed);
                        let ver = ver.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &ver)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(App {
            addr,
            version: version.to_string(),
            stats,
            task,
        })
    }
}

fn answer(req: &Request<Incoming>, version: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .header("x-version", version)
        .header("content-type", "text/plain");
    if let Some(x) = req.headers().get("x-forwarded-client-cert") {
        resp = resp.header("x-seen-xfcc", x.clone());
    }
    resp.body(Full::new(Bytes::from(format!("reviews-{version}\n"))))
        .expect("static response")
}
