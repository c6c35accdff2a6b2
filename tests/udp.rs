//! End-to-end UDP through a real monitor and real kernel sockets on loopback: echo (IPv4 and
//! IPv6), connect, multicast both ways with host sockets, oversized datagrams, asynchronous
//! send errors, drop counting under a flood, and resources freed on close.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as HostUdp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_monitor::Config;
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::pattern::random_bytes;
use arca_testkit::STEP;

/// A host UDP echo server on `bind`; stops when `stop` is set (bounded by its read timeout).
fn host_echo(bind: &str) -> (SocketAddr, Arc<AtomicBool>) {
    let sock = HostUdp::bind(bind).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let end = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < end {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, stop)
}

/// A host socket bound with `SO_REUSEADDR` to `port` on all addresses, joined to `group` on
/// the loopback interface.
fn host_member(group: Ipv4Addr, port: u16) -> HostUdp {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .unwrap();
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.into()
}

fn free_udp_port() -> u16 {
    HostUdp::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn echo_every_size_whole_and_in_order() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let (server, stop) = host_echo("127.0.0.1:0");
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    assert_ne!(sock.local_addr().unwrap().port(), 0);
    let mut buf = vec![0u8; 70_000];
    for (i, len) in [0usize, 1, 31, 32, 33, 1460, 9000, 65_000, 65_507]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(i as u64, len);
        assert_eq!(sock.send_to(&data, server).unwrap(), len);
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, server);
        assert_eq!(n, len, "datagram of {len} bytes came back whole");
        assert_eq!(&buf[..n], &data[..], "{len} bytes");
    }
    // A small buffer gets the head of the datagram; the rest is discarded, as `std`.
    sock.send_to(&random_bytes(99, 100), server).unwrap();
    let mut small = [0u8; 10];
    let (n, _) = sock.recv_from(&mut small).unwrap();
    assert_eq!((n, &small[..]), (10, &random_bytes(99, 100)[..10]));
    sock.send_to(b"next", server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"next",
        "the truncated datagram's tail was discarded"
    );
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn many_datagrams_through_the_rings_wrap() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let (server, stop) = host_echo("127.0.0.1:0");
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = vec![0u8; 4096];
    // Several times the rings' capacity, a few in flight at a time so none is dropped.
    for i in 0..3000u64 {
        let data = random_bytes(i, 100 + (i as usize * 7) % 1400);
        sock.send_to(&data, server).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &data[..], "datagram {i}");
    }
    assert_eq!(sock.dropped(), 0);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_batch_send_delivers_every_datagram_whole_and_in_order() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let sink = HostUdp::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(STEP)).unwrap();
    // A large receive buffer so the kernel keeps every datagram of a batch.
    socket2::SockRef::from(&sink)
        .set_recv_buffer_size(8 << 20)
        .unwrap();
    let to = sink.local_addr().unwrap();
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    let mut buf = vec![0u8; 65536];
    // Batches of 64 gathered datagrams (a 12-byte head and a body), several times the ring
    // in all, each batch drained before the next so the host keeps every datagram.
    for batch in 0..40u64 {
        let heads: Vec<[u8; 12]> = (0..64u64)
            .map(|i| {
                (batch * 64 + i).to_le_bytes().repeat(2)[..12]
                    .try_into()
                    .unwrap()
            })
            .collect();
        let bodies: Vec<Vec<u8>> = (0..64u64)
            .map(|i| random_bytes(batch * 64 + i, (i as usize * 211) % 3000))
            .collect();
        let datagrams: Vec<[&[u8]; 2]> = heads
            .iter()
            .zip(&bodies)
            .map(|(h, b)| [&h[..], &b[..]])
            .collect();
        assert_eq!(sock.send_many_to(&datagrams, to).unwrap(), 64);
        for (h, b) in heads.iter().zip(&bodies) {
            let (n, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(from, sock.local_addr().unwrap());
            assert_eq!(&buf[..12], h, "batch {batch}");
            assert_eq!(&buf[12..n], &b[..], "batch {batch}");
        }
    }
    // One datagram too large refuses the whole batch before anything is queued.
    let big = vec![0u8; 65508];
    let err = sock
        .send_many_to(&[[&b"ok"[..]], [&big[..]]], to)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "nothing of a refused batch is sent"
    );
    // Non-blocking: a batch larger than the ring queues what fits and says how many.
    sock.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 60000];
    let many: Vec<[&[u8]; 1]> = (0..64).map(|_| [&chunk[..]]).collect();
    let n = sock.send_many_to(&many, to).unwrap();
    // (The monitor drains as the guest fills, so how many fit depends on timing.)
    assert!((1..=64).contains(&n), "queued {n} of 64");
}

/// Runs of equal datagrams to one destination go to the kernel as one segmentation-offload
/// send; every datagram must still arrive whole, alone and in order, whatever the mix of
/// sizes and destinations in the ring.
#[test]
fn runs_of_equal_datagrams_arrive_whole_and_in_order() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let sinks: Vec<HostUdp> = (0..2)
        .map(|_| {
            let h = HostUdp::bind("127.0.0.1:0").unwrap();
            h.set_read_timeout(Some(STEP)).unwrap();
            socket2::SockRef::from(&h)
                .set_recv_buffer_size(8 << 20)
                .unwrap();
            h
        })
        .collect();
    let addrs: Vec<SocketAddr> = sinks.iter().map(|h| h.local_addr().unwrap()).collect();
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    let mut seq = 0u64;
    let mut want: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 65536];
    for round in 0..20 {
        // (sink, sizes): a long run with a shorter last one, a run elsewhere, a broken run.
        let plan: [(usize, Vec<usize>); 3] = [
            (0, [vec![1400; 50], vec![300]].concat()),
            (1, vec![1400; 20]),
            (0, vec![1400, 900, 1400, 1400, 1, 1]),
        ];
        for (sink, sizes) in &plan {
            let bodies: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| {
                    seq += 1;
                    random_bytes(seq, n)
                })
                .collect();
            let datagrams: Vec<[&[u8]; 1]> = bodies.iter().map(|b| [&b[..]]).collect();
            assert_eq!(
                sock.send_many_to(&datagrams, addrs[*sink]).unwrap(),
                bodies.len()
            );
            want[*sink].extend(bodies);
        }
        for (k, h) in sinks.iter().enumerate() {
            for (i, w) in want[k].drain(..).enumerate() {
                let (n, from) = h.recv_from(&mut buf).unwrap();
                assert_eq!(from, sock.local_addr().unwrap());
                assert_eq!(&buf[..n], &w[..], "round {round}, sink {k}, datagram {i}");
            }
        }
    }
}

#[test]
fn connected_send_and_recv_and_ipv6() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let (server, stop) = host_echo(bind);
        let sock = s.bind_udp(bind).unwrap();
        sock.set_read_timeout(Some(STEP)).unwrap();
        assert_eq!(sock.send(b"x").unwrap_err().kind(), ErrorKind::NotConnected);
        assert_eq!(
            sock.peer_addr().unwrap_err().kind(),
            ErrorKind::NotConnected
        );
        sock.connect(server).unwrap();
        assert_eq!(sock.peer_addr().unwrap(), server);
        assert_eq!(sock.local_addr().unwrap().ip(), server.ip());
        sock.send(b"over the pipe").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"over the pipe", "{bind}");
        stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn oversized_datagram_is_a_clear_error_and_nothing_is_sent() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let (server, stop) = host_echo("127.0.0.1:0");
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    let e = sock.send_to(&vec![0u8; 65_508], server).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("65507"), "{e}");
    let e = sock.send_to(&vec![0u8; 70_000], server).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // The socket still works, and the next datagram is the first the server saw.
    sock.send_to(b"fine", server).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"fine");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_refused_send_surfaces_in_take_error() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let sock = s.bind_udp("0.0.0.0:0").unwrap();
    assert!(sock.take_error().unwrap().is_none());
    // Broadcast without SO_BROADCAST: the host refuses with EACCES.
    sock.send_to(b"to all", "255.255.255.255:9").unwrap();
    let end = Instant::now() + STEP;
    let err = loop {
        if let Some(e) = sock.take_error().unwrap() {
            break e;
        }
        assert!(Instant::now() < end, "no asynchronous error reported");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(sock.take_error().unwrap().is_none(), "taking clears it");
    sock.set_broadcast(true).unwrap();
    assert!(sock.broadcast().unwrap());
}

#[test]
fn multicast_from_the_guest_reaches_host_members() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let group = Ipv4Addr::new(239, 255, 42, 17);
    let port = free_udp_port();
    let members = [host_member(group, port), host_member(group, port)];
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    sock.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    sock.set_multicast_loop_v4(true).unwrap();
    sock.set_multicast_ttl_v4(8).unwrap();
    assert_eq!(sock.multicast_ttl_v4().unwrap(), 8);
    assert!(sock.set_multicast_ttl_v4(256).is_err(), "ttl past 255");
    const N: u64 = 200;
    for i in 0..N {
        sock.send_to(&random_bytes(i, 1000), (group, port)).unwrap();
        if i % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1)); // keep under the members' buffers
        }
    }
    for member in &members {
        let mut buf = [0u8; 2048];
        for i in 0..N {
            let (n, from) = member.recv_from(&mut buf).unwrap();
            assert_eq!(from, sock.local_addr().unwrap());
            assert!(
                buf[..n] == random_bytes(i, 1000)[..],
                "datagram {i} differs"
            );
        }
    }
}

#[test]
fn the_guest_joins_a_group_and_receives_from_the_host() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let group = Ipv4Addr::new(239, 255, 42, 18);
    let port = free_udp_port();
    let a = s.bind_udp_reuse(("0.0.0.0", port)).unwrap();
    let b = s.bind_udp_reuse(("0.0.0.0", port)).unwrap();
    for sock in [&a, &b] {
        sock.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
            .unwrap();
        sock.set_read_timeout(Some(STEP)).unwrap();
    }
    assert_eq!(
        a.join_multicast_v4(&Ipv4Addr::new(10, 0, 0, 1), &Ipv4Addr::LOCALHOST)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput,
        "not a multicast address"
    );
    let sender = HostUdp::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&sender)
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .unwrap();
    for i in 0..50u64 {
        sender
            .send_to(&random_bytes(i, 500), (group, port))
            .unwrap();
    }
    for sock in [&a, &b] {
        let mut buf = [0u8; 1024];
        for i in 0..50u64 {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, sender.local_addr().unwrap());
            assert_eq!(&buf[..n], &random_bytes(i, 500)[..]);
        }
    }
    // (Linux keeps delivering a group that any socket on the host still joined to every
    // socket bound to its port — IP_MULTICAST_ALL — so leaving is checked by the host's
    // answer to a second leave.)
    a.leave_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
    assert_eq!(
        a.leave_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
            .unwrap_err()
            .kind(),
        ErrorKind::AddrNotAvailable,
        "no longer a member"
    );
}

#[test]
fn a_flood_into_a_guest_that_does_not_read_is_dropped_and_counted() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    // A large host buffer, so that the loss happens at the guest's ring, where it is counted.
    sock.set_recv_buffer_size(8 << 20).unwrap();
    let to = sock.local_addr().unwrap();
    let host = HostUdp::bind("127.0.0.1:0").unwrap();
    const SENT: u64 = 5000;
    for i in 0..SENT {
        host.send_to(&random_bytes(i, 1000), to).unwrap();
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The monitor keeps up with the kernel; wait until everything has been either queued or
    // dropped.
    sock.set_nonblocking(true).unwrap();
    let end = Instant::now() + STEP;
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    let mut last_seen = 0u64;
    loop {
        // Read nothing until the flood has settled: the ring holds what it can.
        let dropped = sock.dropped();
        if dropped > 0 && dropped == last_seen {
            break;
        }
        last_seen = dropped;
        assert!(Instant::now() < end, "no drops counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        assert_eq!(n, 1000);
        received += 1;
    }
    let dropped = sock.dropped();
    assert!(received > 0 && received < SENT, "received {received}");
    assert!(dropped > 0);
    assert!(
        received + dropped <= SENT && received + dropped >= SENT * 9 / 10,
        "received {received} + dropped {dropped} should account for the {SENT} sent"
    );
    // Once drained, the socket delivers again.
    host.send_to(b"after the flood", to).unwrap();
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after the flood");
}

#[test]
fn timeouts_nonblocking_and_close_frees_the_pipe() {
    let m = InProcMonitor::start("udp", Config::default());
    let s = m.session();
    let (_, base) = m.wait_stats(STEP, |v| v.len() == 1);
    let baseline = base[0].alloc.allocated;
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    let mut buf = [0u8; 8];
    sock.set_nonblocking(true).unwrap();
    assert_eq!(
        sock.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    assert_eq!(
        sock.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert!(t.elapsed() >= Duration::from_millis(90));
    assert!(sock.set_read_timeout(Some(Duration::ZERO)).is_err());
    let (ok, _) = m.wait_stats(STEP, |v| v[0].conns == 1);
    assert!(ok);
    let clone = sock.try_clone().unwrap();
    drop(sock);
    let (ok, _) = m.wait_stats(Duration::from_millis(300), |v| v[0].conns == 0);
    assert!(!ok, "a clone keeps the socket open");
    drop(clone);
    let (ok, stats) = m.wait_stats(STEP, |v| {
        v[0].conns == 0 && v[0].alloc.allocated == baseline
    });
    assert!(ok, "socket closed and pipe freed: {stats:?}");
    // Binding a port in use is the host's error, through the guest API.
    let taken = HostUdp::bind("127.0.0.1:0").unwrap();
    let e = s.bind_udp(taken.local_addr().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse);
}
