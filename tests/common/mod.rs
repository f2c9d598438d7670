//! Fixtures shared by the end-to-end tests: a demo mesh on a random loopback subnet with ephemeral ports.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use waypoint::demo::{ip, DemoMesh, DemoOptions};

/// Starts the demo mesh on a random `127.a.b.0/24`, with HBONE and app ports picked by the kernel.
/// Retries a few times when a port turns out to be taken on one of the addresses.
pub async fn mesh(manifests: Option<String>) -> DemoMesh {
    let mut last = None;
    for _ in 0..8 {
        let net = [127, fastrand::u8(1..=254), fastrand::u8(1..=254)];
        let (Some(hbone_port), Some(app_port)) = (free_port(net), free_port(net)) else {
            continue;
        };
        let opts = DemoOptions {
            net,
            hbone_port,
            socks_port: 0,
            app_port,
            redirect_port: None,
            manifests: manifests.clone(),
        };
        match DemoMesh::start(opts).await {
            Ok(m) => return m,
            Err(e) => last = Some(e),
        }
    }
    panic!("could not start the demo mesh: {last:?}");
}

fn free_port(net: [u8; 3]) -> Option<u16> {
    let l = TcpListener::bind(SocketAddr::new(ip(net, 20), 0)).ok()?;
    Some(l.local_addr().ok()?.port())
}

/// Polls `f` until it is true or `patience` runs out.
pub async fn eventually(patience: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
