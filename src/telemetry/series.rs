//! A bounded, sharded map from a `Copy` series key to a series of atomics, with least-recently-used eviction.
//!
//! Recording takes one shard's read lock (shards spread the lock's counter across cache lines), hashes a
//! small integer key and bumps atomics: no allocation, no write lock. Only a series seen for the first time
//! takes its shard's write lock and allocates. Each shard holds at most `cap / shards` series; when it is
//! full, the least recently used eighth of it is evicted (counted in [`SeriesMap::evicted`]), so churning
//! label sets (short-lived jobs) cost bounded memory. Recency is a logical clock that advances on each
//! insertion, stored in the entry on each use; an evicted series' counts are gone (Prometheus reads that
//! like a restart of that series).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

type Hasher = foldhash::fast::FixedState;

/// One series and the logical time it was last used.
#[derive(Debug)]
pub(crate) struct Entry<V> {
    last_used: AtomicU64,
    pub(crate) value: V,
}

/// What [`SeriesMap::stats`] reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) len: u64,
    pub(crate) capacity: u64,
    pub(crate) evicted: u64,
}

type Shard<K, V> = RwLock<HashMap<K, Arc<Entry<V>>, Hasher>>;

pub(crate) struct SeriesMap<K, V> {
    shards: Box<[Shard<K, V>]>,
    shard_cap: usize,
    hasher: Hasher,
    clock: AtomicU64,
    evicted: AtomicU64,
}

impl<K: Copy + Hash + Eq + Ord, V> SeriesMap<K, V> {
    /// A map holding at most `cap` series (at least 1).
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        let shards = if cap >= 1024 { 16 } else { 1 };
        SeriesMap {
            shards: (0..shards)
                .map(|_| RwLock::new(HashMap::with_hasher(Hasher::default())))
                .collect(),
            shard_cap: cap / shards,
            hasher: Hasher::default(),
            clock: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> &Shard<K, V> {
        let h = self.hasher.hash_one(key);
        // High bits: the map itself uses the low ones.
        &self.shards[(h >> 59) as usize % self.shards.len()]
    }

    /// Runs `f` on the series for `key`, creating it with `make` when absent.
    pub(crate) fn with<R>(&self, key: K, make: impl FnOnce() -> V, f: impl FnOnce(&V) -> R) -> R {
        let shard = self.shard(&key);
        let now = self.clock.load(Ordering::Relaxed);
        {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(&key) {
                if e.last_used.load(Ordering::Relaxed) != now {
                    e.last_used.store(now, Ordering::Relaxed);
                }
                return f(&e.value);
            }
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) && map.len() >= self.shard_cap {
            self.evict(&mut map);
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let e = map.entry(key).or_insert_with(|| {
            Arc::new(Entry {
                last_used: AtomicU64::new(now),
                value: make(),
            })
        });
        e.last_used.store(now, Ordering::Relaxed);
        f(&e.value)
    }

    /// Drops the least recently used eighth of a full shard (at least one series).
    fn evict(&self, map: &mut HashMap<K, Arc<Entry<V>>, Hasher>) {
        let n = (map.len() / 8).max(1);
        let mut ages: Vec<(u64, K)> = map
            .iter()
            .map(|(k, e)| (e.last_used.load(Ordering::Relaxed), *k))
            .collect();
        if n < ages.len() {
            ages.select_nth_unstable(n - 1);
        }
        for (_, k) in &ages[..n.min(ages.len())] {
            map.remove(k);
        }
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Every series, sorted by key (a stable exposition order).
    pub(crate) fn snapshot(&self) -> Vec<(K, Arc<Entry<V>>)> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            all.extend(map.iter().map(|(k, e)| (*k, e.clone())));
        }
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Series evicted so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Size, cap and evictions at once.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            len: self.len() as u64,
            capacity: self.capacity() as u64,
            evicted: self.evicted(),
        }
    }

    /// The most series this map holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn stays_within_cap_and_counts_evictions() {
        for cap in [1usize, 7, 100, 5000] {
            let m: SeriesMap<u64, AtomicU64> = SeriesMap::new(cap);
            for k in 0..20_000u64 {
                m.with(
                    k,
                    || AtomicU64::new(0),
                    |c| c.fetch_add(1, Ordering::Relaxed),
                );
                assert!(m.len() <= cap, "cap {cap}: {} series", m.len());
            }
            assert_eq!(m.evicted() as usize + m.len(), 20_000, "cap {cap}");
        }
    }

    #[test]
    fn recently_used_series_survive_churn() {
        let m: SeriesMap<u64, AtomicU64> = SeriesMap::new(100);
        // Key 0 is used between every new key: it must never be evicted.
        for k in 1..10_000u64 {
            m.with(
                0,
                || AtomicU64::new(0),
                |c| c.fetch_add(1, Ordering::Relaxed),
            );
            m.with(
                k,
                || AtomicU64::new(0),
                |c| c.fetch_add(1, Ordering::Relaxed),
            );
        }
        let snap = m.snapshot();
        let hot = snap.iter().find(|(k, _)| *k == 0).expect("hot key evicted");
        assert_eq!(hot.1.value.load(Ordering::Relaxed), 9_999);
    }
}
