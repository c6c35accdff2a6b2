//! The monitor's policy end to end (POLICY.md): rules refuse with `PermissionDenied`, limits
//! with `QuotaExceeded`, and the guest's other connections carry on; two guests of one monitor
//! cannot name, close or take each other's connections, listeners or ports. An in-process
//! monitor, guests in this process, real kernel sockets on loopback. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as HostUdp};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use arca::TcpStream;
use arca_monitor::{Config, Policy};
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::pattern::random_bytes;
use arca_testkit::raw_guest::RawGuest;
use arca_testkit::servers::echo_server;
use arca_testkit::STEP;
use arca_wire::{ConnId, ErrorCode, Handle, ListenerId, Message, SocketOption};
use shm_ring::BidirectionalPipe;

/// A monitor whose guests get `policy_toml`, with small pipes.
fn monitor(policy_toml: &str) -> InProcMonitor {
    let policy = Policy::from_toml(policy_toml, "test").expect("test policy parses");
    InProcMonitor::start(
        "policy",
        Config {
            region_size: 64 << 20,
            data_ring: 64 << 10,
            policy: Arc::new(policy),
            ..Config::default()
        },
    )
}

/// Sends a fresh pattern through an echo connection and checks every byte comes back.
fn verify(c: &mut TcpStream, seed: u64) {
    c.set_read_timeout(Some(STEP)).unwrap();
    let data = random_bytes(seed, 100_000);
    let w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || (&w).write_all(&sent));
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap().unwrap();
    assert!(back == data, "echoed bytes differ");
}

fn kind<T: std::fmt::Debug>(r: std::io::Result<T>) -> ErrorKind {
    r.expect_err("expected a refusal").kind()
}

fn only_session(m: &InProcMonitor) -> arca_monitor::SessionStats {
    let s = m.sessions();
    assert_eq!(s.len(), 1, "one session");
    s.into_iter().next().unwrap()
}

#[test]
fn a_denied_connect_is_permission_denied_and_others_go_through() {
    let denied = echo_server();
    let allowed = echo_server();
    let m = monitor(&format!(
        "[[outbound]]\naction = \"deny\"\nnets = [\"127.0.0.1/32\"]\nports = [{}]\nproto = \"tcp\"\n\
         [[outbound]]\naction = \"allow\"\nnets = [\"0.0.0.0/0\", \"::/0\"]\n",
        denied.port()
    ));
    let s = m.session();
    let mut ok = s.connect(allowed).unwrap();
    assert_eq!(kind(s.connect(denied)), ErrorKind::PermissionDenied);
    // The IPv4-mapped spelling of the same address is the same address.
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", denied.port())
        .parse()
        .unwrap();
    assert_eq!(kind(s.connect(mapped)), ErrorKind::PermissionDenied);
    verify(&mut ok, 1);
    let st = only_session(&m);
    assert_eq!(st.policy.denied, 2);
    assert_eq!(st.conns, 1);
}

/// What the monitors of this test binary have logged (warnings and worse).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's warnings to [`LOGS`].
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// The IPv6 spellings that carry `v4` (written `7f00:1` in `hex`) for a host with NAT64, 6to4,
/// Teredo or ISATAP: IPv4-compatible, NAT64, 6to4, Teredo server, Teredo client, ISATAP.
fn ipv6_spellings(v4: Ipv4Addr, hex: &str, port: u16) -> Vec<SocketAddr> {
    let inv = !u32::from(v4);
    let inv = format!("{:x}:{:x}", inv >> 16, inv & 0xffff);
    [
        format!("[::{v4}]:{port}"),
        format!("[64:ff9b::{hex}]:{port}"),
        format!("[2002:{hex}::1]:{port}"),
        format!("[2001:0:{hex}:0:f227:5db8:d822]:{port}"),
        format!("[2001:0:5db8:d822:8000:f227:{inv}]:{port}"),
        format!("[2001:db8::200:5efe:{hex}]:{port}"),
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect()
}

#[test]
fn an_ipv4_address_inside_an_ipv6_one_is_judged_as_ipv4() {
    capture_logs();
    let denied = echo_server();
    let allowed = echo_server();
    let host6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    // Every IPv6 address is allowed, and allowed first: the IPv4 deny still wins for an IPv6
    // address that carries the denied IPv4 address.
    let m = monitor(&format!(
        "[[outbound]]\naction = \"allow\"\nnets = [\"::/0\"]\n\
         [[outbound]]\naction = \"deny\"\nnets = [\"127.0.0.1/32\"]\nports = [{}]\n\
         [[outbound]]\naction = \"allow\"\nnets = [\"0.0.0.0/0\"]\n",
        denied.port()
    ));
    let s = m.session();
    let mut refused = 0;
    for a in ipv6_spellings(Ipv4Addr::LOCALHOST, "7f00:1", denied.port()) {
        let r = s.connect_timeout(a, STEP);
        assert_eq!(kind(r), ErrorKind::PermissionDenied, "{a}");
        refused += 1;
    }
    // The local-use NAT64 prefix hides where its IPv4 address sits: refused on any port.
    let local_use: SocketAddr = format!("[64:ff9b:1::7f00:1]:{}", allowed.port())
        .parse()
        .unwrap();
    assert_eq!(
        kind(s.connect_timeout(local_use, STEP)),
        ErrorKind::PermissionDenied
    );
    refused += 1;
    // The plain addresses the policy allows still work: IPv4 and IPv6.
    let mut ok = s.connect(allowed).unwrap();
    verify(&mut ok, 10);
    let mut c6 = s.connect(host6.local_addr().unwrap()).unwrap();
    let (mut h6, _) = host6.accept().unwrap();
    c6.write_all(b"over ::1").unwrap();
    let mut buf = [0u8; 8];
    h6.set_read_timeout(Some(STEP)).unwrap();
    h6.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over ::1");

    // UDP: a connect is refused up front, a datagram is dropped and reported.
    let u = s.bind_udp("[::1]:0").unwrap();
    let nat64: SocketAddr = format!("[64:ff9b::7f00:1]:{}", denied.port())
        .parse()
        .unwrap();
    assert_eq!(kind(u.connect(nat64)), ErrorKind::PermissionDenied);
    refused += 1;
    let six_to_four: SocketAddr = format!("[2002:7f00:1::1]:{}", denied.port())
        .parse()
        .unwrap();
    u.send_to(b"not through 6to4", six_to_four).unwrap();
    assert_eq!(next_error(&u).kind(), ErrorKind::PermissionDenied);

    let st = only_session(&m);
    assert_eq!((st.policy.denied, st.policy.udp_denied), (refused, 1));
    // The two TCP connections and the UDP socket; nothing of the refused ones.
    assert_eq!((st.conns, st.udp_sockets), (3, 1));
    // Each refusal is logged with the IPv4 address inside and the rule that refused it.
    let log = logs();
    for needle in [
        format!("addr=[64:ff9b::7f00:1]:{}", denied.port()),
        "rule=outbound[1] (deny) for 127.0.0.1, the NAT64 (64:ff9b::/96) address inside".into(),
        "rule=outbound[1] (deny) for 127.0.0.1, the 6to4 address inside".into(),
        "rule=outbound[1] (deny) for 127.0.0.1, the Teredo client address inside".into(),
        "local-use NAT64 (64:ff9b:1::/48) address: where its IPv4 address sits is unknown (deny)"
            .into(),
    ] {
        assert!(log.contains(&needle), "{needle:?} not logged:\n{log}");
    }
}

#[test]
fn listening_is_loopback_and_unprivileged_by_default() {
    let m = InProcMonitor::start("policy", Config::default());
    let s = m.session();
    // Non-loopback addresses are refused by the policy, before the host is asked (the host
    // would allow the wildcard and say AddrNotAvailable for the documentation addresses).
    assert_eq!(kind(s.bind("0.0.0.0:0")), ErrorKind::PermissionDenied);
    assert_eq!(kind(s.bind("[::]:8080")), ErrorKind::PermissionDenied);
    assert_eq!(kind(s.bind("192.0.2.1:8080")), ErrorKind::PermissionDenied);
    assert_eq!(
        kind(s.bind("[2001:db8::1]:8080")),
        ErrorKind::PermissionDenied
    );
    assert_eq!(kind(s.bind("127.0.0.1:80")), ErrorKind::PermissionDenied);
    let l4 = s.bind("127.0.0.1:0").unwrap();
    let l6 = s.bind("[::1]:0").unwrap();
    // A listener that was allowed works.
    let addr = l4.local_addr().unwrap();
    let host = std::thread::spawn(move || std::net::TcpStream::connect(addr).map(|_| ()));
    let (_c, _) = l4.accept().unwrap();
    host.join().unwrap().unwrap();
    drop(l6);
    // UDP: an ephemeral sender on the wildcard is fine, a privileged port is not.
    s.bind_udp("0.0.0.0:0").unwrap();
    assert_eq!(kind(s.bind_udp("0.0.0.0:53")), ErrorKind::PermissionDenied);
    assert_eq!(only_session(&m).policy.denied, 6);
}

#[test]
fn a_listen_rule_can_refuse_a_port_range() {
    let m = monitor(
        "[[listen]]\naction = \"deny\"\nnets = [\"127.0.0.0/8\"]\nports = [\"20000-20999\"]\n\
         [[listen]]\naction = \"allow\"\nnets = [\"127.0.0.0/8\"]\nproto = \"tcp\"\n",
    );
    let s = m.session();
    assert_eq!(kind(s.bind("127.0.0.1:20500")), ErrorKind::PermissionDenied);
    s.bind("127.0.0.1:0").unwrap();
    // No rule matches UDP at all: denied.
    assert_eq!(kind(s.bind_udp("127.0.0.1:0")), ErrorKind::PermissionDenied);
}

#[test]
fn the_connection_quota_refuses_and_frees() {
    let echo = echo_server();
    let m = monitor("[limits]\nconnections = 2\n");
    let s = m.session();
    let mut a = s.connect(echo).unwrap();
    let b = s.connect(echo).unwrap();
    assert_eq!(kind(s.connect(echo)), ErrorKind::QuotaExceeded);
    verify(&mut a, 2);
    drop(b);
    let (freed, st) = m.wait_stats(STEP, |s| s.first().is_some_and(|s| s.conns == 1));
    assert!(freed, "closing a connection frees its slot: {st:?}");
    let mut c = s.connect(echo).unwrap();
    verify(&mut c, 3);
    assert_eq!(only_session(&m).policy.quota_hits, 1);
}

#[test]
fn an_incoming_connection_over_quota_is_accepted_and_closed() {
    let echo = echo_server();
    let m = monitor("[limits]\nconnections = 1\n");
    let s = m.session();
    let mut out = s.connect(echo).unwrap();
    let l = Arc::new(s.bind("127.0.0.1:0").unwrap());
    let addr = l.local_addr().unwrap();
    // The accept waits in the monitor first, so the refusal is sent from the listener's
    // readiness event (not from the request's handling).
    let accepting = {
        let l = l.clone();
        std::thread::spawn(move || l.accept().map(|_| ()))
    };
    let (pending, st) = m.wait_stats(STEP, |s| {
        s.first().is_some_and(|s| s.requests_in_flight == 1)
    });
    assert!(pending, "the accept is pending: {st:?}");
    let host = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(STEP))?;
        let mut buf = [0u8; 1];
        // The monitor closes it at once: EOF or a reset, never data or a timeout.
        match c.read(&mut buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(e),
        }
    });
    assert_eq!(kind(accepting.join().unwrap()), ErrorKind::QuotaExceeded);
    assert_eq!(host.join().unwrap().unwrap(), 0, "host side closed");
    verify(&mut out, 4);
    let st = only_session(&m);
    assert_eq!((st.policy.accepts_refused, st.policy.quota_hits), (1, 1));
    assert_eq!(st.conns, 1);
}

#[test]
fn the_listener_and_udp_socket_quotas() {
    let echo = echo_server();
    let m = monitor("[limits]\nlisteners = 1\nudp_sockets = 1\n");
    let s = m.session();
    let mut c = s.connect(echo).unwrap();
    let _l = s.bind("127.0.0.1:0").unwrap();
    assert_eq!(kind(s.bind("127.0.0.1:0")), ErrorKind::QuotaExceeded);
    let u = s.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(kind(s.bind_udp("127.0.0.1:0")), ErrorKind::QuotaExceeded);
    verify(&mut c, 5);
    drop(u);
    let (freed, st) = m.wait_stats(STEP, |s| s.first().is_some_and(|s| s.udp_sockets == 0));
    assert!(freed, "closing a UDP socket frees its slot: {st:?}");
    s.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(only_session(&m).policy.quota_hits, 2);
}

#[test]
fn the_pipe_memory_quota() {
    let echo = echo_server();
    // Room for exactly one 64 KiB data pipe (the allocator's block for it).
    let one = BidirectionalPipe::block_size(64 << 10, 64 << 10)
        .next_power_of_two()
        .max(4096);
    let m = monitor(&format!("[limits]\npipe_memory = {one}\n"));
    let s = m.session();
    let mut a = s.connect(echo).unwrap();
    assert_eq!(kind(s.connect(echo)), ErrorKind::QuotaExceeded);
    // A UDP pipe (256 KiB rings) does not fit either.
    assert_eq!(kind(s.bind_udp("127.0.0.1:0")), ErrorKind::QuotaExceeded);
    verify(&mut a, 6);
    let st = only_session(&m);
    assert_eq!(st.alloc.allocated - st.fixed_bytes, one);
    assert_eq!(st.policy.quota_hits, 2);
}

#[test]
fn the_requests_in_flight_quota() {
    let echo = echo_server();
    let m = monitor("[limits]\nrequests_in_flight = 1\n");
    let s = m.session();
    let mut c = s.connect(echo).unwrap();
    let l = Arc::new(s.bind("127.0.0.1:0").unwrap());
    let addr = l.local_addr().unwrap();
    // One accept waits in the monitor: the one request in flight allowed.
    let waiting = {
        let l = l.clone();
        std::thread::spawn(move || l.accept().map(|(c, _)| c.conn_id()))
    };
    let (pending, st) = m.wait_stats(STEP, |s| {
        s.first().is_some_and(|s| s.requests_in_flight == 1)
    });
    assert!(pending, "the accept is pending: {st:?}");
    assert_eq!(kind(s.connect(echo)), ErrorKind::QuotaExceeded);
    // A second accept is refused too; the first one still completes.
    assert_eq!(kind(l.accept()), ErrorKind::QuotaExceeded);
    let _host = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        waiting.join().unwrap().is_ok(),
        "the pending accept completes"
    );
    verify(&mut c, 7);
    s.connect(echo).unwrap();
}

#[test]
fn the_connect_rate_allows_the_burst_then_refuses() {
    let echo = echo_server();
    let m = monitor("[limits]\nconnect_rate = 1\nconnect_burst = 2\n");
    let s = m.session();
    let mut a = s.connect(echo).unwrap();
    let _b = s.connect(echo).unwrap();
    // The third within the same second is over the rate. (Only a connect that takes longer
    // than a second could let it through; five tries make that moot.)
    let refused =
        (0..5).any(|_| matches!(s.connect(echo), Err(e) if e.kind() == ErrorKind::QuotaExceeded));
    assert!(refused, "connects past the burst are refused");
    verify(&mut a, 8);
}

#[test]
fn a_denied_datagram_is_dropped_and_reported() {
    let denied = HostUdp::bind("127.0.0.1:0").unwrap();
    let allowed = HostUdp::bind("127.0.0.1:0").unwrap();
    for h in [&denied, &allowed] {
        h.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let d_addr = denied.local_addr().unwrap();
    let m = monitor(&format!(
        "[[outbound]]\naction = \"deny\"\nnets = [\"127.0.0.1\"]\nports = [{}]\nproto = \"udp\"\n\
         [[outbound]]\naction = \"allow\"\nnets = [\"0.0.0.0/0\"]\n",
        d_addr.port()
    ));
    let s = m.session();
    let u = s.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(u.take_error().unwrap().map(|e| e.kind()), None);
    u.send_to(b"not for you", d_addr).unwrap();
    u.send_to(b"for you", allowed.local_addr().unwrap())
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = allowed.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"for you"[..], u.local_addr().unwrap())
    );
    // The denial is reported once, asynchronously, as a refused send would be.
    assert_eq!(next_error(&u).kind(), ErrorKind::PermissionDenied);
    assert!(u.take_error().unwrap().is_none(), "taken once");
    let r = denied.recv_from(&mut buf);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "nothing arrives at the denied destination: {r:?}"
    );
    // A connect to the denied destination is refused up front.
    assert_eq!(kind(u.connect(d_addr)), ErrorKind::PermissionDenied);
    let st = only_session(&m);
    assert_eq!((st.policy.udp_denied, st.policy.denied), (1, 1));
}

#[test]
fn multicast_joins_follow_the_multicast_rules() {
    let m = InProcMonitor::start("policy", Config::default());
    let s = m.session();
    let u = s.bind_udp("0.0.0.0:0").unwrap();
    let lo = Ipv4Addr::LOCALHOST;
    // The local network control block (mDNS, all-hosts) is not the guest's by default.
    for g in [Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::new(224, 0, 0, 1)] {
        assert_eq!(
            kind(u.join_multicast_v4(&g, &lo)),
            ErrorKind::PermissionDenied
        );
    }
    u.join_multicast_v4(&Ipv4Addr::new(224, 238, 0, 31), &lo)
        .unwrap();
    u.join_multicast_v4(&Ipv4Addr::new(239, 1, 2, 3), &lo)
        .unwrap();
    // Leaving is always allowed.
    u.leave_multicast_v4(&Ipv4Addr::new(239, 1, 2, 3), &lo)
        .unwrap();
    drop((u, s, m));

    let m = monitor(
        "[[multicast]]\naction = \"deny\"\ngroups = [\"239.1.0.0/16\"]\n\
         [[multicast]]\naction = \"allow\"\ngroups = [\"239.0.0.0/8\"]\n",
    );
    let s = m.session();
    let u = s.bind_udp("0.0.0.0:0").unwrap();
    assert_eq!(
        kind(u.join_multicast_v4(&Ipv4Addr::new(239, 1, 9, 9), &lo)),
        ErrorKind::PermissionDenied
    );
    u.join_multicast_v4(&Ipv4Addr::new(239, 2, 9, 9), &lo)
        .unwrap();
    assert_eq!(
        kind(u.join_multicast_v4(&Ipv4Addr::new(224, 238, 0, 31), &lo)),
        ErrorKind::PermissionDenied,
        "no rule matches: denied"
    );
}

// ---- two guests --------------------------------------------------------------------------

#[test]
fn a_guest_cannot_name_close_or_take_another_guests_resources() {
    let echo = echo_server();
    let m = InProcMonitor::start("policy", Config::default());
    let a = m.session();
    let mut conn = a.connect(echo).unwrap();
    let listener = a.bind("127.0.0.1:0").unwrap();
    let udp = a.bind_udp_reuse("127.0.0.1:0").unwrap();
    let (cid, lid, uid) = (
        ConnId(conn.conn_id()),
        ListenerId(listener.listener_id()),
        ConnId(udp.socket_id()),
    );

    // Guest B holds nothing, so every id of A's is unknown to it: a clean NotFound each.
    let mut b = RawGuest::attach(&m.path);
    b.hello();
    let not_found = |r: Message| match r {
        Message::CloseErr { code }
        | Message::AcceptErr { code }
        | Message::SetOptionErr { code }
        | Message::UdpConnectErr { code } => code == ErrorCode::NotFound,
        _ => false,
    };
    for msg in [
        Message::Close {
            handle: Handle::Connection(cid),
        },
        Message::Close {
            handle: Handle::Listener(lid),
        },
        Message::Close {
            handle: Handle::Udp(uid),
        },
        Message::AcceptRequest { listener: lid },
        Message::SetOption {
            handle: Handle::Connection(cid),
            option: SocketOption::NoDelay,
            value: 1,
        },
        Message::UdpConnect {
            socket: uid,
            addr: echo,
        },
    ] {
        let reply = b.call(&msg);
        assert!(not_found(reply.clone()), "{msg:?} from B got {reply:?}");
    }

    // Nor can B take A's ports: the TCP listener's, or the UDP one A shares with reuse.
    let port = listener.local_addr().unwrap();
    let bs = m.session();
    assert_eq!(kind(bs.bind(port)), ErrorKind::AddrInUse);
    let uport = udp.local_addr().unwrap();
    assert_eq!(kind(bs.bind_udp_reuse(uport)), ErrorKind::AddrInUse);
    assert_eq!(kind(bs.bind_udp(uport)), ErrorKind::AddrInUse);
    // A itself may share its own port (several receivers of one guest).
    let again = a.bind_udp_reuse(uport).unwrap();
    drop(again);

    // A's connection, listener and socket carry on.
    verify(&mut conn, 9);
    let host = std::thread::spawn(move || std::net::TcpStream::connect(port).map(|_| ()));
    listener.accept().unwrap();
    host.join().unwrap().unwrap();
    let peer = HostUdp::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(STEP)).unwrap();
    udp.send_to(b"still mine", peer.local_addr().unwrap())
        .unwrap();
    let mut buf = [0u8; 32];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");
    // Once A lets the port go, B may have it.
    drop(udp);
    let deadline = Instant::now() + STEP;
    while bs.bind_udp_reuse(uport).is_err() {
        assert!(Instant::now() < deadline, "port never released");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next error a UDP socket reports (`take_error`), within [`STEP`].
fn next_error(u: &arca::UdpSocket) -> std::io::Error {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(e) = u.take_error().unwrap() {
            return e;
        }
        assert!(Instant::now() < deadline, "no error reported");
        std::thread::sleep(Duration::from_millis(5));
    }
}
