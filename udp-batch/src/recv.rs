//! `recvmmsg` with `UDP_GRO`, splitting coalesced receives, and `recvmsg` of
//! one datagram into raw iovecs.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

use crate::MAX_BATCH;

/// Control-message room per received message (one `UDP_GRO` segment size).
const CMSG_WORDS: usize = 4;

/// Receive buffers for [`recv_batch`]: [`MAX_BATCH`] buffers of `size` bytes.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    lens: [usize; MAX_BATCH],
    /// Per message: the segment size when the kernel handed over several
    /// coalesced datagrams (`UDP_GRO`), else 0.
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

    /// The `UDP_GRO` segment size of message `i` when the kernel coalesced
    /// several datagrams into it, else 0.
    pub fn segment(&self, i: usize) -> usize {
        self.segs.get(i).copied().unwrap_or(0)
    }

    /// The datagrams of message `i`: one, or, for coalesced datagrams
    /// (`UDP_GRO`), each segment in order (see [`split_coalesced`]).
    pub fn datagrams(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        split_coalesced(self.get(i), self.segment(i))
    }
}

/// The datagrams of one received message: with `segment` 0, the message
/// itself; otherwise consecutive `segment`-byte datagrams, the last possibly
/// shorter, as the kernel coalesced them. An empty message yields nothing.
pub fn split_coalesced(message: &[u8], segment: usize) -> std::slice::Chunks<'_, u8> {
    let size = if segment == 0 {
        message.len().max(1)
    } else {
        segment
    };
    message.chunks(size)
}

/// Asks the kernel to hand over runs of datagrams of one flow coalesced
/// (`UDP_GRO`): one receive for up to 64 datagrams. [`recv_batch`] records the
/// segment size and [`RecvBatch::datagrams`] splits them again.
///
/// # Errors
/// The `setsockopt` error: kernels without `UDP_GRO` refuse it, which callers
/// may ignore (receives then stay one datagram each).
pub fn enable_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives up to [`MAX_BATCH`] messages without waiting; returns how many (0
/// when none). A message longer than a buffer is truncated to it.
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
    for (i, (v, m)) in iov.iter_mut().zip(msgs.iter_mut()).enumerate() {
        *v = libc::iovec {
            // SAFETY: `i * size` is within `bufs` (its length is `size * MAX_BATCH`).
            iov_base: unsafe { base.add(i * b.size) }.cast(),
            iov_len: b.size,
        };
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = b.cmsgs[i].as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CMSG_WORDS]>();
    }
    // Bounded: only EINTR repeats, and a signal cannot interrupt a
    // non-blocking call forever.
    loop {
        // SAFETY: every msghdr points at one iovec naming a distinct `size`-byte
        // region of `bufs` and at its own control buffer in `cmsgs`, both
        // exclusively borrowed for this call; no names.
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
        let n = usize::try_from(r).unwrap_or(0).min(MAX_BATCH);
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
    // SAFETY: `msg` is a header the kernel just filled in; its control pointer
    // and the length it set describe our `cmsgs` buffer, and the CMSG macros
    // stay inside it.
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

/// One datagram received by [`recv_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffers (at most their total).
    pub len: usize,
    /// The sender, when the kernel named an IPv4 or IPv6 one.
    pub from: Option<SocketAddr>,
    /// The datagram was longer than the buffers; its tail is lost.
    pub truncated: bool,
}

/// `recvmsg` of one datagram into `iov`, with `flags` (`MSG_DONTWAIT`, ...).
///
/// # Safety
/// Every iovec must describe `iov_len` bytes that stay mapped and writable for
/// the whole call and that nothing else reads or writes as Rust data
/// meanwhile (the kernel writes up to their total length into them).
///
/// # Errors
/// The `recvmsg` error (`WouldBlock` when nothing is waiting on a non-blocking
/// call).
pub unsafe fn recv_raw(
    fd: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    flags: libc::c_int,
) -> io::Result<Received> {
    // SAFETY: all-zero is a valid `msghdr`; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: `try_init` hands over zeroed address storage and its size, which
    // `msg` names; `recvmsg` writes at most that many bytes of the sender's
    // address there and its length into `msg_namelen`, which goes back as the
    // address length. `msg` also points at `iov`, alive across the call, whose
    // iovecs the caller vouches for (this function's contract).
    let (len, from) = unsafe {
        SockAddr::try_init(|storage, namelen| {
            msg.msg_name = storage.cast();
            msg.msg_namelen = *namelen;
            let r = libc::recvmsg(fd.as_raw_fd(), &mut msg, flags);
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            *namelen = msg.msg_namelen;
            Ok(usize::try_from(r).unwrap_or(0))
        })
    }?;
    Ok(Received {
        len,
        from: from.as_socket(),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}
