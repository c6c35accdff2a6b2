//! Field types that appear inside payloads: request, connection and listener ids, handles,
//! data-pipe descriptions and socket options.
//!
//! Each type with a multi-byte encoding declares its length as `LEN` and converts to and from a
//! byte array of exactly that length, little-endian.

use std::fmt;
use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::error::WireError;

/// Identifies one request on the control pipe; its reply carries the same id.
///
/// Chosen by the guest, unique among its requests in flight. `RequestId::NONE` (0) is reserved
/// for frames that answer no request; guests never send it (see PROTOCOL.md, "Requests and
/// replies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u32);

impl RequestId {
    /// The reserved id 0, which names no request.
    pub const NONE: RequestId = RequestId(0);

    /// The id after this one, wrapping around and skipping [`RequestId::NONE`].
    #[must_use]
    pub fn next(self) -> RequestId {
        match self.0.wrapping_add(1) {
            0 => RequestId(1),
            n => RequestId(n),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A TCP connection, named by the monitor in `ConnectOk` / `IncomingConnection`.
///
/// Ids are scoped to one session: a guest can name only its own connections. The monitor never
/// assigns 0. The id is also the connection's slot in the notification bitmap, so it is below
/// the bootstrap's `bitmap_slots`, and may be given to a new connection once this one is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A listening TCP socket, named by the monitor in `ListenOk`.
///
/// Ids are scoped to one session. The monitor never assigns 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u32);

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Something the guest holds on the monitor, named in `Close` and `SetOption`.
///
/// Wire form, 5 bytes: `kind: u8` (1 = listener, 2 = TCP connection; 3 is reserved for UDP
/// sockets) then `id: u32` LE. An unknown kind is a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handle {
    /// A listening TCP socket.
    Listener(ListenerId),
    /// A TCP connection.
    Connection(ConnId),
    /// A UDP socket; its id is a [`ConnId`] because, like a connection, it has a data pipe
    /// and a notification slot.
    Udp(ConnId),
}

impl Handle {
    /// Encoded length in bytes.
    pub const LEN: usize = 5;
    /// `kind` byte of [`Handle::Listener`].
    pub const KIND_LISTENER: u8 = 1;
    /// `kind` byte of [`Handle::Connection`].
    pub const KIND_CONNECTION: u8 = 2;
    /// `kind` byte of a UDP socket handle.
    pub const KIND_UDP: u8 = 3;

    /// The `kind` byte.
    pub fn kind(self) -> u8 {
        match self {
            Handle::Listener(_) => Self::KIND_LISTENER,
            Handle::Connection(_) => Self::KIND_CONNECTION,
            Handle::Udp(_) => Self::KIND_UDP,
        }
    }

    /// The raw id, whatever the kind.
    pub fn raw_id(self) -> u32 {
        match self {
            Handle::Listener(ListenerId(id))
            | Handle::Connection(ConnId(id))
            | Handle::Udp(ConnId(id)) => id,
        }
    }

    /// Encodes the handle.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let [a, b, c, d] = self.raw_id().to_le_bytes();
        [self.kind(), a, b, c, d]
    }

    /// Decodes a handle.
    ///
    /// # Errors
    /// [`WireError::UnknownHandleKind`] if the kind byte is not 1 or 2.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Result<Handle, WireError> {
        let [kind, a, b, c, d] = bytes;
        let id = u32::from_le_bytes([a, b, c, d]);
        match kind {
            Self::KIND_LISTENER => Ok(Handle::Listener(ListenerId(id))),
            Self::KIND_CONNECTION => Ok(Handle::Connection(ConnId(id))),
            Self::KIND_UDP => Ok(Handle::Udp(ConnId(id))),
            other => Err(WireError::UnknownHandleKind(other)),
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Listener(id) => write!(f, "listener {id}"),
            Handle::Connection(id) => write!(f, "connection {id}"),
            Handle::Udp(id) => write!(f, "udp socket {id}"),
        }
    }
}

/// Where a connection's data pipe lives in the shared region.
///
/// Wire form, 16 bytes: `shm_offset: u64` LE, `cap_to_monitor: u32` LE, `cap_to_guest: u32` LE.
/// The values come from the peer: the guest checks them against its region (bounds, alignment,
/// the buddy block's size) before touching the memory; this crate only carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeInfo {
    /// Byte offset of the pipe's block from the start of the shared region.
    pub shm_offset: u64,
    /// Data capacity in bytes of the ring the guest writes and the monitor reads.
    pub cap_to_monitor: u32,
    /// Data capacity in bytes of the ring the monitor writes and the guest reads.
    pub cap_to_guest: u32,
}

/// A [`PipeInfo`]'s bytes, field by field: byte arrays holding little-endian values, so
/// alignment 1 and no padding.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawPipeInfo {
    shm_offset: [u8; 8],
    cap_to_monitor: [u8; 4],
    cap_to_guest: [u8; 4],
}

const _: () = assert!(size_of::<RawPipeInfo>() == PipeInfo::LEN);
const _: () = assert!(offset_of!(RawPipeInfo, shm_offset) == 0);
const _: () = assert!(offset_of!(RawPipeInfo, cap_to_monitor) == 8);
const _: () = assert!(offset_of!(RawPipeInfo, cap_to_guest) == 12);

impl PipeInfo {
    /// Encoded length in bytes.
    pub const LEN: usize = 16;

    /// Encodes the pipe description.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        bytemuck::must_cast(RawPipeInfo {
            shm_offset: self.shm_offset.to_le_bytes(),
            cap_to_monitor: self.cap_to_monitor.to_le_bytes(),
            cap_to_guest: self.cap_to_guest.to_le_bytes(),
        })
    }

    /// Decodes a pipe description. Every bit pattern is a valid encoding.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> PipeInfo {
        let raw: RawPipeInfo = bytemuck::must_cast(bytes);
        PipeInfo {
            shm_offset: u64::from_le_bytes(raw.shm_offset),
            cap_to_monitor: u32::from_le_bytes(raw.cap_to_monitor),
            cap_to_guest: u32::from_le_bytes(raw.cap_to_guest),
        }
    }
}

/// A socket option named in `SetOption`, carried as a `u16`.
///
/// Numbers `0x0001..=0x00FF` are stream (TCP) options, `0x0100..=0x01FF` are reserved for
/// datagram (UDP) options. A number this crate does not know decodes to
/// [`SocketOption::Unknown`]; the monitor answers it with `SetOptionErr(Unsupported)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketOption {
    /// `TCP_NODELAY` on a connection. Value 0 = off, 1 = on; anything else is `InvalidInput`.
    NoDelay,
    /// `SO_BROADCAST` on a UDP socket (0 or 1).
    Broadcast,
    /// `IP_MULTICAST_LOOP` on a UDP socket (0 or 1).
    MulticastLoopV4,
    /// `IP_MULTICAST_TTL` on a UDP socket (0 to 255).
    MulticastTtlV4,
    /// `IP_MULTICAST_IF` on a UDP socket: the outgoing interface's IPv4 address as
    /// `u32::from(Ipv4Addr)` (0 = the routing table decides).
    MulticastIfV4,
    /// `IPV6_MULTICAST_LOOP` on a UDP socket (0 or 1).
    MulticastLoopV6,
    /// `IPV6_MULTICAST_IF` on a UDP socket: an interface index (0 = default).
    MulticastIfV6,
    /// `IP_TTL` (or `IPV6_UNICAST_HOPS`) on a UDP socket (1 to 255).
    Ttl,
    /// `SO_RCVBUF` on a UDP socket, in bytes (the host may clamp it).
    RecvBufferSize,
    /// `SO_SNDBUF` on a UDP socket, in bytes (the host may clamp it).
    SendBufferSize,
    /// A number not assigned above. Never holds an assigned number when produced by
    /// [`SocketOption::from_u16`].
    Unknown(u16),
}

impl SocketOption {
    /// Number of [`SocketOption::NoDelay`].
    pub const NO_DELAY: u16 = 0x0001;

    /// Every assigned option with its number, in numeric order.
    pub const ALL: [(SocketOption, u16); 10] = [
        (SocketOption::NoDelay, Self::NO_DELAY),
        (SocketOption::Broadcast, 0x0101),
        (SocketOption::MulticastLoopV4, 0x0102),
        (SocketOption::MulticastTtlV4, 0x0103),
        (SocketOption::MulticastIfV4, 0x0104),
        (SocketOption::MulticastLoopV6, 0x0105),
        (SocketOption::MulticastIfV6, 0x0106),
        (SocketOption::Ttl, 0x0107),
        (SocketOption::RecvBufferSize, 0x0108),
        (SocketOption::SendBufferSize, 0x0109),
    ];

    /// The option for a wire number; unassigned numbers give [`SocketOption::Unknown`].
    pub fn from_u16(raw: u16) -> SocketOption {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == raw)
            .map_or(SocketOption::Unknown(raw), |(o, _)| *o)
    }

    /// The wire number.
    pub fn to_u16(self) -> u16 {
        match self {
            SocketOption::Unknown(raw) => raw,
            known => Self::ALL
                .iter()
                .find(|(o, _)| *o == known)
                .map_or(0, |(_, n)| *n),
        }
    }

    /// True for the options that apply to UDP sockets (`0x0100`–`0x01FF`).
    pub fn is_udp(self) -> bool {
        (0x0100..=0x01FF).contains(&self.to_u16())
    }
}

impl From<u16> for SocketOption {
    fn from(raw: u16) -> Self {
        SocketOption::from_u16(raw)
    }
}

impl From<SocketOption> for u16 {
    fn from(option: SocketOption) -> Self {
        option.to_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_next_skips_none() {
        assert_eq!(RequestId(1).next(), RequestId(2));
        assert_eq!(RequestId(u32::MAX).next(), RequestId(1));
        assert_eq!(RequestId::NONE.next(), RequestId(1));
    }

    #[test]
    fn handle_bytes() {
        let h = Handle::Connection(ConnId(0x0102_0304));
        assert_eq!(h.to_bytes(), [2, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(Handle::from_bytes(h.to_bytes()), Ok(h));
        let l = Handle::Listener(ListenerId(7));
        assert_eq!(l.to_bytes(), [1, 7, 0, 0, 0]);
        assert_eq!(Handle::from_bytes(l.to_bytes()), Ok(l));
        assert_eq!(l.to_string(), "listener 7");
        for kind in [0u8, 4, 0xFF] {
            assert_eq!(
                Handle::from_bytes([kind, 1, 0, 0, 0]),
                Err(WireError::UnknownHandleKind(kind))
            );
        }
    }

    #[test]
    fn pipe_info_bytes() {
        let p = PipeInfo {
            shm_offset: 0x0807_0605_0403_0201,
            cap_to_monitor: 0x1000,
            cap_to_guest: 0x0002_0000,
        };
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 0, 0x10, 0, 0, 0, 0, 2, 0];
        assert_eq!(p.to_bytes(), bytes);
        assert_eq!(PipeInfo::from_bytes(bytes), p);
    }

    #[test]
    fn socket_option_numbers() {
        assert_eq!(SocketOption::from_u16(1), SocketOption::NoDelay);
        assert_eq!(u16::from(SocketOption::NoDelay), 1);
        assert_eq!(SocketOption::from(0x0100), SocketOption::Unknown(0x0100));
        assert_eq!(SocketOption::Unknown(0x0100).to_u16(), 0x0100);
        for (option, number) in SocketOption::ALL {
            assert_eq!(SocketOption::from_u16(number), option);
            assert_eq!(option.to_u16(), number);
            assert_eq!(option.is_udp(), number >= 0x0100);
        }
    }
}
