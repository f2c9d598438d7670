//! Stand-ins for a compile on the config lanes, to tell what of a compile raises in-flight latency.
//!
//! A compile on the idle lane is CPU, memory traffic and allocation at once. Each [`Kind`] keeps one of those:
//! the same CPU time as a compile (calibrated on this machine before the windows, see [`Calibrated`]) run through
//! [`mesh::config::background::run`] exactly as a compile is, every `interval`:
//! - [`Kind::Spin`]: arithmetic on registers, nothing beyond the L1 cache;
//! - [`Kind::Sweep`]: reads and writes a buffer larger than the machine's last-level cache (64 MiB), allocated
//!   once before the window, so no allocation and no page fault during it;
//! - [`Kind::Churn`]: small allocations (48–560 bytes, each written) kept until the job ends and then freed, a
//!   stand-in for the allocator's share of a compile.
//!
//! The window whose p99 rises like the compile's says what the compile's spike is made of.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::mesh::config::background;

/// Bigger than this machine's L3 (32 MiB on the 2-vCPU EPYC the figures come from).
const SWEEP_BYTES: usize = 64 << 20;
/// One cache line: the sweep touches each once per pass.
const LINE: usize = 64;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Spin,
    SpinYielding,
    Sweep,
    Churn,
}

/// Units of work per job of each kind, sized so that a job run alone takes `target` of CPU.
pub struct Calibrated {
    spin: u64,
    sweep: usize,
    churn: usize,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Calibrated {
    /// Measures each kind on the calling thread (the machine otherwise quiet) and scales it to `target`.
    pub fn new(target: Duration) -> Calibrated {
        let mut buffer = vec![0u8; SWEEP_BYTES];
        sweep(&mut buffer, SWEEP_BYTES / LINE); // touch every page before any window
        let mut c = Calibrated {
            spin: 1 << 20,
            sweep: 1 << 16,
            churn: 1 << 12,
            buffer: Arc::new(Mutex::new(buffer)),
        };
        for kind in [Kind::Spin, Kind::Sweep, Kind::Churn] {
            // Grow the unit until one run takes at least 5 ms, then scale linearly to the target.
            loop {
                let took = c.time(kind);
                if took >= Duration::from_millis(5) {
                    let scale = target.as_secs_f64() / took.as_secs_f64();
                    c.scale(kind, scale);
                    break;
                }
                c.scale(kind, 2.0);
            }
        }
        c
    }

    fn scale(&mut self, kind: Kind, by: f64) {
        let f = |n: f64| (n * by).max(1.0);
        match kind {
            Kind::Spin | Kind::SpinYielding => self.spin = f(self.spin as f64) as u64,
            Kind::Sweep => self.sweep = f(self.sweep as f64) as usize,
            Kind::Churn => self.churn = f(self.churn as f64) as usize,
        }
    }

    fn time(&self, kind: Kind) -> Duration {
        let t = Instant::now();
        self.job(kind)();
        t.elapsed()
    }

    /// The work of one job of `kind`, as a closure for a lane.
    pub fn job(&self, kind: Kind) -> impl Fn() + Send + Sync + 'static {
        let (spin_n, sweep_n, churn_n) = (self.spin, self.sweep, self.churn);
        let buffer = self.buffer.clone();
        move || match kind {
            Kind::Spin => {
                black_box(spin(spin_n, false));
            }
            Kind::SpinYielding => {
                black_box(spin(spin_n, true));
            }
            // Written, not only read, as a compile writes what it builds (a job overtaken by its fallback
            // copy still holds the lock: the copy waits, on its own lane thread, never a request's).
            Kind::Sweep => sweep(&mut buffer.lock().expect("sweep buffer"), sweep_n),
            Kind::Churn => churn(churn_n),
        }
    }

    /// Runs one job of `kind` on the config lanes and returns its wall time.
    pub fn run(&self, kind: Kind) -> Duration {
        let job = self.job(kind);
        let t = Instant::now();
        background::run(job);
        t.elapsed()
    }
}

/// `n` rounds of an integer hash: registers only; `yielding`: with a [`background::checkpoint`] every 4,096
/// rounds, as config work does between units.
fn spin(n: u64, yielding: bool) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        x = (x ^ i).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
        if yielding && i % 4096 == 0 {
            background::checkpoint();
        }
    }
    x
}

/// Touches `lines` cache lines of `buf`, one in each 64 bytes, wrapping around: a read and a write each.
fn sweep(buf: &mut [u8], lines: usize) {
    let n = buf.len() / LINE;
    for k in 0..lines {
        let i = (k % n) * LINE;
        buf[i] = buf[i].wrapping_add(1);
    }
    black_box(&buf[0]);
}

/// `n` small allocations of the sizes a compiled snapshot is made of, held, then freed.
fn churn(n: usize) {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(n);
    for k in 0..n {
        let size = 48 + (k * 37) % 512;
        held.push(vec![k as u8; size]);
    }
    black_box(&held);
}
