//! The few socket calls std and socket2 lack: `SO_RCVBUFFORCE` and `poll`; and Daisy's
//! retry policy over the `udp-batch` crate's batched `sendmmsg`, whose `recvmmsg` batches
//! it re-exports. All of the crate's `unsafe` is here.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;
use udp_batch::{plan_messages, Datagram};

pub use udp_batch::{enable_gro, recv_batch, RecvBatch, MAX_BATCH};

/// Sends each `(header, payload)` pair as one datagram to `to`, in `sendmmsg` batches
/// ([`udp_batch::send_batch`]). With `*gso`, each run of equal-length datagrams (its last
/// may be shorter) is one `UDP_SEGMENT` message that the kernel cuts into those datagrams,
/// so a round costs a system call and a trip through the stack per 44 datagrams rather
/// than per datagram; on the wire nothing changes. A host that refuses it clears `*gso`,
/// and the rest goes out datagram by datagram. Returns how many were sent; a short count
/// means the kernel refused the rest (`ENOBUFS`/`EAGAIN` 64 times over one batch of
/// messages): they are lost like any datagram and repaired later.
///
/// # Errors
/// Any other `sendmmsg` error.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    to: SocketAddrV4,
    pkts: &[(&[u8], &[u8])],
    gso: &mut bool,
) -> io::Result<usize> {
    let addr = SockAddr::from(to);
    let slices: Vec<[IoSlice<'_>; 2]> = pkts
        .iter()
        .map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)])
        .collect();
    let datagrams: Vec<Datagram<'_>> = slices
        .iter()
        .map(|s| Datagram {
            to: &addr,
            payload: s,
        })
        .collect();
    let mut sent = 0usize;
    'batches: while sent < pkts.len() {
        // Up to MAX_BATCH messages from `sent` on: one `sendmmsg` unless the kernel
        // takes only part of them.
        let rest = pkts.get(sent..).unwrap_or(&[]);
        let end = sent
            + plan_messages(rest, *gso, |p| ((), p.0.len() + p.1.len()))
                .take(MAX_BATCH)
                .map(|m| m.len())
                .sum::<usize>();
        let mut tries = 0u32;
        while sent < end {
            let batch = datagrams.get(sent..end).unwrap_or(&[]);
            match udp_batch::send_batch(fd, batch, *gso, 0) {
                Ok(0) => return Ok(sent),
                Ok(n) => sent += n,
                Err(e) => match e.error.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ENOBUFS | libc::EAGAIN) if tries < 64 => {
                        tries += 1;
                        std::thread::yield_now();
                    }
                    Some(libc::ENOBUFS | libc::EAGAIN) => return Ok(sent),
                    Some(
                        libc::EINVAL
                        | libc::EMSGSIZE
                        | libc::EIO
                        | libc::EOPNOTSUPP
                        | libc::ENOPROTOOPT,
                    ) if e.gso => {
                        // No segmentation offload here (or a segment above the path MTU,
                        // which only IP fragmentation can carry): the rest goes out singly.
                        *gso = false;
                        continue 'batches;
                    }
                    _ => return Err(e.error),
                },
            }
        }
    }
    Ok(sent)
}

/// Sets `SO_RCVBUFFORCE` (root may exceed `rmem_max`).
///
/// # Errors
/// The `setsockopt` error (`EPERM` when not privileged).
pub fn set_rcvbuf_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
}

/// Sets `SO_SNDBUFFORCE` (root may exceed `wmem_max`).
///
/// # Errors
/// The `setsockopt` error.
pub fn set_sndbuf_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
}

/// A socket option whose value is a C int (`value` clamped to its range).
fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: usize,
) -> io::Result<()> {
    let v: libc::c_int = value.try_into().unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits up to `timeout_ms` for any of `fds` to be readable; returns the readable flags.
///
/// # Errors
/// The `poll` error (`EINTR` is reported as nothing ready).
pub fn poll_readable(fds: &[Option<BorrowedFd<'_>>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd; negative fds are ignored by poll.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// A run of 40 equal datagrams and a shorter last one, each headed by its index.
    fn run() -> (Vec<[u8; 8]>, Vec<Vec<u8>>) {
        let heads = (0..41u64).map(u64::to_le_bytes).collect();
        let bodies = (0..41u8)
            .map(|i| vec![i; if i == 40 { 300 } else { 1000 }])
            .collect();
        (heads, bodies)
    }

    fn pairs<'a>(heads: &'a [[u8; 8]], bodies: &'a [Vec<u8>]) -> Vec<(&'a [u8], &'a [u8])> {
        heads
            .iter()
            .zip(bodies)
            .map(|(h, b)| (&h[..], &b[..]))
            .collect()
    }

    fn loopback_pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = set_rcvbuf_force(rx.as_fd(), 8 << 20);
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        (UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(), rx, to)
    }

    #[test]
    fn a_run_goes_out_as_one_offload_send_and_arrives_as_whole_datagrams() {
        let (tx, rx, to) = loopback_pair();
        let (heads, bodies) = run();
        let mut gso = true;
        assert_eq!(
            send_batch(tx.as_fd(), to, &pairs(&heads, &bodies), &mut gso).unwrap(),
            41
        );
        assert!(gso, "loopback takes UDP_SEGMENT");
        let mut buf = vec![0u8; 65536];
        for (h, b) in heads.iter().zip(&bodies) {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..8], h);
            assert_eq!(&buf[8..n], &b[..]);
        }
    }

    #[test]
    fn coalesced_receives_split_into_their_datagrams() {
        let (tx, rx, to) = loopback_pair();
        enable_gro(rx.as_fd()).unwrap();
        let (heads, bodies) = run();
        let mut gso = true;
        send_batch(tx.as_fd(), to, &pairs(&heads, &bodies), &mut gso).unwrap();
        let mut batch = RecvBatch::new(65_536);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut coalesced = false;
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 41 && std::time::Instant::now() < until {
            let n = recv_batch(rx.as_fd(), &mut batch).unwrap();
            for i in 0..n {
                coalesced |= batch.segment(i) != 0;
                got.extend(batch.datagrams(i).map(<[u8]>::to_vec));
            }
        }
        assert!(coalesced, "the kernel handed over coalesced datagrams");
        assert_eq!(got.len(), 41);
        for ((d, h), b) in got.iter().zip(&heads).zip(&bodies) {
            assert_eq!(&d[..8], h);
            assert_eq!(&d[8..], &b[..]);
        }
    }

    /// In a network namespace of its own whose loopback has a 1,500-byte MTU, 8 KiB
    /// datagrams cannot be segments (the kernel says `EMSGSIZE`): the batch still goes out,
    /// singly, as IP fragments.
    #[test]
    fn a_segment_above_the_path_mtu_falls_back_to_single_datagrams() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare moves only this thread into a new network namespace; the
            // thread ends with the test.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "mtu", "1500", "up"])
                .status()
                .expect("ip");
            assert!(st.success(), "ip link set lo mtu 1500 up");
            let (tx, rx, to) = loopback_pair();
            let heads: Vec<[u8; 8]> = (0..8u64).map(u64::to_le_bytes).collect();
            let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 8192]).collect();
            let mut gso = true;
            assert_eq!(
                send_batch(tx.as_fd(), to, &pairs(&heads, &bodies), &mut gso).unwrap(),
                8
            );
            assert!(!gso, "the refusal turned offload off");
            let mut buf = vec![0u8; 65536];
            for (h, b) in heads.iter().zip(&bodies) {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..8], h);
                assert_eq!(&buf[8..n], &b[..]);
            }
        })
        .join()
        .unwrap();
    }
}
