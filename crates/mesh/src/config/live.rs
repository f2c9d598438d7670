//! Hot swap: a compiled snapshot behind `arc-swap`, and a directory watcher that recompiles on change.
//!
//! Readers call [`Live::load`] once per request and keep that `Arc` for the request's life, so a request never
//! sees half of an old config and half of a new one. A change is parsed and compiled off the request path; an
//! invalid change is rejected whole and the last good snapshot keeps serving, with the error kept for display.
//!
//! The watcher runs on its own thread (no async runtime needed): `notify` events go into a channel, the thread
//! waits for `debounce` of quiet after the first one, then reloads the directory, re-reading only the documents
//! that changed ([`ParseCache`]). The parse and compile run on an idle-priority thread
//! ([`super::background::run`]), so a reload does not take a core from in-flight requests.
//!
//! A replaced snapshot is not dropped by whoever lets go of it last (often a request, which would pay for
//! freeing a whole compiled config): [`Live::store`] keeps it in a graveyard and frees it there, once no reader
//! holds it, on a later [`Live::store`] or [`Live::reap`] (the watcher calls it every [`REAP_EVERY`]), by
//! handing it to the idle-priority reaper thread ([`super::background::drop_idle`]). A reader
//! holds a snapshot for one request, so the graveyard holds what in-flight requests still use, plus what
//! they let go of since the last store or reap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::{background, ConfigError, Mesh, ParseCache};

/// How often the [`watch_dir`] thread wakes, when idle, to [`Live::reap`].
pub const REAP_EVERY: Duration = Duration::from_secs(2);

/// A hot-swappable compiled config of type `T`, with its generation and the last error.
pub struct Live<T> {
    current: ArcSwap<T>,
    generation: AtomicU64,
    /// Off the request path: only the watcher and admin pages touch it.
    last_error: Mutex<Option<(ConfigError, SystemTime)>>,
    /// Changes rejected so far.
    rejected: AtomicU64,
    /// Replaced snapshots, freed here once no reader holds them. Only `store` and `reap` touch it.
    graveyard: Mutex<Vec<Arc<T>>>,
}

impl<T> Live<T> {
    pub fn new(initial: T) -> Self {
        Live {
            current: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(1),
            last_error: Mutex::new(None),
            rejected: AtomicU64::new(0),
            graveyard: Mutex::new(Vec::new()),
        }
    }
    /// The current snapshot (one atomic load).
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }
    fn graves(&self) -> MutexGuard<'_, Vec<Arc<T>>> {
        // Pushes and drains cannot leave the Vec half-written.
        self.graveyard.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// How many snapshots were installed (the initial one is generation 1).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    /// The last rejected change, cleared by the next good one.
    pub fn last_error(&self) -> Option<ConfigError> {
        self.error_slot().as_ref().map(|(e, _)| e.clone())
    }
    /// When the last rejected change was rejected.
    pub fn last_error_at(&self) -> Option<SystemTime> {
        self.error_slot().as_ref().map(|(_, at)| *at)
    }
    /// Records a rejected change (the current snapshot keeps serving).
    pub fn set_error(&self, err: ConfigError) {
        *self.error_slot() = Some((err, SystemTime::now()));
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    /// How many changes were rejected so far (never reset).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    fn error_slot(&self) -> MutexGuard<'_, Option<(ConfigError, SystemTime)>> {
        // A panic while holding the lock cannot leave an Option half-written.
        self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Swapping in and freeing: the replaced snapshots go to another thread to be freed.
impl<T: Send + Sync + 'static> Live<T> {
    /// Installs a new snapshot and bumps the generation; the one replaced goes to the graveyard, and the
    /// graveyard's snapshots that no reader holds any more are freed ([`Live::reap`]).
    ///
    /// The error is cleared and the snapshot installed before the generation moves, so whoever sees the new
    /// generation also sees the new snapshot.
    pub fn store(&self, next: T) {
        *self.error_slot() = None;
        let old = self.current.swap(Arc::new(next));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.graves().push(old);
        self.reap();
    }
    /// Frees the replaced snapshots that no reader holds any more, on the idle-priority reaper thread
    /// ([`background::drop_idle`]: freeing a large config is milliseconds of CPU a request would wait behind);
    /// returns how many are still held. For the loops that call [`Live::store`], to call now and then when idle.
    pub fn reap(&self) -> usize {
        let mut graves = self.graves();
        // `Live::load` hands out full `Arc`s, and a replaced snapshot can no longer be loaded: a count of 1 is
        // the graveyard's own, for good.
        let (dead, held): (Vec<_>, Vec<_>) =
            graves.drain(..).partition(|s| Arc::strong_count(s) == 1);
        *graves = held;
        let left = graves.len();
        drop(graves);
        if !dead.is_empty() {
            background::drop_idle(dead);
        }
        left
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation())
            .field("last_error", &self.last_error())
            .finish_non_exhaustive()
    }
}

/// How much lower than the proxy's threads a config thread runs (`nice`): the folder watcher itself, and the copy
/// of a compile whose idle-priority lane was starved ([`super::background`]).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`] (Linux: `nice` is per thread), so
/// the request path preempts config work. Best effort: a failure is logged and the thread runs on as it was.
pub fn background_priority() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id changes only this
    // thread's nice value.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the config thread's priority");
    }
}

/// Watches `dir` (inotify via `notify`, including Kubernetes' ConfigMap `..data` symlink swap) and, after
/// `debounce` of quiet, reloads: `Mesh::load_dir` then `compile`; success is stored in `live`, failure is
/// logged (file, object, field) and recorded with [`Live::set_error`] while the old snapshot keeps serving.
/// Runs on a spawned task until the returned guard is dropped.
///
/// The task is a dedicated thread, so this may be called inside or outside an async runtime. If `dir` cannot be
/// watched, the failure is logged and recorded with [`Live::set_error`], and the guard watches nothing.
pub fn watch_dir<T, F>(
    dir: PathBuf,
    trust_domain: String,
    debounce: Duration,
    live: Arc<Live<T>>,
    compile: F,
) -> WatchGuard
where
    T: Send + Sync + 'static,
    F: Fn(&Mesh) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    let handler = move |res: notify::Result<Event>| match res {
        Ok(event) if is_change(&event.kind) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config watcher error"),
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            let err = ConfigError {
                file: dir.clone(),
                object: String::new(),
                field: String::new(),
                message: format!("cannot watch the directory: {e}"),
            };
            tracing::error!(error = %err, "config not watched: changes will not be picked up");
            live.set_error(err);
            return WatchGuard {
                watcher: None,
                stop,
            };
        }
    };
    let stopped = stop.clone();
    let compile = Arc::new(compile);
    let spawned = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            background_priority();
            // The watcher's own: an unchanged document is never parsed twice.
            let cache = Arc::new(Mutex::new(ParseCache::new()));
            loop {
                // Wait for a change (freeing what readers let go of while idle), then for `debounce` of quiet.
                match rx.recv_timeout(REAP_EVERY) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        live.reap();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                reload(&dir, &trust_domain, &live, &compile, &cache);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the config watcher thread: changes will not be picked up");
    }
    WatchGuard {
        watcher: Some(watcher),
        stop,
    }
}

/// One reload: parse and compile (off the request path: [`background::run`]), then swap in or keep the old
/// snapshot. A copy of the job that finds the cache taken (by the copy it overtook) parses without it.
fn reload<T, F>(
    dir: &Path,
    trust_domain: &str,
    live: &Live<T>,
    compile: &Arc<F>,
    cache: &Arc<Mutex<ParseCache>>,
) where
    T: Send + Sync + 'static,
    F: Fn(&Mesh) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let (d, td, f, c) = (
        dir.to_path_buf(),
        trust_domain.to_string(),
        compile.clone(),
        cache.clone(),
    );
    let compiled = background::run(move || {
        let mesh = match c.try_lock() {
            Ok(mut cache) => Mesh::load_dir_cached(&d, &td, &mut cache),
            Err(_) => Mesh::load_dir(&d, &td),
        };
        mesh.and_then(|mesh| f(&mesh))
    });
    match compiled {
        Ok(next) => {
            live.store(next);
            tracing::info!(dir = %dir.display(), generation = live.generation(), "config reloaded");
        }
        Err(err) => {
            tracing::error!(error = %err, file = %err.file.display(), object = %err.object, field = %err.field,
                "config change rejected: the previous config keeps serving");
            live.set_error(err);
        }
    }
}

/// Whether a filesystem event may change what `load_dir` reads. Opens and read-closes (our own reads among
/// them) do not.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Stops a [`watch_dir`] task when dropped.
pub struct WatchGuard {
    watcher: Option<RecommendedWatcher>,
    stop: Arc<AtomicBool>,
}

impl WatchGuard {
    /// Whether the directory is being watched (false when setting up the watch failed).
    pub fn is_watching(&self) -> bool {
        self.watcher.is_some()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        // Stop any pending reload; dropping the watcher closes the channel, which ends the thread.
        self.stop.store(true, Ordering::SeqCst);
        self.watcher.take();
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard")
            .field("watching", &self.is_watching())
            .finish()
    }
}
