//! A hostile guest and a well-behaved one on the SAME in-process monitor.
//!
//! The well-behaved guest (the `arca` library) runs a verified workload — TCP
//! echo with CRC32C checksums and UDP echo — for the whole run, while raw
//! guests (`arca_testkit::raw_guest`) do what no honest guest would:
//!
//! - send malformed control frames: every message type truncated and
//!   oversized, unknown types, random payloads, reply types carrying pipe
//!   offsets and lengths far outside the region, ids they do not own, floods;
//! - write bad datagram records into a UDP socket's ring (oversized length,
//!   bad address family, non-zero reserved bytes): only that socket closes;
//! - publish datagram records and control frames cut short — part of a
//!   header, or a header announcing more than is there — and leave them so,
//!   then close the writing half, close the socket, or exit (issue #12, F1);
//!   write records, frames and TCP bytes one byte per publish;
//! - never read their rings (backpressure on a data pipe and on replies);
//! - scribble random words over their whole region (ring headers, data, the
//!   control pipe, the bitmap) while their connections are active;
//! - exit with requests in flight.
//!
//! Asserted: the monitor thread stays alive and serving; the good guest's
//! bytes are exactly right; every pipe the monitor closes for cause is logged
//! with its reason (logs are captured per monitor thread); after a hostile
//! guest leaves, its session and every descriptor it cost are gone. A
//! [`Watchdog`] samples the good guest's progress every 50 ms through every
//! hostile phase: a stall of more than a second fails the run, naming the
//! phase. While a guest holds a record or frame cut short, new guests still
//! attach, the monitor's thread idles (its CPU time from /proc) and it stops
//! promptly when asked; a test that finds it stuck fails and leaves its thread
//! behind rather than hang.
//!
//! The monitor cannot touch memory outside a region by construction, not by
//! luck: every ring is resolved once through `ShmRegion::from_offset`'s
//! overflow-checked bounds check, every copy is masked into the ring's private
//! capacity, and a peer index is validated before use (DATAPIPE.md §8). These
//! tests drive that code with hostile values; `shm-ring/tests/fuzz_ring.rs`
//! drives it harder in isolation.
//!
//! Default run: a few seconds. Long randomized mode: `scripts/hostile SECONDS`
//! (sets `ARCA_HOSTILE_SECS` for the hostile sessions and for the records cut
//! at random points; `ARCA_HOSTILE_SEED` picks the seed).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as HostTcp, UdpSocket as HostUdp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_monitor::{Config, Monitor, MonitorHandle, MonitorStats, SessionId};
use arca_testkit::monitor_proc::socket_path;
use arca_testkit::pattern::random_bytes;
use arca_testkit::procfs::open_fds;
use arca_testkit::raw_guest::{listen_and_accept, RawGuest, WAIT};
use arca_testkit::servers::echo_server;
use arca_wire::{
    ConnId, DatagramHeader, ErrorCode, FrameHeader, Handle, ListenerId, Message, MessageType,
    PipeInfo, RequestId, SocketOption, DATAGRAM_HEADER_LEN, MAX_FRAME_PAYLOAD,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shm_ring::{BidirectionalPipe, RingError, TO_OWNER_HEADER};

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
    /// The loop thread's kernel thread id (its CPU time is in /proc).
    tid: i32,
}

impl Served {
    fn start(name: &str, config: Config) -> Served {
        let path = socket_path(&format!("hostile-{name}"));
        let mut m = Monitor::new(config).unwrap();
        m.listen_unix(&path).unwrap();
        let handle = m.handle();
        let logs = Logs::default();
        let sink = Arc::clone(&logs.0);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            use tracing_subscriber::util::SubscriberInitExt;
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            // This thread's own subscriber: each monitor's logs are its own.
            let _guard = tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with_ansi(false)
                .with_writer(move || LogWriter(Arc::clone(&sink)))
                .finish()
                .set_default();
            m.run()
        });
        let tid = tid_rx.recv_timeout(WAIT).expect("monitor thread started");
        Served {
            path,
            handle,
            thread: Some(thread),
            logs,
            tid,
        }
    }

    /// The loop thread's CPU time so far (user + system, from
    /// `/proc/self/task/TID/stat`, in clock ticks of 10 ms).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid))
            .expect("the monitor thread's /proc stat");
        // Fields after the command name (which may hold spaces, so split at
        // its closing parenthesis): state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
        // USER_HZ is 100 on every Linux ABI (`getconf CLK_TCK`).
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }

    /// The loop thread's CPU time over `wall` of the caller's sleep.
    fn cpu_over(&self, wall: Duration) -> Duration {
        let before = self.cpu_time();
        std::thread::sleep(wall);
        self.cpu_time().saturating_sub(before)
    }

    /// Asks the loop to stop and waits at most `bound` for its thread. A
    /// thread that does not finish is left running (detached): joining it
    /// could hang the test process. Returns whether it stopped in time.
    fn stop_within(&mut self, bound: Duration) -> bool {
        self.handle.stop();
        let Some(t) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + bound;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                return false; // `t` drops here: the thread is detached
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = t.join();
        if !std::thread::panicking() {
            assert!(r.is_ok(), "monitor thread panicked");
        }
        let _ = std::fs::remove_file(&self.path);
        true
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

    /// Lines logged for a data pipe closed for a bad datagram record.
    fn record_faults(&self) -> usize {
        self.logs
            .text()
            .lines()
            .filter(|l| l.contains("closing connection") && l.contains("bad datagram record"))
            .count()
    }

    /// A new guest attaches and is greeted within `STEP_BOUND`.
    fn assert_new_guest_attaches(&self, during: &str) {
        let started = Instant::now();
        let mut g = RawGuest::attach_within(&self.path, STEP_BOUND)
            .unwrap_or_else(|e| panic!("a new guest cannot attach {during}: {e}"));
        let rest = STEP_BOUND.saturating_sub(started.elapsed());
        let reply = g
            .call_within(&Message::hello(), rest)
            .unwrap_or_else(|e| panic!("a new guest is not greeted {during}: {e}"));
        assert!(
            matches!(reply, Message::HelloOk { .. }),
            "a new guest {during}: {reply:?}"
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let stopped = self.stop_within(STOP_BOUND);
        if !std::thread::panicking() {
            assert!(
                stopped,
                "the monitor did not stop within {STOP_BOUND:?} (its thread is left running)"
            );
        }
    }
}

/// How long a stopped monitor may take to finish its thread.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// How long a new guest may take to attach and be greeted, and a step of a
/// hostile case that must not wait on the hostile guest (a reply, a close).
const STEP_BOUND: Duration = Duration::from_secs(2);

fn config() -> Config {
    Config {
        region_size: 16 << 20,
        data_ring: 64 << 10,
        udp_ring: 128 << 10,
        max_conns: 256,
        ..Config::default()
    }
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

/// The well-behaved guest: its workload on a thread of its own, and a
/// progress count (chunks and datagrams echoed) for the [`Watchdog`].
struct GoodGuest {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    thread: Option<JoinHandle<GoodReport>>,
}

impl GoodGuest {
    /// Attaches to the monitor at `path` and echoes through `tcp` and `udp`
    /// until [`finish`](Self::finish).
    fn start(path: PathBuf, tcp: SocketAddr, udp: SocketAddr, seed: u64) -> GoodGuest {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let thread = good_guest(
            path,
            tcp,
            udp,
            Arc::clone(&stop),
            Arc::clone(&progress),
            seed,
        );
        GoodGuest {
            stop,
            progress,
            thread: Some(thread),
        }
    }

    /// Waits until it has echoed something.
    fn wait_moving(&self) {
        let deadline = Instant::now() + WAIT;
        while self.progress.load(Ordering::Relaxed) == 0 {
            let finished = self.thread.as_ref().is_none_or(JoinHandle::is_finished);
            assert!(!finished, "the good guest ended before echoing anything");
            assert!(Instant::now() < deadline, "the good guest never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops it and returns its report. Panics if it saw a wrong byte, or
    /// if it does not finish within its own bounds (it is left running then:
    /// joining a guest stuck on a stuck monitor could hang the test).
    fn finish(mut self) -> GoodReport {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("finished once");
        // A round is at most 256 KiB echoed and 4 datagrams, each step
        // bounded by WAIT: 3 × WAIT covers a slow round.
        let deadline = Instant::now() + 3 * WAIT;
        while !t.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the good guest did not finish its round (left running)"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().expect("the good guest saw only correct data")
    }
}

impl Drop for GoodGuest {
    fn drop(&mut self) {
        // Not joined: `finish` is the checked path; here the test is failing.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// TCP echo with checksums and UDP echo until `stop`; panics on any wrong
/// byte (the test then fails when it joins). Counts every echoed chunk and
/// datagram in `progress`.
fn good_guest(
    path: PathBuf,
    tcp: SocketAddr,
    udp: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    seed: u64,
) -> JoinHandle<GoodReport> {
    std::thread::spawn(move || {
        let session = arca::ArcaSession::attach(&path).expect("good guest attaches");
        let sock = session.bind_udp("127.0.0.1:0").expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
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
            let data = random_bytes(seed ^ round, total);
            let (mut sent_crc, mut got_crc) = (0u32, 0u32);
            let mut back = vec![0u8; 16 << 10];
            for chunk in data.chunks(16 << 10) {
                s.write_all(chunk).expect("good guest writes");
                sent_crc = crc32c::crc32c_append(sent_crc, chunk);
                let got = &mut back[..chunk.len()];
                s.read_exact(got).expect("good guest reads its echo");
                got_crc = crc32c::crc32c_append(got_crc, got);
                assert_eq!(got, chunk, "echoed bytes differ in round {round}");
                progress.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(sent_crc, got_crc);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("clean EOF");
            assert!(rest.is_empty());
            report.tcp_rounds += 1;
            report.tcp_bytes += total as u64;
            // UDP: a few datagrams, each echoed whole (retried if lost; a
            // try waits 250 ms, well inside the watchdog's stall limit).
            for i in 0..4u64 {
                let len = rng.gen_range(1..=1400);
                let dgram = random_bytes(seed ^ (round << 8) ^ i, len);
                let mut ok = false;
                for _try in 0..20 {
                    sock.send_to(&dgram, udp).expect("udp send");
                    let mut buf = [0u8; 2048];
                    let deadline = Instant::now() + Duration::from_millis(250);
                    while Instant::now() < deadline {
                        // A timeout just tries again; an earlier try's
                        // echo arriving late is the only other thing that
                        // may come.
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            assert_eq!(from, udp);
                            if buf[..n] == dgram[..] {
                                ok = true;
                                break;
                            }
                        }
                    }
                    if ok {
                        break;
                    }
                }
                assert!(ok, "udp echo of round {round} never came back");
                report.udp_datagrams += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        report
    })
}

// ---- the throughput watchdog ------------------------------------------------

/// Longest a well-behaved guest may go without progress while a hostile one
/// runs beside it.
const STALL_LIMIT: Duration = Duration::from_secs(1);
/// How often the watchdog samples the progress count.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Samples a well-behaved guest's progress every [`WATCH_EVERY`] on a thread
/// of its own. A stall of more than [`STALL_LIMIT`] fails the run with the
/// phase it began in (named by [`phase`](Self::phase)): at the next
/// [`check`](Self::check), at [`finish`](Self::finish), or on drop.
struct Watchdog {
    phase: Arc<Mutex<String>>,
    stalls: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Quietest>>,
}

/// The longest a watched guest went without progress, and the phase that
/// began in.
#[derive(Default)]
struct Quietest {
    idle: Duration,
    phase: String,
}

impl std::fmt::Display for Quietest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2?} (from phase \"{}\")", self.idle, self.phase)
    }
}

impl Watchdog {
    /// Starts watching `good` (which must already be moving).
    fn start(good: &GoodGuest) -> Watchdog {
        let phase = Arc::new(Mutex::new(String::from("start")));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::clone(&good.progress);
        let thread = {
            let (phase, stalls, stop) =
                (Arc::clone(&phase), Arc::clone(&stalls), Arc::clone(&stop));
            std::thread::spawn(move || {
                let current = || phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // Bounded like every loop here: longer than any run.
                let end = Instant::now() + Duration::from_secs_f64(hostile_secs() * 4.0 + 900.0);
                let mut last = progress.load(Ordering::Relaxed);
                let mut since = Instant::now();
                let mut since_phase = current();
                let mut longest = Quietest::default();
                let mut reported = false;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    std::thread::sleep(WATCH_EVERY);
                    let now = Instant::now();
                    let seen = progress.load(Ordering::Relaxed);
                    let idle = now - since;
                    if seen != last {
                        if idle > STALL_LIMIT {
                            stalls.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                                "the well-behaved guest stalled {idle:.2?} from phase \"{since_phase}\" to \"{}\"",
                                current()
                            ));
                        }
                        if idle > longest.idle {
                            longest = Quietest {
                                idle,
                                phase: since_phase.clone(),
                            };
                        }
                        (last, since, since_phase, reported) = (seen, now, current(), false);
                    } else if idle > STALL_LIMIT && !reported {
                        reported = true;
                        eprintln!(
                            "hostile: watchdog: no progress for {idle:.2?} since phase \"{since_phase}\""
                        );
                    }
                }
                let idle = since.elapsed();
                if idle > STALL_LIMIT {
                    stalls.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                        "the well-behaved guest is stalled: no progress for {idle:.2?} since phase \"{since_phase}\""
                    ));
                }
                if idle > longest.idle {
                    longest = Quietest {
                        idle,
                        phase: since_phase,
                    };
                }
                longest
            })
        };
        Watchdog {
            phase,
            stalls,
            stop,
            thread: Some(thread),
        }
    }

    /// Names the hostile phase that runs from now on.
    fn phase(&self, name: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = name.into();
    }

    /// Fails the run if a stall has ended so far (an ongoing one is caught
    /// by `finish`, or by whatever the stalled monitor makes time out).
    fn check(&self) {
        let stalls = self.stalls.lock().unwrap_or_else(|e| e.into_inner());
        assert!(stalls.is_empty(), "{}", stalls.join("\n"));
    }

    /// Stops watching; fails the run on any stall. Returns the longest time
    /// the guest went without progress.
    fn finish(mut self) -> Quietest {
        self.stop_and_check()
    }

    fn stop_and_check(&mut self) -> Quietest {
        self.stop.store(true, Ordering::Relaxed);
        // The sampler only sleeps between loads: it ends within a sample.
        let longest = self
            .thread
            .take()
            .map_or_else(Quietest::default, |t| t.join().expect("watchdog thread"));
        self.check();
        longest
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.stop_and_check();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---- what the hostile guests did --------------------------------------------

#[derive(Default)]
struct Tally {
    malformed_cases: u64,
    foreign_id_cases: u64,
    flood_requests: u64,
    frames_sent: u64,
    bad_record_cases: u64,
    cut_stream_cases: u64,
    cut_short_faults: u64,
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
             foreign ids {}, flood requests {}, bad datagram records {}, record streams cut \
             short {} ({} closed for cause), never-read pipes {}, scribble rounds {}, exits \
             mid-request {}; frames sent {}, words scribbled {}",
            self.sessions,
            self.sessions_killed,
            self.pipes_closed_for_cause,
            self.malformed_cases,
            self.foreign_id_cases,
            self.flood_requests,
            self.bad_record_cases,
            self.cut_stream_cases,
            self.cut_short_faults,
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
    let (socket, p, _) = udp_bind_local(g);
    (socket, p)
}

/// As [`udp_bind`], with the socket's bound address.
fn udp_bind_local(g: &mut RawGuest) -> (ConnId, BidirectionalPipe, SocketAddr) {
    let Message::UdpBindOk {
        socket,
        pipe,
        local,
    } = g.call(&Message::UdpBind {
        addr: "127.0.0.1:0".parse().unwrap(),
        flags: 0,
    })
    else {
        panic!("udp bind refused")
    };
    let p = g.pipe(socket, pipe);
    (socket, p, local)
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
    honest_echo(g, good_id, &mut good, echo, rng);
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

/// One record through an honest UDP socket `id` to the echo server at
/// `echo`, and its echo back, whole.
fn honest_echo(
    g: &RawGuest,
    id: ConnId,
    pipe: &mut BidirectionalPipe,
    echo: SocketAddr,
    rng: &mut StdRng,
) {
    let payload = random_bytes(rng.gen(), 100);
    let h = DatagramHeader::new(payload.len(), echo).unwrap().to_bytes();
    pipe.tx().write_record(&[&h[..], &payload[..]]).unwrap();
    g.kick(id.0);
    let mut back = vec![0u8; DATAGRAM_HEADER_LEN + payload.len()];
    let deadline = Instant::now() + WAIT;
    let mut have = 0;
    while have < back.len() {
        assert!(Instant::now() < deadline, "honest udp socket stopped");
        match pipe.read(&mut back[have..]) {
            Ok(n) => have += n,
            Err(RingError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("honest udp socket: {e}"),
        }
    }
    assert_eq!(&back[DATAGRAM_HEADER_LEN..], &payload[..]);
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

// ---- datagram records cut short ---------------------------------------------

/// A host UDP socket that cut-short record streams are sent to; checks what
/// arrives.
struct HostSink {
    sock: HostUdp,
    addr: SocketAddr,
}

impl HostSink {
    fn bind() -> HostSink {
        let sock = HostUdp::bind("127.0.0.1:0").unwrap();
        // Room for every record of a stream even if nobody reads for a while.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        HostSink { sock, addr }
    }

    /// Receives exactly `want` from `from`, in order, each whole, within
    /// `STEP_BOUND` (records the monitor has had a chance to send).
    fn expect(&self, from: SocketAddr, want: &[Vec<u8>], what: &str) {
        let deadline = Instant::now() + STEP_BOUND;
        let mut buf = vec![0u8; 65_536];
        for (i, payload) in want.iter().enumerate() {
            let (n, src) = loop {
                match self.sock.recv_from(&mut buf) {
                    Ok(got) => break got,
                    Err(_) => assert!(
                        Instant::now() < deadline,
                        "{what}: record {i} of {} never reached the host",
                        want.len()
                    ),
                }
            };
            assert_eq!(src, from, "{what}: a datagram from elsewhere");
            assert!(
                buf[..n] == payload[..],
                "{what}: record {i} arrived as {n} bytes, sent {} (or differs)",
                payload.len()
            );
        }
    }
}

/// A raw guest attached and greeted, and its session's id (the newest: the
/// tests attach one guest at a time).
fn attach_raw(s: &Served) -> (RawGuest, SessionId) {
    let mut g = RawGuest::attach(&s.path);
    hello(&mut g);
    let sid = s
        .assert_alive()
        .sessions
        .iter()
        .map(|(id, _)| *id)
        .max()
        .expect("a session");
    (g, sid)
}

/// How a stream of records cut short ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The guest publishes the rest of the stream.
    Complete,
    /// The guest closes its writing half.
    CloseWriter,
    /// The guest closes the socket with a `Close` request.
    CloseRequest,
    /// The guest exits.
    Exit,
}

/// A stream of valid datagram records (DATAPIPE.md §10) in a raw guest's
/// UDP socket, published up to `published` bytes.
struct CutStream {
    id: ConnId,
    pipe: BidirectionalPipe,
    local: SocketAddr,
    payloads: Vec<Vec<u8>>,
    bytes: Vec<u8>,
    /// `ends[i]`: where record `i` ends in `bytes`.
    ends: Vec<usize>,
    published: usize,
}

impl CutStream {
    /// Binds a socket and lays out records with `sizes` payload bytes each,
    /// sent to `to`; publishes nothing yet.
    fn open(g: &mut RawGuest, to: SocketAddr, sizes: &[usize], seed: u64) -> CutStream {
        let (id, pipe, local) = udp_bind_local(g);
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let mut payloads = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let payload = random_bytes(seed ^ ((i as u64) << 32), len);
            bytes.extend_from_slice(&DatagramHeader::new(len, to).unwrap().to_bytes());
            bytes.extend_from_slice(&payload);
            ends.push(bytes.len());
            payloads.push(payload);
        }
        CutStream {
            id,
            pipe,
            local,
            payloads,
            bytes,
            ends,
            published: 0,
        }
    }

    /// Publishes the stream up to byte `upto` (one publish when it fits)
    /// and rings the monitor.
    fn publish(&mut self, g: &RawGuest, upto: usize) {
        let deadline = Instant::now() + WAIT;
        while self.published < upto {
            match self.pipe.write(&self.bytes[self.published..upto]) {
                Ok(n) => self.published += n,
                Err(RingError::WouldBlock) => {
                    assert!(
                        Instant::now() < deadline,
                        "the monitor stopped reading records"
                    );
                    g.kick(self.id.0);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("record ring: {e}"),
            }
        }
        g.kick(self.id.0);
    }

    /// Records wholly published.
    fn whole(&self) -> usize {
        self.ends.iter().filter(|&&e| e <= self.published).count()
    }

    /// The published bytes end inside a record.
    fn is_cut_short(&self) -> bool {
        self.published != 0 && !self.ends.contains(&self.published)
    }
}

/// A random stream of 1–6 records, cut at a random byte: inside a header,
/// inside a payload, or anywhere (a record boundary included).
fn random_cut_stream(g: &mut RawGuest, to: SocketAddr, rng: &mut StdRng) -> (CutStream, usize) {
    let n = rng.gen_range(1..=6);
    let sizes: Vec<usize> = (0..n)
        .map(|_| match rng.gen_range(0..8) {
            0 => 0,
            1 => rng.gen_range(2048..=16_384),
            _ => rng.gen_range(1..=1400),
        })
        .collect();
    let c = CutStream::open(g, to, &sizes, rng.gen());
    let i = rng.gen_range(0..n);
    let start = if i == 0 { 0 } else { c.ends[i - 1] };
    let cut = match rng.gen_range(0..3) {
        0 => start + rng.gen_range(1..DATAGRAM_HEADER_LEN),
        1 if sizes[i] > 0 => start + DATAGRAM_HEADER_LEN + rng.gen_range(0..sizes[i]),
        _ => rng.gen_range(0..=c.bytes.len()),
    };
    (c, cut)
}

/// How long a cut-short stream is held open before it ends.
const HOLD: Duration = Duration::from_millis(250);

/// The records published whole reach the host, the socket stays open (a
/// record cut short costs only its own socket, DATAPIPE.md §10) for `hold`.
fn hold_cut_stream(s: &Served, sink: &HostSink, c: &CutStream, hold: Duration, what: &str) {
    let until = Instant::now() + hold;
    sink.expect(c.local, &c.payloads[..c.whole()], what);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    s.assert_alive();
    assert!(
        !c.pipe.is_peer_write_closed(),
        "{what}: the monitor closed a socket whose guest is still writing"
    );
}

/// Ends `c` (an `Ending` other than `Exit`) and checks the outcome: what
/// reaches the host, whether the socket closed for cause (a logged fault and
/// `ConnectionAborted` in its status word) or cleanly, and that the session
/// still serves with the socket gone. `sid` is `g`'s session, which has
/// logged few enough faults that the rate limit (ten per window) lets this
/// one through.
fn end_cut_stream(
    g: &mut RawGuest,
    sid: SessionId,
    s: &Served,
    sink: &HostSink,
    mut c: CutStream,
    ending: Ending,
    what: &str,
) -> bool {
    let faults_before = s.record_faults();
    let conns = |st: &MonitorStats| {
        st.sessions
            .iter()
            .find(|(id, _)| *id == sid)
            .map(|(_, ss)| ss.conns)
    };
    let conns_before = conns(&s.assert_alive()).expect("the guest's session");
    let mut faulted = false;
    match ending {
        Ending::Complete => {
            let end = c.bytes.len();
            let whole_before = c.whole();
            c.publish(g, end);
            sink.expect(c.local, &c.payloads[whole_before..], what);
            let close = g
                .call_within(
                    &Message::Close {
                        handle: Handle::Udp(c.id),
                    },
                    STEP_BOUND,
                )
                .unwrap_or_else(|e| panic!("{what}: Close: {e}"));
            assert_eq!(close, Message::CloseOk, "{what}");
        }
        Ending::CloseWriter => {
            c.pipe.close_write();
            g.kick(c.id.0);
            // The monitor ends the socket either way: for cause when the
            // stream ends inside a record, cleanly at a record boundary.
            let deadline = Instant::now() + STEP_BOUND;
            while !c.pipe.is_peer_write_closed() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: the monitor did not end the socket after its writer closed"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let status = c.pipe.status().peer();
            let aborted = u32::from(ErrorCode::ConnectionAborted.to_u16());
            faulted = c.is_cut_short();
            if faulted {
                assert_eq!(
                    status, aborted,
                    "{what}: a stream that ends inside a record is a fault"
                );
                let deadline = Instant::now() + STEP_BOUND;
                while s.record_faults() <= faults_before {
                    assert!(
                        Instant::now() < deadline,
                        "{what}: the fault is logged with its reason:\n{}",
                        s.logs.text()
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            } else {
                assert_eq!(status, 0, "{what}: a clean end is no fault");
            }
        }
        Ending::CloseRequest => {
            let close = g
                .call_within(
                    &Message::Close {
                        handle: Handle::Udp(c.id),
                    },
                    STEP_BOUND,
                )
                .unwrap_or_else(|e| panic!("{what}: Close: {e}"));
            assert_eq!(close, Message::CloseOk, "{what}");
        }
        Ending::Exit => unreachable!("the caller drops the guest"),
    }
    drop(c);
    if !faulted {
        assert_eq!(s.record_faults(), faults_before, "{what}: no fault logged");
    }
    // The session still serves, and the socket's pipe is freed.
    let reply = g
        .call_within(
            &Message::Close {
                handle: Handle::Connection(ConnId(999_999)),
            },
            STEP_BOUND,
        )
        .unwrap_or_else(|e| panic!("{what}: the session stopped answering: {e}"));
    assert_eq!(
        reply,
        Message::CloseErr {
            code: ErrorCode::NotFound
        },
        "{what}"
    );
    s.wait_for("the cut stream's socket to be freed", |st| {
        conns(st) == Some(conns_before - 1)
    });
    faulted
}

/// One random cut stream in `g`'s session `sid`, held, then ended by
/// `ending` (not `Exit`). With `attach_check`, a new guest attaches while it
/// waits. The caller keeps the session's faults under the log's rate limit.
#[allow(clippy::too_many_arguments)]
fn cut_stream_case(
    g: &mut RawGuest,
    sid: SessionId,
    s: &Served,
    sink: &HostSink,
    rng: &mut StdRng,
    ending: Ending,
    attach_check: bool,
    t: &mut Tally,
) -> bool {
    let (mut c, cut) = random_cut_stream(g, sink.addr, rng);
    let what = format!(
        "{} records ({} bytes) cut at byte {cut}, then {ending:?}",
        c.ends.len(),
        c.bytes.len()
    );
    c.publish(g, cut);
    if attach_check {
        s.assert_new_guest_attaches(&format!("while {what}"));
    }
    let hold = Duration::from_millis(rng.gen_range(20..=200));
    hold_cut_stream(s, sink, &c, hold, &what);
    let faulted = end_cut_stream(g, sid, s, sink, c, ending, &what);
    t.cut_stream_cases += 1;
    t.cut_short_faults += u64::from(faulted);
    faulted
}

/// One hostile session: every category, then it leaves (mid-request when
/// `exit_mid` is set, after scribbling over its region otherwise). Each
/// category is a phase of the watchdog's.
#[allow(clippy::too_many_arguments)]
fn hostile_session(
    s: &Served,
    echo: SocketAddr,
    sink: &HostSink,
    rng: &mut StdRng,
    t: &mut Tally,
    wd: &Watchdog,
    round: u64,
    exit_mid: bool,
) {
    let phase = |name: &str| wd.phase(format!("session {round}: {name}"));
    phase("attach");
    let (mut g, sid) = attach_raw(s);
    t.sessions += 1;
    phase("malformed frames");
    malformed_frames(&mut g, rng, t);
    phase("foreign ids");
    foreign_ids(&mut g, rng, t);
    phase("request flood");
    flood(&mut g, rng, t);
    phase("bad datagram records");
    bad_records(&mut g, s, echo, rng, t);
    phase("cut-short datagram records");
    for _ in 0..3 {
        let ending = match rng.gen_range(0..3) {
            0 => Ending::Complete,
            1 => Ending::CloseWriter,
            _ => Ending::CloseRequest,
        };
        // At most three faults here and bad_records' three: under the
        // log's rate limit of ten per session and window.
        cut_stream_case(&mut g, sid, s, sink, rng, ending, false, t);
    }
    phase("never-read pipe");
    let _stuck = never_reads(&mut g, t);
    if exit_mid {
        phase("exit mid-request");
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
        phase("scribble");
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
    phase("teardown");
    drop(g);
    wd.check();
}

fn hostile_secs() -> f64 {
    std::env::var("ARCA_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0)
}

#[test]
fn hostile_guests_do_not_hurt_a_well_behaved_one() {
    hostile_run("main", config());
}

/// With two workers the good guest is served by worker 0 and every hostile
/// guest by worker 1 (the least loaded): a hostile guest keeps no worker from
/// serving another's guests, and the suite holds with the sessions spread.
#[test]
fn hostile_guests_on_another_worker_do_not_hurt_a_well_behaved_one() {
    let logs = hostile_run(
        "workers",
        Config {
            workers: 2,
            ..config()
        },
    );
    let attached = |worker: &str| {
        logs.lines()
            .filter(|l| l.contains("guest attached") && l.contains(worker))
            .count()
    };
    assert_eq!(attached("worker=0"), 1, "the good guest alone on worker 0");
    assert!(
        attached("worker=1") >= 2,
        "hostile guests on worker 1:\n{logs}"
    );
}

/// The hostile rounds against a monitor with `config` beside a good guest;
/// returns the monitor's logs.
fn hostile_run(name: &str, config: Config) -> String {
    let _serial = serial();
    let seed = hostile_seed();
    let tcp_echo = echo_server();
    let stop_udp = Arc::new(AtomicBool::new(false));
    let (udp_echo, udp_thread) = host_udp_echo(Arc::clone(&stop_udp));
    let sink = HostSink::bind();
    let s = Served::start(name, config);
    let baseline = open_fds();

    let good = GoodGuest::start(s.path.clone(), tcp_echo, udp_echo, seed);
    s.wait_for("the good guest", |st| st.sessions.len() == 1);
    good.wait_moving();
    let wd = Watchdog::start(&good);

    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tally::default();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(hostile_secs());
    let mut round = 0u64;
    loop {
        let ended_before = s.assert_alive().ended;
        let exit_mid = round % 2 == 1;
        hostile_session(&s, udp_echo, &sink, &mut rng, &mut t, &wd, round, exit_mid);
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
    let longest_stall = wd.finish();
    let logs = s.logs.text();
    t.sessions_killed = logs
        .lines()
        .filter(|l| l.contains("closing session"))
        .count() as u64;
    t.pipes_closed_for_cause = logs
        .lines()
        .filter(|l| l.contains("closing connection"))
        .count() as u64;

    let report = good.finish();
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
    println!(
        "hostile: {}; longest without progress {longest_stall}",
        report.summary()
    );
    logs
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

// ---- guest-controlled partial state (issue #12, F1) --------------------------
//
// A guest controls what sits half-written in its rings. Whatever it leaves
// there — a datagram record or a control frame cut short, or bytes dribbled
// one at a time — the monitor must go back to its other work: everyone
// else's bytes keep moving, new guests attach, the loop stops when asked,
// and it does not spin while it waits.

/// Most CPU the monitor's thread may use in one second of waiting on a
/// cut-short record or frame (it should use next to none; the bound leaves
/// room for a noisy machine and 10 ms accounting ticks).
const IDLE_CPU: Duration = Duration::from_millis(300);

/// How long the monitor may take to stop while a guest holds a record or a
/// frame cut short.
const PROMPT_STOP: Duration = Duration::from_secs(2);

/// The F1 records: (a) part of a header, (b) a header announcing more
/// payload bytes than are published.
#[derive(Debug, Clone, Copy)]
enum RecordCut {
    Header(usize),
    Payload { announced: usize, present: usize },
}

impl RecordCut {
    fn name(self) -> String {
        match self {
            RecordCut::Header(n) => {
                format!("{n} of a record header's {DATAGRAM_HEADER_LEN} bytes")
            }
            RecordCut::Payload { announced, present } => {
                format!("a header announcing {announced} payload bytes, {present} present")
            }
        }
    }

    /// A stream holding this cut record (after one whole record when
    /// `lead`), and the byte to publish it up to.
    fn open(self, g: &mut RawGuest, to: SocketAddr, lead: bool, seed: u64) -> (CutStream, usize) {
        let announced = match self {
            RecordCut::Header(_) => 200,
            RecordCut::Payload { announced, .. } => announced,
        };
        let sizes: &[usize] = if lead {
            &[100, announced]
        } else {
            &[announced]
        };
        let c = CutStream::open(g, to, sizes, seed);
        let start = if lead { c.ends[0] } else { 0 };
        let at = match self {
            RecordCut::Header(n) => start + n,
            RecordCut::Payload { present, .. } => start + DATAGRAM_HEADER_LEN + present,
        };
        (c, at)
    }
}

/// The guest holding `c` exits with it cut short: a departure, not a
/// violation and not a fault. (Its rings are left as they are, as a process
/// that dies leaves them: the pipe is dropped only after the session ends.)
fn exit_with_cut_stream(s: &Served, g: RawGuest, sid: SessionId, c: CutStream, what: &str) {
    let violations = s.logs.count("closing session");
    let faults = s.record_faults();
    drop(g);
    s.wait_for("the departed guest's session to end", |st| {
        st.sessions.iter().all(|(id, _)| *id != sid)
    });
    drop(c);
    assert_eq!(
        s.logs.count("closing session"),
        violations,
        "{what}: a guest that exits is not a violation:\n{}",
        s.logs.text()
    );
    assert_eq!(s.record_faults(), faults, "{what}: nor a fault");
    assert_eq!(
        s.assert_alive().unreclaimed,
        0,
        "{what}: its blocks are freed"
    );
}

fn hostile_seed() -> u64 {
    std::env::var("ARCA_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xA2CA_0001)
}

#[test]
fn cut_short_datagram_records_cost_only_their_socket() {
    let _serial = serial();
    let mut rng = StdRng::seed_from_u64(0xF1);
    let tcp_echo = echo_server();
    let stop_udp = Arc::new(AtomicBool::new(false));
    let (udp_echo, udp_thread) = host_udp_echo(Arc::clone(&stop_udp));
    let sink = HostSink::bind();
    let mut s = Served::start("f1-records", config());
    let (mut g, sid) = attach_raw(&s);
    let (honest_id, mut honest) = udp_bind(&mut g);

    // Alone with the monitor: while a record waits cut short, its loop idles.
    for cut in [
        RecordCut::Header(2),
        RecordCut::Payload {
            announced: 200,
            present: 10,
        },
    ] {
        let (mut c, at) = cut.open(&mut g, sink.addr, false, rng.gen());
        c.publish(&g, at);
        std::thread::sleep(Duration::from_millis(100));
        let cpu = s.cpu_over(Duration::from_secs(1));
        assert!(
            cpu < IDLE_CPU,
            "the monitor's thread used {cpu:?} of CPU in 1 s waiting on {}: it spins",
            cut.name()
        );
        end_cut_stream(&mut g, sid, &s, &sink, c, Ending::CloseRequest, &cut.name());
    }

    // Beside a well-behaved guest: every cut, held open, then each ending.
    let good = GoodGuest::start(s.path.clone(), tcp_echo, udp_echo, 0xF1);
    good.wait_moving();
    let wd = Watchdog::start(&good);
    let cuts = [
        RecordCut::Header(1),
        RecordCut::Header(2),
        RecordCut::Header(rng.gen_range(3..DATAGRAM_HEADER_LEN)),
        RecordCut::Payload {
            announced: 200,
            present: 10,
        },
        RecordCut::Payload {
            announced: 200,
            present: 0,
        },
    ];
    let mut cases = 0;
    for (i, cut) in cuts.into_iter().enumerate() {
        for ending in [Ending::CloseWriter, Ending::CloseRequest, Ending::Exit] {
            let lead = i % 2 == 1;
            let what = format!(
                "{}{}, held open, then {ending:?}",
                if lead { "a whole record and " } else { "" },
                cut.name()
            );
            wd.phase(what.clone());
            if ending == Ending::Exit {
                let (mut g2, sid2) = attach_raw(&s);
                let (mut c, at) = cut.open(&mut g2, sink.addr, lead, rng.gen());
                c.publish(&g2, at);
                s.assert_new_guest_attaches(&format!("while {what}"));
                hold_cut_stream(&s, &sink, &c, HOLD, &what);
                exit_with_cut_stream(&s, g2, sid2, c, &what);
            } else {
                let (mut c, at) = cut.open(&mut g, sink.addr, lead, rng.gen());
                c.publish(&g, at);
                s.assert_new_guest_attaches(&format!("while {what}"));
                hold_cut_stream(&s, &sink, &c, HOLD, &what);
                // Five faults in this session in all: under the log's limit.
                let faulted = end_cut_stream(&mut g, sid, &s, &sink, c, ending, &what);
                assert_eq!(faulted, ending == Ending::CloseWriter, "{what}");
            }
            // The session's honest socket still echoes.
            honest_echo(&g, honest_id, &mut honest, udp_echo, &mut rng);
            wd.check();
            cases += 1;
        }
    }
    wd.phase("the good guest finishing");
    let longest = wd.finish();
    let report = good.finish();
    // Waiting on a record cut short never made the monitor serve that
    // socket for nothing (DATAPIPE.md §9: it is armed for the whole record).
    let st = s.assert_alive();
    let (_, held) = st
        .sessions
        .iter()
        .find(|(id, _)| *id == sid)
        .expect("the raw guest's session");
    assert_eq!(held.futile_passes, 0, "{held:?}");

    // Asked to stop while a record waits cut short, the monitor stops.
    let (mut c, at) = RecordCut::Header(2).open(&mut g, sink.addr, false, rng.gen());
    c.publish(&g, at);
    std::thread::sleep(Duration::from_millis(50));
    let asked = Instant::now();
    assert!(
        s.stop_within(PROMPT_STOP),
        "the monitor did not stop within {PROMPT_STOP:?} while a record waited cut short \
         (its thread is left running)"
    );
    let stopped_in = asked.elapsed();
    drop((c, honest, g));
    stop_udp.store(true, Ordering::Relaxed);
    udp_thread.join().unwrap();
    println!(
        "hostile: {cases} cut-short record cases; stopped in {stopped_in:.2?}; {}; \
         longest without progress {longest}",
        report.summary()
    );
}

#[test]
fn records_cut_at_random_points_cost_only_their_socket() {
    let _serial = serial();
    let seed = hostile_seed();
    // A few seconds by default; the long mode's budget under scripts/hostile.
    let budget = Duration::from_secs_f64(
        std::env::var("ARCA_HOSTILE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    );
    let tcp_echo = echo_server();
    let stop_udp = Arc::new(AtomicBool::new(false));
    let (udp_echo, udp_thread) = host_udp_echo(Arc::clone(&stop_udp));
    let sink = HostSink::bind();
    let s = Served::start("cut-random", config());
    let good = GoodGuest::start(s.path.clone(), tcp_echo, udp_echo, seed);
    good.wait_moving();
    let wd = Watchdog::start(&good);

    let mut rng = StdRng::seed_from_u64(seed ^ 0xC07);
    let mut t = Tally::default();
    let (mut g, mut sid) = attach_raw(&s);
    let mut session_faults = 0;
    let mut exits = 0u64;
    let started = Instant::now();
    let mut i = 0u64;
    while i < 8 || started.elapsed() < budget {
        let ending = match rng.gen_range(0..4) {
            0 => Ending::Complete,
            1 => Ending::CloseWriter,
            2 => Ending::CloseRequest,
            _ => Ending::Exit,
        };
        wd.phase(format!("cut stream {i}, then {ending:?}"));
        if ending == Ending::Exit || session_faults >= 8 {
            // A fresh session: the old one leaves (with a stream cut short
            // when the ending is an exit), and the log's rate limit of ten
            // faults per session never hides one.
            let (fresh, fresh_sid) = attach_raw(&s);
            let old = std::mem::replace(&mut g, fresh);
            let old_sid = std::mem::replace(&mut sid, fresh_sid);
            session_faults = 0;
            if ending == Ending::Exit {
                let mut old = old;
                let (mut c, cut) = random_cut_stream(&mut old, sink.addr, &mut rng);
                let what = format!(
                    "{} records cut at byte {cut}, then the guest exits",
                    c.ends.len()
                );
                c.publish(&old, cut);
                hold_cut_stream(&s, &sink, &c, HOLD, &what);
                exit_with_cut_stream(&s, old, old_sid, c, &what);
                exits += 1;
                t.cut_stream_cases += 1;
                i += 1;
                wd.check();
                continue;
            }
            drop(old);
        }
        let faulted = cut_stream_case(&mut g, sid, &s, &sink, &mut rng, ending, i % 4 == 0, &mut t);
        session_faults += u32::from(faulted);
        wd.check();
        i += 1;
    }
    wd.phase("the good guest finishing");
    let longest = wd.finish();
    let report = good.finish();
    drop(g);
    s.wait_for("every session gone", |st| st.sessions.is_empty());
    assert_eq!(s.assert_alive().unreclaimed, 0);
    stop_udp.store(true, Ordering::Relaxed);
    udp_thread.join().unwrap();
    println!(
        "hostile: cut streams, seed {seed}, {:.1} s: {} streams cut at random ({} closed for \
         cause, {exits} guests exited holding one); {}; longest without progress {longest}",
        started.elapsed().as_secs_f64(),
        t.cut_stream_cases,
        t.cut_short_faults,
        report.summary()
    );
}

/// Control frames cut short for F1's control-pipe analogue.
#[derive(Debug, Clone, Copy)]
enum FrameCut {
    /// Part of a frame header.
    Header(usize),
    /// A whole header and part of its payload.
    Payload(usize),
    /// An unknown type announcing the largest payload, part of it present.
    Unknown(usize),
}

impl FrameCut {
    /// The whole frame and how much of it to send.
    fn frame(self, id: u32) -> (Vec<u8>, usize) {
        let close = Message::Close {
            handle: Handle::Connection(ConnId(999_999)),
        }
        .to_frame(RequestId(id));
        match self {
            FrameCut::Header(n) => (close, n),
            FrameCut::Payload(n) => (close, arca_wire::HEADER_LEN + n),
            FrameCut::Unknown(n) => {
                let ty = (0x80..=u8::MAX)
                    .find(|t| MessageType::from_u8(*t).is_none())
                    .expect("an unknown type");
                let f = raw_frame(ty, id, &random_bytes(u64::from(id), MAX_FRAME_PAYLOAD));
                (f, arca_wire::HEADER_LEN + n)
            }
        }
    }

    /// The reply the whole frame gets.
    fn answered(self, reply: &Message) -> bool {
        match self {
            FrameCut::Header(_) | FrameCut::Payload(_) => {
                *reply
                    == Message::CloseErr {
                        code: ErrorCode::NotFound,
                    }
            }
            FrameCut::Unknown(_) => matches!(reply, Message::Error { .. }),
        }
    }
}

/// How long each dribbling guest dribbles.
const DRIBBLE: Duration = Duration::from_millis(1500);

/// A guest writes `Close` requests into its control pipe one byte per
/// publish, as fast as it can, reading replies as it goes: every whole frame
/// is answered.
fn dribble_control(s: &Served) -> u64 {
    let (mut g, _) = attach_raw(s);
    let frames: Vec<Vec<u8>> = (0..200_000)
        .map(|_| {
            Message::Close {
                handle: Handle::Connection(ConnId(999_999)),
            }
            .to_frame(RequestId(next_id(&mut g)))
        })
        .collect();
    let frame_len = frames[0].len();
    let stream = frames.concat();
    let mut sent = 0;
    let mut answered = 0u64;
    let take = |g: &mut RawGuest| -> u64 {
        let replies = g.drain_replies().expect("the dribbling session stays up");
        for f in &replies {
            assert_eq!(
                f.message,
                Message::CloseErr {
                    code: ErrorCode::NotFound
                }
            );
        }
        replies.len() as u64
    };
    let started = Instant::now();
    while started.elapsed() < DRIBBLE && sent < stream.len() {
        if g.try_send_raw(&stream[sent..=sent]) == 1 {
            sent += 1;
            g.kick(0);
        } else {
            answered += take(&mut g);
            std::thread::sleep(Duration::from_micros(200));
        }
        if sent % 256 == 0 {
            answered += take(&mut g);
        }
    }
    // The last frame whole, then every reply.
    let end = sent.div_ceil(frame_len) * frame_len;
    g.send_raw(&stream[sent..end]);
    g.kick(0);
    let whole = (end / frame_len) as u64;
    let deadline = Instant::now() + WAIT;
    while answered < whole {
        assert!(
            Instant::now() < deadline,
            "{answered} of {whole} dribbled frames answered"
        );
        answered += take(&mut g);
        std::thread::sleep(Duration::from_millis(1));
    }
    whole
}

/// A guest writes a TCP stream into its data pipe one byte per publish:
/// the host receives every byte, in order.
fn dribble_tcp(s: &Served, rng: &mut StdRng) -> usize {
    let (mut g, _) = attach_raw(s);
    let (conn, mut pipe, mut host) = listen_and_accept(&mut g);
    host.set_nonblocking(true).unwrap();
    let data = random_bytes(rng.gen(), 8 << 20);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0;
    let started = Instant::now();
    while started.elapsed() < DRIBBLE && sent < data.len() {
        match pipe.write(&data[sent..=sent]) {
            Ok(n) => {
                sent += n;
                g.kick(conn.0);
            }
            Err(RingError::WouldBlock) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("dribbled tcp: {e}"),
        }
        if sent % 4096 == 0 {
            if let Ok(n) = host.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    pipe.close_write();
    g.kick(conn.0);
    host.set_nonblocking(false).unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    host.read_to_end(&mut got)
        .expect("the dribbled stream ends");
    assert!(
        got == data[..sent],
        "dribbled tcp bytes differ ({} of {sent})",
        got.len()
    );
    sent
}

/// A guest writes datagram records one byte per publish (so the monitor
/// sees every record cut short at every byte): each arrives whole.
fn dribble_records(s: &Served, sink: &HostSink, rng: &mut StdRng) -> usize {
    let (mut g, _) = attach_raw(s);
    let mut records = 0;
    let started = Instant::now();
    // Rounds of at most 100 small records, so the host's socket buffer
    // holds a round's datagrams until they are checked.
    while started.elapsed() < DRIBBLE {
        let sizes: Vec<usize> = (0..100).map(|_| rng.gen_range(0..=200)).collect();
        let mut c = CutStream::open(&mut g, sink.addr, &sizes, rng.gen());
        while c.published < c.bytes.len() && started.elapsed() < DRIBBLE {
            let next = c.published + 1;
            c.publish(&g, next);
        }
        // The record under way completed, then all of them checked.
        let end = c
            .ends
            .iter()
            .copied()
            .find(|&e| e >= c.published)
            .unwrap_or(0);
        c.publish(&g, end);
        sink.expect(c.local, &c.payloads[..c.whole()], "dribbled records");
        records += c.whole();
        let close = g.call(&Message::Close {
            handle: Handle::Udp(c.id),
        });
        assert_eq!(close, Message::CloseOk);
    }
    records
}

#[test]
fn cut_short_frames_and_dribbling_guests_cost_only_themselves() {
    let _serial = serial();
    let mut rng = StdRng::seed_from_u64(0xF1_C7);
    let tcp_echo = echo_server();
    let stop_udp = Arc::new(AtomicBool::new(false));
    let (udp_echo, udp_thread) = host_udp_echo(Arc::clone(&stop_udp));
    let sink = HostSink::bind();
    let mut s = Served::start("f1-frames", config());

    // Guests each holding a control frame cut short.
    let mut held = Vec::new();
    for cut in [
        FrameCut::Header(3),
        FrameCut::Payload(2),
        FrameCut::Unknown(10),
    ] {
        let (mut g, _) = attach_raw(&s);
        let id = next_id(&mut g);
        let (frame, at) = cut.frame(id);
        g.send_raw(&frame[..at]);
        g.kick(0);
        held.push((g, cut, id, frame, at));
    }
    std::thread::sleep(Duration::from_millis(100));
    let cpu = s.cpu_over(Duration::from_secs(1));
    assert!(
        cpu < IDLE_CPU,
        "the monitor's thread used {cpu:?} of CPU in 1 s waiting on control frames cut short"
    );

    let good = GoodGuest::start(s.path.clone(), tcp_echo, udp_echo, 0xF1_C7);
    good.wait_moving();
    let wd = Watchdog::start(&good);
    wd.phase("control frames cut short, held open");
    s.assert_new_guest_attaches("while control frames wait cut short");
    std::thread::sleep(HOLD);
    for (g, cut, id, frame, at) in &mut held {
        wd.phase(format!("{cut:?} completed"));
        g.send_raw(&frame[*at..]);
        g.kick(0);
        let f = g
            .recv_until(Instant::now() + STEP_BOUND)
            .unwrap_or_else(|e| panic!("{cut:?}: the completed frame: {e}"))
            .expect("the session stays up");
        assert_eq!(f.request_id, RequestId(*id), "{cut:?}");
        assert!(cut.answered(&f.message), "{cut:?}: {:?}", f.message);
        wd.check();
    }
    drop(held);

    wd.phase("control frames dribbled a byte at a time");
    let frames = dribble_control(&s);
    wd.check();
    wd.phase("a TCP stream dribbled a byte at a time");
    let tcp_bytes = dribble_tcp(&s, &mut rng);
    wd.check();
    wd.phase("datagram records dribbled a byte at a time");
    let records = dribble_records(&s, &sink, &mut rng);
    wd.phase("the good guest finishing");
    let longest = wd.finish();
    let report = good.finish();

    // Asked to stop while a frame waits cut short, the monitor stops.
    let (mut g, _) = attach_raw(&s);
    let (frame, at) = FrameCut::Payload(1).frame(next_id(&mut g));
    g.send_raw(&frame[..at]);
    g.kick(0);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        s.stop_within(PROMPT_STOP),
        "the monitor did not stop within {PROMPT_STOP:?} while a frame waited cut short \
         (its thread is left running)"
    );
    drop(g);
    stop_udp.store(true, Ordering::Relaxed);
    udp_thread.join().unwrap();
    println!(
        "hostile: dribbled {frames} control frames, {tcp_bytes} TCP bytes, {records} records; \
         {}; longest without progress {longest}",
        report.summary()
    );
}
