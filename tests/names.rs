//! Names through the monitor (PROTOCOL.md `Resolve`, POLICY.md §5), end to end: a DNS server
//! on 127.0.0.1 with hand-built answers, a monitor pointed at it (`--resolver`), guests that
//! look names up and connect by name, sync and tokio; policy by name, DNS rebinding, TTL
//! expiry, limits, and hostile `Resolve` frames from a raw guest. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as HostListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::resolver::{Resolver, ResolverSettings, Upstream};
use arca_monitor::{Config, Policy};
use arca_testkit::dns::{FakeDns, Record};
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::monitor_proc::MonitorProc;
use arca_testkit::raw_guest::RawGuest;
use arca_testkit::servers::echo_server;
use arca_testkit::STEP;
use arca_wire::{ErrorCode, FamilyHint, Message, MessageType};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn addrs(v4: &[Ipv4Addr], v6: &[Ipv6Addr], ttl: u32) -> Record {
    Record::Addrs {
        v4: v4.to_vec(),
        v6: v6.to_vec(),
        ttl,
    }
}

/// The zone every test serves.
fn zone() -> FakeDns {
    FakeDns::start(&[
        ("one.test", addrs(&[LO], &[], 300)),
        ("dual.test", addrs(&[LO], &[Ipv6Addr::LOCALHOST], 300)),
        ("six.test", addrs(&[], &[Ipv6Addr::LOCALHOST], 300)),
        ("alias.test", Record::Cname("hop.test".into())),
        ("hop.test", Record::Cname("one.test".into())),
        (
            "fallback.test",
            addrs(&[Ipv4Addr::new(127, 0, 0, 3), LO], &[], 300),
        ),
        ("gone.test", Record::NxDomain),
        ("slow.test", Record::Silent),
        ("api.good.test", addrs(&[LO], &[], 300)),
        ("short.good.test", addrs(&[LO], &[], 1)),
        (
            "meta.good.test",
            addrs(&[Ipv4Addr::new(169, 254, 169, 254)], &[], 300),
        ),
        (
            // In a denied block, on loopback: even a broken policy would send nothing out.
            "lan.good.test",
            addrs(&[Ipv4Addr::new(127, 0, 0, 99)], &[], 300),
        ),
        ("other.test", addrs(&[LO], &[], 300)),
        ("sibling.good.test", addrs(&[LO], &[], 300)),
    ])
}

/// A monitor resolving with `dns`, with `policy_toml` and `grace` after a learned TTL;
/// resolutions time out after 800 ms.
fn monitor(dns: &FakeDns, policy_toml: &str, grace: Duration) -> InProcMonitor {
    monitor_with_timeout(dns, policy_toml, grace, Duration::from_millis(800))
}

fn monitor_with_timeout(
    dns: &FakeDns,
    policy_toml: &str,
    grace: Duration,
    timeout: Duration,
) -> InProcMonitor {
    let resolver = Resolver::start(ResolverSettings {
        upstream: Upstream::Server(dns.addr()),
        timeout,
    })
    .expect("resolver starts");
    let policy = Policy::from_toml(policy_toml, "test").expect("test policy parses");
    InProcMonitor::start(
        "names",
        Config {
            region_size: 64 << 20,
            data_ring: 64 << 10,
            policy: Arc::new(policy),
            resolver: Some(resolver),
            learn_grace: grace,
            ..Config::default()
        },
    )
}

/// Outbound by name only: the good names on TCP, a deny for `sibling.good.test` before
/// them, link-local and 127.0.0.99 denied by address, every other name refused.
const BY_NAME: &str = r#"
[[outbound]]
action = "deny"
nets = ["169.254.0.0/16", "127.0.0.99/32"]
[[outbound]]
action = "deny"
names = ["sibling.good.test"]
[[outbound]]
action = "allow"
names = ["*.good.test", "one.test"]
proto = "tcp"
[[outbound]]
action = "deny"
names = ["*"]
"#;

fn lookup(s: &ArcaSession, host: &str) -> std::io::Result<Vec<SocketAddr>> {
    s.lookup_host(host).map(Iterator::collect)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn echo_check(c: &mut arca::TcpStream) {
    c.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(b"by name").unwrap();
    let mut back = [0u8; 7];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"by name");
}

#[test]
fn names_resolve_through_the_monitor_a_aaaa_cname_and_nxdomain() {
    let dns = zone();
    let m = monitor(&dns, "", Duration::from_secs(5));
    let s = m.session();
    assert_eq!(lookup(&s, "one.test:80").unwrap(), [sa("127.0.0.1:80")]);
    assert_eq!(
        lookup(&s, "Dual.TEST.:443").unwrap(),
        [sa("127.0.0.1:443"), sa("[::1]:443")],
        "IPv4 first, case and a trailing dot ignored"
    );
    assert_eq!(lookup(&s, "six.test:1").unwrap(), [sa("[::1]:1")]);
    assert_eq!(
        lookup(&s, "alias.test:7").unwrap(),
        [sa("127.0.0.1:7")],
        "a CNAME chain"
    );
    let e = lookup(&s, "gone.test:80").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(
        arca_wire::ErrorCode::from_io(&e),
        ErrorCode::NoSuchName,
        "{e}"
    );
    // Addresses need no monitor at all.
    assert_eq!(lookup(&s, "10.1.2.3:4").unwrap(), [sa("10.1.2.3:4")]);
    // Bad names never leave the guest.
    for bad in ["bücher.test:80", "a\0b.test:80", "a..b:80", "one.test"] {
        let e = lookup(&s, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}: {e}");
    }
    // A second lookup is answered from the monitor's cache.
    let before = dns.queries("one.test");
    assert!(before >= 1);
    assert_eq!(lookup(&s, "one.test:80").unwrap(), [sa("127.0.0.1:80")]);
    assert_eq!(dns.queries("one.test"), before, "cache hit");
    // And so is a name that does not exist (negative caching).
    let before = dns.queries("gone.test");
    assert_eq!(
        lookup(&s, "gone.test:80").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(dns.queries("gone.test"), before, "negative cache hit");
}

#[test]
fn a_slow_name_times_out_without_holding_up_other_requests() {
    let dns = zone();
    let limit = Duration::from_secs(4);
    let m = monitor_with_timeout(&dns, "", Duration::from_secs(5), limit);
    let s = m.session();
    let slow = {
        let s = s.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            (lookup(&s, "slow.test:80"), t0.elapsed())
        })
    };
    // While the slow name waits for its answer, this session and another are served.
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    assert_eq!(lookup(&s, "one.test:80").unwrap().len(), 1);
    let echo = echo_server();
    let other = m.session();
    let mut c = other.connect(echo).unwrap();
    echo_check(&mut c);
    assert!(t0.elapsed() < limit / 2, "not held up: {:?}", t0.elapsed());
    let (r, took) = slow.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(took >= limit - Duration::from_millis(200), "{took:?}");
    assert!(took < limit + STEP / 4, "{took:?}");
}

#[test]
fn connect_by_name_sync_and_tokio_falling_through_a_refused_address() {
    let dns = zone();
    let m = monitor(&dns, "", Duration::from_secs(5));
    let s = m.session();
    let echo = echo_server();
    let port = echo.port();
    let mut c = s.connect(format!("one.test:{port}")).unwrap();
    echo_check(&mut c);
    let mut c = s
        .connect_timeout(("alias.test", port), Duration::from_secs(5))
        .unwrap();
    echo_check(&mut c);
    // fallback.test answers 127.0.0.3 (nothing listens there) before 127.0.0.1.
    let listed = lookup(&s, &format!("fallback.test:{port}")).unwrap();
    assert_eq!(
        listed.first(),
        Some(&SocketAddr::from(([127, 0, 0, 3], port)))
    );
    let mut c = s.connect(("fallback.test", port)).unwrap();
    assert_eq!(c.peer_addr().unwrap(), echo);
    echo_check(&mut c);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let found: Vec<SocketAddr> = arca::tokio::lookup_host(&s, ("dual.test", 9))
            .await
            .unwrap()
            .collect();
        assert_eq!(found, [sa("127.0.0.1:9"), sa("[::1]:9")]);
        let c = tokio::time::timeout(
            STEP,
            arca::tokio::AsyncTcpStream::connect(&s, format!("fallback.test:{port}")),
        )
        .await
        .expect("connect in time")
        .unwrap();
        let mut c = c;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        c.write_all(b"async").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(STEP, c.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&back, b"async");
        let e = arca::tokio::lookup_host(&s, "gone.test:1")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    });
}

#[test]
fn udp_connect_and_send_to_take_names() {
    let dns = zone();
    let m = monitor(&dns, "", Duration::from_secs(5));
    let s = m.session();
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(STEP)).unwrap();
    let port = host.local_addr().unwrap().port();
    let sock = s.bind_udp("127.0.0.1:0").unwrap();
    sock.send_to(b"to", ("one.test", port)).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to");
    sock.connect(format!("alias.test:{port}")).unwrap();
    assert_eq!(sock.peer_addr().unwrap(), SocketAddr::from((LO, port)));
    sock.send(b"connected").unwrap();
    let (n, _) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"connected");
}

#[test]
fn policy_by_name_allows_a_name_denies_its_sibling_and_rebinding() {
    let dns = zone();
    let m = monitor(&dns, BY_NAME, Duration::from_secs(5));
    let s = m.session();
    let echo = echo_server();
    let port = echo.port();
    // No address rule allows 127.0.0.1: by address it is denied...
    assert_eq!(
        s.connect(echo).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // ...and by an allowed name it goes through.
    let mut c = s.connect(("api.good.test", port)).unwrap();
    echo_check(&mut c);
    // Once learned, the address itself is allowed too (for the TTL), on TCP only.
    let mut c = s.connect(echo).unwrap();
    echo_check(&mut c);
    let udp = s.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(
        udp.connect(("api.good.test", port)).unwrap_err().kind(),
        ErrorKind::PermissionDenied,
        "the rule is tcp only"
    );
    // The sibling is denied by name, before any query; so is a name no rule allows.
    for denied in ["sibling.good.test", "other.test"] {
        let before = dns.queries(denied);
        let e = lookup(&s, &format!("{denied}:{port}")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{denied}: {e}");
        assert_eq!(dns.queries(denied), before, "{denied} never asked");
    }
    // DNS rebinding: an allowed name pointing at a denied address stays denied.
    for rebound in ["meta.good.test", "lan.good.test"] {
        let e = s.connect((rebound, 80)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{rebound}: {e}");
    }
    // Another guest of the same monitor learned nothing.
    let other = m.session();
    assert_eq!(
        other.connect(echo).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let st = m.sessions();
    assert!(st.iter().map(|s| s.policy.denied).sum::<u64>() >= 6);
}

#[test]
fn a_learned_address_is_revoked_when_its_ttl_and_grace_pass() {
    let dns = zone();
    let m = monitor(&dns, BY_NAME, Duration::from_millis(200));
    let s = m.session();
    let echo = echo_server();
    let mut c = s.connect(("short.good.test", echo.port())).unwrap();
    echo_check(&mut c);
    let learned_at = Instant::now();
    let mut again = s.connect(echo).unwrap();
    echo_check(&mut again);
    // TTL 1 s (rounded up by the resolver) and 200 ms of grace: gone by 1.5 s.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(learned_at.elapsed()));
    assert_eq!(
        s.connect(echo).unwrap_err().kind(),
        ErrorKind::PermissionDenied,
        "expired"
    );
    // Connections made meanwhile are not cut.
    echo_check(&mut c);
}

#[test]
fn resolves_are_limited_in_flight_and_in_rate() {
    let dns = zone();
    let m = monitor(
        &dns,
        "[limits]\nresolves_in_flight = 2\nresolve_rate = 1\nresolve_burst = 4\n",
        Duration::from_secs(5),
    );
    let mut g = RawGuest::attach(&m.path);
    g.hello();
    let slow = Message::Resolve {
        family: FamilyHint::Any,
        name: "slow.test".parse().unwrap(),
    };
    let a = g.send(&slow);
    let b = g.send(&slow);
    let refused = g.call_within(&slow, STEP).unwrap();
    assert_eq!(
        refused,
        Message::ResolveErr {
            code: ErrorCode::QuotaExceeded
        },
        "third in flight"
    );
    let mut timed_out = Vec::new();
    for _ in 0..2 {
        let f = g.recv().expect("the slow answers come");
        assert_eq!(
            f.message,
            Message::ResolveErr {
                code: ErrorCode::TimedOut
            }
        );
        timed_out.push(f.request_id);
    }
    timed_out.sort();
    assert_eq!(timed_out, [a, b]);
    // The two slow ones took two of the burst of 4 (the one refused for being in flight took
    // none): two more go through, then the rate of 1 a second refuses.
    let quick = Message::Resolve {
        family: FamilyHint::V4,
        name: "one.test".parse().unwrap(),
    };
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(g.call_within(&quick, STEP).unwrap().error_code());
    }
    assert_eq!(codes[..2], [None, None], "{codes:?}");
    assert!(
        codes[2..].contains(&Some(ErrorCode::QuotaExceeded)),
        "{codes:?}"
    );
    let st = m.sessions();
    assert!(st[0].policy.quota_hits >= 2, "{st:?}");
}

#[test]
fn hostile_resolve_frames_get_errors_and_stall_no_other_guest() {
    let dns = zone();
    let limit = Duration::from_secs(4);
    let m = monitor_with_timeout(&dns, "", Duration::from_secs(5), limit);
    let mut bad = RawGuest::attach(&m.path);
    bad.hello();
    let header = |len: u16, id: u32| {
        let mut f = vec![MessageType::Resolve.to_u8()];
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&id.to_le_bytes());
        f
    };
    let payload = |family: u8, len: u8, name: &[u8]| {
        let mut p = vec![family, len];
        p.extend_from_slice(name);
        p.resize(255, 0);
        p
    };
    let cases: Vec<Vec<u8>> = vec![
        payload(0, 4, b"a\0.b"),
        payload(0, 6, "é.com".as_bytes()),
        payload(0, 0, b""),
        payload(0, 254, b"x"),
        payload(0, 3, b"abcd"),
        payload(9, 4, b"a.bc"),
        payload(0, 9, b"127.0.0.1"),
        payload(0, 3, b"a b"),
    ];
    for (i, p) in cases.iter().enumerate() {
        let id = 100 + u32::try_from(i).unwrap();
        let mut frame = header(255, id);
        frame.extend_from_slice(p);
        bad.send_raw(&frame);
        let f = bad.recv().expect("an answer, not a closed session");
        assert_eq!(f.request_id.0, id);
        assert_eq!(
            f.message,
            Message::Error {
                code: ErrorCode::InvalidInput,
                rejected_type: MessageType::Resolve.to_u8()
            },
            "case {i}"
        );
    }
    // Short and long payloads are skipped whole.
    let mut short = header(12, 200);
    short.extend_from_slice(&[0; 12]);
    bad.send_raw(&short);
    assert!(matches!(
        bad.recv().unwrap().message,
        Message::Error {
            code: ErrorCode::InvalidInput,
            ..
        }
    ));
    // A flood of resolves of a slow name, without reading: the monitor answers the excess
    // at once, and another guest is served meanwhile.
    let slow = Message::Resolve {
        family: FamilyHint::Any,
        name: "slow.test".parse().unwrap(),
    }
    .to_frame(arca_wire::RequestId(0));
    for i in 0..200u32 {
        let mut f = slow.clone();
        f[3..7].copy_from_slice(&(1000 + i).to_le_bytes());
        bad.send_raw(&f);
    }
    let good = m.session();
    let t0 = Instant::now();
    assert_eq!(lookup(&good, "one.test:1").unwrap().len(), 1);
    let echo = echo_server();
    let mut c = good.connect(echo).unwrap();
    echo_check(&mut c);
    assert!(t0.elapsed() < limit / 2, "not stalled: {:?}", t0.elapsed());
    // The flooder gets an answer for every request: quota refusals and timeouts.
    let mut answered = 0;
    let deadline = Instant::now() + STEP;
    while answered < 200 && Instant::now() < deadline {
        match bad.try_recv(limit * 2) {
            Some(f) => {
                assert!(matches!(
                    f.message.error_code(),
                    Some(ErrorCode::QuotaExceeded | ErrorCode::TimedOut)
                ));
                answered += 1;
            }
            None => break,
        }
    }
    assert_eq!(answered, 200);
    // A version-1 session does not know Resolve.
    let mut old = RawGuest::attach(&m.path);
    let ok = old.call(&Message::Hello {
        magic: arca_wire::HELLO_MAGIC,
        version: 1,
        flags: 0,
    });
    assert_eq!(
        ok,
        Message::HelloOk {
            version: 1,
            flags: 0
        }
    );
    assert_eq!(
        old.call(&Message::Resolve {
            family: FamilyHint::Any,
            name: "one.test".parse().unwrap(),
        }),
        Message::Error {
            code: ErrorCode::Unsupported,
            rejected_type: MessageType::Resolve.to_u8()
        }
    );
}

#[test]
fn serve_with_resolver_and_a_policy_file_resolves_by_name() {
    let dns = zone();
    let dir = std::env::temp_dir().join(format!("arca-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, BY_NAME).unwrap();
    let addr = dns.addr().to_string();
    let m = MonitorProc::serve(
        "names-serve",
        &[
            "--resolver",
            &addr,
            "--resolve-timeout",
            "1",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let s = ArcaSession::attach(&m.path).unwrap();
    let echo = echo_server();
    let mut c = s.connect(("api.good.test", echo.port())).unwrap();
    echo_check(&mut c);
    assert_eq!(
        s.connect(("meta.good.test", 80)).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        lookup(&s, "other.test:1").unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    drop(s);
    m.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unused_listener_on_a_learned_port_is_not_reachable_by_address_alone() {
    // A learned grant is per address, not per port: with the rule's ports limited, another
    // port of the same address stays denied.
    let dns = zone();
    let l = HostListener::bind("127.0.0.1:0").unwrap();
    let other = HostListener::bind("127.0.0.1:0").unwrap();
    let policy = format!(
        "[[outbound]]\naction = \"allow\"\nnames = [\"one.test\"]\nports = [{}]\n",
        l.local_addr().unwrap().port()
    );
    let m = monitor(&dns, &policy, Duration::from_secs(5));
    let s = m.session();
    s.connect(("one.test", l.local_addr().unwrap().port()))
        .unwrap();
    assert_eq!(
        s.connect(other.local_addr().unwrap()).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        s.connect(("one.test", other.local_addr().unwrap().port()))
            .unwrap_err()
            .kind(),
        ErrorKind::PermissionDenied
    );
}
