//! Many guests through one `arca-monitor serve` against as many direct loopback
//! clients, with one worker and with several, in the same run (issue 20).
//!
//! Run: `cargo bench --bench multi_guest` (builds `arca-monitor` first:
//! `cargo build --release -p arca-monitor`).
//!
//! Processes: the host's sink and echo servers (std::net, a thread per
//! connection) run in a process of their own — this binary again, in a server
//! role; each monitor is `arca-monitor serve --workers W` in its own process;
//! this process holds the N clients, one thread each: a plain `std::net`
//! client for the direct column, or a guest with its own `ArcaSession` (its
//! own session, so the monitor may serve it on any worker) and its own
//! connection. All N start together behind a barrier.
//!
//! Rows, for every N:
//! - 64 KiB and 1 KiB bulk: each client sends `total / N` bytes to the sink
//!   in writes of that size; aggregate bytes over the wall time of the slowest;
//! - 64 B round trip: each client does its share of round trips to the echo
//!   server; the mean time per round trip, over all clients;
//! - connections/s: each client opens its share of connections to the echo
//!   server one after another (connect, one 64 B exchange, close); in all;
//! - the monitor's CPU time (user + system, from /proc) per GiB moved in the
//!   64 KiB row.
//!
//! Each round runs every column back to back; figures are medians over the
//! rounds. Parameters, so the bench runs unchanged on a many-core host:
//! `ARCA_BENCH_GUESTS=1,2,8` (guest counts), `ARCA_BENCH_WORKERS=1,W`
//! (worker counts; default 1 and the CPUs this process may use),
//! `ARCA_BENCH_TRIALS` (rounds, default 5); `--quick` shrinks every trial.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use arca::ArcaSession;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn list(var: &str, default: Vec<usize>) -> Vec<usize> {
    std::env::var(var).map_or(default, |v| {
        v.split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: `{n}` is not a count"))
            })
            .collect()
    })
}

/// One client's connection, direct or through a guest session.
trait Client: Read + Write + Send {
    fn finish_write(&mut self);
}

impl Client for TcpStream {
    fn finish_write(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

impl Client for arca::TcpStream {
    fn finish_write(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// Sends `total` bytes in `write`-sized writes and waits for the sink's count.
fn bulk(c: &mut dyn Client, write: usize, total: usize) {
    let buf = vec![0x5au8; write];
    let mut sent = 0;
    while sent < total {
        c.write_all(&buf).unwrap();
        sent += write;
    }
    c.finish_write();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_le_bytes(count), sent as u64, "the sink's count");
}

/// `n` round trips of 64 bytes.
fn round_trips(c: &mut dyn Client, n: usize) {
    let out = [0x42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..n {
        c.write_all(&out).unwrap();
        c.read_exact(&mut back).unwrap();
    }
}

/// Where the clients connect from: the kernel directly, or guest sessions
/// attached to the monitor at a socket path.
enum Side {
    Direct,
    Monitor(PathBuf),
}

impl Side {
    /// `n` connections to `to`, each of a client of its own.
    fn connect(&self, n: usize, to: SocketAddr) -> Vec<(Option<ArcaSession>, Box<dyn Client>)> {
        (0..n)
            .map(|_| match self {
                Side::Direct => {
                    let c = TcpStream::connect(to).unwrap();
                    c.set_nodelay(true).unwrap();
                    (None, Box::new(c) as Box<dyn Client>)
                }
                Side::Monitor(path) => {
                    let s = ArcaSession::attach(path).unwrap();
                    let c = s.connect(to).unwrap();
                    c.set_nodelay(true).unwrap();
                    (Some(s), Box::new(c) as Box<dyn Client>)
                }
            })
            .collect()
    }

    /// Runs `work` on every connection at once (each on its thread, behind a
    /// barrier); returns the wall time from the barrier to the last finish.
    fn run(&self, n: usize, to: SocketAddr, work: impl Fn(&mut dyn Client) + Sync) -> Duration {
        let conns = self.connect(n, to);
        let barrier = Barrier::new(n + 1);
        std::thread::scope(|s| {
            let threads: Vec<_> = conns
                .into_iter()
                .map(|(session, mut c)| {
                    let (barrier, work) = (&barrier, &work);
                    s.spawn(move || {
                        barrier.wait();
                        work(c.as_mut());
                        drop(c);
                        drop(session);
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed()
        })
    }
}

impl Side {
    /// Every one of `n` clients at once (each on its thread, behind a
    /// barrier) opens `each` connections to the echo server `to` one after
    /// another: connect, one 64-byte exchange, close. Returns connections per
    /// second in all.
    fn conn_rate(&self, n: usize, to: SocketAddr, each: usize) -> f64 {
        let sessions: Vec<Option<ArcaSession>> = (0..n)
            .map(|_| match self {
                Side::Direct => None,
                Side::Monitor(path) => Some(ArcaSession::attach(path).unwrap()),
            })
            .collect();
        let barrier = Barrier::new(n + 1);
        let t = std::thread::scope(|s| {
            let threads: Vec<_> = sessions
                .iter()
                .map(|session| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let (msg, mut back) = ([1u8; 64], [0u8; 64]);
                        barrier.wait();
                        for _ in 0..each {
                            let mut c: Box<dyn Client> = match session {
                                None => Box::new(TcpStream::connect(to).unwrap()),
                                Some(s) => Box::new(s.connect(to).unwrap()),
                            };
                            c.write_all(&msg).unwrap();
                            c.read_exact(&mut back).unwrap();
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed()
        });
        (n * each) as f64 / t.as_secs_f64()
    }
}

/// `arca-monitor serve --workers W` in its own process.
struct Served {
    child: Child,
    path: PathBuf,
}

impl Served {
    fn start(workers: usize) -> Served {
        let path = std::env::temp_dir().join(format!(
            "arca-bench-mg-{}-{workers}.sock",
            std::process::id()
        ));
        let child = Command::new(arca_testkit::bins::monitor_bin())
            .args(["serve", "--socket"])
            .arg(&path)
            .args(["--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("arca-monitor (cargo build --release -p arca-monitor)");
        let end = Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            assert!(Instant::now() < end, "the monitor never made its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Served { child, path }
    }

    /// The monitor's CPU time so far (all threads), from /proc.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the monitor's /proc stat");
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // utime and stime, in USER_HZ (100) ticks.
        Duration::from_millis((fields[11] + fields[12]) * 10)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The servers' process; killed on drop.
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

/// The server role: starts the servers, prints their addresses, and lives
/// until its parent closes stdin (or dies).
fn serve_servers() {
    let sink = arca_testkit::servers::count_sink();
    let echo = arca_testkit::servers::echo_server();
    println!("{sink} {echo}");
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
}

/// Figures of one column for one guest count, one entry per round.
#[derive(Default)]
struct Column {
    bulk64k: Vec<f64>,
    bulk1k: Vec<f64>,
    rtt_us: Vec<f64>,
    conns_per_s: Vec<f64>,
    cpu_per_gib: Vec<f64>,
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    if std::env::var_os("ARCA_BENCH_SERVER_ROLE").is_some() {
        return serve_servers();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let cpus = arca_monitor::cpus::available();
    let guests = list("ARCA_BENCH_GUESTS", vec![1, 2, 8]);
    let mut workers = list("ARCA_BENCH_WORKERS", vec![1, cpus]);
    workers.dedup();
    let trials = list("ARCA_BENCH_TRIALS", vec![if quick { 1 } else { 5 }])[0].max(1);
    let total: usize = if quick { 64 << 20 } else { 1 << 30 };
    let total_1k: usize = total / 8;
    let rtts: usize = if quick { 2_000 } else { 20_000 };
    let conns: usize = if quick { 400 } else { 4_000 };

    let (_servers, sink, echo) = servers();
    let monitors: Vec<Served> = workers.iter().map(|&w| Served::start(w)).collect();
    let mut sides = vec![("direct".to_string(), Side::Direct, None)];
    for (m, w) in monitors.iter().zip(&workers) {
        sides.push((
            format!("{w} worker{}", if *w == 1 { "" } else { "s" }),
            Side::Monitor(m.path.clone()),
            Some(m),
        ));
    }

    println!(
        "{} guests, each its own session and connection, through one `serve` vs as many direct \
         clients ({cpus} CPUs; {trials} rounds, medians; bulk {} MiB in all per row)\n",
        guests
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        total >> 20
    );
    let names: Vec<&str> = sides.iter().map(|s| s.0.as_str()).collect();
    println!(
        "| N | measure | {} | monitor CPU s/GiB ({}) |",
        names.join(" | "),
        names[1..].join(", ")
    );
    println!("|---|---|{}---|", "---|".repeat(names.len()));
    for &n in &guests {
        let mut cols: Vec<Column> = sides.iter().map(|_| Column::default()).collect();
        for _ in 0..trials {
            for ((_, side, served), col) in sides.iter().zip(&mut cols) {
                let share = (total / n).max(64 << 10) / (64 << 10) * (64 << 10);
                let cpu0 = served.map(|m| m.cpu());
                let t = side.run(n, sink, |c| bulk(c, 64 << 10, share));
                col.bulk64k.push(gbps(share * n, t));
                if let (Some(m), Some(c0)) = (served, cpu0) {
                    let gib = (share * n) as f64 / f64::from(1u32 << 30);
                    col.cpu_per_gib.push((m.cpu() - c0).as_secs_f64() / gib);
                }
                let share_1k = (total_1k / n).max(1 << 10) / (1 << 10) * (1 << 10);
                let t = side.run(n, sink, |c| bulk(c, 1 << 10, share_1k));
                col.bulk1k.push(gbps(share_1k * n, t));
                let each = (rtts / n).max(100);
                let t = side.run(n, echo, |c| round_trips(c, each));
                // Each client's round trips run one after another: its mean
                // is the wall time over its count.
                col.rtt_us.push(t.as_secs_f64() * 1e6 / each as f64);
                col.conns_per_s
                    .push(side.conn_rate(n, echo, (conns / n).max(20)));
            }
        }
        let row = |label: &str, f: &dyn Fn(&Column) -> f64, unit: &str| {
            let cells: Vec<String> = cols.iter().map(|c| format!("{:.2}{unit}", f(c))).collect();
            let cpu: Vec<String> = cols[1..]
                .iter()
                .map(|c| format!("{:.2}", median(c.cpu_per_gib.clone())))
                .collect();
            let cpu = if label.starts_with("64 KiB") {
                cpu.join(", ")
            } else {
                String::new()
            };
            println!("| {n} | {label} | {} | {cpu} |", cells.join(" | "));
        };
        row(
            "64 KiB bulk, aggregate",
            &|c| median(c.bulk64k.clone()),
            " GB/s",
        );
        row(
            "1 KiB bulk, aggregate",
            &|c| median(c.bulk1k.clone()),
            " GB/s",
        );
        row("64 B round trip", &|c| median(c.rtt_us.clone()), " µs");
        row(
            "connections/s (connect, 64 B exchange, close)",
            &|c| median(c.conns_per_s.clone()),
            "",
        );
    }
}
