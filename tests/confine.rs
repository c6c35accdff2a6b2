//! The monitor confines itself once set up (SECURITY.md): a forbidden call
//! stops it with a line naming the call, Landlock refuses a file read, its privileges are
//! gone (`/proc/PID/status`), and it still serves guests — as `serve --user nobody` too.
//!
//! The monitor binary is the `confine-test` build (this package enables the feature; it is
//! rebuilt with it when another test run left one without), whose `ARCA_CONFINE_TEST`
//! makes it attempt a forbidden call once confined. Each attempt also runs with
//! `--no-confine`, where it must succeed: that is what shows the confined run's refusal
//! comes from the confinement. Every wait is bounded; every child dies with its guard.

use std::io::{Read, Write};
use std::net::{Shutdown, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_testkit::bins::{cargo_build, monitor_bin, profile_dir};
use arca_testkit::child::{describe, Proc};
use arca_testkit::monitor_proc::{socket_path, wait_for_socket};
use arca_testkit::raw_guest::{listen_and_accept, RawGuest};
use arca_testkit::servers::echo_server;
use arca_testkit::wait::wait_until;
use arca_testkit::STEP;
use arca_wire::{FrameHeader, MessageType, RequestId, MAX_FRAME_PAYLOAD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The status of a monitor the seccomp filter stopped: 128 + SIGSYS from its handler, or
/// SIGSYS itself when the call was made with the signal blocked (the kernel then kills).
fn stopped_by_filter(st: ExitStatus) -> bool {
    st.code() == Some(128 + libc::SIGSYS) || st.signal() == Some(libc::SIGSYS)
}

/// The `confine-test` monitor binary, built once per run of this file.
fn monitor() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = profile_dir()?;
            cargo_build(
                &dir,
                &[
                    "-p",
                    "arca-monitor",
                    "--bin",
                    "arca-monitor",
                    "--features",
                    "confine-test",
                ],
                Duration::from_secs(1200),
            )?;
            Ok(monitor_bin())
        })
        .clone()
        .unwrap_or_else(|e| panic!("confine-test monitor: {e}"))
}

/// A `serve` monitor with its stderr collected as it comes.
struct Served {
    proc: Proc,
    path: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// `serve --socket PATH EXTRA...` with `ARCA_CONFINE_TEST=attempt` (when given); does
    /// not wait for the socket (a monitor stopped by its filter never makes it).
    fn start(name: &str, extra: &[&str], attempt: Option<&str>) -> Served {
        let path = socket_path(name);
        let mut cmd = Command::new(monitor());
        cmd.arg("serve")
            .arg("--socket")
            .arg(&path)
            .args(extra)
            .env("ARCA_LOG", "info")
            .env_remove("ARCA_CONFINE_TEST")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(a) = attempt {
            cmd.env("ARCA_CONFINE_TEST", a);
        }
        let mut proc = Proc::spawn(name, &mut cmd).expect("spawn arca-monitor");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = proc.child_mut().stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned();
                sink.lock().unwrap().push_str(&text);
            }
        });
        Served { proc, path, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `needle`; panics with what it holds otherwise.
    fn wait_for_line(&self, needle: &str) {
        if !wait_until(STEP, || self.stderr().contains(needle)) {
            panic!("no {needle:?} from the monitor; stderr:\n{}", self.stderr());
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let st = self
            .proc
            .wait(Instant::now() + STEP)
            .unwrap_or_else(|e| panic!("{e}; stderr:\n{}", self.stderr()));
        // The reader thread sees EOF once the process is gone; give it the tail.
        wait_until(Duration::from_secs(2), || {
            Arc::strong_count(&self.stderr) == 1
        });
        st
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// `/proc/PID/status` field `name`, trimmed.
    fn status_field(&self, name: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.proc.id()))
            .expect("monitor's /proc status");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in /proc status"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A TCP round trip and a UDP one through the monitor at `path`.
fn serve_a_guest(path: &Path) {
    let s = ArcaSession::attach(path).expect("attach");
    let addr = echo_server();
    let mut c = s.connect(addr).expect("connect through the monitor");
    c.set_read_timeout(Some(STEP)).unwrap();
    let msg = b"through a confined monitor";
    c.write_all(msg).unwrap();
    let mut back = [0u8; 26];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, msg);
    c.shutdown(Shutdown::Write).unwrap();

    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(STEP)).unwrap();
    let u = s.bind_udp("127.0.0.1:0").expect("udp bind");
    u.send_to(b"datagram", host.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = host.recv_from(&mut buf).expect("datagram from the guest");
    assert_eq!(buf.get(..n), Some(&b"datagram"[..]));
    host.send_to(b"reply", from).unwrap();
    u.set_read_timeout(Some(STEP)).unwrap();
    let (n, _) = u.recv_from(&mut buf).expect("reply to the guest");
    assert_eq!(buf.get(..n), Some(&b"reply"[..]));

    let l = s.bind("127.0.0.1:0").expect("listen through the monitor");
    let mut host_side = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut accepted, _) = l.accept().expect("accept through the monitor");
    host_side.write_all(b"in").unwrap();
    let mut two = [0u8; 2];
    accepted.set_read_timeout(Some(STEP)).unwrap();
    accepted.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"in");
}

#[test]
fn forbidden_calls_stop_the_confined_monitor_with_a_line_naming_them() {
    // (attempt, the call named in the line; None where the call is made with SIGSYS
    // blocked, as inside posix_spawn, and the kernel kills without a handler)
    let cases = [
        ("execve", Some("execve")),
        ("ptrace", Some("ptrace")),
        ("socket-packet", Some("socket")),
        ("socket-netlink", Some("socket")),
        ("socket-unix", Some("socket")),
        ("fork", None),
    ];
    for (attempt, call) in cases {
        let mut m = Served::start("confine-forbidden", &[], Some(attempt));
        let st = m.wait_exit();
        let err = m.stderr();
        assert!(
            stopped_by_filter(st),
            "{attempt}: monitor ended with {}; stderr:\n{err}",
            describe(st)
        );
        if let Some(call) = call {
            let line = format!("forbidden system call {call} (");
            assert!(err.contains(&line), "{attempt}: no {line:?} in:\n{err}");
        }
        assert!(
            !err.contains(&format!("confine-test: {attempt}:")),
            "{attempt} returned to the monitor:\n{err}"
        );
    }
}

/// Opening a file is answered `EACCES`, as Landlock answers it, not stopped:
/// glibc opens files of its own accord (malloc, when a worker thread's heap
/// shrinks as it ends). The monitor goes on serving and stops cleanly.
#[test]
fn opening_a_file_is_refused_and_the_monitor_goes_on() {
    let mut m = Served::start("confine-open", &[], Some("open"));
    m.wait_for_line("confine-test: open: Permission denied");
    wait_for_socket(&m.path.clone(), m.proc.child_mut(), STEP);
    serve_a_guest(&m.path);
    let st = m.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "{}; stderr:\n{}",
        describe(st),
        m.stderr()
    );
}

#[test]
fn the_same_calls_succeed_unconfined() {
    for attempt in ["open", "ptrace", "socket-netlink", "socket-unix", "fork"] {
        let mut m = Served::start("confine-control", &["--no-confine"], Some(attempt));
        m.wait_for_line(&format!("confine-test: {attempt}: ok"));
        assert!(
            m.stderr().contains("NOT CONFINED"),
            "--no-confine is not loud:\n{}",
            m.stderr()
        );
        let st = m.stop();
        assert_eq!(st.code(), Some(0), "{attempt}: {}", describe(st));
    }
}

#[test]
fn landlock_refuses_a_file_read_that_works_unconfined() {
    let file = std::env::temp_dir().join(format!("arca-landlock-{}.txt", std::process::id()));
    std::fs::write(&file, b"secret").unwrap();
    let attempt = format!("landlock-read:{}", file.display());

    let mut open = Served::start("confine-ll-open", &["--no-confine"], Some(&attempt));
    open.wait_for_line("confine-test: landlock-read: read 6 bytes");
    assert_eq!(open.stop().code(), Some(0));

    let mut m = Served::start("confine-ll", &[], Some(&attempt));
    m.wait_for_line("confine-test: landlock-read: PermissionDenied");
    wait_for_socket(&m.path, m.proc.child_mut(), STEP);
    serve_a_guest(&m.path);
    assert_eq!(m.stop().code(), Some(0));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_confined_monitor_holds_no_privileges_and_still_serves() {
    let mut m = Served::start("confine-status", &[], None);
    wait_for_socket(&m.path.clone(), m.proc.child_mut(), STEP);
    m.wait_for_line("confined");
    assert_eq!(m.status_field("NoNewPrivs"), "1");
    assert_eq!(m.status_field("Seccomp"), "2", "seccomp filter mode");
    assert_eq!(m.status_field("CapEff"), "0000000000000000");
    assert_eq!(m.status_field("CapPrm"), "0000000000000000");
    assert_eq!(m.status_field("CapAmb"), "0000000000000000");
    if is_root() {
        // Emptying the bounding set needs CAP_SETPCAP, which only root has here.
        assert_eq!(m.status_field("CapBnd"), "0000000000000000");
    }
    for _ in 0..3 {
        serve_a_guest(&m.path);
    }
    let path = m.path.clone();
    assert_eq!(m.stop().code(), Some(0), "stderr:\n{}", m.stderr());
    assert!(!path.exists(), "the confined monitor removes its socket");
    assert!(
        !m.stderr().contains("forbidden system call"),
        "{}",
        m.stderr()
    );
}

#[test]
fn a_thread_started_after_confinement_runs_tokio_over_udp_and_tcp() {
    let mut m = Served::start("confine-tokio", &[], Some("tokio"));
    m.wait_for_line("confine-test: tokio: ok");
    wait_for_socket(&m.path.clone(), m.proc.child_mut(), STEP);
    serve_a_guest(&m.path);
    assert_eq!(m.stop().code(), Some(0), "stderr:\n{}", m.stderr());
}

#[test]
fn serve_as_nobody_drops_to_that_user_and_still_serves() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a user named nobody");
    let mut m = Served::start("confine-user", &["--user", "nobody"], None);
    wait_for_socket(&m.path.clone(), m.proc.child_mut(), STEP);
    m.wait_for_line("confined");
    let uid = nobody.uid.as_raw().to_string();
    let gid = nobody.gid.as_raw().to_string();
    let ids = |field: &str| {
        m.status_field(field)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids("Uid"),
        vec![uid.clone(); 4],
        "real, effective, saved, fs"
    );
    assert_eq!(ids("Gid"), vec![gid; 4]);
    assert_eq!(m.status_field("Groups"), "");
    assert_eq!(m.status_field("CapEff"), "0000000000000000");
    // The test runs as root, whom the monitor always admits.
    serve_a_guest(&m.path);
    assert_eq!(m.stop().code(), Some(0), "stderr:\n{}", m.stderr());
}

#[test]
fn an_unknown_user_is_a_usage_error() {
    let out = Command::new(monitor())
        .args(["serve", "--socket"])
        .arg(socket_path("confine-nouser"))
        .args(["--user", "no-such-user-arca"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user: no-such-user-arca"), "{err}");
}

#[test]
fn run_confines_the_monitor_and_not_its_guest() {
    // The guest (started before confinement) waits, bounded, for its parent's filter, then
    // prints its parent's fields and its own.
    let script = r#"
        for _ in $(seq 200); do
            grep -q '^Seccomp:[[:space:]]*2' /proc/$PPID/status && break
            sleep 0.05
        done
        grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/$PPID/status | sed 's/^/monitor /'
        grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^/guest /'
        exit 7
    "#;
    let mut cmd = Command::new(monitor());
    cmd.args(["run", "--", "/bin/sh", "-c", script])
        .env_remove("ARCA_CONFINE_TEST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn("confine-run", &mut cmd).expect("spawn arca-monitor run");
    let mut out = String::new();
    proc.child_mut()
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_string(&mut out)
        .unwrap();
    let st = proc.wait(Instant::now() + STEP).unwrap();
    assert_eq!(st.code(), Some(7), "{}; stdout:\n{out}", describe(st));
    let field = |who: &str, name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{who} {name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {who} {name} in:\n{out}"))
    };
    assert_eq!(field("monitor", "Seccomp"), "2");
    assert_eq!(field("monitor", "NoNewPrivs"), "1");
    assert_eq!(field("monitor", "CapEff"), "0000000000000000");
    assert_eq!(field("guest", "Seccomp"), "0");
    assert_eq!(field("guest", "NoNewPrivs"), "0");
}

fn raw_frame(ty: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap();
    let mut f = FrameHeader::new(ty, len, RequestId(id)).to_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Every message type truncated, oversized and (where it makes no real socket) with
/// random bytes of the right length; unknown types.
fn malformed_frames(rng: &mut StdRng, first_id: u32) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut id = first_id;
    let mut next = || {
        id += 1;
        id
    };
    for ty in MessageType::ALL {
        let want = usize::from(ty.payload_len());
        if want > 0 {
            let len = rng.gen_range(0..want);
            let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            frames.push(raw_frame(ty.to_u8(), next(), &payload));
        }
        let len = rng.gen_range(want + 1..=MAX_FRAME_PAYLOAD);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        frames.push(raw_frame(ty.to_u8(), next(), &payload));
        if !matches!(
            ty,
            MessageType::ConnectRequest | MessageType::ListenRequest | MessageType::UdpBind
        ) {
            let payload: Vec<u8> = (0..want).map(|_| rng.gen()).collect();
            frames.push(raw_frame(ty.to_u8(), next(), &payload));
        }
    }
    for ty in (0..=u8::MAX)
        .filter(|t| MessageType::from_u8(*t).is_none())
        .take(8)
    {
        frames.push(raw_frame(ty, next(), &[0xA5; 16]));
    }
    frames
}

#[test]
fn hostile_guests_do_not_trip_the_filter() {
    // The error paths (malformed frames answered or refused, pipes closed for cause,
    // sessions torn down mid-transfer, warnings rate-limited) all run confined, with a
    // well-behaved guest served after each hostile one.
    let mut m = Served::start("confine-hostile", &[], None);
    wait_for_socket(&m.path.clone(), m.proc.child_mut(), STEP);
    let mut rng = StdRng::seed_from_u64(19);
    for round in 0..4u32 {
        let mut g = RawGuest::attach(&m.path);
        g.hello();
        let (_conn, mut pipe, mut host) = listen_and_accept(&mut g);
        host.write_all(&[1u8; 4096]).unwrap();
        let _ = pipe.write(&[2u8; 4096]);
        for frame in malformed_frames(&mut rng, 1000 * (round + 1)) {
            g.try_send_raw(&frame);
            let _ = g.drain_replies();
        }
        let size = g.region.size();
        for i in 0..512u32 {
            let off = if i % 2 == 0 {
                rng.gen_range(0..size)
            } else {
                rng.gen_range(0..4096u64)
            };
            g.poke_u64(off, rng.gen());
            if i % 64 == 0 {
                g.kick(0);
                g.kick(1);
            }
        }
        drop(g);
        serve_a_guest(&m.path);
        assert!(
            m.proc.try_wait().unwrap().is_none(),
            "round {round}: the monitor ended; stderr:\n{}",
            m.stderr()
        );
    }
    assert_eq!(m.stop().code(), Some(0), "stderr:\n{}", m.stderr());
    let err = m.stderr();
    assert!(
        err.contains("malformed frame"),
        "the hostile frames never reached the monitor's error path:\n{err}"
    );
    assert!(!err.contains("forbidden system call"), "{err}");
}
