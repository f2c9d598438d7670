//! `connectionPool.http.maxRequestsPerConnection`: how many requests each upstream connection has carried.
//!
//! Pingora pools upstream connections and says, when a try gets one, whether it was reused and its file
//! descriptor. A descriptor names one open connection at a time, and a fresh connection always starts with
//! `reused = false`, so a counter per descriptor, reset on a fresh connection, counts that connection's
//! requests exactly. The proxy asks [`ConnectionUses::record`] once per try and, when [`last_use`] says the
//! limit is reached, sends the request with `Connection: close`: Pingora then does not return the connection
//! to its pool, and the destination closes it after the answer.
//!
//! The table is process-wide (descriptors are), lock-free and bounded: chunks of 1024 counters allocated on
//! first use, for descriptors below [`MAX_FD`] (4 KiB per chunk in use, 4 MiB at most); a connection whose
//! descriptor is beyond it is not counted and closes after each request when a limit is set.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const CHUNK: usize = 1024;
const CHUNKS: usize = 1024;
/// Descriptors below this are counted.
pub const MAX_FD: usize = CHUNK * CHUNKS;

/// Requests per upstream connection, by file descriptor.
pub struct ConnectionUses {
    chunks: [OnceLock<Box<[AtomicU32]>>; CHUNKS],
}

/// The one table of the process.
pub static USES: ConnectionUses = ConnectionUses::new();

impl Default for ConnectionUses {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionUses {
    pub const fn new() -> ConnectionUses {
        ConnectionUses {
            chunks: [const { OnceLock::new() }; CHUNKS],
        }
    }

    /// Counts a request on the connection with descriptor `fd` (`reused`: Pingora took it from its pool).
    /// Returns which request of the connection this is (1 = first), `None` when `fd` is not counted.
    pub fn record(&self, fd: i32, reused: bool) -> Option<u32> {
        let fd = usize::try_from(fd).ok().filter(|fd| *fd < MAX_FD)?;
        let chunk =
            self.chunks[fd / CHUNK].get_or_init(|| (0..CHUNK).map(|_| AtomicU32::new(0)).collect());
        let cell = &chunk[fd % CHUNK];
        if reused {
            Some(cell.fetch_add(1, Ordering::AcqRel).saturating_add(1))
        } else {
            cell.store(1, Ordering::Release);
            Some(1)
        }
    }
}

/// Whether request number `nth` of a connection must be its last under `maxRequestsPerConnection` = `max`
/// (`None` = unlimited). An uncounted connection (`nth` = `None`) is closed when any limit is set.
pub fn last_use(nth: Option<u32>, max: Option<u32>) -> bool {
    match (nth, max) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(n), Some(m)) => n >= m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_descriptor_and_restarts_on_a_fresh_connection() {
        let t = ConnectionUses::new();
        assert_eq!(t.record(7, false), Some(1));
        assert_eq!(t.record(7, true), Some(2));
        assert_eq!(t.record(9, false), Some(1), "another connection");
        assert_eq!(t.record(7, true), Some(3));
        assert_eq!(
            t.record(7, false),
            Some(1),
            "the descriptor now names a new connection"
        );
        assert_eq!(t.record(-1, false), None);
        assert_eq!(t.record(MAX_FD as i32, true), None);
        assert_eq!(t.record(MAX_FD as i32 - 1, false), Some(1));
    }

    #[test]
    fn last_use_decisions() {
        for (nth, max, want) in [
            (Some(1), None, false),
            (Some(1), Some(1), true),
            (Some(2), Some(3), false),
            (Some(3), Some(3), true),
            (Some(4), Some(3), true),
            (None, Some(100), true),
            (None, None, false),
        ] {
            assert_eq!(last_use(nth, max), want, "{nth:?} of {max:?}");
        }
    }
}
