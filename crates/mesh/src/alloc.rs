//! The proxies' process allocator: mimalloc with lazy arena commit, installed by [`crate::global_allocator!`]
//! in each binary (the waypoint and the ztunnel).
//!
//! Why: the request path allocates and frees small buffers across tasks, where glibc's arenas spent ~10 % of the
//! waypoint's CPU (consolidation, chunk unlinking) in the side-by-side profile. Lazy commit
//! (`mi_option_arena_eager_commit` = 0, index 4 in mimalloc v3's `mimalloc.h`) commits arena memory as it is used
//! rather than up front: idle RSS 28 → 21 MiB on the bench topology. The environment variable
//! `MIMALLOC_ARENA_EAGER_COMMIT` is the same switch, but a binary cannot set its own environment in time, so the
//! option is set from an ELF constructor, before the Rust runtime's first allocation creates the arena.

pub use mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v3.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the options; run from `.init_array` by [`crate::global_allocator!`].
pub extern "C" fn set_options() {
    // SAFETY: sets one process-wide option; runs once, before main and before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) }
}

/// Installs mimalloc as the binary's global allocator and sets its options before the first allocation.
/// Expand once, at the top level of a binary crate (a constructor in a library's object file could be dropped by
/// the linker when nothing else in that file is used).
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::alloc::MiMalloc = $crate::alloc::MiMalloc;

        #[used]
        #[link_section = ".init_array"]
        static MIMALLOC_OPTIONS: extern "C" fn() = $crate::alloc::set_options;
    };
}
