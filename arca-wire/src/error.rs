//! Decoding errors.
//!
//! Two enums, split by what the caller can do next:
//!
//! * [`WireError`] — one parse step failed. Returned by [`FrameHeader::parse`],
//!   [`Message::decode`] and the socket-address codec.
//! * [`FrameError`] — what [`FrameDecoder::next_frame`] reports: either one frame was
//!   malformed and skipped (the stream is still in sync, answer it with an error reply), or the
//!   stream itself is unusable (close the session).
//!
//! [`FrameHeader::parse`]: crate::FrameHeader::parse
//! [`Message::decode`]: crate::Message::decode
//! [`FrameDecoder::next_frame`]: crate::FrameDecoder::next_frame

use thiserror::Error;

use crate::header::FrameHeader;

/// A control frame, or part of one, could not be parsed.
///
/// Every variant carries the values involved, so a log line says what arrived and what was
/// expected. Lengths are in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`](crate::HEADER_LEN) bytes were given to the header parser.
    #[error("control frame header truncated: need {need} bytes, have {have}")]
    HeaderTruncated {
        /// Bytes a header needs.
        need: usize,
        /// Bytes that were available.
        have: usize,
    },

    /// The header declares a payload longer than
    /// [`MAX_FRAME_PAYLOAD`](crate::MAX_FRAME_PAYLOAD). Such a frame is never buffered.
    #[error(
        "control frame payload too large: type {message_type:#04x} declares {len} bytes, maximum is {max}"
    )]
    PayloadTooLarge {
        /// The frame's `message_type`.
        message_type: u8,
        /// The declared `payload_len`.
        len: usize,
        /// The cap.
        max: usize,
    },

    /// The payload slice handed to [`Message::decode`](crate::Message::decode) is not the
    /// length its header declares.
    #[error(
        "control frame payload length mismatch: header declares {declared} bytes, have {have}"
    )]
    PayloadLengthMismatch {
        /// The header's `payload_len`.
        declared: usize,
        /// The length of the slice given.
        have: usize,
    },

    /// A known message's payload is shorter than its fixed layout.
    #[error("{message} payload truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The message's name, for example `"connect request"`.
        message: &'static str,
        /// The fixed payload length of that message.
        need: usize,
        /// The payload length that arrived.
        have: usize,
    },

    /// A known message's payload is longer than its fixed layout.
    #[error("{message} payload has trailing bytes: expected {expected} bytes, have {have}")]
    TrailingBytes {
        /// The message's name, for example `"connect request"`.
        message: &'static str,
        /// The fixed payload length of that message.
        expected: usize,
        /// The payload length that arrived.
        have: usize,
    },

    /// A socket address's `family` byte is neither 4 nor 6.
    #[error("unknown socket address family {0}")]
    UnknownAddressFamily(u8),

    /// An IPv4 socket address has nonzero bytes where the encoding requires zeros, so it would
    /// have more than one encoding.
    #[error("ipv4 socket address has nonzero {field}")]
    Ipv4NonZero {
        /// Which part was nonzero: `"address bytes 4..16"`, `"flowinfo"` or `"scope_id"`.
        field: &'static str,
    },

    /// A handle's `kind` byte names no known kind of handle.
    #[error("unknown handle kind {0}")]
    UnknownHandleKind(u8),
    /// A datagram record's payload is longer than UDP allows for its address family.
    #[error("datagram of {len} bytes exceeds the maximum of {max}")]
    DatagramTooLarge {
        /// The length given.
        len: usize,
        /// The family's limit.
        max: usize,
    },
    /// A datagram record header's reserved bytes are not zero.
    #[error("datagram record header has nonzero reserved bytes")]
    DatagramReserved,
    /// A `Membership.op` other than 1 (join) or 2 (leave).
    #[error("unknown membership op {0}")]
    UnknownMembershipOp(u8),

    /// `Resolve.family` other than 0 (any), 4 or 6.
    #[error("unknown address family hint {0}")]
    UnknownFamilyHint(u8),
    /// `Resolve.name` is not a host name of valid form.
    #[error("{0}")]
    BadName(crate::name::NameError),
    /// `Resolve.name` has nonzero bytes after the name.
    #[error("resolve name field has nonzero bytes after the name")]
    NamePadding,
    /// `ResolveOk.count` exceeds the entries the message holds.
    #[error("resolve ok count {count} exceeds {max}")]
    AnswerCount {
        /// The count sent.
        count: usize,
        /// The entries a `ResolveOk` holds.
        max: usize,
    },
    /// A `ResolveOk` entry is malformed.
    #[error("resolve ok entry: {0}")]
    BadAnswer(&'static str),

    /// The session bootstrap message ([`Bootstrap`](crate::Bootstrap)) is malformed.
    #[error("bad session bootstrap ({len} bytes): {why}")]
    BadBootstrap {
        /// What is wrong with it.
        why: &'static str,
        /// The length received.
        len: usize,
    },
}

/// What [`FrameDecoder::next_frame`](crate::FrameDecoder::next_frame) reports when it cannot
/// return a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// One frame had a valid header but its payload did not decode. The decoder skipped exactly
    /// that frame and stays in sync; the monitor answers with an `Error` reply carrying
    /// `header.request_id`.
    #[error("malformed control frame (type {:#04x}, request {}): {error}", header.message_type, header.request_id)]
    Malformed {
        /// The header of the skipped frame.
        header: FrameHeader,
        /// Why its payload was rejected.
        error: WireError,
    },

    /// A header could not be accepted, so frame boundaries are lost. The decoder is poisoned and
    /// returns this error from now on; the session must be closed.
    #[error("control stream cannot be resynchronised: {0}")]
    Desync(WireError),
}

impl FrameError {
    /// Whether the stream is lost (the session must be closed) rather than one frame skipped.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::Desync(_))
    }

    /// The underlying parse error.
    pub fn wire_error(&self) -> &WireError {
        match self {
            FrameError::Malformed { error, .. } | FrameError::Desync(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    #[test]
    fn messages_are_lower_case_and_carry_values() {
        let e = WireError::Truncated {
            message: "connect request",
            need: 31,
            have: 12,
        };
        assert_eq!(
            e.to_string(),
            "connect request payload truncated: need 31 bytes, have 12"
        );
        let e = WireError::PayloadTooLarge {
            message_type: 0x99,
            len: 4000,
            max: 1024,
        };
        assert_eq!(
            e.to_string(),
            "control frame payload too large: type 0x99 declares 4000 bytes, maximum is 1024"
        );
        let e = FrameError::Malformed {
            header: FrameHeader::new(0x13, 3, RequestId(9)),
            error: WireError::UnknownAddressFamily(5),
        };
        assert_eq!(
            e.to_string(),
            "malformed control frame (type 0x13, request 9): unknown socket address family 5"
        );
        assert!(!e.is_fatal());
        assert_eq!(e.wire_error(), &WireError::UnknownAddressFamily(5));
        let fatal = FrameError::Desync(WireError::PayloadTooLarge {
            message_type: 0x10,
            len: 2000,
            max: 1024,
        });
        assert!(fatal.is_fatal());
        assert_eq!(
            fatal.to_string(),
            "control stream cannot be resynchronised: control frame payload too large: \
             type 0x10 declares 2000 bytes, maximum is 1024"
        );
    }
}
