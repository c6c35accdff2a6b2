//! The kernel socket calls a session makes on a guest's behalf, behind one
//! trait.
//!
//! A session decides (policy, quotas, replies, timers) and calls [`Net`] for
//! every socket it opens: the event loop lends it [`Kernel`], which makes the
//! system calls; the session's unit tests lend it one that scripts outcomes
//! (a refused connect, a handshake that never ends, `EMFILE` on accept) so
//! each reply can be checked without a network that misbehaves on cue.
//! Moving bytes on an open socket is the relays' business, not this trait's.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Opens, accepts and reports on the sockets of a session.
pub trait Net {
    /// Starts a non-blocking TCP connect to `addr`.
    fn connect(&self, addr: SocketAddr) -> io::Result<mio::net::TcpStream>;

    /// The outcome of a connect started by [`Net::connect`]: `None` while the
    /// handshake is in flight.
    fn connect_outcome(&self, sock: &mio::net::TcpStream) -> Option<io::Result<()>>;

    /// A non-blocking listening socket on `addr` (`SO_REUSEADDR`, IPv6 only
    /// for IPv6 addresses).
    fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener>;

    /// Accepts one connection from `listener`.
    fn accept(
        &self,
        listener: &mio::net::TcpListener,
    ) -> io::Result<(mio::net::TcpStream, SocketAddr)>;

    /// A non-blocking UDP socket bound to `addr`, with `SO_REUSEADDR` if
    /// `reuse`.
    fn bind_udp(&self, addr: SocketAddr, reuse: bool) -> io::Result<mio::net::UdpSocket>;
}

/// The host kernel: every call is the system call its name says.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl Net for Kernel {
    fn connect(&self, addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
        mio::net::TcpStream::connect(addr)
    }

    /// A peer address means connected (one system call, the usual answer on
    /// loopback); otherwise `SO_ERROR` tells a failure from a handshake in
    /// flight.
    fn connect_outcome(&self, sock: &mio::net::TcpStream) -> Option<io::Result<()>> {
        match sock.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == ErrorKind::NotConnected => match sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(Err(e)),
                Ok(None) => None,
            },
            Err(e) => Some(Err(e)),
        }
    }

    fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener> {
        use nix::sys::socket::{
            self as s, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
        };
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = s::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        s::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        if addr.is_ipv6() {
            s::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        }
        s::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
        let backlog = s::Backlog::new(i32::try_from(backlog).unwrap_or(i32::MAX))
            .unwrap_or(s::Backlog::MAXCONN);
        s::listen(&fd, backlog)?;
        Ok(mio::net::TcpListener::from_std(
            std::net::TcpListener::from(fd),
        ))
    }

    fn accept(
        &self,
        listener: &mio::net::TcpListener,
    ) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        listener.accept()
    }

    fn bind_udp(&self, addr: SocketAddr, reuse: bool) -> io::Result<mio::net::UdpSocket> {
        crate::udp::bind(addr, reuse)
    }
}
