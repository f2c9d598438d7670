//! Keep-alive traffic through the testbed, its latency by phase, and the probe that sees a config go live.
//!
//! [`Load`] runs `conns` client tasks, each on its own keep-alive connection to one route's service, sending
//! `GET /` (back to back, or at most one every `pace`) until the phase turns [`Phase::Stop`] (or a hard deadline passes); each request is filed
//! under the phase current when it was sent. A failed request (transport error, non-200 or not an echo) is an
//! error; the task reconnects and goes on.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use waypoint::testbed::{Client, Conn, Req};

use super::mesh::{authority, GEN_HEADER};

/// What the traffic is filed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Warmup = 0,
    Quiet = 1,
    FileSwaps = 2,
    DirectSwaps = 3,
    CompileNormal = 4,
    CompileLanes = 5,
    StoreOnly = 6,
    LaneSpin = 7,
    LaneSpinYielding = 8,
    LaneSweep = 9,
    LaneChurn = 10,
    QuietAfter = 11,
    Stop = 12,
}

pub const PHASES: usize = 12;

impl Phase {
    pub fn name(i: usize) -> &'static str {
        [
            "warm-up",
            "no swaps",
            "swaps via folder",
            "swaps in-process",
            "compile (ordinary)",
            "compile (lanes)",
            "store, no compile",
            "lane: spin",
            "lane: spin, yields",
            "lane: sweep 64 MiB",
            "lane: alloc churn",
            "no swaps again",
        ][i]
    }
}

/// Per phase: request latencies (sent → body read) and errors.
#[derive(Default)]
pub struct Samples {
    pub latencies: [Vec<Duration>; PHASES],
    pub errors: [u64; PHASES],
    pub first_error: Option<String>,
}

pub struct Load {
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Samples>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `conns` connections, the `k`th to `svc-{1 + k % (routes - 1)}` (never the probe's `svc-0`).
    pub fn start(
        client: &Client,
        routes: usize,
        conns: usize,
        pace: Duration,
        hard_stop: Instant,
    ) -> Load {
        let phase = Arc::new(AtomicU8::new(Phase::Warmup as u8));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let tasks = (0..conns)
            .map(|k| {
                let svc = 1 + k % (routes - 1).max(1);
                let req = Req::get(&authority(svc), "/");
                let (client, phase, samples) = (client.clone(), phase.clone(), samples.clone());
                tokio::spawn(async move {
                    let mut mine = Samples::default();
                    let mut conn: Option<Conn> = None;
                    loop {
                        let p = phase.load(Ordering::Relaxed) as usize;
                        if p >= PHASES || Instant::now() > hard_stop {
                            break;
                        }
                        let started = Instant::now();
                        match send(&client, &mut conn, &req).await {
                            Ok(()) => mine.latencies[p].push(started.elapsed()),
                            Err(e) => {
                                mine.errors[p] += 1;
                                mine.first_error.get_or_insert(format!("{svc}: {e:#}"));
                                conn = None;
                            }
                        }
                        if !pace.is_zero() {
                            tokio::time::sleep_until((started + pace).into()).await;
                        }
                    }
                    let mut all = samples.lock().unwrap();
                    for p in 0..PHASES {
                        all.latencies[p].append(&mut mine.latencies[p]);
                        all.errors[p] += mine.errors[p];
                    }
                    if all.first_error.is_none() {
                        all.first_error = mine.first_error;
                    }
                })
            })
            .collect();
        Load {
            phase,
            samples,
            tasks,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Stops every task and returns what they measured.
    pub async fn finish(self) -> Samples {
        self.set(Phase::Stop);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// One request on `conn` (opened when `None`): 200 from an echo, else an error.
async fn send(client: &Client, conn: &mut Option<Conn>, req: &Req) -> anyhow::Result<()> {
    if conn.is_none() {
        *conn = Some(client.connect(req).await?);
    }
    let r = conn.as_mut().expect("connected").send(req).await?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    anyhow::ensure!(r.echo.is_some(), "not an echo answer");
    Ok(())
}

/// Sends probe requests (to `svc-0`, `gap` apart, so the probe does not take the compile's CPU) until one
/// reports [`GEN_HEADER`] = `gen`: when its answer arrived, and how many requests it took. `None` after
/// `patience`.
pub async fn wait_seen(
    client: &Client,
    conn: &mut Option<Conn>,
    gen: u64,
    gap: Duration,
    patience: Duration,
) -> anyhow::Result<Option<(Instant, u32)>> {
    let req = Req::get(&authority(0), "/");
    let want = gen.to_string();
    let deadline = Instant::now() + patience;
    let mut n = 0;
    loop {
        if conn.is_none() {
            *conn = Some(client.connect(&req).await?);
        }
        let r = conn.as_mut().expect("connected").send(&req).await;
        n += 1;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                *conn = None;
                return Err(e.context("probe request"));
            }
        };
        let seen = r.echo.as_ref().and_then(|e| e.header(GEN_HEADER));
        if seen == Some(want.as_str()) {
            return Ok(Some((Instant::now(), n)));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(gap).await;
    }
}

/// `p` (0..=100) of sorted `v`.
pub fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}
