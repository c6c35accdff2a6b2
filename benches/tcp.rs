//! TCP through the monitor against direct loopback TCP and a socat relay, in
//! the same run.
//!
//! Run: `cargo bench --bench tcp` (socat from Debian's packages for the relay
//! rows; they are skipped with a note when it is missing).
//!
//! The host's sink and echo servers (std::net, a thread per connection) run in
//! a process of their own — this binary again, in a server role — so the
//! baseline is two processes on loopback. This process holds the client — a
//! plain `std::net` client for the baseline, or a guest using `arca` — and, on
//! a thread, the monitor's event loop for the arca rows. Each round runs every
//! column back to back; each figure is the median over the rounds.
//!
//! Environment: `ARCA_BENCH_SIDE=direct|monitor|relay` runs one column,
//! `ARCA_BENCH_ROUNDS` prints every round, `ARCA_BENCH_PHASES` times the
//! phases of a connection, `ARCA_BENCH_SOURCE=stream` sends from 32 MiB of
//! data instead of one cache-hot buffer. `--only 64KiB|1KiB|rtt|conn` runs
//! one row; `--quick` smaller trials.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::{Config, Monitor, MonitorHandle};

const TRIALS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

trait Client: Read + Write {
    fn finish_write(&mut self);
    fn nodelay(&mut self);
}

impl Client for TcpStream {
    fn finish_write(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
    fn nodelay(&mut self) {
        self.set_nodelay(true).unwrap();
    }
}

impl Client for arca::TcpStream {
    fn finish_write(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
    fn nodelay(&mut self) {
        self.set_nodelay(true).unwrap();
    }
}

/// Sends `total` bytes in `write`-sized writes, waits for the sink's count;
/// returns bytes per second.
///
/// Each write sends the same cache-hot `write`-byte buffer, unless
/// `ARCA_BENCH_SOURCE=stream`: then the writes walk through 32 MiB (more than
/// the caches hold), as a sender of data it did not just touch would.
fn throughput<C: Client>(mut c: C, write: usize, total: usize) -> f64 {
    let source = if std::env::var("ARCA_BENCH_SOURCE").is_ok_and(|v| v == "stream") {
        vec![0x5au8; 32 << 20]
    } else {
        vec![0x5au8; write]
    };
    let start = Instant::now();
    let mut sent = 0;
    let mut off = 0;
    while sent < total {
        c.write_all(&source[off..off + write]).unwrap();
        off = (off + write) % (source.len() - write + 1);
        sent += write;
    }
    c.finish_write();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    let secs = start.elapsed().as_secs_f64();

    assert_eq!(
        u64::from_le_bytes(count),
        sent as u64,
        "sink saw every byte"
    );
    sent as f64 / secs
}

/// Mean round trip of `n` 64-byte request/response exchanges, in seconds.
fn round_trip<C: Client>(mut c: C, n: usize) -> f64 {
    c.nodelay();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..200 {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// Connections per second: connect, one 64-byte exchange, close.
///
/// With `ARCA_BENCH_PHASES` set it also prints the median time of each phase
/// (for finding where a path loses; the clock reads cost a little).
fn conn_rate(mut connect: impl FnMut() -> Box<dyn Client>, n: usize) -> f64 {
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    let phases = std::env::var_os("ARCA_BENCH_PHASES").is_some();
    let mut times: [Vec<f64>; 3] = Default::default();
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let mut c = connect();
        let t1 = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        let t2 = Instant::now();
        drop(c);
        if phases {
            let t3 = Instant::now();
            for (v, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                v.push(d.as_secs_f64() * 1e6);
            }
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if phases {
        let spread = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            format!(
                "{:.1} ({:.1}–{:.1}, p99 {:.1}, mean {mean:.1})",
                at(0.5),
                at(0.1),
                at(0.9),
                at(0.99)
            )
        };
        let [c, x, d] = times.map(spread);
        eprintln!(
            "  phases, µs, median (p10–p90, p99, mean): connect {c}, exchange {x}, close {d}"
        );
    }
    rate
}

struct Served {
    handle: MonitorHandle,
    path: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.handle.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn monitor() -> (Served, ArcaSession) {
    let path = std::env::temp_dir().join(format!("arca-bench-{}.sock", std::process::id()));
    let mut m = Monitor::new(Config::default()).unwrap();
    m.listen_unix(&path).unwrap();
    let handle = m.handle();
    std::thread::spawn(move || m.run());
    let session = ArcaSession::attach(&path).unwrap();
    (Served { handle, path }, session)
}

/// The host's sink and echo servers, in a process of their own (this binary
/// again, in the server role): the baseline is two processes talking over
/// loopback, and the monitor path ends at the same servers.
struct Servers(Child);

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn servers() -> (Servers, SocketAddr, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("ARCA_BENCH_SERVER_ROLE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut addrs = line.split_whitespace().map(|a| a.parse().unwrap());
    let (sink, echo) = (addrs.next().unwrap(), addrs.next().unwrap());
    (Servers(child), sink, echo)
}

/// The server role: starts the servers, prints their addresses, and lives until
/// its parent closes stdin (or dies).
fn serve_servers() {
    let sink = arca_testkit::servers::count_sink();
    let echo = arca_testkit::servers::echo_server();
    println!("{sink} {echo}");
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
}

struct Socat(Child, SocketAddr);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `socat TCP-LISTEN:port,fork TCP:target` — a classic user-space relay.
fn socat(target: SocketAddr) -> Option<Socat> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:{target}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Socat(child, addr))
}

/// One row's trials: every round runs direct, through the monitor and (with
/// socat) through the relay back to back, so that the machine's drift over the
/// run hits all three alike. Medians of each column, and the median of the
/// per-round ratios.
struct Row {
    direct: Vec<f64>,
    arca: Vec<f64>,
    relay: Vec<f64>,
}

impl Row {
    fn run(
        trials: usize,
        mut direct: impl FnMut() -> f64,
        mut arca: impl FnMut() -> f64,
        mut relay: Option<impl FnMut() -> f64>,
    ) -> Self {
        let mut r = Row {
            direct: Vec::new(),
            arca: Vec::new(),
            relay: Vec::new(),
        };
        // `ARCA_BENCH_SIDE=direct|monitor|relay` runs one column only (for
        // profiling one path; the ratio column is then meaningless).
        let side = std::env::var("ARCA_BENCH_SIDE").unwrap_or_default();
        let on = |s: &str| side.is_empty() || side == s;
        for _ in 0..trials {
            r.direct.push(if on("direct") { direct() } else { 1.0 });
            r.arca.push(if on("monitor") { arca() } else { 1.0 });
            if let Some(f) = relay.as_mut().filter(|_| on("relay")) {
                r.relay.push(f());
            }
        }
        r
    }

    fn print(self, name: &str, unit: &str, scale: f64, target: &str) {
        if std::env::var_os("ARCA_BENCH_ROUNDS").is_some() {
            let show = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{:.2}", x * scale))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            eprintln!("  rounds: direct {}", show(&self.direct));
            eprintln!("  rounds: monitor {}", show(&self.arca));
        }
        let ratios = self
            .direct
            .iter()
            .zip(&self.arca)
            .map(|(d, a)| a / d)
            .collect::<Vec<_>>();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        let ratio = median(ratios);
        let direct = median(self.direct) * scale;
        let arca = median(self.arca) * scale;
        let relay = if self.relay.is_empty() {
            "n/a (no socat)".to_string()
        } else {
            format!("{:.3} {unit}", median(self.relay) * scale)
        };
        println!(
            "| {name} | {direct:.3} {unit} | {arca:.3} {unit} | {relay} | {ratio:.2}× ({lo:.2}–{hi:.2}) | {target} |"
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`. `--quick` runs smaller trials;
    // `--only KEY` runs one row (`64KiB`, `1KiB`, `rtt` or `conn`), for
    // profiling.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |key: &str| only.as_deref().is_none_or(|o| o == key);
    let total = if quick { 64 << 20 } else { 512 << 20 };
    let rtts = if quick { 2_000 } else { 20_000 };
    let conns = if quick { 200 } else { 2_000 };

    if std::env::var_os("ARCA_BENCH_SERVER_ROLE").is_some() {
        return serve_servers();
    }
    let (_servers, sink_addr, echo_addr) = servers();
    let (_served, session) = monitor();
    let relay_sink = socat(sink_addr);
    let relay_echo = socat(echo_addr);

    println!(
        "TCP through the monitor vs direct loopback ({TRIALS} interleaved rounds, medians; \
         ratio: median of the per-round ratios, range in brackets)\n"
    );
    println!("| measure | direct | through monitor | socat relay | monitor ÷ direct | target |");
    println!("|---|---|---|---|---|---|");
    for (write, key, target) in [(64 << 10, "64KiB", "≥ 0.9×"), (1 << 10, "1KiB", "≥ 2×")] {
        if !wanted(key) {
            continue;
        }
        Row::run(
            TRIALS,
            || throughput(TcpStream::connect(sink_addr).unwrap(), write, total),
            || throughput(session.connect(sink_addr).unwrap(), write, total),
            relay_sink
                .as_ref()
                .map(|s| || throughput(TcpStream::connect(s.1).unwrap(), write, total)),
        )
        .print(
            &format!("throughput, {write} B writes"),
            "GB/s",
            1e-9,
            target,
        );
    }
    if wanted("rtt") {
        Row::run(
            TRIALS,
            || round_trip(TcpStream::connect(echo_addr).unwrap(), rtts),
            || round_trip(session.connect(echo_addr).unwrap(), rtts),
            relay_echo
                .as_ref()
                .map(|s| || round_trip(TcpStream::connect(s.1).unwrap(), rtts)),
        )
        .print("64 B round trip", "µs", 1e6, "≤ 1.5×");
    }
    if wanted("conn") {
        Row::run(
            TRIALS,
            || conn_rate(|| Box::new(TcpStream::connect(echo_addr).unwrap()), conns),
            || conn_rate(|| Box::new(session.connect(echo_addr).unwrap()), conns),
            relay_echo
                .as_ref()
                .map(|s| || conn_rate(|| Box::new(TcpStream::connect(s.1).unwrap()), conns)),
        )
        .print(
            "connections/s (connect, 64 B exchange, close)",
            "k/s",
            1e-3,
            "≥ 0.7×",
        );
    }
}
