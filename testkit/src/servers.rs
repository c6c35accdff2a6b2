//! Host-side servers for end-to-end tests and benchmarks, each on 127.0.0.1:0.
//!
//! - [`echo_server`] and [`count_sink`] serve every connection on its own thread and live
//!   for the rest of the process.
//! - [`EchoServer`] holds thousands of connections on one epoll thread, counts them, and
//!   stops on drop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// # Panics
/// Binding a listener on 127.0.0.1 failed: the test cannot run.
fn serve_each(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a server on 127.0.0.1");
    let addr = l.local_addr().expect("local_addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}

/// Echoes every byte until EOF, then shuts down writing. Reads time out
/// after 30 s so a stuck test cannot keep a thread forever.
///
/// # Panics
/// Binding the listener failed.
pub fn echo_server() -> SocketAddr {
    serve_each(|mut s| {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// Counts the bytes of each connection until EOF, then answers the count as
/// a little-endian `u64`.
///
/// # Panics
/// Binding the listener failed.
pub fn count_sink() -> SocketAddr {
    serve_each(|mut s| {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(&n.to_le_bytes());
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
