//! `TcpStream`: a connection whose bytes flow through a data pipe the monitor relays.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_wire::{ConnId, ErrorCode, Handle, Message, PipeInfo, SocketOption};
use shm_ring::{Consumer, Producer, RingError, WaitError};

use crate::session::{gone, lock, op_error, Owner, PipeProbe, SessionWait};

/// A TCP connection made or accepted through the monitor, shaped like
/// [`std::net::TcpStream`].
///
/// `Read` and `Write` are implemented for both `TcpStream` and `&TcpStream`, so one thread may
/// read while another writes. Dropping the last handle (see [`try_clone`](Self::try_clone))
/// closes both halves; the monitor then closes the socket and frees the pipe.
///
/// Errors carry `std::net`'s kinds: a reset connection reads `ConnectionReset`, writing after
/// the peer stopped reading gives `BrokenPipe`, a read or write timeout gives `WouldBlock`
/// (as `std` on Linux), and every call gives `ConnectionAborted` once the monitor is gone.
#[derive(Debug, Clone)]
pub struct TcpStream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    owner: Arc<Owner>,
    conn: ConnId,
    local: SocketAddr,
    peer: SocketAddr,
    status: PeerStatus,
    rx: Mutex<Consumer>,
    tx: Mutex<Producer>,
    /// Set by `shutdown(Read)`: cancels a blocked read.
    rd_shut: AtomicBool,
    /// Set by `shutdown(Write)`: cancels a blocked write.
    wr_shut: AtomicBool,
    nonblocking: AtomicBool,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    nodelay: AtomicBool,
}

/// Reads the monitor's status word of the pipe. (`shm_ring::PipeStatus` is not exported from
/// the crate root, so it is held behind a closure.)
struct PeerStatus(Box<dyn Fn() -> u32 + Send + Sync>);

impl std::fmt::Debug for PeerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerStatus({})", (self.0)())
    }
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

impl TcpStream {
    /// Wraps a connection the monitor announced; on a bad pipe, asks the monitor to close it.
    pub(crate) fn attach(
        owner: Arc<Owner>,
        conn: ConnId,
        pipe: PipeInfo,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> io::Result<TcpStream> {
        let p = match owner.shared.attach_pipe(conn, pipe) {
            Ok(p) => p,
            Err(e) => {
                owner.shared.fire(&Message::Close {
                    handle: Handle::Connection(conn),
                });
                return Err(e);
            }
        };
        let st = p.status();
        let status = PeerStatus(Box::new(move || st.peer()));
        let (tx, rx) = p.split();
        Ok(TcpStream {
            inner: Arc::new(Inner {
                owner,
                conn,
                local,
                peer,
                status,
                rx: Mutex::new(rx),
                tx: Mutex::new(tx),
                rd_shut: AtomicBool::new(false),
                wr_shut: AtomicBool::new(false),
                nonblocking: AtomicBool::new(false),
                read_timeout: Mutex::new(None),
                write_timeout: Mutex::new(None),
                nodelay: AtomicBool::new(false),
            }),
        })
    }

    /// The address of the remote peer.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }

    /// The local address of the monitor's socket for this connection.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.local)
    }

    /// The connection's id in this session (also its notification slot).
    pub fn conn_id(&self) -> u32 {
        self.inner.conn.0
    }

    /// Shuts down the read half, the write half, or both. Shutting the write half down sends
    /// FIN once the monitor has relayed every byte written before; a blocked read (or write)
    /// on the half being shut down returns at once.
    ///
    /// # Errors
    /// `ConnectionAborted` once the monitor is gone.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let i = &self.inner;
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            i.rd_shut.store(true, Ordering::Release);
            i.owner.shared.wake_all();
            lock(&i.rx).close();
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            i.wr_shut.store(true, Ordering::Release);
            i.owner.shared.wake_all();
            lock(&i.tx).close();
        }
        if i.owner.shared.is_dead() {
            return Err(gone());
        }
        Ok(())
    }

    /// Moves the stream into or out of non-blocking mode: reads and writes that would wait
    /// return `WouldBlock` instead.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the read timeout; `None` blocks without limit.
    ///
    /// # Errors
    /// `InvalidInput` for `Some(Duration::ZERO)`, as `std`.
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        *lock(&self.inner.read_timeout) = timeout_arg(dur)?;
        Ok(())
    }

    /// Sets the write timeout; `None` blocks without limit.
    ///
    /// # Errors
    /// `InvalidInput` for `Some(Duration::ZERO)`, as `std`.
    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        *lock(&self.inner.write_timeout) = timeout_arg(dur)?;
        Ok(())
    }

    /// The read timeout.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.read_timeout))
    }

    /// The write timeout.
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.write_timeout))
    }

    /// Sets `TCP_NODELAY` on the monitor's socket.
    ///
    /// # Errors
    /// The monitor's error (for example `NotConnected` once the socket is gone).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        let i = &self.inner;
        match i.owner.shared.request(&Message::SetOption {
            handle: Handle::Connection(i.conn),
            option: SocketOption::NoDelay,
            value: u64::from(nodelay),
        })? {
            Message::SetOptionOk => {
                i.nodelay.store(nodelay, Ordering::Relaxed);
                Ok(())
            }
            Message::SetOptionErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "set_nodelay", None))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The last value set with [`set_nodelay`](Self::set_nodelay).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.inner.nodelay.load(Ordering::Relaxed))
    }

    /// Another handle to the same connection (sharing both halves and the settings).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(self.clone())
    }

    pub(crate) fn read_impl(&self, buf: &mut [u8]) -> io::Result<usize> {
        let i = &self.inner;
        if i.rd_shut.load(Ordering::Acquire) || buf.is_empty() {
            return Ok(0);
        }
        let deadline = lock(&i.read_timeout).map(|t| Instant::now() + t);
        let mut rx = lock(&i.rx);
        loop {
            if i.rd_shut.load(Ordering::Acquire) {
                return Ok(0);
            }
            match rx.read(buf) {
                Ok(0) => return self.at_eof(),
                Ok(n) => return Ok(n),
                Err(RingError::WouldBlock) => {}
                Err(RingError::Closed) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
            if i.nonblocking.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let w = SessionWait {
                shared: &i.owner.shared,
                cancel: Some(&i.rd_shut),
            };
            match rx.wait_readable(&w, deadline) {
                Ok(()) => {}
                Err(WaitError::TimedOut) => return Err(timed_out()),
                Err(WaitError::PeerGone) => return Err(gone()),
                // Cancelled by shutdown(Read): the loop head returns Ok(0).
                Err(WaitError::Io(_)) if i.rd_shut.load(Ordering::Acquire) => {}
                Err(WaitError::Io(e)) => return Err(e),
            }
        }
    }

    /// The stream ended: a clean EOF, the socket's error, or the monitor's death.
    fn at_eof(&self) -> io::Result<usize> {
        if let Some(e) = self.peer_error("read") {
            return Err(e);
        }
        if self.inner.owner.shared.probe_dead() {
            return Err(gone());
        }
        // The monitor closed its reading half too while ours is still open and no socket
        // error was stored: the relay was aborted (the monitor is tearing the session down,
        // or dropped the connection), not a FIN from the peer.
        if let Ok(tx) = self.inner.tx.try_lock() {
            if !tx.is_closed() && tx.is_peer_closed() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "arca: connection aborted by the monitor",
                ));
            }
        }
        Ok(0)
    }

    /// The error the monitor stored in the pipe's status word, if any.
    fn peer_error(&self, op: &str) -> Option<io::Error> {
        let code = (self.inner.status.0)();
        if code == 0 {
            return None;
        }
        let code = u16::try_from(code).map_or(ErrorCode::Other, ErrorCode::from_u16);
        Some(op_error(code, op, Some(self.inner.peer)))
    }

    pub(crate) fn write_impl(&self, buf: &[u8]) -> io::Result<usize> {
        let i = &self.inner;
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = lock(&i.write_timeout).map(|t| Instant::now() + t);
        let mut tx = lock(&i.tx);
        loop {
            if i.wr_shut.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "arca: write after shutdown(Write)",
                ));
            }
            match tx.write(buf) {
                Ok(n) => return Ok(n),
                Err(RingError::WouldBlock) => {}
                Err(RingError::BrokenPipe) => {
                    if let Some(e) = self.peer_error("write") {
                        return Err(e);
                    }
                    if i.owner.shared.probe_dead() {
                        return Err(gone());
                    }
                    return Err(RingError::BrokenPipe.into());
                }
                Err(e) => return Err(e.into()),
            }
            if i.nonblocking.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let w = SessionWait {
                shared: &i.owner.shared,
                cancel: Some(&i.wr_shut),
            };
            match tx.wait_writable(&w, deadline) {
                Ok(()) => {}
                Err(WaitError::TimedOut) => return Err(timed_out()),
                Err(WaitError::PeerGone) => return Err(gone()),
                Err(WaitError::Io(_)) if i.wr_shut.load(Ordering::Acquire) => {}
                Err(WaitError::Io(e)) => return Err(e),
            }
        }
    }

    /// Non-blocking read for the async wrapper: `Ok(None)` when it would block (the read ring
    /// is then armed, so the monitor rings when bytes come).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_read_armed(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let i = &self.inner;
        if i.rd_shut.load(Ordering::Acquire) || buf.is_empty() {
            return Ok(Some(0));
        }
        let mut rx = lock(&i.rx);
        for _ in 0..2 {
            match rx.read(buf) {
                Ok(0) => return self.at_eof().map(Some),
                Ok(n) => {
                    rx.disarm();
                    return Ok(Some(n));
                }
                Err(RingError::WouldBlock) => {}
                Err(RingError::Closed) => return Ok(Some(0)),
                Err(e) => return Err(e.into()),
            }
            if i.owner.shared.is_dead() {
                return Err(gone());
            }
            if !rx.arm() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Non-blocking write for the async wrapper: `Ok(None)` when the ring is full (it is then
    /// armed, so the monitor rings when space frees).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_write_armed(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        let i = &self.inner;
        let mut tx = lock(&i.tx);
        for _ in 0..2 {
            if i.wr_shut.load(Ordering::Acquire) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match tx.write(buf) {
                Ok(n) => {
                    tx.disarm();
                    return Ok(Some(n));
                }
                Err(RingError::WouldBlock) => {}
                Err(RingError::BrokenPipe) => {
                    return Err(self
                        .peer_error("write")
                        .unwrap_or_else(|| RingError::BrokenPipe.into()))
                }
                Err(e) => return Err(e.into()),
            }
            if i.owner.shared.is_dead() {
                return Err(gone());
            }
            if !tx.arm() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The session this stream belongs to (for the async wrapper's waker registration).
    #[cfg(feature = "tokio")]
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.inner.owner
    }

    /// The probe of this stream's pipe that the dispatcher checks for a waiting task.
    #[cfg(feature = "tokio")]
    pub(crate) fn probe(&self) -> std::sync::Weak<dyn PipeProbe> {
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }
}

/// Locks `m` if it is free; `None` if another thread holds it.
fn try_lock<T>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

impl PipeProbe for Inner {
    /// A half held by another caller counts as ready: that caller is reading or writing
    /// now, and a spurious wake only makes the task look again.
    fn is_readable(&self) -> bool {
        self.rd_shut.load(Ordering::Acquire)
            || try_lock(&self.rx).is_none_or(|mut rx| rx.poll_readable())
    }

    fn is_writable(&self) -> bool {
        self.wr_shut.load(Ordering::Acquire)
            || try_lock(&self.tx).is_none_or(|mut tx| tx.poll_writable())
    }
}

pub(crate) fn unexpected(msg: &Message) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("arca: unexpected reply from the monitor: {msg:?}"),
    )
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
