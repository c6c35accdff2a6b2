//! A streaming decoder: bytes in, in chunks of any size, whole frames out.
//!
//! The control pipe is a byte stream, so a frame may arrive split across reads and one read
//! may hold several frames. [`FrameDecoder`] buffers at most one maximal frame
//! ([`MAX_FRAME_LEN`] bytes); it never allocates after construction and never grows.

use crate::error::{FrameError, WireError};
use crate::header::{FrameHeader, HEADER_LEN, MAX_FRAME_LEN};
use crate::message::{Frame, Message};

/// Reassembles frames from a byte stream.
///
/// Call order: [`feed`](Self::feed) bytes as they arrive, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)` (more bytes needed) or a fatal
/// error. `feed` takes only what fits in the bounded buffer and returns how many bytes it took;
/// since the buffer holds a whole maximal frame, a `feed` that takes fewer bytes than offered
/// means a complete frame is waiting, so alternate the two calls until the input is used up.
///
/// Errors from `next_frame`:
/// - [`FrameError::Malformed`]: that one frame was skipped; the stream is still in sync. Answer
///   it (the monitor sends `Error { code: InvalidInput }` with `header.request_id`) and go on.
/// - [`FrameError::Desync`]: a header declared a payload over
///   [`MAX_FRAME_PAYLOAD`](crate::MAX_FRAME_PAYLOAD). Frame boundaries are lost, so the
///   decoder is poisoned: `feed` takes nothing and `next_frame` repeats the error. Close the
///   session.
///
/// # Examples
/// ```
/// use arca_wire::{FrameDecoder, Message, RequestId};
///
/// let mut stream = Vec::new();
/// Message::hello().encode(RequestId(1), &mut stream);
/// Message::CloseOk.encode(RequestId(2), &mut stream);
///
/// let mut decoder = FrameDecoder::new();
/// let mut frames = Vec::new();
/// for chunk in stream.chunks(3) {
///     let mut input = chunk;
///     while !input.is_empty() {
///         let taken = decoder.feed(input);
///         input = &input[taken..];
///         while let Some(frame) = decoder.next_frame()? {
///             frames.push(frame);
///         }
///     }
/// }
/// assert_eq!(frames.len(), 2);
/// assert_eq!(frames[1].request_id, RequestId(2));
/// assert_eq!(frames[1].message, Message::CloseOk);
/// assert_eq!(decoder.buffered_len(), 0);
/// # Ok::<(), arca_wire::FrameError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Received bytes; `buf[start..]` is not yet decoded. `buf.len() <= MAX_FRAME_LEN` and
    /// `start <= buf.len()` always hold.
    buf: Vec<u8>,
    start: usize,
    /// Set once a header is rejected; the stream cannot be decoded past it.
    poisoned: Option<WireError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder with its buffer allocated.
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            buf: Vec::with_capacity(MAX_FRAME_LEN),
            start: 0,
            poisoned: None,
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Whether a fatal error has been reported; if so the session must end.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Copies as much of `input` as fits into the buffer and returns how many bytes were taken.
    ///
    /// Returns less than `input.len()` only when a complete frame is buffered (take it with
    /// [`next_frame`](Self::next_frame)) or the decoder is poisoned (returns 0).
    pub fn feed(&mut self, input: &[u8]) -> usize {
        if self.poisoned.is_some() {
            return 0;
        }
        if self.start > 0 && self.buf.len().saturating_add(input.len()) > MAX_FRAME_LEN {
            // Move the undecoded tail to the front to make room.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = MAX_FRAME_LEN.saturating_sub(self.buf.len());
        let taken = input.len().min(room);
        self.buf
            .extend_from_slice(input.get(..taken).unwrap_or_default());
        debug_assert!(self.buf.len() <= MAX_FRAME_LEN);
        taken
    }

    /// The header that poisoned the decoder ([`FrameError::Desync`]), so that
    /// its sender can be told which request ended the stream; `None` while the
    /// decoder is in sync.
    pub fn rejected_header(&self) -> Option<FrameHeader> {
        self.poisoned.as_ref()?;
        let raw = self.buf.get(self.start..)?.first_chunk::<HEADER_LEN>()?;
        Some(FrameHeader::from_bytes(*raw))
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or an error.
    ///
    /// # Errors
    /// [`FrameError::Malformed`] for a skipped frame, [`FrameError::Desync`] when the stream is
    /// lost; see the type's documentation.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = &self.poisoned {
            return Err(FrameError::Desync(error.clone()));
        }
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let header = match FrameHeader::parse(pending) {
            Ok(header) => header,
            Err(WireError::HeaderTruncated { .. }) => return Ok(None),
            Err(error) => {
                self.poisoned = Some(error.clone());
                return Err(FrameError::Desync(error));
            }
        };
        let frame_len = header.frame_len();
        let Some(payload) = pending.get(HEADER_LEN..frame_len) else {
            return Ok(None);
        };
        let decoded = Message::decode(&header, payload);
        self.consume(frame_len);
        match decoded {
            Ok(message) => Ok(Some(Frame::new(header.request_id, message))),
            Err(error) => Err(FrameError::Malformed { header, error }),
        }
    }

    fn consume(&mut self, len: usize) {
        self.start = self.start.saturating_add(len).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ListenerId, MessageType, RequestId, MAX_FRAME_PAYLOAD};

    fn accept(id: u32) -> Message {
        Message::AcceptRequest {
            listener: ListenerId(id),
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut stream = Vec::new();
        for i in 1..=5 {
            accept(i).encode(RequestId(i), &mut stream);
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            assert_eq!(decoder.feed(std::slice::from_ref(byte)), 1);
            if let Some(frame) = decoder.next_frame().unwrap() {
                got.push(frame);
            }
        }
        let want: Vec<Frame> = (1..=5)
            .map(|i| Frame::new(RequestId(i), accept(i)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn buffer_is_bounded_and_feed_backs_off() {
        // Frames of the maximal size: an unknown type with a 1024-byte payload.
        let mut stream = Vec::new();
        for i in 0..3u32 {
            let header = FrameHeader::new(
                0xC0,
                u16::try_from(MAX_FRAME_PAYLOAD).unwrap(),
                RequestId(i + 1),
            );
            stream.extend_from_slice(&header.to_bytes());
            stream.extend(std::iter::repeat_n(0xAB, MAX_FRAME_PAYLOAD));
        }
        let mut decoder = FrameDecoder::new();
        let taken = decoder.feed(&stream);
        assert_eq!(taken, MAX_FRAME_LEN);
        assert_eq!(
            decoder.feed(&stream[taken..]),
            0,
            "full buffer holds a whole frame"
        );
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(frame, Frame::new(RequestId(1), Message::Unknown(0xC0)));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(decoder.buf.capacity() <= MAX_FRAME_LEN);
    }

    #[test]
    fn oversized_header_poisons() {
        let mut decoder = FrameDecoder::new();
        let mut stream = accept(1).to_frame(RequestId(1));
        stream.extend_from_slice(&FrameHeader::new(0x14, 1025, RequestId(2)).to_bytes());
        assert_eq!(decoder.feed(&stream), stream.len());
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(Frame::new(RequestId(1), accept(1))))
        );
        let want = WireError::PayloadTooLarge {
            message_type: 0x14,
            len: 1025,
            max: MAX_FRAME_PAYLOAD,
        };
        assert_eq!(decoder.next_frame(), Err(FrameError::Desync(want.clone())));
        assert!(decoder.is_poisoned());
        let rejected = decoder.rejected_header().expect("the poisoning header");
        assert_eq!(rejected, FrameHeader::new(0x14, 1025, RequestId(2)));
        assert_eq!(decoder.feed(&[1, 2, 3]), 0);
        assert_eq!(decoder.next_frame(), Err(FrameError::Desync(want)));
    }

    #[test]
    fn malformed_frame_is_skipped() {
        // A connect request with a 3-byte payload, then a good frame.
        let mut stream = FrameHeader::new(MessageType::ConnectRequest.to_u8(), 3, RequestId(7))
            .to_bytes()
            .to_vec();
        stream.extend_from_slice(&[4, 0, 0]);
        accept(2).encode(RequestId(8), &mut stream);
        let mut decoder = FrameDecoder::new();
        decoder.feed(&stream);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::Malformed {
                header: FrameHeader::new(0x14, 3, RequestId(7)),
                error: WireError::Truncated {
                    message: "connect request",
                    need: 31,
                    have: 3
                },
            })
        );
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(Frame::new(RequestId(8), accept(2))))
        );
        assert_eq!(decoder.next_frame(), Ok(None));
    }
}
