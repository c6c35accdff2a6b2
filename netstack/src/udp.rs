//! UDP: each flow (guest address and port, original destination) gets an arca UDP socket
//! connected to the destination; replies come back as datagrams from that destination.
//!
//! A flow lives while it is used and [`IDLE`] after (RFC 4787 asks for at least two
//! minutes); at most [`MAX_FLOWS`] live at once, the least recently used making room. The
//! arca UDP socket is blocking, so each flow has a sender thread (fed by a bounded channel;
//! a full channel drops the datagram, as a full socket buffer would) and a receiver thread
//! that hands replies to the loop.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use tokio::sync::Notify;

use crate::dns::Resolve;
use crate::packet::{udp_packet, FlowKey};
use crate::Addresses;

/// A flow unused this long is closed.
pub const IDLE: Duration = Duration::from_secs(180);
/// Flows open at once.
pub const MAX_FLOWS: usize = 128;
/// Datagrams queued towards one flow's socket.
const QUEUE: usize = 256;
/// Replies queued towards the guest, all flows together.
const REPLIES: usize = 1024;
/// How often a receiver thread checks whether its flow was closed.
const RECV_TICK: Duration = Duration::from_millis(500);

/// DNS queries being answered through the resolver at once; more are dropped (the guest's
/// resolver retries).
const MAX_DNS_IN_FLIGHT: usize = 32;

struct Flow {
    out: SyncSender<Vec<u8>>,
    last: Instant,
    stop: Arc<AtomicBool>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        // Release pairs with the receiver thread's Acquire load.
        self.stop.store(true, Ordering::Release);
    }
}

/// The UDP flows.
pub(crate) struct Udp {
    session: ArcaSession,
    kick: Arc<Notify>,
    addrs: Rc<Addresses>,
    flows: HashMap<FlowKey, Flow>,
    replies_tx: SyncSender<(FlowKey, Vec<u8>)>,
    replies: Receiver<(FlowKey, Vec<u8>)>,
    last_expiry: Instant,
    resolver: Option<Arc<dyn Resolve>>,
    dns_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Datagrams dropped: a full queue, a flow that could not open, a destination not relayed.
    pub(crate) dropped: u64,
}

impl Udp {
    pub(crate) fn new(
        session: ArcaSession,
        kick: Arc<Notify>,
        addrs: Rc<Addresses>,
        resolver: Option<Arc<dyn Resolve>>,
    ) -> Self {
        let (replies_tx, replies) = mpsc::sync_channel(REPLIES);
        Self {
            session,
            kick,
            addrs,
            flows: HashMap::new(),
            replies_tx,
            replies,
            last_expiry: Instant::now(),
            resolver,
            dns_in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            dropped: 0,
        }
    }

    /// Sends one datagram of the guest's, opening its flow if needed.
    pub(crate) fn send(&mut self, key: FlowKey, payload: &[u8]) {
        if key.dst == SocketAddr::new(self.addrs.dns_v4.into(), 53) {
            if let Some(resolver) = &self.resolver {
                self.resolve(key, payload, Arc::clone(resolver));
                return;
            }
        }
        let now = Instant::now();
        if !self.flows.contains_key(&key) {
            let Some(target) = self.addrs.host_destination(key.dst) else {
                self.dropped = self.dropped.saturating_add(1);
                return;
            };
            if self.flows.len() >= MAX_FLOWS {
                if let Some(oldest) = self
                    .flows
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| *k)
                {
                    self.flows.remove(&oldest);
                }
            }
            let flow = self.open(key, target);
            self.flows.insert(key, flow);
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.last = now;
        match flow.out.try_send(payload.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped = self.dropped.saturating_add(1),
            Err(TrySendError::Disconnected(_)) => {
                // The flow's socket failed; the next datagram opens a new one.
                self.dropped = self.dropped.saturating_add(1);
                self.flows.remove(&key);
            }
        }
    }

    /// Answers the DNS query `payload` through `resolver` on a thread of its own (resolving
    /// may wait on the monitor); the reply goes to the guest like any flow's.
    fn resolve(&mut self, key: FlowKey, payload: &[u8], resolver: Arc<dyn Resolve>) {
        let in_flight = Arc::clone(&self.dns_in_flight);
        // Relaxed: a counter bounding threads, ordering nothing else.
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_DNS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        let query = payload.to_vec();
        let replies = self.replies_tx.clone();
        let kick = Arc::clone(&self.kick);
        let counter = Arc::clone(&in_flight);
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                if let Some(reply) = crate::dns::answer(&query, resolver.as_ref()) {
                    if replies.try_send((key, reply)).is_ok() {
                        kick.notify_one();
                    }
                }
                counter.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    fn open(&self, key: FlowKey, target: SocketAddr) -> Flow {
        let (out, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let session = self.session.clone();
        let replies = self.replies_tx.clone();
        let kick = Arc::clone(&self.kick);
        let stop2 = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("udp-flow".into())
            .spawn(move || flow_thread(session, key, target, rx, replies, kick, stop2));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a UDP flow's thread");
        }
        Flow {
            out,
            last: Instant::now(),
            stop,
        }
    }

    /// Writes each queued reply to the guest as a packet (through `write`), from the flow's
    /// original destination.
    pub(crate) fn deliver(&mut self, out: &mut [u8], mut write: impl FnMut(&[u8])) {
        for _ in 0..REPLIES {
            let Ok((key, payload)) = self.replies.try_recv() else {
                break;
            };
            if let Some(f) = self.flows.get_mut(&key) {
                f.last = Instant::now();
            }
            match udp_packet(key.dst, key.guest, &payload, out) {
                Some(n) => write(out.get(..n).unwrap_or(&[])),
                None => self.dropped = self.dropped.saturating_add(1),
            }
        }
    }

    /// Closes flows idle for [`IDLE`] (checked at most once a second).
    pub(crate) fn expire(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_expiry) < Duration::from_secs(1) {
            return;
        }
        self.last_expiry = now;
        self.flows.retain(|_, f| now.duration_since(f.last) < IDLE);
    }
}

/// One flow's socket: binds, connects to `target`, then sends what `rx` brings while a
/// receiver thread hands replies to the loop. Ends when the flow is dropped.
fn flow_thread(
    session: ArcaSession,
    key: FlowKey,
    target: SocketAddr,
    rx: Receiver<Vec<u8>>,
    replies: SyncSender<(FlowKey, Vec<u8>)>,
    kick: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match session
        .bind_udp(any)
        .and_then(|s| s.connect(target).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "cannot open a UDP flow");
            return;
        }
    };
    let receiver = match sock.try_clone() {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot clone a UDP flow's socket");
            return;
        }
    };
    let recv_stop = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("udp-recv".into())
        .spawn(move || {
            let _ = receiver.set_read_timeout(Some(RECV_TICK));
            let mut buf = vec![0u8; 65_536];
            // Acquire pairs with `Flow::drop`'s Release store.
            while !recv_stop.load(Ordering::Acquire) {
                match receiver.recv(&mut buf) {
                    Ok(n) => {
                        let d = buf.get(..n).unwrap_or(&[]).to_vec();
                        if replies.try_send((key, d)).is_ok() {
                            kick.notify_one();
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    // An ICMP error from the destination (refused port): keep the flow.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP flow receive failed");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a UDP flow's receiver");
        return;
    }
    while let Ok(d) = rx.recv() {
        if let Err(e) = sock.send(&d) {
            tracing::debug!(%target, error = %e, "UDP send failed");
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return;
            }
        }
    }
}
