//! Message type numbers, their payload lengths and directions.
//!
//! Numbers are grouped in ranges so later messages fit beside their relatives:
//!
//! | range         | use                                                               |
//! |---------------|-------------------------------------------------------------------|
//! | `0x00`        | never valid (decodes as unknown)                                  |
//! | `0x01..=0x0F` | session: handshake, and operations on any handle (close, options) |
//! | `0x10..=0x2F` | TCP: listen, connect, accept                                      |
//! | `0x30..=0x4F` | UDP: bind, connect, multicast membership                          |
//! | `0x50..=0x6F` | names: resolve                                                    |
//! | `0x70..=0x7F` | generic replies (`0x7F` = `Error`)                                |
//! | `0x80..=0xFF` | reserved for extensions                                           |
//!
//! Within a group, a request at `N` (a multiple of 4 in the TCP range) has its success reply
//! at `N + 1` and its error reply at `N + 2`.

use std::fmt;

use crate::addr::SOCKET_ADDR_LEN;
use crate::fields::{Handle, PipeInfo};
use crate::name::{ANSWER_LEN, MAX_ANSWERS, MAX_NAME_LEN};

/// Which way a message travels on the control pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A request, sent by the guest.
    GuestToMonitor,
    /// A reply, sent by the monitor.
    MonitorToGuest,
}

/// The message types this crate knows. The wire byte is the discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MessageType {
    /// Opens the session: magic, protocol version, flags.
    Hello = 0x01,
    /// The monitor accepts the handshake.
    HelloOk = 0x02,
    /// The monitor refuses the handshake; it then closes the session.
    HelloErr = 0x03,
    /// Closes a listener or connection.
    Close = 0x04,
    /// The handle is closed.
    CloseOk = 0x05,
    /// The handle could not be closed (for example, unknown id).
    CloseErr = 0x06,
    /// Sets a socket option on a handle.
    SetOption = 0x08,
    /// The option is set.
    SetOptionOk = 0x09,
    /// The option could not be set.
    SetOptionErr = 0x0A,
    /// Binds and listens on a TCP address.
    ListenRequest = 0x10,
    /// The listener exists; carries its id and real local address.
    ListenOk = 0x11,
    /// Binding or listening failed.
    ListenErr = 0x12,
    /// Opens a TCP connection.
    ConnectRequest = 0x14,
    /// The connection is established; carries its id, data pipe and addresses.
    ConnectOk = 0x15,
    /// The connection failed.
    ConnectErr = 0x16,
    /// Asks for the next inbound connection on a listener.
    AcceptRequest = 0x18,
    /// An inbound connection; carries its id, data pipe and addresses.
    IncomingConnection = 0x19,
    /// Accepting failed.
    AcceptErr = 0x1A,
    /// Opens a UDP socket bound to an address.
    UdpBind = 0x30,
    /// The socket exists; carries its id, data pipe and real local address.
    UdpBindOk = 0x31,
    /// Opening or binding failed.
    UdpBindErr = 0x32,
    /// Sets a UDP socket's default peer (and filters what it receives to that peer).
    UdpConnect = 0x34,
    /// The peer is set; carries the socket's local address after the connect.
    UdpConnectOk = 0x35,
    /// Connecting failed.
    UdpConnectErr = 0x36,
    /// Joins or leaves a multicast group on a UDP socket.
    Membership = 0x38,
    /// The membership changed.
    MembershipOk = 0x39,
    /// The membership could not be changed.
    MembershipErr = 0x3A,
    /// Resolves a host name through the monitor.
    Resolve = 0x50,
    /// The name's addresses, with their TTLs.
    ResolveOk = 0x51,
    /// The name could not be resolved (no such name, policy, resolver failure, timeout).
    ResolveErr = 0x52,
    /// A generic error reply: unknown message type, malformed frame, out-of-order handshake.
    Error = 0x7F,
}

/// Payload length of `ListenRequest` and `ConnectRequest`: an address and a `u32`.
const ADDR_AND_U32: usize = SOCKET_ADDR_LEN + 4;
/// Payload length of `ConnectOk`.
const CONNECT_OK_LEN: usize = 4 + PipeInfo::LEN + 2 * SOCKET_ADDR_LEN;
/// Payload length of `IncomingConnection`.
const INCOMING_LEN: usize = 4 + CONNECT_OK_LEN;
/// Payload length of `SetOption`.
const SET_OPTION_LEN: usize = Handle::LEN + 2 + 8;
/// Payload length of `UdpBindOk`.
const UDP_BIND_OK_LEN: usize = 4 + PipeInfo::LEN + SOCKET_ADDR_LEN;
/// Payload length of `Membership`: socket, op, group, IPv4 interface.
const MEMBERSHIP_LEN: usize = 4 + 1 + SOCKET_ADDR_LEN + 4;
/// Payload length of `Resolve`: family hint, name length, the name's field.
const RESOLVE_LEN: usize = 1 + 1 + MAX_NAME_LEN;
/// Payload length of `ResolveOk`: count, three reserved bytes, the answer entries.
const RESOLVE_OK_LEN: usize = 4 + MAX_ANSWERS * ANSWER_LEN;

// Pin the lengths PROTOCOL.md states.
const _: () = assert!(ADDR_AND_U32 == 31);
const _: () = assert!(CONNECT_OK_LEN == 74);
const _: () = assert!(INCOMING_LEN == 78);
const _: () = assert!(SET_OPTION_LEN == 15);
const _: () = assert!(UDP_BIND_OK_LEN == 47);
const _: () = assert!(MEMBERSHIP_LEN == 36);
const _: () = assert!(RESOLVE_LEN == 255);
const _: () = assert!(RESOLVE_OK_LEN == 196);

use MessageType as T;

/// What the protocol says about one message type.
struct Info {
    name: &'static str,
    payload_len: usize,
    direction: Direction,
    /// For a reply, the request it answers (`None` for requests and for `Error`, which answers
    /// any request).
    answers: Option<MessageType>,
}

const fn request(name: &'static str, payload_len: usize) -> Info {
    Info {
        name,
        payload_len,
        direction: Direction::GuestToMonitor,
        answers: None,
    }
}

const fn reply(name: &'static str, payload_len: usize, answers: MessageType) -> Info {
    Info {
        name,
        payload_len,
        direction: Direction::MonitorToGuest,
        answers: Some(answers),
    }
}

impl MessageType {
    /// Every known type, in numeric order.
    pub const ALL: [MessageType; 31] = [
        T::Hello,
        T::HelloOk,
        T::HelloErr,
        T::Close,
        T::CloseOk,
        T::CloseErr,
        T::SetOption,
        T::SetOptionOk,
        T::SetOptionErr,
        T::ListenRequest,
        T::ListenOk,
        T::ListenErr,
        T::ConnectRequest,
        T::ConnectOk,
        T::ConnectErr,
        T::AcceptRequest,
        T::IncomingConnection,
        T::AcceptErr,
        T::UdpBind,
        T::UdpBindOk,
        T::UdpBindErr,
        T::UdpConnect,
        T::UdpConnectOk,
        T::UdpConnectErr,
        T::Membership,
        T::MembershipOk,
        T::MembershipErr,
        T::Resolve,
        T::ResolveOk,
        T::ResolveErr,
        T::Error,
    ];

    /// The protocol's facts about this type (an exhaustive match, so a new variant cannot be
    /// forgotten here).
    const fn info(self) -> Info {
        match self {
            T::Hello => request("hello", 8),
            T::HelloOk => reply("hello ok", 4, T::Hello),
            T::HelloErr => reply("hello err", 6, T::Hello),
            T::Close => request("close", Handle::LEN),
            T::CloseOk => reply("close ok", 0, T::Close),
            T::CloseErr => reply("close err", 2, T::Close),
            T::SetOption => request("set option", SET_OPTION_LEN),
            T::SetOptionOk => reply("set option ok", 0, T::SetOption),
            T::SetOptionErr => reply("set option err", 2, T::SetOption),
            T::ListenRequest => request("listen request", ADDR_AND_U32),
            T::ListenOk => reply("listen ok", 4 + SOCKET_ADDR_LEN, T::ListenRequest),
            T::ListenErr => reply("listen err", 2, T::ListenRequest),
            T::ConnectRequest => request("connect request", ADDR_AND_U32),
            T::ConnectOk => reply("connect ok", CONNECT_OK_LEN, T::ConnectRequest),
            T::ConnectErr => reply("connect err", 2, T::ConnectRequest),
            T::AcceptRequest => request("accept request", 4),
            T::IncomingConnection => reply("incoming connection", INCOMING_LEN, T::AcceptRequest),
            T::AcceptErr => reply("accept err", 2, T::AcceptRequest),
            T::UdpBind => request("udp bind", ADDR_AND_U32),
            T::UdpBindOk => reply("udp bind ok", UDP_BIND_OK_LEN, T::UdpBind),
            T::UdpBindErr => reply("udp bind err", 2, T::UdpBind),
            T::UdpConnect => request("udp connect", 4 + SOCKET_ADDR_LEN),
            T::UdpConnectOk => reply("udp connect ok", SOCKET_ADDR_LEN, T::UdpConnect),
            T::UdpConnectErr => reply("udp connect err", 2, T::UdpConnect),
            T::Membership => request("membership", MEMBERSHIP_LEN),
            T::MembershipOk => reply("membership ok", 0, T::Membership),
            T::MembershipErr => reply("membership err", 2, T::Membership),
            T::Resolve => request("resolve", RESOLVE_LEN),
            T::ResolveOk => reply("resolve ok", RESOLVE_OK_LEN, T::Resolve),
            T::ResolveErr => reply("resolve err", 2, T::Resolve),
            T::Error => Info {
                name: "error",
                payload_len: 3,
                direction: Direction::MonitorToGuest,
                answers: None,
            },
        }
    }

    /// The type for a wire byte, or `None` if this crate does not know it.
    pub fn from_u8(raw: u8) -> Option<MessageType> {
        LOOKUP.get(usize::from(raw)).copied().flatten()
    }

    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }

    /// A lower-case name, for example `"connect request"`.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// The fixed payload length in bytes.
    pub const fn payload_len(self) -> u16 {
        // At most MAX_PAYLOAD, which fits in u16 (asserted at compile time), so this `as`
        // cannot truncate; `try_from` is not const.
        #[allow(clippy::cast_possible_truncation)]
        let len = self.info().payload_len as u16;
        len
    }

    /// Which way this message travels.
    pub const fn direction(self) -> Direction {
        self.info().direction
    }

    /// The request this reply type answers; `None` for requests and for
    /// [`MessageType::Error`] (which may answer any request).
    pub const fn request(self) -> Option<MessageType> {
        self.info().answers
    }

    /// Whether a frame of this type may answer a request of type `request`: the request's own
    /// success and error replies, and [`MessageType::Error`] for any request.
    pub fn answers(self, request: MessageType) -> bool {
        request.direction() == Direction::GuestToMonitor
            && (self == MessageType::Error || self.request() == Some(request))
    }
}

/// `LOOKUP[b]` is the known type with wire byte `b`.
// Indexing in const evaluation: an out-of-range index would fail the build, not panic at run time.
#[allow(clippy::indexing_slicing)]
const LOOKUP: [Option<MessageType>; 256] = {
    let mut lookup = [None; 256];
    let mut rest: &[MessageType] = &MessageType::ALL;
    while let [ty, tail @ ..] = rest {
        assert!(lookup[*ty as usize].is_none(), "duplicate message type");
        lookup[*ty as usize] = Some(*ty);
        rest = tail;
    }
    lookup
};

const fn max_payload() -> usize {
    let mut max = 0;
    let mut rest: &[MessageType] = &MessageType::ALL;
    while let [ty, tail @ ..] = rest {
        if ty.info().payload_len > max {
            max = ty.info().payload_len;
        }
        rest = tail;
    }
    max
}

/// The largest payload of any message this crate knows (`Resolve`, 255 bytes).
pub const MAX_PAYLOAD: usize = max_payload();

const _: () = assert!(MAX_PAYLOAD == RESOLVE_LEN);
const _: () = assert!(MAX_PAYLOAD <= crate::header::MAX_FRAME_PAYLOAD);
const _: () = assert!(MAX_PAYLOAD <= u16::MAX as usize);

// ALL is in strictly increasing numeric order.
const _: () = {
    let mut rest: &[MessageType] = &MessageType::ALL;
    while let [first, tail @ ..] = rest {
        if let [second, ..] = tail {
            assert!((*first as u8) < (*second as u8));
        }
        rest = tail;
    }
};

impl From<MessageType> for u8 {
    fn from(ty: MessageType) -> u8 {
        ty.to_u8()
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.to_u8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_round_trips_and_rejects_unknown() {
        for ty in MessageType::ALL {
            assert_eq!(MessageType::from_u8(ty.to_u8()), Some(ty));
        }
        let known = (0..=u8::MAX)
            .filter(|&b| MessageType::from_u8(b).is_some())
            .count();
        assert_eq!(known, MessageType::ALL.len());
        for raw in [
            0x00, 0x07, 0x0B, 0x13, 0x1B, 0x33, 0x3B, 0x4F, 0x7E, 0x80, 0xFF,
        ] {
            assert_eq!(MessageType::from_u8(raw), None, "{raw:#04x}");
        }
    }

    #[test]
    fn replies_follow_their_requests() {
        for ty in MessageType::ALL {
            if let Some(request) = ty.request() {
                assert_eq!(request.direction(), Direction::GuestToMonitor);
                assert_eq!(ty.direction(), Direction::MonitorToGuest);
                let offset = ty.to_u8() - request.to_u8();
                assert!(offset == 1 || offset == 2, "{ty}");
                assert!(ty.answers(request));
            }
            assert!(
                MessageType::Error.answers(ty) == (ty.direction() == Direction::GuestToMonitor)
            );
        }
        assert!(!MessageType::ConnectOk.answers(MessageType::ListenRequest));
        assert!(!MessageType::ListenOk.answers(MessageType::ListenOk));
    }

    #[test]
    fn lengths() {
        assert_eq!(MAX_PAYLOAD, 255);
        assert_eq!(MessageType::ConnectRequest.payload_len(), 31);
        assert_eq!(MessageType::CloseOk.payload_len(), 0);
        assert_eq!(
            MessageType::IncomingConnection.to_string(),
            "incoming connection (0x19)"
        );
    }
}
