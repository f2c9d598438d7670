//! Long-lived exchanges: with no `timeouts` on the route, nothing in the mesh cuts a slow answer, a large upload
//! or a large download; `timeouts.request` cuts them only on the route that sets it (504 `UT`).

use super::*;

/// `/deadline`: `timeouts.request: 500ms`; everything else: no timeouts, no retry policy.
const ROUTES: &str = "  - matches: [{path: {type: PathPrefix, value: /deadline}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: pair, port: 80}]
  - backendRefs: [{name: pair, port: 80}]
";

const MIB: usize = 1024 * 1024;

fn routes() -> String {
    http_route("pair", "pair", ROUTES)
}

/// FNV-1a, 64 bits: a digest to show in failure messages.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `len` bytes of printable ASCII (the echo reports the body as lossy UTF-8: ASCII comes back byte for byte).
fn ascii_body(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'!' + (i % 89) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_not_cut_without_a_timeout() {
    let tb = mesh(&routes()).await;
    let r = send(
        &tb,
        Req::get(PAIR, "/slow").header("x-echo-delay-ms", "3000"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
    assert_eq!(r.echo().path, "/slow");
    assert!(
        r.elapsed >= MS(3000) && r.elapsed < MS(5000),
        "answered after {:?} (the echo waited 3 s)",
        r.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_cuts_only_where_configured() {
    let tb = mesh(&routes()).await;
    let r = send(
        &tb,
        Req::get(PAIR, "/deadline").header("x-echo-delay-ms", "3000"),
    )
    .await;
    assert!(answered(&r, 504, "UT"), "{}", outcome(&r));
    assert!(
        r.elapsed >= MS(450) && r.elapsed < MS(1500),
        "answered after {:?} (deadline 500 ms)",
        r.elapsed
    );
    // A short request on the same route is not affected.
    let r = send(
        &tb,
        Req::get(PAIR, "/deadline").header("x-echo-delay-ms", "50"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_crosses_the_mesh_intact() {
    let tb = mesh(&routes()).await;
    let body = ascii_body(8 * MIB);
    for (name, req) in [
        ("HTTP/1.1", Req::new("POST", PAIR, "/upload")),
        ("h2c", Req::new("POST", PAIR, "/upload").h2c()),
    ] {
        let r = send(&tb, req.body(body.clone())).await;
        assert_eq!(r.status, 200, "{name}: {}", outcome(&r));
        let got = r.echo().body.as_bytes();
        assert!(
            got == body.as_bytes(),
            "{name}: the echo saw {} bytes (fnv {:016x}), sent {} (fnv {:016x})",
            got.len(),
            fnv(got),
            body.len(),
            fnv(body.as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_crosses_the_mesh_intact() {
    let tb = mesh(&routes()).await;
    let want = waypoint::testbed::echo::pattern(8 * MIB);
    for (name, req) in [
        ("HTTP/1.1", Req::get(PAIR, "/download")),
        ("h2c", Req::get(PAIR, "/download").h2c()),
    ] {
        let r = send(
            &tb,
            req.header("x-echo-body-bytes", &want.len().to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", outcome(&r));
        assert!(
            r.body == want,
            "{name}: got {} bytes (fnv {:016x}), the echo sent {} (fnv {:016x})",
            r.body.len(),
            fnv(&r.body),
            want.len(),
            fnv(&want)
        );
    }
}
