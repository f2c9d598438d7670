//! Config work (parse, compile) that must not delay a request: [`run`], [`checkpoint`], [`drain`].
//!
//! A 1,000-route parse and compile is ~25 ms of CPU. Measured with `cargo bench --bench swap` (windows of
//! keep-alive traffic while a config is parsed and compiled every 100 ms), that CPU, not the swap itself, is
//! what raises in-flight latency: compiling without storing raised p99 from 0.86 to 2.9 ms, storing compiled
//! snapshots without compiling left it at 0.95 ms. Lowering the compiling thread's `nice` to 10 did not help
//! (p99 1.9–2.8 ms): once picked, the scheduler lets a niced thread finish its slice before a woken request
//! thread gets the core. Hence two lanes: the job starts on a `SCHED_IDLE` thread, which only runs on CPU the
//! proxy leaves idle; if it has not finished after [`PATIENCE`], a second copy starts at [`BACKGROUND_NICE`] and
//! the first result wins, so a proxy whose cores are saturated still applies a config, within the patience plus
//! an ordinary compile.
//!
//! `SCHED_IDLE` alone is not enough, and the idle lane must yield ([`checkpoint`]). Traced with
//! `perf sched` (Linux 6.18, EEVDF) at ~60 % load: when a request thread sleeps, the scheduler can pick the
//! idle-priority thread over another request thread just woken on the same core, and nothing takes the core
//! back until the idle thread's slice ends at a tick — one worker waited 3.1 ms while the lane ran. Runtime
//! workers waiting more than 0.5 ms for a core, per 6 s window: 14 without swaps, 66 with a lane job of pure
//! arithmetic (no memory traffic, no allocation: the same CPU time as a compile), 109 with the compile itself,
//! 311 with the compile at ordinary priority. Calling `sched_yield` every [`YIELD_EVERY`] gives the core back
//! to whoever waits for it: over 20 runs, p99 over the same run's quiet windows was 0.95–2.22× (median 1.4×)
//! with the arithmetic job, 0.69–1.30× (median 1.0×) with the same job yielding. So parse, compile and the
//! frees of a replaced config call [`checkpoint`] between units (a document, a route, a table, an object); the
//! longest stretch left without one is ~1 ms (gathering the policies, in the authz crate).
//! Measured after, at ~3,700 req/s: in-process swaps every 100 ms raised p99 1.42–2.40× (median 1.98×, 5 runs)
//! over the same run's quiet windows before, 0.84–1.64× (median 1.11×, 12 runs) after. The cost: a lane gives
//! way to any runnable thread, so a swap on a busy proxy takes longer (under that load 55–93 ms median instead
//! of 56–82, well inside the patience). Figures and traces: `docs/performance.md`.
//!
//! Each lane is a fresh thread (an unprivileged thread cannot leave `SCHED_IDLE` again, so the policy is set on
//! a thread that ends with its job). A job a fallback overtook runs on to its end and its result is dropped; at
//! most [`MAX_IDLE_LANES`] such idle-lane jobs exist at once, after that a job goes straight to the fallback.
//! The fallback lane does not yield: it exists for a proxy with no idle CPU, where a yield would only delay it.
//!
//! Freeing a replaced 1,000-route snapshot is 1–4 ms of CPU too. [`drop_idle`] hands such values to one
//! idle-priority reaper thread, which yields as the lanes do (the snapshot's and the mesh's `Drop` free them
//! piece by piece through [`drain`]); when [`MAX_PENDING_DROPS`] are already waiting for it (a saturated proxy),
//! the caller frees the value itself, so memory stays bounded.
//!
//! An idle-priority thread holding a lock a request thread also takes (the log writer's, when a compile logs a
//! warning) delays that thread until the lane runs again, which the blocked thread's freed core allows.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// How much work an idle-lane job does between two [`checkpoint`] yields, at most (checkpoints permitting).
pub const YIELD_EVERY: Duration = Duration::from_micros(50);

thread_local! {
    /// On an idle lane's thread: when it last yielded (or started). `None` on every other thread.
    static LAST_YIELD: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Yields [`checkpoint`] made on this thread (read by the tests).
    static YIELDS: Cell<u64> = const { Cell::new(0) };
}

/// Called between units of config work (a document parsed, a service compiled): on an idle lane's thread, when
/// [`YIELD_EVERY`] has passed since the last yield, gives the CPU to any request thread waiting for it
/// (`sched_yield`); anywhere else, nothing. See the module doc for why an idle-priority thread must do this.
pub fn checkpoint() {
    LAST_YIELD.with(|last| {
        let Some(at) = last.get() else { return };
        let now = Instant::now();
        if now.duration_since(at) >= YIELD_EVERY {
            std::thread::yield_now();
            last.set(Some(Instant::now()));
            YIELDS.with(|n| n.set(n.get() + 1));
        }
    });
}

/// Empties `items` one by one with a [`checkpoint`] after each: how a big config structure is freed on a lane
/// (call it from the structure's `Drop`; off the lanes it is an ordinary drop, element by element).
pub fn drain<C: Default + IntoIterator>(items: &mut C) {
    for item in std::mem::take(items) {
        drop(item);
        checkpoint();
    }
}

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
                LAST_YIELD.with(|last| last.set(Some(Instant::now())));
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
                LAST_YIELD.with(|last| last.set(Some(Instant::now())));
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

    /// Calls [`checkpoint`] for `work` of wall time; the yields it made on this thread.
    fn checkpoints_for(work: Duration) -> u64 {
        let before = YIELDS.with(Cell::get);
        let t = Instant::now();
        while t.elapsed() < work {
            checkpoint();
        }
        YIELDS.with(Cell::get) - before
    }

    #[test]
    fn checkpoints_yield_on_an_idle_lane_and_nowhere_else() {
        static LANES: AtomicUsize = AtomicUsize::new(0);
        let work = Duration::from_millis(5);
        assert_eq!(checkpoints_for(work), 0, "an ordinary thread never yields");
        // A patience no busy test machine exhausts: the job stays on the idle lane.
        let patience = Duration::from_secs(60);
        let (yields, lane) = run_counted(&LANES, move || checkpoints_for(work), patience);
        assert_eq!(lane, Lane::Idle);
        // 5 ms of wall time in steps of at least YIELD_EVERY (50 µs): at most 100 yields (fewer when the
        // machine is busy and the lane waits for a core between two checkpoints), never none.
        let most = (work.as_micros() / YIELD_EVERY.as_micros()) as u64;
        assert!(
            (1..=most).contains(&yields),
            "{yields} yields in {work:?} (at most {most})"
        );
    }

    #[test]
    fn drain_empties_and_frees_every_item() {
        static FREED: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                FREED.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut v: Vec<Counted> = (0..1000).map(|_| Counted).collect();
        drain(&mut v);
        assert!(v.is_empty());
        assert_eq!(FREED.load(Ordering::Relaxed), 1000);
        let mut m: std::collections::HashMap<u32, Counted> =
            (0..10).map(|k| (k, Counted)).collect();
        drain(&mut m);
        assert!(m.is_empty());
        assert_eq!(FREED.load(Ordering::Relaxed), 1010);
    }
}
