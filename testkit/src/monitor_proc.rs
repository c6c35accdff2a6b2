//! Helpers shared by the fault, load and soak tests: the monitor binary as a
//! child process (with its RSS and descriptor count), this test binary
//! re-executed as a guest, an epoll echo server that holds thousands of
//! connections on one thread, deterministic byte streams, and bounded waits.
//!
//! Every child is killed and reaped on drop; every wait has a deadline.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The monitor binary to run: `ARCA_MONITOR_BIN` if set (a long soak runs
/// from copies so that rebuilding meanwhile cannot disturb it), else
/// `arca-monitor` in the running test's profile directory, where Cargo puts
/// it for the monitor's own tests ([`crate::daisy_run::profile_dir`]).
pub fn monitor_bin() -> PathBuf {
    std::env::var_os("ARCA_MONITOR_BIN").map_or_else(
        || {
            crate::daisy_run::profile_dir()
                .expect("the test executable lies in a target directory")
                .join("arca-monitor")
        },
        PathBuf::from,
    )
}

/// Environment variable naming the guest role of a re-executed test binary.
pub const ROLE: &str = "ARCA_TEST_ROLE";

/// Kills and reaps a child on drop, so no test leaves processes behind.
pub struct Reaped(pub Child);

impl Reaped {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, failing the test after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit within {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh Unix socket path for a monitor.
pub fn socket_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "arca-{name}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Descriptors open in process `pid` (`"self"` for this one).
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    fd_count("self")
}

/// Resident memory of a process, from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: everything resident.
    pub total: u64,
    /// `RssAnon`: private heap and stacks.
    pub anon: u64,
    /// `RssShmem`: resident pages of shared mappings (the guests' regions).
    pub shmem: u64,
}

/// The resident memory of `pid`, or `None` once it is gone.
pub fn rss(pid: u32) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:").unwrap_or(0),
        shmem: field("RssShmem:").unwrap_or(0),
    })
}

/// Raises this process's descriptor limit to at least `want` (children
/// inherit it). Root may raise the hard limit too. Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let set = |cur: u64, max: u64| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: `l` is a valid rlimit read by the call only.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
    };
    if lim.rlim_max < want && set(want, want) {
        return want;
    }
    let new = want.min(lim.rlim_max);
    if set(new, lim.rlim_max) {
        new
    } else {
        lim.rlim_cur
    }
}

/// `arca-monitor serve` as a child process.
pub struct MonitorProc {
    pub child: Reaped,
    pub path: PathBuf,
}

impl MonitorProc {
    /// Starts `arca-monitor serve` with `extra` arguments (sizes) and waits
    /// until its socket exists.
    pub fn serve(name: &str, extra: &[&str]) -> MonitorProc {
        let path = socket_path(name);
        let child = Command::new(monitor_bin())
            .arg("serve")
            .arg("--socket")
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn arca-monitor");
        let mut m = MonitorProc {
            child: Reaped(child),
            path,
        };
        // The monitor renames the socket into place once it listens.
        let ok = wait_until(Duration::from_secs(20), || m.path.exists());
        if !ok {
            let st = m.child.0.try_wait();
            panic!("monitor never created {} ({st:?})", m.path.display());
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The monitor's resident memory.
    pub fn rss(&self) -> Rss {
        rss(self.pid()).expect("monitor is gone")
    }

    /// The monitor's open descriptors.
    pub fn fds(&self) -> usize {
        fd_count(&self.pid().to_string())
    }

    /// Asks it to stop (SIGTERM) and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let st = wait_exit(&mut self.child.0, Duration::from_secs(10));
        let _ = std::fs::remove_file(&self.path);
        st
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This test binary re-executed as a guest in `role`, with its stdout piped.
pub fn guest_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--exact",
        "guest_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE, role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    cmd
}

/// Reads the child's stdout until a line starting with `prefix` (libtest
/// prints its own lines first) and returns the rest of that line; `None` if
/// the child ends first or `limit` passes. The rest of the output is drained
/// in the background so the child never blocks on a full pipe.
pub fn read_marker(child: &mut Child, prefix: &str, limit: Duration) -> Option<String> {
    use std::io::BufRead;
    let out = child.stdout.take()?;
    let prefix = prefix.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out).lines().map_while(Result::ok);
        let found = lines
            .by_ref()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned));
        let _ = tx.send(found);
        for _ in lines {}
    });
    rx.recv_timeout(limit).ok().flatten()
}

/// Collects the child's whole stdout on a thread.
pub fn collect_stdout(child: &mut Child) -> JoinHandle<String> {
    let mut out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    })
}

/// A deterministic byte stream: byte `i` of stream `seed`. Generating any
/// window needs no state, so a reader can check what it got at any offset.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let word = splitmix(seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        *b = word.to_le_bytes()[(pos % 8) as usize];
    }
}

/// SplitMix64's output function.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks `got` against stream `seed` at `offset`; on a mismatch, names the
/// first differing byte.
pub fn check(seed: u64, offset: u64, got: &[u8]) -> Result<(), String> {
    let mut want = vec![0u8; got.len()];
    fill(seed, offset, &mut want);
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "stream {seed:#x}: byte {} is {:#04x}, expected {:#04x}",
            offset + i as u64,
            got[i],
            want[i]
        )),
    }
}

/// Sends `len` bytes of stream `seed` through `stream` (a writer thread),
/// half-closes, reads the echo to EOF and verifies every byte. Returns the
/// bytes verified.
pub fn echo_verified(stream: &arca::TcpStream, seed: u64, len: u64) -> io::Result<u64> {
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> io::Result<()> {
            let mut w = stream;
            let mut buf = vec![0u8; 32 << 10];
            let mut sent = 0u64;
            while sent < len {
                let n = usize::try_from((len - sent).min(buf.len() as u64)).unwrap_or(buf.len());
                fill(seed, sent, &mut buf[..n]);
                w.write_all(&buf[..n])?;
                sent += n as u64;
            }
            stream.shutdown(std::net::Shutdown::Write)
        });
        let mut r = stream;
        let mut buf = vec![0u8; 32 << 10];
        let mut got = 0u64;
        let read = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = check(seed, got, &buf[..n]) {
                        break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    got += n as u64;
                }
                Err(e) => break Err(e),
            }
        };
        let wrote = writer.join().expect("writer thread panicked");
        read?;
        wrote?;
        if got != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("echo of stream {seed:#x} ended after {got} of {len} bytes"),
            ));
        }
        Ok(got)
    })
}

/// Counters of an [`EchoServer`].
#[derive(Debug, Default)]
pub struct EchoCounts {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub bytes: AtomicU64,
}

impl EchoCounts {
    /// Connections currently open.
    pub fn open(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst) - self.closed.load(Ordering::SeqCst)
    }
}

/// A host echo server on 127.0.0.1:0 on one thread with epoll (mio): echoes
/// every byte, half-closes after the peer's EOF, then closes. Holds any
/// number of connections with one shared read buffer (a connection keeps
/// only what the socket would not take yet). Stopped on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub counts: Arc<EchoCounts>,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
}

struct EchoConn {
    sock: mio::net::TcpStream,
    pending: Vec<u8>,
    eof: bool,
}

impl EchoConn {
    /// Moves bytes until an operation would block or the connection is done.
    /// Returns false when it should be dropped.
    fn pump(&mut self, scratch: &mut [u8], counts: &EchoCounts) -> bool {
        loop {
            while !self.pending.is_empty() {
                match self.sock.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if self.eof {
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                return false;
            }
            match self.sock.read(scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let mut off = 0;
                    while off < n {
                        match self.sock.write(&scratch[off..n]) {
                            Ok(k) => off += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return false,
                        }
                    }
                    self.pending.extend_from_slice(&scratch[off..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl EchoServer {
    /// Starts the server (listen backlog 4096).
    pub fn start() -> EchoServer {
        use mio::{Events, Interest, Poll, Token, Waker};
        const LISTENER: Token = Token(0);
        const WAKE: Token = Token(1);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_reuse_address(true).expect("reuseaddr");
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        sock.listen(4096).expect("listen");
        sock.set_nonblocking(true).expect("nonblocking");
        let mut listener = mio::net::TcpListener::from_std(sock.into());
        let addr = listener.local_addr().expect("local_addr");
        let mut poll = Poll::new().expect("poll");
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .expect("register");
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).expect("waker"));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(EchoCounts::default());
        let thread = {
            let stop = Arc::clone(&stop);
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || {
                let mut events = Events::with_capacity(1024);
                let mut conns: HashMap<Token, EchoConn> = HashMap::new();
                let mut next = 2usize;
                let mut scratch = vec![0u8; 64 << 10];
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        panic!("echo server poll: {e}");
                    }
                    for ev in &events {
                        match ev.token() {
                            WAKE => {}
                            LISTENER => loop {
                                match listener.accept() {
                                    Ok((mut s, _)) => {
                                        let t = Token(next);
                                        next += 1;
                                        let _ = s.set_nodelay(true);
                                        if poll
                                            .registry()
                                            .register(
                                                &mut s,
                                                t,
                                                Interest::READABLE | Interest::WRITABLE,
                                            )
                                            .is_ok()
                                        {
                                            counts.accepted.fetch_add(1, Ordering::SeqCst);
                                            conns.insert(
                                                t,
                                                EchoConn {
                                                    sock: s,
                                                    pending: Vec::new(),
                                                    eof: false,
                                                },
                                            );
                                        }
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                    // EMFILE and the like: retry on the next event.
                                    Err(_) => break,
                                }
                            },
                            t => {
                                let keep = conns
                                    .get_mut(&t)
                                    .is_some_and(|c| c.pump(&mut scratch, &counts));
                                if !keep {
                                    if let Some(mut c) = conns.remove(&t) {
                                        let _ = poll.registry().deregister(&mut c.sock);
                                        counts.closed.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                        }
                    }
                }
            })
        };
        EchoServer {
            addr,
            counts,
            stop,
            waker,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A monitor running in this process on its own thread (its figures come
/// from [`MonitorHandle::stats`]), stopped on drop.
pub struct InProcMonitor {
    pub path: PathBuf,
    pub handle: arca_monitor::MonitorHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl InProcMonitor {
    pub fn start(name: &str, config: arca_monitor::Config) -> InProcMonitor {
        let path = socket_path(name);
        let mut m = arca_monitor::Monitor::new(config).expect("monitor");
        m.listen_unix(&path).expect("listen_unix");
        let handle = m.handle();
        let thread = std::thread::spawn(move || m.run());
        // Answered by the loop itself: it is running.
        handle.stats().expect("monitor loop answers");
        InProcMonitor {
            path,
            handle,
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> arca_monitor::MonitorStats {
        self.handle.stats().expect("monitor stats")
    }

    pub fn session(&self) -> arca::ArcaSession {
        arca::ArcaSession::attach(&self.path).expect("attach")
    }
}

impl Drop for InProcMonitor {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
