//! Graceful shutdown: a stop signal for accept loops and HBONE servers, a count of in-flight connections, and a
//! hard deadline after which the remaining connections are cut.
//!
//! Shutdown is two phases: [`Drain::shutdown`] first turns the stop signal on (listeners stop accepting, HBONE
//! servers send GOAWAY), waits up to a grace period for tracked connections to finish on their own, then turns
//! the abort signal on, which ends every [`Drain::run`] future still in progress.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Shared shutdown state. Cheap to clone.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    active: AtomicUsize,
    idle: Notify,
    stop: watch::Sender<bool>,
    abort: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                stop: watch::channel(false).0,
                abort: watch::channel(false).0,
            }),
        }
    }
}

impl Drain {
    /// Turns true when listeners must stop accepting (the `shutdown` receiver of `mesh::hbone::serve`).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Resolves once listeners must stop accepting.
    pub async fn stopped(&self) {
        let mut stop = self.stopping();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Runs one connection's work, counted as in flight; returns `None` when cut by the abort signal.
    pub async fn run<F: Future>(&self, work: F) -> Option<F::Output> {
        let _tracked = Tracked::new(&self.inner);
        let mut abort = self.inner.abort.subscribe();
        let cut = async move {
            let _ = abort.wait_for(|cut| *cut).await;
        };
        tokio::select! {
            out = work => Some(out),
            _ = cut => None,
        }
    }

    /// In-flight connections now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, waits up to `grace` for in-flight work, then aborts what is left.
    /// Returns true when everything finished within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.stop.send_replace(true);
        let finished = tokio::time::timeout(grace, self.idle()).await.is_ok();
        self.inner.abort.send_replace(true);
        finished
    }

    async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one unit of in-flight work while alive.
struct Tracked<'a>(&'a Inner);

impl<'a> Tracked<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.active.fetch_add(1, Ordering::SeqCst);
        Tracked(inner)
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_in_flight_then_cuts_the_rest() {
        let drain = Drain::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let d = drain.clone();
        let quick = tokio::spawn(async move { d.run(rx).await });
        let d = drain.clone();
        let stuck = tokio::spawn(async move { d.run(std::future::pending::<()>()).await });
        let mut stop = drain.stopping();
        // Both tasks registered before we shut down.
        for _ in 0..1000 {
            if drain.active() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(drain.active(), 2);
        tx.send(()).unwrap();
        let finished = drain.shutdown(Duration::from_millis(50)).await;
        assert!(!finished, "the stuck task outlives the grace period");
        assert!(*stop.borrow_and_update());
        assert_eq!(quick.await.unwrap(), Some(Ok(())));
        assert_eq!(stuck.await.unwrap(), None);
        assert_eq!(drain.active(), 0);
    }

    #[tokio::test]
    async fn idle_drain_returns_at_once() {
        assert!(Drain::default().shutdown(Duration::from_secs(5)).await);
    }
}
