//! The direct path's pool over real loopback TCP connections (the HBONE case runs end to end in
//! `tests/resilience`): what goes back to the pool, what is closed, and what a try is given.

use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// An echo server counting its connections; a message `bye` is answered, then the connection is closed and
/// `closed` told.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if &buf[..n] == b"bye" {
                        drop(conn);
                        let _ = tx.send(());
                        return;
                    }
                }
            });
        }
    });
    Echo {
        addr,
        accepted,
        closed,
    }
}

fn upstreams() -> Upstreams {
    crate::testbed::dev_ways().direct
}

struct Try {
    link: Arc<Link>,
    stream: L4Stream,
}

async fn open(ups: &Upstreams, target: &Arc<Target>, slot: Option<SlotTag>, fresh: bool) -> Try {
    open_with(ups, target, slot, fresh, None).await
}

async fn open_with(
    ups: &Upstreams,
    target: &Arc<Target>,
    slot: Option<SlotTag>,
    fresh: bool,
    idle: Option<Duration>,
) -> Try {
    let link = ups.link(target.clone(), slot, fresh, idle, None);
    let addr = PingoraAddr::Inet(target.authority);
    let stream = link.connect(&addr).await.expect("connects");
    Try { link, stream }
}

impl Try {
    async fn exchange(&mut self, msg: &[u8]) {
        self.stream.write_all(msg).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut got = vec![0u8; msg.len()];
        self.stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }

    /// The answer was read whole and Pingora checks the connection before pooling it: the check must read
    /// nothing (end of stream: Pingora lets go of its handle).
    async fn finish(mut self) {
        self.link.complete();
        let mut byte = [0u8; 1];
        assert_eq!(self.stream.read(&mut byte).await.unwrap(), 0);
    }
}

fn tcp_target(echo: &Echo) -> Arc<Target> {
    Arc::new(Target::new(echo.addr, None))
}

const SLOT: Option<SlotTag> = Some(SlotTag {
    service: 1,
    index: 0,
});

#[tokio::test]
async fn a_complete_try_hands_its_connection_to_the_next_one() {
    let (echo, ups) = (echo().await, upstreams());
    let target = tcp_target(&echo);
    let mut first = open(&ups, &target, None, false).await;
    assert_eq!(first.link.connection_use(), Some((false, 1)));
    first.exchange(b"one").await;
    first.finish().await;
    assert_eq!(ups.idle_count(), 1);
    let mut second = open(&ups, &target, None, false).await;
    assert_eq!(second.link.connection_use(), Some((true, 2)), "reused");
    second.exchange(b"two").await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(ups.stats().opened.load(Ordering::Relaxed), 1);
    assert_eq!(ups.stats().reused.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_unfinished_try_closes_its_connection() {
    let (echo, ups) = (echo().await, upstreams());
    let target = tcp_target(&echo);
    // Dropped by Pingora (an error, an answer not read whole): never pooled.
    let mut dropped = open(&ups, &target, None, false).await;
    dropped.exchange(b"one").await;
    drop(dropped);
    // Shut down by Pingora (`Connection: close`), even after a complete answer.
    let mut closed = open(&ups, &target, None, false).await;
    assert_eq!(closed.link.connection_use(), Some((false, 1)));
    closed.exchange(b"two").await;
    closed.link.complete();
    closed.stream.shutdown().await.unwrap();
    drop(closed);
    assert_eq!(ups.idle_count(), 0);
    let mut third = open(&ups, &target, None, false).await;
    assert_eq!(third.link.connection_use(), Some((false, 1)));
    third.exchange(b"three").await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_the_destination_closed_is_not_reused() {
    let (mut echo, ups) = (echo().await, upstreams());
    let target = tcp_target(&echo);
    let mut first = open(&ups, &target, None, false).await;
    first.exchange(b"bye").await;
    echo.closed.recv().await.unwrap();
    first.finish().await;
    assert_eq!(ups.idle_count(), 1, "pooled before the close was seen");
    let mut second = open(&ups, &target, None, false).await;
    assert_eq!(second.link.connection_use(), Some((false, 1)), "a new one");
    second.exchange(b"two").await;
    assert_eq!(ups.stats().discarded.load(Ordering::Relaxed), 1);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_retry_and_an_expired_connection_get_fresh_ones() {
    let (echo, ups) = (echo().await, upstreams());
    let target = tcp_target(&echo);
    let mut first = open(&ups, &target, None, false).await;
    first.exchange(b"one").await;
    first.finish().await;
    let mut retry = open(&ups, &target, None, true).await;
    assert_eq!(retry.link.connection_use(), Some((false, 1)), "fresh");
    retry.exchange(b"retry").await;
    assert_eq!(ups.idle_count(), 1, "the pooled one stays for others");
    drop(retry);
    // Pooled with no idle time left: never given out again.
    let taken = open(&ups, &target, None, false).await;
    assert_eq!(taken.link.connection_use(), Some((true, 2)));
    let mut expiring = open_with(&ups, &target, None, false, Some(Duration::ZERO)).await;
    expiring.exchange(b"two").await;
    expiring.finish().await;
    let mut after = open(&ups, &target, None, false).await;
    assert_eq!(after.link.connection_use(), Some((false, 1)));
    after.exchange(b"three").await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_slot_keeps_one_connection_and_the_sweep_closes_idle_ones() {
    let (echo, ups) = (echo().await, upstreams());
    let target = tcp_target(&echo);
    let mut a = open(&ups, &target, SLOT, false).await;
    let mut b = open(&ups, &target, SLOT, true).await;
    let mut other = open(&ups, &target, None, false).await;
    for (t, msg) in [(&mut a, b"a"), (&mut b, b"b"), (&mut other, b"c")] {
        t.exchange(msg).await;
    }
    a.finish().await;
    b.finish().await;
    other.finish().await;
    assert_eq!(ups.idle_count(), 2, "one for the slot, one without");
    assert_eq!(ups.stats().discarded.load(Ordering::Relaxed), 1);
    let c = open(&ups, &target, SLOT, false).await;
    assert_eq!(c.link.connection_use(), Some((true, 2)), "the slot's own");
    drop(c);
    ups.shared.sweep(Instant::now());
    assert_eq!(
        ups.idle_count(),
        1,
        "the sweep keeps what is quiet and in time"
    );
    ups.shared.sweep(Instant::now() + DEFAULT_IDLE);
    assert_eq!(ups.idle_count(), 0, "and closes what expired");
}
