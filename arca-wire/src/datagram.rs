//! The datagram record: how a UDP socket's data pipe carries whole datagrams
//! (DATAPIPE.md §10).
//!
//! A UDP data pipe carries a sequence of records in each direction. A record is
//! a 32-byte header, then exactly `payload_len` payload bytes, then the next
//! record (no padding). The writer publishes each record whole, so a reader
//! never sees part of one from an honest writer.
//!
//! | offset | size | field         | meaning                                             |
//! |-------:|-----:|---------------|-----------------------------------------------------|
//! | 0      | 2    | `payload_len` | u16 LE, at most [`MAX_DATAGRAM`]                    |
//! | 2      | 27   | `addr`        | socket address (PROTOCOL.md §5.1): destination when |
//! |        |      |               | the guest writes, source when the monitor writes    |
//! | 29     | 3    | `reserved`    | zero                                                |
//!
//! `RawDatagramHeader` declares this layout; the compiler checks its size and every field's
//! offset against the table.

use std::mem::{offset_of, size_of};
use std::net::SocketAddr;

use bytemuck::{Pod, Zeroable};

use crate::addr::{decode_socket_addr, encode_socket_addr, SOCKET_ADDR_LEN};
use crate::error::WireError;

/// Bytes in a record header.
pub const DATAGRAM_HEADER_LEN: usize = 32;

/// The largest UDP payload over IPv6 without jumbograms (65 535 − 8); over IPv4 the
/// limit is [`MAX_DATAGRAM_V4`].
pub const MAX_DATAGRAM: usize = 65_527;

/// The largest UDP payload over IPv4 (65 535 − 20 − 8).
pub const MAX_DATAGRAM_V4: usize = 65_507;

const _: () = assert!(MAX_DATAGRAM <= u16::MAX as usize);

/// A record header's bytes, field by field: byte arrays, so alignment 1 and no padding.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawDatagramHeader {
    /// u16 LE.
    payload_len: [u8; 2],
    /// The socket address encoding (`encode_socket_addr`).
    addr: [u8; SOCKET_ADDR_LEN],
    reserved: [u8; 3],
}

const _: () = assert!(size_of::<RawDatagramHeader>() == DATAGRAM_HEADER_LEN);
const _: () = assert!(offset_of!(RawDatagramHeader, payload_len) == 0);
const _: () = assert!(offset_of!(RawDatagramHeader, addr) == 2);
const _: () = assert!(offset_of!(RawDatagramHeader, reserved) == 29);

/// The largest payload for a datagram to (or from) `addr`.
pub fn max_datagram_for(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => MAX_DATAGRAM_V4,
        SocketAddr::V6(_) => MAX_DATAGRAM,
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Payload bytes that follow the header.
    pub payload_len: u16,
    /// Destination (guest → monitor) or source (monitor → guest).
    pub addr: SocketAddr,
}

impl DatagramHeader {
    /// A header for `payload_len` bytes to or from `addr`.
    ///
    /// # Errors
    /// [`WireError::DatagramTooLarge`] if `payload_len` exceeds the limit for `addr`'s family.
    pub fn new(payload_len: usize, addr: SocketAddr) -> Result<Self, WireError> {
        let max = max_datagram_for(&addr);
        match u16::try_from(payload_len) {
            Ok(len) if payload_len <= max => Ok(Self {
                payload_len: len,
                addr,
            }),
            _ => Err(WireError::DatagramTooLarge {
                len: payload_len,
                max,
            }),
        }
    }

    /// Total record length: header plus payload.
    pub fn record_len(&self) -> usize {
        DATAGRAM_HEADER_LEN + usize::from(self.payload_len)
    }

    /// The header's 32 bytes.
    pub fn to_bytes(&self) -> [u8; DATAGRAM_HEADER_LEN] {
        bytemuck::must_cast(RawDatagramHeader {
            payload_len: self.payload_len.to_le_bytes(),
            addr: encode_socket_addr(&self.addr),
            reserved: [0; 3],
        })
    }

    /// Parses a header written by the peer (untrusted).
    ///
    /// # Errors
    /// [`WireError::DatagramTooLarge`] for a length past the family's limit,
    /// [`WireError::DatagramReserved`] for non-zero reserved bytes, or the socket address's
    /// own errors.
    pub fn parse(bytes: &[u8; DATAGRAM_HEADER_LEN]) -> Result<Self, WireError> {
        let raw: RawDatagramHeader = bytemuck::must_cast(*bytes);
        let addr = decode_socket_addr(raw.addr)?;
        if raw.reserved != [0; 3] {
            return Err(WireError::DatagramReserved);
        }
        Self::new(usize::from(u16::from_le_bytes(raw.payload_len)), addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        let h = DatagramHeader::new(1460, "127.0.0.1:18383".parse().unwrap()).unwrap();
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0xb4, 0x05,                                     // payload_len 1460
            0x04, 0xcf, 0x47,                               // family 4, port 18383
            0x7f, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 127.0.0.1
            0, 0, 0, 0, 0, 0, 0, 0,                         // flowinfo, scope_id
            0, 0, 0,                                        // reserved
        ];
        assert_eq!(h.to_bytes(), want);
        assert_eq!(DatagramHeader::parse(&want), Ok(h));
        assert_eq!(h.record_len(), 1492);
    }

    #[test]
    fn limits_per_family() {
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(DatagramHeader::new(MAX_DATAGRAM_V4, v4).is_ok());
        assert_eq!(
            DatagramHeader::new(MAX_DATAGRAM_V4 + 1, v4),
            Err(WireError::DatagramTooLarge {
                len: MAX_DATAGRAM_V4 + 1,
                max: MAX_DATAGRAM_V4
            })
        );
        assert!(DatagramHeader::new(MAX_DATAGRAM, v6).is_ok());
        assert!(DatagramHeader::new(MAX_DATAGRAM + 1, v6).is_err());
        assert!(DatagramHeader::new(usize::MAX, v6).is_err());
        assert!(DatagramHeader::new(0, v6).is_ok());
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let good = DatagramHeader::new(3, "[::1]:9".parse().unwrap())
            .unwrap()
            .to_bytes();
        let mut bad = good;
        bad[31] = 1;
        assert_eq!(
            DatagramHeader::parse(&bad),
            Err(WireError::DatagramReserved)
        );
        let mut bad = good;
        bad[2] = 9;
        assert_eq!(
            DatagramHeader::parse(&bad),
            Err(WireError::UnknownAddressFamily(9))
        );
        let mut bad = good;
        bad[0] = 0xff;
        bad[1] = 0xff;
        assert!(DatagramHeader::parse(&bad).is_err());
        // Every single-byte value in every position: parse never panics.
        for i in 0..DATAGRAM_HEADER_LEN {
            for v in 0..=255u8 {
                let mut b = good;
                b[i] = v;
                let _ = DatagramHeader::parse(&b);
            }
        }
    }
}
