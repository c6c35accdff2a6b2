//! Unmodified programs under `arca-monitor run --isolate --net stack`: `plain-net` (a
//! `std::net` program built with this package, not linked to arca), and curl and python3
//! when the machine has them, reaching servers on the host's loopback through the gateway
//! address 10.0.2.2 (fd00:a7ca::2 for IPv6) that the guest-side stack maps to 127.0.0.1 (::1).
//!
//! Cases: an HTTP exchange (IPv4, IPv6, curl, python3) with the bytes checked; a refused
//! connect and a policy-denied one, each `ECONNREFUSED` promptly; half-close both ways;
//! 64 MiB each way with checksums; a slow guest reader holding the host writer back;
//! UDP echo (IPv4 and IPv6) with replies from the original destination.
//!
//! Needs root or unprivileged namespaces, and `/dev/net/tun` (prints `SKIPPED: …`
//! otherwise). The monitor binary comes from the test's target directory (built with
//! `$CARGO` if missing; `cargo test --test netstack` alone runs whatever is there, so rebuild
//! first: `cargo build --release -p arca-monitor`). Tests run one at a time. Every wait is
//! bounded; every child dies with its guard.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_testkit::bins::{cargo_build, monitor_bin, profile_dir};
use arca_testkit::child::{describe, Proc};
use arca_testkit::monitor_proc::isolation_available;
use sha2::{Digest, Sha256};

static SERIAL: Mutex<()> = Mutex::new(());

/// The monitor binary, or `None` (with a SKIPPED line) when the stack cannot run here.
fn setup() -> Option<(MutexGuard<'static, ()>, PathBuf)> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(why) = isolation_available() {
        eprintln!("SKIPPED: {why}; the netstack tests run under `arca-monitor run --isolate --net stack` and cannot run here");
        return None;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!(
            "SKIPPED: no /dev/net/tun; the guest-side stack needs a TUN device and cannot run here"
        );
        return None;
    }
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN
        .get_or_init(|| {
            let bin = monitor_bin();
            if !bin.exists() {
                let dir = profile_dir()?;
                cargo_build(
                    &dir,
                    &["-p", "arca-monitor", "--bin", "arca-monitor"],
                    Duration::from_secs(1200),
                )?;
            }
            Ok(bin)
        })
        .clone()
        .unwrap_or_else(|e| panic!("arca-monitor binary: {e}"));
    Some((guard, bin))
}

/// FNV-1a 64, as `plain-net` prints it.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Runs `PROGRAM ARGS` under `run --isolate --net stack` (with `policy` if given), bounded
/// to `limit`; returns its status and stdout.
fn guest(bin: &Path, policy: Option<&Path>, program: &[&str], limit: Duration) -> (String, String) {
    let mut extra = Vec::new();
    if let Some(p) = policy {
        extra.push("--policy".into());
        extra.push(p.as_os_str().to_owned());
    }
    guest_with(bin, &extra, program, limit)
}

/// [`guest`] with `extra` arguments for `arca-monitor run`.
fn guest_with(
    bin: &Path,
    extra: &[std::ffi::OsString],
    program: &[&str],
    limit: Duration,
) -> (String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--isolate", "--net", "stack"]).args(extra);
    cmd.arg("--")
        .args(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut p = Proc::spawn("guest", &mut cmd).expect("spawn arca-monitor");
    let mut out = p.child_mut().stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let st = p
        .wait(Instant::now() + limit)
        .unwrap_or_else(|e| panic!("{program:?}: {e}"));
    let text = reader.join().expect("stdout reader");
    (describe(st), text.trim().to_string())
}

/// An unmodified program's name lookups (getaddrinfo, through the guest's private
/// resolv.conf) are answered by the stack with the monitor's resolution: the names the
/// monitor's resolver knows, and none it does not.
#[test]
fn names_resolve_through_the_monitor() {
    use arca_testkit::dns::{FakeDns, Record};
    let Some((_g, bin)) = setup() else { return };
    let dns = FakeDns::start(&[(
        "svc.arca.test",
        Record::Addrs {
            v4: vec!["192.0.2.10".parse().unwrap()],
            v6: vec!["2001:db8::10".parse().unwrap()],
            ttl: 60,
        },
    )]);
    let extra = ["--resolver".into(), dns.addr().to_string().into()];
    let (st, out) = guest_with(
        &bin,
        &extra,
        &[plain_net(), "lookup", "svc.arca.test"],
        Duration::from_secs(20),
    );
    assert_eq!(st, "exit 0", "{out}");
    assert_eq!(out, "addrs 192.0.2.10 2001:db8::10");
    assert!(
        dns.queries("svc.arca.test") >= 1,
        "the monitor asked the server"
    );
    let (st, out) = guest_with(
        &bin,
        &extra,
        &[plain_net(), "lookup", "nowhere.arca.test"],
        Duration::from_secs(20),
    );
    assert_eq!(st, "exit 1", "{out}");
    assert!(out.starts_with("err "), "{out}");
}

fn plain_net() -> &'static str {
    env!("CARGO_BIN_EXE_plain-net")
}

/// A loopback listener accepting up to `conns` connections within `limit`, each served by
/// `serve` on its own thread; the handle returns what each `serve` returned.
fn server<T: Send + 'static>(
    v6: bool,
    conns: usize,
    limit: Duration,
    serve: impl Fn(TcpStream) -> T + Send + Sync + 'static,
) -> (u16, JoinHandle<Vec<T>>) {
    let l = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let serve = Arc::new(serve);
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut workers = Vec::new();
        while workers.len() < conns && Instant::now() < deadline {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(limit)).expect("timeout");
                    s.set_write_timeout(Some(limit)).expect("timeout");
                    let serve = Arc::clone(&serve);
                    workers.push(std::thread::spawn(move || serve(s)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("server worker"))
            .collect()
    });
    (port, h)
}

/// Deterministic bytes for a body.
fn body(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn http_reply(mut s: TcpStream, body: &[u8]) -> bool {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).is_ok() && s.write_all(body).is_ok()
}

#[test]
fn http_exchange_with_a_host_server() {
    let Some((_g, bin)) = setup() else { return };
    let data = Arc::new(body(1 << 20));
    let mut want = Fnv::new();
    want.update(&data);
    let sha = format!("{:x}", Sha256::digest(&*data));

    for (v6, gw) in [(false, "10.0.2.2"), (true, "[fd00:a7ca::2]")] {
        let d = Arc::clone(&data);
        let (port, h) = server(v6, 1, Duration::from_secs(30), move |s| http_reply(s, &d));
        let (st, out) = guest(
            &bin,
            None,
            &[plain_net(), "http", &format!("{gw}:{port}"), "/blob"],
            Duration::from_secs(30),
        );
        assert_eq!(st, "exit 0", "plain-net http via {gw}: {out}");
        assert_eq!(
            out,
            format!("status 200 body {} {}", data.len(), want.hex())
        );
        assert_eq!(h.join().expect("server"), vec![true]);
    }

    let tools = [
        ("curl", "curl -sS --max-time 20 http://10.0.2.2:{PORT}/blob | sha256sum"),
        (
            "python3",
            "python3 -c \"import urllib.request,hashlib;print(hashlib.sha256(urllib.request.urlopen('http://10.0.2.2:{PORT}/blob',timeout=20).read()).hexdigest())\"",
        ),
    ];
    for (tool, script) in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("SKIPPED part: {tool} is not installed");
            continue;
        }
        let d = Arc::clone(&data);
        let (port, h) = server(false, 1, Duration::from_secs(30), move |s| {
            http_reply(s, &d)
        });
        let script = script.replace("{PORT}", &port.to_string());
        let (st, out) = guest(&bin, None, &["sh", "-c", &script], Duration::from_secs(30));
        assert_eq!(st, "exit 0", "{tool}: {out}");
        assert!(out.starts_with(&sha), "{tool} fetched other bytes: {out}");
        assert_eq!(h.join().expect("server"), vec![true]);
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn assert_refused_fast(out: &str, what: &str) {
    let mut w = out.split_whitespace();
    assert_eq!(w.next(), Some("err"), "{what}: {out}");
    assert_eq!(w.next(), Some("ConnectionRefused"), "{what}: {out}");
    let ms: u64 = w.next().and_then(|m| m.parse().ok()).expect("milliseconds");
    assert!(ms < 1000, "{what}: refused only after {ms} ms");
}

#[test]
fn a_refused_connect_is_econnrefused_at_once() {
    let Some((_g, bin)) = setup() else { return };
    let port = closed_port();
    let t = Instant::now();
    let (st, out) = guest(
        &bin,
        None,
        &[plain_net(), "connect", &format!("10.0.2.2:{port}")],
        Duration::from_secs(20),
    );
    assert_eq!(st, "exit 1", "{out}");
    assert_refused_fast(&out, "closed port");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The stack's own network other than the gateway is never relayed: refused too.
    let (_, out) = guest(
        &bin,
        None,
        &[plain_net(), "connect", "10.0.2.77:80"],
        Duration::from_secs(20),
    );
    assert_refused_fast(&out, "the stack's own network");
}

#[test]
fn a_policy_denied_connect_is_refused_and_never_reaches_the_host() {
    let Some((_g, bin)) = setup() else { return };
    let (port, h) = server(false, 1, Duration::from_secs(3), |_s| ());
    let dir = std::env::temp_dir().join(format!("arca-netstack-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("deny.toml");
    std::fs::write(
        &policy,
        format!(
            "[[outbound]]\naction = \"deny\"\nnets = [\"127.0.0.1\"]\nports = [{port}]\n\n\
             [[outbound]]\naction = \"allow\"\nnets = [\"0.0.0.0/0\", \"::/0\"]\n"
        ),
    )
    .expect("policy");
    let (st, out) = guest(
        &bin,
        Some(&policy),
        &[plain_net(), "connect", &format!("10.0.2.2:{port}")],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(st, "exit 1", "{out}");
    assert_refused_fast(&out, "denied by policy");
    assert!(
        h.join().expect("server").is_empty(),
        "the host saw a connection"
    );
}

/// Reads to EOF, hashing; returns (bytes, hash).
fn drain(s: &mut TcpStream) -> (u64, Fnv) {
    let mut h = Fnv::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, h),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) => panic!("server read: {e}"),
        }
    }
}

#[test]
fn half_close_works_both_ways() {
    let Some((_g, bin)) = setup() else { return };
    // The host closes first: the guest reads to EOF, then still sends.
    let greeting = Arc::new(body(100_000));
    let mut gh = Fnv::new();
    gh.update(&greeting);
    let g = Arc::clone(&greeting);
    let (port, h) = server(false, 1, Duration::from_secs(30), move |mut s| {
        s.write_all(&g).expect("greeting");
        s.shutdown(Shutdown::Write).expect("shutdown");
        drain(&mut s)
    });
    let (st, out) = guest(
        &bin,
        None,
        &[
            plain_net(),
            "fin-first",
            &format!("10.0.2.2:{port}"),
            "300000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(st, "exit 0", "{out}");
    let (n, sh) = h.join().expect("server").pop().expect("one connection");
    assert_eq!(n, 300_000, "the host got {n} bytes; the guest says {out}");
    assert_eq!(
        out,
        format!(
            "got {} {} sent 300000 {}",
            greeting.len(),
            gh.hex(),
            sh.hex()
        )
    );
    assert_eq!(n, 300_000);

    // The guest closes first: the host reads to EOF, then answers with all it got.
    let (port, h) = server(false, 1, Duration::from_secs(30), |mut s| {
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read to EOF");
        s.write_all(&all).expect("answer after the guest's FIN");
        all.len()
    });
    let (st, out) = guest(
        &bin,
        None,
        &[plain_net(), "echo", &format!("10.0.2.2:{port}"), "1000000"],
        Duration::from_secs(30),
    );
    assert_eq!(st, "exit 0", "{out}");
    let w: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(w.first(), Some(&"sent"), "{out}");
    assert_eq!((w[1], w[4]), ("1000000", "1000000"), "{out}");
    assert_eq!(w[2], w[5], "the answer differs from what was sent: {out}");
    assert_eq!(h.join().expect("server"), vec![1_000_000]);
}

#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    let Some((_g, bin)) = setup() else { return };
    const TOTAL: u64 = 64 << 20;
    let (port, h) = server(false, 1, Duration::from_secs(120), |mut s| {
        let mut w = s.try_clone().expect("clone");
        let mut h = Fnv::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = s.read(&mut buf).expect("server read");
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
            w.write_all(&buf[..k]).expect("server write");
        }
        w.shutdown(Shutdown::Write).expect("shutdown");
        (n, h.hex())
    });
    let t = Instant::now();
    let (st, out) = guest(
        &bin,
        None,
        &[
            plain_net(),
            "echo",
            &format!("10.0.2.2:{port}"),
            &TOTAL.to_string(),
        ],
        Duration::from_secs(120),
    );
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(st, "exit 0", "{out}");
    let (n, server_hash) = h.join().expect("server").pop().expect("one connection");
    assert_eq!(n, TOTAL);
    assert_eq!(
        out,
        format!("sent {TOTAL} {server_hash} received {TOTAL} {server_hash}")
    );
    eprintln!(
        "64 MiB each way through the stack in {secs:.2} s ({:.0} MiB/s per direction, with start-up)",
        64.0 / secs
    );
}

/// The resident memory (KiB) of the guest-side stack: the monitor's child.
fn stack_rss_kib(monitor_pid: u32) -> Option<u64> {
    let children =
        std::fs::read_to_string(format!("/proc/{monitor_pid}/task/{monitor_pid}/children")).ok()?;
    let pid = children.split_whitespace().next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn a_slow_guest_reader_holds_the_host_writer_back() {
    let Some((_g, bin)) = setup() else { return };
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let (port, h) = server(false, 1, Duration::from_secs(60), move |mut s| {
        let chunk = body(64 * 1024);
        // Bounded: the guest stops reading long before 1 GiB.
        for _ in 0..(1 << 14) {
            if s.write_all(&chunk).is_err() {
                break;
            }
            w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    // 16 KiB every 20 ms for 150 ticks: 2.4 MiB in about 3 s.
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--isolate", "--net", "stack", "--"])
        .args([
            plain_net(),
            "slow",
            &format!("10.0.2.2:{port}"),
            "16384",
            "150",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut p = Proc::spawn("guest", &mut cmd).expect("spawn");
    let mut peak_rss = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(kib) = stack_rss_kib(p.id()) {
            peak_rss = peak_rss.max(kib);
        }
        if let Some(st) = p.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the slow reader did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    p.child_mut()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    assert_eq!(describe(st), "exit 0", "{out}");
    assert_eq!(out.trim(), format!("read {}", 16384 * 150));
    drop(h.join());
    let sent = written.load(Ordering::Relaxed);
    let read = 16384u64 * 150;
    // What the host could write beyond what the guest read is what the buffers on the way
    // hold: the host's socket buffer, the arca ring, one chunk and smoltcp's send buffer in
    // the stack, and the guest kernel's receive buffer: a few MiB, not the 1 GiB on offer.
    assert!(
        sent < read + (32 << 20),
        "the host wrote {sent} bytes while the guest read {read}"
    );
    eprintln!(
        "slow reader: host wrote {} KiB while the guest read {} KiB; stack peak RSS {peak_rss} KiB",
        sent >> 10,
        read >> 10
    );
    assert!(peak_rss > 0, "never saw the stack process");
    assert!(peak_rss < 64 * 1024, "the stack grew to {peak_rss} KiB");
}

fn udp_echo_server(v6: bool) -> (u16, Arc<AtomicBool>, JoinHandle<u64>) {
    let u = UdpSocket::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).expect("bind");
    let port = u.local_addr().expect("addr").port();
    u.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let h = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((k, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..k], from);
                n += 1;
            }
        }
        n
    });
    (port, stop, h)
}

#[test]
fn udp_echo_through_the_stack() {
    let Some((_g, bin)) = setup() else { return };
    for (v6, gw) in [(false, "10.0.2.2"), (true, "[fd00:a7ca::2]")] {
        let (port, stop, h) = udp_echo_server(v6);
        let (st, out) = guest(
            &bin,
            None,
            &[plain_net(), "udp", &format!("{gw}:{port}"), "200", "1200"],
            Duration::from_secs(60),
        );
        stop.store(true, Ordering::Relaxed);
        let seen = h.join().expect("udp server");
        assert_eq!(st, "exit 0", "{out}");
        assert_eq!(out, "udp sent 200 echoed 200", "via {gw}");
        assert_eq!(seen, 200);
    }
}

#[test]
fn a_stop_signal_reaches_the_program_behind_the_stack() {
    let Some((_g, bin)) = setup() else { return };
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--isolate", "--net", "stack", "--", "sleep", "30"])
        .stdin(Stdio::null());
    let mut p = Proc::spawn("guest", &mut cmd).expect("spawn");
    // Let the stack start the program, then stop the monitor as a shell would.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let st = p
        .wait(Instant::now() + Duration::from_secs(8))
        .expect("the program did not stop");
    assert_eq!(
        describe(st),
        "exit 143",
        "SIGTERM should end `sleep` (128 + 15)"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The children of `pid` (first thread), from `/proc`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_program_killed_mid_transfer_ends_the_run_and_the_host_connection() {
    let Some((_g, bin)) = setup() else { return };
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    let (port, h) = server(false, 1, Duration::from_secs(30), move |mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        // Until the connection ends: EOF or reset, never a hang (the read timeout fails it).
        loop {
            match s.read(&mut buf) {
                Ok(0) => return "eof",
                Ok(n) => {
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset",
                Err(e) => panic!("server read: {e}"),
            }
        }
    });
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--isolate", "--net", "stack", "--"])
        .args([
            plain_net(),
            "echo",
            &format!("10.0.2.2:{port}"),
            &(1u64 << 40).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut p = Proc::spawn("guest", &mut cmd).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < (8 << 20) {
        assert!(Instant::now() < deadline, "the transfer never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let program = children(p.id())
        .into_iter()
        .flat_map(children)
        .next()
        .expect("the program under the stack");
    // SAFETY: kill(2) has no memory-safety preconditions; `program` is a live grandchild.
    unsafe { libc::kill(i32::try_from(program).expect("pid"), libc::SIGKILL) };
    let st = p
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("run did not end after its program was killed");
    assert_eq!(describe(st), "exit 137", "128 + SIGKILL");
    let ends = h.join().expect("server");
    assert_eq!(ends.len(), 1);
}

#[test]
fn an_unprivileged_user_gets_root_inside_or_a_clear_tun_error() {
    let Some((_g, bin)) = setup() else { return };
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nix::unistd::geteuid().is_root() || !has_setpriv {
        eprintln!("SKIPPED: needs root and setpriv to start the monitor as another user");
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--isolate", "--net", "stack", "--", "id", "-u"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = Proc::spawn("unprivileged guest", &mut cmd).expect("spawn");
    let st = p
        .wait(Instant::now() + Duration::from_secs(20))
        .expect("run as nobody");
    let mut out = String::new();
    let mut err = String::new();
    let c = p.child_mut();
    c.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    c.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    if err.contains("creating the TUN device") {
        // This system keeps /dev/net/tun from other users: the stack must say so.
        assert!(err.contains("/dev/net/tun"), "{err}");
        assert_eq!(describe(st), "exit 1", "{err}");
        eprintln!("SKIPPED part: /dev/net/tun is not usable by other users here");
    } else {
        // The user namespace maps nobody to root inside, which the stack needs.
        assert_eq!(describe(st), "exit 0", "{err}");
        assert_eq!(out.trim(), "0", "{err}");
    }
}
