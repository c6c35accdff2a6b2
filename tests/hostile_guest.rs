//! A hostile guest and a well-behaved one on the SAME in-process monitor.
//!
//! The well-behaved guest (the `arca` library) runs a verified workload — TCP
//! echo with CRC32C checksums and UDP echo — for the whole run, while raw
//! guests (tests/util/raw_guest.rs) do what no honest guest would:
//!
//! - send malformed control frames: every message type truncated and
//!   oversized, unknown types, random payloads, reply types carrying pipe
//!   offsets and lengths far outside the region, ids they do not own, floods;
//! - write bad datagram records into a UDP socket's ring (oversized length,
//!   bad address family, non-zero reserved bytes): only that socket closes;
//! - never read their rings (backpressure on a data pipe and on replies);
//! - scribble random words over their whole region (ring headers, data, the
//!   control pipe, the bitmap) while their connections are active;
//! - exit with requests in flight.
//!
//! Asserted: the monitor thread stays alive and serving; the good guest's
//! bytes are exactly right; every pipe the monitor closes for cause is logged
//! with its reason (logs are captured per monitor thread); after a hostile
//! guest leaves, its session and every descriptor it cost are gone.
//!
//! The monitor cannot touch memory outside a region by construction, not by
//! luck: every ring is resolved once through `ShmRegion::from_offset`'s
//! overflow-checked bounds check, every copy is masked into the ring's private
//! capacity, and a peer index is validated before use (DATAPIPE.md §8). These
//! tests drive that code with hostile values; `shm-ring/tests/fuzz_ring.rs`
//! drives it harder in isolation.
//!
//! Default run: a few seconds. Long randomized mode: `scripts/hostile SECONDS`
//! (sets `ARCA_HOSTILE_SECS`; `ARCA_HOSTILE_SEED` picks the seed).

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as HostTcp, UdpSocket as HostUdp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_monitor::{Config, Monitor, MonitorHandle, MonitorStats};
use arca_wire::{
    ConnId, DatagramHeader, ErrorCode, FrameHeader, Handle, ListenerId, Message, MessageType,
    PipeInfo, RequestId, SocketOption, DATAGRAM_HEADER_LEN, MAX_FRAME_PAYLOAD,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shm_ring::{BidirectionalPipe, RingError, TO_OWNER_HEADER};
use util::raw_guest::{listen_and_accept, RawGuest, WAIT};

/// Tests here count descriptors and sessions: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- a monitor whose logs are captured -------------------------------------

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("ARCA_HOSTILE_ECHO_LOGS").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        let mut v = self.0.lock().unwrap();
        // Bounded: a long run keeps the last 32 MiB at most.
        if v.len() > 32 << 20 {
            v.drain(..16 << 20);
        }
        v.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Served {
    path: PathBuf,
    handle: MonitorHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    logs: Logs,
}

impl Served {
    fn start(name: &str, config: Config) -> Served {
        let path =
            std::env::temp_dir().join(format!("arca-hostile-{}-{name}.sock", std::process::id()));
        let mut m = Monitor::new(config).unwrap();
        m.listen_unix(&path).unwrap();
        let handle = m.handle();
        let logs = Logs::default();
        let sink = Arc::clone(&logs.0);
        let thread = std::thread::spawn(move || {
            use tracing_subscriber::util::SubscriberInitExt;
            // This thread's own subscriber: each monitor's logs are its own.
            let _guard = tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with_ansi(false)
                .with_writer(move || LogWriter(Arc::clone(&sink)))
                .finish()
                .set_default();
            m.run()
        });
        Served {
            path,
            handle,
            thread: Some(thread),
            logs,
        }
    }

    /// The loop's thread is running and answers.
    fn assert_alive(&self) -> MonitorStats {
        let t = self.thread.as_ref().unwrap();
        assert!(!t.is_finished(), "monitor thread died");
        self.handle
            .stats()
            .expect("monitor answers its stats within 5 s")
    }

    /// Waits until `cond` holds on the stats.
    fn wait_for(&self, what: &str, cond: impl Fn(&MonitorStats) -> bool) -> MonitorStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.assert_alive();
            if cond(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                assert!(r.is_ok(), "monitor thread panicked");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn config() -> Config {
    Config {
        region_size: 16 << 20,
        data_ring: 64 << 10,
        udp_ring: 128 << 10,
        max_conns: 256,
        ..Config::default()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Waits for the process's descriptor count to come back to `baseline`.
fn assert_fds_back_to(baseline: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = open_fds();
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors leaked: {now} open, baseline {baseline}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- host-side servers -----------------------------------------------------

/// A host UDP echo server; stops when `stop` is set (bounded by a timeout).
fn host_udp_echo(stop: Arc<AtomicBool>) -> (SocketAddr, JoinHandle<()>) {
    let sock = HostUdp::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let end = Instant::now() + Duration::from_secs(900);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, t)
}

// ---- the well-behaved guest ------------------------------------------------

#[derive(Default)]
struct GoodReport {
    tcp_rounds: u64,
    tcp_bytes: u64,
    udp_datagrams: u64,
}

/// TCP echo with checksums and UDP echo until `stop`; panics on any wrong
/// byte (the test then fails when it joins).
fn good_guest(
    path: PathBuf,
    tcp: SocketAddr,
    udp: SocketAddr,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> JoinHandle<GoodReport> {
    std::thread::spawn(move || {
        let session = arca::ArcaSession::attach(&path).expect("good guest attaches");
        let sock = session.bind_udp("127.0.0.1:0").expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut report = GoodReport::default();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) || round < 2 {
            round += 1;
            // TCP: a fresh connection per round, 16 KiB chunks echoed and
            // checked by CRC32C of everything sent against everything read.
            let mut s = session.connect(tcp).expect("good guest connects");
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.set_write_timeout(Some(WAIT)).unwrap();
            let total = rng.gen_range(64 << 10..=256 << 10);
            let data = util::pattern(seed ^ round, total);
            let (mut sent_crc, mut got_crc) = (0u32, 0u32);
            let mut back = vec![0u8; 16 << 10];
            for chunk in data.chunks(16 << 10) {
                s.write_all(chunk).expect("good guest writes");
                sent_crc = crc32c::crc32c_append(sent_crc, chunk);
                let got = &mut back[..chunk.len()];
                s.read_exact(got).expect("good guest reads its echo");
                got_crc = crc32c::crc32c_append(got_crc, got);
                assert_eq!(got, chunk, "echoed bytes differ in round {round}");
            }
            assert_eq!(sent_crc, got_crc);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("clean EOF");
            assert!(rest.is_empty());
            report.tcp_rounds += 1;
            report.tcp_bytes += total as u64;
            // UDP: a few datagrams, each echoed whole (retried if lost).
            for i in 0..4u64 {
                let len = rng.gen_range(1..=1400);
                let dgram = util::pattern(seed ^ (round << 8) ^ i, len);
                let mut ok = false;
                for _try in 0..5 {
                    sock.send_to(&dgram, udp).expect("udp send");
                    let mut buf = [0u8; 2048];
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < deadline {
                        match sock.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                assert_eq!(from, udp);
                                if buf[..n] == dgram[..] {
                                    ok = true;
                                    break;
                                }
                                // An earlier try's echo arriving late is the
                                // only other thing that may come.
                            }
                            Err(_) => break,
                        }
                    }
                    if ok {
                        break;
                    }
                }
                assert!(ok, "udp echo of round {round} never came back");
                report.udp_datagrams += 1;
            }
        }
        report
    })
}

// ---- what the hostile guests did --------------------------------------------

#[derive(Default)]
struct Tally {
    malformed_cases: u64,
    foreign_id_cases: u64,
    flood_requests: u64,
    frames_sent: u64,
    bad_record_cases: u64,
    backpressure_cases: u64,
    scribble_cases: u64,
    words_scribbled: u64,
    exits_mid_request: u64,
    sessions: u64,
    sessions_killed: u64,
    pipes_closed_for_cause: u64,
}

impl GoodReport {
    fn summary(&self) -> String {
        format!(
            "good guest: {} tcp rounds ({} bytes echoed and checked), {} udp datagrams echoed",
            self.tcp_rounds, self.tcp_bytes, self.udp_datagrams
        )
    }
}

impl Tally {
    fn summary(&self) -> String {
        format!(
            "{} hostile sessions ({} ended for cause; {} pipe closures for cause logged); cases: malformed frames {}, \
             foreign ids {}, flood requests {}, bad datagram records {}, never-read pipes {}, \
             scribble rounds {}, exits mid-request {}; frames sent {}, words scribbled {}",
            self.sessions,
            self.sessions_killed,
            self.pipes_closed_for_cause,
            self.malformed_cases,
            self.foreign_id_cases,
            self.flood_requests,
            self.bad_record_cases,
            self.backpressure_cases,
            self.scribble_cases,
            self.exits_mid_request,
            self.frames_sent,
            self.words_scribbled
        )
    }
}

fn hello(g: &mut RawGuest) {
    g.hello();
}

/// Sends `frames` (each a whole frame, request id at bytes 3..7) and checks
/// that each gets exactly one reply with its id, except types that may stay
/// pending (connect, accept). Returns the replies by id.
fn send_and_collect(g: &mut RawGuest, frames: &[Vec<u8>], t: &mut Tally) -> HashMap<u32, Message> {
    let mut want: HashMap<u32, u8> = HashMap::new();
    for f in frames {
        let id = u32::from_le_bytes([f[3], f[4], f[5], f[6]]);
        want.insert(id, f[0]);
    }
    let mut got: HashMap<u32, Message> = HashMap::new();
    let mut bytes: Vec<u8> = frames.concat();
    let deadline = Instant::now() + WAIT;
    loop {
        if !bytes.is_empty() {
            let n = g.try_send_raw(&bytes);
            bytes.drain(..n);
        }
        let replies = g.drain_replies().expect("session stays up");
        for f in replies {
            assert!(
                want.contains_key(&f.request_id.0),
                "reply to a request never sent: {f:?}"
            );
            assert!(
                got.insert(f.request_id.0, f.message).is_none(),
                "two replies to request {}",
                f.request_id.0
            );
        }
        let missing = want
            .iter()
            .filter(|(id, ty)| !got.contains_key(id) && !matches!(**ty, 0x14 | 0x18))
            .count();
        if bytes.is_empty() && missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} requests unanswered, {} bytes unsent",
            bytes.len()
        );
        g.kick(0);
        std::thread::sleep(Duration::from_millis(1));
    }
    t.frames_sent += frames.len() as u64;
    got
}

fn raw_frame(ty: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap();
    let mut f = FrameHeader::new(ty, len, RequestId(id)).to_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn next_id(g: &mut RawGuest) -> u32 {
    let id = g.next;
    g.next = id.next();
    id.0
}

/// Every message type truncated and oversized, unknown types, random
/// payloads of the right length, reply types with pipe offsets outside the
/// region. All keep frame sync, so the session must answer each one.
fn malformed_frames(g: &mut RawGuest, rng: &mut StdRng, t: &mut Tally) {
    let mut frames = Vec::new();
    for ty in MessageType::ALL {
        let want = usize::from(ty.payload_len());
        // Truncated: every shorter length would be many frames; pick some.
        for _ in 0..2 {
            if want > 0 {
                let len = rng.gen_range(0..want);
                let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                frames.push(raw_frame(ty.to_u8(), next_id(g), &payload));
            }
        }
        // Oversized, up to the frame cap.
        let len = rng.gen_range(want + 1..=MAX_FRAME_PAYLOAD);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        frames.push(raw_frame(ty.to_u8(), next_id(g), &payload));
        // Right length, random bytes (bad families, handle kinds, options).
        // Connect and listen are left out here: random valid addresses could
        // make real sockets; they are fuzzed by arca-wire's own tests.
        if !matches!(
            ty,
            MessageType::ConnectRequest | MessageType::ListenRequest | MessageType::UdpBind
        ) {
            let payload: Vec<u8> = (0..want).map(|_| rng.gen()).collect();
            frames.push(raw_frame(ty.to_u8(), next_id(g), &payload));
        }
    }
    // Unknown types.
    for _ in 0..8 {
        let ty = loop {
            let ty: u8 = rng.gen();
            if MessageType::from_u8(ty).is_none() {
                break ty;
            }
        };
        let len = rng.gen_range(0..=MAX_FRAME_PAYLOAD);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        frames.push(raw_frame(ty, next_id(g), &payload));
    }
    // Reply types naming pipes far outside the region.
    for _ in 0..4 {
        let pipe = PipeInfo {
            shm_offset: rng.gen::<u64>() | (1 << 40),
            cap_to_monitor: rng.gen(),
            cap_to_guest: rng.gen(),
        };
        let msg = Message::IncomingConnection {
            listener: ListenerId(rng.gen()),
            conn: ConnId(rng.gen()),
            pipe,
            local: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:2".parse().unwrap(),
        };
        frames.push(msg.to_frame(RequestId(next_id(g))));
        let msg = Message::UdpBindOk {
            socket: ConnId(rng.gen()),
            pipe,
            local: "127.0.0.1:1".parse().unwrap(),
        };
        frames.push(msg.to_frame(RequestId(next_id(g))));
    }
    let n = frames.len() as u64;
    let replies = send_and_collect(g, &frames, t);
    for (id, m) in &replies {
        // No malformed frame may be mistaken for success.
        assert!(
            matches!(
                m,
                Message::Error { .. }
                    | Message::CloseErr { .. }
                    | Message::SetOptionErr { .. }
                    | Message::AcceptErr { .. }
                    | Message::UdpConnectErr { .. }
                    | Message::MembershipErr { .. }
                    | Message::ConnectErr { .. }
                    | Message::ListenErr { .. }
                    | Message::UdpBindErr { .. }
            ),
            "request {id} got {m:?}"
        );
    }
    t.malformed_cases += n;
}

/// Requests naming ids this guest does not own.
fn foreign_ids(g: &mut RawGuest, rng: &mut StdRng, t: &mut Tally) {
    let mut frames = Vec::new();
    for _ in 0..32 {
        let conn = ConnId(rng.gen_range(200..100_000));
        let msg = match rng.gen_range(0..6) {
            0 => Message::Close {
                handle: Handle::Connection(conn),
            },
            1 => Message::Close {
                handle: Handle::Udp(conn),
            },
            2 => Message::SetOption {
                handle: Handle::Connection(conn),
                option: SocketOption::NoDelay,
                value: 1,
            },
            3 => Message::UdpConnect {
                socket: conn,
                addr: "127.0.0.1:9".parse().unwrap(),
            },
            4 => Message::Membership {
                socket: conn,
                op: arca_wire::MembershipOp::Join,
                group: "239.1.2.3:0".parse().unwrap(),
                interface: std::net::Ipv4Addr::UNSPECIFIED,
            },
            _ => Message::AcceptRequest {
                listener: ListenerId(rng.gen_range(1000..u32::MAX)),
            },
        };
        frames.push(msg.to_frame(RequestId(next_id(g))));
    }
    let replies = send_and_collect(g, &frames, t);
    assert_eq!(replies.len(), frames.len());
    for m in replies.values() {
        let code = match m {
            Message::CloseErr { code }
            | Message::SetOptionErr { code }
            | Message::UdpConnectErr { code }
            | Message::MembershipErr { code }
            | Message::AcceptErr { code } => *code,
            other => panic!("foreign id answered with {other:?}"),
        };
        assert_eq!(code, ErrorCode::NotFound);
    }
    t.foreign_id_cases += frames.len() as u64;
}

/// Thousands of requests written as fast as the ring takes them, replies
/// left unread until the end: the monitor stops reading (backpressure) and
/// keeps serving everyone else.
fn flood(g: &mut RawGuest, rng: &mut StdRng, t: &mut Tally) {
    // Enough that the unread replies pass the ring and the monitor's outbox
    // cap (9 bytes each): the monitor stops reading this guest's requests.
    let n = rng.gen_range(40_000..50_000);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            Message::Close {
                handle: Handle::Connection(ConnId(rng.gen_range(300..1000))),
            }
            .to_frame(RequestId(next_id(g)))
        })
        .collect();
    // Stuff the ring without reading first.
    let stream = frames.concat();
    let mut sent = 0;
    for _ in 0..200 {
        sent += g.try_send_raw(&stream[sent..]);
        g.kick(0);
        if sent == stream.len() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // Then the rest, reading replies: every one answered exactly once.
    let replies = send_and_collect_from(g, &frames, sent, t);
    assert_eq!(replies, frames.len());
    t.flood_requests += frames.len() as u64;
}

/// As `send_and_collect`, when the first `already` bytes were sent.
fn send_and_collect_from(
    g: &mut RawGuest,
    frames: &[Vec<u8>],
    already: usize,
    t: &mut Tally,
) -> usize {
    let stream = frames.concat();
    let mut sent = already;
    let mut got = 0usize;
    let deadline = Instant::now() + WAIT;
    while got < frames.len() {
        assert!(
            Instant::now() < deadline,
            "flood: {got} of {} answered",
            frames.len()
        );
        if sent < stream.len() {
            sent += g.try_send_raw(&stream[sent..]);
        }
        let replies = g.drain_replies().expect("session stays up");
        if replies.is_empty() {
            g.kick(0);
            std::thread::sleep(Duration::from_micros(500));
        }
        for f in replies {
            assert!(matches!(
                f.message,
                Message::CloseErr {
                    code: ErrorCode::NotFound
                }
            ));
            got += 1;
        }
    }
    t.frames_sent += frames.len() as u64;
    got
}

/// Raw bytes of a datagram record header with `payload_len` and a raw address.
fn record_header(payload_len: u16, addr: SocketAddr) -> [u8; DATAGRAM_HEADER_LEN] {
    let mut h = DatagramHeader::new(0, addr).unwrap().to_bytes();
    h[..2].copy_from_slice(&payload_len.to_le_bytes());
    h
}

fn udp_bind(g: &mut RawGuest) -> (ConnId, BidirectionalPipe) {
    let Message::UdpBindOk { socket, pipe, .. } = g.call(&Message::UdpBind {
        addr: "127.0.0.1:0".parse().unwrap(),
        flags: 0,
    }) else {
        panic!("udp bind refused")
    };
    let p = g.pipe(socket, pipe);
    (socket, p)
}

/// Bad datagram records: the monitor closes that socket alone (and logs why);
/// an honest socket of the same session keeps echoing.
fn bad_records(
    g: &mut RawGuest,
    served: &Served,
    echo: SocketAddr,
    rng: &mut StdRng,
    t: &mut Tally,
) {
    let logs = &served.logs;
    let (good_id, mut good) = udp_bind(g);
    let before = logs.count("bad datagram record");
    let kinds = 3;
    for k in 0..kinds {
        let (id, mut pipe) = udp_bind(g);
        let h = match k {
            // Longer than any IPv4 datagram.
            0 => record_header(rng.gen_range(65_508..=u16::MAX), echo),
            1 => {
                let mut h = record_header(4, echo);
                h[2] = rng.gen_range(7..=255); // no such address family
                h
            }
            _ => {
                let mut h = record_header(4, echo);
                h[31] = rng.gen_range(1..=255); // reserved byte
                h
            }
        };
        // One write, one publish: the monitor may refuse the record (and
        // close the pipe) as soon as it sees the header.
        let record = [&h[..], &[0xEE; 4]].concat();
        assert_eq!(pipe.write(&record).unwrap(), record.len());
        g.kick(id.0);
        // The monitor closes that socket: its ring to us reports EOF.
        let deadline = Instant::now() + WAIT;
        while !pipe.is_peer_write_closed() {
            assert!(Instant::now() < deadline, "bad record {k} not refused");
            g.kick(id.0);
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(pipe);
        t.bad_record_cases += 1;
    }
    let deadline = Instant::now() + WAIT;
    while logs.count("bad datagram record") < before + kinds {
        assert!(
            Instant::now() < deadline,
            "each closed socket is logged with its reason:\n{}",
            logs.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The honest socket still works: one echoed record.
    let payload = util::pattern(rng.gen(), 100);
    let h = DatagramHeader::new(payload.len(), echo).unwrap().to_bytes();
    good.tx().write_record(&[&h[..], &payload[..]]).unwrap();
    g.kick(good_id.0);
    let mut back = vec![0u8; DATAGRAM_HEADER_LEN + payload.len()];
    let deadline = Instant::now() + WAIT;
    let mut have = 0;
    while have < back.len() {
        assert!(Instant::now() < deadline, "honest udp socket stopped");
        match good.read(&mut back[have..]) {
            Ok(n) => have += n,
            Err(RingError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("honest udp socket: {e}"),
        }
    }
    assert_eq!(&back[DATAGRAM_HEADER_LEN..], &payload[..]);
    let close = g.call(&Message::Close {
        handle: Handle::Udp(good_id),
    });
    assert_eq!(close, Message::CloseOk);
    drop(good);
    // Every socket of this session is gone: its allocator is back to the
    // control pipe and bitmap alone. (This session is the newest one.)
    served.wait_for("the bad sockets' blocks freed", |st| {
        st.sessions
            .last()
            .is_some_and(|(_, s)| s.conns == 0 && s.alloc.allocated == s.fixed_bytes)
    });
}

/// A connection whose guest never reads: the host writes until its socket
/// would block; the monitor stops reading it (ring full) and serves the rest.
fn never_reads(g: &mut RawGuest, t: &mut Tally) -> (BidirectionalPipe, HostTcp) {
    let (_conn, pipe, mut host) = listen_and_accept(g);
    host.set_nonblocking(true).unwrap();
    let chunk = vec![0x5Au8; 64 << 10];
    let mut pushed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut idle = 0;
    while Instant::now() < deadline && idle < 50 {
        match host.write(&chunk) {
            Ok(n) => {
                pushed += n;
                idle = 0;
            }
            Err(_) => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    assert!(
        idle >= 50 && pushed > 64 << 10,
        "the host's writes stall once the unread ring is full ({pushed} bytes taken)"
    );
    t.backpressure_cases += 1;
    (pipe, host)
}

/// Active connections, then random words over the whole region.
fn scribble(g: &mut RawGuest, rng: &mut StdRng, t: &mut Tally) {
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (c, mut pipe, mut host) = listen_and_accept(g);
        host.set_nonblocking(true).unwrap();
        let _ = host.write(&[1u8; 4096]);
        let _ = pipe.write(&[2u8; 4096]);
        conns.push((c, pipe, host));
    }
    let size = g.region.size();
    let words = rng.gen_range(64..2048);
    for i in 0..words {
        let off = match rng.gen_range(0..4) {
            // Anywhere in the region.
            0 | 1 => rng.gen_range(0..size),
            // A ring header of one of the active pipes.
            2 => {
                let (_, p, _) = &conns[i % conns.len()];
                p.layout().offset().0 + rng.gen_range(0..2048u64)
            }
            // The control pipe's ring headers and status words.
            _ => rng.gen_range(0..4096u64),
        };
        g.poke_u64(off, rng.gen());
        t.words_scribbled += 1;
        if i % 64 == 0 {
            for (c, _, host) in &mut conns {
                g.kick(c.0);
                let _ = host.write(&[3u8; 1024]);
                let mut b = [0u8; 4096];
                let _ = host.read(&mut b);
            }
            g.kick(0);
        }
    }
    t.scribble_cases += 1;
    // Last, a `tail` 2^50 bytes ahead in the control pipe: whatever the
    // random words did, the monitor must now end the session for cause.
    let control = g.control.layout().offset().0;
    g.poke_u64(control + TO_OWNER_HEADER, 1 << 50);
    g.kick(0);
}

/// One hostile session: every category, then it leaves (mid-request when
/// `exit_mid` is set, after scribbling over its region otherwise).
fn hostile_session(s: &Served, echo: SocketAddr, rng: &mut StdRng, t: &mut Tally, exit_mid: bool) {
    let mut g = RawGuest::attach(&s.path);
    hello(&mut g);
    t.sessions += 1;
    malformed_frames(&mut g, rng, t);
    foreign_ids(&mut g, rng, t);
    flood(&mut g, rng, t);
    bad_records(&mut g, s, echo, rng, t);
    let _stuck = never_reads(&mut g, t);
    if exit_mid {
        // Requests in flight: an accept that nothing will satisfy, a burst
        // of closes, and a frame cut in half. Then the guest vanishes.
        let Message::ListenOk { listener, .. } = g.call(&Message::ListenRequest {
            addr: "127.0.0.1:0".parse().unwrap(),
            backlog: 4,
        }) else {
            panic!("listen refused")
        };
        let id = g.send(&Message::AcceptRequest { listener });
        let _ = id;
        for _ in 0..100 {
            let f = Message::Close {
                handle: Handle::Connection(ConnId(999)),
            }
            .to_frame(RequestId(next_id(&mut g)));
            g.try_send_raw(&f);
        }
        g.try_send_raw(&[0x14, 31, 0, 9, 9, 9, 9, 4, 0]);
        g.kick(0);
        t.exits_mid_request += 1;
    } else {
        let ended_before = s.assert_alive().ended;
        let logged_before = s.logs.count("closing session") + s.logs.count("session ending");
        scribble(&mut g, rng, t);
        // The session ends: for cause (the corrupt control pipe), or as a
        // departure when the scribbles closed its control rings' flags.
        // Either way the reason is logged.
        let deadline = Instant::now() + WAIT;
        while s.assert_alive().ended == ended_before {
            assert!(
                Instant::now() < deadline,
                "a corrupt control pipe ends the session:\n{}",
                s.logs.text()
            );
            g.kick(0);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(s.logs.count("closing session") + s.logs.count("session ending") > logged_before);
    }
    drop(g);
}

fn hostile_secs() -> f64 {
    std::env::var("ARCA_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0)
}

#[test]
fn hostile_guests_do_not_hurt_a_well_behaved_one() {
    let _serial = serial();
    let seed = std::env::var("ARCA_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xA2CA_0001);
    let tcp_echo = util::echo_server();
    let stop_udp = Arc::new(AtomicBool::new(false));
    let (udp_echo, udp_thread) = host_udp_echo(Arc::clone(&stop_udp));
    let s = Served::start("main", config());
    let baseline = open_fds();

    let stop = Arc::new(AtomicBool::new(false));
    let good = good_guest(s.path.clone(), tcp_echo, udp_echo, Arc::clone(&stop), seed);
    s.wait_for("the good guest", |st| st.sessions.len() == 1);

    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tally::default();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(hostile_secs());
    let mut round = 0u64;
    loop {
        let ended_before = s.assert_alive().ended;
        let exit_mid = round % 2 == 1;
        hostile_session(&s, udp_echo, &mut rng, &mut t, exit_mid);
        // The hostile session leaves; the good guest's stays.
        let st = s.wait_for("the hostile session to be torn down", |st| {
            st.sessions.len() == 1 && st.ended > ended_before
        });
        assert_eq!(st.ended, ended_before + 1);
        assert_eq!(st.unreclaimed, 0, "teardown freed every data-pipe block");
        round += 1;
        if round >= 2 && started.elapsed() >= budget {
            break;
        }
    }
    let logs = s.logs.text();
    t.sessions_killed = logs
        .lines()
        .filter(|l| l.contains("closing session"))
        .count() as u64;
    t.pipes_closed_for_cause = logs
        .lines()
        .filter(|l| l.contains("closing connection"))
        .count() as u64;

    stop.store(true, Ordering::Relaxed);
    let report = good.join().expect("the good guest saw only correct data");
    assert!(report.tcp_rounds >= 2 && report.udp_datagrams >= 8);
    s.wait_for("every session gone", |st| st.sessions.is_empty());
    // Every data pipe closed for cause was logged with why.
    assert!(
        s.logs
            .count("closing connection: guest wrote a bad datagram record")
            >= 3
    );
    // A session that exited mid-request is a departure, not a violation.
    assert_eq!(
        s.logs.count("closing session: control pipe: broken pipe"),
        0,
        "a guest that leaves is not a protocol violation:\n{logs}"
    );
    assert_fds_back_to(baseline);
    s.assert_alive();
    stop_udp.store(true, Ordering::Relaxed);
    udp_thread.join().unwrap();
    println!(
        "hostile: seed {seed}, {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        t.summary()
    );
    println!("hostile: {}", report.summary());
}

// ---- the open findings, one test each ---------------------------------------

#[test]
fn pending_accepts_are_bounded_by_the_backlog() {
    let _serial = serial();
    let s = Served::start("backlog", config());
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    let Message::ListenOk { listener, local } = g.call(&Message::ListenRequest {
        addr: "127.0.0.1:0".parse().unwrap(),
        backlog: 4,
    }) else {
        panic!("listen refused")
    };
    let pending: Vec<RequestId> = (0..4)
        .map(|_| g.send(&Message::AcceptRequest { listener }))
        .collect();
    // One more than the backlog is refused at once.
    assert_eq!(
        g.call(&Message::AcceptRequest { listener }),
        Message::AcceptErr {
            code: ErrorCode::QuotaExceeded
        }
    );
    // The pending ones are still served, in order.
    let _host = HostTcp::connect(local).unwrap();
    let f = g.recv().unwrap();
    assert_eq!(f.request_id, pending[0]);
    assert!(matches!(f.message, Message::IncomingConnection { .. }));
    // Room again: a new accept is queued, not refused.
    let again = g.send(&Message::AcceptRequest { listener });
    // Closing the listener answers every pending accept.
    let close = g.send(&Message::Close {
        handle: Handle::Listener(listener),
    });
    let mut aborted = Vec::new();
    loop {
        let f = g.recv().unwrap();
        if f.request_id == close {
            assert_eq!(f.message, Message::CloseOk);
            break;
        }
        assert_eq!(
            f.message,
            Message::AcceptErr {
                code: ErrorCode::ConnectionAborted
            }
        );
        aborted.push(f.request_id);
    }
    assert_eq!(aborted, vec![pending[1], pending[2], pending[3], again]);
}

#[test]
fn guest_leaving_with_unread_replies_is_not_a_violation() {
    let _serial = serial();
    let s = Served::start("unread", config());
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    // The guest stops reading (as its library does when it exits), then its
    // last requests are answered into a ring nobody reads.
    g.control.close_read();
    for _ in 0..20 {
        let f = Message::Close {
            handle: Handle::Connection(ConnId(77)),
        }
        .to_frame(RequestId(next_id(&mut g)));
        g.try_send_raw(&f);
    }
    g.kick(0);
    s.wait_for("the session to end", |st| st.ended == 1);
    drop(g);
    let logs = s.logs.text();
    assert!(
        !logs.contains("closing session"),
        "logged as a violation:\n{logs}"
    );
    assert!(logs.contains("guest stopped reading replies"), "{logs}");
    assert!(logs.contains("GuestGone"), "{logs}");
}

#[test]
fn malformed_frame_warnings_are_rate_limited() {
    let _serial = serial();
    let s = Served::start("ratelimit", config());
    let mut g = RawGuest::attach(&s.path);
    g.hello();
    const N: usize = 500;
    const LISTEN: u8 = MessageType::ListenRequest.to_u8();
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|_| raw_frame(LISTEN, next_id(&mut g), &[4, 0, 0]))
        .collect();
    let mut t = Tally::default();
    let replies = send_and_collect(&mut g, &frames, &mut t);
    assert_eq!(replies.len(), N, "every malformed frame is still answered");
    assert!(replies.values().all(|m| *m
        == Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: LISTEN
        }));
    drop(g);
    s.wait_for("the session to end", |st| st.sessions.is_empty());
    let logged = s.logs.count("malformed frame");
    let limit = arca_monitor::ratelimit::WARNS_PER_WINDOW as usize;
    assert!(
        (1..=limit).contains(&logged),
        "{logged} malformed-frame lines for {N} frames"
    );
    let logs = s.logs.text();
    assert!(
        logs.contains(&format!(
            "{} more malformed-frame warnings suppressed",
            N - logged
        )),
        "the suppressed count is reported:\n{logs}"
    );
}
