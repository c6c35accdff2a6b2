//! `sendmmsg` of a batch, runs of equal datagrams as `UDP_SEGMENT` messages.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

use crate::plan::plan_messages;
use crate::MAX_BATCH;

/// A datagram to send from ordinary memory: its destination and its payload,
/// gathered from `payload` in order.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Where it goes.
    pub to: &'a SockAddr,
    /// Its bytes, in order.
    pub payload: &'a [IoSlice<'a>],
}

/// A datagram to send from memory Rust cannot borrow (another process's shared
/// memory): its destination and its payload as raw iovecs. Sending it is
/// `unsafe` ([`send_batch_raw`]) because nothing here proves the iovecs are
/// readable.
#[derive(Debug, Clone, Copy)]
pub struct RawDatagram<'a> {
    /// Where it goes.
    pub to: &'a SockAddr,
    /// Its bytes, in order.
    pub payload: &'a [libc::iovec],
}

/// A refused `sendmmsg`: the error of the first message not sent, and whether
/// that message was a segmentation-offload one (several datagrams for the
/// kernel to cut). A host that refuses those (a kernel without `UDP_SEGMENT`,
/// a segment above the path MTU) may still take the datagrams one by one.
#[derive(Debug)]
pub struct SendError {
    /// The system call's error.
    pub error: io::Error,
    /// The refused message held several datagrams.
    pub gso: bool,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gso {
            write!(f, "segmentation-offload send refused: {}", self.error)
        } else {
            write!(f, "send refused: {}", self.error)
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What the planner and the gatherer need of a datagram.
trait Gather {
    fn to(&self) -> &SockAddr;
    fn payload_len(&self) -> usize;
    fn push_iovecs(&self, out: &mut Vec<libc::iovec>);
}

impl Gather for Datagram<'_> {
    fn to(&self) -> &SockAddr {
        self.to
    }
    fn payload_len(&self) -> usize {
        self.payload.iter().map(|s| s.len()).sum()
    }
    fn push_iovecs(&self, out: &mut Vec<libc::iovec>) {
        out.extend(self.payload.iter().map(|s| libc::iovec {
            iov_base: s.as_ptr().cast_mut().cast(),
            iov_len: s.len(),
        }));
    }
}

impl Gather for RawDatagram<'_> {
    fn to(&self) -> &SockAddr {
        self.to
    }
    fn payload_len(&self) -> usize {
        self.payload.iter().map(|v| v.iov_len).sum()
    }
    fn push_iovecs(&self, out: &mut Vec<libc::iovec>) {
        out.extend_from_slice(self.payload);
    }
}

/// Sends the front of `datagrams` with one `sendmmsg`: up to [`MAX_BATCH`]
/// messages as [`plan_messages`](crate::plan_messages) groups them (runs as
/// `UDP_SEGMENT` messages when `gso`, else one datagram per message). `flags`
/// go to the call (`MSG_DONTWAIT`, `MSG_NOSIGNAL`, ...). Returns how many
/// *datagrams* went out: at least one, or 0 for an empty batch. The kernel cuts
/// a run into datagrams of its first one's length, so on the wire nothing
/// differs from sending them one by one.
///
/// # Errors
/// When not even the first message went out: its error, and whether it was a
/// segmentation-offload message.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    datagrams: &[Datagram<'_>],
    gso: bool,
    flags: libc::c_int,
) -> Result<usize, SendError> {
    // SAFETY: every iovec comes from an `IoSlice`, which borrows its bytes for
    // the length of this call; the kernel only reads them.
    unsafe { send_gathered(fd, datagrams, gso, flags) }
}

/// [`send_batch`] for payloads given as raw iovecs.
///
/// # Safety
/// Every iovec of every datagram must describe `iov_len` bytes that stay mapped
/// and readable for the whole call (the kernel reads them; it never writes).
/// Their contents may change meanwhile: that changes only what is sent.
///
/// # Errors
/// As [`send_batch`].
pub unsafe fn send_batch_raw(
    fd: BorrowedFd<'_>,
    datagrams: &[RawDatagram<'_>],
    gso: bool,
    flags: libc::c_int,
) -> Result<usize, SendError> {
    // SAFETY: the caller vouches for the iovecs, as this function's contract
    // requires.
    unsafe { send_gathered(fd, datagrams, gso, flags) }
}

/// Room for one `UDP_SEGMENT` control message, 8-aligned.
const CMSG_WORDS: usize = 4;

/// The `sendmmsg` of [`send_batch`] and [`send_batch_raw`].
///
/// # Safety
/// Every iovec `push_iovecs` yields is readable for its length for the whole call.
unsafe fn send_gathered<G: Gather>(
    fd: BorrowedFd<'_>,
    datagrams: &[G],
    gso: bool,
    flags: libc::c_int,
) -> Result<usize, SendError> {
    let plan: Vec<_> = plan_messages(datagrams, gso, |d| (d.to(), d.payload_len()))
        .take(MAX_BATCH)
        .collect();
    let Some(last) = plan.last() else {
        return Ok(0);
    };
    // Each message's iovecs follow the previous message's in `iovs`: message
    // `m`'s are `iovs[firsts[m]..firsts[m + 1]]`.
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(last.end * 2);
    let mut firsts = Vec::with_capacity(plan.len() + 1);
    for m in &plan {
        firsts.push(iovs.len());
        for d in &datagrams[m.clone()] {
            d.push_iovecs(&mut iovs);
        }
    }
    firsts.push(iovs.len());
    let mut cmsgs = vec![[0u64; CMSG_WORDS]; plan.len()];
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(plan.len());
    for (i, (m, cbuf)) in plan.iter().zip(cmsgs.iter_mut()).enumerate() {
        let first = &datagrams[m.start];
        // SAFETY: `msghdr` is a plain C struct for which all-zero is a valid
        // (empty) value; the fields that matter are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = first.to().as_ptr().cast_mut().cast();
        msg.msg_namelen = first.to().len();
        // SAFETY: `firsts[i] <= iovs.len()`: it was `iovs.len()` when pushed,
        // and `iovs` only grows.
        msg.msg_iov = unsafe { iovs.as_mut_ptr().add(firsts[i]) };
        msg.msg_iovlen = firsts[i + 1] - firsts[i];
        if m.len() > 1 {
            // A run's total is at most GSO_MAX_BYTES, so its segment fits.
            let seg = u16::try_from(first.payload_len()).unwrap_or(u16::MAX);
            msg.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            debug_assert!(msg.msg_controllen <= std::mem::size_of_val(cbuf));
            // SAFETY: the control buffer is 32 bytes, 8-aligned, at least
            // CMSG_SPACE(2) (24 on 64-bit Linux); CMSG_FIRSTHDR returns its
            // start, and the header and the u16 are written inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
        }
        hdrs.push(libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        });
    }
    // At most MAX_BATCH messages.
    let count = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: every `mmsghdr` points at a socket address borrowed from
    // `datagrams`, at iovecs in `iovs` and at a control buffer in `cmsgs`, all
    // alive across the call and not moved (none is touched until it returns);
    // the iovecs themselves name memory the caller vouches for (this
    // function's contract), which the kernel only reads.
    let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), count, flags) };
    if r < 0 {
        return Err(SendError {
            error: io::Error::last_os_error(),
            gso: plan[0].len() > 1,
        });
    }
    let messages = usize::try_from(r).unwrap_or(0);
    Ok(plan.iter().take(messages).map(ExactSizeIterator::len).sum())
}
