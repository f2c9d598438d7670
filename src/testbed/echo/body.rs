//! Bodies the echo answers besides its JSON: the byte [`pattern`] of `x-echo-body-bytes` (streamed in 64 KiB
//! frames) and gRPC length-prefixed messages ([`grpc_frame`], [`grpc_unframe`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

/// Every answer body of the echo.
pub(super) type Body = BoxBody<Bytes, Infallible>;

/// The bytes `x-echo-body-bytes` answers: byte `i` is `i % 251` (a prime, so 64 KiB chunks do not repeat at
/// chunk boundaries and a dropped, duplicated or shifted chunk changes the content).
pub fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// [`pattern`]`(n)` as a body of 64 KiB frames (streamed, not one buffer).
pub(super) fn pattern_body(n: u64) -> Body {
    PatternBody { next: 0, len: n }.boxed()
}

/// The frames of [`pattern_body`].
struct PatternBody {
    next: u64,
    len: u64,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        const CHUNK: u64 = 64 * 1024;
        if self.next >= self.len {
            return Poll::Ready(None);
        }
        let (start, end) = (self.next, (self.next + CHUNK).min(self.len));
        self.next = end;
        let chunk: Vec<u8> = (start..end).map(|i| (i % 251) as u8).collect();
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.len
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len - self.next)
    }
}

/// One gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("a gRPC message under 4 GiB"));
    b.put_slice(message);
    b.freeze()
}

/// The payload of the first gRPC message in `body`, when it holds a whole one.
pub fn grpc_unframe(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    body.get(5..5 + len)
}
