//! Two real processes sharing one sealed memfd through shm-ring.
//!
//! The parent (owner) creates the region and the pipe and re-executes this
//! test binary as the child (peer), selecting the `twoproc_child` entry point
//! (an ignored test) and a role through the environment; see
//! `arca_testkit::twoproc` and `arca_testkit::shm_link` for the handoff. Every
//! stream has a timeout, every child a kill-on-drop guard and a deadline, and
//! every test body runs under a test-level deadline.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use arca_testkit::pattern::{Pattern, Tally, DEFAULT_PERIOD};
use arca_testkit::shm_link::{LinkEnd, OwnerLink};
use arca_testkit::twoproc::{report, ChildCommand, ChildEnv, ChildGuard, ChildOutput};

type Res = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The ignored test that is the child's entry point.
const ENTRY: &str = "twoproc_child";
const GIB: u64 = 1 << 30;
/// Every blocking read and write gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to exit once its work is done.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon a blocked call must notice a dead peer.
const DEATH_NOTICED_WITHIN: Duration = Duration::from_secs(5);
/// Write sizes cycle through these (odd ones included, so writes straddle the
/// ring's wrap point and the pattern's period in every possible way).
const WRITE_SIZES: &[usize] = &[65536, 4093, (1 << 20) + 5, 1, 777, 32768];
/// Read buffer sizes cycle through these.
const READ_SIZES: &[usize] = &[65536, 1000, 131_072, 3];

const SEED_TO_CHILD: u64 = 0x1111;
const SEED_TO_PARENT: u64 = 0x2222;

fn to_child() -> Pattern {
    Pattern::new(SEED_TO_CHILD, DEFAULT_PERIOD)
}

fn to_parent() -> Pattern {
    Pattern::new(SEED_TO_PARENT, DEFAULT_PERIOD)
}

/// Creates a pipe with `cap`-byte rings and spawns the child in `role`.
fn spawn(role: &str, cap: u64, vars: &[(&str, u64)]) -> (LinkEnd, ChildGuard) {
    let mut link = OwnerLink::new(role, cap, cap).unwrap();
    let mut cmd = ChildCommand::new(role).args([
        ENTRY,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]);
    for (k, v) in vars {
        cmd = cmd.var(k, v);
    }
    let child = link.hand_to(cmd).unwrap().spawn().unwrap();
    (link.into_end(), child)
}

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `limit`. (A stuck body's child dies with this process: it was spawned
/// with a parent-death signal.)
fn with_deadline(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded its {limit:?} deadline"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("body finished without reporting"),
        },
    }
}

fn finish_ok(child: ChildGuard) -> ChildOutput {
    let out = child.finish(EXIT_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "child failed: {:?}\n{}",
        out.status,
        out.stdout
    );
    out
}

fn num(out: &ChildOutput, key: &str) -> u64 {
    let r = out.report();
    let v = r
        .get(key)
        .unwrap_or_else(|| panic!("child report lacks {key}: {}", out.stdout));
    v.parse().unwrap()
}

// ---------------------------------------------------------------- child side

#[test]
#[ignore = "entry point of the child process that the other tests spawn"]
fn twoproc_child() {
    // Outside a spawned child there is nothing to do.
    let Some(env) = ChildEnv::get() else { return };
    let r = match env.role() {
        "duplex" => child_duplex(env),
        "child-closes-first" => child_closes_first(env),
        "parent-closes-first" => child_parent_closes_first(env),
        "write-then-die" => child_write_then_die(env),
        "write-then-hang" => child_write_then_hang(env),
        other => Err(format!("unknown role {other}").into()),
    };
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("child {}: {e}", env.role());
            std::process::exit(3)
        }
    }
}

/// Sends `BYTES` of the to-parent stream while receiving the to-child stream
/// to EOF, on two threads; reports what it received.
fn child_duplex(env: &ChildEnv) -> Res {
    let total: u64 = env.parse("BYTES")?;
    let (mut rd, mut wr) = LinkEnd::from_child_env(env)?
        .into_stream(Some(IO_TIMEOUT))
        .split();
    let writer = thread::spawn(move || -> io::Result<()> {
        to_parent().write_to(&mut wr, total, WRITE_SIZES)?;
        wr.shutdown();
        Ok(())
    });
    let rx = Tally::read_all(&mut rd, READ_SIZES)?;
    writer.join().map_err(|_| "writer panicked")??;
    report(&[("rx_bytes", &rx.bytes), ("rx_crc", &rx.crc)])?;
    Ok(())
}

/// Writes `BYTES`, shuts its writing half, then reads the parent's reply to
/// EOF; also reports what a write after the shutdown gave.
fn child_closes_first(env: &ChildEnv) -> Res {
    let total: u64 = env.parse("BYTES")?;
    let mut s = LinkEnd::from_child_env(env)?.into_stream(Some(IO_TIMEOUT));
    to_parent().write_to(s.writer(), total, WRITE_SIZES)?;
    s.shutdown_write();
    let after = match s.write(b"x") {
        Ok(n) => format!("Ok({n})"),
        Err(e) => format!("{:?}", e.kind()),
    };
    let rx = Tally::read_all(s.reader(), READ_SIZES)?;
    report(&[
        ("rx_bytes", &rx.bytes),
        ("rx_crc", &rx.crc),
        ("write_after_shutdown", &after),
    ])?;
    Ok(())
}

/// Writes the first `PART1` bytes, reads the parent's request to EOF, and
/// only then writes the rest up to `BYTES`: it sees EOF while it still has
/// bytes to send, and its writing half keeps working.
fn child_parent_closes_first(env: &ChildEnv) -> Res {
    let total: u64 = env.parse("BYTES")?;
    let part1: u64 = env.parse("PART1")?;
    let mut s = LinkEnd::from_child_env(env)?.into_stream(Some(IO_TIMEOUT));
    let p = to_parent();
    p.write_range(s.writer(), 0, part1, WRITE_SIZES)?;
    let rx = Tally::read_all(s.reader(), READ_SIZES)?;
    let eof_seen = s.reader().consumer().is_peer_closed();
    p.write_range(s.writer(), part1, total, WRITE_SIZES)?;
    s.shutdown_write();
    report(&[
        ("rx_bytes", &rx.bytes),
        ("rx_crc", &rx.crc),
        ("peer_write_closed_at_eof", &eof_seen),
    ])?;
    Ok(())
}

/// Writes `BYTES` (of a longer stream) and dies by `SIGKILL` without closing
/// anything, as a crashing guest would.
fn child_write_then_die(env: &ChildEnv) -> Res {
    let total: u64 = env.parse("BYTES")?;
    let mut s = LinkEnd::from_child_env(env)?.into_stream(Some(IO_TIMEOUT));
    to_parent().write_to(s.writer(), total, WRITE_SIZES)?;
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
    Err("still alive after SIGKILL".into())
}

/// Writes `BYTES`, then sleeps (at most a minute) without closing, reading
/// or writing anything, until the parent kills it.
fn child_write_then_hang(env: &ChildEnv) -> Res {
    let total: u64 = env.parse("BYTES")?;
    let mut s = LinkEnd::from_child_env(env)?.into_stream(Some(IO_TIMEOUT));
    to_parent().write_to(s.writer(), total, WRITE_SIZES)?;
    thread::sleep(Duration::from_secs(60));
    Err("was not killed within a minute".into())
}

// --------------------------------------------------------------- parent side

/// (a) 1 GiB each way at once: a writer thread and a reader thread in each
/// process, each blocking role on its own doorbell; checksums and byte counts
/// checked on both sides.
#[test]
fn one_gib_each_way_at_once() {
    with_deadline(Duration::from_secs(600), || {
        let cap = 1 << 20;
        let (end, child) = spawn("duplex", cap, &[("BYTES", GIB)]);
        let t0 = Instant::now();
        let (mut rd, mut wr) = end.into_stream(Some(IO_TIMEOUT)).split();
        let writer = thread::spawn(move || {
            to_child().write_to(&mut wr, GIB, WRITE_SIZES).unwrap();
            wr.shutdown();
            t0.elapsed()
        });
        let rx = Tally::read_all(&mut rd, READ_SIZES).unwrap();
        let rx_time = t0.elapsed();
        let tx_time = writer.join().unwrap();
        let out = finish_ok(child);
        assert_eq!(rx.bytes, GIB, "bytes child → parent");
        assert_eq!(rx.crc, to_parent().expected_crc(GIB), "crc child → parent");
        assert_eq!(num(&out, "rx_bytes"), GIB, "bytes parent → child");
        assert_eq!(
            num(&out, "rx_crc"),
            u64::from(to_child().expected_crc(GIB)),
            "crc parent → child"
        );
        eprintln!(
            "1 GiB each way: parent→child {:.2} GB/s ({tx_time:.2?}), child→parent {:.2} GB/s ({rx_time:.2?})",
            GIB as f64 / tx_time.as_secs_f64() / 1e9,
            GIB as f64 / rx_time.as_secs_f64() / 1e9,
        );
    });
}

/// (b) The child shuts its writing half first: the parent reads everything
/// and then EOF, and the child still reads the parent's reply (larger than
/// the ring, so the child's reads block and are woken) to its EOF.
#[test]
fn half_close_child_first_still_reads_reply() {
    with_deadline(Duration::from_secs(120), || {
        let cap = 64 << 10;
        let (request, reply) = (300_000u64, 500_000u64);
        let (end, child) = spawn("child-closes-first", cap, &[("BYTES", request)]);
        let mut s = end.into_stream(Some(IO_TIMEOUT));
        let got = Tally::read_all(s.reader(), READ_SIZES).unwrap();
        assert_eq!(got.bytes, request);
        assert_eq!(got.crc, to_parent().expected_crc(request));
        assert!(s.reader().consumer().is_peer_closed());
        assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "EOF stays EOF");
        // Our writing half is unaffected by the child's shutdown.
        to_child().write_to(s.writer(), reply, WRITE_SIZES).unwrap();
        s.shutdown_write();
        let out = finish_ok(child);
        let r = out.report();
        assert_eq!(r["write_after_shutdown"], "BrokenPipe");
        assert_eq!(num(&out, "rx_bytes"), reply);
        assert_eq!(
            num(&out, "rx_crc"),
            u64::from(to_child().expected_crc(reply))
        );
    });
}

/// (b) The parent shuts its writing half first: the child reads the request
/// to EOF while it is still in the middle of its own stream, then finishes
/// sending, and the parent reads all of it after its shutdown.
#[test]
fn half_close_parent_first_child_keeps_writing() {
    with_deadline(Duration::from_secs(120), || {
        let cap = 64 << 10;
        let (request, part1, total) = (200_000u64, 150_000u64, 700_000u64);
        let (end, child) = spawn(
            "parent-closes-first",
            cap,
            &[("BYTES", total), ("PART1", part1)],
        );
        let (mut rd, mut wr) = end.into_stream(Some(IO_TIMEOUT)).split();
        let writer = thread::spawn(move || {
            to_child().write_to(&mut wr, request, WRITE_SIZES).unwrap();
            wr.shutdown();
            wr.write(b"x").unwrap_err().kind()
        });
        let got = Tally::read_all(&mut rd, READ_SIZES).unwrap();
        assert_eq!(writer.join().unwrap(), ErrorKind::BrokenPipe);
        assert_eq!(got.bytes, total);
        assert_eq!(got.crc, to_parent().expected_crc(total));
        let out = finish_ok(child);
        assert_eq!(out.report()["peer_write_closed_at_eof"], "true");
        assert_eq!(num(&out, "rx_bytes"), request);
        assert_eq!(
            num(&out, "rx_crc"),
            u64::from(to_child().expected_crc(request))
        );
    });
}

/// (c) The child writes half its stream and dies by `SIGKILL` without
/// closing: the parent's blocked reads return exactly the bytes written, then
/// `ConnectionAborted` (the liveness socket hung up) promptly, not a hang.
#[test]
fn peer_killed_mid_stream_gives_bytes_then_connection_aborted() {
    with_deadline(Duration::from_secs(120), || {
        let cap = 256 << 10;
        let half = 4 << 20; // of a declared 8 MiB stream; 16 rings' worth
        let (end, child) = spawn("write-then-die", cap, &[("BYTES", half)]);
        let mut s = end.into_stream(Some(IO_TIMEOUT));
        let mut got = Tally::default();
        let err = got.read_into(s.reader(), READ_SIZES).unwrap_err();
        let noticed = Instant::now();
        assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
        assert_eq!(got.bytes, half, "every byte written before the death");
        assert_eq!(got.crc, to_parent().expected_crc(half));
        let mut child = child;
        let status = child.wait_timeout(EXIT_TIMEOUT).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(noticed.elapsed() < DEATH_NOTICED_WITHIN);
        // Later reads keep failing the same way rather than blocking.
        let t = Instant::now();
        let again = s.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::ConnectionAborted);
        assert!(t.elapsed() < DEATH_NOTICED_WITHIN);
    });
}

/// (c) A read that is already asleep on its doorbell when the child is
/// killed wakes with `ConnectionAborted` within a bounded time.
#[test]
fn blocked_read_wakes_when_peer_is_killed() {
    with_deadline(Duration::from_secs(120), || {
        let cap = 64 << 10;
        let sent = 100_000u64;
        let (end, mut child) = spawn("write-then-hang", cap, &[("BYTES", sent)]);
        let (mut rd, _wr) = end.into_stream(Some(IO_TIMEOUT)).split();
        let mut head = vec![0u8; sent as usize];
        rd.read_exact(&mut head).unwrap();
        let mut expect = Vec::new();
        to_parent().write_to(&mut expect, sent, &[]).unwrap();
        assert!(head == expect, "the bytes before the death");
        let reader = thread::spawn(move || {
            let r = rd.read(&mut [0u8; 64]);
            (r.map_err(|e| e.kind()), Instant::now())
        });
        thread::sleep(Duration::from_millis(200)); // let it fall asleep
        assert!(!reader.is_finished(), "read returned with nothing to read");
        let killed = Instant::now();
        child.kill().unwrap();
        let (r, woke) = reader.join().unwrap();
        assert_eq!(r, Err(ErrorKind::ConnectionAborted));
        assert!(woke >= killed);
        assert!(woke - killed < DEATH_NOTICED_WITHIN, "{:?}", woke - killed);
        let status = child.wait_timeout(EXIT_TIMEOUT).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    });
}

/// (c) A write blocked on a full ring (the child never reads) wakes with
/// `ConnectionAborted` when the child is killed; exactly one ring's worth
/// was accepted.
#[test]
fn blocked_write_wakes_when_peer_is_killed() {
    with_deadline(Duration::from_secs(120), || {
        let cap = 64 << 10;
        // The child writes one byte (proof that it attached), then hangs.
        let (end, mut child) = spawn("write-then-hang", cap, &[("BYTES", 1)]);
        let (mut rd, mut wr) = end.into_stream(Some(IO_TIMEOUT)).split();
        rd.read_exact(&mut [0u8; 1]).unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = Arc::clone(&accepted);
        let writer = thread::spawn(move || {
            let buf = vec![0x5au8; 4 * cap as usize];
            let mut off = 0;
            loop {
                match wr.write(&buf[off..]) {
                    Ok(n) => {
                        off += n;
                        acc.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => return (e.kind(), Instant::now()),
                }
            }
        });
        let t = Instant::now();
        while accepted.load(Ordering::Relaxed) < cap && t.elapsed() < IO_TIMEOUT {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(200)); // let it fall asleep
        assert!(!writer.is_finished(), "write returned with the ring full");
        assert_eq!(accepted.load(Ordering::Relaxed), cap);
        let killed = Instant::now();
        child.kill().unwrap();
        let (kind, woke) = writer.join().unwrap();
        assert_eq!(kind, ErrorKind::ConnectionAborted);
        assert!(woke - killed < DEATH_NOTICED_WITHIN, "{:?}", woke - killed);
        assert_eq!(accepted.load(Ordering::Relaxed), cap);
    });
}
