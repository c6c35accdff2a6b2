//! Daisy end to end: the sender always runs isolated in an arca guest
//! (`arca-monitor run --isolate -- daisy-send …`), so every socket it uses is the monitor's;
//! the receivers are host `daisy-recv` processes on loopback multicast.
//!
//! Cases: 256 MiB to three receivers bit-exact; injected loss repaired; a receiver killed
//! mid-transfer; forged datagrams with a correct additive checksum; empty input; an exact
//! multiple of the payload size; input from a pipe with short reads; one receiver too many.
//!
//! Needs root or unprivileged namespaces (prints `SKIPPED: …` otherwise). The binaries come
//! from the test's own target directory (built with `$CARGO` if missing). `cargo test
//! --workspace` builds them fresh; `cargo test --test daisy` alone runs whatever is there, so
//! rebuild first (`cargo build --release -p daisy -p arca-monitor --bins`). Tests run one at a
//! time (they move hundreds of MiB on two cores) and each has its own port and group anyway.
//! Every wait is bounded by the test's deadline; every child dies with its guard.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_testkit::child::{describe, Proc};
use arca_testkit::daisy_run::{Bins, Summary};
use arca_testkit::monitor_proc::isolation_available;
use arca_testkit::procfs::{tcp_listening, tcp_sockets, TCP_ESTABLISHED};
use arca_testkit::wait::wait_for;
use sha2::{Digest, Sha256};

/// Hard limit for one test, from its start.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// `--deadline` given to every Daisy process unless a test says otherwise.
const DEADLINE_ARG: &str = "20";
const PAYLOAD: usize = 1460;
const PACKETS_PER_BUFFER: u32 = 1024;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test's port and multicast group, unlike every other test's.
#[derive(Clone, Copy)]
struct Net {
    port: u16,
    group: Ipv4Addr,
}

const fn net(k: u8) -> Net {
    Net {
        port: 28_300 + k as u16,
        group: Ipv4Addr::new(224, 238, 77, k),
    }
}

/// The lock serialising these tests and the binaries, or `None` (after printing why) when
/// the sender cannot be isolated here.
fn setup() -> Option<(MutexGuard<'static, ()>, Bins)> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(why) = isolation_available() {
        eprintln!(
            "SKIPPED: {why}; the Daisy end-to-end tests run the sender under \
             `arca-monitor run --isolate` and cannot run here"
        );
        return None;
    }
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    let bins = BINS
        .get_or_init(|| Bins::locate_or_build(Duration::from_secs(1200)))
        .clone()
        .unwrap_or_else(|e| panic!("daisy binaries: {e}"));
    Some((guard, bins))
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> (u64, String) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hash_reader(&mut f).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn hash_reader(r: &mut impl Read) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((n, hex(h.finalize()))),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn collect_stderr(e: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = e.take(16 << 20).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A temporary input file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, data: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("arca-daisy-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the sender reads.
enum Input<'a> {
    File(&'a Path),
    /// Its stdin: a thread writes these bytes in irregular writes with pauses, so that the
    /// sender's reads come back short, then closes it.
    Pipe(Vec<u8>),
}

struct Sender {
    proc: Proc,
    stderr: Option<JoinHandle<String>>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

fn feed_irregularly(mut to: impl Write, data: &[u8]) -> io::Result<()> {
    let sizes = [
        1usize, 3, 700, 1459, 1460, 1461, 4095, 9000, 65536, 17, 2920,
    ];
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let end = (pos + sizes[i % sizes.len()]).min(data.len());
        to.write_all(&data[pos..end])?;
        to.flush()?;
        pos = end;
        if i % 7 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(40));
        }
        i += 1;
    }
    Ok(()) // dropping the pipe is the end of input
}

/// `--deadline` unless `extra` sets it.
fn with_deadline<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = extra.to_vec();
    if !extra.contains(&"--deadline") {
        v.extend(["--deadline", DEADLINE_ARG]);
    }
    v
}

/// Starts `arca-monitor run --isolate -- daisy-send …` and waits until the monitor listens
/// on the test's port for it.
fn start_sender(
    bins: &Bins,
    net: Net,
    clients: usize,
    extra: &[&str],
    input: Input<'_>,
    deadline: Instant,
) -> Sender {
    let mut cmd = Command::new(&bins.monitor);
    cmd.args(["run", "--isolate", "--"])
        .arg(&bins.send)
        .args(["--clients", &clients.to_string()])
        .args(["--port", &net.port.to_string()])
        .args(["--group", &net.group.to_string()])
        .args(["--interface", "127.0.0.1"])
        // The monitor's default policy lets a guest listen on loopback only.
        .args(["--bind", "127.0.0.1"])
        .arg("--no-progress")
        .args(with_deadline(extra));
    let feed = match input {
        Input::File(p) => {
            cmd.arg(p).stdin(Stdio::null());
            None
        }
        Input::Pipe(data) => {
            cmd.arg("-").stdin(Stdio::piped());
            Some(data)
        }
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut proc = Proc::spawn("arca-monitor run --isolate -- daisy-send", &mut cmd)
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = collect_stderr(proc.child_mut().stderr.take().expect("stderr piped"));
    let writer = feed.map(|data| {
        let stdin = proc.child_mut().stdin.take().expect("stdin piped");
        std::thread::spawn(move || feed_irregularly(stdin, &data))
    });
    let mut exited = false;
    let listening = wait_for("the isolated sender to listen", deadline, || {
        exited = proc.try_wait().ok().flatten().is_some();
        exited || tcp_listening(None, net.port)
    });
    if exited || listening.is_err() {
        proc.kill();
        let err = stderr.join().unwrap_or_default();
        panic!(
            "the isolated sender never listened on port {} (exited: {exited}); stderr:\n{err}",
            net.port
        );
    }
    Sender {
        proc,
        stderr: Some(stderr),
        writer,
    }
}

impl Sender {
    /// Waits for it to exit; its status and stderr.
    fn finish(&mut self, deadline: Instant) -> (ExitStatus, String) {
        let status = self.proc.wait(deadline);
        if status.is_err() {
            self.proc.kill();
        }
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let st = status.unwrap_or_else(|e| panic!("{e}; sender stderr:\n{err}"));
        if let Some(w) = self.writer.take() {
            w.join()
                .expect("stdin writer thread")
                .unwrap_or_else(|e| panic!("writing the sender's stdin: {e}; stderr:\n{err}"));
        }
        (st, err)
    }
}

/// Where a receiver's output goes.
enum Output {
    /// stdout, hashed as it streams.
    Stdout,
    /// `-o FILE`.
    File(PathBuf),
    /// stdout, read until this many bytes, then held unread (the receiver stalls), and
    /// released when the sender half of the channel is dropped or signalled.
    StallAfter(u64, mpsc::Sender<u64>, mpsc::Receiver<()>),
}

enum Sink {
    Hashed(JoinHandle<io::Result<(u64, String)>>),
    File(PathBuf),
    Stalled(JoinHandle<u64>),
}

struct Receiver {
    name: String,
    proc: Proc,
    sink: Sink,
    stderr: Option<JoinHandle<String>>,
}

/// What a receiver did.
struct Received {
    name: String,
    status: ExitStatus,
    bytes: u64,
    sha256: String,
    stderr: String,
}

impl Received {
    fn summary(&self) -> Summary {
        Summary::parse("daisy-recv", &self.stderr).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Exit 0, the input's bytes and hash in the output and in the summary line.
    fn assert_exact(&self, len: u64, sha: &str) -> Summary {
        assert!(
            self.status.success(),
            "{} ended with {}; stderr:\n{}",
            self.name,
            describe(self.status),
            self.stderr
        );
        assert_eq!(self.bytes, len, "{}: output length", self.name);
        assert_eq!(self.sha256, sha, "{}: output SHA-256", self.name);
        let s = self.summary();
        eprintln!("{}: {s:?}", self.name);
        assert_eq!(s.u64("bytes").unwrap(), len, "{}: summary bytes", self.name);
        assert_eq!(
            s.text("sha256").unwrap(),
            sha,
            "{}: summary sha256",
            self.name
        );
        s
    }
}

fn start_receiver(bins: &Bins, name: &str, net: Net, extra: &[&str], out: Output) -> Receiver {
    let mut cmd = Command::new(&bins.recv);
    cmd.args(["--local-ip", "127.0.0.1"])
        .arg("--no-progress")
        .args(with_deadline(extra));
    if let Output::File(p) = &out {
        cmd.arg("-o").arg(p).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped());
    }
    cmd.arg(format!("127.0.0.1:{}", net.port))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"));
    let stderr = collect_stderr(proc.child_mut().stderr.take().expect("stderr piped"));
    let stdout = proc.child_mut().stdout.take();
    let sink = match out {
        Output::File(p) => Sink::File(p),
        Output::Stdout => {
            let mut so: ChildStdout = stdout.expect("stdout piped");
            Sink::Hashed(std::thread::spawn(move || hash_reader(&mut so)))
        }
        Output::StallAfter(limit, reached, release) => {
            let mut so: ChildStdout = stdout.expect("stdout piped");
            Sink::Stalled(std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut n = 0u64;
                while n < limit {
                    match so.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = reached.send(n);
                // Hold the pipe open, unread, until released (bounded).
                let _ = release.recv_timeout(TEST_LIMIT);
                n
            }))
        }
    };
    Receiver {
        name: name.to_owned(),
        proc,
        sink,
        stderr: Some(stderr),
    }
}

impl Receiver {
    fn finish(mut self, deadline: Instant) -> Received {
        let status = self.proc.wait(deadline);
        if status.is_err() {
            self.proc.kill();
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let status = status.unwrap_or_else(|e| panic!("{e}; stderr:\n{stderr}"));
        let (bytes, sha256) = match self.sink {
            Sink::Hashed(t) => t
                .join()
                .expect("hashing thread")
                .unwrap_or_else(|e| panic!("{}: reading stdout: {e}", self.name)),
            Sink::File(ref p) => {
                if p.exists() {
                    let r = sha256_file(p);
                    let _ = std::fs::remove_file(p);
                    r
                } else {
                    (0, hex(Sha256::digest(b"")))
                }
            }
            Sink::Stalled(t) => (t.join().expect("stall thread"), String::new()),
        };
        Received {
            name: self.name,
            status,
            bytes,
            sha256,
            stderr,
        }
    }
}

/// Checks the sender's exit and summary after a transfer every receiver completed.
fn assert_sender_ok(
    status: ExitStatus,
    stderr: &str,
    len: u64,
    sha: &str,
    clients: u64,
) -> Summary {
    assert!(
        status.success(),
        "isolated sender ended with {}; stderr:\n{stderr}",
        describe(status)
    );
    let s = Summary::parse("daisy-send", stderr).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("sender: {s:?}");
    assert_eq!(s.u64("bytes").unwrap(), len, "sender summary bytes");
    assert_eq!(s.text("sha256").unwrap(), sha, "sender summary sha256");
    assert_eq!(s.u64("completed_receivers").unwrap(), clients, "{s:?}");
    assert_eq!(s.u64("dropped_receivers").unwrap(), 0, "{s:?}");
    for k in ["packets", "repaired", "duplicates"] {
        s.u64(k).unwrap();
    }
    assert!(s.f64("seconds").unwrap() >= 0.0 && s.f64("mbps").unwrap() >= 0.0);
    s
}

/// Sends `data` from a file to `receivers` plain receivers (receiver 0 with `-o FILE`, the
/// others on stdout) and checks everything; returns the sender's and receivers' summaries.
fn transfer_ok(
    bins: &Bins,
    net: Net,
    data: &[u8],
    receivers: usize,
    deadline: Instant,
) -> (Summary, Vec<Summary>) {
    let sha = hex(Sha256::digest(data));
    let len = data.len() as u64;
    let input = TempFile::with(&format!("in-{}", net.port), data);
    let mut sender = start_sender(bins, net, receivers, &[], Input::File(&input.0), deadline);
    let rx: Vec<Receiver> = (0..receivers)
        .map(|i| {
            let out = if i == 0 {
                Output::File(std::env::temp_dir().join(format!(
                    "arca-daisy-{}-out-{}",
                    std::process::id(),
                    net.port
                )))
            } else {
                Output::Stdout
            };
            start_receiver(bins, &format!("receiver {i}"), net, &[], out)
        })
        .collect();
    let done: Vec<Received> = rx.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    let sums = done.iter().map(|r| r.assert_exact(len, &sha)).collect();
    (
        assert_sender_ok(status, &err, len, &sha, receivers as u64),
        sums,
    )
}

#[test]
fn three_receivers_get_256_mib_bit_exact() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let data = arca_testkit::pattern::random_bytes(0x256, 256 << 20);
    let (send, _) = transfer_ok(&bins, net(1), &data, 3, deadline);
    let packets = (data.len() as u64).div_ceil(PAYLOAD as u64);
    assert_eq!(send.u64("packets").unwrap(), packets, "{send:?}");
}

#[test]
fn injected_loss_is_repaired() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let n = net(2);
    // Every lost datagram is repaired over TCP, so lossy transfers are slower: keep small.
    let data = arca_testkit::pattern::random_bytes(0x1055, 8 << 20);
    let sha = hex(Sha256::digest(&data));
    let len = data.len() as u64;
    let input = TempFile::with("loss", &data);
    let mut sender = start_sender(&bins, n, 2, &[], Input::File(&input.0), deadline);
    let rx: Vec<Receiver> = [("3", "1"), ("10", "2")]
        .iter()
        .map(|(pct, seed)| {
            let args = ["--test-drop-percent", pct, "--test-seed", seed];
            start_receiver(
                &bins,
                &format!("receiver dropping {pct} %"),
                n,
                &args,
                Output::Stdout,
            )
        })
        .collect();
    let done: Vec<Received> = rx.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    for r in &done {
        let s = r.assert_exact(len, &sha);
        assert!(
            s.u64("repaired").unwrap() > 0,
            "{}: nothing repaired: {s:?}",
            r.name
        );
    }
    let s = assert_sender_ok(status, &err, len, &sha, 2);
    assert!(
        s.u64("repaired").unwrap() > 0,
        "sender repaired nothing: {s:?}"
    );
}

#[test]
fn a_receiver_killed_mid_transfer_is_dropped() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let n = net(3);
    let data = arca_testkit::pattern::random_bytes(0x4111, 32 << 20);
    let sha = hex(Sha256::digest(&data));
    let len = data.len() as u64;
    let input = TempFile::with("kill", &data);
    let mut sender = start_sender(
        &bins,
        n,
        3,
        // Two of three suffice: the survivors' transfer is a partial success (exit 3).
        &["--deadline", "5", "--min-complete", "2"],
        Input::File(&input.0),
        deadline,
    );
    let (reached_tx, reached) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let victim = start_receiver(
        &bins,
        "victim",
        n,
        &[],
        Output::StallAfter(2 << 20, reached_tx, release_rx),
    );
    let others: Vec<Receiver> = (1..3)
        .map(|i| start_receiver(&bins, &format!("receiver {i}"), n, &[], Output::Stdout))
        .collect();
    let got = reached
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the victim received 2 MiB");
    assert!(
        got >= 2 << 20 && got < len,
        "victim read {got} bytes before the kill"
    );
    victim.proc.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    drop(release);
    let v = victim.finish(deadline);
    assert_eq!(
        v.status.signal(),
        Some(libc::SIGKILL),
        "victim: {}",
        describe(v.status)
    );
    let done: Vec<Received> = others.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    let after_kill = killed_at.elapsed();
    for r in &done {
        r.assert_exact(len, &sha);
    }
    assert_eq!(
        status.code(),
        Some(3),
        "sender must report a partial success with 2 of 3 receivers: {}; stderr:\n{err}",
        describe(status)
    );
    let s = Summary::parse("daisy-send", &err).unwrap();
    assert_eq!(s.u64("dropped_receivers").unwrap(), 1, "{s:?}");
    let failed = s.text("failed").unwrap();
    assert!(
        failed.contains('@') && !failed.contains(','),
        "one failed receiver as ID@ADDRESS: {s:?}"
    );
    assert_eq!(s.u64("completed_receivers").unwrap(), 2, "{s:?}");
    assert_eq!(s.text("sha256").unwrap(), sha);
    // Within the sender's 5 s deadline (plus the remaining transfer), not the test's limit.
    assert!(
        after_kill < Duration::from_secs(30),
        "sender took {after_kill:?} after the kill"
    );
}

/// The wrapping sum of `payload` as little-endian u32 words, the last one zero-padded.
fn additive_sum(payload: &[u8]) -> u32 {
    payload.chunks(4).fold(0u32, |acc, w| {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        acc.wrapping_add(u32::from_le_bytes(word))
    })
}

fn datagram(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(12 + payload.len());
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&additive_sum(payload).to_le_bytes());
    d.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    d.extend_from_slice(payload);
    d
}

/// Watches the group and answers every genuine data datagram with forgeries for the same
/// round: a copy of it with two words changed so that the additive sum still matches, and
/// random payloads (correct sum) for other sequence numbers of that round. Stops when `stop`
/// is set, after 40 s, or after 400,000 forgeries; counts them in `sent`.
fn forger(net: Net, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> JoinHandle<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let watch = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    watch.set_reuse_address(true).unwrap();
    watch
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, net.port)).into())
        .unwrap();
    watch
        .join_multicast_v4(&net.group, &Ipv4Addr::LOCALHOST)
        .unwrap();
    let _ = watch.set_recv_buffer_size(4 << 20);
    watch
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let watch: UdpSocket = watch.into();
    let out = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    out.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    out.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    out.set_multicast_loop_v4(true).unwrap();
    let out: UdpSocket = out.into();
    let own_port = out.local_addr().unwrap().port();
    let to = SocketAddr::from((net.group, net.port));
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(40);
        let mut buf = vec![0u8; 65536];
        let mut x = 0x9e37_79b9_u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        while !stop.load(Ordering::Relaxed)
            && Instant::now() < end
            && sent.load(Ordering::Relaxed) < 400_000
        {
            let Ok((len, from)) = watch.recv_from(&mut buf) else {
                continue;
            };
            if from.port() == own_port || len < 12 + 8 {
                continue;
            }
            let seq = u32::from_le_bytes(buf[0..4].try_into().unwrap());
            let size = u32::from_le_bytes(buf[8..12].try_into().unwrap()) as usize;
            if size < 8 || 12 + size > len {
                continue;
            }
            // Same seq, same additive sum, different bytes.
            let mut twin = buf[12..12 + size].to_vec();
            let w0 = u32::from_le_bytes(twin[0..4].try_into().unwrap()).wrapping_add(1);
            let w1 = u32::from_le_bytes(twin[4..8].try_into().unwrap()).wrapping_sub(1);
            twin[0..4].copy_from_slice(&w0.to_le_bytes());
            twin[4..8].copy_from_slice(&w1.to_le_bytes());
            let twin = datagram(seq, &twin);
            assert_eq!(twin[4..8], buf[4..8], "the twin keeps the genuine checksum");
            let mut forged = vec![twin];
            let base = seq - seq % PACKETS_PER_BUFFER;
            for _ in 0..3 {
                let other = base + rnd() % PACKETS_PER_BUFFER;
                let payload: Vec<u8> = (0..PAYLOAD).map(|_| rnd() as u8).collect();
                forged.push(datagram(other, &payload));
            }
            for d in &forged {
                if out.send_to(d, to).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

#[test]
fn forged_datagrams_with_a_correct_sum_are_rejected() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let n = net(4);
    let data = arca_testkit::pattern::random_bytes(0xf0f0, 24 << 20);
    let sha = hex(Sha256::digest(&data));
    let len = data.len() as u64;
    let input = TempFile::with("forged", &data);
    let mut sender = start_sender(&bins, n, 2, &[], Input::File(&input.0), deadline);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let forging = forger(n, Arc::clone(&stop), Arc::clone(&sent));
    let rx: Vec<Receiver> = (0..2)
        .map(|i| start_receiver(&bins, &format!("receiver {i}"), n, &[], Output::Stdout))
        .collect();
    let done: Vec<Received> = rx.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    stop.store(true, Ordering::Relaxed);
    forging.join().expect("forger thread");
    let forged = sent.load(Ordering::Relaxed);
    assert!(forged > 1000, "only {forged} forged datagrams were sent");
    let mut rejected = 0;
    for r in &done {
        rejected += r.assert_exact(len, &sha).u64("rejected").unwrap();
    }
    assert!(rejected > 0, "{forged} forgeries sent, none rejected");
    assert_sender_ok(status, &err, len, &sha, 2);
}

#[test]
fn empty_input() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let (send, _) = transfer_ok(&bins, net(5), &[], 2, deadline);
    assert_eq!(send.u64("packets").unwrap(), 0, "{send:?}");
}

#[test]
fn input_an_exact_multiple_of_the_payload() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let data = arca_testkit::pattern::random_bytes(1460, PAYLOAD * 3000);
    let (send, _) = transfer_ok(&bins, net(6), &data, 2, deadline);
    assert_eq!(send.u64("packets").unwrap(), 3000, "{send:?}");
}

#[test]
fn input_from_a_pipe_with_short_reads() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let n = net(7);
    let data = arca_testkit::pattern::random_bytes(0x919e, (3 << 20) + 123);
    let sha = hex(Sha256::digest(&data));
    let len = data.len() as u64;
    let mut sender = start_sender(&bins, n, 2, &[], Input::Pipe(data.clone()), deadline);
    let rx: Vec<Receiver> = (0..2)
        .map(|i| start_receiver(&bins, &format!("receiver {i}"), n, &[], Output::Stdout))
        .collect();
    let done: Vec<Received> = rx.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    for r in &done {
        r.assert_exact(len, &sha);
    }
    let s = assert_sender_ok(status, &err, len, &sha, 2);
    // Short reads may make short packets, never fewer than the payload size allows.
    assert!(
        s.u64("packets").unwrap() >= len.div_ceil(PAYLOAD as u64),
        "{s:?}"
    );
}

#[test]
fn a_receiver_beyond_clients_is_refused_clearly() {
    let Some((_serial, bins)) = setup() else {
        return;
    };
    let deadline = Instant::now() + TEST_LIMIT;
    let n = net(8);
    let data = arca_testkit::pattern::random_bytes(0xe47a, 16 << 20);
    let sha = hex(Sha256::digest(&data));
    let len = data.len() as u64;
    let input = TempFile::with("extra", &data);
    let mut sender = start_sender(&bins, n, 2, &[], Input::File(&input.0), deadline);
    let rx: Vec<Receiver> = (0..2)
        .map(|i| start_receiver(&bins, &format!("receiver {i}"), n, &[], Output::Stdout))
        .collect();
    // The monitor has accepted both (its sockets, in the host's namespace, on the port).
    wait_for("two accepted receivers", deadline, || {
        tcp_sockets(None)
            .iter()
            .filter(|e| e.local_port == n.port && e.state == TCP_ESTABLISHED)
            .count()
            >= 2
    })
    .unwrap();
    let extra = start_receiver(
        &bins,
        "extra receiver",
        n,
        &["--deadline", "3"],
        Output::Stdout,
    );
    let extra_start = Instant::now();
    let x = extra.finish(deadline);
    eprintln!(
        "extra receiver: {}: {}",
        describe(x.status),
        x.stderr.trim()
    );
    assert!(
        !x.status.success(),
        "the extra receiver exited 0:\n{}",
        x.stderr
    );
    assert!(
        x.stderr.contains("daisy-recv: error"),
        "no clear error line:\n{}",
        x.stderr
    );
    assert!(
        Summary::parse("daisy-recv", &x.stderr).is_err() || x.bytes < len,
        "the extra receiver got the file: {}",
        x.stderr
    );
    assert!(
        extra_start.elapsed() < Duration::from_secs(20),
        "the refusal took {:?}",
        extra_start.elapsed()
    );
    let done: Vec<Received> = rx.into_iter().map(|r| r.finish(deadline)).collect();
    let (status, err) = sender.finish(deadline);
    for r in &done {
        r.assert_exact(len, &sha);
    }
    assert_sender_ok(status, &err, len, &sha, 2);
}
