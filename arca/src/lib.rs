//! The arca guest library: `std::net`-shaped TCP and UDP for a guest with no network of its own.
//!
//! A guest shares a memory region with the **monitor**, a host process that makes the real
//! socket calls on its behalf (see `PROTOCOL.md` and `DATAPIPE.md` at the workspace root).
//! [`ArcaSession`] attaches to the monitor — through the inherited descriptor named by
//! `ARCA_FD` ([`ArcaSession::from_env`], for a guest started by `arca-monitor run`) or a Unix
//! socket path ([`ArcaSession::attach`], for `arca-monitor serve --socket PATH`) — and hands
//! out sockets that behave like their `std::net` namesakes:
//!
//! - [`TcpStream`] ([`ArcaSession::connect`], [`connect_timeout`](ArcaSession::connect_timeout))
//!   and [`TcpListener`] ([`ArcaSession::bind`]): blocking `Read`/`Write`, half-close with
//!   `shutdown`, timeouts, non-blocking mode, `TCP_NODELAY`;
//! - [`UdpSocket`] ([`ArcaSession::bind_udp`], [`bind_udp_reuse`](ArcaSession::bind_udp_reuse)
//!   for several receivers on one port): `send_to`/`recv_from`, `connect` + `send`/`recv`,
//!   every datagram whole, broadcast, TTL, and multicast — `join_multicast_v4`/`_v6`,
//!   `leave_multicast_*`, `set_multicast_if_v4`, loop and TTL settings.
//!
//! Errors carry `std::net`'s `io::ErrorKind`s (`ConnectionRefused`, `AddrInUse`,
//! `ConnectionReset`, `BrokenPipe`, …); what the monitor's policy refuses (an address, a
//! listen port, a multicast group) is `PermissionDenied`, a spent quota `QuotaExceeded`.
//! Addresses are given as [`ToSocketAddrs`] (the shapes of `std`'s): a host name in one
//! (`"api.example.com:443"`) is resolved **by the monitor** (the guest has no resolver), and
//! [`ArcaSession::lookup_host`] asks for a name's addresses directly. A connect tries each
//! address of a name in turn, so a refused or unreachable first address falls through to the
//! next.
//!
//! Application bytes never cross the control pipe: each connection and each UDP socket has
//! its own data pipe in the shared region, which the monitor relays to and from its kernel
//! socket.
//!
//! # Liveness
//! The session socket stays open for the session's life. When the monitor goes away, every
//! blocked call returns `ConnectionAborted` promptly (the library's dispatcher thread sees the
//! socket hang up), and every later call fails the same way.
//!
//! # Features
//! - default: blocking sockets only. Dependencies: `shm-ring`, `arca-wire`, `nix`, `libc`.
//! - `tokio`: the `arca::tokio` module, `AsyncRead`/`AsyncWrite` streams with an async
//!   connect and accept. It adds tokio *with no features* (tokio and `pin-project-lite`):
//!   tasks are woken by the session's dispatcher thread, not by tokio's reactor, so `mio` and
//!   `socket2` stay out of the guest. The application enables the runtime features it runs on
//!   (`rt-multi-thread`, `macros`, `io-util`, …).
//!
//! # Examples
//! TCP, as a guest started by `arca-monitor run -- PROGRAM`:
//! ```no_run
//! use std::io::{Read, Write};
//!
//! let session = arca::ArcaSession::from_env()?;
//! let mut stream = session.connect("127.0.0.1:8080")?;
//! stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
//! let mut reply = String::new();
//! stream.read_to_string(&mut reply)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! UDP, as a guest of `arca-monitor serve --socket /run/arca.sock`: echo one datagram, then
//! join a multicast group and receive from it on port 5000.
//! ```no_run
//! use std::net::Ipv4Addr;
//!
//! let session = arca::ArcaSession::attach("/run/arca.sock")?;
//! let sock = session.bind_udp("127.0.0.1:0")?;
//! let mut buf = [0u8; 65_536];
//! let (n, from) = sock.recv_from(&mut buf)?;
//! sock.send_to(&buf[..n], from)?;
//!
//! let group = Ipv4Addr::new(239, 1, 2, 3);
//! let member = session.bind_udp_reuse((Ipv4Addr::UNSPECIFIED, 5000))?;
//! member.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
//! let (n, from) = member.recv_from(&mut buf)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The workspace's `examples/` hold complete programs: `http_get`, `tokio_server`, `udp_echo`
//! (with multicast) and `attach_guest`.

#![warn(missing_docs)]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod addrs;
mod bootstrap;
mod listener;
mod session;
mod stream;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arca_wire::Message;

pub use addrs::ToSocketAddrs;
pub use listener::{Incoming, TcpListener};
pub use stream::TcpStream;
pub use udp::UdpSocket;

use session::{lock, op_error, Owner};
use stream::unexpected;

/// Environment variable naming the inherited session descriptor (`arca-monitor run`).
pub const ENV_FD: &str = "ARCA_FD";

/// Listen backlog asked for by [`ArcaSession::bind`] (0 lets the monitor choose).
const DEFAULT_BACKLOG: u32 = 0;

/// A guest's session with the monitor. Cheap to clone; `Send + Sync`.
///
/// The session lives while any clone, stream or listener of it does; when the last one is
/// dropped the library's dispatcher thread stops and the session socket closes, which tells
/// the monitor to release everything.
#[derive(Debug, Clone)]
pub struct ArcaSession {
    owner: Arc<Owner>,
}

/// The session made from `ARCA_FD`, shared by every `from_env` call while it lives.
static ENV_SESSION: Mutex<(bool, Option<Weak<Owner>>)> = Mutex::new((false, None));

impl ArcaSession {
    /// Attaches through the session descriptor inherited from `arca-monitor run` (its number
    /// is in `ARCA_FD`). Later calls return the same session while it lives.
    ///
    /// # Errors
    /// `NotFound` if `ARCA_FD` is unset, `InvalidInput` if it is not a descriptor number,
    /// `NotConnected` if the inherited session already ended; otherwise as
    /// [`from_fd`](Self::from_fd).
    pub fn from_env() -> io::Result<ArcaSession> {
        let mut g = lock(&ENV_SESSION);
        if let Some(owner) = g.1.as_ref().and_then(Weak::upgrade) {
            return Ok(ArcaSession { owner });
        }
        if g.0 {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "arca: the session inherited through ARCA_FD has ended",
            ));
        }
        let raw = std::env::var(ENV_FD).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "arca: ARCA_FD is not set (run under `arca-monitor run`)",
            )
        })?;
        let fd: i32 = raw.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("arca: ARCA_FD={raw:?} is not a descriptor number"),
            )
        })?;
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("arca: ARCA_FD={fd} is negative"),
            ));
        }
        check_seqpacket(fd)?;
        g.0 = true;
        // SAFETY: the monitor gave us this descriptor for the session; `ENV_SESSION.0` makes
        // sure it is taken into ownership once per process, and `check_seqpacket` confirmed
        // it is an open SOCK_SEQPACKET socket.
        #[allow(unsafe_code)]
        let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let s = ArcaSession::from_fd(sock)?;
        g.1 = Some(Arc::downgrade(&s.owner));
        Ok(s)
    }

    /// Attaches to a monitor serving guests at `path` (`arca-monitor serve --socket PATH`).
    ///
    /// # Errors
    /// The socket calls' errors (with the path); otherwise as [`from_fd`](Self::from_fd).
    pub fn attach(path: impl AsRef<Path>) -> io::Result<ArcaSession> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let path = path.as_ref();
        let ctx = |e: nix::Error| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("arca: attach to {}: {e}", path.display()),
            )
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(ctx)?;
        connect(sock.as_raw_fd(), &UnixAddr::new(path).map_err(ctx)?).map_err(ctx)?;
        ArcaSession::from_fd(sock)
    }

    /// Runs a session over an already connected session socket: receives the bootstrap,
    /// maps the region, starts the dispatcher and performs the handshake.
    ///
    /// # Errors
    /// `TimedOut` if no bootstrap comes within 10 s, `InvalidData` for a bootstrap or layout
    /// that does not check out, the monitor's handshake refusal, or `ConnectionAborted` if the
    /// monitor goes away meanwhile.
    pub fn from_fd(sock: OwnedFd) -> io::Result<ArcaSession> {
        Ok(ArcaSession {
            owner: session::start(sock)?,
        })
    }

    /// True until the monitor is known to be gone.
    pub fn is_alive(&self) -> bool {
        !self.owner.shared.probe_dead()
    }

    /// The addresses `host` names: a `"host:port"` string, a `("host", port)` pair or any
    /// other [`ToSocketAddrs`], as `std::net::ToSocketAddrs::to_socket_addrs` and tokio's
    /// `lookup_host` take it. A host name is resolved by the monitor (its resolver, its cache,
    /// its policy); an address is returned as it is, with no request.
    ///
    /// An address learned this way through a name the monitor's policy allows by name may
    /// be connected to for the answer's TTL (POLICY.md §5).
    ///
    /// # Errors
    /// `InvalidInput` for a string that is not `host:port` or a name of bad form (non-ASCII:
    /// use the `xn--` form; NUL, spaces, empty labels) — refused before anything is sent;
    /// `NotFound` (`NoSuchName`) for a name that does not exist or has no address;
    /// `PermissionDenied` for a name the policy denies; `TimedOut`; `QuotaExceeded`; `Other`
    /// (`ResolverFailure`) when the monitor's resolver fails.
    pub fn lookup_host(
        &self,
        host: impl ToSocketAddrs,
    ) -> io::Result<std::vec::IntoIter<SocketAddr>> {
        addrs::resolve(&self.owner.shared, &host).map(Vec::into_iter)
    }

    /// Opens a connection, trying each address `addr` names in turn (a name is resolved by
    /// the monitor): a refused or unreachable address falls through to the next.
    ///
    /// # Errors
    /// The last address's error (`ConnectionRefused`, `TimedOut`, …), the resolver's
    /// ([`lookup_host`](Self::lookup_host)), or `InvalidInput` if `addr` names no address.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        self.connect_each(addrs::resolve(&self.owner.shared, &addr)?, None)
    }

    /// Opens a connection, giving up after `timeout` (enforced by the monitor) for each
    /// address `addr` names, tried in turn as [`connect`](Self::connect) does.
    ///
    /// # Errors
    /// `InvalidInput` for a zero timeout (as `std`), `TimedOut` when it passes, the
    /// resolver's error, or the connection's.
    pub fn connect_timeout(
        &self,
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        let ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        self.connect_each(addrs::resolve(&self.owner.shared, &addr)?, Some(ms))
    }

    /// Tries each address in turn; the first connection wins.
    fn connect_each(
        &self,
        list: Vec<SocketAddr>,
        timeout_ms: Option<u32>,
    ) -> io::Result<TcpStream> {
        let mut last = None;
        for a in list {
            match self.connect_with(a, timeout_ms.unwrap_or(0)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any addresses",
            )
        }))
    }

    fn connect_with(&self, addr: SocketAddr, timeout_ms: u32) -> io::Result<TcpStream> {
        let reply = self
            .owner
            .shared
            .request(&Message::ConnectRequest { addr, timeout_ms })?;
        match reply {
            Message::ConnectOk {
                conn,
                pipe,
                local,
                peer,
            } => TcpStream::attach(Arc::clone(&self.owner), conn, pipe, local, peer),
            Message::ConnectErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "connect to", Some(addr)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Binds a listener, trying each address `addr` resolves to in turn (as `std`). Port 0
    /// asks the host for a free port; [`TcpListener::local_addr`] tells which.
    ///
    /// # Errors
    /// The last address's error (`AddrInUse`, `PermissionDenied`, …), or `InvalidInput` if
    /// `addr` resolves to nothing.
    pub fn bind(&self, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for a in addrs::resolve(&self.owner.shared, &addr)? {
            match self.bind_one(a) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any addresses",
            )
        }))
    }

    /// Opens a UDP socket bound to `addr` (the first address it resolves to, as `std`'s
    /// `UdpSocket::bind` tries each in turn). Port 0 asks the host for a free port.
    ///
    /// # Errors
    /// `AddrInUse`, `PermissionDenied`, … or `InvalidInput` if `addr` resolves to nothing.
    pub fn bind_udp(&self, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        self.bind_udp_with(addr, 0)
    }

    /// Like [`bind_udp`](Self::bind_udp), with `SO_REUSEADDR` set first, so that several
    /// sockets that all set it (multicast receivers, say) may bind one port.
    ///
    /// # Errors
    /// As [`bind_udp`](Self::bind_udp).
    pub fn bind_udp_reuse(&self, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        self.bind_udp_with(addr, arca_wire::UDP_REUSE_ADDR)
    }

    fn bind_udp_with(&self, addr: impl ToSocketAddrs, flags: u32) -> io::Result<UdpSocket> {
        let mut last = None;
        for a in addrs::resolve(&self.owner.shared, &addr)? {
            let reply = self
                .owner
                .shared
                .request(&Message::UdpBind { addr: a, flags })?;
            match reply {
                Message::UdpBindOk {
                    socket,
                    pipe,
                    local,
                } => return UdpSocket::attach(Arc::clone(&self.owner), socket, pipe, local),
                Message::UdpBindErr { code } | Message::Error { code, .. } => {
                    last = Some(op_error(code, "bind udp", Some(a)));
                }
                other => return Err(unexpected(&other)),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any addresses",
            )
        }))
    }

    fn bind_one(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let reply = self.owner.shared.request(&Message::ListenRequest {
            addr,
            backlog: DEFAULT_BACKLOG,
        })?;
        match reply {
            Message::ListenOk { listener, local } => {
                Ok(TcpListener::new(Arc::clone(&self.owner), listener, local))
            }
            Message::ListenErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "bind", Some(addr)))
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// Confirms `fd` is an open `SOCK_SEQPACKET` socket before taking ownership of it.
fn check_seqpacket(fd: i32) -> io::Result<()> {
    // SAFETY: the borrow only lives for the getsockopt call; a closed number fails with EBADF.
    #[allow(unsafe_code)]
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match nix::sys::socket::getsockopt(&b, nix::sys::socket::sockopt::SockType) {
        Ok(nix::sys::socket::SockType::SeqPacket) => Ok(()),
        Ok(t) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("arca: ARCA_FD={fd} is a {t:?} socket, not SOCK_SEQPACKET"),
        )),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("arca: ARCA_FD={fd} is not a usable socket: {e}"),
        )),
    }
}
