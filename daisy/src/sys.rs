//! The few socket calls std and socket2 lack: batched `sendmmsg` / `recvmmsg` and
//! `SO_RCVBUFFORCE`. All of the crate's `unsafe` is here.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most messages per `sendmmsg` / `recvmmsg` call.
pub const MAX_BATCH: usize = 64;

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Most bytes in one segmentation-offload message (a UDP datagram's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;
/// Most datagrams in one segmentation-offload message (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;

/// Sends each `(header, payload)` pair as one datagram to `to`, in `sendmmsg` batches.
/// With `*gso`, each run of equal-length datagrams (its last may be shorter) is one
/// `UDP_SEGMENT` message that the kernel cuts into those datagrams, so a round costs a
/// system call and a trip through the stack per 44 datagrams rather than per datagram;
/// on the wire nothing changes. A host that refuses it clears `*gso`, and the rest goes
/// out datagram by datagram. Returns how many were sent; a short count means the kernel
/// refused the rest (`ENOBUFS`/`EAGAIN`): they are lost like any datagram and repaired
/// later.
///
/// # Errors
/// Any other `sendmmsg` error.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    to: SocketAddrV4,
    pkts: &[(&[u8], &[u8])],
    gso: &mut bool,
) -> io::Result<usize> {
    let mut addr = sockaddr_in(to);
    let len = |p: &(&[u8], &[u8])| p.0.len() + p.1.len();
    let mut sent = 0usize;
    'batches: while sent < pkts.len() {
        // Plan up to MAX_BATCH messages from `sent` on.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::with_capacity(MAX_BATCH);
        let mut j = sent;
        while j < pkts.len() && groups.len() < MAX_BATCH {
            let size = len(&pkts[j]);
            let mut end = j + 1;
            let mut bytes = size;
            if *gso && size > 0 {
                while end < pkts.len() && end - j < GSO_MAX_SEGMENTS {
                    let l = len(&pkts[end]);
                    if l == 0 || l > size || bytes + l > GSO_MAX_BYTES {
                        break;
                    }
                    bytes += l;
                    end += 1;
                    if l < size {
                        break; // only the last may be shorter
                    }
                }
            }
            groups.push(j..end);
            j = end;
        }
        let mut iov: Vec<libc::iovec> = Vec::with_capacity((j - sent) * 2);
        for (h, p) in &pkts[sent..j] {
            for part in [h, p] {
                iov.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
        }
        let mut cmsgs = vec![[0u64; 4]; groups.len()];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; groups.len()];
        for ((g, m), c) in groups.iter().zip(msgs.iter_mut()).zip(cmsgs.iter_mut()) {
            let h = &mut m.msg_hdr;
            h.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            // SAFETY: `2 * (g.start - sent) + 2 * g.len() <= iov.len()`.
            h.msg_iov = unsafe { iov.as_mut_ptr().add(2 * (g.start - sent)) };
            h.msg_iovlen = 2 * g.len();
            if g.len() > 1 {
                let seg = u16::try_from(len(&pkts[g.start])).unwrap_or(u16::MAX);
                h.msg_control = c.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                // SAFETY: the 32-byte, 8-aligned buffer holds CMSG_SPACE(2); the header and
                // the u16 are written inside it.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(h);
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = libc::UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
                }
            }
        }
        let mut done = 0usize; // messages
        let mut tries = 0u32;
        while done < msgs.len() {
            // SAFETY: `msgs[done..]` point at `iov` entries, control buffers in `cmsgs` and
            // `addr`, all alive for this call; the iovecs name the caller's slices, which
            // the kernel only reads.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs.as_mut_ptr().add(done),
                    (msgs.len() - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                let datagrams: usize = groups[..done].iter().map(ExactSizeIterator::len).sum();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) if tries < 64 => {
                        tries += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(sent + datagrams),
                    Some(
                        libc::EINVAL
                        | libc::EMSGSIZE
                        | libc::EIO
                        | libc::EOPNOTSUPP
                        | libc::ENOPROTOOPT,
                    ) if groups[done].len() > 1 => {
                        // No segmentation offload here (or a segment above the path MTU,
                        // which only IP fragmentation can carry): the rest goes out singly.
                        *gso = false;
                        sent += datagrams;
                        continue 'batches;
                    }
                    _ => return Err(e),
                }
            }
            done += r as usize;
        }
        sent = j;
    }
    Ok(sent)
}

/// Control-message room per received message (one `UDP_GRO` segment size).
const CMSG_WORDS: usize = 4;

/// Receive buffers for [`recv_batch`]: `MAX_BATCH` buffers of `size` bytes.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    lens: [usize; MAX_BATCH],
    /// Per message: the segment size when the kernel handed over several coalesced
    /// datagrams (`UDP_GRO`), else 0.
    segs: [usize; MAX_BATCH],
    cmsgs: [[u64; CMSG_WORDS]; MAX_BATCH],
}

impl RecvBatch {
    /// Buffers of `size` bytes each (64 KiB holds any coalesced message).
    pub fn new(size: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; size * MAX_BATCH],
            size,
            lens: [0; MAX_BATCH],
            segs: [0; MAX_BATCH],
            cmsgs: [[0; CMSG_WORDS]; MAX_BATCH],
        }
    }

    /// Message `i` of the last batch, whole.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = i * self.size;
        let len = self.lens.get(i).copied().unwrap_or(0).min(self.size);
        self.bufs.get(start..start + len).unwrap_or(&[])
    }

    /// The datagrams of message `i`: one, or, for coalesced datagrams (`UDP_GRO`), each
    /// segment in order (the last may be shorter).
    pub fn datagrams(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        let whole = self.get(i);
        let seg = self.segs.get(i).copied().unwrap_or(0);
        whole.chunks(if seg == 0 { whole.len().max(1) } else { seg })
    }
}

/// Asks the kernel to hand over runs of datagrams of one flow coalesced (`UDP_GRO`):
/// one receive for up to 64 datagrams. [`recv_batch`] records the segment size and
/// [`RecvBatch::datagrams`] splits them again. Kernels without it refuse; that is fine.
pub fn enable_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Receives up to `MAX_BATCH` datagrams without waiting; returns how many (0 when none).
/// Datagrams longer than a buffer are truncated (and then fail their length check).
///
/// # Errors
/// Any `recvmmsg` error other than `EAGAIN`/`EINTR`.
pub fn recv_batch(fd: BorrowedFd<'_>, b: &mut RecvBatch) -> io::Result<usize> {
    let mut iov: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let base = b.bufs.as_mut_ptr();
    for i in 0..MAX_BATCH {
        iov[i] = libc::iovec {
            // SAFETY: `i * size` is within `bufs` (its length is `size * MAX_BATCH`).
            iov_base: unsafe { base.add(i * b.size) }.cast(),
            iov_len: b.size,
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = b.cmsgs[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = std::mem::size_of::<[u64; CMSG_WORDS]>();
    }
    loop {
        // SAFETY: every msghdr points at one iovec naming a distinct `size`-byte region of
        // `bufs`, which is exclusively borrowed for this call; no names or control buffers.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                MAX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(0),
                _ => return Err(e),
            }
        }
        let n = r as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            b.lens[i] = m.msg_len as usize;
            b.segs[i] = gro_segment(&m.msg_hdr);
        }
        return Ok(n);
    }
}

/// The `UDP_GRO` segment size in a received message's control data, or 0.
fn gro_segment(msg: &libc::msghdr) -> usize {
    let mut seg = 0usize;
    // SAFETY: `msg` is a header the kernel just filled in; its control pointer and the
    // length it set describe our `cmsgs` buffer, and the CMSG macros stay inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                seg = usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    seg
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
                coalesced |= batch.segs[i] != 0;
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
