//! Blocking `std::io::Read + Write` over a pipe.

use std::io;
use std::time::{Duration, Instant};

use crate::doorbell::Doorbell;
use crate::pipe::BidirectionalPipe;
use crate::ring::{Consumer, Producer, RingError};
use crate::wait::Wait;

/// The reading half of a [`SyncStream`].
#[derive(Debug)]
pub struct SyncReader<W: Wait = Doorbell> {
    rx: Consumer,
    waiter: W,
    timeout: Option<Duration>,
    nonblocking: bool,
}

/// The writing half of a [`SyncStream`].
#[derive(Debug)]
pub struct SyncWriter<W: Wait = Doorbell> {
    tx: Producer,
    waiter: W,
    timeout: Option<Duration>,
    nonblocking: bool,
}

/// A blocking byte stream over a [`BidirectionalPipe`].
///
/// Reads block until bytes arrive or the peer closes its writing half (then
/// `Ok(0)`); writes block until some space frees or the peer closes its
/// reading half (then `BrokenPipe`). Each blocking half sleeps on its own
/// waiter — pass two doorbells, one rung by the peer's writer, one by its
/// reader — so a reader thread and a writer thread never steal each other's
/// wakes. Timeouts give `TimedOut`; a dead peer (liveness fd) gives
/// `ConnectionAborted`; a corrupt ring gives `InvalidData`. Nothing waits
/// forever unless no timeout is set and the peer is alive and silent.
#[derive(Debug)]
pub struct SyncStream<W: Wait = Doorbell> {
    reader: SyncReader<W>,
    writer: SyncWriter<W>,
}

impl<W: Wait> SyncStream<W> {
    /// Wraps `pipe`; the reader sleeps on `read_waiter`, the writer on
    /// `write_waiter`.
    pub fn new(pipe: BidirectionalPipe, read_waiter: W, write_waiter: W) -> Self {
        let (tx, rx) = pipe.split();
        Self {
            reader: SyncReader::new(rx, read_waiter),
            writer: SyncWriter::new(tx, write_waiter),
        }
    }

    /// Splits into halves that can move to different threads.
    pub fn split(self) -> (SyncReader<W>, SyncWriter<W>) {
        (self.reader, self.writer)
    }

    /// Reading half.
    pub fn reader(&mut self) -> &mut SyncReader<W> {
        &mut self.reader
    }

    /// Writing half.
    pub fn writer(&mut self) -> &mut SyncWriter<W> {
        &mut self.writer
    }

    /// Sets both halves (non-)blocking.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.reader.set_nonblocking(nonblocking);
        self.writer.set_nonblocking(nonblocking);
    }

    /// Closes our writing half: the peer reads EOF after what was written.
    pub fn shutdown_write(&mut self) {
        self.writer.shutdown();
    }

    /// Closes our reading half: the peer's writes fail with `BrokenPipe`.
    pub fn shutdown_read(&mut self) {
        self.reader.shutdown();
    }
}

fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

impl<W: Wait> SyncReader<W> {
    /// Wraps a consumer.
    pub fn new(rx: Consumer, waiter: W) -> Self {
        Self {
            rx,
            waiter,
            timeout: None,
            nonblocking: false,
        }
    }
    /// `None` blocks without limit.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
    /// The read timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// Non-blocking reads give `WouldBlock` instead of sleeping.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }
    /// Closes the reading half.
    pub fn shutdown(&mut self) {
        self.rx.close();
    }
    /// The underlying consumer.
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.rx
    }
    /// The waiter this half sleeps on.
    pub fn waiter(&self) -> &W {
        &self.waiter
    }
}

impl<W: Wait> io::Read for SyncReader<W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_closed() {
            return Ok(0); // as a socket after shutdown(Read)
        }
        // The deadline is computed only once a wait is needed: a read that
        // finds bytes costs no clock read.
        let mut deadline = None;
        loop {
            match self.rx.read(buf) {
                Err(RingError::WouldBlock) if !self.nonblocking => {}
                r => return r.map_err(io::Error::from),
            }
            let d = *deadline.get_or_insert_with(|| deadline_after(self.timeout));
            self.rx.wait_readable(&self.waiter, d)?;
        }
    }
}

impl<W: Wait> SyncWriter<W> {
    /// Wraps a producer.
    pub fn new(tx: Producer, waiter: W) -> Self {
        Self {
            tx,
            waiter,
            timeout: None,
            nonblocking: false,
        }
    }
    /// `None` blocks without limit.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
    /// The write timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// Non-blocking writes give `WouldBlock` instead of sleeping.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }
    /// Closes the writing half.
    pub fn shutdown(&mut self) {
        self.tx.close();
    }
    /// The underlying producer.
    pub fn producer(&mut self) -> &mut Producer {
        &mut self.tx
    }
    /// The waiter this half sleeps on.
    pub fn waiter(&self) -> &W {
        &self.waiter
    }
}

impl<W: Wait> io::Write for SyncWriter<W> {
    /// Blocks until at least one byte is written, so `write_all` makes
    /// progress or fails; it never spins.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut deadline = None;
        loop {
            match self.tx.write(buf) {
                Err(RingError::WouldBlock) if !self.nonblocking => {}
                r => return r.map_err(io::Error::from),
            }
            let d = *deadline.get_or_insert_with(|| deadline_after(self.timeout));
            self.tx.wait_writable(&self.waiter, d)?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Wait> io::Read for SyncStream<W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<W: Wait> io::Write for SyncStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
