//! shm-ring between two real processes, against a Unix socketpair, pipe(2)
//! and a bare eventfd ping-pong carried between the *same* two processes in
//! the same run.
//!
//! ```text
//! cargo bench --bench ring
//! ```
//!
//! The bench binary re-executes itself as the peer (`ARCA_TWOPROC_ROLE=ring-peer`,
//! see `arca_testkit::twoproc`) and hands it one shm-ring pipe (region memfd,
//! four doorbells, liveness socket), one end of a socketpair, one end of each
//! of two pipes, two eventfds and a control socket. The parent then drives
//! one *phase* at a time: it sends a command byte on the control socket, the
//! peer serves that phase until an in-band stop marker, and answers with a
//! status byte.
//!
//! - `throughput/<size>`: the parent writes `iters` MiB in writes of `size`
//!   bytes (after an 8-byte length header); the peer drains with 256 KiB reads
//!   and sends a 1-byte ack when it has everything. One iteration = 1 MiB.
//!   `shm` uses blocking `SyncStream` halves without timeouts, `shm_timeout`
//!   the same with a 30 s timeout on every call.
//! - `round_trip_64B`: a 64-byte message to the peer and back. The shm
//!   variants: `shm_poll` (both sides spin on non-blocking `read`/`write`),
//!   `shm_block_nospin` (`SyncStream` with spin 0: every wait sleeps on its
//!   doorbell), `shm_block_spin10us` (the default spin before sleeping).
//!
//! The parent's bench thread is pinned to CPU 0 and the peer to CPU 1, so
//! every run measures the same placement (on a VM a cross-CPU wake costs tens
//! of µs, a same-CPU one a few, and an unpinned run flips between them). The
//! blocking round trips are then repeated with both on CPU 0 (`*_same_cpu`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
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
}

/// One shared page holding the word of the cache-line ping-pong: the floor
/// for any polling round trip between these two CPUs, measured in the same
/// run (on a VM it moves with where the host puts the vCPUs).
struct Line(memmap2::MmapMut);

impl Line {
    fn create() -> io::Result<(Self, OwnedFd)> {
        let fd = nix::sys::memfd::memfd_create(
            c"ring-bench-line",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let file = File::from(fd);
        file.set_len(4096)?;
        let peer = file.as_fd().try_clone_to_owned()?;
        Ok((Self::map(&file)?, peer))
    }

    fn map(file: &File) -> io::Result<Self> {
        // SAFETY: the memfd is ours and the peer's only; both touch the page
        // solely through the atomic below.
        Ok(Self(unsafe { memmap2::MmapMut::map_mut(file)? }))
    }

    fn word(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the mapping is page-aligned, 4096 bytes long and lives as
        // long as `self`; every access to it is atomic.
        unsafe { &*self.0.as_ptr().cast::<std::sync::atomic::AtomicU64>() }
    }
}

/// The value that ends the line ping-pong (odd, like every ping).
const LINE_STOP: u64 = u64::MAX;

/// Spins until `word` holds a value for which `done` holds; gives up after
/// [`IO_TIMEOUT`].
fn spin_for(word: &std::sync::atomic::AtomicU64, done: impl Fn(u64) -> bool) -> io::Result<u64> {
    use std::sync::atomic::Ordering;
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
fn echo_line(line: &Line) -> io::Result<()> {
    let word = line.word();
    loop {
        let v = spin_for(word, |v| v % 2 == 1)?;
        if v == LINE_STOP {
            word.store(0, std::sync::atomic::Ordering::Release);
            return Ok(());
        }
        word.store(v + 1, std::sync::atomic::Ordering::Release);
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
    let line = Line::map(&File::from(env.take_fd("LINE")?))?;
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
    line: Line,
    payload: Vec<u8>,
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
        let (line, line_peer) = Line::create()?;
        let cmd = ChildCommand::new(ROLE)
            .fd("CONTROL", control_peer.into())
            .fd("SOCK", sock_peer.into())
            .fd("PIPE_DOWN", down_r.into())
            .fd("PIPE_UP", up_w.into())
            .fd("PING", ping.as_fd().try_clone_to_owned()?)
            .fd("PONG", pong.as_fd().try_clone_to_owned()?)
            .fd("LINE", line_peer);
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
            payload: vec![0xa5; 64 << 10],
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

fn throughput(c: &mut Criterion, b: &mut Bench) {
    for size in [64usize, 1024, 64 << 10] {
        let label = if size >= 1024 {
            format!("{}KiB", size >> 10)
        } else {
            format!("{size}B")
        };
        let mut g = c.benchmark_group(format!("throughput/{label}"));
        g.throughput(Throughput::Bytes(BATCH));

        for (name, timeout) in [("shm", None), ("shm_timeout", Some(IO_TIMEOUT))] {
            b.begin(&[cmd::SINK_SHM, u8::from(timeout.is_some())]);
            set_timeout(&mut b.rd, &mut b.wr, timeout);
            set_spin(&mut b.rd, &mut b.wr, shm_ring::DEFAULT_SPIN);
            g.bench_function(BenchmarkId::from_parameter(name), |bn| {
                bn.iter_custom(|iters| stream(&mut b.wr, &mut b.rd, &b.payload, size, iters))
            });
            b.wr.write_all(&0u64.to_le_bytes()).unwrap();
            set_timeout(&mut b.rd, &mut b.wr, None);
            b.end(name);
        }

        b.begin(&[cmd::SINK_SOCK]);
        g.bench_function(BenchmarkId::from_parameter("socketpair"), |bn| {
            bn.iter_custom(|iters| stream(&mut &b.sock, &mut &b.sock, &b.payload, size, iters))
        });
        (&b.sock).write_all(&0u64.to_le_bytes()).unwrap();
        b.end("sink socketpair");

        b.begin(&[cmd::SINK_PIPE]);
        g.bench_function(BenchmarkId::from_parameter("pipe"), |bn| {
            bn.iter_custom(|iters| {
                stream(&mut b.pipe_down, &mut b.pipe_up, &b.payload, size, iters)
            })
        });
        b.pipe_down.write_all(&0u64.to_le_bytes()).unwrap();
        b.end("sink pipe");
        g.finish();
    }
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
            start.elapsed()
        })
    });
    poll_write_all(b.wr.producer(), &stop).unwrap();
    b.end("echo shm poll");

    // The floor under `shm_poll`: one cache line, one atomic each way.
    b.begin(&[cmd::ECHO_LINE]);
    g.bench_function("cache_line_floor", |bn| {
        bn.iter_custom(|iters| {
            let word = b.line.word();
            let mut v = word.load(std::sync::atomic::Ordering::Acquire);
            let start = Instant::now();
            for _ in 0..iters {
                let ping = v + 1;
                word.store(ping, std::sync::atomic::Ordering::Release);
                v = spin_for(word, |w| w == ping + 1).unwrap();
            }
            start.elapsed()
        })
    });
    b.line
        .word()
        .store(LINE_STOP, std::sync::atomic::Ordering::Release);
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
        g.bench_function(format!("{name}{suffix}"), |bn| {
            bn.iter_custom(|iters| round_trips(&mut b.wr, &mut b.rd, iters))
        });
        b.wr.write_all(&stop).unwrap();
        b.end(name);
    }
    set_spin(&mut b.rd, &mut b.wr, shm_ring::DEFAULT_SPIN);

    b.begin(&[cmd::ECHO_SOCK]);
    g.bench_function(format!("socketpair{suffix}"), |bn| {
        bn.iter_custom(|iters| round_trips(&mut &b.sock, &mut &b.sock, iters))
    });
    (&b.sock).write_all(&stop).unwrap();
    b.end("echo socketpair");

    b.begin(&[cmd::ECHO_PIPE]);
    g.bench_function(format!("pipe{suffix}"), |bn| {
        bn.iter_custom(|iters| round_trips(&mut b.pipe_down, &mut b.pipe_up, iters))
    });
    b.pipe_down.write_all(&stop).unwrap();
    b.end("echo pipe");

    b.begin(&[cmd::ECHO_EVENTFD]);
    g.bench_function(format!("eventfd{suffix}"), |bn| {
        bn.iter_custom(|iters| {
            let mut v = [0u8; 8];
            let start = Instant::now();
            for _ in 0..iters {
                b.ping.write_all(&1u64.to_ne_bytes()).unwrap();
                b.pong.read_exact(&mut v).unwrap();
            }
            start.elapsed()
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

fn benches(c: &mut Criterion) {
    let mut b = Bench::spawn().expect("spawn the peer process");
    // One CPU each: the placement the monitor and a guest will have, and the
    // only one in which busy polling makes sense.
    b.place(0, 1);
    throughput(c, &mut b);
    round_trip(c, &mut b);
    round_trip_same_cpu(c, &mut b);
    b.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(1000))
        .measurement_time(Duration::from_secs(3))
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
