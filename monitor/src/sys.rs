//! Every system call of the monitor that Rust's safe wrappers (std, nix,
//! socket2, mio) do not cover, and so every `unsafe` block of the crate: the
//! rest of it denies unsafe code. Each function states what makes its calls
//! sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use shm_ring::{ReadSegments, WriteSegments};
use socket2::SockAddr;
use udp_batch::{RawDatagram, Received, SendError};

use crate::guest::{IsolateFailed, Isolation, GUEST_FD};

/// `accept4(2)` with `SOCK_CLOEXEC` on a listening socket.
///
/// # Errors
/// The system call's error (`EAGAIN` when nobody waits).
pub(crate) fn accept(listener: RawFd) -> nix::Result<OwnedFd> {
    let fd = nix::sys::socket::accept4(listener, nix::sys::socket::SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: `accept4` returned a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
///
/// # Errors
/// The system call's error.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: `pidfd_open` takes plain integers and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a guest's process is set up with between `fork` and `exec`.
pub(crate) struct GuestSetup {
    /// The session socket's descriptor in the monitor; it becomes
    /// [`GUEST_FD`] in the guest.
    pub(crate) session: RawFd,
    /// The namespaces to enter.
    pub(crate) isolation: Isolation,
    /// `/proc/self/uid_map` and `gid_map` lines, for [`Isolation::UserNetNs`].
    pub(crate) uid_map: CString,
    pub(crate) gid_map: CString,
}

/// Sets `cmd` to start its program the way a guest starts: no signal blocked
/// and SIGPIPE at its default (as from a shell: the monitor blocks SIGINT and
/// SIGTERM for its signalfd, and the Rust runtime ignores SIGPIPE), the
/// session socket at [`GUEST_FD`] and inherited, and the namespaces entered.
/// A namespace step's failure carries [`IsolateFailed`].
pub(crate) fn prepare_guest(cmd: &mut Command, setup: GuestSetup) {
    let GuestSetup {
        session,
        isolation,
        uid_map,
        gid_map,
    } = setup;
    // SAFETY: the closure runs in the child between fork and exec. It only
    // calls async-signal-safe functions (sigemptyset, sigprocmask, signal,
    // dup2, fcntl, unshare, open, write, close) on data prepared before the
    // fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(none.as_mut_ptr()) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0
                || libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
            {
                return Err(io::Error::last_os_error());
            }
            if session == GUEST_FD {
                let flags = libc::fcntl(GUEST_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(GUEST_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(session, GUEST_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            let ns_err = |e: io::Error| {
                io::Error::new(e.kind(), IsolateFailed(e.raw_os_error().unwrap_or(0)))
            };
            match isolation {
                Isolation::None => {}
                Isolation::NetNs => {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(ns_err(io::Error::last_os_error()));
                    }
                }
                Isolation::UserNetNs => {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                        return Err(ns_err(io::Error::last_os_error()));
                    }
                    for (path, text) in [
                        (c"/proc/self/setgroups", c"deny"),
                        (c"/proc/self/uid_map", uid_map.as_c_str()),
                        (c"/proc/self/gid_map", gid_map.as_c_str()),
                    ] {
                        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(ns_err(io::Error::last_os_error()));
                        }
                        let bytes = text.to_bytes();
                        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                        libc::close(fd);
                        if n < 0 {
                            return Err(ns_err(io::Error::last_os_error()));
                        }
                    }
                }
            }
            Ok(())
        });
    }
}

/// `sendmmsg` of datagrams straight from a guest's ring, each `(destination,
/// payload)`; runs of equal datagrams as one segmentation-offload message
/// each when `gso` (see [`udp_batch::plan_messages`]). Returns how many
/// *datagrams* were sent (at least one).
///
/// # Errors
/// The first message's error, and whether it was an offload one (the caller
/// then retries without).
pub(crate) fn send_from_ring<'a>(
    fd: BorrowedFd<'_>,
    batch: impl Iterator<Item = (&'a SockAddr, &'a ReadSegments)>,
    gso: bool,
) -> Result<usize, SendError> {
    // Every payload is one or two iovecs (it may wrap around the ring's end).
    let iovs: Vec<(&SockAddr, [libc::iovec; 2], usize)> = batch
        .map(|(to, p)| {
            let (v, n) = p.iovecs();
            (to, v, n)
        })
        .collect();
    let datagrams: Vec<RawDatagram<'_>> = iovs
        .iter()
        .map(|(to, v, n)| RawDatagram {
            to,
            payload: v.get(..*n).unwrap_or(&[]),
        })
        .collect();
    // SAFETY: each iovec comes from a `ReadSegments`, which keeps the mapping
    // and the ring's block alive (they are borrowed across the call) and
    // describes published bytes of the guest's ring, which the kernel only
    // reads. A guest that scribbles on them meanwhile changes only what is
    // sent.
    unsafe {
        udp_batch::send_batch_raw(fd, &datagrams, gso, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }
}

/// `recvmsg` of one datagram into `room` (free space of a guest's ring, after
/// a header's worth), or, with no room, into a scratch byte so that it is
/// dropped. `truncated` is set when it did not fit.
///
/// # Errors
/// The system call's error (`WouldBlock` when nothing waits).
pub(crate) fn recv_into(fd: BorrowedFd<'_>, room: Option<&WriteSegments>) -> io::Result<Received> {
    let mut scratch = [0u8; 1];
    let (mut iov, iovlen) = match room {
        Some(r) => r.iovecs(),
        None => (
            [
                libc::iovec {
                    iov_base: scratch.as_mut_ptr().cast(),
                    iov_len: scratch.len(),
                },
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
            ],
            1,
        ),
    };
    let iov = iov.get_mut(..iovlen).unwrap_or(&mut []);
    // SAFETY: the iovecs are either `scratch` or come from a `WriteSegments`,
    // which keeps the mapping alive (borrowed across the call) and describes
    // free space of the guest's ring that no honest guest touches until it is
    // published and that no reference covers; the kernel writes at most their
    // total length.
    unsafe { udp_batch::recv_raw(fd, iov, libc::MSG_DONTWAIT) }
}
