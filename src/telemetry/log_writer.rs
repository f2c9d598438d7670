//! Writes access log lines off the request path: the request thread formats into a recycled buffer and
//! hands it to a writer thread over a bounded channel; when the channel is full the line is dropped and
//! counted, never waited for.
//!
//! Why a thread and not a write per line: writing to stdout takes the stdout lock and blocks when the pipe
//! is full (a slow log collector would stall requests). Measured in `benches/telemetry.rs`
//! (`access_log/*`): handing a line over costs about as much as formatting it, and the writer batches
//! lines into one `write` per burst. Buffers go back to a lock-free pool, so a steady state allocates
//! nothing; a buffer that grew past [`MAX_RECYCLED`] is freed instead of kept.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;

use super::access_log::{format, LogFormat};
use super::record::RequestRecord;

/// Buffers larger than this are not recycled.
pub const MAX_RECYCLED: usize = 4096;

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
    Stop,
}

/// The access log: formats and queues one line per request.
pub struct AccessLog {
    format: LogFormat,
    tx: SyncSender<Msg>,
    free: Arc<ArrayQueue<String>>,
    dropped: AtomicU64,
    written: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Logs to stdout, queueing at most `capacity` lines.
    pub fn stdout(format: LogFormat, capacity: usize) -> std::io::Result<Self> {
        Self::with_writer(format, capacity, std::io::stdout())
    }

    /// Logs to `sink` (a file, a pipe; tests use an in-memory one), queueing at most `capacity` lines.
    pub fn with_writer(
        format: LogFormat,
        capacity: usize,
        sink: impl Write + Send + 'static,
    ) -> std::io::Result<Self> {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let free = Arc::new(ArrayQueue::new(capacity));
        let written = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let (free, written) = (free.clone(), written.clone());
                move || writer(rx, sink, &free, &written)
            })?;
        Ok(AccessLog {
            format,
            tx,
            free,
            dropped: AtomicU64::new(0),
            written,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Formats `r` and queues the line; drops it (counted) when the writer is behind.
    pub fn log(&self, r: &RequestRecord<'_>) {
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| String::with_capacity(512));
        buf.clear();
        format(self.format, r, &mut buf);
        if let Err(
            TrySendError::Full(Msg::Line(buf)) | TrySendError::Disconnected(Msg::Line(buf)),
        ) = self.tx.try_send(Msg::Line(buf))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let _ = self.free.push(buf);
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Blocks until every line queued before this call is written and flushed (for shutdown and tests).
    pub fn flush(&self) {
        let (done_tx, done_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = t.join();
        }
    }
}

fn writer(rx: Receiver<Msg>, sink: impl Write, free: &ArrayQueue<String>, written: &AtomicU64) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut waiting: Vec<SyncSender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut stop = false;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    // A write error (stdout closed) loses the line; the proxy keeps serving.
                    let _ = out.write_all(line.as_bytes());
                    written.fetch_add(1, Ordering::Relaxed);
                    if line.capacity() <= MAX_RECYCLED {
                        let _ = free.push(line);
                    }
                }
                Msg::Flush(done) => waiting.push(done),
                Msg::Stop => stop = true,
            }
            if !stop {
                next = rx.try_recv().ok();
            }
        }
        let _ = out.flush();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if stop {
            break;
        }
    }
}
