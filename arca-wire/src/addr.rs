//! The fixed 27-byte socket address encoding, for IPv4 and IPv6.
//!
//! | offset | size | field      | type     | meaning                                                        |
//! |-------:|-----:|------------|----------|----------------------------------------------------------------|
//! | 0      | 1    | `family`   | u8       | 4 = IPv4, 6 = IPv6; anything else is a decode error            |
//! | 1      | 2    | `port`     | u16 LE   | port number (little-endian, like every integer on this wire)   |
//! | 3      | 16   | `addr`     | [u8; 16] | address octets in network order; IPv4 uses bytes 3..7          |
//! | 19     | 4    | `flowinfo` | u32 LE   | IPv6 flow info as `SocketAddrV6::flowinfo` returns it          |
//! | 23     | 4    | `scope_id` | u32 LE   | IPv6 scope id (interface index)                                |
//!
//! Every address has exactly one encoding: for IPv4 the 12 unused address bytes, `flowinfo` and
//! `scope_id` must be zero, and the decoder rejects anything else
//! ([`WireError::Ipv4NonZero`]). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stays IPv6.
//!
//! `RawSocketAddr` declares this layout; the compiler checks its size and every field's offset
//! against the table.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytemuck::{Pod, Zeroable};

use crate::error::WireError;

/// Encoded length of a socket address in bytes.
pub const SOCKET_ADDR_LEN: usize = 27;

/// `family` byte of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// `family` byte of an IPv6 address.
pub const FAMILY_V6: u8 = 6;

/// An encoded address's bytes, field by field: a byte and byte arrays, so alignment 1 and no
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawSocketAddr {
    family: u8,
    /// u16 LE.
    port: [u8; 2],
    /// Network order.
    addr: [u8; 16],
    /// u32 LE.
    flowinfo: [u8; 4],
    /// u32 LE.
    scope_id: [u8; 4],
}

const _: () = assert!(size_of::<RawSocketAddr>() == SOCKET_ADDR_LEN);
const _: () = assert!(offset_of!(RawSocketAddr, family) == 0);
const _: () = assert!(offset_of!(RawSocketAddr, port) == 1);
const _: () = assert!(offset_of!(RawSocketAddr, addr) == 3);
const _: () = assert!(offset_of!(RawSocketAddr, flowinfo) == 19);
const _: () = assert!(offset_of!(RawSocketAddr, scope_id) == 23);

/// Encodes a socket address.
///
/// # Examples
/// ```
/// use std::net::SocketAddr;
/// let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
/// let bytes = arca_wire::encode_socket_addr(&addr);
/// assert_eq!(bytes[..7], [4, 0x90, 0x1f, 127, 0, 0, 1]);
/// assert_eq!(arca_wire::decode_socket_addr(bytes), Ok(addr));
/// ```
pub fn encode_socket_addr(addr: &SocketAddr) -> [u8; SOCKET_ADDR_LEN] {
    let mut ip = [0u8; 16];
    let (family, flowinfo, scope_id) = match addr {
        SocketAddr::V4(v4) => {
            let (octets, _) = ip.split_at_mut(4);
            octets.copy_from_slice(&v4.ip().octets());
            (FAMILY_V4, 0, 0)
        }
        SocketAddr::V6(v6) => {
            ip = v6.ip().octets();
            (FAMILY_V6, v6.flowinfo(), v6.scope_id())
        }
    };
    bytemuck::must_cast(RawSocketAddr {
        family,
        port: addr.port().to_le_bytes(),
        addr: ip,
        flowinfo: flowinfo.to_le_bytes(),
        scope_id: scope_id.to_le_bytes(),
    })
}

/// Decodes a socket address.
///
/// # Errors
/// - [`WireError::UnknownAddressFamily`] if `family` is neither 4 nor 6;
/// - [`WireError::Ipv4NonZero`] if an IPv4 address has nonzero unused bytes, `flowinfo` or
///   `scope_id`.
pub fn decode_socket_addr(bytes: [u8; SOCKET_ADDR_LEN]) -> Result<SocketAddr, WireError> {
    let raw: RawSocketAddr = bytemuck::must_cast(bytes);
    let ip = raw.addr;
    let port = u16::from_le_bytes(raw.port);
    let flowinfo = u32::from_le_bytes(raw.flowinfo);
    let scope_id = u32::from_le_bytes(raw.scope_id);
    match raw.family {
        FAMILY_V4 => {
            let [a, b, c, d, unused @ ..] = ip;
            if unused != [0u8; 12] {
                return Err(WireError::Ipv4NonZero {
                    field: "address bytes 4..16",
                });
            }
            if flowinfo != 0 {
                return Err(WireError::Ipv4NonZero { field: "flowinfo" });
            }
            if scope_id != 0 {
                return Err(WireError::Ipv4NonZero { field: "scope_id" });
            }
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(a, b, c, d),
                port,
            )))
        }
        FAMILY_V6 => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope_id,
        ))),
        other => Err(WireError::UnknownAddressFamily(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_golden() {
        let addr: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let bytes = [
            4, // family
            0xbb, 0x01, // port 443 LE
            10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // addr
            0, 0, 0, 0, // flowinfo
            0, 0, 0, 0, // scope_id
        ];
        assert_eq!(encode_socket_addr(&addr), bytes);
        assert_eq!(decode_socket_addr(bytes), Ok(addr));
    }

    #[test]
    fn ipv6_golden() {
        let addr = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1:2".parse().unwrap(),
            0x1234,
            0x000a_bcde,
            3,
        ));
        let bytes = [
            6, // family
            0x34, 0x12, // port
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, // addr
            0xde, 0xbc, 0x0a, 0, // flowinfo
            3, 0, 0, 0, // scope_id
        ];
        assert_eq!(encode_socket_addr(&addr), bytes);
        assert_eq!(decode_socket_addr(bytes), Ok(addr));
    }

    #[test]
    fn mapped_v6_stays_v6() {
        let addr: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        let bytes = encode_socket_addr(&addr);
        assert_eq!(bytes[0], FAMILY_V6);
        assert_eq!(decode_socket_addr(bytes), Ok(addr));
    }

    #[test]
    fn unknown_family_rejected() {
        for family in [0u8, 2, 5, 10, 0xff] {
            let mut bytes = [0u8; SOCKET_ADDR_LEN];
            bytes[0] = family;
            assert_eq!(
                decode_socket_addr(bytes),
                Err(WireError::UnknownAddressFamily(family))
            );
        }
    }

    #[test]
    fn ipv4_non_canonical_rejected() {
        let good = encode_socket_addr(&"1.2.3.4:5".parse().unwrap());
        for (index, field) in [
            (7, "address bytes 4..16"),
            (18, "address bytes 4..16"),
            (19, "flowinfo"),
            (22, "flowinfo"),
            (23, "scope_id"),
            (26, "scope_id"),
        ] {
            let mut bad = good;
            bad[index] = 1;
            assert_eq!(
                decode_socket_addr(bad),
                Err(WireError::Ipv4NonZero { field }),
                "byte {index}"
            );
        }
    }
}
