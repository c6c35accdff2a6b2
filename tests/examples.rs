//! The examples of the README's "Use it from your program", run for real: each example binary
//! as a guest of a real `arca-monitor` process (`run -- EXAMPLE …`, or `serve --socket` for
//! `attach_guest`), against host sockets on loopback, with its output checked. Bad arguments
//! get a usage error and exit status 2.
//!
//! The binaries come from the test's own target directory (`cargo test --workspace` builds
//! them). When one is missing, or an example's source is newer than its binary, they are built
//! with `$CARGO` first; after changing the `arca` library alone, rebuild before running this
//! file on its own (`cargo build --release -p arca-monitor -p arca-suite --bins --examples`).
//! Every wait is bounded; every child dies with its guard.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arca_testkit::bins::{cargo_build, profile_dir};
use arca_testkit::child::{describe, Proc};
use arca_testkit::monitor_proc::{socket_path, wait_for_socket};

/// Upper bound for any single step (a line to appear, a process to exit, a reply).
const STEP: Duration = Duration::from_secs(30);
const EXAMPLES: [&str; 4] = ["http_get", "tokio_server", "udp_echo", "attach_guest"];

struct Bins {
    monitor: PathBuf,
    examples: PathBuf,
}

impl Bins {
    fn example(&self, name: &str) -> PathBuf {
        self.examples.join(name)
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn locate_or_build() -> Result<Bins, String> {
    let dir = profile_dir()?;
    let bins = Bins {
        monitor: dir.join("arca-monitor"),
        examples: dir.join("examples"),
    };
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let outdated = |name: &str| match modified(&bins.example(name)) {
        None => true,
        Some(built) => modified(&sources.join(format!("{name}.rs"))).is_some_and(|s| s > built),
    };
    if bins.monitor.is_file() && !EXAMPLES.iter().any(|n| outdated(n)) {
        return Ok(bins);
    }
    eprintln!(
        "examples or arca-monitor missing or outdated in {}: building them",
        dir.display()
    );
    let mut args = vec![
        "-p",
        "arca-monitor",
        "-p",
        "arca-suite",
        "--bin",
        "arca-monitor",
    ];
    for name in EXAMPLES {
        args.extend(["--example", name]);
    }
    cargo_build(&dir, &args, Duration::from_secs(1200))?;
    match EXAMPLES.iter().find(|n| outdated(n)) {
        Some(n) => Err(format!("cargo build succeeded but example {n} is missing")),
        None => Ok(bins),
    }
}

fn bins() -> &'static Bins {
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(locate_or_build)
        .as_ref()
        .unwrap_or_else(|e| panic!("example binaries: {e}"))
}

/// A child with its stdout delivered line by line and both streams kept whole.
struct Running {
    proc: Proc,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// One message per stream at its EOF.
    eof: Receiver<()>,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn collect(
    stream: impl Read + Send + 'static,
    text: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
    eof: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        // Ends at EOF, which comes at the latest when the guard kills the process group.
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).into_owned();
            text.lock().unwrap().push_str(&line);
            if let Some(tx) = &lines {
                let _ = tx.send(line.trim_end().to_owned());
            }
            buf.clear();
        }
        let _ = eof.send(());
    });
}

impl Running {
    fn spawn(name: &str, program: &Path, args: &[&str]) -> Running {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("ARCA_FD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        let (out, err) = {
            let c = proc.child_mut();
            (c.stdout.take().unwrap(), c.stderr.take().unwrap())
        };
        let (line_tx, lines) = mpsc::channel();
        let (eof_tx, eof) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(out, Arc::clone(&stdout), Some(line_tx), eof_tx.clone());
        collect(err, Arc::clone(&stderr), None, eof_tx);
        Running {
            proc,
            lines,
            stdout,
            stderr,
            eof,
        }
    }

    /// An example as a guest of `arca-monitor run`.
    fn guest(example: &str, args: &[&str]) -> Running {
        let bins = bins();
        let guest = bins.example(example);
        let mut full = vec!["run", "--", guest.to_str().unwrap()];
        full.extend_from_slice(args);
        Running::spawn(
            &format!("arca-monitor run -- {example}"),
            &bins.monitor,
            &full,
        )
    }

    /// An example on its own (no monitor).
    fn bare(example: &str, args: &[&str]) -> Running {
        Running::spawn(example, &bins().example(example), args)
    }

    /// Waits for the next stdout line starting with `prefix` (skipping others) and returns
    /// the rest of it.
    fn line(&self, prefix: &str) -> String {
        let end = Instant::now() + STEP;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "{}: no line `{prefix}…` within {STEP:?}; stdout:\n{}\nstderr:\n{}",
                    self.proc.name(),
                    self.stdout.lock().unwrap(),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for the process to exit and both streams to end.
    fn finish(mut self) -> Finished {
        let end = Instant::now() + STEP;
        let status = self.proc.wait(end).unwrap_or_else(|e| {
            panic!(
                "{e}; stdout:\n{}\nstderr:\n{}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            )
        });
        for _ in 0..2 {
            let left = end.saturating_duration_since(Instant::now());
            self.eof
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: output did not end", self.proc.name()));
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Finished {
    fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {}; stdout:\n{}\nstderr:\n{}",
            describe(self.status),
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{what}: {}", self.stderr);
    }
}

/// A one-shot HTTP server on 127.0.0.1:0: answers the first request with `response` and hands
/// back the request head it read.
fn http_server(response: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let end = Instant::now() + STEP;
        let mut c = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("http server accept: {e}"),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(STEP)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            c.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        c.write_all(response).unwrap();
        String::from_utf8(head).unwrap()
    });
    (addr, server)
}

#[test]
fn http_get_prints_the_whole_response() {
    const RESPONSE: &[u8] =
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\r\nhello through arca\n";
    let (addr, server) = http_server(RESPONSE);
    let target = addr.to_string();
    let done = Running::guest("http_get", &[&target, "/greeting"]).finish();
    done.assert_success("http_get");
    assert_eq!(done.stdout.as_bytes(), RESPONSE, "stdout is the response");
    let head = server.join().unwrap();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("GET /greeting HTTP/1.0"));
    assert!(
        head.contains("\r\nHost: 127.0.0.1\r\n"),
        "Host header in {head:?}"
    );
    assert!(
        done.stderr.contains(&format!("-> {addr}")),
        "{}",
        done.stderr
    );
}

#[test]
fn http_get_to_a_closed_port_fails_clearly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let done = Running::guest("http_get", &[&target]).finish();
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("http_get:") && done.stderr.contains(&target),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
}

#[test]
fn tokio_server_echoes_lines_on_each_connection() {
    let server = Running::guest("tokio_server", &["127.0.0.1:0", "2"]);
    let addr: SocketAddr = server.line("tokio_server: listening on ").parse().unwrap();
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(STEP)).unwrap();
                let sent = format!("client {i}\nsecond line\nthird, the last\n");
                c.write_all(sent.as_bytes()).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = String::new();
                c.read_to_string(&mut back).unwrap();
                assert_eq!(back, sent, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let done = server.finish();
    done.assert_success("tokio_server");
    assert_eq!(
        done.stdout.matches(": echoed 3 lines").count(),
        2,
        "{}",
        done.stdout
    );
}

#[test]
fn udp_echo_sends_each_datagram_back() {
    let guest = Running::guest("udp_echo", &["127.0.0.1:0", "--count", "2"]);
    let addr: SocketAddr = guest.line("udp_echo: bound ").parse().unwrap();
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 2048];
    for payload in [&b"first datagram"[..], &[0xa5; 1400][..]] {
        host.send_to(payload, addr).unwrap();
        let (n, from) = host.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (addr, payload));
    }
    let done = guest.finish();
    done.assert_success("udp_echo");
    let me = host.local_addr().unwrap();
    assert!(
        done.stdout.contains(&format!("echoed 14 bytes to {me}"))
            && done.stdout.contains(&format!("echoed 1400 bytes to {me}")),
        "{}",
        done.stdout
    );
}

#[test]
fn udp_echo_answers_a_multicast_group() {
    static N: AtomicUsize = AtomicUsize::new(0);
    let group = Ipv4Addr::new(239, 255, 44, 1 + N.fetch_add(1, Ordering::Relaxed) as u8);
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("0.0.0.0:{port}");
    let group_arg = group.to_string();
    let guest = Running::guest(
        "udp_echo",
        &[
            &bind,
            "--join",
            &group_arg,
            "--interface",
            "127.0.0.1",
            "--count",
            "1",
        ],
    );
    assert_eq!(guest.line("udp_echo: bound "), bind);
    assert_eq!(
        guest.line("udp_echo: joined "),
        format!("{group} on 127.0.0.1")
    );
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&host)
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .unwrap();
    host.set_read_timeout(Some(STEP)).unwrap();
    host.send_to(b"to the group", (group, port)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to the group");
    assert_eq!(from.port(), port);
    guest.finish().assert_success("udp_echo --join");
}

#[test]
fn attach_guests_share_one_serving_monitor() {
    let bins = bins();
    let socket = socket_path("examples");
    let _ = std::fs::remove_file(&socket);
    let socket_arg = socket.to_str().unwrap();
    let mut monitor = Running::spawn(
        "arca-monitor serve",
        &bins.monitor,
        &["serve", "--socket", socket_arg],
    );
    wait_for_socket(&socket, monitor.proc.child_mut(), STEP);
    let echo = arca_testkit::servers::echo_server().to_string();
    let guests: Vec<_> = (0..2)
        .map(|_| Running::bare("attach_guest", &[socket_arg, &echo]))
        .collect();
    for g in guests {
        let pid = g.proc.id();
        let done = g.finish();
        done.assert_success("attach_guest");
        assert_eq!(
            done.stdout,
            format!(
                "attach_guest: attached to {socket_arg}\nattach_guest: sent \"hello from attached \
                 guest {pid}\", got back \"hello from attached guest {pid}\"\n"
            )
        );
    }
    monitor.proc.signal(libc::SIGTERM);
    let done = monitor.finish();
    done.assert_success("arca-monitor serve");
    assert!(!socket.exists(), "serve removes its socket on exit");
}

#[test]
fn attach_guest_without_a_monitor_names_the_socket() {
    let missing = socket_path("examples-none");
    let path = missing.to_str().unwrap();
    let done = Running::bare("attach_guest", &[path, "127.0.0.1:9"]).finish();
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.starts_with("attach_guest: arca: attach to ") && done.stderr.contains(path),
        "{}",
        done.stderr
    );
}

#[test]
fn a_guest_example_outside_the_monitor_says_how_to_run_it() {
    for (example, args) in [
        ("http_get", &["127.0.0.1:80"][..]),
        ("tokio_server", &["127.0.0.1:0"][..]),
        ("udp_echo", &["127.0.0.1:0"][..]),
    ] {
        let done = Running::bare(example, args).finish();
        assert_eq!(done.status.code(), Some(1), "{example}: {}", done.stderr);
        assert!(
            done.stderr
                .contains("ARCA_FD is not set (run under `arca-monitor run`)"),
            "{example}: {}",
            done.stderr
        );
    }
}

#[test]
fn bad_arguments_get_a_usage_error() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("http_get", &[], ""),
        (
            "http_get",
            &["example.com"],
            "`example.com` is not HOST:PORT",
        ),
        ("http_get", &["127.0.0.1:99999"], "is not HOST:PORT"),
        (
            "http_get",
            &["127.0.0.1:80", "index.html"],
            "must start with `/`",
        ),
        ("http_get", &["127.0.0.1:80", "/", "extra"], ""),
        ("tokio_server", &[], ""),
        (
            "tokio_server",
            &["localhost"],
            "`localhost` is not an IP:PORT address",
        ),
        (
            "tokio_server",
            &["127.0.0.1:0", "0"],
            "not a positive number",
        ),
        ("udp_echo", &[], "ADDR is missing"),
        (
            "udp_echo",
            &["127.0.0.1:0", "--count"],
            "--count needs a value",
        ),
        (
            "udp_echo",
            &["0.0.0.0:5000", "--join", "10.0.0.1"],
            "not a multicast group",
        ),
        (
            "udp_echo",
            &["0.0.0.0:5000", "--interface", "127.0.0.1"],
            "--interface needs --join",
        ),
        (
            "udp_echo",
            &["0.0.0.0:5000", "--frobnicate"],
            "unknown option `--frobnicate`",
        ),
        ("attach_guest", &["/tmp/arca.sock"], ""),
        (
            "attach_guest",
            &["/tmp/arca.sock", "nowhere"],
            "`nowhere` is not HOST:PORT",
        ),
    ];
    for &(example, args, why) in cases {
        let done = Running::bare(example, args).finish();
        assert_eq!(
            done.status.code(),
            Some(2),
            "{example} {args:?}: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains(&format!("usage: {example} ")) && done.stderr.contains(why),
            "{example} {args:?}: {}",
            done.stderr
        );
        assert!(
            done.stdout.is_empty(),
            "{example} {args:?}: {}",
            done.stdout
        );
    }
}

/// Every `rust` block of the README's "Use it from your program" opens with
/// `// examples/NAME.rs`; its other lines, comments and blank lines aside, must be lines of
/// that example, in the same order.
#[test]
fn the_readme_snippets_are_taken_from_the_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("\n## Use it from your program\n")
        .expect("README has the section");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let mut blocks = 0;
    let mut rest = section;
    while let Some(open) = rest.find("```rust\n") {
        let body = &rest[open + "```rust\n".len()..];
        let close = body.find("```").expect("block is closed");
        let mut lines = body[..close].lines();
        let head = lines.next().unwrap_or_default();
        let file = head
            .strip_prefix("// ")
            .and_then(|h| h.split(':').next())
            .filter(|f| f.starts_with("examples/") && f.ends_with(".rs"))
            .unwrap_or_else(|| panic!("block opens with `{head}`, not `// examples/NAME.rs`"));
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        let mut source_lines = source.lines().map(str::trim);
        for line in lines.map(str::trim) {
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            assert!(
                source_lines.any(|s| s == line),
                "README line `{line}` is not in {file} (after the lines before it)"
            );
        }
        blocks += 1;
        rest = &body[close + 3..];
    }
    assert_eq!(blocks, 4, "one block per example");
}
