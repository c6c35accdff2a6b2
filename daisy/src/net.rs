//! The sender's network, as a small trait with two implementations: [`StdNet`] (host
//! sockets through std and socket2) and [`ArcaNet`] (an isolated guest's sockets through the
//! arca monitor).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

/// A TCP connection as the sender shell uses it: one thread reads, another writes, a third
/// may shut it down.
pub trait NetStream: Read + Write + Send + 'static {
    /// Another handle to the same connection.
    ///
    /// # Errors
    /// As `try_clone` of the implementation.
    fn clone_stream(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Shuts the connection down.
    ///
    /// # Errors
    /// As `shutdown` of the implementation.
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()>;
}

/// A listening socket.
pub trait NetListener: Send + 'static {
    /// Connection type.
    type Stream: NetStream;
    /// Waits for the next connection.
    ///
    /// # Errors
    /// The accept error.
    fn accept_stream(&self) -> io::Result<(Self::Stream, SocketAddr)>;
}

/// A UDP socket sending to one multicast group.
pub trait McastSender {
    /// Sends each `(header, payload)` as one datagram to the group; returns how many the host
    /// took (the rest are lost and will be repaired).
    ///
    /// # Errors
    /// A send error other than a full buffer.
    fn send_packets(&mut self, pkts: &[(&[u8], &[u8])]) -> io::Result<usize>;
}

/// Multicast sending options.
#[derive(Debug, Clone, Copy)]
pub struct McastOptions {
    /// Group and port.
    pub group: SocketAddrV4,
    /// Multicast TTL.
    pub ttl: u32,
    /// Multicast loopback.
    pub looped: bool,
    /// Outgoing interface address.
    pub interface: Ipv4Addr,
}

/// What the sender needs from a network.
pub trait SenderNet {
    /// Listener type.
    type Listener: NetListener;
    /// Multicast sender type.
    type Mcast: McastSender;
    /// Listens for TCP connections on `addr`.
    ///
    /// # Errors
    /// The bind/listen error.
    fn listen(&self, addr: SocketAddr) -> io::Result<Self::Listener>;
    /// Opens a UDP socket sending to a multicast group.
    ///
    /// # Errors
    /// The socket or option error.
    fn multicast_sender(&self, opts: McastOptions) -> io::Result<Self::Mcast>;
}

/// Host sockets (std and socket2).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdNet;

impl NetStream for std::net::TcpStream {
    fn clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl NetListener for std::net::TcpListener {
    type Stream = std::net::TcpStream;
    fn accept_stream(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = self.accept()?;
        s.set_nodelay(true)?;
        Ok((s, a))
    }
}

/// A host UDP socket sending with `sendmmsg`.
#[derive(Debug)]
pub struct StdMcast {
    sock: std::net::UdpSocket,
    group: SocketAddrV4,
    /// Runs of equal datagrams go out as one segmentation-offload send (see
    /// [`sys::send_batch`]).
    gso: bool,
}

impl McastSender for StdMcast {
    fn send_packets(&mut self, pkts: &[(&[u8], &[u8])]) -> io::Result<usize> {
        sys::send_batch(self.sock.as_fd(), self.group, pkts, &mut self.gso)
    }
}

impl SenderNet for StdNet {
    type Listener = std::net::TcpListener;
    type Mcast = StdMcast;

    fn listen(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        Ok(s.into())
    }

    fn multicast_sender(&self, o: McastOptions) -> io::Result<Self::Mcast> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_multicast_ttl_v4(o.ttl)?;
        s.set_multicast_loop_v4(o.looped)?;
        s.set_multicast_if_v4(&o.interface)?;
        if sys::set_sndbuf_force(s.as_fd(), 8 << 20).is_err() {
            let _ = s.set_send_buffer_size(8 << 20);
        }
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
        Ok(StdMcast {
            sock: s.into(),
            group: o.group,
            gso: true,
        })
    }
}

/// The guest's sockets through the arca monitor (the sender in an isolated guest).
#[derive(Debug, Clone)]
pub struct ArcaNet {
    session: arca::ArcaSession,
}

impl ArcaNet {
    /// The session inherited from `arca-monitor run` (`ARCA_FD`).
    ///
    /// # Errors
    /// As [`arca::ArcaSession::from_env`].
    pub fn from_env() -> io::Result<ArcaNet> {
        Ok(ArcaNet {
            session: arca::ArcaSession::from_env()?,
        })
    }
}

impl NetStream for arca::TcpStream {
    fn clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl NetListener for arca::TcpListener {
    type Stream = arca::TcpStream;
    fn accept_stream(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = self.accept()?;
        s.set_nodelay(true)?;
        Ok((s, a))
    }
}

/// A guest UDP socket: each batch of datagrams is gathered into the socket's ring and handed
/// to the monitor at once (which sends them with `sendmmsg` on the host).
#[derive(Debug)]
pub struct ArcaMcast {
    sock: arca::UdpSocket,
    group: SocketAddrV4,
}

impl McastSender for ArcaMcast {
    fn send_packets(&mut self, pkts: &[(&[u8], &[u8])]) -> io::Result<usize> {
        // Header and payload gathered straight into the ring, the batch published to the
        // monitor at once (one doorbell per batch, not per datagram).
        let datagrams: Vec<[&[u8]; 2]> = pkts.iter().map(|&(h, p)| [h, p]).collect();
        self.sock.send_many_to(&datagrams, self.group)
    }
}

impl SenderNet for ArcaNet {
    type Listener = arca::TcpListener;
    type Mcast = ArcaMcast;

    fn listen(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        self.session.bind(addr)
    }

    fn multicast_sender(&self, o: McastOptions) -> io::Result<Self::Mcast> {
        let s = self.session.bind_udp((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_multicast_ttl_v4(o.ttl)?;
        s.set_multicast_loop_v4(o.looped)?;
        s.set_multicast_if_v4(&o.interface)?;
        // Best effort: a host policy may cap it.
        let _ = s.set_send_buffer_size(8 << 20);
        Ok(ArcaMcast {
            sock: s,
            group: o.group,
        })
    }
}
