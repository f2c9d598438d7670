//! Connection slots: `connectionPool.tcp.maxConnections` for HTTP/1.1 upstreams, enforced exactly.
//!
//! An HTTP/1.1 connection carries one request at a time, so a service with `maxConnections: N` has N slots.
//! A try takes a slot before it gets its connection (waiting, as a pending request, while all are taken) and
//! holds it until the try ends. The slot names the connection: a try holding a slot goes the direct path
//! (`crate::upstream::direct`), whose pool keys the slot's own keep-alive connection and keeps at most one per
//! slot, closing the slot's previous connection when a new one is opened or pooled for it (idle by
//! construction: its slot is held by the try now connecting), so a service never has more than N upstream
//! connections open.
//!
//! Lock-free: a semaphore counts free slots (its waiters are the pending tries), and a bitmap says which
//! indices are taken.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest `maxConnections` enforced with slots (8 KiB of bitmap); a larger limit is not enforced (the
/// compiler warns), as Istio's own default (2^32-1) means "unlimited".
pub const MAX_SLOTS: u32 = 1 << 16;

/// The slots of one service for one `maxConnections` value.
#[derive(Debug)]
pub struct SlotPool {
    max: u32,
    free: Arc<Semaphore>,
    taken: Box<[AtomicU64]>,
    /// Where the next search for a free index starts (spreads concurrent claims).
    hint: AtomicU32,
}

/// A held slot; frees its index, then its semaphore unit, when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<SlotPool>,
    index: u32,
    _unit: OwnedSemaphorePermit,
}

impl Slot {
    /// The slot's index, `0..max`.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (word, bit) = (self.index / 64, self.index % 64);
        self.pool.taken[word as usize].fetch_and(!(1u64 << bit), Ordering::AcqRel);
    }
}

impl SlotPool {
    /// `max` slots (at most [`MAX_SLOTS`]).
    pub fn new(max: u32) -> SlotPool {
        let max = max.clamp(1, MAX_SLOTS);
        SlotPool {
            max,
            free: Arc::new(Semaphore::new(max as usize)),
            taken: (0..max.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            hint: AtomicU32::new(0),
        }
    }

    /// The number of slots.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Slots held now.
    pub fn held(&self) -> u32 {
        self.max - self.free.available_permits() as u32
    }

    /// A slot at once, or `None` when all are held.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let unit = self.free.clone().try_acquire_owned().ok()?;
        Some(self.claim(unit))
    }

    /// A slot, waiting (in arrival order) for one to be freed. Cancel-safe: dropping the future gives up.
    pub async fn take(self: &Arc<Self>) -> Slot {
        let unit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        self.claim(unit)
    }

    /// Marks a free index taken. The semaphore unit guarantees one is free (fewer than `max` indices are
    /// taken by other holders), so the search ends within two passes.
    fn claim(self: &Arc<Self>, unit: OwnedSemaphorePermit) -> Slot {
        let words = self.taken.len();
        let start = self.hint.fetch_add(1, Ordering::Relaxed) as usize;
        for step in 0..words * 2 + 1 {
            let w = (start + step) % words;
            let valid = valid_bits(self.max, w);
            let cur = self.taken[w].load(Ordering::Acquire);
            let free = !cur & valid;
            if free == 0 {
                continue;
            }
            let bit = free.trailing_zeros();
            let prev = self.taken[w].fetch_or(1u64 << bit, Ordering::AcqRel);
            if prev & (1u64 << bit) == 0 {
                return Slot {
                    pool: self.clone(),
                    index: w as u32 * 64 + bit,
                    _unit: unit,
                };
            }
        }
        unreachable!("a semaphore unit always has a free index")
    }
}

/// The bits of word `w` that are slots (the last word may be partial).
fn valid_bits(max: u32, w: usize) -> u64 {
    let first = w as u32 * 64;
    let n = (max - first).min(64);
    if n == 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_bounded_and_returned() {
        for max in [1, 3, 64, 65, 130] {
            let pool = Arc::new(SlotPool::new(max));
            let held: Vec<Slot> = (0..max).map(|_| pool.try_take().expect("free")).collect();
            let mut idx: Vec<u32> = held.iter().map(Slot::index).collect();
            idx.sort_unstable();
            idx.dedup();
            assert_eq!(idx.len() as u32, max, "distinct indices for max {max}");
            assert!(idx.iter().all(|i| *i < max));
            assert!(pool.try_take().is_none(), "all {max} held");
            assert_eq!(pool.held(), max);
            drop(held);
            assert_eq!(pool.held(), 0);
            assert!(pool.try_take().is_some());
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_freed_slot() {
        let pool = Arc::new(SlotPool::new(1));
        let first = pool.try_take().expect("free");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.take().await.index() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.expect("joined"), 0);
    }
}
