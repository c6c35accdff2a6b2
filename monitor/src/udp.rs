//! Relaying one UDP socket between its kernel socket and its datagram pipe
//! (DATAPIPE.md §10).
//!
//! - Guest → socket: the guest's ring holds whole records (header, then
//!   payload). Each header is copied once into private memory and checked;
//!   payloads go to the kernel straight from the ring with one `sendmmsg` per
//!   batch, no copy. A socket that would block leaves the records in the ring,
//!   so the guest's sends wait: backpressure, never loss. A datagram the host
//!   refuses is dropped, counted, and its error left in the status word for the
//!   guest's `take_error`.
//! - Socket → guest: each datagram is received straight into the guest ring's
//!   free space (after room for its header), so no copy either; when the ring
//!   has no room for it the datagram is dropped and counted, as a full kernel
//!   receive buffer would drop it. Receives cannot be batched without a copy
//!   (a datagram's size is unknown until it has arrived), and a copy costs more
//!   than the system call it would save.
//! - Policy (POLICY.md): each record's destination is checked against the
//!   outbound rules, the last answer cached per socket so a stream to one
//!   peer costs a compare. A denied datagram is dropped, counted, reported
//!   through the status word as `PermissionDenied` and logged (rate-limited).
//! - The guest closing its writing half (or `Close`) ends the socket once the
//!   published records are sent.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arca_wire::{
    DatagramHeader, ErrorCode, MembershipOp, SocketOption, DATAGRAM_HEADER_LEN, MAX_DATAGRAM,
};
use shm_ring::{BidirectionalPipe, ReadSegments, RingError, WriteSegments};
use socket2::SockAddr;
use udp_batch::{Received, SendError};

use crate::sys::{recv_into, send_from_ring};

use crate::policy::{Decision, DestCache, Learned, Policy};
use crate::ratelimit::WarnLimiter;
use crate::relay::{deregister, BadRecord, IdlePasses, Progress, RelayFault, Service};

/// Which session holds `SO_REUSEADDR` UDP bindings on each `(is IPv4,
/// port)`, for one monitor. Two of its guests must not share a port, or one
/// would receive — steal — the other's unicast datagrams; within one guest,
/// sharing is allowed (several sockets of one multicast receiver). Cloning
/// shares the table (it is the monitor's, lent to each session).
#[derive(Debug, Clone, Default)]
pub struct ReuseOwners(Arc<Mutex<ReuseTable>>);

/// `(is IPv4, port)` → (the holding session, its claims).
type ReuseTable = BTreeMap<(bool, u16), (u64, usize)>;

impl ReuseOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReuseTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when a session other than `owner` holds a reuse binding on
    /// `addr`'s family and port.
    pub fn held_by_other(&self, owner: u64, addr: SocketAddr) -> bool {
        let key = (addr.is_ipv4(), addr.port());
        addr.port() != 0 && self.lock().get(&key).is_some_and(|(o, _)| *o != owner)
    }

    /// Records that session `owner` holds a reuse binding on `local` (the
    /// bound address).
    ///
    /// # Errors
    /// `AddrInUse` when another session holds one on that port.
    pub fn claim(&self, owner: u64, local: SocketAddr) -> io::Result<ReuseClaim> {
        let key = (local.is_ipv4(), local.port());
        let mut map = self.lock();
        let entry = map.entry(key).or_insert((owner, 0));
        if entry.0 != owner {
            return Err(io::Error::new(
                ErrorKind::AddrInUse,
                "port held by another guest",
            ));
        }
        entry.1 += 1;
        Ok(ReuseClaim {
            owners: self.clone(),
            key,
        })
    }
}

/// A session's share of a reuse-bound UDP port; released on drop.
#[derive(Debug)]
pub struct ReuseClaim {
    owners: ReuseOwners,
    key: (bool, u16),
}

impl Drop for ReuseClaim {
    fn drop(&mut self) {
        let mut map = self.owners.lock();
        if let Some(entry) = map.get_mut(&self.key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Records sent per `sendmmsg`.
const SEND_BATCH: usize = 32;

/// Counters for one socket (and, summed, for the monitor).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams sent for the guest.
    pub sent: u64,
    /// Datagrams the host refused to send (dropped).
    pub send_errors: u64,
    /// Datagrams delivered to the guest.
    pub received: u64,
    /// Datagrams dropped because the guest's ring was full.
    pub dropped: u64,
    /// Datagrams dropped because the policy denies their destination.
    pub denied: u64,
}

/// One UDP socket's relay state.
#[derive(Debug)]
pub struct UdpRelay {
    pipe: BidirectionalPipe,
    sock: Option<mio::net::UdpSocket>,
    /// The socket may have datagrams to read (cleared only by `WouldBlock`).
    readable: bool,
    /// The socket may accept datagrams (cleared only by `WouldBlock`).
    writable: bool,
    /// Runs of equal datagrams go out as one GSO send (cleared when the host
    /// refuses one; see [`send_batch`]).
    gso: bool,
    counters: UdpCounters,
    /// `counters.dropped` as last published to the guest.
    published_drops: u64,
    /// The outbound policy for `send_to`, if any.
    policy: Option<Arc<Policy>>,
    /// Addresses the guest learned through allowed names, judged with the policy.
    learned: Option<Arc<Learned>>,
    dests: DestCache,
    denials_logged: WarnLimiter,
    /// The owning session, for logs.
    session: u64,
    /// Held while the socket is bound with `SO_REUSEADDR`.
    _claim: Option<ReuseClaim>,
}

/// Opens a non-blocking UDP socket bound to `addr`; `reuse` sets
/// `SO_REUSEADDR` first. IPv6 sockets are IPv6-only.
///
/// # Errors
/// The failing system call's error.
pub fn bind(addr: SocketAddr, reuse: bool) -> io::Result<mio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if reuse {
        sock.set_reuse_address(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(sock.into()))
}

impl UdpRelay {
    /// A relay for a bound socket and a freshly created pipe.
    pub fn new(sock: mio::net::UdpSocket, pipe: BidirectionalPipe) -> Self {
        Self {
            pipe,
            sock: Some(sock),
            readable: true,
            writable: true,
            gso: true,
            counters: UdpCounters::default(),
            published_drops: 0,
            policy: None,
            learned: None,
            dests: DestCache::default(),
            denials_logged: WarnLimiter::new(),
            session: 0,
            _claim: None,
        }
    }

    /// Keeps `claim` for as long as the relay lives.
    pub fn with_claim(mut self, claim: Option<ReuseClaim>) -> Self {
        self._claim = claim;
        self
    }

    /// Checks every datagram's destination against `policy` (for session
    /// `session`, named in logs).
    pub fn with_policy(mut self, policy: Arc<Policy>, session: u64) -> Self {
        self.policy = Some(policy);
        self.session = session;
        self
    }

    /// Judges destinations with the addresses the guest learned through names too
    /// ([`Policy::outbound_learned`]).
    pub fn with_learned(mut self, learned: Arc<Learned>) -> Self {
        self.learned = Some(learned);
        self
    }

    /// The socket, while it is open.
    pub fn socket(&self) -> Option<&mio::net::UdpSocket> {
        self.sock.as_ref()
    }

    /// This socket's counters.
    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// Records readiness from the event loop.
    pub fn on_event(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// True when the pipe is closed on both sides and the socket is gone.
    pub fn is_done(&self) -> bool {
        self.sock.is_none() && self.pipe.is_closed()
    }

    /// Takes the socket out (to deregister it) once the guest has finished
    /// with it: its writing half closed and every record sent, or its pipe
    /// closed altogether.
    pub fn take_finished_socket(&mut self) -> Option<mio::net::UdpSocket> {
        // The close flag first: its Acquire makes every record published
        // before it visible to the emptiness check that follows.
        if self.pipe.is_peer_write_closed() && matches!(self.pipe.rx().available(), Ok(0) | Err(_))
        {
            self.pipe.close_write();
            self.pipe.close_read();
            return self.sock.take();
        }
        None
    }

    /// Ends the relay at once; the guest's blocked calls see
    /// `ConnectionAborted`.
    pub fn abort(&mut self) -> Option<mio::net::UdpSocket> {
        self.pipe
            .status()
            .set(u32::from(ErrorCode::ConnectionAborted.to_u16()));
        self.pipe.close_write();
        self.pipe.close_read();
        self.sock.take()
    }

    /// Moves datagrams both ways, at most `budget` bytes per direction.
    ///
    /// # Errors
    /// [`RelayFault`] when the guest broke the pipe (a corrupt ring or a bad
    /// record header); the caller closes the socket and logs it.
    pub fn service(&mut self, budget: usize) -> Result<Progress, RelayFault> {
        let mut p = Progress::default();
        self.pipe.rx().disarm();
        self.pipe.tx().disarm();
        self.up(budget, &mut p)?;
        self.down(budget, &mut p)?;
        if self.counters.dropped != self.published_drops {
            self.published_drops = self.counters.dropped;
            self.pipe.status().publish_counter(self.published_drops);
        }
        Ok(p)
    }

    /// Guest → socket.
    fn up(&mut self, budget: usize, p: &mut Progress) -> Result<(), RelayFault> {
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        let fd = sock.as_fd();
        let mut idle = IdlePasses::default();
        loop {
            if !self.writable {
                return Ok(());
            }
            if p.up >= budget {
                p.more = true;
                return Ok(());
            }
            let segs = self
                .pipe
                .rx()
                .readable_segments()
                .map_err(RelayFault::Corrupt)?;
            let closed = self.pipe.is_peer_write_closed();
            let (policy, learned, dests) = (&self.policy, &self.learned, &mut self.dests);
            // Read once per pass: a learned address's expiry is judged to the pass.
            let now = std::time::Instant::now();
            let mut allowed = |addr: SocketAddr| match (policy, learned) {
                (Some(p), Some(l)) => dests.check_learned(p, l, addr, now),
                (Some(p), None) => dests.check(p, addr),
                (None, _) => Decision::ALLOW,
            };
            let Parsed {
                batch,
                denied,
                need,
            } = parse_records(&mut self.pipe, &segs, closed, &mut allowed)?;
            if let Some((len, to, decision)) = denied {
                // The first record's destination is denied: drop it.
                self.pipe.rx().consume(len).map_err(RelayFault::Corrupt)?;
                self.counters.denied += 1;
                let code = ErrorCode::PermissionDenied;
                self.pipe.status().set(u32::from(code.to_u16()));
                let v = self.denials_logged.handle_warning(Instant::now());
                if v.suppressed_before > 0 {
                    tracing::warn!(
                        session = self.session,
                        "{} more denied-datagram warnings suppressed",
                        v.suppressed_before
                    );
                }
                if v.log {
                    tracing::warn!(
                        session = self.session,
                        %to,
                        rule = %decision,
                        "datagram denied by policy, dropped"
                    );
                }
                p.up += len;
                continue;
            }
            if batch.is_empty() {
                self.pipe.rx().consume(0).map_err(RelayFault::Corrupt)?;
                if self.pipe.is_peer_write_closed() {
                    return Ok(()); // drained; `take_finished_socket` ends it
                }
                // Armed for the whole first record, not for any byte: a
                // record cut short waits for its rest (or the writer's
                // close) without being parsed again.
                if self.pipe.rx().arm_for(need) {
                    self.pipe.rx().disarm();
                    if idle.another(p) {
                        continue;
                    }
                    return Ok(());
                }
                return Ok(()); // armed: the rest of the record rings us
            }
            match send_from_ring(fd, batch.iter().map(|r| (&r.addr, &r.payload)), self.gso) {
                Err(SendError {
                    error: e,
                    gso: true,
                }) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    // The host refused a GSO send (a kernel without UDP_SEGMENT, a
                    // segment above the path MTU): send this socket's datagrams one
                    // by one from now on; each then gets its own verdict.
                    tracing::debug!(error = %e, "UDP segmentation offload refused; sending datagrams singly");
                    self.gso = false;
                    if !idle.another(p) {
                        return Ok(());
                    }
                }
                Ok(sent) => {
                    let bytes: usize = batch.iter().take(sent).map(|r| r.record_len).sum();
                    self.pipe.rx().consume(bytes).map_err(RelayFault::Corrupt)?;
                    self.counters.sent += sent as u64;
                    p.up += bytes;
                }
                Err(SendError { error: e, .. }) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(());
                }
                Err(SendError { error: e, .. }) if e.kind() == ErrorKind::Interrupted => {
                    if !idle.another(p) {
                        return Ok(());
                    }
                }
                Err(SendError { error: e, .. }) => {
                    // The first record was refused: drop it, tell the guest.
                    let first = batch.first().map_or(0, |r| r.record_len);
                    self.pipe.rx().consume(first).map_err(RelayFault::Corrupt)?;
                    self.counters.send_errors += 1;
                    let code = ErrorCode::from_io(&e);
                    self.pipe.status().set(u32::from(code.to_u16()));
                    tracing::debug!(error = %e, "datagram refused by the host");
                    p.up += first;
                }
            }
        }
    }

    /// Socket → guest.
    fn down(&mut self, budget: usize, p: &mut Progress) -> Result<(), RelayFault> {
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        let fd = sock.as_fd();
        let mut received = 0usize;
        let mut idle = IdlePasses::default();
        loop {
            if !self.readable {
                return Ok(());
            }
            if received >= budget {
                p.more = true;
                return Ok(());
            }
            let guest_reads = !self.pipe.is_peer_read_closed();
            let segs = if guest_reads {
                match self.pipe.tx().writable_segments() {
                    Ok(s) => Some(s),
                    Err(RingError::BrokenPipe | RingError::Closed) => None,
                    Err(e) => return Err(RelayFault::Corrupt(e)),
                }
            } else {
                None
            };
            let space = segs.as_ref().map_or(0, WriteSegments::total);
            let room = segs
                .as_ref()
                .filter(|_| space > DATAGRAM_HEADER_LEN)
                .map(|s| {
                    s.range(
                        DATAGRAM_HEADER_LEN,
                        MAX_DATAGRAM.min(space - DATAGRAM_HEADER_LEN),
                    )
                });
            match recv_into(fd, room.as_ref()) {
                Ok(Received {
                    len,
                    from,
                    truncated,
                }) => {
                    received += len.max(1);
                    let header = from
                        .filter(|_| !truncated && room.is_some())
                        .and_then(|a| DatagramHeader::new(len, a).ok());
                    match header {
                        Some(h) => {
                            let hdr = h.to_bytes();
                            let at = segs.map(|s| s.range(0, DATAGRAM_HEADER_LEN));
                            if let Some(at) = at {
                                at.copy_from(&hdr);
                            }
                            self.pipe
                                .tx()
                                .commit(h.record_len())
                                .map_err(RelayFault::Corrupt)?;
                            self.counters.received += 1;
                            p.down += h.record_len();
                        }
                        None => {
                            // No room (or no reader): dropped, as a full
                            // socket buffer drops.
                            let _ = self.pipe.tx().commit(0);
                            self.counters.dropped += 1;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let _ = self.pipe.tx().commit(0);
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    let _ = self.pipe.tx().commit(0);
                    if !idle.another(p) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    // An asynchronous error (an ICMP "port unreachable" on a
                    // connected socket): the guest's next `take_error` sees it.
                    let _ = self.pipe.tx().commit(0);
                    let code = ErrorCode::from_io(&e);
                    self.pipe.status().set(u32::from(code.to_u16()));
                }
            }
        }
    }

    /// Connects the socket to `addr`; returns the local address after it.
    ///
    /// # Errors
    /// `NotConnected` if the socket is gone, or the system call's error.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let sock = self.sock()?;
        sock.connect(addr)?;
        sock.local_addr()
    }

    /// Joins or leaves a multicast group.
    ///
    /// # Errors
    /// `InvalidInput` for a group that is not multicast, a non-zero port, or
    /// an interface address with an IPv6 group; otherwise the system call's.
    pub fn membership(
        &self,
        op: MembershipOp,
        group: SocketAddr,
        interface: Ipv4Addr,
    ) -> io::Result<()> {
        let sock = self.sock()?;
        if group.port() != 0 || !group.ip().is_multicast() {
            return Err(invalid("group must be a multicast address with port 0"));
        }
        match (group, op) {
            (SocketAddr::V4(g), MembershipOp::Join) => sock.join_multicast_v4(g.ip(), &interface),
            (SocketAddr::V4(g), MembershipOp::Leave) => sock.leave_multicast_v4(g.ip(), &interface),
            (SocketAddr::V6(_), _) if !interface.is_unspecified() => {
                Err(invalid("an IPv6 group takes its interface from scope_id"))
            }
            (SocketAddr::V6(g), MembershipOp::Join) => sock.join_multicast_v6(g.ip(), g.scope_id()),
            (SocketAddr::V6(g), MembershipOp::Leave) => {
                sock.leave_multicast_v6(g.ip(), g.scope_id())
            }
        }
    }

    /// Sets a UDP option (PROTOCOL.md §5.6).
    ///
    /// # Errors
    /// `Unsupported` for an option that is not a UDP option, `InvalidInput`
    /// for a value out of range, otherwise the system call's.
    pub fn set_option(&self, option: SocketOption, value: u64) -> io::Result<()> {
        let sock = socket2::SockRef::from(self.sock()?);
        let flag = || match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid("boolean option takes 0 or 1")),
        };
        let small = |max: u64| {
            u32::try_from(value)
                .ok()
                .filter(|v| u64::from(*v) <= max)
                .ok_or_else(|| invalid("option value out of range"))
        };
        match option {
            SocketOption::Broadcast => sock.set_broadcast(flag()?),
            SocketOption::MulticastLoopV4 => sock.set_multicast_loop_v4(flag()?),
            SocketOption::MulticastTtlV4 => sock.set_multicast_ttl_v4(small(255)?),
            SocketOption::MulticastIfV4 => {
                sock.set_multicast_if_v4(&Ipv4Addr::from(small(u64::from(u32::MAX))?))
            }
            SocketOption::MulticastLoopV6 => sock.set_multicast_loop_v6(flag()?),
            SocketOption::MulticastIfV6 => sock.set_multicast_if_v6(small(u64::from(u32::MAX))?),
            SocketOption::Ttl => {
                let ttl = small(255)?;
                if ttl == 0 {
                    return Err(invalid("ttl must be between 1 and 255"));
                }
                match sock.local_addr()?.as_socket() {
                    Some(SocketAddr::V6(_)) => sock.set_unicast_hops_v6(ttl),
                    _ => sock.set_ttl_v4(ttl),
                }
            }
            SocketOption::RecvBufferSize => sock.set_recv_buffer_size(buffer_size(value)?),
            SocketOption::SendBufferSize => sock.set_send_buffer_size(buffer_size(value)?),
            SocketOption::NoDelay | SocketOption::Unknown(_) => {
                Err(io::Error::from(ErrorKind::Unsupported))
            }
        }
    }

    fn sock(&self) -> io::Result<&mio::net::UdpSocket> {
        self.sock
            .as_ref()
            .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))
    }
}

impl Service for UdpRelay {
    fn on_event(&mut self, readable: bool, writable: bool) {
        UdpRelay::on_event(self, readable, writable);
    }
    fn service(&mut self, budget: usize) -> Result<Progress, RelayFault> {
        UdpRelay::service(self, budget)
    }
    fn abort_with(&mut self, registry: &mio::Registry) {
        deregister(registry, self.abort());
    }
    fn release_finished(&mut self, registry: &mio::Registry) {
        deregister(registry, self.take_finished_socket());
    }
    fn is_done(&self) -> bool {
        UdpRelay::is_done(self)
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, msg)
}

fn buffer_size(value: u64) -> io::Result<usize> {
    // The kernel doubles and clamps; refuse only what cannot be expressed.
    usize::try_from(value)
        .ok()
        .filter(|v| (1..=(1 << 30)).contains(v))
        .ok_or_else(|| invalid("buffer size must be between 1 byte and 1 GiB"))
}

/// One record ready to send: where its payload lies and where it goes.
struct Outgoing {
    addr: SockAddr,
    payload: ReadSegments,
    record_len: usize,
}

/// A record the policy refuses: its length, destination and the decision.
type Denied = (usize, SocketAddr, Decision);

/// The front of the guest's ring, as [`parse_records`] found it.
struct Parsed {
    /// Whole, allowed records, in order.
    batch: Vec<Outgoing>,
    /// The first record, when the policy refuses it.
    denied: Option<Denied>,
    /// With an empty batch and nothing denied: the bytes the ring must hold
    /// before its first record is whole (a record cut short waits for this).
    need: usize,
}

/// Reads the headers of up to [`SEND_BATCH`] whole records from the front of
/// the guest's ring. Each header is copied once into private memory and
/// checked before anything else is derived from it.
///
/// A record whose destination `allowed` refuses ends the batch; when it is
/// the first, it comes back alone as [`Denied`] for the caller to drop.
fn parse_records(
    pipe: &mut BidirectionalPipe,
    segs: &ReadSegments,
    writer_closed: bool,
    allowed: &mut dyn FnMut(SocketAddr) -> Decision,
) -> Result<Parsed, RelayFault> {
    let avail = segs.total();
    let mut out = Vec::with_capacity(SEND_BATCH.min(avail / DATAGRAM_HEADER_LEN + 1));
    let mut off = 0usize;
    let mut need = DATAGRAM_HEADER_LEN;
    while out.len() < SEND_BATCH && off < avail {
        let mut raw = [0u8; DATAGRAM_HEADER_LEN];
        let got = pipe.rx().peek(off, &mut raw).map_err(RelayFault::Corrupt)?;
        if got < DATAGRAM_HEADER_LEN {
            if writer_closed {
                return Err(RelayFault::BadRecord(BadRecord::Stray(got)));
            }
            break; // an honest guest publishes whole records; wait for the rest
        }
        let header = DatagramHeader::parse(&raw)
            .map_err(|error| RelayFault::BadRecord(BadRecord::Header { offset: off, error }))?;
        let end = off + header.record_len();
        need = header.record_len();
        if end > avail {
            if writer_closed {
                return Err(RelayFault::BadRecord(BadRecord::CutShort {
                    record: header.record_len(),
                    have: avail - off,
                }));
            }
            break;
        }
        let decision = allowed(header.addr);
        if !decision.allowed {
            if out.is_empty() {
                let denied = Some((header.record_len(), header.addr, decision));
                return Ok(Parsed {
                    batch: out,
                    denied,
                    need,
                });
            }
            break;
        }
        out.push(Outgoing {
            addr: SockAddr::from(header.addr),
            payload: segs.range(off + DATAGRAM_HEADER_LEN, usize::from(header.payload_len)),
            record_len: header.record_len(),
        });
        off = end;
    }
    Ok(Parsed {
        batch: out,
        denied: None,
        need,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use shm_ring::{BuddyAllocator, NoNotify, PeerWakers, ShmAllocator, ShmRegion};

    struct Fixture {
        relay: UdpRelay,
        guest: BidirectionalPipe,
        far: std::net::UdpSocket,
        _alloc: ShmAllocator,
    }

    /// A relay for a loopback UDP socket, the guest's end of its pipe, and a
    /// host socket the guest's datagrams go to.
    fn fixture() -> Fixture {
        let region = Arc::new(ShmRegion::create("udp-relay-test", 1 << 20).unwrap());
        let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096).unwrap());
        let cap = 64 << 10;
        let block = alloc
            .alloc(BidirectionalPipe::block_size(cap, cap))
            .unwrap();
        let quiet = || PeerWakers::single(Arc::new(NoNotify));
        let owner = BidirectionalPipe::create(&region, block, cap, cap, quiet()).unwrap();
        let guest = BidirectionalPipe::attach(&region, owner.layout(), quiet()).unwrap();
        let sock = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Fixture {
            relay: UdpRelay::new(sock, owner),
            guest,
            far,
            _alloc: alloc,
        }
    }

    fn record(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut r = DatagramHeader::new(payload.len(), to)
            .unwrap()
            .to_bytes()
            .to_vec();
        r.extend_from_slice(payload);
        r
    }

    /// Every way a guest can cut a record short: the service returns at
    /// once, idle and armed (not asking to be called again), however often
    /// it is called; the rest of the record then goes out whole.
    #[test]
    fn a_record_cut_short_waits_without_spinning_and_goes_out_when_whole() {
        let payload = [0x5a; 200];
        let mut f = fixture();
        let to = f.far.local_addr().unwrap();
        let whole = record(to, &payload);
        for cut in [
            1,
            2,
            DATAGRAM_HEADER_LEN - 1,
            DATAGRAM_HEADER_LEN,
            DATAGRAM_HEADER_LEN + 10,
        ] {
            assert_eq!(f.guest.write(&whole[..cut]).unwrap(), cut);
            for _ in 0..3 {
                let p = f.relay.service(1 << 20).unwrap();
                assert_eq!(
                    p,
                    Progress::default(),
                    "cut at {cut}: nothing to do, nothing to redo"
                );
            }
            assert_eq!(f.guest.write(&whole[cut..]).unwrap(), whole.len() - cut);
            let p = f.relay.service(1 << 20).unwrap();
            assert_eq!(p.up, whole.len());
            let mut buf = [0u8; 512];
            let (n, _) = f.far.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &payload[..], "cut at {cut}");
        }
    }

    /// In a network namespace of its own whose loopback has a 1,500-byte MTU,
    /// a run of 8 KiB datagrams cannot go out as segments (the kernel says
    /// `EMSGSIZE`): the relay turns offload off for the socket and sends the
    /// records singly, as IP fragments, every one whole and none refused.
    #[test]
    fn a_refused_offload_send_falls_back_to_single_datagrams() {
        // SAFETY: geteuid has no preconditions.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare moves only this thread into a new network
            // namespace; the thread ends with the test.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "mtu", "1500", "up"])
                .status()
                .expect("ip");
            assert!(st.success(), "ip link set lo mtu 1500 up");
            let mut f = fixture();
            let to = f.far.local_addr().unwrap();
            let mut total = 0;
            for i in 0..4u8 {
                let r = record(to, &[i; 8192]);
                total += r.len();
                assert_eq!(f.guest.write(&r).unwrap(), r.len());
            }
            let mut up = 0;
            for _ in 0..8 {
                up += f.relay.service(1 << 20).unwrap().up;
                if up >= total {
                    break;
                }
            }
            assert_eq!(up, total, "every record went out");
            assert!(!f.relay.gso, "the refusal turned offload off");
            let c = f.relay.counters();
            assert_eq!((c.sent, c.send_errors), (4, 0));
            let mut buf = vec![0u8; 65_536];
            for i in 0..4u8 {
                let (n, _) = f.far.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[i; 8192][..]);
            }
        })
        .join()
        .unwrap();
    }

    /// The writer closing with a record cut short breaks the pipe's format:
    /// a fault for this socket, reported once.
    #[test]
    fn a_record_cut_short_at_close_is_a_fault() {
        let mut f = fixture();
        let whole = record(f.far.local_addr().unwrap(), &[1; 50]);
        f.guest.write(&whole[..DATAGRAM_HEADER_LEN + 3]).unwrap();
        assert_eq!(f.relay.service(1 << 20).unwrap(), Progress::default());
        f.guest.close_write();
        assert!(matches!(
            f.relay.service(1 << 20),
            Err(RelayFault::BadRecord(_))
        ));
    }
}
