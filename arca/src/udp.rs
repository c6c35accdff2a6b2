//! `UdpSocket`: datagrams through a datagram pipe the monitor relays (DATAPIPE.md §10).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::addrs::{self, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_wire::{
    max_datagram_for, ConnId, DatagramHeader, ErrorCode, Handle, MembershipOp, Message, PipeInfo,
    SocketOption, DATAGRAM_HEADER_LEN,
};
use shm_ring::{Consumer, PipeStatus, Producer, RingError, WaitError};

use crate::session::{gone, lock, op_error, Owner, SessionWait};
use crate::stream::unexpected;

/// A UDP socket opened through the monitor, shaped like [`std::net::UdpSocket`].
///
/// Every datagram crosses whole: a send either queues all of it or (non-blocking) gives
/// `WouldBlock`; a datagram longer than UDP allows is refused with `InvalidInput` before
/// anything is sent. Sends are handed to the monitor, so an error the host reports for one
/// (no route, broadcast not enabled, denied by policy) arrives later, through
/// [`take_error`](Self::take_error), as with an ICMP error on a kernel socket. Datagrams that
/// arrive while the socket's receive ring is full are dropped and counted
/// ([`dropped`](Self::dropped)), as a kernel socket buffer would drop them.
///
/// All methods take `&self`; one thread may receive while another sends. Dropping the last
/// handle (see [`try_clone`](Self::try_clone)) closes the socket.
#[derive(Debug, Clone)]
pub struct UdpSocket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    owner: Arc<Owner>,
    id: ConnId,
    local: Mutex<SocketAddr>,
    peer: Mutex<Option<SocketAddr>>,
    status: PipeStatus,
    rx: Mutex<Consumer>,
    tx: Mutex<Producer>,
    nonblocking: AtomicBool,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    /// Last values set, for the getters (the host's defaults until then).
    broadcast: AtomicBool,
    multicast_loop_v4: AtomicBool,
    multicast_loop_v6: AtomicBool,
    multicast_ttl_v4: AtomicU32,
    ttl: AtomicU32,
}

fn timeout_arg(t: Option<Duration>) -> io::Result<Option<Duration>> {
    if t == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(t)
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        "arca: operation timed out (resource temporarily unavailable)",
    )
}

/// The first address `addr` names (a name is resolved by the monitor).
fn first_addr(shared: &crate::session::Shared, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addrs::resolve(shared, &addr)?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to"))
}

impl UdpSocket {
    /// Wraps a socket the monitor announced; on a bad pipe, asks the monitor to close it.
    pub(crate) fn attach(
        owner: Arc<Owner>,
        id: ConnId,
        pipe: PipeInfo,
        local: SocketAddr,
    ) -> io::Result<UdpSocket> {
        if u64::from(pipe.cap_to_monitor) < (DATAGRAM_HEADER_LEN + 65_536) as u64 {
            owner.shared.fire(&Message::Close {
                handle: Handle::Udp(id),
            });
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "arca: udp pipe ring of {} bytes cannot hold a whole datagram",
                    pipe.cap_to_monitor
                ),
            ));
        }
        let p = match owner.shared.attach_pipe(id, pipe) {
            Ok(p) => p,
            Err(e) => {
                owner.shared.fire(&Message::Close {
                    handle: Handle::Udp(id),
                });
                return Err(e);
            }
        };
        let status = p.status();
        let (tx, rx) = p.split();
        Ok(UdpSocket {
            inner: Arc::new(Inner {
                owner,
                id,
                local: Mutex::new(local),
                peer: Mutex::new(None),
                status,
                rx: Mutex::new(rx),
                tx: Mutex::new(tx),
                nonblocking: AtomicBool::new(false),
                read_timeout: Mutex::new(None),
                write_timeout: Mutex::new(None),
                broadcast: AtomicBool::new(false),
                multicast_loop_v4: AtomicBool::new(true),
                multicast_loop_v6: AtomicBool::new(true),
                multicast_ttl_v4: AtomicU32::new(1),
                ttl: AtomicU32::new(64),
            }),
        })
    }

    /// The socket's id in the session (for logs and tests).
    pub fn socket_id(&self) -> u32 {
        self.inner.id.0
    }

    /// Sends one datagram to `addr` (the first address it resolves to).
    ///
    /// # Errors
    /// `InvalidInput` for a datagram longer than UDP allows (65 507 bytes over IPv4, 65 527
    /// over IPv6); `WouldBlock` when non-blocking (or past the write timeout) with no room in
    /// the ring; `ConnectionAborted` once the monitor is gone or closed the socket.
    pub fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        let addr = first_addr(&self.inner.owner.shared, addr)?;
        self.send_impl(buf, addr)
    }

    /// Sends one datagram to the connected peer.
    ///
    /// # Errors
    /// `NotConnected` before [`connect`](Self::connect); otherwise as [`send_to`](Self::send_to).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let peer = (*lock(&self.inner.peer)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "arca: udp socket not connected",
            )
        })?;
        self.send_impl(buf, peer)
    }

    /// Sends several datagrams to `addr`, each gathered from its parts (as an `iovec` list
    /// would be), and hands them to the monitor together: one publish and at most one
    /// doorbell per batch instead of per datagram. This is the call for a sender that
    /// streams many datagrams (a multicast distributor, say).
    ///
    /// Returns how many datagrams were queued, in order. Blocking, that is all of them;
    /// non-blocking (or once the write timeout passes) it is as many as had room, and
    /// `WouldBlock` (or `TimedOut`) only if that is none.
    ///
    /// # Errors
    /// As [`send_to`](Self::send_to); a datagram too large for UDP is refused with
    /// `InvalidInput` before any of the batch is queued.
    pub fn send_many_to<R: AsRef<[P]>, P: AsRef<[u8]>>(
        &self,
        datagrams: &[R],
        addr: impl ToSocketAddrs,
    ) -> io::Result<usize> {
        let addr = first_addr(&self.inner.owner.shared, addr)?;
        let mut headers = Vec::with_capacity(datagrams.len());
        for d in datagrams {
            let len = d.as_ref().iter().map(|p| p.as_ref().len()).sum();
            headers.push(Self::header(len, addr)?.to_bytes());
        }
        // Each record: the datagram header, then the datagram's parts.
        let records: Vec<Vec<&[u8]>> = datagrams
            .iter()
            .zip(&headers)
            .map(|(d, h)| {
                let mut parts = Vec::with_capacity(d.as_ref().len() + 1);
                parts.push(&h[..]);
                parts.extend(d.as_ref().iter().map(AsRef::as_ref));
                parts
            })
            .collect();
        self.queue(&records, true)
    }

    fn header(len: usize, addr: SocketAddr) -> io::Result<DatagramHeader> {
        DatagramHeader::new(len, addr).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "arca: {e} (the UDP limit for {addr}, {} bytes)",
                    max_datagram_for(&addr)
                ),
            )
        })
    }

    fn send_impl(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        let raw = Self::header(buf.len(), addr)?.to_bytes();
        self.queue(&[[&raw[..], buf]], false)?;
        Ok(buf.len())
    }

    /// Queues whole records (header and payload parts) into the send ring, waiting for room
    /// as the socket's mode says. With `partial`, returns once some are queued and the rest
    /// would have to wait past the mode's limit; otherwise all or an error.
    fn queue<R: AsRef<[P]>, P: AsRef<[u8]>>(
        &self,
        records: &[R],
        partial: bool,
    ) -> io::Result<usize> {
        let i = &self.inner;
        let deadline = lock(&i.write_timeout).map(|t| Instant::now() + t);
        let mut tx = lock(&i.tx);
        let mut done = 0;
        while done < records.len() {
            match tx.write_records(&records[done..]) {
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(RingError::WouldBlock) => {}
                Err(RingError::BrokenPipe | RingError::Closed) => return Err(self.closed_error()),
                Err(e) => return Err(e.into()),
            }
            let stop = |e: io::Error| {
                if partial && done > 0 {
                    Ok(done)
                } else {
                    Err(e)
                }
            };
            if i.nonblocking.load(Ordering::Relaxed) {
                return stop(io::ErrorKind::WouldBlock.into());
            }
            let w = SessionWait {
                shared: &i.owner.shared,
                cancel: None,
            };
            let need: usize = records[done]
                .as_ref()
                .iter()
                .map(|p| p.as_ref().len())
                .sum();
            match tx.wait_writable_for(&w, deadline, need) {
                Ok(()) => {}
                Err(WaitError::TimedOut) => return stop(timed_out()),
                Err(WaitError::PeerGone) => return Err(gone()),
                Err(WaitError::Io(e)) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Receives one datagram; returns its length (truncated to `buf`, the rest discarded, as
    /// `std`) and its source.
    ///
    /// # Errors
    /// `WouldBlock` when non-blocking (or past the read timeout) with nothing queued;
    /// `ConnectionAborted` once the monitor is gone or closed the socket.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let i = &self.inner;
        let deadline = lock(&i.read_timeout).map(|t| Instant::now() + t);
        let mut rx = lock(&i.rx);
        loop {
            let mut raw = [0u8; DATAGRAM_HEADER_LEN];
            match rx.peek(0, &mut raw) {
                Ok(DATAGRAM_HEADER_LEN) => {
                    let header = DatagramHeader::parse(&raw).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("arca: bad datagram record from the monitor: {e}"),
                        )
                    })?;
                    let len = usize::from(header.payload_len).min(buf.len());
                    let dst = buf.get_mut(..len).unwrap_or_default();
                    let got = rx.peek(DATAGRAM_HEADER_LEN, dst)?;
                    if got == len {
                        rx.discard(header.record_len())?;
                        return Ok((len, header.addr));
                    }
                    // The monitor publishes whole records; a partial one is not ours to use.
                }
                Ok(_) => {
                    if rx.is_peer_closed() && rx.available()? < DATAGRAM_HEADER_LEN {
                        return Err(self.closed_error());
                    }
                }
                Err(RingError::Closed) => return Err(self.closed_error()),
                Err(e) => return Err(e.into()),
            }
            if i.nonblocking.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let w = SessionWait {
                shared: &i.owner.shared,
                cancel: None,
            };
            match rx.wait_readable(&w, deadline) {
                Ok(()) => {}
                Err(WaitError::TimedOut) => return Err(timed_out()),
                Err(WaitError::PeerGone) => return Err(gone()),
                Err(WaitError::Io(e)) => return Err(e),
            }
        }
    }

    /// Receives one datagram from the connected peer (the host filters out the others).
    ///
    /// # Errors
    /// As [`recv_from`](Self::recv_from).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_from(buf).map(|(n, _)| n)
    }

    /// Why the pipe is closed: the monitor's stored code, or its death.
    fn closed_error(&self) -> io::Error {
        if self.inner.owner.shared.probe_dead() {
            return gone();
        }
        match self.inner.status.take_peer() {
            0 => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "arca: udp socket closed by the monitor",
            ),
            code => op_error(
                ErrorCode::from_u16(u16::try_from(code).unwrap_or(1)),
                "udp socket",
                None,
            ),
        }
    }

    /// Sets the default peer: [`send`](Self::send) goes there and only its datagrams arrive.
    ///
    /// # Errors
    /// The host's error (for example `NetworkUnreachable`).
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        let addr = first_addr(&self.inner.owner.shared, addr)?;
        let i = &self.inner;
        match i
            .owner
            .shared
            .request(&Message::UdpConnect { socket: i.id, addr })?
        {
            Message::UdpConnectOk { local } => {
                *lock(&i.local) = local;
                *lock(&i.peer) = Some(addr);
                Ok(())
            }
            Message::UdpConnectErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "connect udp socket to", Some(addr)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The socket's local address.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(*lock(&self.inner.local))
    }

    /// The connected peer.
    ///
    /// # Errors
    /// `NotConnected` before [`connect`](Self::connect).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        (*lock(&self.inner.peer)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "arca: udp socket not connected",
            )
        })
    }

    /// The last asynchronous error the host reported for this socket (a refused send, an
    /// ICMP error), clearing it.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(match self.inner.status.take_peer() {
            0 => None,
            code => Some(op_error(
                ErrorCode::from_u16(u16::try_from(code).unwrap_or(1)),
                "udp send",
                None,
            )),
        })
    }

    /// Datagrams the monitor dropped because this socket's receive ring was full.
    pub fn dropped(&self) -> u64 {
        self.inner.status.counter()
    }

    /// Moves the socket into or out of non-blocking mode.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the receive timeout (`None` blocks forever).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as `std`.
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        *lock(&self.inner.read_timeout) = timeout_arg(dur)?;
        Ok(())
    }

    /// Sets the send timeout (`None` blocks forever).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as `std`.
    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        *lock(&self.inner.write_timeout) = timeout_arg(dur)?;
        Ok(())
    }

    /// The receive timeout.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.read_timeout))
    }

    /// The send timeout.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.write_timeout))
    }

    fn set_option(&self, option: SocketOption, value: u64, what: &str) -> io::Result<()> {
        let i = &self.inner;
        match i.owner.shared.request(&Message::SetOption {
            handle: Handle::Udp(i.id),
            option,
            value,
        })? {
            Message::SetOptionOk => Ok(()),
            Message::SetOptionErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, what, None))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// `SO_BROADCAST`.
    ///
    /// # Errors
    /// The host's error.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.set_option(SocketOption::Broadcast, u64::from(on), "set_broadcast")?;
        self.inner.broadcast.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// The last value set with [`set_broadcast`](Self::set_broadcast) (default false).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn broadcast(&self) -> io::Result<bool> {
        Ok(self.inner.broadcast.load(Ordering::Relaxed))
    }

    /// `IP_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The host's error.
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.set_option(
            SocketOption::MulticastLoopV4,
            u64::from(on),
            "set_multicast_loop_v4",
        )?;
        self.inner.multicast_loop_v4.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// The last value set with [`set_multicast_loop_v4`](Self::set_multicast_loop_v4)
    /// (default true).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn multicast_loop_v4(&self) -> io::Result<bool> {
        Ok(self.inner.multicast_loop_v4.load(Ordering::Relaxed))
    }

    /// `IP_MULTICAST_TTL`.
    ///
    /// # Errors
    /// `InvalidInput` past 255, or the host's error.
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.set_option(
            SocketOption::MulticastTtlV4,
            u64::from(ttl),
            "set_multicast_ttl_v4",
        )?;
        self.inner.multicast_ttl_v4.store(ttl, Ordering::Relaxed);
        Ok(())
    }

    /// The last value set with [`set_multicast_ttl_v4`](Self::set_multicast_ttl_v4)
    /// (default 1).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn multicast_ttl_v4(&self) -> io::Result<u32> {
        Ok(self.inner.multicast_ttl_v4.load(Ordering::Relaxed))
    }

    /// `IP_MULTICAST_IF`: the interface (by its address) multicast is sent from;
    /// `0.0.0.0` lets the routing table decide. (Not in `std`; `socket2` has it.)
    ///
    /// # Errors
    /// The host's error (for example `AddrNotAvailable`).
    pub fn set_multicast_if_v4(&self, interface: &Ipv4Addr) -> io::Result<()> {
        self.set_option(
            SocketOption::MulticastIfV4,
            u64::from(u32::from(*interface)),
            "set_multicast_if_v4",
        )
    }

    /// `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The host's error.
    pub fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()> {
        self.set_option(
            SocketOption::MulticastLoopV6,
            u64::from(on),
            "set_multicast_loop_v6",
        )?;
        self.inner.multicast_loop_v6.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// The last value set with [`set_multicast_loop_v6`](Self::set_multicast_loop_v6)
    /// (default true).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn multicast_loop_v6(&self) -> io::Result<bool> {
        Ok(self.inner.multicast_loop_v6.load(Ordering::Relaxed))
    }

    /// `IPV6_MULTICAST_IF`: the interface index multicast is sent from (0 = default).
    ///
    /// # Errors
    /// The host's error.
    pub fn set_multicast_if_v6(&self, interface: u32) -> io::Result<()> {
        self.set_option(
            SocketOption::MulticastIfV6,
            u64::from(interface),
            "set_multicast_if_v6",
        )
    }

    /// `IP_TTL` (or `IPV6_UNICAST_HOPS` on an IPv6 socket).
    ///
    /// # Errors
    /// `InvalidInput` outside 1–255, or the host's error.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.set_option(SocketOption::Ttl, u64::from(ttl), "set_ttl")?;
        self.inner.ttl.store(ttl, Ordering::Relaxed);
        Ok(())
    }

    /// The last value set with [`set_ttl`](Self::set_ttl) (default 64).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn ttl(&self) -> io::Result<u32> {
        Ok(self.inner.ttl.load(Ordering::Relaxed))
    }

    /// `SO_RCVBUF` of the host socket: how much the kernel buffers before the monitor moves
    /// datagrams into this socket's ring.
    ///
    /// # Errors
    /// The host's error.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        self.set_option(
            SocketOption::RecvBufferSize,
            bytes as u64,
            "set_recv_buffer_size",
        )
    }

    /// `SO_SNDBUF` of the host socket.
    ///
    /// # Errors
    /// The host's error.
    pub fn set_send_buffer_size(&self, bytes: usize) -> io::Result<()> {
        self.set_option(
            SocketOption::SendBufferSize,
            bytes as u64,
            "set_send_buffer_size",
        )
    }

    fn membership(
        &self,
        op: MembershipOp,
        group: SocketAddr,
        interface: Ipv4Addr,
        what: &str,
    ) -> io::Result<()> {
        let i = &self.inner;
        match i.owner.shared.request(&Message::Membership {
            socket: i.id,
            op,
            group,
            interface,
        })? {
            Message::MembershipOk => Ok(()),
            Message::MembershipErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, what, Some(group)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Joins an IPv4 multicast group on the interface with address `interface`
    /// (`0.0.0.0` = the host's default).
    ///
    /// # Errors
    /// `InvalidInput` for a non-multicast address, or the host's error.
    pub fn join_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.membership(
            MembershipOp::Join,
            SocketAddr::from((*multiaddr, 0)),
            *interface,
            "join_multicast_v4",
        )
    }

    /// Leaves an IPv4 multicast group.
    ///
    /// # Errors
    /// The host's error (`AddrNotAvailable` if not a member).
    pub fn leave_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.membership(
            MembershipOp::Leave,
            SocketAddr::from((*multiaddr, 0)),
            *interface,
            "leave_multicast_v4",
        )
    }

    /// Joins an IPv6 multicast group on interface index `interface` (0 = default).
    ///
    /// # Errors
    /// `InvalidInput` for a non-multicast address, or the host's error.
    pub fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.membership(
            MembershipOp::Join,
            SocketAddr::V6(SocketAddrV6::new(*multiaddr, 0, 0, interface)),
            Ipv4Addr::UNSPECIFIED,
            "join_multicast_v6",
        )
    }

    /// Leaves an IPv6 multicast group.
    ///
    /// # Errors
    /// The host's error.
    pub fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.membership(
            MembershipOp::Leave,
            SocketAddr::V6(SocketAddrV6::new(*multiaddr, 0, 0, interface)),
            Ipv4Addr::UNSPECIFIED,
            "leave_multicast_v6",
        )
    }

    /// Another handle to the same socket (sharing the rings and settings).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(self.clone())
    }
}
