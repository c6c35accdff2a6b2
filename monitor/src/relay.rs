//! Relaying one TCP connection between its kernel socket and its data pipe.
//!
//! Bytes move with no intermediate buffer: `readv` from the socket straight
//! into the `to_guest` ring's free segments, `writev` to the socket straight
//! from the `to_monitor` ring's filled segments. Backpressure is the rings' own:
//! a full `to_guest` ring stops socket reads (the kernel's receive window then
//! throttles the remote end), a socket that would block leaves bytes in the
//! `to_monitor` ring (and the guest's writes block when it fills).
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
    BadRecord(String),
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
}

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
                            Ok(_) => continue,
                            Err(e) => return Err(RelayFault::Corrupt(e)),
                        }
                    }
                    if self.pipe.rx().arm() {
                        self.pipe.rx().disarm();
                        continue;
                    }
                    return Ok(()); // armed: the guest's next write rings us
                }
                Ok(n) => p.up += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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
                    continue;
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
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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

    /// Sets `TCP_NODELAY` on the socket.
    ///
    /// # Errors
    /// `NotConnected` if the socket is gone, or the system call's error.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.sock {
            Some(s) => s.set_nodelay(on),
            None => Err(io::Error::from(ErrorKind::NotConnected)),
        }
    }
}
