//! The request-path helpers allocate nothing when they have nothing to do: `UrlRewrite::apply_path` answering
//! `None`, `MirrorFraction::selected`, and `HeaderModifier::apply` of an empty modifier.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::HeaderMap;
use waypoint_filters::{HeaderModifier, MirrorFraction, PathModifier, UrlRewrite};

/// Counts this thread's allocations (tests run on several threads).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

#[test]
fn unused_filters_do_not_allocate() {
    let none = UrlRewrite::default();
    let host_only = UrlRewrite::new(Some("example.org".into()), None).unwrap();
    let same_full = UrlRewrite::new(None, Some(PathModifier::Full("/a".into()))).unwrap();
    let same_prefix = UrlRewrite::new(None, Some(PathModifier::Prefix("/a".into()))).unwrap();
    let mirror = MirrorFraction::new(Some(50), None).unwrap();
    let empty = HeaderModifier::default();
    let mut headers = HeaderMap::new();

    let (n, out) = allocations(|| {
        [
            none.apply_path("/a/b?c", Some("/a")),
            host_only.apply_path("/a/b?c", Some("/a")),
            same_full.apply_path("/a?c", None),
            same_prefix.apply_path("/a/b?c", Some("/a")),
        ]
    });
    assert_eq!(out, [None, None, None, None]);
    assert_eq!(n, 0, "apply_path answering None allocated");

    let (n, _) = allocations(|| {
        empty.apply(&mut headers);
        mirror.selected(123)
    });
    assert_eq!(n, 0);

    // And a real rewrite allocates exactly its result.
    let rewrite = UrlRewrite::new(None, Some(PathModifier::Prefix("/x".into()))).unwrap();
    let (n, out) = allocations(|| rewrite.apply_path("/a/b?c", Some("/a")));
    assert_eq!(out.as_deref(), Some("/x/b?c"));
    assert_eq!(n, 1);
}
