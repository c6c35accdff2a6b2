//! Faults: guests SIGKILLed at random moments, the monitor SIGKILLed under
//! blocked calls, host peers that reset, never read or read slowly, and a
//! guest that fills its region. Each scenario checks what the guest sees (the
//! error kind PROTOCOL.md promises, within a bound) and that everything is
//! released afterwards. Guests that must die are this test binary
//! re-executed in a role (`guest_entry`). Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::Config;
use arca_testkit::bins::monitor_bin;
use arca_testkit::child::{guest_command, read_marker, Reaped, ROLE};
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::monitor_proc::{socket_path, MonitorProc};
use arca_testkit::pattern::{check, echo_verified, fill, splitmix};
use arca_testkit::procfs::{open_fds, rss};
use arca_testkit::servers::EchoServer;
use arca_testkit::wait::wait_until;

const SOCKET: &str = "ARCA_TEST_SOCKET";
const TARGET: &str = "ARCA_TEST_TARGET";

/// Tests here count this process's descriptors (and measure the monitor's
/// memory), so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The guest side; only runs when re-executed by the tests.
#[test]
#[ignore = "guest entry point: runs only when re-executed by the other tests"]
fn guest_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if role == "valgrind" {
        return valgrind_guest();
    }
    let path = std::env::var(SOCKET).expect("socket");
    let target: SocketAddr = std::env::var(TARGET)
        .expect("target")
        .parse()
        .expect("addr");
    match role.as_str() {
        // Everything a guest can hold, all busy: streams both ways on six
        // connections, a listener with a connection accepted from itself, a
        // UDP socket sending to itself.
        "busy" => {
            let s = ArcaSession::attach(&path).expect("attach");
            let l = s.bind("127.0.0.1:0").expect("bind");
            let lc = s
                .connect(l.local_addr().expect("addr"))
                .expect("self connect");
            let (la, _) = l.accept().expect("accept");
            let u = s.bind_udp("127.0.0.1:0").expect("udp");
            let uaddr = u.local_addr().expect("udp addr");
            let conns: Vec<_> = (0..6)
                .map(|_| s.connect(target).expect("connect"))
                .collect();
            std::thread::scope(|sc| {
                for (i, c) in conns.iter().enumerate() {
                    sc.spawn(move || echo_verified(c, i as u64, u64::MAX / 2));
                }
                sc.spawn(|| {
                    let mut buf = [7u8; 1200];
                    loop {
                        let _ = u.send_to(&buf, uaddr);
                        let _ = u.recv_from(&mut buf);
                    }
                });
                sc.spawn(|| {
                    let mut w = &lc;
                    let buf = [1u8; 8192];
                    while w.write_all(&buf).is_ok() {}
                });
                sc.spawn(|| {
                    let mut r = &la;
                    let mut buf = [0u8; 8192];
                    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                });
                println!("guest-ready");
            });
        }
        other => panic!("unknown role {other}"),
    }
}

/// The guest `scripts/valgrind` runs under `arca-monitor run`, or attached
/// to `arca-monitor serve` at `ARCA_TEST_SOCKET` (the monitor under
/// memcheck either way): TCP echo with a host peer and with its own listener, UDP both
/// ways with a host socket, every byte checked; then it exits 0.
fn valgrind_guest() {
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in host.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let s = match std::env::var(SOCKET) {
        Ok(path) => ArcaSession::attach(path).expect("attach"),
        Err(_) => ArcaSession::from_env().expect("session from ARCA_FD"),
    };
    println!("valgrind-guest: attached");
    let mut bytes = 0u64;
    // `ARCA_TEST_REPEAT` makes a long-running guest, for killing mid-run.
    let repeat: u64 = std::env::var("ARCA_TEST_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..3 * repeat {
        let c = s.connect(host_addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        bytes += echo_verified(&c, i, 1 << 20).expect("echo with the host");
    }
    // Both ends through the monitor.
    let l = s.bind("127.0.0.1:0").expect("bind");
    let laddr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 8192];
        loop {
            match (&c).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => (&c).write_all(&buf[..n]).expect("echo"),
            }
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let c = s.connect(laddr).expect("connect to own listener");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    bytes += echo_verified(&c, 9, 256 << 10).expect("echo with own listener");
    server.join().unwrap();
    drop(c);
    // UDP: datagrams to a host socket and back, each checked whole.
    let u = s.bind_udp("127.0.0.1:0").expect("udp");
    u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut datagrams = 0;
    for i in 0..50u64 {
        let mut d = vec![0u8; 1 + (i as usize * 97) % 1400];
        fill(i, 0, &mut d);
        u.send_to(&d, peer.local_addr().unwrap()).unwrap();
        let mut got = [0u8; 2048];
        let (n, from) = peer.recv_from(&mut got).expect("host receives");
        assert_eq!(&got[..n], &d[..]);
        peer.send_to(&got[..n], from).unwrap();
        let (n, _) = u.recv_from(&mut got).expect("guest receives");
        assert_eq!(&got[..n], &d[..]);
        datagrams += 1;
    }
    println!(
        "valgrind-guest: tcp bytes verified {bytes}, udp datagrams verified {datagrams} each way"
    );
}

/// Waits until the monitor has no session, no data-pipe block was left
/// allocated at teardown, this process's descriptors are back to `fds`, and
/// the echo server holds no connection.
fn assert_reclaimed(m: &InProcMonitor, echo: &EchoServer, fds: usize, what: &str) {
    let ok = wait_until(Duration::from_secs(5), || {
        let st = m.stats();
        st.sessions.is_empty() && open_fds() <= fds && echo.counts.open() == 0
    });
    let st = m.stats();
    assert!(
        ok,
        "{what}: not reclaimed: sessions {:?}, fds {} (baseline {fds}), echo connections {}",
        st.sessions,
        open_fds(),
        echo.counts.open()
    );
    assert_eq!(
        st.unreclaimed, 0,
        "{what}: a session's allocator was not empty at teardown"
    );
}

#[test]
fn guests_killed_at_random_points_release_everything() {
    let _serial = serial();
    let echo = EchoServer::start();
    let m = InProcMonitor::start(
        "faults-kill",
        Config {
            region_size: 64 << 20,
            ..Config::default()
        },
    );
    let baseline = open_fds();
    let seed = splitmix(u64::from(std::process::id()));
    const RUNS: u64 = 12;
    let mut killed_with_session = 0;
    for run in 0..RUNS {
        // Half the runs die at a random moment from exec onward (attaching,
        // opening, mid-request); the others once fully busy, after a random
        // delay.
        let delay = Duration::from_millis(splitmix(seed ^ run) % 250);
        let mut cmd = guest_command("busy");
        cmd.env(SOCKET, &m.path).env(TARGET, echo.addr.to_string());
        let mut g = Reaped(cmd.spawn().expect("spawn guest"));
        if run % 2 == 1 {
            let ready = read_marker(&mut g.0, "guest-ready", Duration::from_secs(20));
            assert!(ready.is_some(), "run {run}: guest never became ready");
            let st = m.stats();
            assert_eq!(st.sessions.len(), 1, "run {run}");
            let s = &st.sessions[0].1;
            assert_eq!(s.conns, 9, "run {run}: six echoes, two self, one UDP");
            assert_eq!(s.listeners, 1, "run {run}");
            assert!(s.alloc.allocated > s.fixed_bytes, "run {run}");
        }
        std::thread::sleep(delay);
        if !m.stats().sessions.is_empty() {
            killed_with_session += 1;
        }
        g.0.kill().expect("SIGKILL");
        g.0.wait().expect("reap");
        drop(g); // and its stdout pipe
        assert_reclaimed(&m, &echo, baseline, &format!("run {run} (after {delay:?})"));
    }
    println!("faults: {RUNS} guests SIGKILLed, {killed_with_session} with a live session");
    assert!(killed_with_session >= RUNS / 2);

    // The monitor keeps serving: a new guest works end to end.
    let s = m.session();
    let c = s.connect(echo.addr).expect("connect after the kills");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(echo_verified(&c, 99, 1 << 20).expect("echo"), 1 << 20);
    drop((c, s));
    assert_reclaimed(&m, &echo, baseline, "after the last guest");
}

/// A host listener whose accept queue is full: a further connect hangs in
/// SYN retries (the kernel drops the SYNs).
fn full_backlog() -> (socket2::Socket, Vec<socket2::Socket>, SocketAddr) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    std::thread::sleep(Duration::from_millis(100));
    (l, fillers, addr)
}

#[test]
fn monitor_killed_every_blocked_call_fails_within_a_second() {
    let _serial = serial();
    // A peer that accepts and says nothing; one that accepts and never reads.
    let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
    let quiet_addr = quiet.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let held: Vec<_> = quiet.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let (_backlog, _fillers, hang_addr) = full_backlog();
    let mut mon = MonitorProc::serve("faults-monkill", &[]);
    let s = ArcaSession::attach(&mon.path).expect("attach");
    let reader = s.connect(quiet_addr).expect("connect");
    let writer = s.connect(quiet_addr).expect("connect");
    let listener = s.bind("127.0.0.1:0").expect("bind");
    let udp = s.bind_udp("127.0.0.1:0").expect("udp");
    let killed = Arc::new(AtomicBool::new(false));

    type Outcome = (&'static str, Result<(), ErrorKind>, Instant, bool);
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    let mut threads = Vec::new();
    let mut spawn = |name: &'static str, f: Box<dyn FnOnce() -> Result<(), ErrorKind> + Send>| {
        let tx = tx.clone();
        let killed = Arc::clone(&killed);
        threads.push(std::thread::spawn(move || {
            let r = f();
            let _ = tx.send((name, r, Instant::now(), killed.load(Ordering::SeqCst)));
        }));
    };
    spawn(
        "read",
        Box::new(move || {
            let mut b = [0u8; 16];
            (&reader).read(&mut b).map(drop).map_err(|e| e.kind())
        }),
    );
    spawn(
        "write",
        Box::new(move || {
            // Far more than the ring and the socket buffers hold.
            let buf = vec![5u8; 1 << 20];
            let mut w = &writer;
            for _ in 0..256 {
                w.write_all(&buf).map_err(|e| e.kind())?;
            }
            Ok(())
        }),
    );
    spawn(
        "accept",
        Box::new(move || listener.accept().map(drop).map_err(|e| e.kind())),
    );
    let s2 = s.clone();
    spawn(
        "connect",
        Box::new(move || s2.connect(hang_addr).map(drop).map_err(|e| e.kind())),
    );
    spawn(
        "udp recv",
        Box::new(move || {
            let mut b = [0u8; 64];
            udp.recv_from(&mut b).map(drop).map_err(|e| e.kind())
        }),
    );
    drop(tx);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "a call that should block returned before the monitor died"
    );
    killed.store(true, Ordering::SeqCst);
    let at = Instant::now();
    mon.kill();
    let mut seen = Vec::new();
    while let Ok((name, r, when, after_kill)) = rx.recv_timeout(Duration::from_secs(5)) {
        assert!(after_kill, "{name} returned {r:?} before the monitor died");
        assert!(r.is_err(), "{name} returned Ok after the monitor died");
        let took = when.saturating_duration_since(at);
        assert!(
            took < Duration::from_secs(1),
            "{name} took {took:?} to fail"
        );
        println!("faults: monitor SIGKILLed: blocked {name} failed with {r:?} after {took:?}");
        seen.push(name);
    }
    assert_eq!(
        seen.len(),
        5,
        "still blocked after 5 s: only {seen:?} returned"
    );
    for t in threads {
        t.join().unwrap();
    }
    let t = Instant::now();
    assert!(s.connect(quiet_addr).is_err());
    assert!(s.bind_udp("127.0.0.1:0").is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Accepts one connection, reads `first` bytes, then resets it (SO_LINGER 0).
fn resetting_peer(first: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut got = vec![0u8; first];
        (&s).read_exact(&mut got).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    (addr, t)
}

#[test]
fn peer_resets_reach_the_guest_as_reset_or_broken_pipe() {
    let _serial = serial();
    let m = InProcMonitor::start("faults-rst", Config::default());
    let s = m.session();

    // A blocked read sees the reset.
    let (addr, peer) = resetting_peer(4);
    let mut c = s.connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 8];
    let err = c.read(&mut b).expect_err("read after the peer's RST");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    peer.join().unwrap();
    drop(c);

    // A writer keeps writing after the reset: it must fail, not hang.
    let (addr, peer) = resetting_peer(4);
    let mut c = s.connect(addr).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    peer.join().unwrap();
    let buf = [9u8; 4096];
    let t = Instant::now();
    let mut accepted = 0usize;
    let err = loop {
        match c.write(&buf) {
            Ok(n) => {
                accepted += n;
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "writes never failed ({accepted} bytes taken)"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "write after RST: {err:?}"
    );
    drop((c, s));
    assert!(wait_until(Duration::from_secs(5), || m
        .stats()
        .sessions
        .is_empty()));
    assert_eq!(m.stats().unreclaimed, 0);
}

#[test]
fn a_peer_that_never_reads_blocks_only_its_own_connection() {
    let _serial = serial();
    let m = InProcMonitor::start("faults-stuck", Config::default());
    let echo = EchoServer::start();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let hold = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        // Holds the connection unread until the test is done (at most 30 s).
        let _ = released.recv_timeout(Duration::from_secs(30));
        drop(s);
    });
    let s = m.session();
    let mut stuck = s.connect(addr).unwrap();
    stuck
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let buf = vec![3u8; 64 << 10];
    let mut written = 0u64;
    let t = Instant::now();
    let err = loop {
        match stuck.write(&buf) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        assert!(
            written < 256 << 20,
            "a peer that never reads took {written} bytes"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "write never blocked");
    };
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    // Non-blocking, it says WouldBlock at once.
    stuck.set_nonblocking(true).unwrap();
    assert_eq!(stuck.write(&buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    println!(
        "faults: a never-reading peer absorbed {written} bytes before the guest's write timed out"
    );
    // Other connections of the same guest are unaffected.
    for i in 0..4 {
        let c = s.connect(echo.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(echo_verified(&c, 1000 + i, 2 << 20).unwrap(), 2 << 20);
    }
    drop((stuck, s));
    drop(release);
    hold.join().unwrap();
}

#[test]
fn a_slow_peer_gets_every_byte_in_bounded_memory() {
    let _serial = serial();
    const LEN: u64 = 6 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Reads 16 KiB at a time with a pause: about 4 MB/s, well below what the
    // guest offers.
    let peer = std::thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 16 << 10];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(got);
            }
            check(7, got, &buf[..n])?;
            got += n as u64;
            std::thread::sleep(Duration::from_millis(4));
        }
    });
    let mon = MonitorProc::serve("faults-slow", &[]);
    let s = ArcaSession::attach(&mon.path).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = mon.rss();
    let mut c = s.connect(addr).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&sampler_stop);
        let pid = mon.pid();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if let Some(r) = rss(pid) {
                    peak = peak.max(r.anon);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    let t = Instant::now();
    while sent < LEN {
        fill(7, sent, &mut buf);
        c.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = peer.join().unwrap().expect("slow peer verified the stream");
    let took = t.elapsed();
    sampler_stop.store(true, Ordering::SeqCst);
    let peak_anon = sampler.join().unwrap();
    assert_eq!(got, LEN);
    let growth = peak_anon.saturating_sub(start.anon);
    println!(
        "faults: slow peer: {LEN} bytes verified in {:.1} s; monitor private memory grew by at most {} KiB",
        took.as_secs_f64(),
        growth >> 10
    );
    // The relay copies ring to socket directly: no buffer grows with the
    // backlog.
    assert!(
        growth < 4 << 20,
        "monitor grew {growth} bytes for a slow peer"
    );
    drop((c, s));
    let st = mon.stop();
    assert!(st.success());
}

#[test]
fn a_full_region_refuses_clearly_keeps_old_connections_and_recovers() {
    let _serial = serial();
    let echo = EchoServer::start();
    // 1 MiB region, 16 KiB rings: room for a handful of pipes only.
    let m = InProcMonitor::start(
        "faults-full",
        Config {
            region_size: 1 << 20,
            data_ring: 16 << 10,
            ..Config::default()
        },
    );
    let baseline = open_fds();
    let s = m.session();
    let mut held = Vec::new();
    let err = loop {
        match s.connect(echo.addr) {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 1000, "the region never filled");
    };
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    let n = held.len();
    assert!(n >= 2, "only {n} connections fit");
    let udp_err = s.bind_udp("127.0.0.1:0").expect_err("udp in a full region");
    assert_eq!(udp_err.kind(), ErrorKind::OutOfMemory, "{udp_err}");
    // The connections already open still work.
    for (i, c) in held.iter().enumerate().take(3) {
        let mut c = c;
        let mut buf = vec![0u8; 10_000];
        fill(i as u64, 0, &mut buf);
        c.write_all(&buf).unwrap();
        c.read_exact(&mut buf).unwrap();
        check(i as u64, 0, &buf).unwrap();
    }
    // Closing frees the room: as many again, then full again.
    drop(held);
    let st = m.stats();
    let fixed = st.sessions[0].1.fixed_bytes;
    assert!(wait_until(Duration::from_secs(5), || m.stats().sessions[0]
        .1
        .alloc
        .allocated
        == fixed));
    let again: Vec<_> = (0..n)
        .map(|i| {
            s.connect(echo.addr)
                .unwrap_or_else(|e| panic!("reopening connection {i} of {n}: {e}"))
        })
        .collect();
    for (i, c) in again.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(echo_verified(c, 50 + i as u64, 100_000).unwrap(), 100_000);
    }
    assert!(s.connect(echo.addr).is_err());
    println!("faults: a 1 MiB region held {n} connections; the next got {err}");
    drop((again, s));
    assert_reclaimed(&m, &echo, baseline, "full region");
}

#[test]
fn running_out_of_connection_slots_says_quota_exceeded() {
    let _serial = serial();
    let echo = EchoServer::start();
    let m = InProcMonitor::start(
        "faults-slots",
        Config {
            max_conns: 8,
            ..Config::default()
        },
    );
    let s = m.session();
    // Slot 0 is the control pipe's.
    let held: Vec<_> = (0..7).map(|_| s.connect(echo.addr).unwrap()).collect();
    let err = s.connect(echo.addr).expect_err("no slot left");
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{err}");
    let c = &held[3];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(echo_verified(c, 5, 50_000).unwrap(), 50_000);
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || m.stats().sessions[0]
        .1
        .conns
        == 0));
    let c = s.connect(echo.addr).expect("a slot is free again");
    drop((c, s));
    assert!(wait_until(Duration::from_secs(5), || m
        .stats()
        .sessions
        .is_empty()));
}

#[test]
fn a_guest_attaching_the_moment_the_socket_appears_is_served() {
    let _serial = serial();
    // The socket file must not exist before the monitor listens on it: an
    // attach that finds the file must find a listening socket behind it.
    for round in 0..200 {
        let path = socket_path("faults-early");
        let child = std::process::Command::new(monitor_bin())
            .arg("serve")
            .arg("--socket")
            .arg(&path)
            .spawn()
            .expect("spawn arca-monitor");
        let _mon = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no socket file");
            std::hint::spin_loop();
        }
        let s = ArcaSession::attach(&path)
            .unwrap_or_else(|e| panic!("round {round}: attach as the file appeared: {e}"));
        assert!(s.is_alive());
        drop(s);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn run_guest_without_a_pidfd_sees_the_guest_exit() {
    // Where `pidfd_open` is missing (old kernels, valgrind) the monitor polls
    // for the guest's exit instead; it must still notice it promptly.
    let _serial = serial();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut spawned, _) = arca_monitor::guest::spawn(
            &"/bin/sh".into(),
            &["-c".into(), "sleep 0.2; exit 7".into()],
            false,
        )
        .expect("spawn");
        let mut m = arca_monitor::Monitor::new(Config::default()).expect("monitor");
        m.add_guest(spawned.sock).expect("session");
        let t = Instant::now();
        let out = m.run_guest(&mut spawned.child, None, Duration::from_secs(10));
        let _ = tx.send((out.map_err(|e| e.to_string()), t.elapsed()));
    });
    let (out, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("run_guest never returned after the guest exited");
    let arca_monitor::GuestOutcome::Exited(status) = out.expect("run_guest");
    assert_eq!(status.code(), Some(7));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
