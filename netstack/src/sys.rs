//! Every system call of the stack that std and nix do not wrap, and so every `unsafe` block of
//! the crate: the TUN device, the interface and route ioctls, and the guest's private
//! resolver configuration. Each function states what makes its calls sound.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Returns the last OS error if `ret` is negative.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An `ifreq` naming `name`, every other byte zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is empty, too long or has a NUL"),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, sockaddrs
    // and a pointer); all-zero is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// Opens `/dev/net/tun` and creates the TUN device `name` (IP packets, no packet-info
/// header), non-blocking and close-on-exec.
///
/// # Errors
/// The open or `TUNSETIFF` error (`EPERM` without `CAP_NET_ADMIN`).
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the path is a NUL-terminated literal; `open` returns a new descriptor or -1.
    let fd = check(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by `open` and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is and outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(fd)
}

/// A datagram socket of `family`, for interface ioctls.
fn ctl_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `socket` takes integers and returns a new descriptor or -1.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs an `SIOC*` ioctl that reads (and may write) one `ifreq`.
fn ifreq_ioctl(sock: &OwnedFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request passed here (SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU,
    // SIOCSIFTXQLEN, SIOCSIFADDR, SIOCSIFNETMASK, SIOCGIFINDEX) takes a pointer to one
    // `ifreq`, which `req` is, exclusively borrowed for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) })?;
    Ok(())
}

/// A `sockaddr` holding the IPv4 address `a` (port 0).
fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` have the same size (16 bytes) and both are plain
    // old data; the kernel reads the family and interprets the rest as `sockaddr_in`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Brings the interface `name` up, sets its MTU and transmit queue length (0 keeps each).
///
/// # Errors
/// The first ioctl that fails.
pub fn link_up(name: &str, mtu: u32, txqueuelen: u32) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET)?;
    if mtu != 0 {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu).map_err(io::Error::other)?;
        ifreq_ioctl(&sock, libc::SIOCSIFMTU as _, &mut req)?;
    }
    if txqueuelen != 0 {
        let mut req = ifreq(name)?;
        // `ifr_qlen` shares the union with `ifru_metric`/`ifru_mtu`: an int at offset 16.
        req.ifr_ifru.ifru_metric = libc::c_int::try_from(txqueuelen).map_err(io::Error::other)?;
        ifreq_ioctl(&sock, libc::SIOCSIFTXQLEN as _, &mut req)?;
    }
    let mut req = ifreq(name)?;
    ifreq_ioctl(&sock, libc::SIOCGIFFLAGS as _, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the union's `ifru_flags` member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ifreq_ioctl(&sock, libc::SIOCSIFFLAGS as _, &mut req)
}

/// Asks whether `name` has carrier (`ETHTOOL_GLINK`). The kernel handles the device's
/// pending link-state events before it answers, so they no longer arrive later.
///
/// # Errors
/// The ioctl's error.
pub fn sync_link_state(name: &str) -> io::Result<bool> {
    /// `struct ethtool_value` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_GLINK: u32 = 0x0000_000a;
    let sock = ctl_socket(libc::AF_INET)?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GLINK,
        data: 0,
    };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads one `ifreq` whose `ifr_data` points at an `ethtool_value`
    // (for ETHTOOL_GLINK), which `value` is; both outlive the call and are exclusively
    // borrowed for it.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCETHTOOL as _,
            &mut req as *mut libc::ifreq,
        )
    })?;
    Ok(value.data != 0)
}

/// The interface index of `name`.
///
/// # Errors
/// `ENODEV` when there is no such interface.
pub fn if_index(name: &str) -> io::Result<i32> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    ifreq_ioctl(&sock, libc::SIOCGIFINDEX as _, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the union's `ifru_ifindex` member.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Gives `name` the IPv4 address `addr/prefix`.
///
/// # Errors
/// The ioctl's error.
pub fn add_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    ifreq_ioctl(&sock, libc::SIOCSIFADDR as _, &mut req)?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ifreq_ioctl(&sock, libc::SIOCSIFNETMASK as _, &mut req)
}

/// Gives the interface `index` the IPv6 address `addr/prefix`.
///
/// # Errors
/// The ioctl's error (`EAFNOSUPPORT` where IPv6 is off).
pub fn add_ipv6(index: i32, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET6)?;
    let mut req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: index,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `in6_ifreq`, which `req` is.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &mut req as *mut libc::in6_ifreq,
        )
    })?;
    Ok(())
}

/// `struct rtentry` of `<net/route.h>` (glibc's and the kernel's layout, 64-bit and 32-bit).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `struct in6_rtmsg` of `<linux/ipv6_route.h>`.
#[repr(C)]
struct In6RtMsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

/// Adds `0.0.0.0/0 dev name`.
///
/// # Errors
/// The ioctl's error.
pub fn add_default_route_v4(name: &str) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET)?;
    let dev = CString::new(name).map_err(io::Error::other)?;
    let rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT on an AF_INET socket reads one `rtentry`, which `rt` is (same
    // layout), and the NUL-terminated device name `rt_dev` points at; both outlive the call.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &rt as *const RtEntry,
        )
    })?;
    Ok(())
}

/// Adds `::/0 dev index`.
///
/// # Errors
/// The ioctl's error.
pub fn add_default_route_v6(index: i32) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET6)?;
    let zero = libc::in6_addr { s6_addr: [0; 16] };
    let rt = In6RtMsg {
        dst: zero,
        src: zero,
        gateway: zero,
        kind: 0,
        dst_len: 0,
        src_len: 0,
        metric: 1,
        info: 0,
        flags: u32::from(libc::RTF_UP),
        ifindex: index,
    };
    // SAFETY: SIOCADDRT on an AF_INET6 socket reads one `in6_rtmsg`, which `rt` is (same
    // layout), borrowed for the call.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &rt as *const In6RtMsg,
        )
    })?;
    Ok(())
}

/// One `read(2)` into `buf`.
///
/// # Errors
/// The system call's error (`WouldBlock` when nothing waits).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes and exclusively borrowed for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One `write(2)` of `buf`.
///
/// # Errors
/// The system call's error.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for `buf.len()` bytes for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Gives this process a mount namespace of its own and, in it, bind-mounts `source` over
/// `target`: the guest sees `source`'s contents at `target`, the host's file is untouched.
///
/// # Errors
/// The `unshare` or `mount` error.
pub fn private_bind(source: &Path, target: &Path) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // Mounts made here must not propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// Sets close-on-exec on `fd`, so that programs the stack starts do not inherit it.
///
/// # Errors
/// `EBADF` when `fd` is not open.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD take and return integers; a closed `fd` fails with EBADF.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Registers `fd` (the TUN device) with the running tokio reactor for readability.
///
/// # Errors
/// The registration's error.
///
/// # Panics
/// Outside a tokio runtime (tokio's own rule).
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`, so it stays open and names the
    // same file description until the `AsyncFd` drops it, and `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Sets `cmd`'s program to start with no signal blocked (the stack blocks its stop signals
/// for the thread that passes them on) and to be killed (SIGKILL) when the thread that
/// started it, and so the stack, exits.
pub fn prepare_program(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // sigemptyset, sigprocmask and prctl, which are async-signal-safe, on a local set; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(none.as_mut_ptr()) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
