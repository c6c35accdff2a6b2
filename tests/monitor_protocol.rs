//! The monitor against a raw guest that speaks the wire protocol by hand (no
//! `arca`): handshake rules, hostile control frames, a relayed connection with
//! half-close, and a guest that corrupts its pipes. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use arca_monitor::Config;
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::raw_guest::{listen_and_accept, RawGuest, WAIT};
use arca_wire::{ConnId, ErrorCode, Handle, Message, RequestId};
use shm_ring::{RingError, ShmOffset, TO_OWNER_HEADER};

fn serve(name: &str) -> InProcMonitor {
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_env("ARCA_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_test_writer()
            .try_init();
    }
    let config = Config {
        region_size: 16 << 20,
        data_ring: 64 << 10,
        max_conns: 256,
        ..Config::default()
    };
    InProcMonitor::start(&format!("mp-{name}"), config)
}

#[test]
fn accepted_connection_relays_both_ways_with_half_close() {
    let s = serve("relay");
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    let (_conn, mut pipe, mut host) = listen_and_accept(&mut g);

    // Host → guest, then the host shuts its write half: the guest reads every
    // byte, then EOF, and can still write.
    let down: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&down).unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    assert_eq!(g.read_all(&mut pipe, usize::MAX), down);

    // Guest → host, then the guest closes its write half: the host reads
    // every byte, then EOF.
    let up: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    g.write_all(&mut pipe, &up);
    pipe.close_write();
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, up);

    // Both halves closed on both sides: the pipe is freed and the conn gone.
    pipe.close_read();
    drop(pipe);
    let deadline = Instant::now() + WAIT;
    loop {
        let st = s.handle.stats().unwrap();
        let (_, ss) = &st.sessions[0];
        if ss.conns == 0 && ss.alloc.allocated == ss.fixed_bytes {
            break;
        }
        assert!(Instant::now() < deadline, "pipe never freed: {ss:?}");
        g.monitor_bell.ring();
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn handshake_rules_and_hostile_frames_get_error_replies() {
    let s = serve("hostile");
    let mut g = RawGuest::attach(&s.path);
    // Anything before Hello is refused, and the handshake stays possible.
    let reply = g.call(&Message::ConnectRequest {
        addr: "127.0.0.1:1".parse().unwrap(),
        timeout_ms: 0,
    });
    assert_eq!(
        reply,
        Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: 0x14
        }
    );
    g.hello();
    // A second Hello is an error, not a reset.
    assert!(matches!(
        g.call(&Message::hello()),
        Message::Error {
            code: ErrorCode::InvalidInput,
            ..
        }
    ));
    // Unknown type with a payload: skipped, answered.
    let id = g.next;
    g.next = id.next();
    let mut frame = vec![0x99, 3, 0];
    frame.extend_from_slice(&id.0.to_le_bytes());
    frame.extend_from_slice(&[1, 2, 3]);
    g.send_raw(&frame);
    let f = g.recv().unwrap();
    assert_eq!(f.request_id, id);
    assert_eq!(
        f.message,
        Message::Error {
            code: ErrorCode::Unsupported,
            rejected_type: 0x99
        }
    );
    // A known type with a malformed payload (bad address family).
    let mut bad = Message::ConnectRequest {
        addr: "127.0.0.1:80".parse().unwrap(),
        timeout_ms: 0,
    }
    .to_frame(RequestId(777));
    bad[7] = 9;
    g.send_raw(&bad);
    let f = g.recv().unwrap();
    assert_eq!(f.request_id, RequestId(777));
    assert!(matches!(
        f.message,
        Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: 0x14
        }
    ));
    // Ids the guest does not own.
    assert_eq!(
        g.call(&Message::Close {
            handle: Handle::Connection(ConnId(42))
        }),
        Message::CloseErr {
            code: ErrorCode::NotFound
        }
    );
    assert_eq!(
        g.call(&Message::AcceptRequest {
            listener: arca_wire::ListenerId(9)
        }),
        Message::AcceptErr {
            code: ErrorCode::NotFound
        }
    );
    // A reply type sent by the guest.
    assert!(matches!(
        g.call(&Message::CloseOk),
        Message::Error {
            code: ErrorCode::Unsupported,
            ..
        }
    ));
    // Real errors carry the host's error code.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        g.call(&Message::ConnectRequest {
            addr: closed_port,
            timeout_ms: 2000
        }),
        Message::ConnectErr {
            code: ErrorCode::ConnectionRefused
        }
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        g.call(&Message::ListenRequest {
            addr: taken.local_addr().unwrap(),
            backlog: 0
        }),
        Message::ListenErr {
            code: ErrorCode::AddrInUse
        }
    );
    // After all that, the session still works.
    let (_conn, mut pipe, mut host) = listen_and_accept(&mut g);
    host.write_all(b"still alive").unwrap();
    assert_eq!(g.read_all(&mut pipe, 11), b"still alive");
}

#[test]
fn bad_version_is_refused_and_the_session_closed() {
    let s = serve("version");
    let mut g = RawGuest::attach(&s.path);
    let reply = g.call(&Message::Hello {
        magic: arca_wire::HELLO_MAGIC,
        version: 99,
        flags: 0,
    });
    assert!(matches!(
        reply,
        Message::HelloErr {
            code: ErrorCode::Unsupported,
            min_version: 1,
            max_version: 2
        }
    ));
    assert!(g.session_is_closed());
}

#[test]
fn desynchronising_frame_ends_only_that_session() {
    let s = serve("desync");
    let mut good = RawGuest::attach(&s.path);
    good.hello();
    let mut bad = RawGuest::attach(&s.path);
    bad.hello();
    // payload_len far past the cap: the stream cannot be resynchronised.
    bad.send_raw(&[0x10, 0xff, 0xff, 1, 0, 0, 0]);
    // PROTOCOL.md §7: Error(InvalidInput) for that request, then the close.
    let told = bad.recv().expect("an Error reply before the close");
    assert_eq!(told.request_id, RequestId(1));
    assert_eq!(
        told.message,
        Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: 0x10
        }
    );
    assert!(bad.recv().is_none(), "then the session ends");
    assert!(
        bad.session_is_closed(),
        "monitor closes the desynchronised session"
    );
    let (_c, mut pipe, mut host) = listen_and_accept(&mut good);
    host.write_all(b"ok").unwrap();
    assert_eq!(good.read_all(&mut pipe, 2), b"ok");
    let st = s.handle.stats().unwrap();
    assert_eq!(
        st.sessions.len(),
        1,
        "the bad session is gone, the good one stays"
    );
}

#[test]
fn corrupt_data_pipe_closes_that_connection_only() {
    let s = serve("corrupt");
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    let (_c1, pipe1, _host1) = listen_and_accept(&mut g);
    let (_c2, mut pipe2, mut host2) = listen_and_accept(&mut g);
    // The guest claims 1 TiB written into its to-monitor ring of conn 1.
    let tail = g
        .region
        .from_offset(ShmOffset(pipe1.layout().offset().0 + TO_OWNER_HEADER), 8, 8)
        .unwrap();
    // SAFETY: in bounds and aligned (checked); plays a hostile guest.
    unsafe { tail.as_ptr().cast::<u64>().write_volatile(1 << 40) };
    g.bitmap.set(_c1.0);
    g.monitor_bell.ring();
    // Conn 2 keeps working.
    host2.write_all(b"fine").unwrap();
    assert_eq!(g.read_all(&mut pipe2, 4), b"fine");
    // Conn 1's host socket is closed by the monitor.
    let mut host1 = _host1;
    let mut b = [0u8; 1];
    let r = host1.read(&mut b);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "host side of the corrupt conn closed: {r:?}"
    );
    let addr: SocketAddr = host2.local_addr().unwrap();
    assert!(addr.port() != 0);
}

#[test]
fn request_burst_beyond_the_turn_budget_is_answered_in_full() {
    let s = serve("burst");
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    // 2,000 requests written in one go: more than a turn's budget (256), and
    // more bytes than one 4 KiB read, so frames straddle reads.
    const N: u32 = 2000;
    let mut burst = Vec::new();
    let first = g.next;
    let mut id = first;
    for _ in 0..N {
        Message::Close {
            handle: Handle::Connection(ConnId(id.0 + 100_000)),
        }
        .encode(id, &mut burst);
        id = id.next();
    }
    g.next = id;
    // Read replies while sending, so neither ring can stall the other.
    let mut expect = first;
    let mut sent = 0;
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 8192];
    while expect != id {
        assert!(Instant::now() < deadline, "replies stalled at {expect}");
        if sent < burst.len() {
            if let Ok(n) = g.control.write(&burst[sent..]) {
                sent += n;
            }
        }
        let check = |g: &mut RawGuest, expect: &mut RequestId| {
            while let Some(f) = g.decoder.next_frame().unwrap() {
                assert_eq!(f.request_id, *expect, "replies in request order");
                assert_eq!(
                    f.message,
                    Message::CloseErr {
                        code: ErrorCode::NotFound
                    }
                );
                *expect = expect.next();
            }
        };
        check(&mut g, &mut expect);
        match g.control.read(&mut buf) {
            Ok(n) if n > 0 => {
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let taken = g.decoder.feed(input);
                    input = &input[taken..];
                    check(&mut g, &mut expect);
                }
            }
            Ok(_) => panic!("session ended"),
            Err(RingError::WouldBlock) => {
                let _ = g.control.rx().wait_readable(
                    &g.guest_bell,
                    Some(Instant::now() + Duration::from_millis(20)),
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A listener whose accept queue is full, so that the kernel drops new SYNs
/// and a connect to it stays in progress until the queue has room again.
fn full_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let l: std::net::TcpListener = s.into();
    let addr = l.local_addr().unwrap();
    // A backlog of 0 queues one connection; a second fills the SYN queue's
    // view of it. Connects past that are left in SYN_SENT.
    let fillers = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    (l, fillers)
}

/// A connect's deadline lives exactly as long as the connect: one that
/// completes takes its timer with it (even a deadline 49 days out), so a guest
/// looping connect-with-timeout cannot grow the monitor.
#[test]
fn connect_timers_end_with_their_connects() {
    let s = serve("timers");
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    let (listener, _fillers) = full_listener();
    let addr = listener.local_addr().unwrap();
    let timers = |s: &InProcMonitor| s.handle.stats().unwrap().sessions[0].1.timers;
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(g.send(&Message::ConnectRequest {
            addr,
            timeout_ms: u32::MAX,
        }));
    }
    // Each stays in progress: the listener's queue drops their SYNs.
    let in_flight = || s.handle.stats().unwrap().sessions[0].1.requests_in_flight;
    let until = Instant::now() + WAIT;
    while in_flight() < 4 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(in_flight(), 4, "the connects wait for the full listener");
    assert_eq!(timers(&s), 4, "one timer per pending connect");
    // Make room: the kernel's SYN retransmits then complete the connects.
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    let mut conns = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() && Instant::now() < deadline {
        while let Ok((c, _)) = listener.accept() {
            accepted.push(c);
        }
        if let Some(f) = g.try_recv(Duration::from_millis(20)) {
            let Message::ConnectOk { conn, .. } = f.message else {
                panic!("unexpected reply {:?}", f.message);
            };
            pending.retain(|r| *r != f.request_id);
            conns.push(conn);
        }
    }
    assert!(
        pending.is_empty(),
        "connects completed once the queue had room"
    );
    assert_eq!(
        timers(&s),
        0,
        "completed connects took their timers with them"
    );
    for c in conns {
        assert_eq!(
            g.call(&Message::Close {
                handle: Handle::Connection(c)
            }),
            Message::CloseOk
        );
    }
    // A deadline that passes still fires, and its timer is gone after.
    let (slow, _more) = full_listener();
    let r = g.call(&Message::ConnectRequest {
        addr: slow.local_addr().unwrap(),
        timeout_ms: 50,
    });
    assert!(
        matches!(
            r,
            Message::ConnectErr {
                code: ErrorCode::TimedOut
            } | Message::ConnectOk { .. }
        ),
        "{r:?}"
    );
    assert_eq!(timers(&s), 0);
}
