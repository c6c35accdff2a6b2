//! The session driven directly, without an event loop thread or a guest
//! process: a harness writes the guest's frames into the control pipe, turns
//! the session by hand (its own mio `Poll` for socket readiness, time read at
//! each turn) and reads the replies. Scenarios assert exact replies; a seeded
//! random sequence over every message type asserts the session's invariants
//! after every step.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{TcpListener, UdpSocket};

use nix::errno::Errno;

use arca_wire::{FrameHeader, MembershipOp, HEADER_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shm_ring::NoNotify;

use super::*;
use crate::net::{Kernel, Net};

/// A call of [`Net`] whose outcome a test can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Connect,
    /// [`Net::connect_outcome`]: how a handshake in flight ends.
    Handshake,
    Listen,
    Accept,
    BindUdp,
}

impl Call {
    /// Errors the kernel can give for this call, for random scripts.
    fn errors(self) -> &'static [Errno] {
        match self {
            Call::Connect => &[
                Errno::ECONNREFUSED,
                Errno::ENETUNREACH,
                Errno::EMFILE,
                Errno::EADDRNOTAVAIL,
            ],
            Call::Handshake => &[Errno::ECONNREFUSED, Errno::ETIMEDOUT, Errno::EHOSTUNREACH],
            Call::Listen => &[Errno::EADDRINUSE, Errno::EACCES, Errno::EMFILE],
            Call::Accept => &[
                Errno::EMFILE,
                Errno::ENFILE,
                Errno::ECONNABORTED,
                Errno::ENOBUFS,
            ],
            Call::BindUdp => &[Errno::EADDRINUSE, Errno::EACCES, Errno::EMFILE],
        }
    }
}

/// The kernel, except where the test says otherwise: a call with a scripted
/// error fails with it (one call per entry), a random script fails calls at
/// a given rate, and while `held` every handshake stays in flight.
#[derive(Default)]
struct ScriptedNet {
    errors: RefCell<HashMap<Call, Vec<Errno>>>,
    random: RefCell<Option<(StdRng, f64)>>,
    held: Cell<bool>,
}

impl ScriptedNet {
    /// The next `call` fails with `errno`.
    fn fail(&self, call: Call, errno: Errno) {
        self.errors
            .borrow_mut()
            .entry(call)
            .or_default()
            .insert(0, errno);
    }

    fn take(&self, call: Call) -> Option<io::Error> {
        if let Some(e) = self.errors.borrow_mut().get_mut(&call).and_then(Vec::pop) {
            return Some(e.into());
        }
        let mut random = self.random.borrow_mut();
        let (rng, rate) = random.as_mut()?;
        if !rng.gen_bool(*rate) {
            return None;
        }
        let errors = call.errors();
        Some(errors[rng.gen_range(0..errors.len())].into())
    }
}

impl Net for ScriptedNet {
    fn connect(&self, addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
        match self.take(Call::Connect) {
            Some(e) => Err(e),
            None => Kernel.connect(addr),
        }
    }

    fn connect_outcome(&self, sock: &mio::net::TcpStream) -> Option<io::Result<()>> {
        if self.held.get() {
            return None;
        }
        match self.take(Call::Handshake) {
            Some(e) => Some(Err(e)),
            None => Kernel.connect_outcome(sock),
        }
    }

    fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener> {
        match self.take(Call::Listen) {
            Some(e) => Err(e),
            None => Kernel.listen(addr, backlog),
        }
    }

    fn accept(
        &self,
        listener: &mio::net::TcpListener,
    ) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        match self.take(Call::Accept) {
            Some(e) => Err(e),
            None => Kernel.accept(listener),
        }
    }

    fn bind_udp(&self, addr: SocketAddr, reuse: bool) -> io::Result<mio::net::UdpSocket> {
        match self.take(Call::BindUdp) {
            Some(e) => Err(e),
            None => Kernel.bind_udp(addr, reuse),
        }
    }
}

struct Harness {
    poll: mio::Poll,
    events: mio::Events,
    tokens: HashMap<Token, SessionSource>,
    next_token: usize,
    config: Config,
    reuse: crate::udp::ReuseOwners,
    session: Session,
    /// The guest's end of the control pipe.
    guest: BidirectionalPipe,
    decoder: FrameDecoder,
    next_rid: u32,
    /// The session's clock: the real time, or a time the test sets.
    clock: Option<Instant>,
    /// Replies read but not yet claimed by [`Harness::answer`].
    unclaimed: Vec<Frame>,
    /// The guest's end of the session socket.
    guest_sock: OwnedFd,
    /// The network the session's sockets come from.
    net: ScriptedNet,
}

impl Harness {
    fn new(policy: &str) -> Harness {
        let config = Config {
            region_size: 8 << 20,
            data_ring: 16 << 10,
            udp_ring: 128 << 10,
            max_conns: 64,
            policy: Arc::new(crate::Policy::from_toml(policy, "test").unwrap()),
            ..Config::default()
        };
        let (mine, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut tokens = HashMap::new();
        let mut next_token = 1;
        let reuse = crate::udp::ReuseOwners::default();
        let net = ScriptedNet::default();
        let session = {
            let mut alloc = |src| {
                let t = Token(next_token);
                next_token += 1;
                tokens.insert(t, src);
                t
            };
            let mut ctx = Ctx {
                registry: poll.registry(),
                tokens: &mut alloc,
                release: &mut |_| {},
                config: &config,
                reuse: &reuse,
                net: &net,
                resolver: None,
                now: Instant::now(),
            };
            Session::new(1, mine, &mut ctx).unwrap()
        };
        let guest = BidirectionalPipe::attach(
            &session.region,
            session.control.layout(),
            PeerWakers::single(Arc::new(NoNotify)),
        )
        .unwrap();
        Harness {
            poll,
            events: mio::Events::with_capacity(256),
            tokens,
            next_token,
            config,
            reuse,
            session,
            guest,
            decoder: FrameDecoder::new(),
            next_rid: 1,
            clock: None,
            unclaimed: Vec::new(),
            guest_sock: theirs,
            net,
        }
    }

    /// Runs `f` with the session and the services a loop lends it.
    fn now(&self) -> Instant {
        self.clock.unwrap_or_else(Instant::now)
    }

    fn with_ctx<R>(&mut self, f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R) -> R {
        let now = self.now();
        let Harness {
            poll,
            tokens,
            next_token,
            config,
            reuse,
            session,
            net,
            ..
        } = self;
        let mut released = Vec::new();
        let r = {
            let mut alloc = |src| {
                let t = Token(*next_token);
                *next_token += 1;
                tokens.insert(t, src);
                t
            };
            let mut release = |t| released.push(t);
            let mut ctx = Ctx {
                registry: poll.registry(),
                tokens: &mut alloc,
                release: &mut release,
                config,
                reuse,
                net: &*net,
                resolver: None,
                now,
            };
            f(session, &mut ctx)
        };
        for t in released {
            tokens.remove(&t);
        }
        r
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        assert_eq!(self.guest.write(bytes).unwrap(), bytes.len());
    }

    fn send(&mut self, msg: &Message) -> RequestId {
        let rid = RequestId(self.next_rid);
        self.next_rid += 1;
        self.send_raw(&msg.to_frame(rid));
        rid
    }

    /// One turn: control requests, socket readiness, deadlines, queued work.
    fn turn(&mut self) {
        self.with_ctx(|s, ctx| s.service_control(ctx));
        self.poll
            .poll(&mut self.events, Some(std::time::Duration::ZERO))
            .unwrap();
        let ready: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| {
                let src = *self.tokens.get(&e.token())?;
                Some((src, e.is_readable(), e.is_writable()))
            })
            .collect();
        for (src, r, w) in ready {
            self.with_ctx(|s, ctx| s.on_event(src, r, w, ctx));
        }
        self.with_ctx(|s, ctx| {
            s.fire_timers(ctx.now, ctx);
            s.run_ready(ctx);
        });
    }

    /// Every reply the guest can read now.
    fn replies(&mut self) -> Vec<Frame> {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.guest.read(&mut buf) {
            if n == 0 {
                break;
            }
            assert_eq!(self.decoder.feed(&buf[..n]), n);
        }
        let mut out = Vec::new();
        while let Some(f) = self
            .decoder
            .next_frame()
            .expect("the monitor's frames decode")
        {
            out.push(f);
        }
        out
    }

    /// Turns until `rid` is answered (bounded).
    fn answer(&mut self, rid: RequestId) -> Message {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while Instant::now() < deadline {
            let fresh = self.replies();
            self.unclaimed.extend(fresh);
            if let Some(i) = self.unclaimed.iter().position(|f| f.request_id == rid) {
                return self.unclaimed.remove(i).message;
            }
            self.turn();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no answer to request {}: saw {:?}", rid.0, self.unclaimed);
    }

    fn call(&mut self, msg: &Message) -> Message {
        let rid = self.send(msg);
        self.answer(rid)
    }

    fn hello(&mut self) {
        let ok = self.call(&Message::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            flags: 0,
        });
        assert!(matches!(ok, Message::HelloOk { .. }), "{ok:?}");
    }

    /// What every table and counter of the session must agree on.
    fn check_invariants(&self) {
        let s = &self.session;
        let connecting = s
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Connecting { .. }))
            .count();
        let open = s
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Open(_)))
            .count();
        let udp = s
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Udp(_)))
            .count();
        assert_eq!(s.admission.connecting as usize, connecting);
        assert_eq!(s.admission.tcp as usize, connecting + open);
        assert_eq!(s.admission.udp as usize, udp);
        for (&(_, id), rid) in &s.timers {
            match s.conns.get(&id).map(|c| &c.state) {
                Some(ConnState::Connecting { request, .. }) => assert_eq!(request, rid),
                other => panic!("a timer for conn {} in state {}", id.0, other.is_some()),
            }
        }
        assert!(s.timers.len() <= connecting);
        for l in s.listeners.values() {
            assert!(l.pending.len() <= l.backlog);
        }
        assert!(s.in_flight() <= u64::from(s.admission.policy.limits.requests_in_flight));
        assert!(s.ready.len() <= s.conns.len());
    }
}

const ALLOW_LOOPBACK: &str = "\
[[outbound]]
action = \"allow\"
nets = [\"127.0.0.0/8\"]

[[listen]]
action = \"allow\"
nets = [\"127.0.0.1\"]

[[multicast]]
action = \"allow\"
groups = [\"239.0.0.0/8\"]
";

#[test]
fn the_handshake_comes_first_and_a_refused_one_ends_the_session() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    let early = h.call(&Message::ListenRequest {
        addr: "127.0.0.1:0".parse().unwrap(),
        backlog: 0,
    });
    assert_eq!(
        early,
        Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: arca_wire::MessageType::ListenRequest.to_u8(),
        }
    );
    h.hello();
    let again = h.call(&Message::Hello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        flags: 0,
    });
    assert!(matches!(
        again,
        Message::Error {
            code: ErrorCode::InvalidInput,
            ..
        }
    ));

    let mut h = Harness::new(ALLOW_LOOPBACK);
    let refused = h.call(&Message::Hello {
        magic: HELLO_MAGIC,
        version: 99,
        flags: 0,
    });
    assert!(matches!(
        refused,
        Message::HelloErr {
            code: ErrorCode::Unsupported,
            ..
        }
    ));
    assert!(h.session.ended().is_some());
}

#[test]
fn a_connect_and_an_accept_meet_and_closes_free_everything() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let Message::ListenOk { listener, local } = h.call(&Message::ListenRequest {
        addr: "127.0.0.1:0".parse().unwrap(),
        backlog: 4,
    }) else {
        panic!("listen refused");
    };
    let accept = h.send(&Message::AcceptRequest { listener });
    let Message::ConnectOk { conn, peer, .. } = h.call(&Message::ConnectRequest {
        addr: local,
        timeout_ms: 1000,
    }) else {
        panic!("connect refused");
    };
    assert_eq!(peer, local);
    let Message::IncomingConnection { conn: other, .. } = h.answer(accept) else {
        panic!("no incoming connection");
    };
    assert_ne!(conn, other, "each end has its own id");
    h.check_invariants();
    for handle in [
        Handle::Connection(conn),
        Handle::Connection(other),
        Handle::Listener(listener),
    ] {
        assert_eq!(h.call(&Message::Close { handle }), Message::CloseOk);
    }
    assert_eq!(
        h.call(&Message::Close {
            handle: Handle::Connection(conn)
        }),
        Message::CloseErr {
            code: ErrorCode::NotFound
        }
    );
    h.turn();
    let st = h.session.stats();
    assert_eq!((st.conns, st.listeners, st.timers), (0, 0, 0));
    assert_eq!(st.alloc.allocated, st.fixed_bytes, "every pipe freed");
}

#[test]
fn a_refused_connect_and_a_denied_one_are_answered_with_their_codes() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        h.call(&Message::ConnectRequest {
            addr: closed,
            timeout_ms: 0
        }),
        Message::ConnectErr {
            code: ErrorCode::ConnectionRefused
        }
    );
    assert_eq!(
        h.call(&Message::ConnectRequest {
            addr: "192.0.2.1:80".parse().unwrap(),
            timeout_ms: 0
        }),
        Message::ConnectErr {
            code: ErrorCode::PermissionDenied
        }
    );
    assert_eq!(h.session.stats().policy.denied, 1);
    h.check_invariants();
}

/// A connect's deadline is kept in the session's time, which the loop
/// passes in: it fires when that time passes it, not before, and takes the
/// pending connect (and its timer) with it. The handshake is held in flight
/// by the scripted network.
#[test]
fn a_connect_deadline_fires_by_the_time_passed_in() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = host.local_addr().unwrap();
    h.net.held.set(true);
    let t0 = Instant::now();
    h.clock = Some(t0);
    let rid = h.send(&Message::ConnectRequest {
        addr,
        timeout_ms: 5_000,
    });
    h.turn();
    assert!(h.replies().is_empty(), "still connecting");
    assert_eq!(h.session.stats().timers, 1);
    h.clock = Some(t0 + std::time::Duration::from_millis(4_999));
    h.turn();
    assert!(h.replies().is_empty(), "not before its deadline");
    h.clock = Some(t0 + std::time::Duration::from_millis(5_000));
    h.turn();
    let f = h.replies().pop().expect("answered at its deadline");
    assert_eq!(f.request_id, rid);
    assert_eq!(
        f.message,
        Message::ConnectErr {
            code: ErrorCode::TimedOut
        }
    );
    let st = h.session.stats();
    assert_eq!((st.conns, st.timers, st.requests_in_flight), (0, 0, 0));
    h.check_invariants();
}

/// Each call's failure, as the kernel would report it, reaches the guest as
/// the reply to the request that made the call, and leaves nothing held.
#[test]
fn socket_call_failures_are_answered_with_their_codes() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = host.local_addr().unwrap();
    let connect = Message::ConnectRequest {
        addr,
        timeout_ms: 0,
    };
    let cases = [
        (
            Call::Connect,
            Errno::ENETUNREACH,
            ErrorCode::NetworkUnreachable,
        ),
        (
            Call::Connect,
            Errno::EMFILE,
            ErrorCode::from_io(&Errno::EMFILE.into()),
        ),
        (
            Call::Handshake,
            Errno::ECONNREFUSED,
            ErrorCode::ConnectionRefused,
        ),
        (
            Call::Handshake,
            Errno::EHOSTUNREACH,
            ErrorCode::HostUnreachable,
        ),
    ];
    for (call, errno, code) in cases {
        h.net.fail(call, errno);
        assert_eq!(
            h.call(&connect),
            Message::ConnectErr { code },
            "{call:?} {errno}"
        );
    }
    h.net.fail(Call::Listen, Errno::EADDRINUSE);
    assert_eq!(
        h.call(&Message::ListenRequest {
            addr: "127.0.0.1:0".parse().unwrap(),
            backlog: 0
        }),
        Message::ListenErr {
            code: ErrorCode::AddrInUse
        }
    );
    h.net.fail(Call::BindUdp, Errno::EACCES);
    assert_eq!(
        h.call(&Message::UdpBind {
            addr: "127.0.0.1:0".parse().unwrap(),
            flags: 0
        }),
        Message::UdpBindErr {
            code: ErrorCode::PermissionDenied
        }
    );
    let st = h.session.stats();
    assert_eq!((st.conns, st.listeners, st.udp_sockets), (0, 0, 0));
    assert_eq!(st.alloc.allocated, st.fixed_bytes, "no pipe left behind");
    h.check_invariants();
    // The next calls go through: a failure is one request's, not the session's.
    assert!(matches!(h.call(&connect), Message::ConnectOk { .. }));
}

/// An accept that fails for want of descriptors is answered with that error;
/// the listener and its other pending accepts carry on, and the connection
/// still waiting in the kernel's queue goes to the next accept. An aborted
/// connection is skipped without an answer.
#[test]
fn an_accept_failure_ends_one_accept_and_the_listener_carries_on() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let Message::ListenOk { listener, local } = h.call(&Message::ListenRequest {
        addr: "127.0.0.1:0".parse().unwrap(),
        backlog: 4,
    }) else {
        panic!("listen refused");
    };
    let first = h.send(&Message::AcceptRequest { listener });
    let second = h.send(&Message::AcceptRequest { listener });
    h.turn();
    h.net.fail(Call::Accept, Errno::EMFILE);
    h.net.fail(Call::Accept, Errno::ECONNABORTED);
    let _peer = std::net::TcpStream::connect(local).unwrap();
    assert_eq!(
        h.answer(first),
        Message::AcceptErr {
            code: ErrorCode::from_io(&Errno::EMFILE.into())
        }
    );
    assert!(matches!(
        h.answer(second),
        Message::IncomingConnection { listener: l, .. } if l == listener
    ));
    let st = h.session.stats();
    assert_eq!((st.conns, st.listeners), (1, 1));
    h.check_invariants();
}

/// A connect whose handshake never ends holds its request until its
/// connection is closed (a guest that guesses the id can): the close answers
/// the connect as aborted and frees its id and timer.
#[test]
fn a_close_ends_a_connect_in_flight() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    h.net.held.set(true);
    let rid = h.send(&Message::ConnectRequest {
        addr: host.local_addr().unwrap(),
        timeout_ms: u32::MAX,
    });
    h.turn();
    assert!(h.replies().is_empty(), "still connecting");
    let st = h.session.stats();
    assert_eq!((st.conns, st.timers, st.requests_in_flight), (1, 1, 1));
    let id = *h.session.conns.keys().next().unwrap();
    assert_eq!(
        h.call(&Message::Close {
            handle: Handle::Connection(id)
        }),
        Message::CloseOk
    );
    assert_eq!(
        h.answer(rid),
        Message::ConnectErr {
            code: ErrorCode::ConnectionAborted
        }
    );
    let st = h.session.stats();
    assert_eq!((st.conns, st.timers, st.requests_in_flight), (0, 0, 0));
    h.check_invariants();
}

/// Random requests of every type, good and bad, in a seeded sequence, over a
/// network whose calls fail at random: each request is answered at most
/// once, the session's tables and counters agree after every step, and its
/// teardown frees every pipe.
#[test]
fn a_random_sequence_of_every_message_type_keeps_the_session_consistent() {
    let seeds: Vec<u64> = match std::env::var("ARCA_SESSION_SEED") {
        Ok(s) => vec![s.parse().expect("ARCA_SESSION_SEED is a number")],
        Err(_) => (1..=4).collect(),
    };
    for seed in seeds {
        random_sequence(seed, 300);
    }
}

fn random_sequence(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::new(&format!(
        "[limits]\nconnections = 8\nudp_sockets = 4\nlisteners = 3\nrequests_in_flight = 12\n{ALLOW_LOOPBACK}"
    ));
    h.hello();
    // One socket call in ten fails as the kernel might, and handshakes are
    // now and then held in flight.
    *h.net.random.borrow_mut() = Some((StdRng::seed_from_u64(!seed), 0.1));
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_addr = host.local_addr().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let udp_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut accepted = Vec::new();
    let mut seen = Seen::default();
    for step in 0..steps {
        let some_conn = |rng: &mut StdRng, conns: &[ConnId]| {
            if conns.is_empty() || rng.gen_bool(0.2) {
                ConnId(rng.gen_range(0..80))
            } else {
                conns[rng.gen_range(0..conns.len())]
            }
        };
        let some_listener = |rng: &mut StdRng, ls: &[ListenerId]| {
            if ls.is_empty() || rng.gen_bool(0.2) {
                ListenerId(rng.gen_range(0..10))
            } else {
                ls[rng.gen_range(0..ls.len())]
            }
        };
        if rng.gen_bool(0.05) {
            h.net.held.set(!h.net.held.get());
        }
        let msg = match rng.gen_range(0..14) {
            0 => Message::ListenRequest {
                addr: if rng.gen_bool(0.8) {
                    "127.0.0.1:0".parse().unwrap()
                } else {
                    "192.0.2.7:80".parse().unwrap()
                },
                backlog: rng.gen_range(0..4),
            },
            1 | 2 => {
                let addr = match rng.gen_range(0..4) {
                    0 => closed,
                    1 if !seen.listen_addrs.is_empty() => {
                        seen.listen_addrs[rng.gen_range(0..seen.listen_addrs.len())]
                    }
                    2 => "192.0.2.9:443".parse().unwrap(),
                    _ => host_addr,
                };
                Message::ConnectRequest {
                    addr,
                    timeout_ms: [0, 1, 50, u32::MAX][rng.gen_range(0..4)],
                }
            }
            3 => Message::AcceptRequest {
                listener: some_listener(&mut rng, &seen.listeners),
            },
            4 | 5 => Message::Close {
                handle: match rng.gen_range(0..3) {
                    0 => Handle::Listener(some_listener(&mut rng, &seen.listeners)),
                    1 => Handle::Connection(some_conn(&mut rng, &seen.conns)),
                    _ => Handle::Udp(some_conn(&mut rng, &seen.conns)),
                },
            },
            6 => Message::UdpBind {
                addr: "127.0.0.1:0".parse().unwrap(),
                flags: [0, arca_wire::UDP_REUSE_ADDR, 0x80][rng.gen_range(0..3)],
            },
            7 => Message::UdpConnect {
                socket: some_conn(&mut rng, &seen.conns),
                addr: if rng.gen_bool(0.8) {
                    udp_peer.local_addr().unwrap()
                } else {
                    "192.0.2.3:53".parse().unwrap()
                },
            },
            8 => Message::Membership {
                socket: some_conn(&mut rng, &seen.conns),
                op: if rng.gen_bool(0.5) {
                    MembershipOp::Join
                } else {
                    MembershipOp::Leave
                },
                group: ["239.1.2.3:0", "224.0.0.251:0", "127.0.0.1:0"][rng.gen_range(0..3)]
                    .parse()
                    .unwrap(),
                interface: std::net::Ipv4Addr::LOCALHOST,
            },
            9 => Message::SetOption {
                handle: if rng.gen_bool(0.5) {
                    Handle::Connection(some_conn(&mut rng, &seen.conns))
                } else {
                    Handle::Udp(some_conn(&mut rng, &seen.conns))
                },
                option: SocketOption::from_u16(rng.gen_range(0..16)),
                value: [0, 1, 2, 64, 1 << 20, u64::MAX][rng.gen_range(0..6)],
            },
            10 => Message::Hello {
                magic: HELLO_MAGIC,
                version: PROTOCOL_VERSION,
                flags: 0,
            },
            11 => Message::CloseOk,
            12 => Message::ConnectErr {
                code: ErrorCode::TimedOut,
            },
            _ => {
                // A frame of an unknown type, or a known type with a payload
                // of the wrong length: answered with Error, in sync.
                let rid = RequestId(h.next_rid);
                h.next_rid += 1;
                let kind = if rng.gen_bool(0.5) { 0xEE } else { 0x10 };
                let len: u16 = rng.gen_range(0..40);
                let mut f = FrameHeader::new(kind, len, rid).to_bytes().to_vec();
                f.extend((0..len).map(|_| rng.gen::<u8>()));
                assert_eq!(f.len(), HEADER_LEN + usize::from(len));
                h.send_raw(&f);
                h.turn();
                seen.record(&mut h);
                continue;
            }
        };
        h.send(&msg);
        h.turn();
        while let Ok((s, _)) = host.accept() {
            accepted.push(s);
        }
        seen.record(&mut h);
        h.check_invariants();
        assert!(
            h.session.ended().is_none(),
            "seed {seed} step {step}: session ended"
        );
    }
    for _ in 0..20 {
        h.turn();
        seen.record(&mut h);
    }
    h.check_invariants();
    for (rid, n) in &seen.answered {
        assert_eq!(*n, 1, "seed {seed}: request {rid} answered {n} times");
    }
    h.with_ctx(|s, ctx| s.teardown(ctx));
    let st = h.session.stats();
    assert_eq!(
        st.alloc.allocated, st.fixed_bytes,
        "seed {seed}: teardown frees every pipe"
    );
    assert_eq!(st.futile_passes, 0);
}

/// What the guest has learnt from the replies so far.
#[derive(Default)]
struct Seen {
    /// Replies per request id.
    answered: HashMap<u32, usize>,
    listeners: Vec<ListenerId>,
    listen_addrs: Vec<SocketAddr>,
    /// Connection and UDP socket ids granted.
    conns: Vec<ConnId>,
}

impl Seen {
    /// Reads the replies, counts them per request and learns the ids granted.
    fn record(&mut self, h: &mut Harness) {
        for f in h.replies() {
            *self.answered.entry(f.request_id.0).or_default() += 1;
            match f.message {
                Message::ListenOk { listener, local } => {
                    self.listeners.push(listener);
                    self.listen_addrs.push(local);
                }
                Message::ConnectOk { conn, .. } | Message::IncomingConnection { conn, .. } => {
                    self.conns.push(conn)
                }
                Message::UdpBindOk { socket, .. } => self.conns.push(socket),
                _ => {}
            }
        }
    }
}

/// A guest that writes to its session socket (it should send nothing after
/// attaching) has what it sent discarded a turn's worth at a time: one event
/// never reads without bound, and the rest is read on later turns.
#[test]
fn packets_on_the_session_socket_are_read_a_bounded_turn_at_a_time() {
    let mut h = Harness::new(ALLOW_LOOPBACK);
    h.hello();
    let packets = SOCKET_READS * 3 + 5;
    for _ in 0..packets {
        nix::sys::socket::send(
            h.guest_sock.as_raw_fd(),
            b"noise",
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .expect("the socket buffer holds them");
    }
    h.with_ctx(|s, ctx| s.on_event(SessionSource::Socket, true, false, ctx));
    assert!(h.session.socket_pending, "more than a turn's worth is left");
    assert!(h.session.has_ready_work());
    let mut turns = 1;
    while h.session.socket_pending {
        h.with_ctx(|s, ctx| s.run_ready(ctx));
        turns += 1;
        assert!(turns <= 10, "drained in a bounded number of turns");
    }
    assert_eq!(turns, 4, "{packets} packets at {SOCKET_READS} a turn");
    assert!(h.session.ended().is_none(), "noise is not a hang-up");
    let ok = h.call(&Message::Close {
        handle: Handle::Listener(ListenerId(99)),
    });
    assert_eq!(
        ok,
        Message::CloseErr {
            code: ErrorCode::NotFound
        }
    );
}
