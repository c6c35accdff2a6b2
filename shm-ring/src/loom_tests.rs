//! Loom models of the ring protocol.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p shm-ring --release --lib loom_tests`.
//! Without `LOOM_MAX_PREEMPTIONS` the bound is [`DEFAULT_PREEMPTIONS`].
//!
//! Under `cfg(loom)` the header atomics are loom's (see `sync.rs`) and every
//! data byte is a `loom::cell::UnsafeCell`, so a byte copy not ordered by the
//! index protocol is reported as a causality violation; a sleeper nobody wakes
//! is reported as a deadlock. Each model asserts a protocol property:
//!
//! 1. every byte is delivered exactly once and in order, across the wrap of
//!    the data area and of the free-running `u64` indices;
//! 2. EOF comes only after every byte, and a visible closed flag implies that
//!    every byte written before it is visible;
//! 3. a reader's close gives the writer `BrokenPipe`, never corruption;
//! 4. the need-wakeup handshake loses no wakeup, in either direction;
//! 5. closing always wakes a sleeping peer, in either direction;
//! 6. the notification bitmap's coalesced rings lose no notification.

use std::sync::Arc;

use loom::sync::{Condvar, Mutex};
use loom::thread;

use crate::bitmap;
use crate::ring::{halves, Poison, RingMem};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{Notify, Wait, WaitError};
use crate::{Consumer, NoNotify, Producer, RingError};

/// Preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Runs `f` under loom with a bounded number of preemptions, and prints how
/// many executions were explored (visible with `--nocapture`).
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    // Counted outside the model (a std atomic), so loom does not track it.
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    b.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "{}: {} executions, preemption bound {:?}",
        std::thread::current().name().unwrap_or("?"),
        runs.load(Relaxed),
        b.preemption_bound
    );
}

/// A doorbell made of loom primitives, with the contract the ring relies on:
/// `wait` returns once `notify` has been called at any time after the
/// `prepare` that made its token. No timeouts and no spurious returns, so a
/// lost wakeup is a deadlock loom reports.
#[derive(Default)]
struct Bell {
    rung: Mutex<u64>,
    cv: Condvar,
}

impl Notify for Bell {
    fn notify(&self) {
        let mut n = self.rung.lock().unwrap();
        *n += 1;
        self.cv.notify_all();
    }
}

impl Wait for Bell {
    type Token = u64;

    fn prepare(&self) -> u64 {
        *self.rung.lock().unwrap()
    }

    fn wait(&self, token: u64, deadline: Option<std::time::Instant>) -> Result<(), WaitError> {
        assert!(deadline.is_none(), "no timeouts under loom");
        let mut n = self.rung.lock().unwrap();
        while *n == token {
            n = self.cv.wait(n).unwrap();
        }
        Ok(())
    }
}

/// One fresh ring of `cap` bytes: its memory (to inspect the header), its
/// halves, and the two doorbells: the one the producer rings for the
/// consumer and the one the consumer rings for the producer.
fn ring(cap: usize) -> (RingMem, Producer, Consumer, Arc<Bell>, Arc<Bell>) {
    let mem = RingMem::heap(cap);
    let reader_bell = Arc::new(Bell::default());
    let writer_bell = Arc::new(Bell::default());
    let (p, c) = halves(
        mem.clone(),
        Poison::default(),
        Poison::default(),
        reader_bell.clone(),
        writer_bell.clone(),
    );
    (mem, p, c, reader_bell, writer_bell)
}

/// Writes all of `data` with non-blocking writes, yielding while full.
fn write_all_spinning(p: &mut Producer, data: &[u8]) {
    let mut sent = 0;
    while sent < data.len() {
        match p.write(&data[sent..]) {
            Ok(n) => {
                assert!(n > 0, "a non-empty write made no progress");
                sent += n;
            }
            Err(RingError::WouldBlock) => thread::yield_now(),
            Err(e) => panic!("write failed: {e:?}"),
        }
    }
}

/// Property 1: every byte is delivered exactly once and in order, across the
/// wrap of the data area (8 bytes through 4, starting mid-ring) and of the
/// free-running indices (they start 3 bytes short of the `u64` wrap). The
/// reader reads at most 3 bytes at a time. The halves attach to
/// a header already at those indices, as a peer resuming a ring would.
#[test]
fn every_byte_once_in_order_across_wrap() {
    const DATA: [u8; 8] = [10, 11, 12, 13, 14, 15, 16, 17];
    model(|| {
        let start = u64::MAX - 2;
        let mem = RingMem::heap(4);
        mem.header().tail.v.store(start, Ordering::Relaxed);
        mem.header().head.v.store(start, Ordering::Relaxed);
        let (mut p, mut c) = halves(
            mem.clone(),
            Poison::default(),
            Poison::default(),
            Arc::new(NoNotify),
            Arc::new(NoNotify),
        );

        let writer = thread::spawn(move || {
            write_all_spinning(&mut p, &DATA);
            p // kept open until the reader is done
        });

        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        while got.len() < DATA.len() {
            match c.read(&mut buf) {
                Ok(0) => panic!("EOF while the writer is open, after {got:?}"),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    assert!(DATA.starts_with(&got), "out of order: {got:?}");
                }
                Err(RingError::WouldBlock) => thread::yield_now(),
                Err(e) => panic!("read failed: {e:?}"),
            }
        }
        assert_eq!(got, DATA);

        let p = writer.join().unwrap();
        // Nothing beyond the data was delivered, and the indices wrapped.
        assert_eq!(c.read(&mut buf), Err(RingError::WouldBlock));
        let end = start.wrapping_add(DATA.len() as u64);
        assert!(end < start, "the model must cross the u64 wrap");
        assert_eq!(mem.header().tail.v.load(Ordering::Acquire), end);
        assert_eq!(mem.header().head.v.load(Ordering::Acquire), end);
        drop(p);
        assert_eq!(c.read(&mut buf), Ok(0));
    });
}

/// Property 2: EOF only after every byte. `read` returns `Ok(0)` only once
/// all bytes were delivered; and whenever the closed flag is visible, every
/// byte written before the close is already visible (`available` accounts
/// for all of them).
#[test]
fn eof_only_after_all_bytes() {
    const DATA: [u8; 5] = [1, 2, 3, 4, 5];
    model(|| {
        let (_, mut p, mut c, _, _) = ring(2);

        let writer = thread::spawn(move || {
            write_all_spinning(&mut p, &DATA);
            p.close();
            // Closing twice is harmless and writing after it is refused.
            p.close();
            assert_eq!(p.write(&[9]), Err(RingError::Closed));
        });

        let mut got = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            if c.is_peer_closed() {
                assert_eq!(
                    c.available(),
                    Ok(DATA.len() - got.len()),
                    "closed flag visible before the bytes written ahead of it"
                );
            }
            match c.read(&mut buf) {
                Ok(0) => {
                    assert_eq!(got, DATA, "EOF before every byte was read");
                    break;
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    assert!(DATA.starts_with(&got), "out of order: {got:?}");
                }
                Err(RingError::WouldBlock) => thread::yield_now(),
                Err(e) => panic!("read failed: {e:?}"),
            }
        }
        // EOF is sticky.
        assert_eq!(c.read(&mut buf), Ok(0));
        assert!(c.poll_readable());
        writer.join().unwrap();
    });
}

/// Property 3: after the reader closes, the writer gets `BrokenPipe` — and
/// only `BrokenPipe`, never a corrupt ring — and keeps getting it. Before
/// that its writes are ordinary (`Ok` or `WouldBlock`) and never exceed what
/// the reader freed.
#[test]
fn reader_close_gives_writer_broken_pipe() {
    const CAP: usize = 2;
    model(|| {
        let (_, mut p, mut c, _, _) = ring(CAP);

        let reader = thread::spawn(move || {
            // Two read attempts, then close with the ring in whatever state.
            let mut consumed = 0;
            for _ in 0..2 {
                let mut buf = [0u8; 1];
                match c.read(&mut buf) {
                    Ok(n) => {
                        assert_eq!((n, buf[0]), (1, consumed as u8), "wrong byte");
                        consumed += 1;
                    }
                    Err(RingError::WouldBlock) => {}
                    Err(e) => panic!("read failed: {e:?}"),
                }
            }
            c.close();
            assert_eq!(c.read(&mut [0u8; 1]), Err(RingError::Closed));
            consumed
        });

        let mut written = 0usize;
        loop {
            match p.write(&[written as u8]) {
                Ok(n) => {
                    assert_eq!(n, 1);
                    written += 1;
                    assert!(written <= CAP + 2, "wrote past the space ever freed");
                }
                Err(RingError::WouldBlock) => thread::yield_now(),
                Err(RingError::BrokenPipe) => break,
                Err(e) => panic!("writer saw {e:?} instead of BrokenPipe"),
            }
        }
        // Sticky, reported as ready, and the ring is not corrupt.
        assert_eq!(p.write(&[0]), Err(RingError::BrokenPipe));
        assert!(p.is_peer_closed());
        assert!(p.poll_writable());
        assert!(p.free().is_ok(), "ring reported corrupt after reader close");

        let consumed = reader.join().unwrap();
        assert!(written <= CAP + consumed);
    });
}

/// Property 4: the sleep/wake handshake loses no wakeup, in either direction.
/// 5 bytes through a 2-byte ring: the reader sleeps for data and the writer
/// sleeps for space. Neither side closes while the other may still sleep
/// (a close always rings and would hide a lost wakeup), so a missed ring is
/// a sleeper nobody wakes: loom reports it as a deadlock.
#[test]
fn sleep_wake_loses_no_wakeup() {
    const DATA: [u8; 5] = [7, 8, 9, 10, 11];
    model(|| {
        let (mem, mut p, mut c, reader_bell, writer_bell) = ring(2);

        let writer = thread::spawn(move || {
            let mut sent = 0;
            while sent < DATA.len() {
                match p.write(&DATA[sent..]) {
                    Ok(n) => sent += n,
                    Err(RingError::WouldBlock) => p.wait_writable(&*writer_bell, None).unwrap(),
                    Err(e) => panic!("write failed: {e:?}"),
                }
            }
            p // not dropped here: dropping closes, and a close always rings
        });

        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2];
            while got.len() < DATA.len() {
                match c.read(&mut buf) {
                    Ok(0) => panic!("EOF while the writer is open"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(RingError::WouldBlock) => c.wait_readable(&*reader_bell, None).unwrap(),
                    Err(e) => panic!("read failed: {e:?}"),
                }
            }
            (c, got)
        });

        let p = writer.join().unwrap();
        let (mut c, got) = reader.join().unwrap();
        assert_eq!(got, DATA);
        // Nobody is left advertising a sleep.
        let h = mem.header();
        assert_eq!(h.reader_waiting.v.load(Ordering::Relaxed), 0);
        assert_eq!(h.writer_waiting.v.load(Ordering::Relaxed), 0);
        drop(p);
        assert_eq!(c.read(&mut [0u8; 1]), Ok(0));
    });
}

/// Property 4, event-loop form: the same handshake through `arm`/`disarm`,
/// as a poll loop uses it (take the doorbell's token, arm, sleep only if
/// `arm` says the ring is not ready, disarm once serviced). Both sides use
/// it; neither closes early, so a lost wakeup is a deadlock.
#[test]
fn arm_disarm_loses_no_wakeup() {
    const DATA: [u8; 5] = [4, 5, 6, 7, 8];
    model(|| {
        let (mem, mut p, mut c, reader_bell, writer_bell) = ring(2);

        let writer = thread::spawn(move || {
            let mut sent = 0;
            while sent < DATA.len() {
                match p.write(&DATA[sent..]) {
                    Ok(n) => sent += n,
                    Err(RingError::WouldBlock) => {
                        let token = writer_bell.prepare();
                        if !p.arm() {
                            writer_bell.wait(token, None).unwrap();
                        }
                        p.disarm();
                    }
                    Err(e) => panic!("write failed: {e:?}"),
                }
            }
            p
        });

        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2];
            while got.len() < DATA.len() {
                match c.read(&mut buf) {
                    Ok(0) => panic!("EOF while the writer is open"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(RingError::WouldBlock) => {
                        let token = reader_bell.prepare();
                        if !c.arm() {
                            reader_bell.wait(token, None).unwrap();
                        }
                        c.disarm();
                    }
                    Err(e) => panic!("read failed: {e:?}"),
                }
            }
            (c, got)
        });

        let p = writer.join().unwrap();
        let (c, got) = reader.join().unwrap();
        assert_eq!(got, DATA);
        let h = mem.header();
        assert_eq!(h.reader_waiting.v.load(Ordering::Relaxed), 0);
        assert_eq!(h.writer_waiting.v.load(Ordering::Relaxed), 0);
        drop((p, c));
    });
}

/// Property 5a: a writer's close always wakes a reader sleeping on an empty
/// ring, which then reads EOF.
#[test]
fn writer_close_wakes_sleeping_reader() {
    model(|| {
        let (_, mut p, mut c, reader_bell, _) = ring(2);

        let reader = thread::spawn(move || {
            c.wait_readable(&*reader_bell, None).unwrap();
            assert!(c.is_peer_closed(), "woke with nothing to read");
            assert_eq!(c.read(&mut [0u8; 1]), Ok(0));
        });

        p.close();
        reader.join().unwrap();
    });
}

/// Property 5b: a reader's close always wakes a writer sleeping on a full
/// ring, which then gets `BrokenPipe`.
#[test]
fn reader_close_wakes_sleeping_writer() {
    model(|| {
        let (_, mut p, mut c, _, writer_bell) = ring(2);
        assert_eq!(p.write(&[1, 2]), Ok(2));

        let writer = thread::spawn(move || {
            p.wait_writable(&*writer_bell, None).unwrap();
            assert_eq!(p.write(&[3]), Err(RingError::BrokenPipe));
        });

        c.close();
        writer.join().unwrap();
    });
}

/// Property 6: two peers notify the owner about one pipe (one bit), each
/// after publishing a value; the second to set the bit finds it pending and
/// does not ring. The owner — take the word, look at the pipe, sleep on the
/// bell until rung — still sees both values: either its swap comes after a
/// `fetch_or` in the word's modification order and synchronizes with it, or
/// that `fetch_or` found the bit clear and rang. A notification lost to the
/// coalescing is a deadlock (the owner sleeps, nobody rings).
#[test]
fn coalesced_rings_lose_no_notification() {
    model(|| {
        const BIT: u32 = 3;
        let word = Arc::new(AtomicU64::new(0));
        let published = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let bell = Arc::new(Bell::default());

        let peers: Vec<_> = (0..2)
            .map(|i| {
                let (word, published, bell) = (word.clone(), published.clone(), bell.clone());
                thread::spawn(move || {
                    published[i].store(1, Ordering::Relaxed);
                    if bitmap::mark(&word, BIT) {
                        bell.notify();
                    }
                })
            })
            .collect();

        let mut seen = [false; 2];
        while seen != [true, true] {
            let token = bell.prepare();
            if bitmap::take(&word) & (1 << BIT) != 0 {
                for (s, p) in seen.iter_mut().zip(published.iter()) {
                    *s |= p.load(Ordering::Relaxed) == 1;
                }
            }
            if seen != [true, true] {
                bell.wait(token, None).unwrap();
            }
        }
        for p in peers {
            p.join().unwrap();
        }
    });
}
