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

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on 64-bit Linux: after
/// `si_signo`, `si_errno`, `si_code` and padding (16 bytes) comes the union
/// whose `_sigsys` member is `{ void *_call_addr; int _syscall; unsigned int
/// _arch; }` (include/uapi/asm-generic/siginfo.h).
#[cfg(target_pointer_width = "64")]
const SI_SYSCALL_OFFSET: usize = 24;

/// The exit status of a monitor stopped by its seccomp filter: 128 + SIGSYS,
/// what a shell reports for a process that signal killed.
pub(crate) const EXIT_FORBIDDEN_CALL: i32 = 128 + libc::SIGSYS;

/// Installs the SIGSYS handler that reports a system call the seccomp filter
/// refused (`SECCOMP_RET_TRAP`) on stderr, naming it, and ends the process
/// with [`EXIT_FORBIDDEN_CALL`].
///
/// # Errors
/// The `sigaction` error.
#[cfg(target_pointer_width = "64")]
pub(crate) fn install_sigsys_reporter() -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty mask,
    // null handler) that is filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    sa.sa_sigaction = handler as libc::sighandler_t;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa.sa_mask` is a valid, owned `sigset_t`; `sa` lives across
    // the call and the old action is not asked for. The handler only makes
    // async-signal-safe calls (see `on_sigsys`).
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(target_pointer_width = "64")]
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid `siginfo_t` (128 bytes) to an
        // SA_SIGINFO handler; for a seccomp SIGSYS its `_sigsys._syscall`
        // member is at SI_SYSCALL_OFFSET. An unaligned read needs no more.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) }
    };
    let mut line = crate::confine::ReportLine::new();
    line.push(b"arca-monitor: confinement: forbidden system call ");
    match crate::confine::syscall_name(nr) {
        Some(name) => {
            line.push(name.as_bytes());
            line.push(b" (");
            line.push_number(nr);
            line.push(b")");
        }
        None => {
            line.push(b"number ");
            line.push_number(nr);
        }
    }
    line.push(b"; stopping (SECURITY.md)\n");
    let bytes = line.as_bytes();
    // SAFETY: `write` and `_exit` are async-signal-safe; `bytes` is a live
    // stack buffer of that length.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_FORBIDDEN_CALL);
    }
}

/// `capget`/`capset`'s header (`_LINUX_CAPABILITY_VERSION_3`, this thread).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One half (capabilities 0–31 or 32–63) of `capset`'s data.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective and permitted capabilities to `keep` (a bit
/// per capability number) and its inheritable set to nothing.
///
/// # Errors
/// The `capset` error (`EPERM` when `keep` holds one not permitted now).
pub(crate) fn set_capabilities(keep: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |bits: u64| {
        let bits = u32::try_from(bits & u64::from(u32::MAX)).unwrap_or(0);
        CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        }
    };
    let data = [half(keep), half(keep >> 32)];
    // SAFETY: `header` and `data` are live, properly laid out (repr(C)) and
    // sized for version 3 (two data elements); the kernel only reads `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The capability numbers this kernel knows: 0 to this, inclusive.
fn last_capability() -> u32 {
    (0..64u32)
        // SAFETY: PR_CAPBSET_READ takes a plain integer and reads nothing
        // from memory; it fails with EINVAL past the last capability.
        .take_while(|&cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } >= 0)
        .last()
        .unwrap_or(0)
}

/// Drops every capability but `keep` from this thread's bounding set, and
/// clears its ambient set.
///
/// # Errors
/// The first `prctl` error (`EPERM` without `CAP_SETPCAP`).
pub(crate) fn drop_bounding_set(keep: u64) -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes plain integers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3).
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    for cap in 0..=last_capability() {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ and PR_CAPBSET_DROP take plain integers.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        // SAFETY: as above.
        if held == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `ptrace(PTRACE_TRACEME)`: a call the confined monitor must never make,
/// attempted on request by the `confine-test` build.
#[cfg(feature = "confine-test")]
pub(crate) fn ptrace_traceme() -> io::Result<()> {
    // SAFETY: PTRACE_TRACEME takes no memory arguments.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_TRACEME,
            0,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
