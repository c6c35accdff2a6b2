//! TCP through `arca-monitor`, run as its own process the way users run it, against direct
//! loopback TCP between the same two processes, quiet and under a standard CPU load, in the
//! same run.
//!
//! Run: `cargo bench --bench tcp`; `ARCA_BENCH_SHORT=1 cargo bench --bench tcp` is a smoke
//! run of a few seconds.
//!
//! Processes:
//! - the host's sink and echo servers (std::net, a thread per connection): this binary again,
//!   in a server role;
//! - `arca-monitor serve --socket PATH` (built by `cargo build -p arca-monitor`, which this
//!   bench runs first when started by Cargo);
//! - this process: the client, either a plain `std::net` client straight to the servers
//!   (direct) or a guest attached to the monitor with `ArcaSession::attach` (monitor);
//! - with socat installed, `socat TCP-LISTEN,fork TCP:…` as a classic user-space relay
//!   (quiet rounds only).
//!
//! Each round runs every row quiet, then again beside one busy-loop process per CPU
//! (`arca_testkit::load`), each column back to back, so drift hits the columns and both
//! loads alike. A cell is the median over the rounds; a ratio is the median of the per-round
//! monitor ÷ direct ratios (range in brackets). The monitor's CPU per GiB is its user +
//! system time over every bulk trial of the row divided by the bytes moved
//! (`/proc/PID/stat`).
//!
//! Environment: `ARCA_BENCH_SHORT=1` (one round, small trials), `ARCA_BENCH_LOAD=quiet|loaded`
//! (one load only), `ARCA_BENCH_UNCONFINED=0` (no `--no-confine` monitor column),
//! `ARCA_BENCH_SIDE=direct|monitor|unconfined|relay` (one column, for profiling; the
//! ratio is then meaningless), `ARCA_BENCH_ROUNDS` (print every round), `ARCA_BENCH_PHASES`
//! (a connection's phases), `ARCA_BENCH_SOURCE=stream` (send from 32 MiB of data rather than
//! one cache-hot buffer). Argument `--only 64KiB|1KiB|rtt|conn` runs one row.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_testkit::bins::{cargo_build, monitor_bin, profile_dir};
use arca_testkit::child::Proc;
use arca_testkit::load::BusyLoad;
use arca_testkit::monitor_proc::{socket_path, wait_for_socket};
use arca_testkit::procfs::cpu_time;
use arca_testkit::stats::{median, quantile};

type Error = Box<dyn std::error::Error>;

/// Trial sizes and round counts.
#[derive(Clone, Copy)]
struct Sizes {
    rounds: usize,
    /// Bytes per bulk trial.
    bulk: usize,
    /// Exchanges per round-trip trial.
    rtts: usize,
    /// Connections per connection-rate trial.
    conns: usize,
    /// A trial stops early past this (under load a round trip can take milliseconds).
    cap: Duration,
}

const FULL: Sizes = Sizes {
    rounds: 7,
    bulk: 512 << 20,
    rtts: 20_000,
    conns: 2_000,
    cap: Duration::from_secs(4),
};

const SHORT: Sizes = Sizes {
    rounds: 1,
    bulk: 16 << 20,
    rtts: 500,
    conns: 100,
    cap: Duration::from_secs(1),
};

trait Client: Read + Write {
    fn finish_write(&mut self) -> std::io::Result<()>;
    fn nodelay(&mut self) -> std::io::Result<()>;
}

impl Client for TcpStream {
    fn finish_write(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn nodelay(&mut self) -> std::io::Result<()> {
        self.set_nodelay(true)
    }
}

impl<C: Client + ?Sized> Client for Box<C> {
    fn finish_write(&mut self) -> std::io::Result<()> {
        (**self).finish_write()
    }
    fn nodelay(&mut self) -> std::io::Result<()> {
        (**self).nodelay()
    }
}

impl Client for arca::TcpStream {
    fn finish_write(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn nodelay(&mut self) -> std::io::Result<()> {
        self.set_nodelay(true)
    }
}

/// Sends up to `total` bytes in `write`-sized writes (stopping after `cap`), waits for the
/// sink's count; returns (bytes, seconds).
///
/// Each write sends the same cache-hot `write`-byte buffer, unless
/// `ARCA_BENCH_SOURCE=stream`: then the writes walk through 32 MiB (more than the caches
/// hold), as a sender of data it did not just touch would.
fn bulk<C: Client>(mut c: C, write: usize, total: usize, cap: Duration) -> (u64, f64) {
    let source = if std::env::var("ARCA_BENCH_SOURCE").is_ok_and(|v| v == "stream") {
        vec![0x5au8; 32 << 20]
    } else {
        vec![0x5au8; write]
    };
    let start = Instant::now();
    let mut sent = 0;
    let mut off = 0;
    while sent < total && (sent % (64 << 20) != 0 || start.elapsed() < cap) {
        c.write_all(&source[off..off + write]).expect("bulk write");
        off = (off + write) % (source.len() - write + 1);
        sent += write;
    }
    c.finish_write().expect("shutdown after bulk");
    let mut count = [0u8; 8];
    c.read_exact(&mut count).expect("the sink's count");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_le_bytes(count),
        sent as u64,
        "sink saw every byte"
    );
    (sent as u64, secs)
}

/// Round trips of 64-byte request/response exchanges (up to `n`, stopping after `cap`), in
/// seconds each.
fn round_trips<C: Client>(mut c: C, n: usize, cap: Duration) -> Vec<f64> {
    c.nodelay().expect("TCP_NODELAY");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..200 {
        c.write_all(&msg).expect("warm-up write");
        c.read_exact(&mut back).expect("warm-up read");
    }
    let mut times = Vec::with_capacity(n);
    let start = Instant::now();
    while times.len() < n && (times.len() % 64 != 0 || start.elapsed() < cap) {
        let t = Instant::now();
        c.write_all(&msg).expect("write");
        c.read_exact(&mut back).expect("read");
        times.push(t.elapsed().as_secs_f64());
    }
    times
}

/// Connections per second (up to `n`, stopping after `cap`): connect, one 64-byte exchange,
/// close.
///
/// With `ARCA_BENCH_PHASES` set it also prints the spread of each phase (for finding where a
/// path loses; the clock reads cost a little).
fn conn_rate(mut connect: impl FnMut() -> Box<dyn Client>, n: usize, cap: Duration) -> f64 {
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    let phases = std::env::var_os("ARCA_BENCH_PHASES").is_some();
    let mut times: [Vec<f64>; 3] = Default::default();
    let start = Instant::now();
    let mut done = 0;
    while done < n && (done % 16 != 0 || start.elapsed() < cap) {
        let t0 = Instant::now();
        let mut c = connect();
        let t1 = Instant::now();
        c.write_all(&msg).expect("write");
        c.read_exact(&mut back).expect("read");
        let t2 = Instant::now();
        drop(c);
        done += 1;
        if phases {
            let t3 = Instant::now();
            for (v, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                v.push(d.as_secs_f64() * 1e6);
            }
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    if phases {
        let spread = |v: Vec<f64>| {
            let at = |q| quantile(&v, q).unwrap_or(f64::NAN);
            format!(
                "{:.1} ({:.1}–{:.1}, p99 {:.1})",
                at(0.5),
                at(0.1),
                at(0.9),
                at(0.99)
            )
        };
        let [c, x, d] = times.map(spread);
        eprintln!("  phases, µs, median (p10–p90, p99): connect {c}, exchange {x}, close {d}");
    }
    rate
}

/// The host's sink and echo servers, in a process of their own (this binary again, in the
/// server role): the baseline is two processes talking over loopback, and the monitor path
/// ends at the same servers.
struct Servers {
    _proc: Proc,
    sink: SocketAddr,
    echo: SocketAddr,
}

fn servers() -> Result<Servers, Error> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.env("ARCA_BENCH_SERVER_ROLE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench servers", &mut cmd)?;
    let out = proc.child_mut().stdout.take().ok_or("servers: no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    let mut addrs = line.split_whitespace().map(str::parse::<SocketAddr>);
    match (addrs.next(), addrs.next()) {
        (Some(Ok(sink)), Some(Ok(echo))) => Ok(Servers {
            _proc: proc,
            sink,
            echo,
        }),
        _ => Err(format!("servers printed {line:?}, not two addresses").into()),
    }
}

/// The server role: starts the servers, prints their addresses, and lives until its parent
/// closes stdin (or dies).
fn serve_servers() {
    let sink = arca_testkit::servers::count_sink();
    let echo = arca_testkit::servers::echo_server();
    println!("{sink} {echo}");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

/// `arca-monitor serve` in its own process, and this process attached to it as a guest.
struct MonitorProc {
    proc: Proc,
    path: PathBuf,
}

impl Drop for MonitorProc {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds the monitor when Cargo started this bench (`cargo bench` sets `CARGO`), so the
/// figures are of the code in the tree; otherwise uses the binary found next to this one.
/// `confined: false` runs it with `--no-confine` (no seccomp, no Landlock), for the
/// confined ÷ unconfined column.
fn monitor(confined: bool) -> Result<(MonitorProc, ArcaSession), Error> {
    if std::env::var_os("CARGO").is_some() && std::env::var_os("ARCA_MONITOR_BIN").is_none() {
        cargo_build(
            &profile_dir()?,
            &["-p", "arca-monitor", "--bin", "arca-monitor"],
            Duration::from_secs(1200),
        )?;
    }
    let bin = monitor_bin();
    if !bin.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p arca-monitor",
            bin.display()
        )
        .into());
    }
    let path = socket_path(if confined {
        "bench-tcp"
    } else {
        "bench-tcp-unconfined"
    });
    let mut cmd = Command::new(&bin);
    cmd.arg("serve").arg("--socket").arg(&path);
    if !confined {
        cmd.arg("--no-confine");
    }
    let mut m = MonitorProc {
        proc: Proc::spawn("arca-monitor", &mut cmd)?,
        path,
    };
    wait_for_socket(&m.path, m.proc.child_mut(), Duration::from_secs(20));
    let session = ArcaSession::attach(&m.path)?;
    Ok((m, session))
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
    let s = Socat(child, SocketAddr::from(([127, 0, 0, 1], port)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(s.1).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(s)
}

/// Quiet, or beside one busy-loop process per CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Quiet,
    Loaded,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Quiet => "quiet",
            Load::Loaded => "loaded",
        }
    }
}

/// One trial's figure: the headline value (GB/s, k/s or µs), and for round trips the p99.
#[derive(Clone, Copy, Default)]
struct Sample {
    value: f64,
    p99: f64,
}

/// One side's samples over the rounds of one row under one load.
#[derive(Default)]
struct Column {
    samples: Vec<Sample>,
}

impl Column {
    fn values(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.value).collect()
    }
    fn p99s(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.p99).collect()
    }
}

/// A row under one load: the columns, and the monitor's CPU over the bytes of its bulk trials.
#[derive(Default)]
struct Cells {
    direct: Column,
    monitor: Column,
    unconfined: Column,
    relay: Column,
    monitor_cpu: Duration,
    monitor_bytes: u64,
}

/// Median of the per-round `a ÷ b` ratios, with their range.
fn ratio(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&r).unwrap_or(f64::NAN), lo, hi)
}

/// What a row's ratio must be for its target to be met.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

impl Target {
    fn show(self) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {x}×"),
            Target::AtMost(x) => format!("≤ {x}×"),
            Target::None => "—".into(),
        }
    }
    fn met(self, r: f64) -> &'static str {
        match self {
            Target::AtLeast(x) if r >= x => "yes",
            Target::AtMost(x) if r <= x => "yes",
            Target::None => "—",
            _ => "no",
        }
    }
}

/// One side's figures for a line: direct, the confined monitor, the unconfined monitor.
struct Line<'a> {
    d: &'a [f64],
    m: &'a [f64],
    u: &'a [f64],
}

fn print_line(name: &str, load: Load, unit: &str, l: Line, relay: &str, t: Target) {
    let (r, lo, hi) = ratio(l.m, l.d);
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    let (unconfined, conf) = if l.u.is_empty() || l.m.is_empty() {
        ("n/a".to_string(), "n/a".to_string())
    } else {
        let (c, clo, chi) = ratio(l.m, l.u);
        (
            format!("{:.3} {unit}", med(l.u)),
            format!("{c:.2}× ({clo:.2}–{chi:.2})"),
        )
    };
    println!(
        "| {name} | {} | {:.3} {unit} | {:.3} {unit} | {unconfined} | {relay} | {r:.2}× ({lo:.2}–{hi:.2}) | {conf} | {} | {} |",
        load.name(),
        med(l.d),
        med(l.m),
        t.show(),
        t.met(r),
    );
}

/// The kind of a row, for how it prints.
#[derive(Clone, Copy)]
enum Kind {
    Bulk,
    RoundTrip,
    Connections,
}

/// The bench's processes, the guest session and the load's on/off switch.
struct Rig {
    servers: Servers,
    monitor: MonitorProc,
    session: ArcaSession,
    /// The monitor run with `--no-confine`, unless `ARCA_BENCH_UNCONFINED=0`.
    unconfined: Option<(MonitorProc, ArcaSession)>,
    relay_sink: Option<Socat>,
    relay_echo: Option<Socat>,
    sizes: Sizes,
}

impl Rig {
    /// One trial of `kind` on `side` ("direct", "monitor", "unconfined", "relay"); for bulk rows through
    /// the monitor, also the monitor's CPU time and the bytes moved.
    fn trial(&self, kind: Kind, write: usize, side: &str) -> Option<(Sample, Duration, u64)> {
        let s = self.sizes;
        let target = match kind {
            Kind::Bulk => self.servers.sink,
            Kind::RoundTrip | Kind::Connections => self.servers.echo,
        };
        let relay = match kind {
            Kind::Bulk => self.relay_sink.as_ref(),
            Kind::RoundTrip | Kind::Connections => self.relay_echo.as_ref(),
        }
        .map(|r| r.1);
        let connect = |side: &str| -> Option<Box<dyn Client>> {
            Some(match side {
                "direct" => Box::new(TcpStream::connect(target).expect("direct connect")),
                "monitor" => Box::new(self.session.connect(target).expect("guest connect")),
                "unconfined" => Box::new(
                    (self.unconfined.as_ref()?.1)
                        .connect(target)
                        .expect("unconfined guest connect"),
                ),
                _ => Box::new(TcpStream::connect(relay?).expect("relay connect")),
            })
        };
        if side == "relay" {
            relay?;
        }
        if side == "unconfined" {
            self.unconfined.as_ref()?;
        }
        let cpu0 = cpu_time(self.monitor.proc.id()).unwrap_or_default();
        let (sample, bytes) = match kind {
            Kind::Bulk => {
                let (bytes, secs) = bulk(connect(side)?, write, s.bulk, s.cap);
                (
                    Sample {
                        value: bytes as f64 / secs * 1e-9,
                        p99: 0.0,
                    },
                    bytes,
                )
            }
            Kind::RoundTrip => {
                let t = round_trips(connect(side)?, s.rtts, s.cap);
                let q = |q| quantile(&t, q).unwrap_or(f64::NAN) * 1e6;
                (
                    Sample {
                        value: q(0.5),
                        p99: q(0.99),
                    },
                    0,
                )
            }
            Kind::Connections => {
                let rate = conn_rate(|| connect(side).expect("connect"), s.conns, s.cap);
                (
                    Sample {
                        value: rate * 1e-3,
                        p99: 0.0,
                    },
                    0,
                )
            }
        };
        let cpu = cpu_time(self.monitor.proc.id()).unwrap_or_default();
        Some((sample, cpu.saturating_sub(cpu0), bytes))
    }

    /// Every round of one row under each load in `loads`.
    fn row(&self, kind: Kind, write: usize, loads: &[Load]) -> Result<Vec<(Load, Cells)>, Error> {
        let side = std::env::var("ARCA_BENCH_SIDE").unwrap_or_default();
        let on = |s: &str| side.is_empty() || side == s;
        let mut out: Vec<(Load, Cells)> = loads.iter().map(|&l| (l, Cells::default())).collect();
        for _ in 0..self.sizes.rounds {
            for (load, cells) in &mut out {
                let _busy = match load {
                    Load::Quiet => None,
                    Load::Loaded => Some(BusyLoad::per_cpu()?),
                };
                for name in ["direct", "monitor", "unconfined", "relay"] {
                    if !on(name) || (name == "relay" && *load == Load::Loaded) {
                        continue;
                    }
                    let Some((sample, cpu, bytes)) = self.trial(kind, write, name) else {
                        continue;
                    };
                    match name {
                        "direct" => cells.direct.samples.push(sample),
                        "monitor" => {
                            cells.monitor.samples.push(sample);
                            cells.monitor_cpu += cpu;
                            cells.monitor_bytes += bytes;
                        }
                        "unconfined" => cells.unconfined.samples.push(sample),
                        _ => cells.relay.samples.push(sample),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn print_row(kind: Kind, label: &str, rows: &[(Load, Cells)]) {
    let rounds = std::env::var_os("ARCA_BENCH_ROUNDS").is_some();
    for (load, c) in rows {
        let relay = |v: Vec<f64>, unit: &str| {
            median(&v).map_or_else(|| "n/a".to_string(), |m| format!("{m:.3} {unit}"))
        };
        if rounds {
            let show = |v: Vec<f64>| {
                v.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            eprintln!(
                "  {label}, {}: direct {} | monitor {} | unconfined {}",
                load.name(),
                show(c.direct.values()),
                show(c.monitor.values()),
                show(c.unconfined.values())
            );
        }
        let (d, m, u) = (c.direct.values(), c.monitor.values(), c.unconfined.values());
        match kind {
            Kind::Bulk => {
                let t = match (load, label) {
                    (Load::Quiet, "64 KiB writes") => Target::AtLeast(0.9),
                    (Load::Quiet, _) => Target::AtLeast(2.0),
                    (Load::Loaded, _) => Target::AtLeast(0.8),
                };
                print_line(
                    &format!("throughput, {label}"),
                    *load,
                    "GB/s",
                    Line {
                        d: &d,
                        m: &m,
                        u: &u,
                    },
                    &relay(c.relay.values(), "GB/s"),
                    t,
                );
                let gib = c.monitor_bytes as f64 / f64::from(1u32 << 30);
                if gib > 0.0 {
                    // The kernel counts CPU time in ticks (10 ms at 100 Hz): the total
                    // shows how coarse the figure is.
                    println!(
                        "| monitor CPU per GiB, {label} | {} | — | {:.3} s ({:.2} s over {gib:.2} GiB) | — | — | — | — | — | — |",
                        load.name(),
                        c.monitor_cpu.as_secs_f64() / gib,
                        c.monitor_cpu.as_secs_f64(),
                    );
                }
            }
            Kind::RoundTrip => {
                let t = match load {
                    Load::Quiet => Target::AtMost(1.2),
                    Load::Loaded => Target::None,
                };
                print_line(
                    "64 B round trip, p50",
                    *load,
                    "µs",
                    Line {
                        d: &d,
                        m: &m,
                        u: &u,
                    },
                    &relay(c.relay.values(), "µs"),
                    t,
                );
                let t = match load {
                    Load::Quiet => Target::None,
                    Load::Loaded => Target::AtMost(2.0),
                };
                print_line(
                    "64 B round trip, p99",
                    *load,
                    "µs",
                    Line {
                        d: &c.direct.p99s(),
                        m: &c.monitor.p99s(),
                        u: &c.unconfined.p99s(),
                    },
                    &relay(c.relay.p99s(), "µs"),
                    t,
                );
            }
            Kind::Connections => {
                let t = match load {
                    Load::Quiet => Target::AtLeast(0.9),
                    Load::Loaded => Target::None,
                };
                print_line(
                    "connections/s (connect, 64 B exchange, close)",
                    *load,
                    "k/s",
                    Line {
                        d: &d,
                        m: &m,
                        u: &u,
                    },
                    &relay(c.relay.values(), "k/s"),
                    t,
                );
            }
        }
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).cloned().ok_or("--only needs a row"))
        .transpose()?;
    const KEYS: [&str; 4] = ["64KiB", "1KiB", "rtt", "conn"];
    if let Some(o) = &only {
        if !KEYS.contains(&o.as_str()) {
            return Err(format!("--only {o}: not one of {}", KEYS.join(", ")).into());
        }
    }
    let wanted = |key: &str| only.as_deref().is_none_or(|o| o == key);
    let sizes = match std::env::var("ARCA_BENCH_SHORT").as_deref() {
        Err(_) | Ok("" | "0") => FULL,
        Ok(_) => SHORT,
    };
    let loads: &[Load] = match std::env::var("ARCA_BENCH_LOAD").as_deref() {
        Err(_) | Ok("") => &[Load::Quiet, Load::Loaded],
        Ok("quiet") => &[Load::Quiet],
        Ok("loaded") => &[Load::Loaded],
        Ok(other) => {
            return Err(format!("ARCA_BENCH_LOAD={other}: expected quiet or loaded").into())
        }
    };
    match std::env::var("ARCA_BENCH_SIDE").as_deref() {
        Err(_) | Ok("" | "direct" | "monitor" | "unconfined" | "relay") => {}
        Ok(other) => {
            return Err(format!(
                "ARCA_BENCH_SIDE={other}: expected direct, monitor, unconfined or relay"
            )
            .into())
        }
    }

    let servers = servers()?;
    let unconfined = match std::env::var("ARCA_BENCH_UNCONFINED").as_deref() {
        Ok("0") => None,
        _ => Some(monitor(false)?),
    };
    let (monitor, session) = monitor(true)?;
    let rig = Rig {
        relay_sink: socat(servers.sink),
        relay_echo: socat(servers.echo),
        servers,
        monitor,
        session,
        unconfined,
        sizes,
    };
    println!(
        "TCP through arca-monitor (its own process) vs direct loopback, quiet and beside a \
         busy-loop process per CPU ({} rounds, medians; ratio: median of the per-round \
         monitor ÷ direct ratios, range in brackets; confined ÷ unconfined: the default \
         monitor over one run with --no-confine)\n",
        sizes.rounds
    );
    println!(
        "| measure | load | direct | monitor | unconfined | socat relay | monitor ÷ direct | \
         confined ÷ unconfined | target | met? |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (write, key, label) in [
        (64 << 10, "64KiB", "64 KiB writes"),
        (1 << 10, "1KiB", "1 KiB writes"),
    ] {
        if wanted(key) {
            print_row(Kind::Bulk, label, &rig.row(Kind::Bulk, write, loads)?);
        }
    }
    if wanted("rtt") {
        print_row(
            Kind::RoundTrip,
            "64 B round trip",
            &rig.row(Kind::RoundTrip, 64, loads)?,
        );
    }
    if wanted("conn") {
        print_row(
            Kind::Connections,
            "connections",
            &rig.row(Kind::Connections, 64, loads)?,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os("ARCA_BENCH_SERVER_ROLE").is_some() {
        serve_servers();
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp bench: {e}");
            ExitCode::FAILURE
        }
    }
}
