//! Typed control messages: the second decoding level, above the header.
//!
//! Every payload has a fixed layout (PROTOCOL.md has one table per message); decoding checks
//! the exact length first, then reads field by field. A message type this crate does not know
//! decodes to [`Message::Unknown`] so the receiver can answer it and carry on.

use std::net::{Ipv4Addr, SocketAddr};

use crate::codec::{Put, Reader};
use crate::error::WireError;
use crate::error_code::ErrorCode;
use crate::fields::{ConnId, Handle, ListenerId, PipeInfo, RequestId, SocketOption};
use crate::header::{FrameHeader, HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::message_type::{Direction, MessageType};
use crate::name::{
    Answer, Answers, FamilyHint, HostName, NameError, ANSWER_LEN, MAX_ANSWERS, MAX_NAME_LEN,
};

/// `Hello.magic`: the bytes `A R C A` (`41 52 43 41`), read as a little-endian `u32`.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"ARCA");

/// `UdpBind.flags` bit: set `SO_REUSEADDR` before binding, so several sockets (for example
/// multicast receivers) may bind one port.
pub const UDP_REUSE_ADDR: u32 = 1;

/// `Membership.op`: join or leave a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MembershipOp {
    /// Join (`IP_ADD_MEMBERSHIP` / `IPV6_ADD_MEMBERSHIP`); wire value 1.
    Join,
    /// Leave (`IP_DROP_MEMBERSHIP` / `IPV6_DROP_MEMBERSHIP`); wire value 2.
    Leave,
}

impl MembershipOp {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            MembershipOp::Join => 1,
            MembershipOp::Leave => 2,
        }
    }

    /// The op for a wire byte.
    ///
    /// # Errors
    /// [`WireError::UnknownMembershipOp`] for anything but 1 and 2.
    pub fn from_u8(raw: u8) -> Result<MembershipOp, WireError> {
        match raw {
            1 => Ok(MembershipOp::Join),
            2 => Ok(MembershipOp::Leave),
            other => Err(WireError::UnknownMembershipOp(other)),
        }
    }
}

/// The protocol version this crate speaks: 2, which adds `Resolve` to version 1.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version a monitor built from this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// One control message. Field meanings and byte layouts are in PROTOCOL.md.
///
/// Addresses are carried as [`SocketAddr`] and encoded with
/// [`encode_socket_addr`](crate::encode_socket_addr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `0x01`, guest → monitor: the first frame of every session.
    Hello {
        /// Must be [`HELLO_MAGIC`].
        magic: u32,
        /// The protocol version the guest speaks.
        version: u16,
        /// Feature bits requested; none are defined in version 1, so this must be 0.
        flags: u16,
    },
    /// `0x02`, monitor → guest: the handshake succeeded.
    HelloOk {
        /// The version the session uses (the guest's).
        version: u16,
        /// Feature bits granted; 0 in version 1.
        flags: u16,
    },
    /// `0x03`, monitor → guest: the handshake failed; the monitor closes the session after it.
    HelloErr {
        /// Why: `Unsupported` (version or flags), `InvalidInput` (bad magic).
        code: ErrorCode,
        /// The oldest version the monitor speaks.
        min_version: u16,
        /// The newest version the monitor speaks.
        max_version: u16,
    },
    /// `0x04`, guest → monitor: release a listener or connection.
    Close {
        /// What to close.
        handle: Handle,
    },
    /// `0x05`, monitor → guest: the handle is closed.
    CloseOk,
    /// `0x06`, monitor → guest: the handle could not be closed.
    CloseErr {
        /// Why, typically `NotFound`.
        code: ErrorCode,
    },
    /// `0x08`, guest → monitor: set an option on the real socket behind a handle.
    SetOption {
        /// The socket.
        handle: Handle,
        /// Which option.
        option: SocketOption,
        /// Its new value (for booleans: 0 or 1).
        value: u64,
    },
    /// `0x09`, monitor → guest: the option is set.
    SetOptionOk,
    /// `0x0A`, monitor → guest: the option could not be set.
    SetOptionErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x10`, guest → monitor: bind a TCP socket to `addr` and listen.
    ListenRequest {
        /// The address to bind; port 0 lets the host choose.
        addr: SocketAddr,
        /// The listen backlog; 0 lets the monitor choose.
        backlog: u32,
    },
    /// `0x11`, monitor → guest: the listener exists.
    ListenOk {
        /// Its id.
        listener: ListenerId,
        /// The address actually bound (the real port when port 0 was requested).
        local: SocketAddr,
    },
    /// `0x12`, monitor → guest: binding or listening failed.
    ListenErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x14`, guest → monitor: open a TCP connection to `addr`.
    ConnectRequest {
        /// The peer to connect to.
        addr: SocketAddr,
        /// Give up after this many milliseconds; 0 means no timeout beyond the host's own.
        timeout_ms: u32,
    },
    /// `0x15`, monitor → guest: the connection is established.
    ConnectOk {
        /// Its id.
        conn: ConnId,
        /// Its data pipe.
        pipe: PipeInfo,
        /// The host socket's local address.
        local: SocketAddr,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// `0x16`, monitor → guest: the connection failed.
    ConnectErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x18`, guest → monitor: deliver the next inbound connection on a listener.
    AcceptRequest {
        /// The listener.
        listener: ListenerId,
    },
    /// `0x19`, monitor → guest: an inbound connection, answering one `AcceptRequest`.
    IncomingConnection {
        /// The listener it arrived on.
        listener: ListenerId,
        /// Its id.
        conn: ConnId,
        /// Its data pipe.
        pipe: PipeInfo,
        /// The host socket's local address.
        local: SocketAddr,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// `0x1A`, monitor → guest: accepting failed.
    AcceptErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x30`, guest → monitor: open a UDP socket bound to `addr`.
    UdpBind {
        /// The address to bind; port 0 lets the host choose.
        addr: SocketAddr,
        /// [`UDP_REUSE_ADDR`] or 0; other bits are refused with `InvalidInput`.
        flags: u32,
    },
    /// `0x31`, monitor → guest: the UDP socket exists.
    UdpBindOk {
        /// Its id (a [`ConnId`]: it has a data pipe and a notification slot).
        socket: ConnId,
        /// Its data pipe, which carries datagram records (DATAPIPE.md §10).
        pipe: PipeInfo,
        /// The address actually bound.
        local: SocketAddr,
    },
    /// `0x32`, monitor → guest: opening or binding failed.
    UdpBindErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x34`, guest → monitor: set the socket's default peer.
    UdpConnect {
        /// The socket.
        socket: ConnId,
        /// The peer.
        addr: SocketAddr,
    },
    /// `0x35`, monitor → guest: the peer is set.
    UdpConnectOk {
        /// The socket's local address after the connect (the host picks a source address).
        local: SocketAddr,
    },
    /// `0x36`, monitor → guest: connecting failed.
    UdpConnectErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x38`, guest → monitor: join or leave a multicast group.
    Membership {
        /// The socket.
        socket: ConnId,
        /// Join or leave.
        op: MembershipOp,
        /// The group; the port must be 0. For IPv6 the `scope_id` names the interface (0 =
        /// the host's default).
        group: SocketAddr,
        /// IPv4 only: the local interface's address (`0.0.0.0` = the host's default); must be
        /// `0.0.0.0` for an IPv6 group.
        interface: Ipv4Addr,
    },
    /// `0x39`, monitor → guest: the membership changed.
    MembershipOk,
    /// `0x3A`, monitor → guest: the membership could not be changed.
    MembershipErr {
        /// Why.
        code: ErrorCode,
    },
    /// `0x50`, guest → monitor: resolve a host name (protocol version 2).
    Resolve {
        /// Which addresses the guest wants.
        family: FamilyHint,
        /// The name.
        name: HostName,
    },
    /// `0x51`, monitor → guest: the name's addresses.
    ResolveOk {
        /// At most [`MAX_ANSWERS`] addresses, each with its TTL.
        answers: Answers,
    },
    /// `0x52`, monitor → guest: the name could not be resolved.
    ResolveErr {
        /// Why: `NoSuchName`, `PermissionDenied`, `ResolverFailure`, `TimedOut`,
        /// `QuotaExceeded`.
        code: ErrorCode,
    },
    /// `0x7F`, monitor → guest: a request could not be handled at all — its type is unknown,
    /// its payload malformed, or it came before the handshake.
    Error {
        /// Why: `Unsupported` for an unknown type, `InvalidInput` for a malformed frame.
        code: ErrorCode,
        /// The `message_type` of the frame being answered.
        rejected_type: u8,
    },
    /// A frame whose `message_type` this crate does not know; its payload was skipped. Never
    /// sent by a correct peer; encoding it writes a header with an empty payload, which is
    /// useful only for testing the peer's handling of unknown types.
    Unknown(u8),
}

impl Message {
    /// A `Hello` for this crate's [`PROTOCOL_VERSION`] with no flags.
    pub fn hello() -> Message {
        Message::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            flags: 0,
        }
    }

    /// The known type, or `None` for [`Message::Unknown`].
    pub fn kind(&self) -> Option<MessageType> {
        use MessageType as T;
        Some(match self {
            Message::Hello { .. } => T::Hello,
            Message::HelloOk { .. } => T::HelloOk,
            Message::HelloErr { .. } => T::HelloErr,
            Message::Close { .. } => T::Close,
            Message::CloseOk => T::CloseOk,
            Message::CloseErr { .. } => T::CloseErr,
            Message::SetOption { .. } => T::SetOption,
            Message::SetOptionOk => T::SetOptionOk,
            Message::SetOptionErr { .. } => T::SetOptionErr,
            Message::ListenRequest { .. } => T::ListenRequest,
            Message::ListenOk { .. } => T::ListenOk,
            Message::ListenErr { .. } => T::ListenErr,
            Message::ConnectRequest { .. } => T::ConnectRequest,
            Message::ConnectOk { .. } => T::ConnectOk,
            Message::ConnectErr { .. } => T::ConnectErr,
            Message::AcceptRequest { .. } => T::AcceptRequest,
            Message::IncomingConnection { .. } => T::IncomingConnection,
            Message::AcceptErr { .. } => T::AcceptErr,
            Message::UdpBind { .. } => T::UdpBind,
            Message::UdpBindOk { .. } => T::UdpBindOk,
            Message::UdpBindErr { .. } => T::UdpBindErr,
            Message::UdpConnect { .. } => T::UdpConnect,
            Message::UdpConnectOk { .. } => T::UdpConnectOk,
            Message::UdpConnectErr { .. } => T::UdpConnectErr,
            Message::Membership { .. } => T::Membership,
            Message::MembershipOk => T::MembershipOk,
            Message::MembershipErr { .. } => T::MembershipErr,
            Message::Resolve { .. } => T::Resolve,
            Message::ResolveOk { .. } => T::ResolveOk,
            Message::ResolveErr { .. } => T::ResolveErr,
            Message::Error { .. } => T::Error,
            Message::Unknown(_) => return None,
        })
    }

    /// The `message_type` byte.
    pub fn message_type(&self) -> u8 {
        match self {
            Message::Unknown(raw) => *raw,
            known => known.kind().map_or(0, MessageType::to_u8),
        }
    }

    /// The payload length this message encodes to (0 for `Unknown`).
    pub fn payload_len(&self) -> u16 {
        self.kind().map_or(0, MessageType::payload_len)
    }

    /// Which way the message travels; `None` for `Unknown`.
    pub fn direction(&self) -> Option<Direction> {
        self.kind().map(MessageType::direction)
    }

    /// The error code of an error reply (`HelloErr`, `CloseErr`, `SetOptionErr`, `ListenErr`,
    /// `ConnectErr`, `AcceptErr`, `UdpBindErr`, `UdpConnectErr`, `MembershipErr`, `ResolveErr`,
    /// `Error`);
    /// `None` for any other message.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Message::HelloErr { code, .. }
            | Message::CloseErr { code }
            | Message::SetOptionErr { code }
            | Message::ListenErr { code }
            | Message::ConnectErr { code }
            | Message::AcceptErr { code }
            | Message::UdpBindErr { code }
            | Message::UdpConnectErr { code }
            | Message::MembershipErr { code }
            | Message::ResolveErr { code }
            | Message::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// This message's frame header.
    pub fn header(&self, request_id: RequestId) -> FrameHeader {
        FrameHeader::new(self.message_type(), self.payload_len(), request_id)
    }

    /// Appends the whole frame — header, then payload — to `out`.
    pub fn encode(&self, request_id: RequestId, out: &mut Vec<u8>) {
        let header = self.header(request_id);
        out.reserve(header.frame_len());
        out.extend_from_slice(&header.to_bytes());
        let start = out.len();
        self.encode_payload(out);
        debug_assert_eq!(out.len() - start, usize::from(header.payload_len));
    }

    /// The whole frame as a new vector.
    pub fn to_frame(&self, request_id: RequestId) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(request_id, &mut out);
        out
    }

    /// Appends only the payload to `out` ([`Message::payload_len`] bytes).
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello {
                magic,
                version,
                flags,
            } => {
                out.put_u32(*magic);
                out.put_u16(*version);
                out.put_u16(*flags);
            }
            Message::HelloOk { version, flags } => {
                out.put_u16(*version);
                out.put_u16(*flags);
            }
            Message::HelloErr {
                code,
                min_version,
                max_version,
            } => {
                out.put_code(*code);
                out.put_u16(*min_version);
                out.put_u16(*max_version);
            }
            Message::Close { handle } => out.put_handle(*handle),
            Message::CloseOk
            | Message::SetOptionOk
            | Message::MembershipOk
            | Message::Unknown(_) => {}
            Message::SetOption {
                handle,
                option,
                value,
            } => {
                out.put_handle(*handle);
                out.put_option(*option);
                out.put_u64(*value);
            }
            Message::ListenRequest { addr, backlog } => {
                out.put_addr(addr);
                out.put_u32(*backlog);
            }
            Message::ListenOk { listener, local } => {
                out.put_u32(listener.0);
                out.put_addr(local);
            }
            Message::ConnectRequest { addr, timeout_ms } => {
                out.put_addr(addr);
                out.put_u32(*timeout_ms);
            }
            Message::ConnectOk {
                conn,
                pipe,
                local,
                peer,
            } => {
                out.put_u32(conn.0);
                out.put_pipe(pipe);
                out.put_addr(local);
                out.put_addr(peer);
            }
            Message::AcceptRequest { listener } => out.put_u32(listener.0),
            Message::IncomingConnection {
                listener,
                conn,
                pipe,
                local,
                peer,
            } => {
                out.put_u32(listener.0);
                out.put_u32(conn.0);
                out.put_pipe(pipe);
                out.put_addr(local);
                out.put_addr(peer);
            }
            Message::CloseErr { code }
            | Message::SetOptionErr { code }
            | Message::ListenErr { code }
            | Message::ConnectErr { code }
            | Message::AcceptErr { code }
            | Message::UdpBindErr { code }
            | Message::UdpConnectErr { code }
            | Message::MembershipErr { code }
            | Message::ResolveErr { code } => out.put_code(*code),
            Message::Resolve { family, name } => {
                let bytes = name.as_str().as_bytes();
                out.put_u8(family.to_u8());
                // A HostName is at most MAX_NAME_LEN (253) bytes.
                out.put_u8(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                out.put(bytes);
                out.put([0u8; MAX_NAME_LEN].get(bytes.len()..).unwrap_or_default());
            }
            Message::ResolveOk { answers } => {
                // Answers holds at most MAX_ANSWERS (16) entries.
                out.put_u8(u8::try_from(answers.len()).unwrap_or(u8::MAX));
                out.put(&[0; 3]);
                for a in answers.as_slice() {
                    out.put(&a.to_bytes());
                }
                for _ in answers.len()..MAX_ANSWERS {
                    out.put(&[0; ANSWER_LEN]);
                }
            }
            Message::UdpBind { addr, flags } => {
                out.put_addr(addr);
                out.put_u32(*flags);
            }
            Message::UdpBindOk {
                socket,
                pipe,
                local,
            } => {
                out.put_u32(socket.0);
                out.put_pipe(pipe);
                out.put_addr(local);
            }
            Message::UdpConnect { socket, addr } => {
                out.put_u32(socket.0);
                out.put_addr(addr);
            }
            Message::UdpConnectOk { local } => out.put_addr(local),
            Message::Membership {
                socket,
                op,
                group,
                interface,
            } => {
                out.put_u32(socket.0);
                out.put_u8(op.to_u8());
                out.put_addr(group);
                out.put(&interface.octets());
            }
            Message::Error {
                code,
                rejected_type,
            } => {
                out.put_code(*code);
                out.put_u8(*rejected_type);
            }
        }
    }

    /// Decodes the payload of one frame.
    ///
    /// `payload` must be exactly the `header.payload_len` bytes that followed `header`. An
    /// unknown `message_type` is not an error: it yields [`Message::Unknown`]. Any error leaves
    /// the stream in sync, since the caller already knows where the frame ends.
    ///
    /// # Errors
    /// - [`WireError::PayloadLengthMismatch`] if `payload.len() != header.payload_len`;
    /// - [`WireError::PayloadTooLarge`] if `header.payload_len` exceeds the cap;
    /// - [`WireError::Truncated`] / [`WireError::TrailingBytes`] if the length differs from the
    ///   message's fixed layout;
    /// - [`WireError::UnknownAddressFamily`], [`WireError::Ipv4NonZero`],
    ///   [`WireError::UnknownHandleKind`] for invalid fields.
    pub fn decode(header: &FrameHeader, payload: &[u8]) -> Result<Message, WireError> {
        let declared = usize::from(header.payload_len);
        if declared > MAX_FRAME_PAYLOAD {
            return Err(WireError::PayloadTooLarge {
                message_type: header.message_type,
                len: declared,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        if payload.len() != declared {
            return Err(WireError::PayloadLengthMismatch {
                declared,
                have: payload.len(),
            });
        }
        let Some(ty) = MessageType::from_u8(header.message_type) else {
            return Ok(Message::Unknown(header.message_type));
        };
        let mut r = Reader::new(ty.name(), usize::from(ty.payload_len()), payload)?;
        let message = match ty {
            MessageType::Hello => Message::Hello {
                magic: r.u32()?,
                version: r.u16()?,
                flags: r.u16()?,
            },
            MessageType::HelloOk => Message::HelloOk {
                version: r.u16()?,
                flags: r.u16()?,
            },
            MessageType::HelloErr => Message::HelloErr {
                code: r.code()?,
                min_version: r.u16()?,
                max_version: r.u16()?,
            },
            MessageType::Close => Message::Close {
                handle: r.handle()?,
            },
            MessageType::CloseOk => Message::CloseOk,
            MessageType::CloseErr => Message::CloseErr { code: r.code()? },
            MessageType::SetOption => Message::SetOption {
                handle: r.handle()?,
                option: r.option()?,
                value: r.u64()?,
            },
            MessageType::SetOptionOk => Message::SetOptionOk,
            MessageType::SetOptionErr => Message::SetOptionErr { code: r.code()? },
            MessageType::ListenRequest => Message::ListenRequest {
                addr: r.addr()?,
                backlog: r.u32()?,
            },
            MessageType::ListenOk => Message::ListenOk {
                listener: r.listener()?,
                local: r.addr()?,
            },
            MessageType::ListenErr => Message::ListenErr { code: r.code()? },
            MessageType::ConnectRequest => Message::ConnectRequest {
                addr: r.addr()?,
                timeout_ms: r.u32()?,
            },
            MessageType::ConnectOk => Message::ConnectOk {
                conn: r.conn()?,
                pipe: r.pipe()?,
                local: r.addr()?,
                peer: r.addr()?,
            },
            MessageType::ConnectErr => Message::ConnectErr { code: r.code()? },
            MessageType::AcceptRequest => Message::AcceptRequest {
                listener: r.listener()?,
            },
            MessageType::IncomingConnection => Message::IncomingConnection {
                listener: r.listener()?,
                conn: r.conn()?,
                pipe: r.pipe()?,
                local: r.addr()?,
                peer: r.addr()?,
            },
            MessageType::AcceptErr => Message::AcceptErr { code: r.code()? },
            MessageType::UdpBind => Message::UdpBind {
                addr: r.addr()?,
                flags: r.u32()?,
            },
            MessageType::UdpBindOk => Message::UdpBindOk {
                socket: r.conn()?,
                pipe: r.pipe()?,
                local: r.addr()?,
            },
            MessageType::UdpBindErr => Message::UdpBindErr { code: r.code()? },
            MessageType::UdpConnect => Message::UdpConnect {
                socket: r.conn()?,
                addr: r.addr()?,
            },
            MessageType::UdpConnectOk => Message::UdpConnectOk { local: r.addr()? },
            MessageType::UdpConnectErr => Message::UdpConnectErr { code: r.code()? },
            MessageType::Membership => Message::Membership {
                socket: r.conn()?,
                op: MembershipOp::from_u8(r.u8()?)?,
                group: r.addr()?,
                interface: Ipv4Addr::from(r.u32_be()?),
            },
            MessageType::MembershipOk => Message::MembershipOk,
            MessageType::MembershipErr => Message::MembershipErr { code: r.code()? },
            MessageType::Resolve => {
                let family = FamilyHint::from_u8(r.u8()?)?;
                let len = usize::from(r.u8()?);
                let field = r.take::<MAX_NAME_LEN>()?;
                let (name, padding) = field
                    .split_at_checked(len)
                    .ok_or(WireError::BadName(NameError::TooLong(len)))?;
                if padding.iter().any(|&b| b != 0) {
                    return Err(WireError::NamePadding);
                }
                let name = HostName::new(name).map_err(WireError::BadName)?;
                Message::Resolve { family, name }
            }
            MessageType::ResolveOk => {
                let count = usize::from(r.u8()?);
                if r.take::<3>()? != [0; 3] {
                    return Err(WireError::BadAnswer("nonzero reserved bytes"));
                }
                if count > MAX_ANSWERS {
                    return Err(WireError::AnswerCount {
                        count,
                        max: MAX_ANSWERS,
                    });
                }
                let mut list = Vec::with_capacity(count);
                for i in 0..MAX_ANSWERS {
                    let entry = r.take::<ANSWER_LEN>()?;
                    if i < count {
                        list.push(Answer::from_bytes(entry)?);
                    } else if entry != [0; ANSWER_LEN] {
                        return Err(WireError::BadAnswer("unused entry is not zero"));
                    }
                }
                Message::ResolveOk {
                    answers: Answers::new(list),
                }
            }
            MessageType::ResolveErr => Message::ResolveErr { code: r.code()? },
            MessageType::Error => Message::Error {
                code: r.code()?,
                rejected_type: r.u8()?,
            },
        };
        r.finish()?;
        Ok(message)
    }
}

/// A decoded frame: the request id from its header and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request this frame is, or answers.
    pub request_id: RequestId,
    /// The message.
    pub message: Message,
}

impl Frame {
    /// A frame.
    pub fn new(request_id: RequestId, message: Message) -> Frame {
        Frame {
            request_id,
            message,
        }
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.message.encode(self.request_id, out);
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.message.to_frame(self.request_id)
    }

    /// Decodes exactly one whole frame (header and payload, nothing after).
    ///
    /// # Errors
    /// As [`FrameHeader::parse`] and [`Message::decode`]; bytes beyond or missing from the
    /// declared payload give [`WireError::PayloadLengthMismatch`].
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let header = FrameHeader::parse(bytes)?;
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        let message = Message::decode(&header, payload)?;
        Ok(Frame::new(header.request_id, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_magic_is_arca() {
        assert_eq!(HELLO_MAGIC.to_le_bytes(), *b"ARCA");
        assert_eq!(HELLO_MAGIC, 0x4143_5241);
    }

    #[test]
    fn unknown_type_is_skipped_not_failed() {
        let header = FrameHeader::new(0x55, 3, RequestId(4));
        assert_eq!(
            Message::decode(&header, &[1, 2, 3]),
            Ok(Message::Unknown(0x55))
        );
        let frame = Message::Unknown(0x55).to_frame(RequestId(4));
        assert_eq!(frame, [0x55, 0, 0, 4, 0, 0, 0]);
        assert_eq!(Message::Unknown(0x55).kind(), None);
        assert_eq!(Message::Unknown(0x55).direction(), None);
    }

    #[test]
    fn payload_must_match_header() {
        let header = FrameHeader::new(MessageType::AcceptRequest.to_u8(), 4, RequestId(1));
        assert_eq!(
            Message::decode(&header, &[1, 2, 3]),
            Err(WireError::PayloadLengthMismatch {
                declared: 4,
                have: 3
            })
        );
        let huge = FrameHeader::new(0x10, 2000, RequestId(1));
        assert!(matches!(
            Message::decode(&huge, &[0; 2000]),
            Err(WireError::PayloadTooLarge { len: 2000, .. })
        ));
    }

    #[test]
    fn error_code_accessor() {
        assert_eq!(
            Message::ConnectErr {
                code: ErrorCode::ConnectionRefused
            }
            .error_code(),
            Some(ErrorCode::ConnectionRefused)
        );
        assert_eq!(Message::CloseOk.error_code(), None);
    }

    #[test]
    fn frame_decode_rejects_extra_and_missing_bytes() {
        let mut bytes = Message::AcceptRequest {
            listener: ListenerId(3),
        }
        .to_frame(RequestId(8));
        assert_eq!(
            Frame::decode(&bytes),
            Ok(Frame::new(
                RequestId(8),
                Message::AcceptRequest {
                    listener: ListenerId(3)
                }
            ))
        );
        bytes.push(0);
        assert_eq!(
            Frame::decode(&bytes),
            Err(WireError::PayloadLengthMismatch {
                declared: 4,
                have: 5
            })
        );
        bytes.truncate(9);
        assert_eq!(
            Frame::decode(&bytes),
            Err(WireError::PayloadLengthMismatch {
                declared: 4,
                have: 2
            })
        );
    }
}
