//! Config work (parse, compile) that must not delay a request: [`run`].
//!
//! A 1,000-route parse and compile is ~25 ms of CPU. Measured with `cargo bench --bench swap` (windows of
//! keep-alive traffic while a config is parsed and compiled every 100 ms), that CPU, not the swap itself, is
//! what raises in-flight latency: compiling without storing raised p99 from 0.86 to 2.9 ms, storing compiled
//! snapshots without compiling left it at 0.95 ms. Lowering the compiling thread's `nice` to 10 did not help
//! (p99 1.9–2.8 ms): once picked, the scheduler lets a niced thread finish its slice before a woken request
//! thread gets the core. A `SCHED_IDLE` thread is preempted at once by any ordinary thread that wakes, so a
//! compile there costs in-flight requests nothing (p99 0.9–1.0 ms in the same bench) — but it only runs on CPU
//! the proxy leaves idle, and a proxy whose cores are saturated would never apply a config. Hence two lanes:
//! the job starts on an idle-priority thread; if it has not finished after [`PATIENCE`], a second copy starts
//! at [`BACKGROUND_NICE`] and the first result wins. A proxy with spare CPU swaps without a latency spike; a
//! saturated one still swaps, within the patience plus an ordinary compile.
//!
//! Each lane is a fresh thread (an unprivileged thread cannot leave `SCHED_IDLE` again, so the policy is set on
//! a thread that ends with its job). A job a fallback overtook runs on to its end and its result is dropped; at
//! most [`MAX_IDLE_LANES`] such idle-lane jobs exist at once, after that a job goes straight to the fallback.
//!
//! Freeing a replaced 1,000-route snapshot is 1–4 ms of CPU too, and in the same bench it raised p99 by half
//! (1.25 → 1.80 ms with 8 connections at ~3,700 req/s; with the frees held back, 1.17–1.28 ms). [`drop_idle`]
//! hands such values to one idle-priority reaper thread; when [`MAX_PENDING_DROPS`] are already waiting for it
//! (a saturated proxy), the caller frees the value itself, so memory stays bounded. Measured after: stores alone
//! 1.45–2.01 ms over five runs, so the reaper removes only part of that rise (the rest: see below).
//!
//! What the figures above do not cover: at ~60 % load (the same bench with 8 connections) swaps every 100 ms
//! still raised p99 from 1.1–1.3 to 2–2.8 ms, with the lanes or without (2.16 vs 2.40 ms for compiles alone).
//! Scheduling is not all of it there; what the rest is was not measured (a suspect: the compile's memory traffic
//! in the caches the request threads share).
//! And an idle-priority thread holding a lock a request thread also takes (the log writer's, when a compile
//! logs a warning) delays that thread until the lane runs again, which the blocked thread's freed core allows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use super::live::{background_priority, BACKGROUND_NICE};

/// How long a job may wait for idle CPU before a copy competes for it at [`BACKGROUND_NICE`].
pub const PATIENCE: Duration = Duration::from_millis(250);

/// Idle-lane jobs alive at once (running, or overtaken and finishing).
pub const MAX_IDLE_LANES: usize = 2;

static IDLE_LANES: AtomicUsize = AtomicUsize::new(0);

/// Values handed to the reaper and not yet freed, beyond which [`drop_idle`] frees on the caller's thread.
pub const MAX_PENDING_DROPS: usize = 4;

static PENDING_DROPS: AtomicUsize = AtomicUsize::new(0);

type Garbage = Box<dyn Send>;

/// The reaper's queue; `None` when its thread could not be started.
static REAPER: OnceLock<Option<mpsc::Sender<Garbage>>> = OnceLock::new();

/// Which lane produced a job's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// The idle-priority thread (`SCHED_IDLE`, or [`BACKGROUND_NICE`] where that policy cannot be set).
    Idle,
    /// The copy started after the patience ran out, at [`BACKGROUND_NICE`].
    Fallback,
}

/// Runs `job` off the request path (see the module doc) and returns its result; blocks the calling thread
/// (call it from a config thread or `spawn_blocking`, never from an async task). If a lane's thread cannot be
/// started, the job runs on the calling thread.
pub fn run<T, F>(job: F) -> T
where
    T: Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    run_counted(&IDLE_LANES, job, PATIENCE).0
}

/// [`run`] with a given patience, counting idle lanes in `lanes`; also says which lane answered.
fn run_counted<T, F>(lanes: &'static AtomicUsize, job: F, patience: Duration) -> (T, Lane)
where
    T: Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    let job = Arc::new(job);
    // Capacity 2: neither lane ever blocks on sending, whoever has stopped listening.
    let (tx, rx) = mpsc::sync_channel::<(T, Lane)>(2);
    if let Some(slot) = IdleLane::claim(lanes) {
        let (j, t) = (job.clone(), tx.clone());
        let started = std::thread::Builder::new()
            .name("config-idle".into())
            .spawn(move || {
                let _slot = slot;
                idle_priority();
                let _ = t.send((j(), Lane::Idle));
            });
        if started.is_ok() {
            if let Ok(done) = rx.recv_timeout(patience) {
                return done;
            }
            tracing::debug!(
                ?patience,
                "config job starved of idle CPU: a copy competes at nice {BACKGROUND_NICE}"
            );
        }
    }
    let j = job.clone();
    let started = std::thread::Builder::new()
        .name("config-fallback".into())
        .spawn(move || {
            background_priority();
            let _ = tx.send((j(), Lane::Fallback));
        });
    match started {
        // Both senders gone without a result means both lanes panicked: run it here, panicking the caller.
        Ok(_) => rx.recv().unwrap_or_else(|_| (job(), Lane::Fallback)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a config thread: compiling on the caller's");
            (job(), Lane::Fallback)
        }
    }
}

/// Drops `value` on the idle-priority reaper thread (see the module doc), or here when the reaper is behind by
/// [`MAX_PENDING_DROPS`] or cannot run.
pub fn drop_idle<T: Send + 'static>(value: T) {
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Garbage>();
        let started = std::thread::Builder::new()
            .name("config-reaper".into())
            .spawn(move || {
                idle_priority();
                for garbage in rx {
                    drop(garbage);
                    PENDING_DROPS.fetch_sub(1, Ordering::AcqRel);
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the config reaper: replaced configs freed inline");
                None
            }
        }
    });
    // Without a reaper, or with one too far behind, `value` is dropped here, at the end of this function.
    let Some(reaper) = reaper else { return };
    let room = PENDING_DROPS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_PENDING_DROPS).then_some(n + 1)
    });
    if room.is_ok() {
        if let Err(mpsc::SendError(garbage)) = reaper.send(Box::new(value)) {
            PENDING_DROPS.fetch_sub(1, Ordering::AcqRel);
            drop(garbage);
        }
    }
}

/// A claim on one of the [`MAX_IDLE_LANES`]; released when the lane's thread ends (or never starts).
struct IdleLane(&'static AtomicUsize);

impl IdleLane {
    fn claim(lanes: &'static AtomicUsize) -> Option<IdleLane> {
        lanes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IDLE_LANES).then_some(n + 1)
            })
            .ok()
            .map(|_| IdleLane(lanes))
    }
}

impl Drop for IdleLane {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Puts the calling thread under `SCHED_IDLE`; where that fails, lowers it to [`BACKGROUND_NICE`].
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the parameter is a valid sched_param for SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE refused: config thread at nice");
        background_priority();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    fn nice() -> i32 {
        // SAFETY: gettid has no preconditions; getpriority reads this thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    /// A job standing for one starved of CPU: on an idle-priority thread it waits until `hold` is released
    /// (at most 10 s); elsewhere it answers its thread's policy and nice at once.
    fn starved_when_idle(hold: mpsc::Receiver<()>) -> impl Fn() -> (i32, i32) + Send + Sync {
        let hold = Mutex::new(hold);
        move || {
            if policy() == libc::SCHED_IDLE {
                let _ = hold.lock().unwrap().recv_timeout(Duration::from_secs(10));
                return (libc::SCHED_IDLE, i32::MIN);
            }
            (policy(), nice())
        }
    }

    #[test]
    fn a_job_with_idle_cpu_runs_at_idle_priority() {
        static LANES: AtomicUsize = AtomicUsize::new(0);
        let (value, lane) = run_counted(&LANES, || (policy(), 7), Duration::from_secs(10));
        assert_eq!(lane, Lane::Idle);
        assert_eq!(value, (libc::SCHED_IDLE, 7));
        // the caller's own thread is left as it was
        assert_ne!(policy(), libc::SCHED_IDLE);
    }

    #[test]
    fn a_starved_job_is_overtaken_by_a_copy_at_background_nice() {
        static LANES: AtomicUsize = AtomicUsize::new(0);
        let (release, hold) = mpsc::channel();
        let base = nice();
        let t = Instant::now();
        let (value, lane) = run_counted(&LANES, starved_when_idle(hold), Duration::from_millis(50));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the fallback did not answer"
        );
        assert_eq!(lane, Lane::Fallback);
        assert_ne!(value.0, libc::SCHED_IDLE);
        assert_eq!(value.1, BACKGROUND_NICE.max(base));
        drop(release);
    }

    /// Records the thread and policy it is dropped on; optionally waits on `hold` first (at most 10 s).
    struct Noted {
        seen: mpsc::Sender<(String, i32)>,
        hold: Option<mpsc::Receiver<()>>,
    }

    impl Drop for Noted {
        fn drop(&mut self) {
            if let Some(hold) = &self.hold {
                let _ = hold.recv_timeout(Duration::from_secs(10));
            }
            let name = std::thread::current().name().unwrap_or("").to_string();
            let _ = self.seen.send((name, policy()));
        }
    }

    #[test]
    fn drops_happen_on_the_idle_reaper_until_it_falls_behind() {
        let (seen, noted) = mpsc::channel();
        drop_idle(Noted {
            seen: seen.clone(),
            hold: None,
        });
        let (thread, pol) = noted
            .recv_timeout(Duration::from_secs(10))
            .expect("dropped");
        assert_eq!((thread.as_str(), pol), ("config-reaper", libc::SCHED_IDLE));

        // A reaper stuck on one drop: the next values queue up to the bound, then the caller frees them.
        let (release, hold) = mpsc::channel();
        drop_idle(Noted {
            seen: seen.clone(),
            hold: Some(hold),
        });
        let me = std::thread::current().name().unwrap_or("").to_string();
        let mut inline = None;
        for n in 0..MAX_PENDING_DROPS + 1 {
            drop_idle(Noted {
                seen: seen.clone(),
                hold: None,
            });
            if let Ok((thread, _)) = noted.try_recv() {
                assert_eq!(
                    thread, me,
                    "only the caller can free while the reaper is stuck"
                );
                inline = Some(n);
                break;
            }
        }
        assert!(
            inline.is_some(),
            "never freed inline: the reaper's queue is unbounded"
        );
        drop(release);
        // The stuck drop and the queued ones all finish on the reaper.
        let queued = 1 + inline.expect("checked");
        let rest: Vec<_> = (0..queued)
            .map(|_| {
                noted
                    .recv_timeout(Duration::from_secs(10))
                    .expect("queued drop")
                    .0
            })
            .collect();
        assert!(rest.iter().all(|t| t == "config-reaper"), "{rest:?}");
    }

    #[test]
    fn idle_lanes_are_bounded() {
        static LANES: AtomicUsize = AtomicUsize::new(0);
        // Fill every idle lane with a starved job, then a further job goes straight to the fallback.
        let mut releases = Vec::new();
        for _ in 0..MAX_IDLE_LANES {
            let (release, hold) = mpsc::channel();
            releases.push(release);
            let (_, lane) = run_counted(&LANES, starved_when_idle(hold), Duration::from_millis(20));
            assert_eq!(lane, Lane::Fallback);
        }
        assert_eq!(LANES.load(Ordering::SeqCst), MAX_IDLE_LANES);
        let t = Instant::now();
        let (_, lane) = run_counted(&LANES, || (), Duration::from_secs(10));
        assert_eq!(
            lane,
            Lane::Fallback,
            "an idle lane beyond the bound was started"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "waited out the patience instead"
        );
        // Released, the overtaken jobs end and give their lanes back.
        drop(releases);
        let deadline = Instant::now() + Duration::from_secs(10);
        while LANES.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(LANES.load(Ordering::SeqCst), 0, "lanes not given back");
        let (_, lane) = run_counted(&LANES, || (), Duration::from_secs(10));
        assert_eq!(lane, Lane::Idle);
    }
}
