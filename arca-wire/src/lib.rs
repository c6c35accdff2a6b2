//! The one definition of the arca control protocol's wire types, shared by the guest library
//! (`arca`) and the host monitor (`arca-monitor`), so the two ends cannot drift apart.
//!
//! The control pipe is a reliable, in-order byte stream between a guest and the monitor. It
//! carries frames: a 7-byte [`FrameHeader`] (`message_type: u8`, `payload_len: u16`,
//! `request_id: u32`, little-endian) followed by exactly `payload_len` bytes of a fixed-layout
//! payload. The specification, with every byte layout, is `PROTOCOL.md` at the workspace root;
//! the golden-bytes tests check this crate against it.
//!
//! # Trust model
//!
//! The monitor treats every byte from a guest as hostile: a guest may be buggy or malicious
//! and controls every frame it sends. Decoding therefore never panics, on any input: no
//! `unwrap`, `expect` or slice indexing on values derived from input; truncated payloads,
//! trailing bytes, unknown address families and unknown handle kinds are typed errors carrying
//! the values involved ([`WireError`]). Buffering is bounded: no frame may declare more than
//! [`MAX_FRAME_PAYLOAD`] bytes, so a receiver never holds more than [`MAX_FRAME_LEN`] bytes of
//! a frame. The guest extends the same care to the monitor's replies.
//!
//! This crate validates the *form* of a message, not its *meaning*: whether a [`ConnId`] belongs
//! to the sender, whether a [`PipeInfo`] lies inside the shared region, whether policy allows an
//! address — those checks belong to the monitor and to the guest's region code. The crate holds
//! no shared memory and contains no `unsafe` code.
//!
//! # Decoding in two levels
//!
//! As in smoltcp, raw bytes first get a shape, then a type:
//!
//! 1. [`FrameHeader::parse`] reads the header and enforces the payload cap;
//! 2. [`Message::decode`] turns the payload into a [`Message`]. A type this crate does not
//!    know becomes [`Message::Unknown`], which the receiver answers with an error reply; the
//!    stream stays in sync because `payload_len` says where the next frame starts.
//!
//! [`FrameDecoder`] does both over a byte stream fed in arbitrary chunks.
//!
//! Before the first frame, the monitor hands the guest a [`Bootstrap`] (over the session's Unix
//! socket, with the region and doorbell descriptors) saying where the control pipe is.
//!
//! # Examples
//!
//! ```
//! use arca_wire::{Frame, Message, RequestId};
//!
//! let request = Message::ConnectRequest {
//!     addr: "127.0.0.1:8080".parse().unwrap(),
//!     timeout_ms: 5000,
//! };
//! let bytes = request.to_frame(RequestId(7));
//! assert_eq!(bytes.len(), 7 + 31);
//! assert_eq!(Frame::decode(&bytes), Ok(Frame::new(RequestId(7), request)));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Library code handles hostile input: no panicking shortcuts (unit tests may use them).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::cast_possible_truncation
    )
)]

mod addr;
mod bootstrap;
mod codec;
mod datagram;
mod decoder;
mod error;
mod error_code;
mod fields;
mod header;
mod message;
mod message_type;
mod name;

pub use addr::{decode_socket_addr, encode_socket_addr, FAMILY_V4, FAMILY_V6, SOCKET_ADDR_LEN};
pub use bootstrap::{Bootstrap, BOOTSTRAP_FDS, BOOTSTRAP_LEN, BOOTSTRAP_MAGIC, BOOTSTRAP_VERSION};
pub use datagram::{
    max_datagram_for, DatagramHeader, DATAGRAM_HEADER_LEN, MAX_DATAGRAM, MAX_DATAGRAM_V4,
};
pub use decoder::FrameDecoder;
pub use error::{FrameError, WireError};
pub use error_code::{ErrorCode, RemoteError};
pub use fields::{ConnId, Handle, ListenerId, PipeInfo, RequestId, SocketOption};
pub use header::{FrameHeader, HEADER_LEN, MAX_FRAME_LEN, MAX_FRAME_PAYLOAD};
pub use message::{
    Frame, MembershipOp, Message, HELLO_MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    UDP_REUSE_ADDR,
};
pub use message_type::{Direction, MessageType, MAX_PAYLOAD};
pub use name::{
    Answer, Answers, FamilyHint, HostName, NameError, ANSWER_LEN, MAX_ANSWERS, MAX_NAME_LEN,
};
