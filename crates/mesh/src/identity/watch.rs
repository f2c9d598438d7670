//! Re-reading a workload's PEM files when they change (Kubernetes rotates mounted secrets by swapping a
//! `..data` symlink in the directory, so the directories are watched, not the files).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use super::{CertPaths, CertStore, Certs, WatchGuard};

/// Events come in bursts (a secret update is several renames); re-read once the burst is over.
const DEBOUNCE: Duration = Duration::from_millis(100);

pub(super) fn spawn(store: CertStore, paths: CertPaths) -> WatchGuard {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dirs: BTreeSet<PathBuf> = [&paths.cert, &paths.key, &paths.ca]
        .into_iter()
        .map(|p| match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();

    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "certificate watch error"),
        });
    let watcher = match watcher {
        Ok(mut watcher) => {
            for dir in &dirs {
                if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch certificate directory");
                }
            }
            Some(watcher)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificates; rotation will not be picked up");
            None
        }
    };

    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait for quiet, then swallow what queued up meanwhile.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let loaded = {
                let paths = paths.clone();
                tokio::task::spawn_blocking(move || Certs::load(&paths)).await
            };
            match loaded {
                Ok(Ok(certs)) => {
                    if certs.chain == store.current().chain && certs.roots == store.current().roots
                    {
                        continue;
                    }
                    store.replace(certs);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "re-reading certificates failed; keeping the old ones")
                }
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    });
    WatchGuard {
        _watcher: watcher,
        task: Some(task),
    }
}
