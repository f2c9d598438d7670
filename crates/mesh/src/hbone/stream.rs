//! [`H2Stream`]: one HBONE CONNECT stream's payload as `AsyncRead + AsyncWrite`.
//!
//! The hot path of the data plane: no allocation beyond the one `Bytes` h2 needs per DATA frame sent, and no
//! lock of ours per read or write.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pool::StreamSlot;

/// Largest DATA payload queued by one `poll_write` (h2 splits it into frames of the peer's max frame size).
const MAX_WRITE: usize = 1 << 20;
/// How long a dropped client stream waits for the peer's END_STREAM (see [`H2Stream`]'s `Drop`).
const LINGER: Duration = Duration::from_secs(10);

/// One CONNECT stream's payload as a byte stream.
///
/// Reads return the peer's DATA (releasing flow-control capacity as they go); EOF on END_STREAM. A stream reset
/// or a connection GOAWAY/error surfaces as `io::Error::from_raw_os_error(ECONNRESET)` so callers (Pingora's
/// retry logic among them) see a connection reset. `poll_shutdown` sends END_STREAM; dropping an unfinished
/// stream also sends END_STREAM (never RST_STREAM(CANCEL), which would discard queued DATA).
pub struct H2Stream {
    /// `None` only while dropping (handed to the linger task).
    io: Option<Halves>,
    /// Received from the peer, not yet read by the caller (its flow-control capacity not yet released).
    pending: Bytes,
    recv_eof: bool,
    /// END_STREAM queued.
    send_closed: bool,
    /// Client side: on drop, keep the stream open until the peer ends its side (see `Drop`).
    linger: bool,
    /// The pool's hold on one stream slot of the outer connection, released when the stream is done.
    slot: Option<StreamSlot>,
}

struct Halves {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
}

impl H2Stream {
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        H2Stream {
            io: Some(Halves { send, recv }),
            pending: Bytes::new(),
            recv_eof: false,
            send_closed: false,
            linger: false,
            slot: None,
        }
    }

    /// A client stream opened by the pool.
    pub(super) fn pooled(
        send: h2::SendStream<Bytes>,
        recv: h2::RecvStream,
        slot: StreamSlot,
    ) -> Self {
        let mut stream = Self::new(send, recv);
        stream.linger = true;
        stream.slot = Some(slot);
        stream
    }

    /// The peer has ended its side (END_STREAM received, nothing of it left unread) or reset the stream: a
    /// write now would not reach anyone who reads it.
    pub fn peer_ended(&self) -> bool {
        self.pending.is_empty()
            && (self.recv_eof || self.io.as_ref().is_some_and(|io| io.recv.is_end_stream()))
    }

    fn io(&mut self) -> &mut Halves {
        self.io.as_mut().expect("taken only by drop")
    }

    /// Copies from `pending` into `buf` and gives the peer that much window back.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        // Only fails if the stream is already gone; the next poll_data reports that.
        let _ = self.io().recv.flow_control().release_capacity(n);
    }
}

/// What every h2 failure looks like to callers: the connection was reset.
pub(crate) fn reset(e: Option<h2::Error>) -> io::Error {
    if let Some(e) = e {
        tracing::debug!(error = %e, "hbone stream reset");
    }
    connection_reset()
}

/// `ECONNRESET` with its OS error number, as a socket reports it (retry logic tells resets by it).
pub fn connection_reset() -> io::Error {
    io::Error::from_raw_os_error(libc::ECONNRESET)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                this.drain_pending(buf);
                return Poll::Ready(Ok(()));
            }
            if this.recv_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.io().recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(reset(Some(e)))),
                None => this.recv_eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let want = buf.len().min(MAX_WRITE);
        let send = &mut this.io().send;
        send.reserve_capacity(want);
        let mut capacity = send.capacity();
        while capacity == 0 {
            capacity = match ready!(send.poll_capacity(cx)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Poll::Ready(Err(reset(Some(e)))),
                None => return Poll::Ready(Err(reset(None))),
            };
        }
        let n = capacity.min(want);
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(|e| reset(Some(e)))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.send_closed {
            this.send_closed = true;
            let send = &mut this.io().send;
            send.reserve_capacity(0);
            send.send_data(Bytes::new(), true)
                .map_err(|e| reset(Some(e)))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else { return };
        // Give back the window of data received but never read, so the connection window does not shrink.
        if !self.pending.is_empty() {
            let _ = io.recv.flow_control().release_capacity(self.pending.len());
        }
        if !self.send_closed {
            // END_STREAM after whatever is still queued. Fails only when the stream is already reset or closed.
            let _ = io.send.send_data(Bytes::new(), true);
        }
        // Dropping the handles of a stream the peer has not ended makes h2 reset it: RST_STREAM(NO_ERROR) on a
        // server, which still flushes our queued DATA, but RST_STREAM(CANCEL) on a client, which discards it.
        // So a client stream stays open (its incoming DATA discarded) until the peer's END_STREAM, or LINGER.
        if self.linger && !self.recv_eof && !io.recv.is_end_stream() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(linger(io, self.slot.take()));
            }
        }
    }
}

async fn linger(mut io: Halves, slot: Option<StreamSlot>) {
    let drain = async {
        while let Some(Ok(data)) = io.recv.data().await {
            let _ = io.recv.flow_control().release_capacity(data.len());
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    drop((io, slot));
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.io.as_ref().map(|io| io.send.stream_id()))
            .field("recv_eof", &self.recv_eof)
            .field("send_closed", &self.send_closed)
            .finish()
    }
}
