//! Batched UDP system calls, shared by the arca monitor and Daisy.
//!
//! - Sending: [`plan_messages`] groups a batch of datagrams into `sendmmsg`
//!   messages, each run of equal datagrams to one destination as one
//!   segmentation-offload message (`UDP_SEGMENT`) the kernel cuts into those
//!   datagrams; [`send_batch`] (payloads in ordinary memory) and
//!   [`send_batch_raw`] (payloads as raw iovecs, such as a shared-memory ring's)
//!   make the call. Offload changes nothing on the wire: the receiver sees the
//!   same datagrams as from one send each.
//! - Receiving: [`recv_batch`] fills a [`RecvBatch`] with one `recvmmsg`; with
//!   [`enable_gro`] the kernel may hand over several datagrams of one flow as
//!   one message with a segment size, which [`RecvBatch::datagrams`] (through
//!   [`split_coalesced`]) splits again. [`recv_raw`] receives one datagram into
//!   raw iovecs.
//!
//! # Trust and memory
//! The kernel is trusted; the bytes are not interpreted here. Where the caller's
//! buffers are memory Rust cannot borrow (another process's shared memory,
//! which that process may change at any time), the functions take raw iovecs
//! and are `unsafe`: the caller vouches that they stay mapped for the call, and
//! a peer that scribbles on them meanwhile changes only what is sent or
//! received. No reference is ever formed over them here.
//!
//! Linux only (`sendmmsg`, `recvmmsg`, `UDP_SEGMENT`, `UDP_GRO`).

mod plan;
mod recv;
mod send;

pub use plan::{plan_messages, Messages};
pub use recv::{enable_gro, recv_batch, recv_raw, split_coalesced, Received, RecvBatch};
pub use send::{send_batch, send_batch_raw, Datagram, RawDatagram, SendError};

/// Most payload bytes in one segmentation-offload message (a UDP datagram's
/// limit, less headers).
pub const GSO_MAX_BYTES: usize = 65_000;

/// Most datagrams in one segmentation-offload message (the kernel's
/// `UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most messages per `sendmmsg` / `recvmmsg` call here.
pub const MAX_BATCH: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use socket2::SockAddr;

    fn loopback_pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Room for a whole test batch without drops (the default may be small).
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(4 << 20);
        let to = rx.local_addr().unwrap();
        (UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(), rx, to)
    }

    /// A run of 64 equal datagrams (the most one message holds) and a shorter
    /// one, each headed by its index.
    fn run() -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..65u8)
            .map(|i| {
                let head = u64::from(i).to_le_bytes().to_vec();
                (head, vec![i; if i == 64 { 300 } else { 500 }])
            })
            .collect()
    }

    /// Sends all of `pkts` (header, body) to `to`; returns how many `sendmmsg`
    /// calls that took.
    fn send_all(tx: &UdpSocket, to: SocketAddr, pkts: &[(Vec<u8>, Vec<u8>)], gso: bool) -> usize {
        let to = SockAddr::from(to);
        let slices: Vec<[IoSlice<'_>; 2]> = pkts
            .iter()
            .map(|(h, b)| [IoSlice::new(h), IoSlice::new(b)])
            .collect();
        let dgrams: Vec<Datagram<'_>> = slices
            .iter()
            .map(|s| Datagram {
                to: &to,
                payload: s,
            })
            .collect();
        let (mut sent, mut calls) = (0, 0);
        while sent < dgrams.len() {
            assert!(
                calls < dgrams.len(),
                "every call sends at least one datagram"
            );
            sent += send_batch(tx.as_fd(), &dgrams[sent..], gso, 0).unwrap();
            calls += 1;
        }
        calls
    }

    fn expect_each(rx: &UdpSocket, pkts: &[(Vec<u8>, Vec<u8>)]) {
        let mut buf = vec![0u8; 65_536];
        for (h, b) in pkts {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..h.len()], &h[..]);
            assert_eq!(&buf[h.len()..n], &b[..]);
        }
    }

    #[test]
    fn a_run_goes_out_in_one_call_and_arrives_as_whole_datagrams() {
        let (tx, rx, to) = loopback_pair();
        let pkts = run();
        assert_eq!(
            send_all(&tx, to, &pkts, true),
            1,
            "65 datagrams, 2 messages"
        );
        expect_each(&rx, &pkts);
        assert_eq!(send_all(&tx, to, &pkts, false), 2, "65 messages");
        expect_each(&rx, &pkts);
    }

    #[test]
    fn without_offload_each_datagram_is_a_message_and_64_go_per_call() {
        let (tx, rx, to) = loopback_pair();
        let pkts: Vec<_> = (0..100u8).map(|i| (vec![i], vec![i; 100])).collect();
        assert_eq!(send_all(&tx, to, &pkts, false), 2);
        expect_each(&rx, &pkts);
    }

    #[test]
    fn an_empty_batch_sends_nothing() {
        let (tx, _rx, _) = loopback_pair();
        assert_eq!(send_batch(tx.as_fd(), &[], true, 0).unwrap(), 0);
    }

    #[test]
    fn a_refused_offload_message_says_so() {
        // An IPv4 socket cannot send to an IPv6 address: the first message's
        // error comes back, marked as a run when it was one.
        let (tx, _rx, _) = loopback_pair();
        let to = SockAddr::from("[::1]:9".parse::<SocketAddr>().unwrap());
        let body = [IoSlice::new(&[1u8; 10])];
        let run = [Datagram {
            to: &to,
            payload: &body,
        }; 2];
        let e = send_batch(tx.as_fd(), &run, true, libc::MSG_DONTWAIT).unwrap_err();
        assert!(e.gso, "{e}");
        let e = send_batch(tx.as_fd(), &run, false, libc::MSG_DONTWAIT).unwrap_err();
        assert!(!e.gso, "{e}");
    }

    #[test]
    fn coalesced_receives_split_into_their_datagrams() {
        let (tx, rx, to) = loopback_pair();
        enable_gro(rx.as_fd()).unwrap();
        rx.set_nonblocking(true).unwrap();
        let pkts = run();
        send_all(&tx, to, &pkts, true);
        let mut batch = RecvBatch::new(65_536);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut coalesced = false;
        let until = Instant::now() + Duration::from_secs(5);
        while got.len() < pkts.len() && Instant::now() < until {
            let n = recv_batch(rx.as_fd(), &mut batch).unwrap();
            for i in 0..n {
                coalesced |= batch.segment(i) != 0;
                got.extend(batch.datagrams(i).map(<[u8]>::to_vec));
            }
        }
        assert!(coalesced, "the kernel handed over coalesced datagrams");
        assert_eq!(got.len(), pkts.len());
        for (d, (h, b)) in got.iter().zip(&pkts) {
            assert_eq!(&d[..8], &h[..]);
            assert_eq!(&d[8..], &b[..]);
        }
    }

    #[test]
    fn a_coalesced_message_splits_at_its_segment_size() {
        let msg: Vec<u8> = (0..25u8).collect();
        let parts: Vec<&[u8]> = split_coalesced(&msg, 10).collect();
        assert_eq!(parts, [&msg[..10], &msg[10..20], &msg[20..]]);
        assert_eq!(split_coalesced(&msg, 0).collect::<Vec<_>>(), [&msg[..]]);
        assert_eq!(split_coalesced(&msg, 25).count(), 1);
        assert_eq!(split_coalesced(&msg, 100).collect::<Vec<_>>(), [&msg[..]]);
        assert_eq!(split_coalesced(&[], 0).count(), 0);
        assert_eq!(split_coalesced(&[], 10).count(), 0);
    }

    #[test]
    fn a_raw_receive_names_the_sender_and_flags_truncation() {
        let (tx, rx, to) = loopback_pair();
        tx.send_to(&[7u8; 30], to).unwrap();
        tx.send_to(&[8u8; 30], to).unwrap();
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        // SAFETY: the iovecs name `a` and `b`, live locals not otherwise used
        // until the call returns.
        let r = unsafe { recv_raw(rx.as_fd(), &mut iov, 0) }.unwrap();
        let from = Some(tx.local_addr().unwrap());
        assert_eq!(
            r,
            Received {
                len: 30,
                from,
                truncated: false
            }
        );
        assert_eq!((a, &b[..10]), ([7u8; 20], &[7u8; 10][..]));
        // SAFETY: as above, with only `a`.
        let r = unsafe { recv_raw(rx.as_fd(), &mut iov[..1], 0) }.unwrap();
        assert_eq!(
            r,
            Received {
                len: 20,
                from,
                truncated: true
            }
        );
        rx.set_nonblocking(true).unwrap();
        // SAFETY: as above.
        let e = unsafe { recv_raw(rx.as_fd(), &mut iov, 0) }.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}
