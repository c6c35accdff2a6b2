//! The stack's event loop: packets from the TUN device are classified ([`crate::packet`]);
//! TCP segments go to smoltcp, whose sockets are relayed to arca streams ([`crate::tcp`]);
//! UDP datagrams go to per-flow arca UDP sockets ([`crate::udp`]).
//!
//! Everything runs on one thread: the loop and the relay tasks share [`Core`] through a
//! `RefCell`, and no borrow is held across an `.await`. Relay tasks wake the loop (a
//! [`Notify`]) after they change a socket's buffers, so window updates and new data leave
//! promptly; the loop otherwise sleeps until the TUN device is readable or smoltcp's next
//! timer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arca::ArcaSession;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::packet::{classify, rst_for_syn, DropCounts, FlowKey, Verdict, MTU};
use crate::udp::Udp;
use crate::{sys, Addresses};

/// Packets read from the TUN device per loop turn before smoltcp runs.
const READ_BATCH: usize = 256;
/// Each relayed connection's receive and send buffers in smoltcp: the receive buffer is the
/// window the guest may fill, the send buffer what the host may have in flight to the guest.
/// Larger buffers let bursts overflow the TUN and smoltcp queues, smaller ones cap the
/// window; NETSTACK.md has the measurements behind the size.
pub(crate) const TCP_BUFFER: usize = 1024 * 1024;
/// How long the stack keeps relaying after the program exited, for the connections its
/// kernel is still closing (bytes the program wrote before exiting are still on their way).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The program's exit, told to the stack's loop: once it is marked, the loop ends when no
/// TCP connection is left (or [`DRAIN_LIMIT`] later).
#[derive(Debug, Default)]
pub struct ProgramExit {
    /// The exit code plus one; 0 while the program runs.
    code: std::sync::atomic::AtomicI64,
    wake: Notify,
}

impl ProgramExit {
    /// Marks the program exited with `code`.
    pub fn mark(&self, code: i32) {
        // Release pairs with `code`'s Acquire load.
        self.code
            .store(i64::from(code) + 1, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// The exit code, once marked.
    pub fn code(&self) -> Option<i32> {
        let c = self.code.load(std::sync::atomic::Ordering::Acquire);
        if c == 0 {
            None
        } else {
            i32::try_from(c - 1).ok()
        }
    }
}

/// How long a finished relay's socket may linger (closing handshakes) before it is reset.
const LINGER: Duration = Duration::from_secs(30);

/// The TUN device as smoltcp's `Device`: received packets are queued by the loop, sent
/// packets are written straight to the descriptor.
pub(crate) struct Tun {
    fd: Rc<AsyncFd<OwnedFd>>,
    rx: VecDeque<Vec<u8>>,
    tx: Vec<u8>,
    /// Packets the kernel refused (its queue full); TCP retransmits them.
    pub(crate) tx_dropped: u64,
}

pub(crate) struct RxTok(Vec<u8>);
pub(crate) struct TxTok<'a> {
    fd: &'a AsyncFd<OwnedFd>,
    buf: &'a mut Vec<u8>,
    dropped: &'a mut u64,
}

impl smoltcp::phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.clear();
        self.buf.resize(len, 0);
        let r = f(self.buf);
        if sys::write(self.fd.get_ref().as_fd(), self.buf).is_err() {
            *self.dropped = self.dropped.saturating_add(1);
        }
        r
    }
}

impl Device for Tun {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxTok, TxTok<'_>)> {
        let p = self.rx.pop_front()?;
        Some((
            RxTok(p),
            TxTok {
                fd: &self.fd,
                buf: &mut self.tx,
                dropped: &mut self.tx_dropped,
            },
        ))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxTok<'_>> {
        Some(TxTok {
            fd: &self.fd,
            buf: &mut self.tx,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// A relayed TCP connection's entry: pending while arca connects, then its socket.
#[derive(Debug)]
pub(crate) struct TcpEntry {
    /// The smoltcp socket, once arca answered the connect.
    pub(crate) handle: Option<SocketHandle>,
    /// When its relay finished; the socket is removed once closed (or [`LINGER`] later).
    pub(crate) done_at: Option<SmolInstant>,
}

/// The state the loop and the relay tasks share.
pub(crate) struct Core {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) dev: Tun,
    pub(crate) tcp: HashMap<FlowKey, TcpEntry>,
    pub(crate) drops: DropCounts,
    epoch: std::time::Instant,
}

impl Core {
    pub(crate) fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(
            i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    /// Runs smoltcp over the queued packets and its timers.
    pub(crate) fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
    }

    /// Completes the held SYN of `key` (arca connected): a socket listening on the original
    /// destination takes the SYN and answers SYN-ACK. `None` if smoltcp refused the SYN.
    pub(crate) fn accept(&mut self, key: FlowKey, syn: Vec<u8>) -> Option<SocketHandle> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        );
        // The guest's kernel and the host's decide on coalescing; the stack forwards at once.
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        let ep = IpListenEndpoint {
            addr: Some(IpAddress::from(key.dst.ip())),
            port: key.dst.port(),
        };
        if s.listen(ep).is_err() {
            self.tcp.remove(&key);
            return None;
        }
        let h = self.sockets.add(s);
        self.dev.rx.push_back(syn);
        self.poll();
        let state = self.sockets.get::<tcp::Socket>(h).state();
        if state == tcp::State::Listen {
            self.sockets.remove(h);
            self.tcp.remove(&key);
            return None;
        }
        if let Some(e) = self.tcp.get_mut(&key) {
            e.handle = Some(h);
        }
        Some(h)
    }

    /// Refuses the held SYN `seq` of `key`: RST|ACK, so `connect()` fails with ECONNREFUSED.
    pub(crate) fn refuse(&mut self, key: FlowKey, seq: u32) {
        self.tcp.remove(&key);
        let mut buf = [0u8; 128];
        if let Some(n) = rst_for_syn(key, seq, &mut buf) {
            if sys::write(self.dev.fd.get_ref().as_fd(), buf.get(..n).unwrap_or(&[])).is_err() {
                self.dev.tx_dropped = self.dev.tx_dropped.saturating_add(1);
            }
        }
    }

    /// Marks `key`'s relay finished.
    pub(crate) fn relay_done(&mut self, key: FlowKey) {
        let now = self.now();
        if let Some(e) = self.tcp.get_mut(&key) {
            e.done_at = Some(now);
        }
    }

    /// Removes the sockets of finished relays once closed; resets those that linger.
    fn reap(&mut self) {
        let now = self.now();
        let linger = smoltcp::time::Duration::from_micros(
            u64::try_from(LINGER.as_micros()).unwrap_or(u64::MAX),
        );
        let sockets = &mut self.sockets;
        self.tcp.retain(|_, e| {
            let (Some(h), Some(at)) = (e.handle, e.done_at) else {
                return true;
            };
            let s = sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    sockets.remove(h);
                    false
                }
                _ => {
                    if now - at > linger {
                        s.abort();
                    }
                    true
                }
            }
        });
    }
}

/// Runs the stack on the TUN device `fd` until `exit` is marked and every TCP connection has
/// ended (at most [`DRAIN_LIMIT`] after the mark), or the session ends or the device fails.
/// With a
/// `resolver`, UDP DNS queries to [`Addresses::dns_v4`] are answered through it
/// ([`crate::dns`]); without one they are forwarded to [`Addresses::dns_upstream`].
///
/// # Errors
/// The TUN device's read error, or the session's end.
pub async fn run(
    session: ArcaSession,
    fd: OwnedFd,
    addrs: Addresses,
    resolver: Option<Arc<dyn crate::dns::Resolve>>,
    exit: Arc<ProgramExit>,
) -> io::Result<()> {
    let fd = Rc::new(sys::async_fd(fd)?);
    let mut dev = Tun {
        fd: Rc::clone(&fd),
        rx: VecDeque::new(),
        tx: Vec::with_capacity(MTU),
        tx_dropped: 0,
    };
    let epoch = std::time::Instant::now();
    let mut config = IfaceConfig::new(HardwareAddress::Ip);
    // smoltcp draws initial sequence numbers from this seed: a fixed one would make every
    // guest connection's ISN predictable.
    config.random_seed = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let mut iface = Interface::new(config, &mut dev, SmolInstant::from_micros(0));
    iface.set_any_ip(true);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(addrs.stack_v4), 24));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(addrs.stack_v6), 64));
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(addrs.stack_v4)
        .map_err(|_| io::Error::other("smoltcp route table full"))?;
    iface
        .routes_mut()
        .add_default_ipv6_route(addrs.stack_v6)
        .map_err(|_| io::Error::other("smoltcp route table full"))?;
    let core = Rc::new(RefCell::new(Core {
        iface,
        sockets: SocketSet::new(Vec::new()),
        dev,
        tcp: HashMap::new(),
        drops: DropCounts::default(),
        epoch,
    }));
    let kick = Arc::new(Notify::new());
    let addrs = Rc::new(addrs);
    let mut udp = Udp::new(
        session.clone(),
        Arc::clone(&kick),
        Rc::clone(&addrs),
        resolver,
    );
    let mut rbuf = vec![0u8; MTU + 1];
    let mut out = vec![0u8; MTU];
    let mut drain_until = None;
    loop {
        let mut more = false;
        if exit.code().is_some() {
            let until = *drain_until.get_or_insert_with(|| std::time::Instant::now() + DRAIN_LIMIT);
            if core.borrow().tcp.is_empty() || std::time::Instant::now() >= until {
                return Ok(());
            }
        }
        if !session.is_alive() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the monitor ended the session",
            ));
        }
        let delay = {
            let mut c = core.borrow_mut();
            for i in 0..READ_BATCH {
                let n = match sys::read(fd.get_ref().as_fd(), &mut rbuf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if i + 1 == READ_BATCH {
                    more = true;
                }
                let packet = rbuf.get(..n).unwrap_or(&[]);
                match classify(packet) {
                    Verdict::Syn { key, seq } => match c.tcp.get(&key) {
                        // A retransmitted SYN: smoltcp answers it again, or arca is still
                        // connecting and the first one is held.
                        Some(e) if e.handle.is_some() => c.dev.rx.push_back(packet.to_vec()),
                        Some(_) => {}
                        None => {
                            c.tcp.insert(
                                key,
                                TcpEntry {
                                    handle: None,
                                    done_at: None,
                                },
                            );
                            tokio::task::spawn_local(crate::tcp::open(
                                Rc::clone(&core),
                                session.clone(),
                                Arc::clone(&kick),
                                Rc::clone(&addrs),
                                key,
                                seq,
                                packet.to_vec(),
                            ));
                        }
                    },
                    Verdict::Tcp => c.dev.rx.push_back(packet.to_vec()),
                    Verdict::Udp { key, payload } => udp.send(key, payload),
                    Verdict::Drop(why) => {
                        tracing::debug!(?why, len = n, "dropped a packet from the guest");
                        c.drops.count(why);
                    }
                }
            }
            udp.deliver(&mut out, |p| {
                if sys::write(fd.get_ref().as_fd(), p).is_err() {
                    c.dev.tx_dropped = c.dev.tx_dropped.saturating_add(1);
                }
            });
            c.poll();
            c.reap();
            let now = c.now();
            let Core { iface, sockets, .. } = &mut *c;
            iface.poll_delay(now, sockets)
        };
        udp.expire();
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = delay
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            r = fd.readable() => {
                let mut guard = r?;
                guard.clear_ready();
            }
            () = kick.notified() => {}
            () = exit.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}
