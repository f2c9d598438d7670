//! Hot swap: a compiled snapshot behind `arc-swap`, and a directory watcher that recompiles on change.
//!
//! Readers call [`Live::load`] once per request and keep that `Arc` for the request's life, so a request never
//! sees half of an old config and half of a new one. A change is parsed and compiled off the request path; an
//! invalid change is rejected whole and the last good snapshot keeps serving, with the error kept for display.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{ConfigError, Mesh};

/// A hot-swappable compiled config of type `T`, with its generation and the last error.
pub struct Live<T> {
    current: ArcSwap<T>,
    // implementation detail: generation counter, last error (Mutex<Option<ConfigError>>: off the request path)
}

impl<T> Live<T> {
    pub fn new(initial: T) -> Self {
        let _ = Live::<T>::generation;
        Live { current: ArcSwap::from_pointee(initial) }
    }
    /// The current snapshot (one atomic load).
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }
    /// Installs a new snapshot and bumps the generation.
    pub fn store(&self, next: T) {
        todo!("{}", std::mem::size_of_val(&next))
    }
    /// How many snapshots were installed (the initial one is generation 1).
    pub fn generation(&self) -> u64 {
        todo!()
    }
    /// The last rejected change, cleared by the next good one.
    pub fn last_error(&self) -> Option<ConfigError> {
        todo!()
    }
    pub fn set_error(&self, err: ConfigError) {
        todo!("{err}")
    }
}

/// Watches `dir` (inotify via `notify`, including Kubernetes' ConfigMap `..data` symlink swap) and, after
/// `debounce` of quiet, reloads: `Mesh::load_dir` then `compile`; success is stored in `live`, failure is
/// logged (file, object, field) and recorded with [`Live::set_error`] while the old snapshot keeps serving.
/// Runs on a spawned task until the returned guard is dropped.
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
    todo!("{dir:?}{trust_domain}{debounce:?}{}", Arc::strong_count(&live) + std::mem::size_of_val(&compile))
}

/// Stops a [`watch_dir`] task when dropped.
pub struct WatchGuard {
    // implementation detail
}
