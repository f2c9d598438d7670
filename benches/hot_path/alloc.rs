//! A counting global allocator for this bench binary: how many allocations a hot function makes per call, and
//! how many heap bytes a built structure holds. Counting costs two relaxed atomic adds per allocation, in every
//! bench of the binary alike. The counters are process-wide: read them only while one thread allocates (criterion
//! runs benches on the main thread; these benches start no others). Allocations go to mimalloc, the allocator the
//! proxies ship with (`mesh::alloc`), so timings are those of the shipped binary.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

// SAFETY: every call is forwarded unchanged to mimalloc; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        mesh::alloc::MiMalloc.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        mesh::alloc::MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        mesh::alloc::MiMalloc.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        mesh::alloc::MiMalloc.realloc(ptr, layout, new_size)
    }
}

/// Allocations made (reallocations included) and heap bytes gained over some span.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub allocations: usize,
    pub bytes: isize,
}

fn now() -> (usize, isize) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed),
    )
}

/// Builds a value and says what it cost: allocations made, and heap bytes still held once built (the value's
/// own heap, as nothing else on this thread keeps memory meanwhile).
pub fn retained<T>(build: impl FnOnce() -> T) -> (T, Cost) {
    let (a0, b0) = now();
    let value = build();
    let (a1, b1) = now();
    let cost = Cost {
        allocations: a1 - a0,
        bytes: b1 - b0,
    };
    (value, cost)
}

/// Allocations per call of `f`, averaged over `calls` calls after one warm-up call (which may fill lazy
/// caches such as a hash ring).
pub fn per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    f();
    let (a0, _) = now();
    for _ in 0..calls {
        f();
    }
    let (a1, _) = now();
    (a1 - a0) as f64 / calls as f64
}

/// Prints `allocations per call: <name> <n>` (1,000 calls).
pub fn report(name: &str, f: impl FnMut()) {
    println!("allocations per call: {name} {:.2}", per_call(1000, f));
}
