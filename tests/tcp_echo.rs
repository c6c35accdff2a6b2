//! End-to-end TCP through a real monitor and real kernel sockets on 127.0.0.1: guests attach
//! to an in-process monitor over its Unix socket (a session is a socket plus a mapping).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use arca_monitor::Config;
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::pattern::random_bytes;
use arca_testkit::servers::echo_server;
use arca_testkit::STEP;

fn host_listener() -> (std::net::TcpListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn echo_round_trip() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let addr = echo_server();
    let mut c = s.connect(addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    assert_eq!(c.peer_addr().unwrap(), addr);
    assert!(c.local_addr().unwrap().port() != 0);
    c.write_all(b"hello, arca").unwrap();
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello, arca");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn one_gib_up_and_down_at_once_with_checksum() {
    const CHUNK: usize = 1 << 20;
    const LEN: usize = 1 << 30;
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let addr = echo_server();
    let c = s.connect(addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.set_write_timeout(Some(STEP)).unwrap();
    let w = c.try_clone().unwrap();
    // Chunks are generated as they are sent, so 1 GiB never sits in memory.
    let writer = std::thread::spawn(move || {
        let mut crc = 0u32;
        for i in 0..(LEN / CHUNK) as u64 {
            let chunk = random_bytes(7 + i, CHUNK);
            crc = crc32c::crc32c_append(crc, &chunk);
            (&w).write_all(&chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
        crc
    });
    let mut crc = 0u32;
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = (&c).read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        total += n;
    }
    let sent_crc = writer.join().unwrap();
    assert_eq!(total, LEN);
    assert_eq!(crc, sent_crc);
}

#[test]
fn guest_half_close_still_reads_reply() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (l, addr) = host_listener();
    let host = std::thread::spawn(move || {
        let (mut h, _) = l.accept().unwrap();
        h.set_read_timeout(Some(STEP)).unwrap();
        let mut req = String::new();
        h.read_to_string(&mut req).unwrap(); // until the guest's FIN
        h.write_all(format!("got {} bytes: {req}", req.len()).as_bytes())
            .unwrap();
    });
    let mut c = s.connect(addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(b"question").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 8 bytes: question");
    host.join().unwrap();
}

#[test]
fn host_half_close_guest_reads_eof_and_keeps_writing() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (l, addr) = host_listener();
    let host = std::thread::spawn(move || {
        let (mut h, _) = l.accept().unwrap();
        h.set_read_timeout(Some(STEP)).unwrap();
        h.write_all(b"bye").unwrap();
        h.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        h.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = s.connect(addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
    let payload = random_bytes(3, 1 << 20);
    c.write_all(&payload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(host.join().unwrap(), payload);
}

#[test]
fn inbound_connections_to_guest_listener() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let l = s.bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    assert_ne!(addr.port(), 0, "port 0 must resolve to the real port");
    let server = std::thread::spawn(move || {
        for _ in 0..5 {
            let (mut c, peer) = l.accept().unwrap();
            assert_eq!(c.peer_addr().unwrap(), peer);
            c.set_read_timeout(Some(STEP)).unwrap();
            let mut req = Vec::new();
            c.read_to_end(&mut req).unwrap();
            req.reverse();
            c.write_all(&req).unwrap();
        }
    });
    for i in 0..5u8 {
        let mut h = std::net::TcpStream::connect(addr).unwrap();
        h.set_read_timeout(Some(STEP)).unwrap();
        h.write_all(&[i, 1, 2, 3]).unwrap();
        h.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        h.read_to_end(&mut back).unwrap();
        assert_eq!(back, [3, 2, 1, i]);
    }
    server.join().unwrap();
}

#[test]
fn connect_to_closed_port_is_refused() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (l, addr) = host_listener();
    drop(l);
    let e = s.connect(addr).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // The session is still usable afterwards.
    let mut c = s.connect(echo_server()).unwrap();
    c.write_all(b"ok").unwrap();
}

#[test]
fn bind_taken_address_is_addr_in_use() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (_l, addr) = host_listener();
    let e = s.bind(addr).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    // A guest's own listener blocks a second bind too.
    let g = s.bind("127.0.0.1:0").unwrap();
    let e = s.bind(g.local_addr().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
}

#[test]
fn timeouts_and_nonblocking_behave_like_std() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (l, addr) = host_listener();
    let c = s.connect(addr).unwrap();
    let (_h, _) = l.accept().unwrap();
    assert_eq!(
        c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert_eq!(c.read_timeout().unwrap(), Some(Duration::from_millis(100)));
    let t = Instant::now();
    let e = (&c).read(&mut [0u8; 4]).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert!(t.elapsed() >= Duration::from_millis(90));
    c.set_nonblocking(true).unwrap();
    let e = (&c).read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    c.set_nodelay(true).unwrap();
    assert!(c.nodelay().unwrap());
}

/// A connect's deadline belongs to that connect: connection ids are reused, and a finished
/// connect's timer must not time out a later connect that got the same id.
#[test]
fn connect_timeout_is_not_inherited_through_a_reused_id() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    // A listener whose accept queue is full: further SYNs are dropped, so a connect to it
    // stays in progress until its deadline.
    let stalled = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stalled
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    stalled.listen(0).unwrap();
    let stalled_addr = stalled.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&stalled_addr, Duration::from_millis(200)).ok()
        })
        .collect();
    assert!(!fillers.is_empty(), "the stalled listener's queue filled");

    let (l, fast) = host_listener();
    let a = s.connect_timeout(fast, Duration::from_millis(300)).unwrap();
    let _ = l.accept().unwrap();
    drop(a); // frees its id for the next connect
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let e = s
        .connect_timeout(stalled_addr, Duration::from_millis(1500))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(1300),
        "timed out after {:?}, at the first connect's deadline",
        t.elapsed()
    );
}

#[test]
fn thousand_concurrent_connections_from_eight_threads() {
    // Small rings so a thousand pipes fit the region comfortably.
    let m = InProcMonitor::start(
        "tcp-echo",
        arca_monitor::Config {
            data_ring: 16 << 10,
            ..arca_monitor::Config::default()
        },
    );
    let s = m.session();
    let addr = echo_server();
    let all_open = std::sync::Arc::new(std::sync::Barrier::new(9));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            let all_open = all_open.clone();
            std::thread::spawn(move || {
                let per = 125; // 8 * 125 = 1000, all open at once
                let conns: Vec<_> = (0..per)
                    .map(|i| {
                        let c = s.connect(addr).unwrap();
                        c.set_read_timeout(Some(STEP)).unwrap();
                        c.set_write_timeout(Some(STEP)).unwrap();
                        (c, random_bytes(t * 1000 + i, 20_000 + (i as usize) * 397))
                    })
                    .collect();
                all_open.wait(); // main checks the count
                all_open.wait();
                for (c, data) in &conns {
                    let w = c.try_clone().unwrap();
                    let d = data.clone();
                    let wr = std::thread::spawn(move || {
                        (&w).write_all(&d).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    (&*c).read_to_end(&mut back).unwrap();
                    wr.join().unwrap();
                    assert_eq!(back.len(), data.len());
                    assert_eq!(crc32c::crc32c(&back), crc32c::crc32c(data));
                }
            })
        })
        .collect();
    all_open.wait();
    assert_eq!(
        m.sessions()[0].conns,
        1000,
        "a thousand connections held at once"
    );
    all_open.wait();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn monitor_stop_fails_blocked_read_promptly() {
    let mut m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let (l, addr) = host_listener();
    let c = s.connect(addr).unwrap();
    let (_h, _) = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = std::thread::spawn(move || {
        let r = (&c).read(&mut [0u8; 16]);
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    m.stop();
    let (r, at) = reader.join().unwrap();
    assert!(at.duration_since(stopped) < Duration::from_secs(1));
    // The monitor stores ConnectionAborted in the pipe's status word before
    // closing it, so the blocked read fails; it never sees a clean EOF.
    let e = r.expect_err("a read blocked when the monitor stops must fail");
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
    assert!(!s.is_alive());
    let e = s.connect(addr).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
}

#[test]
fn dropping_everything_releases_monitor_resources() {
    let m = InProcMonitor::start("tcp-echo", Config::default());
    let s = m.session();
    let addr = echo_server();
    let l = s.bind("127.0.0.1:0").unwrap();
    let laddr = l.local_addr().unwrap();
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut c = s.connect(addr).unwrap();
        c.write_all(b"data").unwrap();
        conns.push(c);
    }
    let h = std::net::TcpStream::connect(laddr).unwrap();
    let (inbound, _) = l.accept().unwrap();
    let (ok, stats) = m.wait_stats(STEP, |s| s.len() == 1 && s[0].conns == 11);
    assert!(ok, "{stats:?}");
    drop(conns);
    drop(inbound);
    drop(l);
    drop(h);
    let (ok, stats) = m.wait_stats(STEP, |s| {
        s.len() == 1
            && s[0].conns == 0
            && s[0].listeners == 0
            && s[0].alloc.allocated == s[0].fixed_bytes
    });
    assert!(ok, "{stats:?}");
    drop(s);
    let (ok, stats) = m.wait_stats(STEP, |s| s.is_empty());
    assert!(ok, "session must end when the guest drops it: {stats:?}");
}
