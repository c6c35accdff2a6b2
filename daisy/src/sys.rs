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

/// Sends each `(header, payload)` pair as one datagram to `to`, in `sendmmsg` batches.
/// Returns how many were sent; a short count means the kernel refused the rest
/// (`ENOBUFS`/`EAGAIN`): they are lost like any datagram and repaired later.
///
/// # Errors
/// Any other `sendmmsg` error.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    to: SocketAddrV4,
    pkts: &[(&[u8], &[u8])],
) -> io::Result<usize> {
    let mut addr = sockaddr_in(to);
    let mut sent = 0usize;
    for chunk in pkts.chunks(MAX_BATCH) {
        let mut iov: [[libc::iovec; 2]; MAX_BATCH] = [[libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2]; MAX_BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (h, p)) in chunk.iter().enumerate() {
            iov[i][0] = libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            };
            iov[i][1] = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
            msgs[i].msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        let mut done = 0usize;
        let mut tries = 0u32;
        while done < chunk.len() {
            // SAFETY: `msgs[done..chunk.len()]` point at `iov` entries and `addr`, all alive
            // for this call; the iovecs name the caller's slices, which the kernel only reads.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs.as_mut_ptr().add(done),
                    (chunk.len() - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) if tries < 64 => {
                        tries += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(sent + done),
                    _ => return Err(e),
                }
            }
            done += r as usize;
        }
        sent += done;
    }
    Ok(sent)
}

/// Receive buffers for [`recv_batch`]: `MAX_BATCH` buffers of `size` bytes.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    lens: [usize; MAX_BATCH],
}

impl RecvBatch {
    /// Buffers of `size` bytes each.
    pub fn new(size: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; size * MAX_BATCH],
            size,
            lens: [0; MAX_BATCH],
        }
    }

    /// Datagram `i` of the last batch.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = i * self.size;
        let len = self.lens.get(i).copied().unwrap_or(0).min(self.size);
        self.bufs.get(start..start + len).unwrap_or(&[])
    }
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
        }
        return Ok(n);
    }
}

/// Sets `SO_RCVBUFFORCE` (root may exceed `rmem_max`).
///
/// # Errors
/// The `setsockopt` error (`EPERM` when not privileged).
pub fn set_rcvbuf_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SO_RCVBUFFORCE, bytes)
}

/// Sets `SO_SNDBUFFORCE` (root may exceed `wmem_max`).
///
/// # Errors
/// The `setsockopt` error.
pub fn set_sndbuf_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SO_SNDBUFFORCE, bytes)
}

/// A `SOL_SOCKET` option whose value is a C int (`bytes` clamped to its range).
fn set_int_option(fd: BorrowedFd<'_>, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.try_into().unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
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
