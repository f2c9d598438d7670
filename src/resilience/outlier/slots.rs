//! The ejection ledger of one service: time stamps as integers and a grow-only array of ejection slots.
//!
//! Every ejection in force holds one slot, which stores the stamp the ejection ends at; a slot whose stamp has
//! passed is free again without anyone clearing it. `active` counts slots taken (in force, or ended but not yet
//! reclaimed); an ejection reserves a unit of `active` by compare-and-swap below the cap *before* it takes a slot,
//! so the number of ejections in force never exceeds the cap, even when many threads eject at once.
//!
//! Slots live in chunks that never move (chunk `c` holds `8 << c` slots), allocated only when an endpoint is
//! registered (compile time); the request path only loads and compares-and-swaps atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Stamps are nanoseconds from a process-wide epoch plus this bias, so an `Instant` before the epoch still maps
/// to a positive number; 0 means "never".
const BIAS: u64 = 1 << 62;
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `now` as a stamp (monotonic with `now`; never 0).
pub(super) fn stamp(now: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    match now.checked_duration_since(epoch) {
        Some(after) => BIAS.saturating_add(nanos(after)),
        None => BIAS.saturating_sub(nanos(epoch - now)).max(1),
    }
}

/// A duration in nanoseconds, saturating.
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const FIRST_CHUNK: usize = 8;
/// 8 × (2^26 − 1) slots at most: far more endpoints than a service has.
const CHUNKS: usize = 26;

#[derive(Debug, Default)]
pub(super) struct Slots {
    chunks: [OnceLock<Box<[AtomicU64]>>; CHUNKS],
    /// Slots allocated (all chunks below it are initialized).
    capacity: AtomicUsize,
    /// One past the highest slot ever taken: scans stop here.
    high: AtomicUsize,
    /// Slots taken or reserved (see the module documentation).
    active: AtomicU32,
}

/// Chunk and offset of slot `i`.
fn locate(i: usize) -> (usize, usize) {
    let k = i / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - k.leading_zeros()) as usize;
    (chunk, i - FIRST_CHUNK * ((1 << chunk) - 1))
}

impl Slots {
    /// Makes room for at least `n` slots (compile time: allocates).
    pub fn ensure(&self, n: usize) {
        let mut have = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            if have >= n {
                break;
            }
            let size = FIRST_CHUNK << c;
            chunk.get_or_init(|| (0..size).map(|_| AtomicU64::new(0)).collect());
            have += size;
        }
        self.capacity.fetch_max(have, Ordering::AcqRel);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Acquire)
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        let (chunk, offset) = locate(i);
        let chunk = self.chunks[chunk]
            .get()
            .expect("slot below capacity is allocated");
        &chunk[offset]
    }

    /// Ejections in force at stamp `now`.
    pub fn in_force(&self, now: u64) -> u32 {
        let high = self.high.load(Ordering::Acquire);
        (0..high)
            .filter(|&i| self.slot(i).load(Ordering::Acquire) > now)
            .count() as u32
    }

    /// Takes a slot for an ejection ending at `until`, if fewer than `cap` are taken; returns its index.
    pub fn take(&self, cap: u32, now: u64, until: u64) -> Option<usize> {
        let cap = cap.min(u32::try_from(self.capacity()).unwrap_or(u32::MAX));
        if cap == 0 {
            return None;
        }
        if !self.reserve(cap) {
            // Ended ejections may still hold their unit: give those back and try once more.
            self.reclaim(now);
            if !self.reserve(cap) {
                return None;
            }
        }
        // A reservation guarantees a zero slot below capacity for it (taken ≤ active ≤ cap ≤ capacity), though
        // racing takers may get there first: scan again until one is ours.
        let capacity = self.capacity();
        loop {
            for i in 0..capacity {
                let slot = self.slot(i);
                if slot.load(Ordering::Acquire) == 0
                    && slot
                        .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.high.fetch_max(i + 1, Ordering::AcqRel);
                    return Some(i);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Frees slot `i` if it still holds the ejection ending at `until` (an ejection withdrawn or an endpoint
    /// removed); returns whether it did.
    pub fn give_back(&self, i: usize, until: u64) -> bool {
        if i >= self.capacity() {
            return false;
        }
        let freed = self
            .slot(i)
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if freed {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        freed
    }

    fn reserve(&self, cap: u32) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Frees the slots of ejections that have ended by `now`.
    fn reclaim(&self, now: u64) {
        let high = self.high.load(Ordering::Acquire);
        for i in 0..high {
            let until = self.slot(i).load(Ordering::Acquire);
            if until != 0 && until <= now {
                self.give_back(i, until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_chunks_without_gaps() {
        let mut expected = (0, 0);
        for i in 0..FIRST_CHUNK * 15 {
            assert_eq!(locate(i), expected, "slot {i}");
            expected.1 += 1;
            if expected.1 == FIRST_CHUNK << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
    }

    #[test]
    fn stamps_order_like_instants_even_before_the_epoch() {
        let t = Instant::now();
        let _ = stamp(t + Duration::from_secs(1)); // the epoch is set by now at the latest
        let earlier = t.checked_sub(Duration::from_secs(5)).unwrap_or(t);
        assert!(stamp(earlier) <= stamp(t));
        assert!(stamp(t) < stamp(t + Duration::from_millis(1)));
        assert_ne!(stamp(earlier), 0);
    }

    #[test]
    fn taken_slots_free_themselves_when_their_time_passes() {
        let slots = Slots::default();
        slots.ensure(3);
        assert!(slots.capacity() >= 3);
        let now = stamp(Instant::now());
        assert_eq!(slots.take(2, now, now + 10), Some(0));
        assert_eq!(slots.take(2, now, now + 20), Some(1));
        assert_eq!(slots.take(2, now, now + 30), None, "cap reached");
        assert_eq!(slots.in_force(now), 2);
        assert_eq!(slots.in_force(now + 10), 1);
        assert_eq!(
            slots.take(2, now + 10, now + 40),
            Some(0),
            "an ended ejection's slot is reused"
        );
        assert!(slots.give_back(0, now + 40));
        assert!(!slots.give_back(0, now + 40), "only once");
        assert_eq!(slots.in_force(now + 10), 1);
    }
}
