//! Criterion benchmarks of the HBONE path over loopback: the real [`serve`] and [`Pool`], mutual TLS with
//! certificates from a development CA made here, real h2, and a loopback TCP backend behind the server.
//!
//! `cargo bench -p mesh --bench hbone` (`-- connect/`, `-- throughput/`, `-- rtt/` for one group).
//!
//! The server does what a destination ztunnel does with a CONNECT: dial the `:authority` (the backend, plain
//! TCP on 127.0.0.1), answer 200, then splice the stream and the socket with `tokio::io::copy_bidirectional`
//! (8 KiB buffers, tokio's default); `*_copybuf_{64,256}KiB` cases use servers splicing with 64 KiB (as
//! `ztunnel::outbound::splice`) and 256 KiB buffers. The backend speaks a tiny protocol of 9-byte commands (`U`/`D`/`E` + u64 length): sink
//! `len` bytes then ack one byte, send `len` bytes, or echo `len` bytes.
//!
//! - `connect/pooled`: one CONNECT (stream open, backend dial, 200) on an outer connection already in the pool.
//! - `connect/fresh`: the same on a new pool: TCP connect, TLS 1.3 handshake with client certificate, h2
//!   handshake, CONNECT. Only the open is timed; closing the stream (and the connection) is not.
//! - `connect/tcp_only`: a plain loopback TCP connect to the backend, for reference.
//! - `throughput/{hbone,tcp}_{upload,download}_64MiB`: one stream (or one plain socket) carrying 64 MiB to the
//!   backend's sink (until its ack) or from its source, written and read in 1 MiB chunks.
//! - `rtt/{hbone,tcp}_echo_{128B,4KiB}`: a request and its echo on an open stream (or plain socket).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use mesh::devca::DevCa;
use mesh::hbone::{serve, ConnectHandler, Dial, H2Stream, InboundConnect, Pool, PoolOptions};
use mesh::hbone::{Respond, ServerOptions};
use mesh::identity::{CertStore, Identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const TD: &str = "cluster.local";
const CHUNK: usize = 1 << 20;
const BIG: u64 = 64 << 20;

/// Splices each accepted CONNECT with a TCP connection to its `:authority`, with `buf`-byte copy buffers.
struct Splice {
    buf: usize,
}

#[async_trait::async_trait]
impl ConnectHandler for Splice {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond) {
        let Ok(mut tcp) = TcpStream::connect(req.authority).await else {
            return respond.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut stream) = respond.accept() else {
            return;
        };
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, self.buf, self.buf)
            .await;
    }
}

/// Serves the backend protocol (see the module doc) on each connection until EOF.
async fn backend(listener: TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = tcp.into_split();
            let mut buf = vec![0u8; CHUNK];
            let mut cmd = [0u8; 9];
            while r.read_exact(&mut cmd).await.is_ok() {
                let mut left = u64::from_be_bytes(cmd[1..].try_into().unwrap()) as usize;
                let ok = match cmd[0] {
                    b'U' => {
                        copy_n(&mut r, &mut tokio::io::sink(), &mut buf, left).await
                            && w.write_all(b"k").await.is_ok()
                    }
                    b'E' => copy_n(&mut r, &mut w, &mut buf, left).await,
                    _ => {
                        while left > 0 {
                            let n = left.min(CHUNK);
                            if w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            left -= n;
                        }
                        left == 0
                    }
                };
                if !ok {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
    }
}

/// Copies exactly `n` bytes from `r` to `w`; false on EOF or error first.
async fn copy_n(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    buf: &mut [u8],
    mut n: usize,
) -> bool {
    while n > 0 {
        let want = n.min(buf.len());
        match r.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                if w.write_all(&buf[..got]).await.is_err() {
                    return false;
                }
                n -= got;
            }
        }
    }
    true
}

fn command(op: u8, len: u64) -> [u8; 9] {
    let mut c = [op; 9];
    c[1..].copy_from_slice(&len.to_be_bytes());
    c
}

/// Sends `len` bytes to the sink and waits for its ack.
async fn upload(s: &mut (impl AsyncRead + AsyncWrite + Unpin), chunk: &[u8], len: u64) {
    s.write_all(&command(b'U', len)).await.unwrap();
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

/// Asks for `len` bytes and reads them.
async fn download(s: &mut (impl AsyncRead + AsyncWrite + Unpin), buf: &mut [u8], len: u64) {
    s.write_all(&command(b'D', len)).await.unwrap();
    let mut left = len as usize;
    while left > 0 {
        let want = left.min(buf.len());
        let n = s.read(&mut buf[..want]).await.unwrap();
        assert!(n > 0, "download ended early");
        left -= n;
    }
}

/// One echo round trip of `msg` (a command followed by its payload, written at once).
async fn echo(s: &mut (impl AsyncRead + AsyncWrite + Unpin), msg: &[u8], back: &mut [u8]) {
    s.write_all(msg).await.unwrap();
    s.read_exact(back).await.unwrap();
}

/// The backend, two HBONE servers in front of it (8 KiB and 256 KiB splice buffers), and a client.
struct Bed {
    rt: Runtime,
    backend: SocketAddr,
    /// 8 KiB splice buffers, then 64 KiB, then 256 KiB.
    servers: [SocketAddr; 3],
    client: CertStore,
    expected: [Identity; 1],
    _shutdown: watch::Sender<bool>,
}

impl Bed {
    fn new() -> Bed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ca = DevCa::generate(TD).unwrap();
        let server_id = Identity::new(TD, "istio-system", "waypoint");
        let server = CertStore::new(ca.certs_for(&server_id).unwrap());
        let client_id = Identity::new(TD, "default", "client");
        let client = CertStore::new(ca.certs_for(&client_id).unwrap());
        let (shutdown, stop) = watch::channel(false);
        let (backend, servers) = rt.block_on(async {
            let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = b.local_addr().unwrap();
            tokio::spawn(self::backend(b));
            let mut servers = [backend; 3];
            for (i, buf) in [8 << 10, 64 << 10, 256 << 10].into_iter().enumerate() {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                servers[i] = l.local_addr().unwrap();
                let (certs, opts) = (server.clone(), ServerOptions::default());
                tokio::spawn(serve(
                    l,
                    certs,
                    Arc::new(Splice { buf }),
                    opts,
                    stop.clone(),
                ));
            }
            (backend, servers)
        });
        Bed {
            rt,
            backend,
            servers,
            client,
            expected: [server_id],
            _shutdown: shutdown,
        }
    }

    fn dial(&self, server: usize) -> Dial<'_> {
        Dial {
            hbone_addr: self.servers[server],
            authority: self.backend,
            source: &self.client,
            expected: &self.expected,
            headers: HeaderMap::new(),
        }
    }

    /// A stream through server `server` on `pool`, and how long opening it took.
    async fn open(&self, pool: &Pool, server: usize) -> (H2Stream, Duration) {
        let t0 = Instant::now();
        let s = pool.connect(self.dial(server)).await.expect("CONNECT");
        (s, t0.elapsed())
    }
}

/// Ends a stream both ways and waits for the backend's side to end.
async fn close(mut s: H2Stream) {
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
}

fn connect(c: &mut Criterion, bed: &Bed) {
    let mut g = c.benchmark_group("connect");
    g.throughput(Throughput::Elements(1));
    let pool = Pool::new(PoolOptions::default());
    bed.rt
        .block_on(async { close(bed.open(&pool, 0).await.0).await });
    g.bench_function("pooled", |b| {
        b.iter_custom(|iters| {
            bed.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (s, took) = bed.open(&pool, 0).await;
                    total += took;
                    close(s).await;
                }
                total
            })
        })
    });
    assert_eq!(
        pool.stats().connections_opened,
        1,
        "pooled: one outer connection"
    );
    g.bench_function("fresh", |b| {
        b.iter_custom(|iters| {
            bed.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pool = Pool::new(PoolOptions::default());
                    let (s, took) = bed.open(&pool, 0).await;
                    total += took;
                    assert_eq!(pool.stats().connections_opened, 1);
                    close(s).await;
                }
                total
            })
        })
    });
    g.bench_function("tcp_only", |b| {
        b.iter_custom(|iters| {
            bed.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let s = TcpStream::connect(bed.backend).await.unwrap();
                    total += t0.elapsed();
                    drop(s);
                }
                total
            })
        })
    });
    g.finish();
}

/// Runs the future `$work` `$iters` times on the bed's runtime; the time it took.
macro_rules! timed {
    ($bed:expr, $iters:expr, $work:expr) => {
        $bed.rt.block_on(async {
            let t0 = Instant::now();
            for _ in 0..$iters {
                $work.await;
            }
            t0.elapsed()
        })
    };
}

fn throughput(c: &mut Criterion, bed: &Bed) {
    let mut g = c.benchmark_group("throughput");
    g.throughput(Throughput::Bytes(BIG)).sample_size(10);
    let pool = Pool::new(PoolOptions::default());
    let chunk = vec![7u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let servers = [
        ("hbone", 0),
        ("hbone_copybuf_64KiB", 1),
        ("hbone_copybuf_256KiB", 2),
    ];
    for (name, server) in servers {
        let mut s = bed.rt.block_on(bed.open(&pool, server)).0;
        g.bench_function(format!("{name}_upload_64MiB"), |b| {
            b.iter_custom(|iters| timed!(bed, iters, upload(&mut s, &chunk, BIG)))
        });
        g.bench_function(format!("{name}_download_64MiB"), |b| {
            b.iter_custom(|iters| timed!(bed, iters, download(&mut s, &mut buf, BIG)))
        });
        bed.rt.block_on(close(s));
    }
    let mut s = bed.rt.block_on(TcpStream::connect(bed.backend)).unwrap();
    s.set_nodelay(true).unwrap();
    g.bench_function("tcp_upload_64MiB", |b| {
        b.iter_custom(|iters| timed!(bed, iters, upload(&mut s, &chunk, BIG)))
    });
    g.bench_function("tcp_download_64MiB", |b| {
        b.iter_custom(|iters| timed!(bed, iters, download(&mut s, &mut buf, BIG)))
    });
    g.finish();
}

fn rtt(c: &mut Criterion, bed: &Bed) {
    let mut g = c.benchmark_group("rtt");
    g.throughput(Throughput::Elements(1));
    let pool = Pool::new(PoolOptions::default());
    let mut hbone = bed.rt.block_on(bed.open(&pool, 0)).0;
    let mut tcp = bed.rt.block_on(TcpStream::connect(bed.backend)).unwrap();
    tcp.set_nodelay(true).unwrap();
    for (size, label) in [(128usize, "128B"), (4096, "4KiB")] {
        let mut msg = command(b'E', size as u64).to_vec();
        msg.resize(9 + size, b'x');
        let mut back = vec![0u8; size];
        g.bench_function(format!("hbone_echo_{label}"), |b| {
            b.iter_custom(|iters| timed!(bed, iters, echo(&mut hbone, &msg, &mut back)))
        });
        g.bench_function(format!("tcp_echo_{label}"), |b| {
            b.iter_custom(|iters| timed!(bed, iters, echo(&mut tcp, &msg, &mut back)))
        });
    }
    bed.rt.block_on(close(hbone));
    g.finish();
}

fn benches(c: &mut Criterion) {
    let bed = Bed::new();
    connect(c, &bed);
    throughput(c, &bed);
    rtt(c, &bed);
}

criterion_group!(hbone, benches);
criterion_main!(hbone);
