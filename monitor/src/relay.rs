//! Relaying one TCP connection between its kernel socket and its data pipe.
//!
//! Bytes move with no intermediate buffer: `readv` from the socket straight
//! into the `to_guest` ring's free segments, `writev` to the socket straight
//! from the `to_monitor` ring's filled segments. Backpressure is the rings' own:
//! a full `to_guest` ring stops socket reads (the kernel's receive window then
//! throttles the remote end), a socket that would block leaves bytes in the
//! `to_monitor` ring (and the guest's writes block when it fills).
//!
//! Each `writev` sends a batch: what the ring held. A guest that has not asked
//! for `TCP_NODELAY` keeps Nagle's algorithm for small batches, but bulk
//! batches go out whole, tail included ([`BULK_BATCH`]).
//!
//! Half-close, both ways:
//! - guest closes its writing half → once the ring is drained,
//!   `shutdown(SHUT_WR)` on the socket;
//! - socket EOF → the `to_guest` ring's `writer_closed`, so the guest reads EOF
//!   after the last byte;
//! - guest closes its reading half → `shutdown(SHUT_RD)`, later bytes dropped;
//! - a socket error → its code in the pipe's status word, both our halves
//!   closed, the socket dropped; the guest reads the bytes already relayed,
//!   then the error.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::os::fd::AsFd;

use arca_wire::ErrorCode;
use shm_ring::{BidirectionalPipe, RingError};

/// Why a relay was torn down for cause.
#[derive(Debug, thiserror::Error)]
pub enum RelayFault {
    /// The guest broke its ring's invariants.
    #[error("guest corrupted the data pipe: {0}")]
    Corrupt(RingError),
    /// The guest wrote a datagram record that breaks DATAPIPE.md §10.
    #[error("guest wrote a bad datagram record: {0}")]
    BadRecord(BadRecord),
}

/// How a guest's datagram records break DATAPIPE.md §10.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// Fewer bytes than a header after the last record, and the writer closed.
    #[error("{0} stray bytes after the last record")]
    Stray(usize),
    /// A header that does not parse.
    #[error("record header at +{offset}: {error}")]
    Header {
        /// Where it starts, from the front of the ring's readable bytes.
        offset: usize,
        /// Why it does not parse.
        error: arca_wire::WireError,
    },
    /// A record longer than what was published, and the writer closed.
    #[error("record of {record} bytes cut short at {have} bytes")]
    CutShort {
        /// The record's length by its header.
        record: usize,
        /// The bytes of it published.
        have: usize,
    },
}

/// What a turn of relaying achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes moved guest → socket.
    pub up: usize,
    /// Bytes moved socket → guest.
    pub down: usize,
    /// The budget ran out with work left: service again next turn.
    pub more: bool,
    /// A loop ran out of idle passes ([`IDLE_PASSES`]): it went round
    /// without moving a byte until it was cut off. Never so for an honest
    /// guest; counted by the session.
    pub futile: bool,
}

/// Most passes one direction's loop makes in one service call without
/// moving a byte (a ring found ready on re-arming that then holds nothing
/// new, an interrupted system call). Passes that move bytes are bounded by
/// the byte budget; this bounds the others, so that no state a guest can set
/// up in shared memory keeps a service call from returning to the event loop.
pub const IDLE_PASSES: u32 = 32;

/// Counts one loop's idle passes against [`IDLE_PASSES`].
#[derive(Debug, Default)]
pub(crate) struct IdlePasses(u32);

impl IdlePasses {
    /// Counts an idle pass. False once the limit is reached: the caller
    /// returns, and `p` says to come back next turn.
    pub(crate) fn another(&mut self, p: &mut Progress) -> bool {
        self.0 += 1;
        if self.0 < IDLE_PASSES {
            return true;
        }
        p.more = true;
        p.futile = true;
        false
    }
}

/// What the session asks of a relay, TCP or UDP: readiness in, budgeted
/// service, and the end of its socket. The socket's registration with the
/// loop is the relay's to undo when it lets the socket go.
pub trait Service {
    /// Records readiness from the event loop.
    fn on_event(&mut self, readable: bool, writable: bool);

    /// Moves bytes both ways, at most `budget` per direction.
    ///
    /// # Errors
    /// [`RelayFault`] when the guest broke the pipe; the caller aborts the
    /// relay and logs it.
    fn service(&mut self, budget: usize) -> Result<Progress, RelayFault>;

    /// Ends the relay at once (the guest sees `ConnectionAborted`) and
    /// deregisters its socket.
    fn abort_with(&mut self, registry: &mio::Registry);

    /// Deregisters and drops the socket once both directions are done with it.
    fn release_finished(&mut self, registry: &mio::Registry);

    /// True when the socket is gone and the pipe closed on both sides: the
    /// relay can be forgotten and its block freed.
    fn is_done(&self) -> bool;
}

/// Deregisters `sock` (if any) from `registry`; a socket already gone from
/// epoll is no error here.
pub(crate) fn deregister<S: mio::event::Source>(registry: &mio::Registry, sock: Option<S>) {
    if let Some(mut s) = sock {
        let _ = registry.deregister(&mut s);
    }
}

impl Service for Relay {
    fn on_event(&mut self, readable: bool, writable: bool) {
        Relay::on_event(self, readable, writable);
    }
    fn service(&mut self, budget: usize) -> Result<Progress, RelayFault> {
        Relay::service(self, budget)
    }
    fn abort_with(&mut self, registry: &mio::Registry) {
        deregister(registry, self.abort());
    }
    fn release_finished(&mut self, registry: &mio::Registry) {
        deregister(registry, self.take_finished_socket());
    }
    fn is_done(&self) -> bool {
        Relay::is_done(self)
    }
}

/// One connection's relay state.
#[derive(Debug)]
pub struct Relay {
    pipe: BidirectionalPipe,
    sock: Option<mio::net::TcpStream>,
    /// The socket may have bytes to read (edge-triggered: cleared only by
    /// `WouldBlock`).
    readable: bool,
    /// The socket may accept bytes (cleared only by `WouldBlock`).
    writable: bool,
    /// Socket EOF seen and passed on as the ring's `writer_closed`.
    down_eof: bool,
    /// The guest closed its reading half; socket reads stopped.
    down_stopped: bool,
    /// The guest's writing half closed and drained; `SHUT_WR` sent.
    up_shut: bool,
    /// The error that ended the socket, if any.
    error: Option<ErrorCode>,
    /// What the guest asked for with `set_nodelay` (off, as for any new
    /// socket, until it asks).
    nodelay_asked: bool,
    /// `TCP_NODELAY` as the socket has it now: what the guest asked, or on
    /// while the relay writes bulk batches (see [`BULK_BATCH`]).
    nodelay_set: bool,
}

/// Nagle's algorithm is for small writes: it holds a segment smaller than
/// the MSS while data is unacknowledged. The relay's writes are batches of
/// whatever the guest's ring holds, so in a bulk transfer the only segment
/// Nagle holds is each batch's tail — which then waits for an ACK instead of
/// leaving with its batch (BENCHMARKS.md measures the difference). So for a
/// guest that has not asked for `TCP_NODELAY`, a batch of at least this many
/// bytes turns it on — at most one short segment per batch goes out early —
/// and a batch under [`SMALL_BATCH`] turns it off again, giving small writes
/// Nagle's coalescing as the guest expects. (The gap between the two keeps a
/// flow near one threshold from switching the option on every write.)
const BULK_BATCH: usize = 64 << 10;

/// See [`BULK_BATCH`].
const SMALL_BATCH: usize = 4 << 10;

fn ring_error(e: &io::Error) -> Option<RingError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<RingError>())
        .copied()
}

impl Relay {
    /// A relay for an established socket and a freshly created pipe.
    pub fn new(sock: mio::net::TcpStream, pipe: BidirectionalPipe) -> Self {
        Self {
            pipe,
            sock: Some(sock),
            readable: true,
            writable: true,
            down_eof: false,
            down_stopped: false,
            up_shut: false,
            error: None,
            nodelay_asked: false,
            nodelay_set: false,
        }
    }

    /// The socket, while it is open (for (de)registration and options).
    pub fn socket(&self) -> Option<&mio::net::TcpStream> {
        self.sock.as_ref()
    }

    /// Takes the socket out (to deregister it) once it is finished.
    pub fn take_finished_socket(&mut self) -> Option<mio::net::TcpStream> {
        if self.socket_finished() {
            self.sock.take()
        } else {
            None
        }
    }

    /// Records readiness from the event loop.
    pub fn on_event(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Both directions are done with the socket.
    fn socket_finished(&self) -> bool {
        self.error.is_some() || (self.up_shut && (self.down_eof || self.down_stopped))
    }

    /// True when the pipe is fully closed on both sides and the socket is
    /// gone: the connection can be forgotten and its block freed.
    pub fn is_done(&self) -> bool {
        self.sock.is_none() && self.pipe.is_closed()
    }

    /// Moves bytes both ways, at most `budget` per direction.
    ///
    /// # Errors
    /// [`RelayFault::Corrupt`] when the guest broke the pipe; the caller tears
    /// the connection down and logs it.
    pub fn service(&mut self, budget: usize) -> Result<Progress, RelayFault> {
        let mut p = Progress::default();
        // Serviced now: no need to be rung until we find a ring empty/full.
        self.pipe.rx().disarm();
        self.pipe.tx().disarm();
        self.up(budget, &mut p)?;
        self.down(budget, &mut p)?;
        if self.sock.is_none() || self.socket_finished() {
            // Our halves are closed once the socket is finished, so that the
            // pipe becomes `is_closed` when the guest closes its halves too.
            self.pipe.close_write();
            self.pipe.close_read();
        }
        Ok(p)
    }

    /// Guest → socket.
    fn up(&mut self, budget: usize, p: &mut Progress) -> Result<(), RelayFault> {
        if self.up_shut || self.error.is_some() {
            return Ok(());
        }
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        let mut idle = IdlePasses::default();
        loop {
            if !self.writable {
                return Ok(());
            }
            let limit = budget - p.up;
            if limit == 0 {
                p.more = true;
                return Ok(());
            }
            match self.pipe.rx().write_to_fd(sock.as_fd(), limit) {
                Ok(0) => {
                    // Ring empty. Closed by the guest? Then the stream is over:
                    // the flag's Acquire made every earlier byte visible, so
                    // check emptiness once more before shutting down.
                    if self.pipe.is_peer_write_closed() {
                        match self.pipe.rx().available() {
                            Ok(0) => {
                                let _ = sock.shutdown(Shutdown::Write);
                                self.up_shut = true;
                                return Ok(());
                            }
                            Ok(_) if idle.another(p) => continue,
                            Ok(_) => return Ok(()),
                            Err(e) => return Err(RelayFault::Corrupt(e)),
                        }
                    }
                    if self.pipe.rx().arm() {
                        self.pipe.rx().disarm();
                        if idle.another(p) {
                            continue;
                        }
                        return Ok(());
                    }
                    return Ok(()); // armed: the guest's next write rings us
                }
                Ok(n) => {
                    p.up += n;
                    let want = if n >= BULK_BATCH {
                        true
                    } else if n < SMALL_BATCH {
                        self.nodelay_asked
                    } else {
                        self.nodelay_set
                    };
                    // Setting it on also sends a tail Nagle holds now.
                    if want != self.nodelay_set && sock.set_nodelay(want).is_ok() {
                        self.nodelay_set = want;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    if !idle.another(p) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    if let Some(r) = ring_error(&e) {
                        return Err(RelayFault::Corrupt(r));
                    }
                    self.fail(&e);
                    return Ok(());
                }
            }
        }
    }

    /// Socket → guest.
    fn down(&mut self, budget: usize, p: &mut Progress) -> Result<(), RelayFault> {
        if self.down_eof || self.down_stopped || self.error.is_some() {
            return Ok(());
        }
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        if self.pipe.is_peer_read_closed() {
            // The guest will read no more: stop reading, as a kernel socket
            // after shutdown(SHUT_RD).
            let _ = sock.shutdown(Shutdown::Read);
            self.down_stopped = true;
            self.pipe.close_write();
            return Ok(());
        }
        let mut idle = IdlePasses::default();
        loop {
            if !self.readable {
                return Ok(());
            }
            let limit = budget - p.down;
            if limit == 0 {
                p.more = true;
                return Ok(());
            }
            let free = match self.pipe.tx().free() {
                Ok(f) => f,
                Err(e) => return Err(RelayFault::Corrupt(e)),
            };
            if free == 0 {
                if self.pipe.tx().arm() {
                    self.pipe.tx().disarm();
                    if self.pipe.is_peer_read_closed() {
                        return self.down(budget, p);
                    }
                    if idle.another(p) {
                        continue;
                    }
                    return Ok(());
                }
                return Ok(()); // armed: the guest's next read rings us
            }
            match self.pipe.tx().read_from_fd(sock.as_fd(), limit) {
                Ok(0) => {
                    // `free > 0`, so this is the socket's EOF.
                    self.pipe.close_write();
                    self.down_eof = true;
                    return Ok(());
                }
                Ok(n) => p.down += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    if !idle.another(p) {
                        return Ok(());
                    }
                }
                Err(e) => match ring_error(&e) {
                    Some(RingError::BrokenPipe | RingError::Closed) => return self.down(budget, p),
                    Some(r) => return Err(RelayFault::Corrupt(r)),
                    None => {
                        self.fail(&e);
                        return Ok(());
                    }
                },
            }
        }
    }

    /// A socket error ends the connection: the guest reads what was relayed,
    /// then the error.
    fn fail(&mut self, e: &io::Error) {
        let code = ErrorCode::from_io(e);
        tracing::debug!(error = %e, ?code, "connection failed");
        self.error = Some(code);
        self.pipe.status().set(u32::from(code.to_u16()));
        self.pipe.close_write();
        self.pipe.close_read();
    }

    /// Ends the relay at once (guest asked, or the session is going away).
    /// The guest sees `ConnectionAborted`, never a clean end of stream.
    pub fn abort(&mut self) -> Option<mio::net::TcpStream> {
        if self.error.is_none() {
            self.error = Some(ErrorCode::ConnectionAborted);
            self.pipe
                .status()
                .set(u32::from(ErrorCode::ConnectionAborted.to_u16()));
        }
        self.pipe.close_write();
        self.pipe.close_read();
        self.sock.take()
    }

    /// Sets `TCP_NODELAY` on the socket, as the guest asks. Off, bulk
    /// batches still turn it on while they last (see [`BULK_BATCH`]).
    ///
    /// # Errors
    /// `NotConnected` if the socket is gone, or the system call's error.
    pub fn set_nodelay(&mut self, on: bool) -> io::Result<()> {
        match &self.sock {
            Some(s) => {
                s.set_nodelay(on)?;
                self.nodelay_asked = on;
                self.nodelay_set = on;
                Ok(())
            }
            None => Err(io::Error::from(ErrorKind::NotConnected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    use shm_ring::{BuddyAllocator, NoNotify, PeerWakers, ShmAllocator, ShmRegion};

    struct Fixture {
        relay: Relay,
        guest: BidirectionalPipe,
        far: std::net::TcpStream,
        _alloc: ShmAllocator,
    }

    /// A relay over a loopback connection whose far end the test holds, and
    /// the guest's end of its pipe (1 MiB towards the monitor).
    fn fixture() -> Fixture {
        let region = Arc::new(ShmRegion::create("relay-test", 4 << 20).unwrap());
        let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096).unwrap());
        let (up, down) = (1 << 20, 64 << 10);
        let block = alloc
            .alloc(BidirectionalPipe::block_size(up, down))
            .unwrap();
        let quiet = || PeerWakers::single(Arc::new(NoNotify));
        let owner = BidirectionalPipe::create(&region, block, up, down, quiet()).unwrap();
        let guest = BidirectionalPipe::attach(&region, owner.layout(), quiet()).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (far, _) = l.accept().unwrap();
        // Room for a whole bulk batch in one writev from the first write on.
        socket2::SockRef::from(&near)
            .set_send_buffer_size(1 << 20)
            .unwrap();
        near.set_nonblocking(true).unwrap();
        Fixture {
            relay: Relay::new(mio::net::TcpStream::from_std(near), owner),
            guest,
            far,
            _alloc: alloc,
        }
    }

    impl Fixture {
        /// The guest writes `n` bytes, the relay sends them in one turn, the far
        /// end reads them all; returns the socket's `TCP_NODELAY` after.
        fn batch(&mut self, n: usize) -> bool {
            let data = vec![0x42u8; n];
            assert_eq!(self.guest.write(&data), Ok(n));
            let p = self.relay.service(2 << 20).unwrap();
            assert_eq!(p.up, n, "one turn relays the whole batch");
            let mut got = vec![0u8; n];
            self.far.read_exact(&mut got).unwrap();
            assert_eq!(got, data);
            self.relay.socket().unwrap().nodelay().unwrap()
        }
    }

    #[test]
    fn bulk_batches_leave_whole_and_small_ones_keep_nagle_unless_the_guest_asks() {
        let mut f = fixture();
        assert!(!f.relay.socket().unwrap().nodelay().unwrap());
        assert!(!f.batch(100), "small batches keep Nagle");
        assert!(f.batch(BULK_BATCH), "a bulk batch's tail is not held");
        assert!(
            f.batch(SMALL_BATCH),
            "between the thresholds nothing changes"
        );
        assert!(!f.batch(SMALL_BATCH - 1), "a small batch brings Nagle back");
        // The guest asks for TCP_NODELAY: it stays on whatever the batches.
        f.relay.set_nodelay(true).unwrap();
        assert!(f.batch(10));
        assert!(f.batch(BULK_BATCH));
        assert!(f.batch(10));
        // And asks it off: small batches get Nagle, bulk ones still leave whole.
        f.relay.set_nodelay(false).unwrap();
        assert!(!f.batch(10));
        assert!(f.batch(BULK_BATCH + 1));
    }
}
