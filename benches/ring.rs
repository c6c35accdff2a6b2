//! shm-ring between two real processes against the limits of the same two processes and
//! CPUs, measured in the same run: a minimal reference SPSC ring, the cache-line floor and a
//! cross-core copy; and against a Unix socketpair, pipe(2) and a bare eventfd ping-pong.
//!
//! ```text
//! cargo bench --bench ring
//! ARCA_BENCH_SHORT=1 cargo bench --bench ring     # smoke run, a few seconds
//! ```
//!
//! The bench binary re-executes itself as the peer (`ARCA_TWOPROC_ROLE=ring-peer`,
//! see `arca_testkit::twoproc`) and hands it one shm-ring pipe (region memfd,
//! four doorbells, liveness socket), the reference pipe's memfd, the memfds of
//! the cache line and of the copy buffer, one end of a socketpair, one end of
//! each of two pipes, two eventfds and a control socket. The parent then drives
//! one *phase* at a time: it sends a command byte on the control socket, the
//! peer serves that phase until an in-band stop marker, and answers with a
//! status byte.
//!
//! - `throughput/<size>`: the parent writes `iters` MiB in writes of `size`
//!   bytes (after an 8-byte length header); the peer drains with 256 KiB reads
//!   and sends a 1-byte ack when it has everything. One iteration = 1 MiB.
//!   `shm` uses blocking `SyncStream` halves without timeouts, `shm_timeout`
//!   the same with a 30 s timeout on every call; `reference` the reference
//!   ring (below), both sides spinning.
//! - `round_trip_64B`: a 64-byte message to the peer and back. The shm
//!   variants: `shm_poll` (both sides spin on non-blocking `read`/`write`),
//!   `shm_block_nospin` (`SyncStream` with spin 0: every wait sleeps on its
//!   doorbell), `shm_block_spin10us` (the default spin before sleeping);
//!   `reference_poll` the reference ring, both sides spinning;
//!   `cache_line_floor` one atomic word bounced between the two CPUs.
//! - `cross_core_copy`: 1 MiB per iteration through one 256 KiB shared buffer,
//!   a chunk at a time: the parent copies a chunk in and flags it, the peer
//!   copies it out and flags it back — the two copies every ring byte costs,
//!   plus a handoff per chunk and without overlap.
//!
//! The reference ring has shm-ring's pipe layout (DATAPIPE.md §3: headers at
//! 0 and 1024 with `tail` and `head` on their own 128-byte lines, data from
//! 4096) and its index protocol (each side loads the peer's index once per
//! call, `Acquire`, and publishes its own with `Release`), but no validation,
//! no closed flags, no doorbells or need-wakeup fence: what a ring costs with
//! nothing but the copies and the index lines. At the end the bench prints
//! shm-ring's figures as fractions of it, with the targets.
//!
//! The parent's bench thread is pinned to CPU 0 and the peer to CPU 1, so
//! every run measures the same placement (on a VM a cross-CPU wake costs tens
//! of µs, a same-CPU one a few, and an unpinned run flips between them). The
//! blocking round trips are then repeated with both on CPU 0 (`*_same_cpu`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_testkit::shm_link::{LinkEnd, OwnerLink};
use arca_testkit::twoproc::{ChildCommand, ChildEnv, ChildGuard};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use shm_ring::{Consumer, Doorbell, Producer, RingError, SyncReader, SyncWriter};

const ROLE: &str = "ring-peer";
/// Capacity of each shm ring (about a socketpair's default send buffer).
const RING: u64 = 256 << 10;
/// Bytes per throughput iteration.
const BATCH: u64 = 1 << 20;
/// The peer's read buffer in throughput phases (every transport).
const DRAIN_BUF: usize = 256 << 10;
/// Round-trip message size.
const MSG: usize = 64;
/// The cross-core copy's shared buffer: one chunk moves per handoff.
const COPY_CHUNK: usize = 256 << 10;
/// Polling loops give up after this long without progress; socket reads and
/// the `shm_timeout` variant time out after it. The other shm streams have
/// no timeout (`SyncWriter::write` reads the clock on every call when one is
/// set, which costs about as much as a 64-byte write): a dead peer still
/// ends their waits through the liveness socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Eventfd value that ends the eventfd phase (a ping is 1).
const EVENTFD_STOP: u64 = 1 << 32;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Rd = SyncReader<Arc<Doorbell>>;
type Wr = SyncWriter<Arc<Doorbell>>;

/// Phase commands on the control socket.
mod cmd {
    pub const SINK_SHM: u8 = b'S';
    pub const SINK_SOCK: u8 = b's';
    pub const SINK_PIPE: u8 = b'p';
    pub const ECHO_SHM_POLL: u8 = b'P';
    pub const ECHO_SHM_BLOCK: u8 = b'B';
    pub const ECHO_SOCK: u8 = b'e';
    pub const ECHO_PIPE: u8 = b'q';
    pub const ECHO_EVENTFD: u8 = b'v';
    pub const ECHO_LINE: u8 = b'L';
    pub const SINK_REF: u8 = b'R';
    pub const ECHO_REF: u8 = b'r';
    pub const COPY_OUT: u8 = b'C';
}

/// A shared memfd mapping: a flag word at offset 0, and past the first page (if the mapping
/// is longer) a buffer. The cache-line ping-pong uses the word alone: the floor for any
/// polling round trip between these two CPUs, measured in the same run (on a VM it moves
/// with where the host puts the vCPUs). The cross-core copy uses both.
struct Shared(memmap2::MmapRaw);

impl Shared {
    fn create(name: &std::ffi::CStr, len: u64) -> io::Result<(Self, OwnedFd)> {
        let fd =
            nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(len)?;
        let peer = file.as_fd().try_clone_to_owned()?;
        Ok((Self::map(&file)?, peer))
    }

    fn map(file: &File) -> io::Result<Self> {
        let map = memmap2::MmapRaw::map_raw(file)?;
        if map.len() < 4096 {
            return Err(io::Error::other(format!(
                "shared mapping of {} bytes, need at least 4096",
                map.len()
            )));
        }
        Ok(Self(map))
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, at least 4096 bytes long (checked in `map`)
        // and lives as long as `self`; every access to its first word is atomic.
        unsafe { &*self.0.as_mut_ptr().cast::<AtomicU64>() }
    }

    /// Bytes in the buffer past the first page.
    fn buf_len(&self) -> usize {
        self.0.len() - 4096
    }

    /// Copies `src` into the buffer at its start.
    fn copy_in(&self, src: &[u8]) {
        assert!(src.len() <= self.buf_len());
        // SAFETY: the buffer spans [4096, len) of the live mapping and `src` fits in it
        // (asserted); the peer does not touch the buffer until the flag word says so, and
        // the two never overlap (one is private memory).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.as_mut_ptr().add(4096), src.len())
        }
    }

    /// Copies the start of the buffer into `dst`.
    fn copy_out(&self, dst: &mut [u8]) {
        assert!(dst.len() <= self.buf_len());
        // SAFETY: as in `copy_in`, the other way round.
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.as_ptr().add(4096), dst.as_mut_ptr(), dst.len())
        }
    }
}

/// The value that ends the line ping-pong (odd, like every ping).
const LINE_STOP: u64 = u64::MAX;

/// Spins until `word` holds a value for which `done` holds; gives up after
/// [`IO_TIMEOUT`].
fn spin_for(word: &AtomicU64, done: impl Fn(u64) -> bool) -> io::Result<u64> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        let v = word.load(Ordering::Acquire);
        if done(v) {
            return Ok(v);
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins & 0xffff == 0 && since.get_or_insert_with(Instant::now).elapsed() > IO_TIMEOUT {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
}

/// The peer's side of the line ping-pong: answers each odd ping `v` with
/// `v + 1` until [`LINE_STOP`].
fn echo_line(line: &Shared) -> io::Result<()> {
    let word = line.word();
    loop {
        let v = spin_for(word, |v| v % 2 == 1)?;
        if v == LINE_STOP {
            word.store(0, Ordering::Release);
            return Ok(());
        }
        word.store(v + 1, Ordering::Release);
    }
}

// ------------------------------------------------------------ shared loops

/// Reads exactly `buf.len()` bytes by spinning on non-blocking reads.
fn poll_read_exact(c: &mut Consumer, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    let mut spins = 0u32;
    let mut idle_since: Option<Instant> = None;
    while got < buf.len() {
        match c.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(RingError::WouldBlock) => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins & 0xffff == 0 {
                    let t = *idle_since.get_or_insert_with(Instant::now);
                    if t.elapsed() > IO_TIMEOUT {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `buf` by spinning on non-blocking writes.
fn poll_write_all(p: &mut Producer, buf: &[u8]) -> io::Result<()> {
    let mut put = 0;
    let mut spins = 0u32;
    let mut idle_since: Option<Instant> = None;
    while put < buf.len() {
        match p.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(RingError::WouldBlock) => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins & 0xffff == 0 {
                    let t = *idle_since.get_or_insert_with(Instant::now);
                    if t.elapsed() > IO_TIMEOUT {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_timeout(rd: &mut Rd, wr: &mut Wr, timeout: Option<Duration>) {
    rd.set_timeout(timeout);
    wr.set_timeout(timeout);
}

fn set_spin(rd: &mut Rd, wr: &mut Wr, spin: Duration) {
    rd.consumer().set_spin(spin);
    wr.producer().set_spin(spin);
}

// --------------------------------------------------------- reference ring

/// Offsets of the reference pipe, as in shm-ring's pipe block (DATAPIPE.md §3).
mod layout {
    /// Header of the ring the peer writes (`to_owner`); `tail` at +0, `head` at +128.
    pub const TO_OWNER: usize = 0;
    /// Header of the ring the owner writes (`to_peer`).
    pub const TO_PEER: usize = 1024;
    pub const TAIL: usize = 0;
    pub const HEAD: usize = 128;
    /// Data of `to_owner`; `to_peer`'s follows it.
    pub const DATA: usize = 4096;
}

/// The reference pipe: a memfd holding two rings in shm-ring's layout, each [`RING`] bytes.
/// See the crate docs for what it leaves out.
struct RefPipe(Arc<memmap2::MmapRaw>);

/// One side of a reference ring: the shared header and data, and this side's own index,
/// which lives here and is only published.
struct RefSide {
    map: Arc<memmap2::MmapRaw>,
    header: usize,
    data: usize,
    /// Bytes this side has ever written (producer) or read (consumer).
    index: u64,
}

impl RefPipe {
    const LEN: u64 = layout::DATA as u64 + 2 * RING;

    fn create() -> io::Result<(Self, OwnedFd)> {
        let fd = nix::sys::memfd::memfd_create(
            c"ring-bench-reference",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let file = File::from(fd);
        file.set_len(Self::LEN)?;
        let peer = file.as_fd().try_clone_to_owned()?;
        Ok((Self::map(&file)?, peer))
    }

    fn map(file: &File) -> io::Result<Self> {
        let map = memmap2::MmapRaw::map_raw(file)?;
        if (map.len() as u64) < Self::LEN {
            return Err(io::Error::other(format!(
                "reference pipe of {} bytes, need {}",
                map.len(),
                Self::LEN
            )));
        }
        Ok(Self(Arc::new(map)))
    }

    fn side(&self, header: usize, data: usize) -> RefSide {
        RefSide {
            map: Arc::clone(&self.0),
            header,
            data,
            index: 0,
        }
    }

    /// The owner's (parent's) ends: a producer on `to_peer`, a consumer on `to_owner`.
    fn owner(&self) -> (RefWriter, RefReader) {
        let to_peer_data = layout::DATA + RING as usize;
        (
            RefWriter(self.side(layout::TO_PEER, to_peer_data)),
            RefReader(self.side(layout::TO_OWNER, layout::DATA)),
        )
    }

    /// The peer's ends: a producer on `to_owner`, a consumer on `to_peer`.
    fn peer(&self) -> (RefWriter, RefReader) {
        let to_peer_data = layout::DATA + RING as usize;
        (
            RefWriter(self.side(layout::TO_OWNER, layout::DATA)),
            RefReader(self.side(layout::TO_PEER, to_peer_data)),
        )
    }
}

impl RefSide {
    fn word(&self, field: usize) -> &AtomicU64 {
        // SAFETY: `header + field` is 0, 128, 1024 or 1152: 8-aligned (the mapping is
        // page-aligned) and inside the live mapping, which `map` checked is `RefPipe::LEN`
        // long and which `self` keeps alive; both processes access it only atomically.
        unsafe {
            &*self
                .map
                .as_mut_ptr()
                .add(self.header + field)
                .cast::<AtomicU64>()
        }
    }

    /// Copies `len` bytes between `buf` and the ring's data at stream position `at`, in
    /// at most two pieces; `into_ring` picks the direction.
    ///
    /// # Safety
    /// `buf` is valid for `len` bytes (reads if `into_ring`, writes otherwise), `len <=
    /// RING`, and the ring bytes `[at, at + len)` are this side's under the index protocol
    /// (free space for the producer, published bytes for the consumer).
    unsafe fn copy(&self, at: u64, buf: *mut u8, len: usize, into_ring: bool) {
        let off = (at % RING) as usize;
        let first = len.min(RING as usize - off);
        // SAFETY: `data + off + first <= data + RING` and `data + len - first <= data +
        // RING`, both inside the mapping (`RefPipe::LEN`); `buf` is valid for `len` bytes
        // (the caller's promise) and is private memory, so the ranges never overlap.
        unsafe {
            let ring = self.map.as_mut_ptr().add(self.data);
            let (a, b) = (ring.add(off), buf.add(first));
            if into_ring {
                std::ptr::copy_nonoverlapping(buf, a, first);
                std::ptr::copy_nonoverlapping(b, ring, len - first);
            } else {
                std::ptr::copy_nonoverlapping(a, buf, first);
                std::ptr::copy_nonoverlapping(ring, b, len - first);
            }
        }
    }
}

/// The producer of a reference ring, spinning while the ring is full.
struct RefWriter(RefSide);

/// The consumer of a reference ring, spinning while the ring is empty.
struct RefReader(RefSide);

impl RefWriter {
    /// Writes what fits of `buf`; 0 if the ring is full.
    fn try_write(&mut self, buf: &[u8]) -> usize {
        let s = &mut self.0;
        // Pairs with the consumer's `Release` store of `head`: its reads of the bytes it
        // frees are done.
        let head = s.word(layout::HEAD).load(Ordering::Acquire);
        let free = RING - s.index.wrapping_sub(head);
        let n = buf.len().min(free as usize);
        if n > 0 {
            // SAFETY: `buf` is valid for `n <= buf.len()` bytes; `[index, index + n)` is
            // free space (`n <= RING - (tail - head)`), the producer's alone.
            unsafe { s.copy(s.index, buf.as_ptr().cast_mut(), n, true) };
            s.index = s.index.wrapping_add(n as u64);
            // Pairs with the consumer's `Acquire` load of `tail`: the bytes are visible.
            s.word(layout::TAIL).store(s.index, Ordering::Release);
        }
        n
    }
}

impl RefReader {
    /// Reads what is there, up to `buf.len()`; 0 if the ring is empty.
    fn try_read(&mut self, buf: &mut [u8]) -> usize {
        let s = &mut self.0;
        // Pairs with the producer's `Release` store of `tail`.
        let tail = s.word(layout::TAIL).load(Ordering::Acquire);
        let used = tail.wrapping_sub(s.index);
        let n = buf.len().min(used as usize);
        if n > 0 {
            // SAFETY: `buf` is valid for `n` bytes; `[index, index + n)` is published
            // (`n <= tail - head`), the consumer's alone until `head` moves past it.
            unsafe { s.copy(s.index, buf.as_mut_ptr(), n, false) };
            s.index = s.index.wrapping_add(n as u64);
            // Pairs with the producer's `Acquire` load of `head`: the space is free.
            s.word(layout::HEAD).store(s.index, Ordering::Release);
        }
        n
    }
}

/// Spins on `step` until it moves a byte; gives up after [`IO_TIMEOUT`] without progress.
fn spin_io(mut step: impl FnMut() -> usize) -> io::Result<usize> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        let n = step();
        if n > 0 {
            return Ok(n);
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins & 0xffff == 0 && since.get_or_insert_with(Instant::now).elapsed() > IO_TIMEOUT {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
}

impl Write for RefWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        spin_io(|| self.try_write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for RefReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        spin_io(|| self.try_read(buf))
    }
}

/// The peer's side of the cross-core copy: for each odd flag `v`, copies the buffer out
/// into private memory and answers `v + 1`, until [`LINE_STOP`].
fn copy_out(shared: &Shared) -> io::Result<()> {
    let mut private = vec![0u8; shared.buf_len()];
    let word = shared.word();
    loop {
        let v = spin_for(word, |v| v % 2 == 1)?;
        if v == LINE_STOP {
            word.store(0, Ordering::Release);
            return Ok(());
        }
        shared.copy_out(&mut private);
        std::hint::black_box(&mut private);
        word.store(v + 1, Ordering::Release);
    }
}

// -------------------------------------------------------------- peer side

/// Drains length-prefixed batches from `data`, acking each on `ack`, until a
/// zero length.
fn sink(data: &mut impl Read, ack: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; DRAIN_BUF];
    loop {
        let mut hdr = [0u8; 8];
        data.read_exact(&mut hdr)?;
        let mut left = u64::from_le_bytes(hdr);
        if left == 0 {
            return Ok(());
        }
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(DRAIN_BUF);
            let n = data.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        ack.write_all(&[1])?;
    }
}

/// Echoes 64-byte messages until one starts with 0.
fn echo(rd: &mut impl Read, wr: &mut impl Write) -> io::Result<()> {
    let mut msg = [0u8; MSG];
    loop {
        rd.read_exact(&mut msg)?;
        if msg[0] == 0 {
            return Ok(());
        }
        wr.write_all(&msg)?;
    }
}

fn echo_shm_poll(rd: &mut Rd, wr: &mut Wr) -> io::Result<()> {
    let mut msg = [0u8; MSG];
    loop {
        poll_read_exact(rd.consumer(), &mut msg)?;
        if msg[0] == 0 {
            return Ok(());
        }
        poll_write_all(wr.producer(), &msg)?;
    }
}

fn echo_eventfd(ping: &mut File, pong: &mut File) -> io::Result<()> {
    loop {
        let mut v = [0u8; 8];
        ping.read_exact(&mut v)?;
        if u64::from_ne_bytes(v) != 1 {
            return Ok(());
        }
        pong.write_all(&1u64.to_ne_bytes())?;
    }
}

fn peer(env: &ChildEnv) -> Result<(), Error> {
    let (mut rd, mut wr) = LinkEnd::from_child_env(env)?.into_stream(None).split();
    let mut control = UnixStream::from(env.take_fd("CONTROL")?);
    let sock = UnixStream::from(env.take_fd("SOCK")?);
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut pipe_down = File::from(env.take_fd("PIPE_DOWN")?);
    let mut pipe_up = File::from(env.take_fd("PIPE_UP")?);
    let mut ping = File::from(env.take_fd("PING")?);
    let mut pong = File::from(env.take_fd("PONG")?);
    let line = Shared::map(&File::from(env.take_fd("LINE")?))?;
    let copy = Shared::map(&File::from(env.take_fd("COPY")?))?;
    let (mut ref_wr, mut ref_rd) = RefPipe::map(&File::from(env.take_fd("REF")?))?.peer();
    loop {
        let mut c = [0u8; 1];
        if control.read(&mut c)? == 0 {
            return Ok(()); // the parent is done
        }
        let r = match c[0] {
            cmd::SINK_SHM => {
                // The next control byte: 1 to set stream timeouts.
                let mut t = [0u8; 1];
                control.read_exact(&mut t)?;
                set_timeout(&mut rd, &mut wr, (t[0] != 0).then_some(IO_TIMEOUT));
                set_spin(&mut rd, &mut wr, shm_ring::DEFAULT_SPIN);
                let r = sink(&mut rd, &mut wr);
                set_timeout(&mut rd, &mut wr, None);
                r
            }
            cmd::SINK_SOCK => sink(&mut &sock, &mut &sock),
            cmd::SINK_PIPE => sink(&mut pipe_down, &mut pipe_up),
            cmd::ECHO_SHM_POLL => echo_shm_poll(&mut rd, &mut wr),
            cmd::ECHO_SHM_BLOCK => {
                // The spin to use comes in the next control byte, in µs.
                let mut us = [0u8; 1];
                control.read_exact(&mut us)?;
                set_spin(&mut rd, &mut wr, Duration::from_micros(u64::from(us[0])));
                echo(&mut rd, &mut wr)
            }
            cmd::ECHO_SOCK => echo(&mut &sock, &mut &sock),
            cmd::ECHO_PIPE => echo(&mut pipe_down, &mut pipe_up),
            cmd::ECHO_EVENTFD => echo_eventfd(&mut ping, &mut pong),
            cmd::ECHO_LINE => echo_line(&line),
            cmd::SINK_REF => sink(&mut ref_rd, &mut ref_wr),
            cmd::ECHO_REF => echo(&mut ref_rd, &mut ref_wr),
            cmd::COPY_OUT => copy_out(&copy),
            other => Err(io::Error::other(format!("unknown command {other}"))),
        };
        control.write_all(&[u8::from(r.is_err())])?;
        r?;
    }
}

// ------------------------------------------------------------ parent side

/// The parent's ends of every transport, and the peer.
struct Bench {
    rd: Rd,
    wr: Wr,
    control: UnixStream,
    sock: UnixStream,
    pipe_down: File,
    pipe_up: File,
    ping: File,
    pong: File,
    line: Shared,
    copy: Shared,
    ref_wr: RefWriter,
    ref_rd: RefReader,
    payload: Vec<u8>,
    /// The cross-core copy's source chunk.
    payload_copy: Vec<u8>,
    /// CPUs available when the bench started (before any pinning).
    cpus: usize,
    // Dropped last: kills and reaps the peer if it is still running.
    peer: ChildGuard,
}

/// Pins thread `pid` (0: the calling thread) to `cpu` (every CPU if `None`).
fn pin(pid: nix::unistd::Pid, cpu: Option<usize>) -> nix::Result<()> {
    use nix::sched::CpuSet;
    let mut set = CpuSet::new();
    for c in 0..CpuSet::count() {
        if cpu.unwrap_or(c) == c {
            set.set(c)?;
        }
    }
    nix::sched::sched_setaffinity(pid, &set)
}

fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

fn eventfd() -> io::Result<File> {
    // A Doorbell is a non-blocking eventfd; the bare baseline blocks in
    // read(2), so make a blocking one.
    let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
        0,
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
    )?;
    Ok(File::from(OwnedFd::from(fd)))
}

impl Bench {
    fn spawn() -> Result<Self, Error> {
        let mut link = OwnerLink::new("ring-bench", RING, RING)?;
        let (control, control_peer) = UnixStream::pair()?;
        let (sock, sock_peer) = UnixStream::pair()?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let (down_r, pipe_down) = pipe()?;
        let (pipe_up, up_w) = pipe()?;
        let (ping, pong) = (eventfd()?, eventfd()?);
        let (line, line_peer) = Shared::create(c"ring-bench-line", 4096)?;
        let (copy, copy_peer) = Shared::create(c"ring-bench-copy", 4096 + COPY_CHUNK as u64)?;
        let (ref_pipe, ref_peer) = RefPipe::create()?;
        let (ref_wr, ref_rd) = ref_pipe.owner();
        let cmd = ChildCommand::new(ROLE)
            .fd("CONTROL", control_peer.into())
            .fd("SOCK", sock_peer.into())
            .fd("PIPE_DOWN", down_r.into())
            .fd("PIPE_UP", up_w.into())
            .fd("PING", ping.as_fd().try_clone_to_owned()?)
            .fd("PONG", pong.as_fd().try_clone_to_owned()?)
            .fd("LINE", line_peer)
            .fd("COPY", copy_peer)
            .fd("REF", ref_peer);
        let peer = link.hand_to(cmd)?.spawn()?;
        let (rd, wr) = link.into_end().into_stream(None).split();
        Ok(Self {
            rd,
            wr,
            control,
            sock,
            pipe_down,
            pipe_up,
            ping,
            pong,
            line,
            copy,
            ref_wr,
            ref_rd,
            payload: vec![0xa5; 64 << 10],
            payload_copy: vec![0x5a; COPY_CHUNK],
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            peer,
        })
    }

    /// Pins the parent's bench thread to `parent` and the peer (a
    /// single-threaded process, so its pid names its only thread) to
    /// `child`. Skipped on a machine with fewer than two CPUs.
    fn place(&self, parent: usize, child: usize) {
        if self.cpus < 2 {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.peer.id() as i32);
        pin(nix::unistd::Pid::from_raw(0), Some(parent)).expect("pin parent");
        pin(pid, Some(child)).expect("pin peer");
    }

    fn begin(&mut self, c: &[u8]) {
        self.control.write_all(c).expect("control write");
    }

    /// Reads the peer's status for the phase just stopped.
    fn end(&mut self, what: &str) {
        let mut s = [0u8; 1];
        self.control.read_exact(&mut s).expect("control read");
        assert_eq!(s[0], 0, "peer failed in phase {what}");
    }

    fn finish(self) {
        let Self {
            control,
            peer,
            rd,
            wr,
            ..
        } = self;
        let _ = pin(nix::unistd::Pid::from_raw(0), None);
        drop((control, rd, wr)); // EOF on control: the peer exits
        let out = peer.finish(IO_TIMEOUT).expect("peer exit");
        assert!(out.status.success(), "peer: {:?}", out.status);
    }
}

/// `iters` MiB in writes of `size`, after a length header; waits for the ack.
fn stream(
    data: &mut impl Write,
    ack: &mut impl Read,
    payload: &[u8],
    size: usize,
    iters: u64,
) -> Duration {
    let total = iters * BATCH;
    let start = Instant::now();
    data.write_all(&total.to_le_bytes()).unwrap();
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(size);
        data.write_all(&payload[..n]).unwrap();
        left -= n as u64;
    }
    ack.read_exact(&mut [0u8; 1]).unwrap();
    start.elapsed()
}

fn round_trips(wr: &mut impl Write, rd: &mut impl Read, iters: u64) -> Duration {
    let msg = [1u8; MSG];
    let mut back = [0u8; MSG];
    let start = Instant::now();
    for _ in 0..iters {
        wr.write_all(&msg).unwrap();
        rd.read_exact(&mut back).unwrap();
    }
    start.elapsed()
}

thread_local! {
    /// Every timed call criterion made, per bench id: nanoseconds per iteration, in order.
    static RECORDED: RefCell<HashMap<String, Vec<f64>>> = RefCell::new(HashMap::new());
}

/// Notes one timed call of bench `id` (`group/function`) and hands its time back to criterion.
fn rec(id: &str, iters: u64, d: Duration) -> Duration {
    RECORDED.with(|r| {
        r.borrow_mut()
            .entry(id.to_owned())
            .or_default()
            .push(d.as_nanos() as f64 / iters.max(1) as f64);
    });
    d
}

/// The time per iteration of bench `id`: the median of its last [`Sizes::samples`] calls
/// (criterion's samples, which follow its warm-up calls), in nanoseconds.
fn recorded(id: &str) -> Option<f64> {
    RECORDED.with(|r| {
        let r = r.borrow();
        let v = r.get(id)?;
        let keep = v.len().min(sizes().samples);
        arca_testkit::stats::median(&v[v.len() - keep..])
    })
}

fn throughput(c: &mut Criterion, b: &mut Bench) {
    for size in [64usize, 1024, 64 << 10] {
        let label = if size >= 1024 {
            format!("{}KiB", size >> 10)
        } else {
            format!("{size}B")
        };
        let group = format!("throughput/{label}");
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Bytes(BATCH));

        for (name, timeout) in [("shm", None), ("shm_timeout", Some(IO_TIMEOUT))] {
            b.begin(&[cmd::SINK_SHM, u8::from(timeout.is_some())]);
            set_timeout(&mut b.rd, &mut b.wr, timeout);
            set_spin(&mut b.rd, &mut b.wr, shm_ring::DEFAULT_SPIN);
            let id = format!("{group}/{name}");
            g.bench_function(BenchmarkId::from_parameter(name), |bn| {
                bn.iter_custom(|iters| {
                    rec(
                        &id,
                        iters,
                        stream(&mut b.wr, &mut b.rd, &b.payload, size, iters),
                    )
                })
            });
            b.wr.write_all(&0u64.to_le_bytes()).unwrap();
            set_timeout(&mut b.rd, &mut b.wr, None);
            b.end(name);
        }

        b.begin(&[cmd::SINK_REF]);
        let id = format!("{group}/reference");
        g.bench_function(BenchmarkId::from_parameter("reference"), |bn| {
            bn.iter_custom(|iters| {
                rec(
                    &id,
                    iters,
                    stream(&mut b.ref_wr, &mut b.ref_rd, &b.payload, size, iters),
                )
            })
        });
        b.ref_wr.write_all(&0u64.to_le_bytes()).unwrap();
        b.end("sink reference");

        b.begin(&[cmd::SINK_SOCK]);
        let id = format!("{group}/socketpair");
        g.bench_function(BenchmarkId::from_parameter("socketpair"), |bn| {
            bn.iter_custom(|iters| {
                rec(
                    &id,
                    iters,
                    stream(&mut &b.sock, &mut &b.sock, &b.payload, size, iters),
                )
            })
        });
        (&b.sock).write_all(&0u64.to_le_bytes()).unwrap();
        b.end("sink socketpair");

        b.begin(&[cmd::SINK_PIPE]);
        let id = format!("{group}/pipe");
        g.bench_function(BenchmarkId::from_parameter("pipe"), |bn| {
            bn.iter_custom(|iters| {
                rec(
                    &id,
                    iters,
                    stream(&mut b.pipe_down, &mut b.pipe_up, &b.payload, size, iters),
                )
            })
        });
        b.pipe_down.write_all(&0u64.to_le_bytes()).unwrap();
        b.end("sink pipe");
        g.finish();
    }

    // The two copies every ring byte costs, one chunk at a time.
    let mut g = c.benchmark_group("cross_core_copy");
    g.throughput(Throughput::Bytes(BATCH));
    b.begin(&[cmd::COPY_OUT]);
    g.bench_function("1MiB", |bn| {
        bn.iter_custom(|iters| {
            let word = b.copy.word();
            let mut v = word.load(Ordering::Acquire);
            let chunk = &b.payload_copy[..];
            let start = Instant::now();
            for _ in 0..iters * (BATCH / COPY_CHUNK as u64) {
                b.copy.copy_in(chunk);
                let ping = v + 1;
                // Pairs with the peer's `Acquire` load: the chunk is visible before the flag.
                word.store(ping, Ordering::Release);
                v = spin_for(word, |w| w == ping + 1).unwrap();
            }
            rec("cross_core_copy/1MiB", iters, start.elapsed())
        })
    });
    b.copy.word().store(LINE_STOP, Ordering::Release);
    b.end("copy out");
    g.finish();
}

fn round_trip(c: &mut Criterion, b: &mut Bench) {
    let stop = [0u8; MSG];
    let mut g = c.benchmark_group("round_trip_64B");

    b.begin(&[cmd::ECHO_SHM_POLL]);
    g.bench_function("shm_poll", |bn| {
        bn.iter_custom(|iters| {
            let msg = [1u8; MSG];
            let mut back = [0u8; MSG];
            let start = Instant::now();
            for _ in 0..iters {
                poll_write_all(b.wr.producer(), &msg).unwrap();
                poll_read_exact(b.rd.consumer(), &mut back).unwrap();
            }
            rec("round_trip_64B/shm_poll", iters, start.elapsed())
        })
    });
    poll_write_all(b.wr.producer(), &stop).unwrap();
    b.end("echo shm poll");

    b.begin(&[cmd::ECHO_REF]);
    g.bench_function("reference_poll", |bn| {
        bn.iter_custom(|iters| {
            rec(
                "round_trip_64B/reference_poll",
                iters,
                round_trips(&mut b.ref_wr, &mut b.ref_rd, iters),
            )
        })
    });
    b.ref_wr.write_all(&stop).unwrap();
    b.end("echo reference");

    // The floor under `shm_poll`: one cache line, one atomic each way.
    b.begin(&[cmd::ECHO_LINE]);
    g.bench_function("cache_line_floor", |bn| {
        bn.iter_custom(|iters| {
            let word = b.line.word();
            let mut v = word.load(Ordering::Acquire);
            let start = Instant::now();
            for _ in 0..iters {
                let ping = v + 1;
                word.store(ping, Ordering::Release);
                v = spin_for(word, |w| w == ping + 1).unwrap();
            }
            rec("round_trip_64B/cache_line_floor", iters, start.elapsed())
        })
    });
    b.line.word().store(LINE_STOP, Ordering::Release);
    b.end("echo line");
    blocking_round_trips(&mut g, b, "");
    g.finish();
}

/// The round trips in which both sides may sleep; `suffix` names the CPU
/// placement.
fn blocking_round_trips(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    b: &mut Bench,
    suffix: &str,
) {
    let stop = [0u8; MSG];
    for (name, spin_us) in [("shm_block_nospin", 0u8), ("shm_block_spin10us", 10)] {
        b.begin(&[cmd::ECHO_SHM_BLOCK, spin_us]);
        set_spin(
            &mut b.rd,
            &mut b.wr,
            Duration::from_micros(u64::from(spin_us)),
        );
        let id = format!("round_trip_64B/{name}{suffix}");
        g.bench_function(format!("{name}{suffix}"), |bn| {
            bn.iter_custom(|iters| rec(&id, iters, round_trips(&mut b.wr, &mut b.rd, iters)))
        });
        b.wr.write_all(&stop).unwrap();
        b.end(name);
    }
    set_spin(&mut b.rd, &mut b.wr, shm_ring::DEFAULT_SPIN);

    b.begin(&[cmd::ECHO_SOCK]);
    let id = format!("round_trip_64B/socketpair{suffix}");
    g.bench_function(format!("socketpair{suffix}"), |bn| {
        bn.iter_custom(|iters| rec(&id, iters, round_trips(&mut &b.sock, &mut &b.sock, iters)))
    });
    (&b.sock).write_all(&stop).unwrap();
    b.end("echo socketpair");

    b.begin(&[cmd::ECHO_PIPE]);
    let id = format!("round_trip_64B/pipe{suffix}");
    g.bench_function(format!("pipe{suffix}"), |bn| {
        bn.iter_custom(|iters| {
            rec(
                &id,
                iters,
                round_trips(&mut b.pipe_down, &mut b.pipe_up, iters),
            )
        })
    });
    b.pipe_down.write_all(&stop).unwrap();
    b.end("echo pipe");

    b.begin(&[cmd::ECHO_EVENTFD]);
    let id = format!("round_trip_64B/eventfd{suffix}");
    g.bench_function(format!("eventfd{suffix}"), |bn| {
        bn.iter_custom(|iters| {
            let mut v = [0u8; 8];
            let start = Instant::now();
            for _ in 0..iters {
                b.ping.write_all(&1u64.to_ne_bytes()).unwrap();
                b.pong.read_exact(&mut v).unwrap();
            }
            rec(&id, iters, start.elapsed())
        })
    });
    b.ping.write_all(&EVENTFD_STOP.to_ne_bytes()).unwrap();
    b.end("echo eventfd");
}

/// The blocking round trips again with both processes on one CPU, where a
/// wake is a context switch rather than a cross-CPU interrupt.
fn round_trip_same_cpu(c: &mut Criterion, b: &mut Bench) {
    b.place(0, 0);
    let mut g = c.benchmark_group("round_trip_64B");
    blocking_round_trips(&mut g, b, "_same_cpu");
    g.finish();
}

/// What a ratio must be for its target to be met.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

/// One line of the summary: `value` of `what` against `limit`, as a ratio.
fn summary_line(what: &str, value: &str, limit: &str, ratio: Option<f64>, target: Target) {
    let (r, t, met) = match (ratio, target) {
        (None, _) => ("n/a".to_string(), String::new(), "—"),
        (Some(r), Target::AtLeast(x)) => (
            format!("{r:.2}×"),
            format!("≥ {x}×"),
            if r >= x { "yes" } else { "no" },
        ),
        (Some(r), Target::AtMost(x)) => (
            format!("{r:.2}×"),
            format!("≤ {x}×"),
            if r <= x { "yes" } else { "no" },
        ),
        (Some(r), Target::None) => (format!("{r:.2}×"), "—".into(), "—"),
    };
    println!("| {what} | {value} | {limit} | {r} | {t} | {met} |");
}

/// shm-ring against its same-run limits, from the recorded samples.
fn summary() {
    let gbs =
        |ns: Option<f64>| ns.map_or("n/a".into(), |ns| format!("{:.2} GB/s", BATCH as f64 / ns));
    let ns = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} ns"));
    let us = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.2} µs", v / 1e3));
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    println!("\nshm-ring against its same-run limits (medians of criterion's samples)\n");
    println!("| measure | shm-ring | limit | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for label in ["64B", "1KiB", "64KiB"] {
        let shm = recorded(&format!("throughput/{label}/shm"));
        let reference = recorded(&format!("throughput/{label}/reference"));
        summary_line(
            &format!("throughput, {label} writes (÷ reference ring)"),
            &gbs(shm),
            &gbs(reference),
            div(reference, shm),
            Target::AtLeast(0.8),
        );
    }
    let copy = recorded("cross_core_copy/1MiB");
    summary_line(
        "throughput, 64KiB writes (÷ cross-core copy)",
        &gbs(recorded("throughput/64KiB/shm")),
        &gbs(copy),
        div(copy, recorded("throughput/64KiB/shm")),
        Target::None,
    );
    let poll = recorded("round_trip_64B/shm_poll");
    let reference = recorded("round_trip_64B/reference_poll");
    let floor = recorded("round_trip_64B/cache_line_floor");
    summary_line(
        "polling round trip, 64 B (÷ reference ring)",
        &ns(poll),
        &ns(reference),
        div(poll, reference),
        Target::AtMost(1.3),
    );
    summary_line(
        "polling round trip, 64 B (÷ cache-line floor)",
        &ns(poll),
        &ns(floor),
        div(poll, floor),
        Target::None,
    );
    summary_line(
        "reference ring round trip (÷ cache-line floor)",
        &ns(reference),
        &ns(floor),
        div(reference, floor),
        Target::None,
    );
    for suffix in ["", "_same_cpu"] {
        let shm = recorded(&format!("round_trip_64B/shm_block_nospin{suffix}"));
        let efd = recorded(&format!("round_trip_64B/eventfd{suffix}"));
        let place = if suffix.is_empty() {
            "CPU 0 ↔ 1"
        } else {
            "same CPU"
        };
        summary_line(
            &format!("blocking round trip, {place} (÷ eventfd)"),
            &us(shm),
            &us(efd),
            div(shm, efd),
            Target::AtMost(1.2),
        );
    }
}

fn benches(c: &mut Criterion) {
    let mut b = Bench::spawn().expect("spawn the peer process");
    // One CPU each: the placement the monitor and a guest will have, and the
    // only one in which busy polling makes sense.
    b.place(0, 1);
    throughput(c, &mut b);
    round_trip(c, &mut b);
    round_trip_same_cpu(c, &mut b);
    b.finish();
    summary();
}

/// Criterion's settings: full, or a smoke run with `ARCA_BENCH_SHORT` set (not empty or 0).
#[derive(Clone, Copy)]
struct Sizes {
    samples: usize,
    warm_up: Duration,
    measure: Duration,
}

fn sizes() -> Sizes {
    match std::env::var("ARCA_BENCH_SHORT").as_deref() {
        Err(_) | Ok("" | "0") => Sizes {
            samples: 20,
            warm_up: Duration::from_millis(1000),
            measure: Duration::from_secs(3),
        },
        Ok(_) => Sizes {
            samples: 10,
            warm_up: Duration::from_millis(20),
            measure: Duration::from_millis(100),
        },
    }
}

fn config() -> Criterion {
    let s = sizes();
    Criterion::default()
        .sample_size(s.samples)
        .warm_up_time(s.warm_up)
        .measurement_time(s.measure)
        .nresamples(20_000)
}

criterion_group! {
    name = ring;
    config = config();
    targets = benches
}

fn main() -> ExitCode {
    if let Some(env) = ChildEnv::get() {
        if env.role() != ROLE {
            eprintln!("ring bench: unknown child role {}", env.role());
            return ExitCode::FAILURE;
        }
        return match peer(env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ring bench peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    ring();
    Criterion::default().configure_from_args().final_summary();
    ExitCode::SUCCESS
}
