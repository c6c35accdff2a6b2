//! Every message of the Daisy wire format (daisy/WIRE.md) and of the negotiated extensions
//! (DAISY-EXT.md): encoders into caller buffers and parsers that never panic on any input.
//!
//! Parsers take the bytes received so far and answer `Ok(None)` when a message is not complete
//! yet, `Ok(Some((message, consumed)))` when it is, and a typed [`WireError`] when the bytes can
//! never become a valid message (the caller drops that peer).

use std::net::{Ipv4Addr, SocketAddrV4};

use thiserror::Error;

/// Default TCP control port (and UDP data port).
pub const DEFAULT_PORT: u16 = 18383;
/// Default multicast group.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 238, 0, 31);
/// Largest payload of a plain packet: 1500 − 20 − 8 − 12, a multiple of 4.
pub const PLAIN_MAX_PAYLOAD: usize = 1460;
/// Largest payload an extended peer may negotiate: 65 507 (largest UDP payload over IPv4)
/// minus the 12-byte packet header, rounded down to a multiple of 4.
pub const EXT_MAX_PAYLOAD: usize = 65_492;
/// Largest packet count of one round.
pub const MAX_PACKETS_PER_BUFFER: u32 = 65_536;

/// Length of the greeting.
pub const GREETING_LEN: usize = 16;
/// Length of a buffer header.
pub const BUFFER_HEADER_LEN: usize = 16;
/// Length of a data packet header.
pub const PACKET_HEADER_LEN: usize = 12;

/// Receiver → sender: ready for this round's multicast.
pub const CLIENT_READY: u8 = 0x01;
/// Receiver → sender: retransmit these packets.
pub const CLIENT_REQ: u8 = 0x02;
/// Receiver → sender: round complete.
pub const CLIENT_DONE: u8 = 0x04;
/// Sender → receiver: this round's multicast is over.
pub const SERVER_SENT: u8 = 0x08;
/// Extended receiver → sender: capabilities (DAISY-EXT.md §3).
pub const EXT_HELLO: u8 = 0x10;
/// Sender → extended receiver: a round's payload size and the SHA-256 of the transfer up to
/// the end of the round (DAISY-EXT.md §4).
pub const EXT_ROUND: u8 = 0x11;
/// Sender → extended receiver: SHA-256 of the whole transfer (DAISY-EXT.md §6).
pub const EXT_END: u8 = 0x12;
/// Extended receiver → sender: send this round's per-packet checks (DAISY-EXT.md §5).
pub const EXT_NEED_CHECKS: u8 = 0x13;
/// Sender → extended receiver: per-packet strong checks of the round (DAISY-EXT.md §5).
pub const EXT_CHECKS: u8 = 0x14;

/// Sender → extended receiver that asked with [`CAP_SIZE`]: the transfer's length, known in
/// advance (DAISY-EXT.md §4a).
pub const EXT_SIZE: u8 = 0x15;

/// Greeting trailer magic of an extended sender.
pub const EXT_MAGIC: [u8; 3] = *b"DZX";
/// Extension version this crate speaks.
pub const EXT_VERSION: u8 = 1;
/// Greeting flag: the transfer already has all its receivers; the sender closes this connection.
pub const GREET_FLAG_FULL: u8 = 0x01;
/// EXT_HELLO capability: verifies EXT_ROUND, EXT_CHECKS and EXT_END.
pub const CAP_CHECKS: u8 = 0x01;
/// EXT_HELLO capability: takes EXT_SIZE before the first EXT_ROUND.
pub const CAP_SIZE: u8 = 0x02;
/// Length of an EXT_SIZE message, type byte included.
pub const EXT_SIZE_LEN: usize = 9;
/// Length of an EXT_HELLO message, type byte included.
pub const EXT_HELLO_LEN: usize = 8;
/// Length of an EXT_END message, type byte included.
pub const EXT_END_LEN: usize = 41;
/// Length of one strong check.
pub const CHECK_LEN: usize = 16;
/// Length of the fixed part of EXT_CHECKS (type, count).
pub const EXT_CHECKS_HEAD_LEN: usize = 5;
/// Length of an EXT_ROUND message, type byte included.
pub const EXT_ROUND_LEN: usize = 37;

/// A wire format violation: the peer is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The greeting's address family is not AF_INET (2).
    #[error("greeting: address family {0} is not AF_INET (2)")]
    BadFamily(u16),
    /// A message type byte this side does not know in this state.
    #[error("unknown message type 0x{0:02x}")]
    Unknown(u8),
    /// A count above the protocol's cap.
    #[error("{what}: count {count} exceeds the limit {max}")]
    TooMany {
        /// Which message.
        what: &'static str,
        /// The count received.
        count: u32,
        /// The cap.
        max: u32,
    },
    /// A payload size outside the allowed range.
    #[error("{what}: payload size {size} outside 1..={max}")]
    BadSize {
        /// Which message.
        what: &'static str,
        /// The size received.
        size: u32,
        /// The cap.
        max: u32,
    },
    /// An extension message whose version this side does not speak.
    #[error("extension version {0} is not supported (this side speaks {EXT_VERSION})")]
    Version(u8),
}

/// Reads a little-endian `u32` at `at`, if the bytes are there.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The extension trailer of a greeting (the plain format's 8 trailing zero bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreetingExt {
    /// Extension version of the sender.
    pub version: u8,
    /// `GREET_FLAG_*` bits.
    pub flags: u8,
}

/// The greeting: where the multicast data goes, plus (from an extended sender) its trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Multicast group and port.
    pub group: SocketAddrV4,
    /// Extension trailer; `None` from a plain sender.
    pub ext: Option<GreetingExt>,
}

impl Greeting {
    /// Encodes as the 16-byte raw `sockaddr_in` (family LE, port BE, address, 8 trailer bytes).
    pub fn encode(&self) -> [u8; GREETING_LEN] {
        let mut b = [0u8; GREETING_LEN];
        b[0..2].copy_from_slice(&2u16.to_le_bytes());
        b[2..4].copy_from_slice(&self.group.port().to_be_bytes());
        b[4..8].copy_from_slice(&self.group.ip().octets());
        if let Some(e) = self.ext {
            b[8..11].copy_from_slice(&EXT_MAGIC);
            b[11] = e.version;
            b[12] = e.flags;
        }
        b
    }

    /// Parses a greeting. A trailer without the magic (a plain sender's zeros, or anything
    /// else) means a plain sender.
    ///
    /// # Errors
    /// [`WireError::BadFamily`] when the family is not 2.
    pub fn parse(b: &[u8]) -> Result<Option<(Greeting, usize)>, WireError> {
        let Some(b) = b.get(..GREETING_LEN) else {
            return Ok(None);
        };
        let family = u16::from_le_bytes([b[0], b[1]]);
        if family != 2 {
            return Err(WireError::BadFamily(family));
        }
        let port = u16::from_be_bytes([b[2], b[3]]);
        let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
        let ext = (b[8..11] == EXT_MAGIC).then_some(GreetingExt {
            version: b[11],
            flags: b[12],
        });
        Ok(Some((
            Greeting {
                group: SocketAddrV4::new(ip, port),
                ext,
            },
            GREETING_LEN,
        )))
    }
}

/// What a round carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferHeader {
    /// Round number, from 1.
    pub buffer_id: u32,
    /// Total payload bytes of the round.
    pub buffer_size: u32,
    /// Sequence number of the round's first packet.
    pub packet_id_base: u32,
    /// Packets in the round; 0 is end of input.
    pub pkt_count: u32,
}

impl BufferHeader {
    /// Encodes as 4 little-endian `u32`.
    pub fn encode(&self) -> [u8; BUFFER_HEADER_LEN] {
        let mut b = [0u8; BUFFER_HEADER_LEN];
        b[0..4].copy_from_slice(&self.buffer_id.to_le_bytes());
        b[4..8].copy_from_slice(&self.buffer_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.packet_id_base.to_le_bytes());
        b[12..16].copy_from_slice(&self.pkt_count.to_le_bytes());
        b
    }

    /// Parses a buffer header.
    ///
    /// # Errors
    /// [`WireError::TooMany`] when `pkt_count` exceeds 65 536.
    pub fn parse(b: &[u8]) -> Result<Option<(BufferHeader, usize)>, WireError> {
        let (Some(buffer_id), Some(buffer_size), Some(packet_id_base), Some(pkt_count)) =
            (le32(b, 0), le32(b, 4), le32(b, 8), le32(b, 12))
        else {
            return Ok(None);
        };
        if pkt_count > MAX_PACKETS_PER_BUFFER {
            return Err(WireError::TooMany {
                what: "buffer header",
                count: pkt_count,
                max: MAX_PACKETS_PER_BUFFER,
            });
        }
        Ok(Some((
            BufferHeader {
                buffer_id,
                buffer_size,
                packet_id_base,
                pkt_count,
            },
            BUFFER_HEADER_LEN,
        )))
    }
}

/// The deployed tool's additive check: the wrapping sum of the payload read as little-endian
/// `u32` words, the last partial word padded with zeros.
pub fn additive_sum(payload: &[u8]) -> u32 {
    let mut chunks = payload.chunks_exact(4);
    let mut sum = 0u32;
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        sum = sum.wrapping_add(u32::from_le_bytes(w));
    }
    sum
}

/// A data packet's 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Sequence number, unique over the transfer.
    pub seq: u32,
    /// [`additive_sum`] of the payload.
    pub crc: u32,
    /// Payload length; 0 answers a repair request for a packet the sender does not hold.
    pub data_size: u32,
}

impl PacketHeader {
    /// The header of `payload` as packet `seq`.
    pub fn for_payload(seq: u32, payload: &[u8]) -> PacketHeader {
        PacketHeader {
            seq,
            crc: additive_sum(payload),
            // A payload never exceeds EXT_MAX_PAYLOAD (checked where it is built).
            data_size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        }
    }

    /// Encodes as 3 little-endian `u32`.
    pub fn encode(&self) -> [u8; PACKET_HEADER_LEN] {
        let mut b = [0u8; PACKET_HEADER_LEN];
        b[0..4].copy_from_slice(&self.seq.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..12].copy_from_slice(&self.data_size.to_le_bytes());
        b
    }

    /// Parses a header from the front of `b` (no length checks against the payload).
    pub fn parse(b: &[u8]) -> Option<PacketHeader> {
        Some(PacketHeader {
            seq: le32(b, 0)?,
            crc: le32(b, 4)?,
            data_size: le32(b, 8)?,
        })
    }
}

/// Why a data datagram was refused (the receiver counts these as `rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DatagramError {
    /// Shorter than a packet header.
    #[error("datagram of {0} bytes is shorter than the 12-byte header")]
    Short(usize),
    /// `data_size` does not match the bytes that follow the header.
    #[error("datagram data_size {declared} but {actual} payload bytes")]
    Length {
        /// `data_size` field.
        declared: u32,
        /// Bytes present.
        actual: usize,
    },
    /// `data_size` is 0.
    #[error("datagram with data_size 0")]
    Empty,
    /// The additive sum does not match.
    #[error("datagram seq {seq}: additive sum mismatch")]
    Sum {
        /// Sequence number.
        seq: u32,
    },
}

/// Parses one data datagram: a header and exactly `data_size` payload bytes with a matching
/// additive sum.
///
/// # Errors
/// A [`DatagramError`] naming the defect.
pub fn parse_datagram(b: &[u8]) -> Result<(PacketHeader, &[u8]), DatagramError> {
    let h = PacketHeader::parse(b).ok_or(DatagramError::Short(b.len()))?;
    let payload = b.get(PACKET_HEADER_LEN..).unwrap_or(&[]);
    if usize::try_from(h.data_size).ok() != Some(payload.len()) {
        return Err(DatagramError::Length {
            declared: h.data_size,
            actual: payload.len(),
        });
    }
    if h.data_size == 0 {
        return Err(DatagramError::Empty);
    }
    if additive_sum(payload) != h.crc {
        return Err(DatagramError::Sum { seq: h.seq });
    }
    Ok((h, payload))
}

/// EXT_HELLO: an extended receiver's capabilities, sent once before its first CLIENT_READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtHello {
    /// Extension version.
    pub version: u8,
    /// `CAP_*` bits.
    pub caps: u8,
    /// Largest packet payload the receiver accepts.
    pub max_payload: u32,
}

impl ExtHello {
    /// Encodes: type, version, caps, reserved 0, max_payload (u32 LE).
    pub fn encode(&self) -> [u8; EXT_HELLO_LEN] {
        let mut b = [0u8; EXT_HELLO_LEN];
        b[0] = EXT_HELLO;
        b[1] = self.version;
        b[2] = self.caps;
        b[4..8].copy_from_slice(&self.max_payload.to_le_bytes());
        b
    }
}

/// A message from a receiver to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverMsg {
    /// CLIENT_READY.
    Ready,
    /// CLIENT_REQ with its sequence numbers.
    Req(Vec<u32>),
    /// CLIENT_DONE.
    Done,
    /// EXT_HELLO.
    Hello(ExtHello),
    /// EXT_NEED_CHECKS.
    NeedChecks,
}

impl ReceiverMsg {
    /// Parses one receiver message from the front of `b`.
    ///
    /// # Errors
    /// [`WireError::Unknown`] for an unknown type byte, [`WireError::TooMany`] for a request of
    /// more than 65 536 sequence numbers (checked before anything is allocated),
    /// [`WireError::BadSize`] for an EXT_HELLO with a zero `max_payload`.
    pub fn parse(b: &[u8]) -> Result<Option<(ReceiverMsg, usize)>, WireError> {
        let Some(&t) = b.first() else {
            return Ok(None);
        };
        match t {
            CLIENT_READY => Ok(Some((ReceiverMsg::Ready, 1))),
            CLIENT_DONE => Ok(Some((ReceiverMsg::Done, 1))),
            EXT_NEED_CHECKS => Ok(Some((ReceiverMsg::NeedChecks, 1))),
            CLIENT_REQ => {
                let Some(n) = le32(b, 1) else {
                    return Ok(None);
                };
                if n > MAX_PACKETS_PER_BUFFER {
                    return Err(WireError::TooMany {
                        what: "CLIENT_REQ",
                        count: n,
                        max: MAX_PACKETS_PER_BUFFER,
                    });
                }
                // n <= 65 536, so this cannot overflow.
                let len = 5 + 4 * n as usize;
                let Some(body) = b.get(5..len) else {
                    return Ok(None);
                };
                let seqs = body
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok(Some((ReceiverMsg::Req(seqs), len)))
            }
            EXT_HELLO => {
                let Some(h) = b.get(..EXT_HELLO_LEN) else {
                    return Ok(None);
                };
                let max_payload = le32(h, 4).unwrap_or(0);
                if max_payload == 0 {
                    return Err(WireError::BadSize {
                        what: "EXT_HELLO",
                        size: 0,
                        max: EXT_MAX_PAYLOAD as u32,
                    });
                }
                Ok(Some((
                    ReceiverMsg::Hello(ExtHello {
                        version: h[1],
                        caps: h[2],
                        max_payload,
                    }),
                    EXT_HELLO_LEN,
                )))
            }
            other => Err(WireError::Unknown(other)),
        }
    }
}

/// Encodes CLIENT_REQ naming `seqs` into `out` (appended).
pub fn encode_req(seqs: &[u32], out: &mut Vec<u8>) {
    out.reserve(5 + 4 * seqs.len());
    out.push(CLIENT_REQ);
    out.extend_from_slice(&u32::try_from(seqs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for s in seqs {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Encodes one repair answer (header and payload) into `out` (appended).
pub fn encode_packet(seq: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&PacketHeader::for_payload(seq, payload).encode());
    out.extend_from_slice(payload);
}

/// The strong check of one packet: SHA-256 of `seq (u32 LE) || payload`, first 16 bytes.
/// (SHA-256 rather than BLAKE3: on packets of about 1.5 KB, SHA-NI beats BLAKE3, whose SIMD
/// needs many 1 KiB chunks at once.)
pub fn strong_check(seq: u32, payload: &[u8]) -> [u8; CHECK_LEN] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(seq.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&h.finalize()[..CHECK_LEN]);
    out
}

/// Encodes EXT_ROUND: type, payload size (u32 LE), SHA-256 of the transfer up to the end of
/// the round (32 bytes).
pub fn encode_round(payload_size: u32, digest: &[u8; 32]) -> [u8; EXT_ROUND_LEN] {
    let mut b = [0u8; EXT_ROUND_LEN];
    b[0] = EXT_ROUND;
    b[1..5].copy_from_slice(&payload_size.to_le_bytes());
    b[5..37].copy_from_slice(digest);
    b
}

/// Encodes EXT_CHECKS: type, count (u32 LE), `count` × 16-byte checks.
pub fn encode_checks(checks: &[[u8; CHECK_LEN]], out: &mut Vec<u8>) {
    out.reserve(EXT_CHECKS_HEAD_LEN + CHECK_LEN * checks.len());
    out.push(EXT_CHECKS);
    out.extend_from_slice(
        &u32::try_from(checks.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for c in checks {
        out.extend_from_slice(c);
    }
}

/// Encodes EXT_END: type, SHA-256 of the transfer (32 bytes), total bytes (u64 LE).
pub fn encode_end(sha256: &[u8; 32], total: u64) -> [u8; EXT_END_LEN] {
    let mut b = [0u8; EXT_END_LEN];
    b[0] = EXT_END;
    b[1..33].copy_from_slice(sha256);
    b[33..41].copy_from_slice(&total.to_le_bytes());
    b
}

/// Encodes EXT_SIZE: type, the transfer's length in bytes (u64 LE).
pub fn encode_size(total: u64) -> [u8; EXT_SIZE_LEN] {
    let mut b = [0u8; EXT_SIZE_LEN];
    b[0] = EXT_SIZE;
    b[1..9].copy_from_slice(&total.to_le_bytes());
    b
}

/// A typed message from the sender (after the greeting; the buffer header and repair packets
/// are untyped and parsed by state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderMsg {
    /// SERVER_SENT.
    Sent,
    /// EXT_ROUND.
    Round {
        /// Largest payload of the round.
        payload_size: u32,
        /// SHA-256 of the transfer up to the end of the round.
        digest: [u8; 32],
    },
    /// EXT_CHECKS: one check per packet of the round, in sequence order.
    Checks(Vec<[u8; CHECK_LEN]>),
    /// EXT_END.
    End {
        /// SHA-256 of the whole transfer.
        sha256: [u8; 32],
        /// Bytes in the whole transfer.
        total: u64,
    },
    /// EXT_SIZE: the transfer's length, announced before it starts.
    Size {
        /// Bytes the sender expects to send.
        total: u64,
    },
}

impl SenderMsg {
    /// Parses one typed sender message from the front of `b`.
    ///
    /// # Errors
    /// [`WireError::Unknown`] for an unknown type, [`WireError::TooMany`] / [`WireError::BadSize`]
    /// for EXT_CHECKS fields out of range (checked before allocating).
    pub fn parse(b: &[u8]) -> Result<Option<(SenderMsg, usize)>, WireError> {
        let Some(&t) = b.first() else {
            return Ok(None);
        };
        match t {
            SERVER_SENT => Ok(Some((SenderMsg::Sent, 1))),
            EXT_ROUND => {
                let Some(m) = b.get(..EXT_ROUND_LEN) else {
                    return Ok(None);
                };
                let size = le32(m, 1).unwrap_or(0);
                if size == 0 || size as usize > EXT_MAX_PAYLOAD {
                    return Err(WireError::BadSize {
                        what: "EXT_ROUND",
                        size,
                        max: EXT_MAX_PAYLOAD as u32,
                    });
                }
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&m[5..37]);
                Ok(Some((
                    SenderMsg::Round {
                        payload_size: size,
                        digest,
                    },
                    EXT_ROUND_LEN,
                )))
            }
            EXT_CHECKS => {
                let Some(n) = le32(b, 1) else {
                    return Ok(None);
                };
                if n > MAX_PACKETS_PER_BUFFER {
                    return Err(WireError::TooMany {
                        what: "EXT_CHECKS",
                        count: n,
                        max: MAX_PACKETS_PER_BUFFER,
                    });
                }
                let len = EXT_CHECKS_HEAD_LEN + CHECK_LEN * n as usize;
                let Some(body) = b.get(EXT_CHECKS_HEAD_LEN..len) else {
                    return Ok(None);
                };
                let checks = body
                    .chunks_exact(CHECK_LEN)
                    .map(|c| {
                        let mut a = [0u8; CHECK_LEN];
                        a.copy_from_slice(c);
                        a
                    })
                    .collect();
                Ok(Some((SenderMsg::Checks(checks), len)))
            }
            EXT_END => {
                let Some(m) = b.get(..EXT_END_LEN) else {
                    return Ok(None);
                };
                let mut sha256 = [0u8; 32];
                sha256.copy_from_slice(&m[1..33]);
                let mut t = [0u8; 8];
                t.copy_from_slice(&m[33..41]);
                Ok(Some((
                    SenderMsg::End {
                        sha256,
                        total: u64::from_le_bytes(t),
                    },
                    EXT_END_LEN,
                )))
            }
            EXT_SIZE => {
                let Some(m) = b.get(..EXT_SIZE_LEN) else {
                    return Ok(None);
                };
                let mut t = [0u8; 8];
                t.copy_from_slice(&m[1..9]);
                Ok(Some((
                    SenderMsg::Size {
                        total: u64::from_le_bytes(t),
                    },
                    EXT_SIZE_LEN,
                )))
            }
            other => Err(WireError::Unknown(other)),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[usize::from(b >> 4)] as char);
        s.push(D[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_golden_plain_and_ext() {
        let g = Greeting {
            group: SocketAddrV4::new(DEFAULT_GROUP, DEFAULT_PORT),
            ext: None,
        };
        // family 2 LE, port 18383 = 0x47cf BE, 224.238.0.31, 8 zeros.
        let want = [
            0x02, 0x00, 0x47, 0xcf, 224, 238, 0, 31, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(g.encode(), want);
        assert_eq!(Greeting::parse(&want).unwrap(), Some((g, 16)));
        let e = Greeting {
            ext: Some(GreetingExt {
                version: 1,
                flags: GREET_FLAG_FULL,
            }),
            ..g
        };
        let want_e = [
            0x02, 0x00, 0x47, 0xcf, 224, 238, 0, 31, b'D', b'Z', b'X', 1, 1, 0, 0, 0,
        ];
        assert_eq!(e.encode(), want_e);
        assert_eq!(Greeting::parse(&want_e).unwrap(), Some((e, 16)));
        assert_eq!(Greeting::parse(&want[..15]).unwrap(), None);
        let mut bad = want;
        bad[0] = 10;
        assert_eq!(Greeting::parse(&bad), Err(WireError::BadFamily(10)));
    }

    #[test]
    fn buffer_header_golden() {
        let h = BufferHeader {
            buffer_id: 1,
            buffer_size: 0x0102_0304,
            packet_id_base: 1024,
            pkt_count: 3,
        };
        let want = [1, 0, 0, 0, 4, 3, 2, 1, 0, 4, 0, 0, 3, 0, 0, 0];
        assert_eq!(h.encode(), want);
        assert_eq!(BufferHeader::parse(&want).unwrap(), Some((h, 16)));
        let mut big = want;
        big[12..16].copy_from_slice(&65_537u32.to_le_bytes());
        assert!(matches!(
            BufferHeader::parse(&big),
            Err(WireError::TooMany { count: 65_537, .. })
        ));
    }

    #[test]
    fn signals_and_req_golden() {
        assert_eq!(
            ReceiverMsg::parse(&[1]).unwrap(),
            Some((ReceiverMsg::Ready, 1))
        );
        assert_eq!(
            ReceiverMsg::parse(&[4, 9]).unwrap(),
            Some((ReceiverMsg::Done, 1))
        );
        let mut v = Vec::new();
        encode_req(&[5, 0x0102_0304], &mut v);
        assert_eq!(v, [2, 2, 0, 0, 0, 5, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(
            ReceiverMsg::parse(&v).unwrap(),
            Some((ReceiverMsg::Req(vec![5, 0x0102_0304]), 13))
        );
        assert_eq!(ReceiverMsg::parse(&v[..12]).unwrap(), None);
        assert_eq!(ReceiverMsg::parse(&[0x77]), Err(WireError::Unknown(0x77)));
        assert!(matches!(
            ReceiverMsg::parse(&[2, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooMany { .. })
        ));
        assert_eq!(
            SenderMsg::parse(&[SERVER_SENT]).unwrap(),
            Some((SenderMsg::Sent, 1))
        );
    }

    #[test]
    fn packet_and_sum_golden() {
        // words 0x04030201 + 0x00000605 (padded).
        let p = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(additive_sum(&p), 0x0403_0201 + 0x0000_0605);
        assert_eq!(additive_sum(&[0xff; 8]), 0xffff_fffe);
        let mut v = Vec::new();
        encode_packet(7, &p, &mut v);
        assert_eq!(
            v,
            [7, 0, 0, 0, 0x06, 0x08, 0x03, 0x04, 6, 0, 0, 0, 1, 2, 3, 4, 5, 6]
        );
        let (h, pl) = parse_datagram(&v).unwrap();
        assert_eq!((h.seq, h.data_size, pl), (7, 6, &p[..]));
        assert_eq!(parse_datagram(&v[..5]), Err(DatagramError::Short(5)));
        assert!(matches!(
            parse_datagram(&v[..17]),
            Err(DatagramError::Length { .. })
        ));
        let mut bad = v.clone();
        bad[12] ^= 1;
        assert_eq!(parse_datagram(&bad), Err(DatagramError::Sum { seq: 7 }));
        let empty = PacketHeader {
            seq: 1,
            crc: 0,
            data_size: 0,
        }
        .encode();
        assert_eq!(parse_datagram(&empty), Err(DatagramError::Empty));
    }

    #[test]
    fn ext_messages_golden() {
        let h = ExtHello {
            version: 1,
            caps: CAP_CHECKS,
            max_payload: 65_492,
        };
        let b = h.encode();
        assert_eq!(b, [0x10, 1, 1, 0, 0xd4, 0xff, 0, 0]);
        assert_eq!(
            ReceiverMsg::parse(&b).unwrap(),
            Some((ReceiverMsg::Hello(h), 8))
        );
        let mut v = Vec::new();
        encode_checks(&[[0xaa; 16]], &mut v);
        assert_eq!(&v[..5], &[0x14, 1, 0, 0, 0]);
        assert_eq!(v.len(), 21);
        assert_eq!(
            SenderMsg::parse(&v).unwrap(),
            Some((SenderMsg::Checks(vec![[0xaa; 16]]), 21))
        );
        assert_eq!(SenderMsg::parse(&v[..20]).unwrap(), None);
        let r = encode_round(1460, &[9; 32]);
        assert_eq!(&r[..5], &[0x11, 0xb4, 0x05, 0, 0]);
        assert_eq!(&r[5..], &[9; 32]);
        assert_eq!(
            SenderMsg::parse(&r).unwrap(),
            Some((
                SenderMsg::Round {
                    payload_size: 1460,
                    digest: [9; 32]
                },
                37
            ))
        );
        assert!(matches!(
            SenderMsg::parse(&encode_round(0, &[0; 32])),
            Err(WireError::BadSize { .. })
        ));
        assert_eq!(
            ReceiverMsg::parse(&[0x13]).unwrap(),
            Some((ReceiverMsg::NeedChecks, 1))
        );
        let e = encode_end(&[7; 32], 0x0102);
        assert_eq!(e[0], 0x12);
        assert_eq!(&e[33..], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            SenderMsg::parse(&e).unwrap(),
            Some((
                SenderMsg::End {
                    sha256: [7; 32],
                    total: 0x0102
                },
                41
            ))
        );
        let z = encode_size(0x0102_0304_0506_0708);
        assert_eq!(z, [0x15, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(
            SenderMsg::parse(&z).unwrap(),
            Some((
                SenderMsg::Size {
                    total: 0x0102_0304_0506_0708
                },
                9
            ))
        );
        assert_eq!(SenderMsg::parse(&z[..8]).unwrap(), None);
        // The strong check binds the sequence number.
        assert_ne!(strong_check(1, b"x"), strong_check(2, b"x"));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Greeting::parse(&b);
            let _ = BufferHeader::parse(&b);
            let _ = ReceiverMsg::parse(&b);
            let _ = SenderMsg::parse(&b);
            let _ = parse_datagram(&b);
        }

        #[test]
        fn req_round_trip(seqs in proptest::collection::vec(any::<u32>(), 0..200)) {
            let mut v = Vec::new();
            encode_req(&seqs, &mut v);
            prop_assert_eq!(ReceiverMsg::parse(&v).unwrap(), Some((ReceiverMsg::Req(seqs), v.len())));
        }

        #[test]
        fn header_round_trip(a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), n in 0u32..=65_536) {
            let h = BufferHeader { buffer_id: a, buffer_size: b, packet_id_base: c, pkt_count: n };
            prop_assert_eq!(BufferHeader::parse(&h.encode()).unwrap(), Some((h, 16)));
        }

        #[test]
        fn packet_round_trip(seq in any::<u32>(), p in proptest::collection::vec(any::<u8>(), 1..2000)) {
            let mut v = Vec::new();
            encode_packet(seq, &p, &mut v);
            let (h, pl) = parse_datagram(&v).unwrap();
            prop_assert_eq!(h.seq, seq);
            prop_assert_eq!(pl, &p[..]);
        }

        #[test]
        fn greeting_round_trip(ip in any::<u32>(), port in any::<u16>(), ext in proptest::option::of((any::<u8>(), any::<u8>()))) {
            let g = Greeting {
                group: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                ext: ext.map(|(version, flags)| GreetingExt { version, flags }),
            };
            prop_assert_eq!(Greeting::parse(&g.encode()).unwrap(), Some((g, 16)));
        }
    }
}
