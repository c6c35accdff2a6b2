//! The stack's packet entry point: one IP packet from the guest, classified without trusting
//! a byte of it. Malformed, truncated, fragmented and oversized packets are dropped and
//! counted by reason; nothing here panics or allocates.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket, UdpRepr,
};

/// The largest packet the stack accepts (the TUN device's MTU).
pub const MTU: usize = 65_520;

/// A flow's two ends as the guest sees them: its own address and the destination it dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The guest program's address and port.
    pub guest: SocketAddr,
    /// The destination the program addressed.
    pub dst: SocketAddr,
}

/// What to do with one packet from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// A TCP SYN (no ACK) opening `key`; `seq` is its sequence number.
    Syn {
        /// The connection.
        key: FlowKey,
        /// The SYN's sequence number.
        seq: u32,
    },
    /// Any other TCP segment: the user-space TCP stack takes it.
    Tcp,
    /// A UDP datagram with a correct checksum.
    Udp {
        /// Its ends.
        key: FlowKey,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Dropped, with why.
    Drop(DropReason),
}

/// Why a packet was dropped; [`DropCounts`] counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Empty, or an IP version other than 4 and 6.
    NotIp,
    /// An IP header that does not parse or whose checksum or lengths are wrong.
    BadIp,
    /// Longer than [`MTU`].
    Oversized,
    /// A fragment (the stack does not reassemble).
    Fragment,
    /// A TCP or UDP header that does not parse or whose checksum is wrong.
    BadL4,
    /// A protocol the stack does not carry (ICMP, raw IP, extension headers).
    Unsupported,
}

/// Drops counted by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCounts {
    /// [`DropReason::NotIp`].
    pub not_ip: u64,
    /// [`DropReason::BadIp`].
    pub bad_ip: u64,
    /// [`DropReason::Oversized`].
    pub oversized: u64,
    /// [`DropReason::Fragment`].
    pub fragment: u64,
    /// [`DropReason::BadL4`].
    pub bad_l4: u64,
    /// [`DropReason::Unsupported`].
    pub unsupported: u64,
}

impl DropCounts {
    /// Counts one drop.
    pub fn count(&mut self, why: DropReason) {
        let c = match why {
            DropReason::NotIp => &mut self.not_ip,
            DropReason::BadIp => &mut self.bad_ip,
            DropReason::Oversized => &mut self.oversized,
            DropReason::Fragment => &mut self.fragment,
            DropReason::BadL4 => &mut self.bad_l4,
            DropReason::Unsupported => &mut self.unsupported,
        };
        *c = c.saturating_add(1);
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        [
            self.not_ip,
            self.bad_ip,
            self.oversized,
            self.fragment,
            self.bad_l4,
            self.unsupported,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// Classifies one packet read from the TUN device.
pub fn classify(packet: &[u8]) -> Verdict<'_> {
    if packet.len() > MTU {
        return Verdict::Drop(DropReason::Oversized);
    }
    let caps = ChecksumCapabilities::default();
    let (src, dst, proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(p) = Ipv4Packet::new_checked(packet) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            if p.more_frags() || p.frag_offset() != 0 {
                return Verdict::Drop(DropReason::Fragment);
            }
            let Ok(repr) = Ipv4Repr::parse(&p, &caps) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            let hl = usize::from(p.header_len());
            let total = usize::from(p.total_len());
            let Some(l4) = packet.get(hl..total) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            (
                IpAddr::V4(repr.src_addr),
                IpAddr::V4(repr.dst_addr),
                repr.next_header,
                l4,
            )
        }
        Some(6) => {
            let Ok(p) = Ipv6Packet::new_checked(packet) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            let Ok(repr) = Ipv6Repr::parse(&p) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            let Some(l4) = packet.get(40..40 + usize::from(p.payload_len())) else {
                return Verdict::Drop(DropReason::BadIp);
            };
            (
                IpAddr::V6(repr.src_addr),
                IpAddr::V6(repr.dst_addr),
                repr.next_header,
                l4,
            )
        }
        _ => return Verdict::Drop(DropReason::NotIp),
    };
    let (s, d) = (src.into(), dst.into());
    match proto {
        IpProtocol::Tcp => {
            let Ok(t) = TcpPacket::new_checked(l4) else {
                return Verdict::Drop(DropReason::BadL4);
            };
            if !t.verify_checksum(&s, &d) {
                return Verdict::Drop(DropReason::BadL4);
            }
            if t.syn() && !t.ack() && !t.rst() && !t.fin() {
                Verdict::Syn {
                    key: FlowKey {
                        guest: SocketAddr::new(src, t.src_port()),
                        dst: SocketAddr::new(dst, t.dst_port()),
                    },
                    seq: t.seq_number().0 as u32,
                }
            } else {
                Verdict::Tcp
            }
        }
        IpProtocol::Udp => {
            let Ok(u) = UdpPacket::new_checked(l4) else {
                return Verdict::Drop(DropReason::BadL4);
            };
            if UdpRepr::parse(&u, &s, &d, &caps).is_err() {
                return Verdict::Drop(DropReason::BadL4);
            }
            let payload = l4.get(8..usize::from(u.len())).unwrap_or(&[]);
            Verdict::Udp {
                key: FlowKey {
                    guest: SocketAddr::new(src, u.src_port()),
                    dst: SocketAddr::new(dst, u.dst_port()),
                },
                payload,
            }
        }
        _ => Verdict::Drop(DropReason::Unsupported),
    }
}

/// Writes into `out` the IP packet carrying the UDP datagram `payload` from `from` to `to`
/// (same family), with correct checksums; returns its length, or `None` when the families
/// differ or it does not fit `out`.
pub fn udp_packet(
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let udp = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    let caps = ChecksumCapabilities::default();
    let l4_len = udp.header_len() + payload.len();
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let total = ip.buffer_len() + l4_len;
            let buf = out.get_mut(..total)?;
            if total > usize::from(u16::MAX) {
                return None;
            }
            let mut p = Ipv4Packet::new_unchecked(&mut *buf);
            ip.emit(&mut p, &caps);
            let mut u = UdpPacket::new_unchecked(p.payload_mut());
            udp.emit(
                &mut u,
                &s.into(),
                &d.into(),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
            Some(total)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let total = ip.buffer_len() + l4_len;
            if l4_len > usize::from(u16::MAX) {
                return None;
            }
            let buf = out.get_mut(..total)?;
            let mut p = Ipv6Packet::new_unchecked(&mut *buf);
            ip.emit(&mut p);
            let mut u = UdpPacket::new_unchecked(p.payload_mut());
            udp.emit(
                &mut u,
                &s.into(),
                &d.into(),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
            Some(total)
        }
        _ => None,
    }
}

/// Writes into `out` the RST|ACK that refuses the SYN `seq` of `key` (sent from `key.dst` to
/// `key.guest`); returns its length, or `None` when the families differ.
pub fn rst_for_syn(key: FlowKey, seq: u32, out: &mut [u8]) -> Option<usize> {
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    let tcp = TcpRepr {
        src_port: key.dst.port(),
        dst_port: key.guest.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(seq.wrapping_add(1) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let caps = ChecksumCapabilities::default();
    let l4_len = tcp.header_len();
    match (key.dst.ip(), key.guest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let total = ip.buffer_len() + l4_len;
            let buf = out.get_mut(..total)?;
            let mut p = Ipv4Packet::new_unchecked(&mut *buf);
            ip.emit(&mut p, &caps);
            let mut t = TcpPacket::new_unchecked(p.payload_mut());
            tcp.emit(&mut t, &s.into(), &d.into(), &caps);
            Some(total)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let total = ip.buffer_len() + l4_len;
            let buf = out.get_mut(..total)?;
            let mut p = Ipv6Packet::new_unchecked(&mut *buf);
            ip.emit(&mut p);
            let mut t = TcpPacket::new_unchecked(p.payload_mut());
            tcp.emit(&mut t, &s.into(), &d.into(), &caps);
            Some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
    }

    #[test]
    fn udp_round_trips_through_classify() {
        let (from, to) = (v4([10, 0, 2, 15], 4000), v4([10, 0, 2, 2], 53));
        let mut buf = [0u8; 256];
        let n = udp_packet(from, to, b"hello", &mut buf).expect("fits");
        match classify(&buf[..n]) {
            Verdict::Udp { key, payload } => {
                assert_eq!(
                    key,
                    FlowKey {
                        guest: from,
                        dst: to
                    }
                );
                assert_eq!(payload, b"hello");
            }
            other => panic!("{other:?}"),
        }
        let g6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7);
        let d6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), 9);
        let n = udp_packet(g6, d6, b"x", &mut buf).expect("fits");
        assert!(matches!(
            classify(&buf[..n]),
            Verdict::Udp { payload: b"x", .. }
        ));
    }

    #[test]
    fn a_flipped_byte_or_a_cut_is_dropped_not_panicked_on() {
        let (from, to) = (v4([10, 0, 2, 15], 4000), v4([10, 0, 2, 2], 53));
        let mut buf = [0u8; 256];
        let n = udp_packet(from, to, b"payload!", &mut buf).expect("fits");
        for cut in 0..n {
            assert!(
                matches!(classify(&buf[..cut]), Verdict::Drop(_)),
                "cut at {cut}"
            );
        }
        for i in 0..n {
            let mut p = buf;
            p[i] ^= 0x5a;
            // Every byte is covered by a checksum or a length check, or changes only an
            // address or port (still a well-formed datagram).
            let _ = classify(&p[..n]);
        }
        let mut frag = buf;
        frag[6] |= 0x20; // more fragments
        let mut p = Ipv4Packet::new_unchecked(&mut frag[..n]);
        p.fill_checksum();
        assert_eq!(classify(&frag[..n]), Verdict::Drop(DropReason::Fragment));
        assert_eq!(
            classify(&[0x45; 70_000]),
            Verdict::Drop(DropReason::Oversized)
        );
        assert_eq!(classify(&[]), Verdict::Drop(DropReason::NotIp));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid datagrams with bytes overwritten or cut, are
        /// classified without a panic; whatever is not dropped carries a payload inside
        /// the packet.
        #[test]
        fn classify_takes_any_bytes(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            v6 in proptest::bool::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            edits in proptest::collection::vec((0usize..600, proptest::num::u8::ANY), 0..4),
            cut in 0usize..600,
        ) {
            let _ = classify(&junk);
            let mut first = junk.clone();
            if let Some(b) = first.first_mut() {
                *b = if v6 { 0x60 } else { 0x45 };
            }
            let _ = classify(&first);
            let (from, to) = if v6 {
                (
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa7ca, 0, 0, 0, 0, 0, 0x15)), 5000),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa7ca, 0, 0, 0, 0, 0, 2)), 53),
                )
            } else {
                (v4([10, 0, 2, 15], 5000), v4([10, 0, 2, 2], 53))
            };
            let mut buf = [0u8; 1024];
            let n = udp_packet(from, to, &payload, &mut buf).expect("fits");
            for (at, byte) in &edits {
                if let Some(b) = buf.get_mut(at % n) {
                    *b = *byte;
                }
            }
            let p = &buf[..n.min(cut.max(1))];
            if let Verdict::Udp { payload: got, .. } = classify(p) {
                proptest::prop_assert!(got.len() <= p.len());
            }
        }
    }

    #[test]
    fn rst_answers_the_syn_sequence_plus_one() {
        let key = FlowKey {
            guest: v4([10, 0, 2, 15], 40000),
            dst: v4([10, 0, 2, 2], 80),
        };
        let mut buf = [0u8; 128];
        let n = rst_for_syn(key, u32::MAX, &mut buf).expect("fits");
        let p = Ipv4Packet::new_checked(&buf[..n]).expect("ip");
        let t = TcpPacket::new_checked(p.payload()).expect("tcp");
        assert!(t.rst() && t.ack());
        assert_eq!(t.ack_number().0, 0, "sequence wraps");
        assert_eq!((t.src_port(), t.dst_port()), (80, 40000));
        assert!(t.verify_checksum(&p.src_addr().into(), &p.dst_addr().into()));
    }
}
