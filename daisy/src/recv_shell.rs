//! The receiver's I/O shell on the host: one TCP connection, one UDP socket bound to the
//! group's port with address reuse and a large buffer, `recvmmsg` batches, one `poll` loop.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::receiver::{Receiver, ReceiverConfig, RecvAction, RecvError, RecvStats};
use crate::sys;

/// Receiver shell settings.
#[derive(Debug, Clone)]
pub struct RecvOptions {
    /// The sender's TCP address.
    pub server: SocketAddr,
    /// Local interface address to join the group on.
    pub local_ip: Ipv4Addr,
    /// Core settings (its deadline also bounds connecting).
    pub core: ReceiverConfig,
    /// Progress spinner on stderr.
    pub progress: bool,
    /// Test hook: drop this percentage of data datagrams before processing.
    pub test_drop_percent: f64,
    /// Test hook: seed of the drop choice.
    pub test_seed: u64,
    /// Test hook: exit abruptly after writing this many bytes.
    pub test_exit_after_bytes: Option<u64>,
}

/// How a transfer ended.
#[derive(Debug, Clone)]
pub struct RecvReport {
    /// Core counters.
    pub stats: RecvStats,
    /// Wall time from connecting to the end.
    pub seconds: f64,
}

/// Why the receiver failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvShellError {
    /// A socket or output error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The protocol core gave up.
    #[error(transparent)]
    Protocol(#[from] RecvError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RecvShellError {
    let what = what.into();
    move |source| RecvShellError::Io { what, source }
}

/// Receive buffer asked for the UDP socket.
const RCVBUF: usize = 256 << 20;

/// Runs one transfer, writing the payload to `out`.
///
/// # Errors
/// A [`RecvShellError`] naming what failed.
pub fn run_receiver(opts: &RecvOptions, out: &mut dyn Write) -> Result<RecvReport, RecvShellError> {
    let start = Instant::now();
    let tcp = connect(opts.server, opts.core.deadline)?;
    tracing::info!(server = %opts.server, "connected");
    tcp.set_nodelay(true).map_err(io_err("set_nodelay"))?;
    tcp.set_nonblocking(true)
        .map_err(io_err("set_nonblocking"))?;
    let mut tcp = tcp;
    let mut core = Receiver::new(opts.core.clone(), start);
    let mut udp: Option<UdpSocket> = None;
    let mut batch = sys::RecvBatch::new(65_536);
    let mut tcpbuf = vec![0u8; 256 * 1024];
    let mut rng = opts.test_seed | 1;
    let drop_threshold =
        (opts.test_drop_percent.clamp(0.0, 100.0) / 100.0 * u32::MAX as f64) as u64;
    let mut written = 0u64;
    // A spinner until an extended sender announces the size (EXT_SIZE), then a bar.
    let bar = crate::progress::on_stderr(opts.progress, None);
    let mut total_known = false;
    loop {
        // Actions first (the greeting's Join, replies, deliveries).
        while let Some(a) = core.poll_action() {
            match a {
                RecvAction::Join(g) => {
                    tracing::info!(group = %g, local = %opts.local_ip, "joining the group");
                    udp = Some(join(g, opts.local_ip)?);
                }
                RecvAction::SendTcp(b) => send_all(&mut tcp, &b, opts.core.deadline)?,
                RecvAction::Deliver => {
                    for chunk in core.output() {
                        let chunk = match opts.test_exit_after_bytes {
                            Some(limit) if written + chunk.len() as u64 >= limit => {
                                let k = (limit - written) as usize;
                                let _ = out.write_all(&chunk[..k]);
                                let _ = out.flush();
                                tracing::warn!("test hook: exiting after {limit} bytes");
                                std::process::exit(3);
                            }
                            _ => chunk,
                        };
                        out.write_all(chunk).map_err(io_err("write output"))?;
                        written += chunk.len() as u64;
                    }
                    if let Some(b) = &bar {
                        b.set_position(written);
                    }
                    tracing::debug!(written, "round delivered");
                    core.handle_delivered(Instant::now());
                }
                RecvAction::Finished => {
                    out.flush().map_err(io_err("flush output"))?;
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return Ok(RecvReport {
                        stats: core.stats().clone(),
                        seconds: start.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        let now = Instant::now();
        let wait = core
            .poll_timeout()
            .map_or(Duration::from_millis(500), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(500));
        let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(500);
        let ready = sys::poll_readable(&[Some(tcp.as_fd()), udp.as_ref().map(|u| u.as_fd())], ms)
            .map_err(io_err("poll"))?;
        // Datagrams before TCP: what was multicast before SERVER_SENT is queued by now.
        if let Some(u) = &udp {
            drain_udp(u, &mut batch, &mut core, &mut rng, drop_threshold)?;
        }
        if ready.first() == Some(&true) {
            loop {
                match tcp.read(&mut tcpbuf) {
                    Ok(0) => {
                        core.handle_tcp_closed()?;
                        break;
                    }
                    Ok(n) => {
                        if let Some(u) = &udp {
                            drain_udp(u, &mut batch, &mut core, &mut rng, drop_threshold)?;
                        }
                        core.handle_tcp(&tcpbuf[..n], Instant::now())?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("read from sender")(e)),
                }
            }
        }
        core.handle_timeout(Instant::now())?;
        if let (Some(total), false) = (core.expected_bytes(), total_known) {
            total_known = true;
            tracing::info!(bytes = total, "transfer size announced");
            if let Some(b) = &bar {
                crate::progress::set_total(b, total);
            }
        }
    }
}

/// Connects, retrying a refused connection (the sender may not listen yet) until `deadline`.
fn connect(server: SocketAddr, deadline: Duration) -> Result<TcpStream, RecvShellError> {
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&server, left.max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io_err(format!("connect to {server}"))(e)),
        }
    }
}

fn drain_udp(
    u: &UdpSocket,
    batch: &mut sys::RecvBatch,
    core: &mut Receiver,
    rng: &mut u64,
    drop_threshold: u64,
) -> Result<(), RecvShellError> {
    // Bounded: at most 64 batches per turn so TCP is served too.
    for _ in 0..64 {
        let n = sys::recv_batch(u.as_fd(), batch).map_err(io_err("recvmmsg"))?;
        let now = Instant::now();
        for i in 0..n {
            for d in batch.datagrams(i) {
                if drop_threshold > 0 {
                    // xorshift64*
                    *rng ^= *rng >> 12;
                    *rng ^= *rng << 25;
                    *rng ^= *rng >> 27;
                    let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
                    if r < drop_threshold {
                        continue;
                    }
                }
                core.handle_datagram(d, now);
            }
        }
        if n < sys::MAX_BATCH {
            break;
        }
    }
    Ok(())
}

fn join(g: SocketAddrV4, local: Ipv4Addr) -> Result<UdpSocket, RecvShellError> {
    let what = format!("join {g} on {local}");
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_err(what.clone()))?;
    s.set_reuse_address(true).map_err(io_err(what.clone()))?;
    if sys::set_rcvbuf_force(s.as_fd(), RCVBUF).is_err() {
        let _ = s.set_recv_buffer_size(RCVBUF);
    }
    // Binding the group address (not 0.0.0.0) keeps unicast traffic to the port out.
    s.bind(&SocketAddr::V4(g).into())
        .map_err(io_err(what.clone()))?;
    s.join_multicast_v4(g.ip(), &local)
        .map_err(io_err(what.clone()))?;
    // Optional: fewer, larger receives where the kernel can coalesce.
    let _ = sys::enable_gro(s.as_fd());
    s.set_nonblocking(true).map_err(io_err(what))?;
    Ok(s.into())
}

/// Writes all of `b` on a non-blocking stream, waiting at most `deadline` in total.
fn send_all(s: &mut TcpStream, mut b: &[u8], deadline: Duration) -> Result<(), RecvShellError> {
    let until = Instant::now() + deadline;
    while !b.is_empty() {
        match s.write(b) {
            Ok(0) => {
                return Err(io_err("write to sender")(io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= until {
                    return Err(RecvError::Deadline(deadline.as_secs_f64()).into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io_err("write to sender")(e)),
        }
    }
    Ok(())
}

/// Formats the receiver's summary line.
pub fn summary_line(r: &RecvReport) -> String {
    let s = &r.stats;
    let mbps = crate::mbps(s.bytes, r.seconds);
    format!(
        "daisy-recv: summary bytes={} packets={} repaired={} duplicates={} rejected={} \
         late={} settle_ms={:.1} seconds={:.3} mbps={:.1} sha256={}",
        s.bytes,
        s.packets,
        s.repaired,
        s.duplicates,
        s.rejected,
        s.late,
        s.settle.as_secs_f64() * 1e3,
        r.seconds,
        mbps,
        crate::wire::hex(&s.sha256)
    )
}
