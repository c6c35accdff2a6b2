//! The 7-byte frame header and the frame size limits.
//!
//! | offset | size | field          | type   | meaning                                   |
//! |-------:|-----:|----------------|--------|-------------------------------------------|
//! | 0      | 1    | `message_type` | u8     | which message follows (see [`MessageType`]) |
//! | 1      | 2    | `payload_len`  | u16 LE | payload bytes after the header            |
//! | 3      | 4    | `request_id`   | u32 LE | pairs a reply with its request            |
//!
//! The layout is declared once, as `RawHeader`: a `#[repr(C)]` struct of a byte and byte arrays
//! holding little-endian values, so it has alignment 1 and no padding, and the compiler checks its
//! size and each field's offset against the table above. A struct of native integers would pad
//! to 8 bytes and use host byte order.
//!
//! [`MessageType`]: crate::MessageType

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::error::WireError;
use crate::fields::RequestId;

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 7;

/// The largest `payload_len` any frame may declare, known message type or not.
///
/// A receiver never buffers more than [`MAX_FRAME_LEN`] bytes for one frame. A header
/// declaring more is rejected with [`WireError::PayloadTooLarge`], and since the frame cannot be
/// skipped without buffering or trusting an absurd length, the session ends. Unknown message
/// types up to this size are skipped and answered with an error reply, which leaves room for
/// messages added by later protocol versions.
pub const MAX_FRAME_PAYLOAD: usize = 1024;

/// The longest frame, header included.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_FRAME_PAYLOAD;

const _: () = assert!(MAX_FRAME_PAYLOAD <= u16::MAX as usize);

/// The header's bytes, field by field (the table in the module docs).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawHeader {
    message_type: u8,
    /// u16 LE.
    payload_len: [u8; 2],
    /// u32 LE.
    request_id: [u8; 4],
}

const _: () = assert!(size_of::<RawHeader>() == HEADER_LEN);
const _: () = assert!(offset_of!(RawHeader, message_type) == 0);
const _: () = assert!(offset_of!(RawHeader, payload_len) == 1);
const _: () = assert!(offset_of!(RawHeader, request_id) == 3);

/// A parsed frame header.
///
/// `payload_len` is at most [`MAX_FRAME_PAYLOAD`] in any value returned by
/// [`FrameHeader::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The message type byte; may name a type this crate does not know.
    pub message_type: u8,
    /// Length of the payload that follows, in bytes.
    pub payload_len: u16,
    /// The request this frame is, or answers.
    pub request_id: RequestId,
}

impl FrameHeader {
    /// A header with the given fields.
    pub fn new(message_type: u8, payload_len: u16, request_id: RequestId) -> FrameHeader {
        FrameHeader {
            message_type,
            payload_len,
            request_id,
        }
    }

    /// Parses the header at the start of `bytes`; bytes after the first [`HEADER_LEN`] (the
    /// payload, perhaps more frames) are ignored.
    ///
    /// # Errors
    /// - [`WireError::HeaderTruncated`] if `bytes` is shorter than [`HEADER_LEN`];
    /// - [`WireError::PayloadTooLarge`] if `payload_len` exceeds [`MAX_FRAME_PAYLOAD`].
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, WireError> {
        let Some(raw) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(WireError::HeaderTruncated {
                need: HEADER_LEN,
                have: bytes.len(),
            });
        };
        let header = FrameHeader::from_bytes(*raw);
        if usize::from(header.payload_len) > MAX_FRAME_PAYLOAD {
            return Err(WireError::PayloadTooLarge {
                message_type: header.message_type,
                len: usize::from(header.payload_len),
                max: MAX_FRAME_PAYLOAD,
            });
        }
        Ok(header)
    }

    /// Splits the header's fields out of exactly [`HEADER_LEN`] bytes, without checking
    /// `payload_len` against the cap (use [`FrameHeader::parse`] on input).
    pub fn from_bytes(bytes: [u8; HEADER_LEN]) -> FrameHeader {
        let raw: RawHeader = bytemuck::must_cast(bytes);
        FrameHeader {
            message_type: raw.message_type,
            payload_len: u16::from_le_bytes(raw.payload_len),
            request_id: RequestId(u32::from_le_bytes(raw.request_id)),
        }
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        bytemuck::must_cast(RawHeader {
            message_type: self.message_type,
            payload_len: self.payload_len.to_le_bytes(),
            request_id: self.request_id.0.to_le_bytes(),
        })
    }

    /// Length of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let header = FrameHeader::new(0x13, 0x001f, RequestId(0x0403_0201));
        let bytes = [0x13, 0x1f, 0x00, 0x01, 0x02, 0x03, 0x04];
        assert_eq!(header.to_bytes(), bytes);
        assert_eq!(FrameHeader::parse(&bytes), Ok(header));
        assert_eq!(header.frame_len(), 7 + 31);
    }

    #[test]
    fn parse_ignores_what_follows() {
        let bytes = [0x7f, 3, 0, 9, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        assert_eq!(
            FrameHeader::parse(&bytes),
            Ok(FrameHeader::new(0x7f, 3, RequestId(9)))
        );
    }

    #[test]
    fn truncated() {
        for have in 0..HEADER_LEN {
            assert_eq!(
                FrameHeader::parse(&[0u8; HEADER_LEN][..have]),
                Err(WireError::HeaderTruncated { need: 7, have })
            );
        }
    }

    #[test]
    fn payload_cap() {
        let at_cap = FrameHeader::new(0xee, 1024, RequestId(1)).to_bytes();
        assert!(FrameHeader::parse(&at_cap).is_ok());
        let over = FrameHeader::new(0xee, 1025, RequestId(1)).to_bytes();
        assert_eq!(
            FrameHeader::parse(&over),
            Err(WireError::PayloadTooLarge {
                message_type: 0xee,
                len: 1025,
                max: 1024
            })
        );
        let max = FrameHeader::new(0x10, u16::MAX, RequestId(1)).to_bytes();
        assert!(matches!(
            FrameHeader::parse(&max),
            Err(WireError::PayloadTooLarge { len: 65535, .. })
        ));
    }
}
