//! SPSC byte rings over a [`RingHeader`] and a power-of-two data area.
//!
//! Each side keeps its own index, the capacity and the data base in private
//! memory; it only *publishes* its index to the header and never reads it
//! back. The peer's index is loaded once per operation, validated
//! (`tail - head <= capacity`) and only that copy is used. A violation is a
//! [`RingError::Corrupt`] that poisons the pipe: every later operation on
//! either half returns it too.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{fence, Ordering};
use crate::wait::{Notify, Wait, WaitError};

/// How long a blocking wait spins before it sleeps: about what a wake through
/// an eventfd costs on these machines, so a peer that answers quickly is met
/// without a sleep, and an idle one costs no CPU after this.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(10);

/// A ring operation that did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Nothing to read (writer still open) or no space to write.
    #[error("operation would block")]
    WouldBlock,
    /// The reader has closed: nothing written now will ever be read.
    #[error("broken pipe: the reader has closed")]
    BrokenPipe,
    /// This side already closed its half.
    #[error("this half is closed")]
    Closed,
    /// The peer broke the ring's invariant; the pipe is poisoned.
    #[error("ring corrupt: head {head}, tail {tail}, capacity {capacity}")]
    Corrupt {
        /// The head index seen (or held privately).
        head: u64,
        /// The tail index seen (or held privately).
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// A record longer than the ring's capacity can never be written whole.
    #[error("record of {len} bytes exceeds the ring's capacity of {capacity}")]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The ring's capacity.
        capacity: usize,
    },
    /// `commit`/`consume` was asked for more than the segments offered.
    #[error("commit of {requested} bytes exceeds the {available} bytes offered")]
    Overcommit {
        /// Bytes the caller claimed.
        requested: usize,
        /// Bytes the segments offered.
        available: usize,
    },
}

impl From<RingError> for std::io::Error {
    fn from(e: RingError) -> Self {
        use std::io::ErrorKind;
        let kind = match e {
            RingError::WouldBlock => ErrorKind::WouldBlock,
            RingError::BrokenPipe | RingError::Closed => ErrorKind::BrokenPipe,
            RingError::Corrupt { .. } => ErrorKind::InvalidData,
            RingError::Overcommit { .. } | RingError::RecordTooLarge { .. } => {
                ErrorKind::InvalidInput
            }
        };
        std::io::Error::new(kind, e)
    }
}

/// Why a blocking ring operation failed: the ring's own error or the wait's.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The ring refused.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The wait ended without readiness.
    #[error(transparent)]
    Wait(#[from] WaitError),
}

impl From<BlockingError> for std::io::Error {
    fn from(e: BlockingError) -> Self {
        match e {
            BlockingError::Ring(r) => r.into(),
            BlockingError::Wait(w) => w.into(),
        }
    }
}

/// The poison flag a pipe's two halves share (private memory).
#[derive(Debug, Clone, Default)]
pub(crate) struct Poison(Arc<AtomicBool>);

impl Poison {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) use crate::mem::RingMem;
#[cfg(not(loom))]
use crate::segments::{ReadSegments, WriteSegments};

/// The writing half of a ring.
pub struct Producer {
    mem: RingMem,
    /// Bytes ever written; the only copy that counts (published to `tail`).
    tail: u64,
    /// The last validated `head`, so a write that fits needs no peer load.
    cached_head: u64,
    /// Free bytes offered by the last `writable_segments` and not committed
    /// yet. Zeroed by every other index movement (`write`, `write_record`) and
    /// by `close`: the offer's segments describe space as it was when made, so
    /// after the tail moves they may overlap published bytes.
    offered: usize,
    closed: bool,
    poison: Poison,
    wake_reader: Arc<dyn Notify>,
    spin: Duration,
}

/// The reading half of a ring.
pub struct Consumer {
    mem: RingMem,
    /// Bytes ever read; the only copy that counts (published to `head`).
    head: u64,
    /// The last validated `tail`.
    cached_tail: u64,
    /// Bytes offered by the last `readable_segments` and not consumed yet.
    /// Zeroed by every other index movement (`read`, `discard`) and by
    /// `close`, for the same reason as the producer's.
    offered: usize,
    closed: bool,
    poison: Poison,
    wake_writer: Arc<dyn Notify>,
    spin: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .field("capacity", &self.mem.cap())
            .field("closed", &self.closed)
            .finish()
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("capacity", &self.mem.cap())
            .field("closed", &self.closed)
            .finish()
    }
}

#[cfg(loom)]
#[cfg_attr(not(test), allow(dead_code))]
/// Makes the two halves of one ring. `mem`'s header must be freshly reset (or
/// in the state the peer left it: a side attaching to an existing ring starts
/// from the indices it finds, validated).
pub(crate) fn halves(
    mem: RingMem,
    poison_w: Poison,
    poison_r: Poison,
    wake_reader: Arc<dyn Notify>,
    wake_writer: Arc<dyn Notify>,
) -> (Producer, Consumer) {
    let h = mem.header();
    let tail = h.tail.v.load(Ordering::Acquire);
    let head = h.head.v.load(Ordering::Acquire);
    (
        Producer {
            mem: mem.clone(),
            tail,
            cached_head: head,
            offered: 0,
            closed: false,
            poison: poison_w,
            wake_reader,
            spin: DEFAULT_SPIN,
        },
        Consumer {
            mem,
            head,
            cached_tail: tail,
            offered: 0,
            closed: false,
            poison: poison_r,
            wake_writer,
            spin: DEFAULT_SPIN,
        },
    )
}

#[cfg(not(loom))]
/// Only the producer half of a ring, resuming from the indices in the header.
pub(crate) fn producer_only(
    mem: RingMem,
    poison: Poison,
    wake_reader: Arc<dyn Notify>,
) -> Producer {
    let h = mem.header();
    let tail = h.tail.v.load(Ordering::Acquire);
    let head = h.head.v.load(Ordering::Acquire);
    Producer {
        mem,
        tail,
        cached_head: head,
        offered: 0,
        closed: false,
        poison,
        wake_reader,
        spin: DEFAULT_SPIN,
    }
}

#[cfg(not(loom))]
/// Only the consumer half of a ring, resuming from the indices in the header.
pub(crate) fn consumer_only(
    mem: RingMem,
    poison: Poison,
    wake_writer: Arc<dyn Notify>,
) -> Consumer {
    let h = mem.header();
    let tail = h.tail.v.load(Ordering::Acquire);
    let head = h.head.v.load(Ordering::Acquire);
    Consumer {
        mem,
        head,
        cached_tail: tail,
        offered: 0,
        closed: false,
        poison,
        wake_writer,
        spin: DEFAULT_SPIN,
    }
}

impl Producer {
    /// The ring's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.cap()
    }

    /// Sets how long blocking waits spin before sleeping.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    fn corrupt(&self, head: u64) -> RingError {
        self.poison.set();
        RingError::Corrupt {
            head,
            tail: self.tail,
            capacity: self.mem.cap() as u64,
        }
    }

    fn check_open(&self) -> Result<(), RingError> {
        if self.poison.is_set() {
            return Err(RingError::Corrupt {
                head: self.cached_head,
                tail: self.tail,
                capacity: self.mem.cap() as u64,
            });
        }
        if self.closed {
            return Err(RingError::Closed);
        }
        // Acquire pairs with the consumer's Release store in `close`.
        if self.mem.header().reader_closed.v.load(Ordering::Acquire) != 0 {
            return Err(RingError::BrokenPipe);
        }
        Ok(())
    }

    /// Loads the consumer's `head` once, validates it, and returns the free
    /// space it implies.
    fn refresh(&mut self) -> Result<usize, RingError> {
        // Acquire pairs with the consumer's Release store of `head`, made after
        // it finished copying the bytes out: those bytes may be overwritten.
        let head = self.mem.header().head.v.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.mem.cap() as u64 {
            return Err(self.corrupt(head));
        }
        self.cached_head = head;
        Ok(self.mem.cap() - used as usize)
    }

    fn cached_free(&self) -> usize {
        // `tail - cached_head <= cap` holds: `cached_head` was validated.
        self.mem.cap() - self.tail.wrapping_sub(self.cached_head) as usize
    }

    /// Free space now (loads the consumer's index).
    ///
    /// # Errors
    /// [`RingError::Corrupt`] if the peer's index is invalid.
    pub fn free(&mut self) -> Result<usize, RingError> {
        if self.poison.is_set() {
            return Err(self.corrupt(self.cached_head));
        }
        self.refresh()
    }

    /// Writes as much of `buf` as fits, without blocking.
    ///
    /// # Errors
    /// [`RingError::WouldBlock`] when the ring is full, [`RingError::BrokenPipe`]
    /// once the reader has closed, [`RingError::Closed`] after
    /// [`close`](Self::close), [`RingError::Corrupt`] on a poisoned pipe.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        self.check_open()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut free = self.cached_free();
        if free < buf.len() {
            free = self.refresh()?;
        }
        if free == 0 {
            return Err(RingError::WouldBlock);
        }
        let n = free.min(buf.len());
        self.mem.copy_in(self.tail, &buf[..n]);
        // The tail moves: an outstanding zero-copy offer no longer describes
        // free space.
        self.offered = 0;
        self.publish(n);
        Ok(n)
    }

    /// Writes `parts` back to back as **one record**: all of it or nothing,
    /// made visible with a single publish, so the consumer never sees part of
    /// it (DATAPIPE.md §10).
    ///
    /// # Errors
    /// [`RingError::WouldBlock`] while the free space is smaller than the
    /// record, [`RingError::RecordTooLarge`] if it could never fit, and
    /// [`write`](Self::write)'s other errors.
    pub fn write_record(&mut self, parts: &[&[u8]]) -> Result<(), RingError> {
        self.write_records(&[parts]).map(|_| ())
    }

    /// Writes as many of `records` as fit, in order, each whole (its parts back
    /// to back), and makes them visible with **one** publish — one `tail`
    /// store and at most one doorbell for the batch. Returns how many records
    /// were written; the rest are untouched, for the caller to offer again.
    ///
    /// # Errors
    /// [`RingError::WouldBlock`] when not even the first record fits now,
    /// [`RingError::RecordTooLarge`] if the first record could never fit, and
    /// [`write`](Self::write)'s other errors. Empty `records` write nothing.
    pub fn write_records<R: AsRef<[P]>, P: AsRef<[u8]>>(
        &mut self,
        records: &[R],
    ) -> Result<usize, RingError> {
        self.check_open()?;
        let cap = self.mem.cap();
        let mut pos = self.tail;
        let mut written = 0;
        let mut bytes = 0usize;
        for record in records {
            let parts = record.as_ref();
            let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
            if len > cap {
                if written > 0 {
                    break;
                }
                return Err(RingError::RecordTooLarge { len, capacity: cap });
            }
            let need = bytes + len;
            if self.cached_free() < need && self.refresh()? < need {
                break;
            }
            for part in parts {
                let part = part.as_ref();
                self.mem.copy_in(pos, part);
                pos = pos.wrapping_add(part.len() as u64);
            }
            bytes = need;
            written += 1;
        }
        if written == 0 && !records.is_empty() {
            return Err(RingError::WouldBlock);
        }
        if bytes > 0 {
            self.offered = 0;
            self.publish(bytes);
        }
        Ok(written)
    }

    /// Makes `n` more bytes visible to the consumer and wakes it if it sleeps.
    fn publish(&mut self, n: usize) {
        self.tail = self.tail.wrapping_add(n as u64);
        // Release pairs with the consumer's Acquire load of `tail`: the bytes
        // copied in before this store are visible once the new tail is.
        self.mem.header().tail.v.store(self.tail, Ordering::Release);
        self.wake_reader_if_waiting();
    }

    fn wake_reader_if_waiting(&self) {
        // The SeqCst fence orders the `tail` store before the flag load; the
        // consumer orders its flag store before its `tail` re-load with the
        // same kind of fence. Of the two, at least one sees the other's store:
        // either the consumer sees the new tail and does not sleep, or we see
        // its flag and ring. (Store-buffering: without both fences, both could
        // miss and the consumer would sleep on data that is there.)
        fence(Ordering::SeqCst);
        // The flag stays set until the sleeper clears it, so every publish
        // while it sleeps rings. (Claiming it with a swap, to ring once per
        // sleep, loses a wakeup: loom's arm/disarm model shows how.)
        if self.mem.header().reader_waiting.v.load(Ordering::Relaxed) != 0 {
            self.wake_reader.notify();
        }
    }

    /// The free space as up to two raw segments, for `readv`-style filling.
    /// Follow with [`commit`](Self::commit).
    ///
    /// # Errors
    /// As [`write`](Self::write), except that a full ring gives empty
    /// segments rather than `WouldBlock`.
    #[cfg(not(loom))]
    pub fn writable_segments(&mut self) -> Result<WriteSegments, RingError> {
        self.check_open()?;
        let free = self.refresh()?;
        self.offered = free;
        Ok(WriteSegments::new(&self.mem, self.tail, free))
    }

    /// Publishes `n` bytes written into the segments from
    /// [`writable_segments`](Self::writable_segments). An offer may be
    /// committed in several parts; it is void once the tail moves any other
    /// way ([`write`](Self::write), [`write_record`](Self::write_record)) or
    /// the half closes.
    ///
    /// # Errors
    /// [`RingError::Overcommit`] if `n` exceeds what is still offered (zero
    /// for a void offer), [`RingError::Corrupt`] on a poisoned pipe,
    /// [`RingError::Closed`] after [`close`](Self::close).
    pub fn commit(&mut self, n: usize) -> Result<(), RingError> {
        if self.poison.is_set() {
            self.offered = 0;
            return Err(self.corrupt(self.cached_head));
        }
        if self.closed {
            return Err(RingError::Closed);
        }
        // `offered <= cached_free()` holds by construction (the offer was the
        // free space then, and only commits have moved the tail since); check
        // both anyway, so no caller mistake can publish past the free space.
        if n > self.offered || n > self.cached_free() {
            return Err(RingError::Overcommit {
                requested: n,
                available: self.offered.min(self.cached_free()),
            });
        }
        self.offered -= n;
        if n > 0 {
            self.publish(n);
        }
        Ok(())
    }

    /// Fills the ring straight from `fd` with one `readv` (no intermediate
    /// buffer), reading at most `limit` bytes. Returns the bytes read; `Ok(0)`
    /// means end of file on `fd` *or* a full ring — tell them apart with
    /// [`free`](Self::free) beforehand.
    ///
    /// # Errors
    /// The ring's errors as `io::Error` (see [`write`](Self::write)), or the
    /// `readv` error (including `WouldBlock` from a non-blocking fd).
    #[cfg(not(loom))]
    pub fn read_from_fd(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        limit: usize,
    ) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let segs = self.writable_segments()?;
        let (mut iov, mut count) = segs.iovecs();
        clamp_iovecs(&mut iov, &mut count, limit);
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: the iovecs describe free space of this ring inside the live
        // mapping (from `writable_segments`), which no honest peer touches
        // until we publish it; the kernel writes at most their total length.
        let r = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
        if r < 0 {
            self.offered = 0;
            return Err(std::io::Error::last_os_error());
        }
        let n = r as usize;
        self.commit(n)?;
        self.offered = 0;
        Ok(n)
    }

    /// Closes this half: the consumer reads what was written, then EOF.
    /// Always wakes the consumer. Idempotent.
    pub fn close(&mut self) {
        self.close_with(true);
    }

    /// [`close`](Self::close), ringing the consumer only if `wake`.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn close_with(&mut self, wake: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.offered = 0;
        // Release pairs with the consumer's Acquire load of `writer_closed`:
        // every tail published before is visible once the flag is.
        self.mem
            .header()
            .writer_closed
            .v
            .store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        if wake {
            self.wake_reader.notify();
        }
    }

    /// True once this half has been closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True once the consumer has closed its half (writes give `BrokenPipe`).
    pub fn is_peer_closed(&self) -> bool {
        self.mem.header().reader_closed.v.load(Ordering::Acquire) != 0
    }

    /// Event-loop form of [`wait_writable`](Self::wait_writable): publishes
    /// the need-wakeup flag (so the consumer rings when it frees space), then
    /// re-checks. Returns true if the ring is already writable — service it
    /// now rather than waiting for a ring. Call [`disarm`](Self::disarm) once
    /// serviced to stop the consumer's rings.
    pub fn arm(&mut self) -> bool {
        self.mem
            .header()
            .writer_waiting
            .v
            .store(1, Ordering::Release);
        // Pairs with the fence in `Consumer::wake_writer_if_waiting`.
        fence(Ordering::SeqCst);
        self.poll_writable()
    }

    /// Clears the need-wakeup flag set by [`arm`](Self::arm).
    pub fn disarm(&mut self) {
        self.mem
            .header()
            .writer_waiting
            .v
            .store(0, Ordering::Relaxed);
    }

    /// Ready to write: space is free, or a write would fail at once (reader
    /// closed, poisoned, closed by us). Loads the consumer's index.
    pub fn poll_writable(&mut self) -> bool {
        self.poll_writable_for(1)
    }

    /// Ready to write `n` bytes at once (a record): that much space is free,
    /// or a write would fail at once.
    pub fn poll_writable_for(&mut self, n: usize) -> bool {
        match self.check_open() {
            Err(_) => true,
            Ok(()) => !matches!(self.refresh(), Ok(free) if free < n.clamp(1, self.mem.cap())),
        }
    }

    /// Blocks until [`poll_writable`](Self::poll_writable) holds: spins for
    /// the spin budget, then sleeps on `waiter` with the need-wakeup flag set.
    ///
    /// # Errors
    /// [`WaitError`] when the deadline passes or the peer is gone.
    pub fn wait_writable<W: Wait>(
        &mut self,
        waiter: &W,
        deadline: Option<Instant>,
    ) -> Result<(), WaitError> {
        self.wait_writable_for(waiter, deadline, 1)
    }

    /// As [`wait_writable`](Self::wait_writable), until `n` bytes are free
    /// (for a record of `n` bytes).
    ///
    /// # Errors
    /// [`WaitError`] when the deadline passes or the peer is gone.
    pub fn wait_writable_for<W: Wait>(
        &mut self,
        waiter: &W,
        deadline: Option<Instant>,
        n: usize,
    ) -> Result<(), WaitError> {
        if spin_until(self.spin, || self.poll_writable_for(n)) {
            return Ok(());
        }
        loop {
            let token = waiter.prepare();
            let flag = &self.mem.header().writer_waiting.v;
            flag.store(1, Ordering::Release);
            // Pairs with the fence in `Consumer::wake_writer_if_waiting`: see
            // `Producer::wake_reader_if_waiting` for the argument.
            fence(Ordering::SeqCst);
            if self.poll_writable_for(n) {
                self.mem
                    .header()
                    .writer_waiting
                    .v
                    .store(0, Ordering::Relaxed);
                return Ok(());
            }
            let r = waiter.wait(token, deadline);
            self.mem
                .header()
                .writer_waiting
                .v
                .store(0, Ordering::Relaxed);
            // Readiness wins over a timeout or a dead peer that raced with
            // it: bytes a dead peer left behind are delivered first.
            if self.poll_writable_for(n) {
                return Ok(());
            }
            r?;
        }
    }
}

impl Consumer {
    /// The ring's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.cap()
    }

    /// Sets how long blocking waits spin before sleeping.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    fn corrupt(&self, tail: u64) -> RingError {
        self.poison.set();
        RingError::Corrupt {
            head: self.head,
            tail,
            capacity: self.mem.cap() as u64,
        }
    }

    fn check_usable(&self) -> Result<(), RingError> {
        if self.poison.is_set() {
            return Err(RingError::Corrupt {
                head: self.head,
                tail: self.cached_tail,
                capacity: self.mem.cap() as u64,
            });
        }
        if self.closed {
            return Err(RingError::Closed);
        }
        Ok(())
    }

    /// Loads the producer's `tail` once, validates it, and returns the bytes
    /// it makes readable.
    fn refresh(&mut self) -> Result<usize, RingError> {
        // Acquire pairs with the producer's Release store of `tail`: the bytes
        // before it are visible.
        let tail = self.mem.header().tail.v.load(Ordering::Acquire);
        let used = tail.wrapping_sub(self.head);
        if used > self.mem.cap() as u64 {
            return Err(self.corrupt(tail));
        }
        self.cached_tail = tail;
        Ok(used as usize)
    }

    fn cached_available(&self) -> usize {
        self.cached_tail.wrapping_sub(self.head) as usize
    }

    /// True once the producer has closed (EOF follows the remaining bytes).
    pub fn is_peer_closed(&self) -> bool {
        self.mem.header().writer_closed.v.load(Ordering::Acquire) != 0
    }

    /// Readable bytes now (loads the producer's index).
    ///
    /// # Errors
    /// [`RingError::Corrupt`] if the peer's index is invalid.
    pub fn available(&mut self) -> Result<usize, RingError> {
        self.check_usable()?;
        self.refresh()
    }

    /// Reads up to `buf.len()` bytes without blocking. `Ok(0)` is end of
    /// stream: the writer closed and every byte was read (or `buf` is empty).
    ///
    /// # Errors
    /// [`RingError::WouldBlock`] when empty and the writer is open,
    /// [`RingError::Corrupt`] on a poisoned pipe, [`RingError::Closed`] after
    /// [`close`](Self::close).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.check_usable()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut avail = self.cached_available();
        if avail < buf.len() {
            avail = self.refresh()?;
        }
        if avail == 0 {
            if !self.is_peer_closed() {
                return Err(RingError::WouldBlock);
            }
            // The flag's Acquire made every tail stored before it visible:
            // look once more, so no byte written before the close is lost.
            avail = self.refresh()?;
            if avail == 0 {
                return Ok(0);
            }
        }
        let n = avail.min(buf.len());
        self.mem.copy_out(self.head, &mut buf[..n]);
        // The head moves: an outstanding zero-copy offer no longer describes
        // unread bytes.
        self.offered = 0;
        self.release(n);
        Ok(n)
    }

    /// Copies up to `buf.len()` readable bytes starting `skip` bytes past the
    /// read position, **without consuming them** (to read a record's header
    /// before deciding what to do with it). Returns the bytes copied, which is
    /// less than `buf.len()` when fewer are published.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] or [`RingError::Closed`].
    pub fn peek(&mut self, skip: usize, buf: &mut [u8]) -> Result<usize, RingError> {
        self.check_usable()?;
        let mut avail = self.cached_available();
        if avail < skip.saturating_add(buf.len()) {
            avail = self.refresh()?;
        }
        let n = avail.saturating_sub(skip).min(buf.len());
        if let Some(dst) = buf.get_mut(..n) {
            self.mem.copy_out(self.head.wrapping_add(skip as u64), dst);
        }
        Ok(n)
    }

    /// Consumes `n` readable bytes without copying them (the rest of a record
    /// whose header [`peek`](Self::peek) showed, or one to drop).
    ///
    /// # Errors
    /// [`RingError::Overcommit`] if fewer than `n` bytes are readable, or
    /// [`RingError::Corrupt`] / [`RingError::Closed`].
    pub fn discard(&mut self, n: usize) -> Result<(), RingError> {
        self.check_usable()?;
        let mut avail = self.cached_available();
        if avail < n {
            avail = self.refresh()?;
        }
        if n > avail {
            return Err(RingError::Overcommit {
                requested: n,
                available: avail,
            });
        }
        if n > 0 {
            self.offered = 0;
            self.release(n);
        }
        Ok(())
    }

    /// Hands `n` consumed bytes back to the producer and wakes it if it
    /// sleeps for space.
    fn release(&mut self, n: usize) {
        self.head = self.head.wrapping_add(n as u64);
        // Release pairs with the producer's Acquire load of `head`: our reads
        // of those bytes happen before it may overwrite them.
        self.mem.header().head.v.store(self.head, Ordering::Release);
        self.wake_writer_if_waiting();
    }

    fn wake_writer_if_waiting(&self) {
        // See `Producer::wake_reader_if_waiting`.
        fence(Ordering::SeqCst);
        // The flag stays set until the sleeper clears it, so every publish
        // while it sleeps rings. (Claiming it with a swap, to ring once per
        // sleep, loses a wakeup: loom's arm/disarm model shows how.)
        if self.mem.header().writer_waiting.v.load(Ordering::Relaxed) != 0 {
            self.wake_writer.notify();
        }
    }

    /// The readable bytes as up to two raw segments, for `writev`-style
    /// draining. Follow with [`consume`](Self::consume).
    ///
    /// # Errors
    /// [`RingError::Corrupt`] or [`RingError::Closed`].
    #[cfg(not(loom))]
    pub fn readable_segments(&mut self) -> Result<ReadSegments, RingError> {
        self.check_usable()?;
        let avail = self.refresh()?;
        self.offered = avail;
        Ok(ReadSegments::new(&self.mem, self.head, avail))
    }

    /// Releases `n` bytes read from the segments of
    /// [`readable_segments`](Self::readable_segments). An offer may be
    /// consumed in several parts; it is void once the head moves any other
    /// way ([`read`](Self::read), [`discard`](Self::discard)) or the half
    /// closes.
    ///
    /// # Errors
    /// [`RingError::Overcommit`] if `n` exceeds what is still offered (zero
    /// for a void offer), [`RingError::Corrupt`] on a poisoned pipe,
    /// [`RingError::Closed`] after [`close`](Self::close).
    pub fn consume(&mut self, n: usize) -> Result<(), RingError> {
        self.check_usable().inspect_err(|_| self.offered = 0)?;
        // `offered <= cached_available()` holds by construction; checked
        // anyway so the head can never pass the validated tail.
        if n > self.offered || n > self.cached_available() {
            return Err(RingError::Overcommit {
                requested: n,
                available: self.offered.min(self.cached_available()),
            });
        }
        self.offered -= n;
        if n > 0 {
            self.release(n);
        }
        Ok(())
    }

    /// Drains the ring straight into `fd` with one `writev`, at most `limit`
    /// bytes. Returns the bytes written (0 when the ring is empty).
    ///
    /// # Errors
    /// The ring's errors as `io::Error`, or the `writev` error (including
    /// `WouldBlock` from a non-blocking fd).
    #[cfg(not(loom))]
    pub fn write_to_fd(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        limit: usize,
    ) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let segs = self.readable_segments()?;
        let (mut iov, mut count) = segs.iovecs();
        clamp_iovecs(&mut iov, &mut count, limit);
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: the iovecs describe published bytes of this ring inside the
        // live mapping; the kernel only reads them.
        let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
        if r < 0 {
            self.offered = 0;
            return Err(std::io::Error::last_os_error());
        }
        self.consume(r as usize)?;
        self.offered = 0;
        Ok(r as usize)
    }

    /// Closes this half: the producer's writes fail with `BrokenPipe` from
    /// now on. Always wakes the producer. Idempotent.
    pub fn close(&mut self) {
        self.close_with(true);
    }

    /// [`close`](Self::close), ringing the producer only if `wake`.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn close_with(&mut self, wake: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.offered = 0;
        // Release pairs with the producer's Acquire load of `reader_closed`.
        self.mem
            .header()
            .reader_closed
            .v
            .store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        if wake {
            self.wake_writer.notify();
        }
    }

    /// True once this half has been closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Event-loop form of [`wait_readable`](Self::wait_readable): publishes
    /// the need-wakeup flag (so the producer rings on its next publish), then
    /// re-checks. Returns true if the ring is already readable (or at EOF, or
    /// failing) — service it now. Call [`disarm`](Self::disarm) once serviced.
    pub fn arm(&mut self) -> bool {
        self.arm_for(1)
    }

    /// [`arm`](Self::arm) for a reader that needs `n` bytes at once (a
    /// record whose front is already readable): true when at least `n` bytes
    /// are available (`n` clamped to `1..=capacity`), at EOF, or failing.
    /// With fewer bytes the flag stays set, so the producer's next publish
    /// rings: a record cut short waits for its rest without being re-read.
    pub fn arm_for(&mut self, n: usize) -> bool {
        self.mem
            .header()
            .reader_waiting
            .v
            .store(1, Ordering::Release);
        // Pairs with the fence in `Producer::wake_reader_if_waiting`.
        fence(Ordering::SeqCst);
        self.poll_readable_for(n)
    }

    /// Clears the need-wakeup flag set by [`arm`](Self::arm).
    pub fn disarm(&mut self) {
        self.mem
            .header()
            .reader_waiting
            .v
            .store(0, Ordering::Relaxed);
    }

    /// Ready to read: bytes are available, EOF is reached, or a read would
    /// fail at once. Loads the producer's index.
    pub fn poll_readable(&mut self) -> bool {
        self.poll_readable_for(1)
    }

    /// Ready to read `n` bytes at once (a record): that many are available
    /// (`n` clamped to `1..=capacity`), EOF is reached, or a read would fail
    /// at once.
    pub fn poll_readable_for(&mut self, n: usize) -> bool {
        if self.check_usable().is_err() {
            return true;
        }
        match self.refresh() {
            Err(_) => true,
            Ok(avail) => avail >= n.clamp(1, self.mem.cap()) || self.is_peer_closed(),
        }
    }

    /// Blocks until [`poll_readable`](Self::poll_readable) holds: spins for
    /// the spin budget, then sleeps on `waiter` with the need-wakeup flag set.
    ///
    /// # Errors
    /// [`WaitError`] when the deadline passes or the peer is gone.
    pub fn wait_readable<W: Wait>(
        &mut self,
        waiter: &W,
        deadline: Option<Instant>,
    ) -> Result<(), WaitError> {
        if spin_until(self.spin, || self.poll_readable()) {
            return Ok(());
        }
        loop {
            let token = waiter.prepare();
            self.mem
                .header()
                .reader_waiting
                .v
                .store(1, Ordering::Release);
            // Pairs with the fence in `Producer::wake_reader_if_waiting`.
            fence(Ordering::SeqCst);
            if self.poll_readable() {
                self.mem
                    .header()
                    .reader_waiting
                    .v
                    .store(0, Ordering::Relaxed);
                return Ok(());
            }
            let r = waiter.wait(token, deadline);
            self.mem
                .header()
                .reader_waiting
                .v
                .store(0, Ordering::Relaxed);
            // Readiness wins over a timeout or a dead peer that raced with
            // it: bytes a dead peer left behind are delivered first.
            if self.poll_readable() {
                return Ok(());
            }
            r?;
        }
    }
}

/// One step of a spin-wait that began at `start` and may last `budget`: a
/// short busy pause in the first half, a yield of the CPU in the second.
/// Returns false when the wait should stop spinning and sleep now, because
/// the CPU is contended ([`cpu_contended`](crate::cpu_contended)).
///
/// The busy half meets a peer that is streaming on another CPU within
/// nanoseconds. The yielding half lets a thread that waits for this CPU run
/// first — on a machine with fewer cores than busy threads that is often the
/// very peer being waited for (a monitor, a server thread), which a busy spin
/// would hold off until the spin ends. With nobody waiting a yield returns at
/// once, so the check still comes every few hundred nanoseconds. A yield that
/// ran another thread for a long stretch means the CPU is contended: a spinner
/// would then lose a whole time slice per wait, where a sleeper is woken and
/// scheduled at once, so the spin ends there (and every spin of the process
/// sleeps at once for a while, see the `contention` module).
pub fn spin_step(start: Instant, budget: Duration) -> bool {
    if crate::cpu_contended() {
        return false;
    }
    if start.elapsed() < budget / 2 {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
        true
    } else {
        !crate::contention::yield_cpu()
    }
}

/// Polls `ready` for up to `budget`; true if it became ready. Ends early,
/// false, when [`spin_step`] says the CPU is contended.
fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() || cfg!(loom) {
        return false;
    }
    let start = Instant::now();
    loop {
        let spin_on = spin_step(start, budget);
        if ready() {
            return true;
        }
        if !spin_on || start.elapsed() >= budget {
            return false;
        }
    }
}

#[cfg(not(loom))]
fn clamp_iovecs(iov: &mut [libc::iovec; 2], count: &mut usize, limit: usize) {
    let mut left = limit;
    for (i, v) in iov.iter_mut().enumerate().take(*count) {
        if left == 0 {
            *count = i;
            return;
        }
        v.iov_len = v.iov_len.min(left);
        left -= v.iov_len;
    }
}

impl Drop for Producer {
    /// A dropped writer is a closed writer: the reader sees EOF, never a hang.
    fn drop(&mut self) {
        self.close();
    }
}

impl Drop for Consumer {
    /// A dropped reader is a closed reader: the writer sees `BrokenPipe`.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_contended_cpu_ends_a_spin_at_once() {
        // Marked before every look, so a test thread descheduled past the backoff still
        // finds the CPU contended.
        let start = Instant::now();
        let ready = spin_until(Duration::from_secs(5), || {
            crate::contention::mark_contended();
            false
        });
        assert!(!ready);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "spun {:?}",
            start.elapsed()
        );
    }
}
