//! A keyed registry of shared state that outlives config snapshots, with bounded memory.
//!
//! Entries are handed out as `Arc`s and kept in a map behind a `Mutex` (touched only when a snapshot is compiled,
//! never on the request path). An entry whose only owner is the registry (`Arc::strong_count == 1`: no snapshot,
//! permit or handle holds it any more) is dead and is pruned: eagerly by [`Registry::retain_live`], and
//! automatically when a new entry is created and the map has doubled since the last prune (amortized O(1) per
//! creation), so the map never holds more than about twice the live entries as services and endpoints churn.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Below this many entries a registry is never pruned automatically.
const MIN_PRUNE_LEN: usize = 16;

#[derive(Debug)]
pub(in crate::resilience) struct Registry<K, V> {
    inner: Mutex<Inner<K, V>>,
}

#[derive(Debug)]
struct Inner<K, V> {
    map: HashMap<K, Arc<V>>,
    /// Prune when the map reaches this many entries.
    prune_at: usize,
}

impl<K, V> Default for Registry<K, V> {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                prune_at: MIN_PRUNE_LEN,
            }),
        }
    }
}

impl<K: Eq + Hash, V> Registry<K, V> {
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // The map stays consistent even if a holder panicked: every mutation is a single map operation.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entry for `key`, created with `make` when absent. Creating one may prune dead entries first; each pruned
    /// value is passed to `on_prune` (still under the lock, so it must not call back into this registry).
    pub fn get_or_create<Q>(
        &self,
        key: &Q,
        make: impl FnOnce() -> V,
        on_prune: impl FnMut(&V),
    ) -> Arc<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        let mut inner = self.lock();
        if let Some(v) = inner.map.get(key) {
            return v.clone();
        }
        if inner.map.len() >= inner.prune_at {
            prune(&mut inner, on_prune);
        }
        let v = Arc::new(make());
        inner.map.insert(key.to_owned().into(), v.clone());
        v
    }

    /// Drops every entry nothing but the registry holds; returns how many remain.
    pub fn retain_live(&self, on_prune: impl FnMut(&V)) -> usize {
        let mut inner = self.lock();
        prune(&mut inner, on_prune);
        inner.map.len()
    }

    /// Entries held now (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Calls `f` on every entry (under the lock).
    pub fn for_each(&self, mut f: impl FnMut(&K, &Arc<V>)) {
        for (k, v) in &self.lock().map {
            f(k, v);
        }
    }
}

fn prune<K, V>(inner: &mut Inner<K, V>, mut on_prune: impl FnMut(&V)) {
    // strong_count == 1 is stable here: new clones are only made by this registry, under this lock.
    inner.map.retain(|_, v| {
        let live = Arc::strong_count(v) > 1;
        if !live {
            on_prune(v);
        }
        live
    });
    inner.prune_at = (inner.map.len() * 2).max(MIN_PRUNE_LEN);
}
