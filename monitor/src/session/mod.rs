//! One guest's session: its region, allocator, control pipe, connections and
//! listeners, and the handling of every control request.
//!
//! Everything here treats the guest as hostile: frames are decoded by
//! `arca-wire` (which never panics), ids are looked up in this session's own
//! tables only (a guest can name nothing of another guest's), and every pipe
//! fault closes that pipe alone.
//!
//! Policy (POLICY.md) is enforced here, before any socket call: rules give
//! `PermissionDenied`, limits `QuotaExceeded`; each refusal is counted in
//! [`SessionStats::policy`] and logged with the session, the request and the
//! rule or limit involved.
//!
//! The session opens its sockets through [`crate::net::Net`] and reads the
//! time from [`Ctx::now`]: the loop lends it the kernel and its clock, the
//! unit tests (`tests.rs`) a network that fails on cue and a clock they set.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use arca_wire::{
    Bootstrap, ConnId, ErrorCode, Frame, FrameDecoder, FrameError, Handle, ListenerId, Message,
    PipeInfo, RequestId, SocketOption, HELLO_MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use mio::{Interest, Registry, Token};
use shm_ring::{
    AllocStats, BidirectionalPipe, BuddyAllocator, Doorbell, NotifyBitmap, PeerWakers, RingError,
    ShmAllocator, ShmRegion,
};

use crate::config::Config;
use crate::policy::{PolicyCounters, Proto};
use crate::ratelimit::WarnLimiter;
use crate::relay::{Relay, RelayFault, Service};
use crate::udp::UdpRelay;

mod admission;
mod control;
mod names;
mod tcp;
mod udp;

use admission::Admission;

/// Most packets read from a session socket in one turn (a guest sends none
/// after attaching; what it sends anyway is discarded, a turn's worth at a
/// time).
const SOCKET_READS: usize = 64;

/// Identifies a session within one monitor.
pub type SessionId = u64;

/// What a registered token refers to inside a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSource {
    /// The monitor's doorbell for this guest.
    Bell,
    /// The session socket (liveness: hang-up means the guest is gone).
    Socket,
    /// A listening socket.
    Listener(ListenerId),
    /// A connection's socket (connecting or established).
    Conn(ConnId),
}

/// Services the event loop lends a session while it handles an event.
pub struct Ctx<'a> {
    /// For (de)registering sockets.
    pub registry: &'a Registry,
    /// Allocates tokens; the loop maps them back to `(session, source)`.
    pub tokens: &'a mut dyn FnMut(SessionSource) -> Token,
    /// Forgets a token.
    pub release: &'a mut dyn FnMut(Token),
    /// Monitor settings.
    pub config: &'a Config,
    /// Who holds reuse-bound UDP ports among the monitor's guests.
    pub reuse: &'a crate::udp::ReuseOwners,
    /// Opens the guest's sockets ([`crate::net::Kernel`] in the loop).
    pub net: &'a dyn crate::net::Net,
    /// The resolver, for `Resolve` (`None`: answered `ResolverFailure`).
    pub resolver: Option<&'a crate::resolver::ResolverClient>,
    /// The time as the loop read it for this turn: the session reads no
    /// clock of its own for what it decides (connect rates, deadlines).
    pub now: Instant,
}

/// A snapshot of one session's resources, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStats {
    /// Connections held (connecting or open).
    pub conns: usize,
    /// Listeners held.
    pub listeners: usize,
    /// The allocator's figures.
    pub alloc: AllocStats,
    /// Bytes allocated for the session's fixed structures (control pipe and
    /// bitmap): `alloc.allocated` equals this when no data pipe is live.
    pub fixed_bytes: u64,
    /// UDP sockets held.
    pub udp_sockets: usize,
    /// Requests waiting for their answer (pending connects and accepts).
    pub requests_in_flight: u64,
    /// Connect deadlines armed: never more than the connects in flight.
    pub timers: usize,
    /// Relay passes cut off after going round without moving a byte
    /// ([`crate::relay::Progress::futile`]): 0 for an honest guest.
    pub futile_passes: u64,
    /// What the policy refused.
    pub policy: PolicyCounters,
}

enum ConnState {
    Connecting {
        request: RequestId,
        addr: SocketAddr,
        /// Its entry in [`Session::timers`], if it has a timeout.
        deadline: Option<Instant>,
    },
    Open(Box<Relay>),
    /// A UDP socket (its id is a `ConnId` too: it has a pipe and a slot).
    Udp(Box<UdpRelay>),
}

impl ConnState {
    /// The relay of an open connection or a UDP socket; `None` while
    /// connecting.
    fn relay(&mut self) -> Option<&mut dyn Service> {
        match self {
            ConnState::Connecting { .. } => None,
            ConnState::Open(r) => Some(r.as_mut()),
            ConnState::Udp(r) => Some(r.as_mut()),
        }
    }
}

struct Conn {
    token: Token,
    state: ConnState,
    /// Connecting only: the socket (an open connection's lives in its relay).
    sock: Option<mio::net::TcpStream>,
    queued: bool,
}

struct Listener {
    token: Token,
    sock: mio::net::TcpListener,
    /// Accepts waiting for a connection, at most `backlog` of them.
    pending: VecDeque<RequestId>,
    /// The listen backlog: also the bound on pending accepts, so a guest
    /// cannot grow the queue without limit.
    backlog: usize,
}

/// Connection ids in use, below the bitmap's size; 0 is the control pipe's.
struct IdPool {
    free: Vec<u32>,
    next: u32,
    limit: u32,
}

impl IdPool {
    fn take(&mut self) -> Option<ConnId> {
        if let Some(id) = self.free.pop() {
            return Some(ConnId(id));
        }
        if self.next >= self.limit {
            return None;
        }
        self.next += 1;
        Some(ConnId(self.next - 1))
    }
    fn put(&mut self, id: ConnId) {
        self.free.push(id.0);
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The guest closed its session socket or exited.
    GuestGone,
    /// The guest broke the control protocol or corrupted the control pipe.
    Violation(String),
    /// The monitor is shutting down.
    Shutdown,
}

/// One guest.
pub struct Session {
    id: SessionId,
    region: Arc<ShmRegion>,
    alloc: ShmAllocator,
    control: BidirectionalPipe,
    bitmap: Arc<NotifyBitmap>,
    _bitmap_block: shm_ring::Allocation,
    fixed_bytes: u64,
    guest_bell: Arc<Doorbell>,
    monitor_bell: Doorbell,
    sock: OwnedFd,
    bell_token: Token,
    sock_token: Token,
    decoder: FrameDecoder,
    outbox: Vec<u8>,
    greeted: bool,
    /// The protocol version the handshake settled on.
    version: u16,
    /// Resolutions waiting for the resolver.
    resolving: HashMap<RequestId, names::PendingResolve>,
    resolver: Option<crate::resolver::ResolverClient>,
    conns: HashMap<ConnId, Conn>,
    listeners: HashMap<ListenerId, Listener>,
    ids: IdPool,
    next_listener: u32,
    ready: VecDeque<ConnId>,
    /// The session socket had more to read than one turn reads.
    socket_pending: bool,
    /// Connect deadlines, each removed with its connect.
    timers: BTreeMap<(Instant, ConnId), RequestId>,
    /// See [`SessionStats::futile_passes`].
    futile: u64,
    ended: Option<EndReason>,
    admission: Admission,
    /// Bounds the warnings this guest can cause with malformed frames...
    frame_warns: WarnLimiter,
    /// ...and with pipes closed for cause.
    fault_warns: WarnLimiter,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("conns", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Creating the region failed.
    #[error("region: {0}")]
    Region(#[from] shm_ring::RegionError),
    /// The region's size does not suit the allocator.
    #[error("allocator: {0}")]
    Allocator(#[from] shm_ring::ConfigError),
    /// The region has no room for the session's fixed structures.
    #[error("allocating the session's structures: {0}")]
    Alloc(#[from] shm_ring::AllocError),
    /// The control pipe could not be laid out in its block.
    #[error("control pipe: {0}")]
    Pipe(#[from] shm_ring::PipeError),
    /// The notification bitmap does not fit its block.
    #[error("notification bitmap: {0}")]
    Bitmap(#[from] shm_ring::OffsetError),
    /// An OS call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Session {
    /// Creates the guest's region, control pipe, bitmap and doorbells, sends
    /// the bootstrap over `sock` and registers with the loop.
    ///
    /// # Errors
    /// [`SetupError`] if any resource cannot be created or the guest's socket
    /// refuses the bootstrap.
    pub fn new(id: SessionId, sock: OwnedFd, ctx: &mut Ctx<'_>) -> Result<Self, SetupError> {
        let cfg = ctx.config;
        let region = Arc::new(ShmRegion::create(
            &format!("arca-guest-{id}"),
            cfg.region_size,
        )?);
        let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096)?);
        let guest_bell = Arc::new(Doorbell::new()?);
        let monitor_bell = Doorbell::new()?;
        let block = alloc.alloc(BidirectionalPipe::block_size(
            cfg.control_ring,
            cfg.control_ring,
        ))?;
        let control = BidirectionalPipe::create(
            &region,
            block,
            cfg.control_ring,
            cfg.control_ring,
            PeerWakers::single(guest_bell.clone()),
        )?;
        // Armed before the guest can know the pipe exists: its first request
        // then always rings (arming later could miss a request written in
        // between).
        let mut control = control;
        control.rx().arm();
        let bitmap_block = alloc.alloc(NotifyBitmap::bytes_for(cfg.max_conns))?;
        let bitmap = Arc::new(NotifyBitmap::new(
            &region,
            bitmap_block.offset(),
            cfg.max_conns,
        )?);
        bitmap.reset();
        let boot = Bootstrap {
            region_size: region.size(),
            control_offset: control.layout().offset().0,
            control_cap_to_monitor: cfg.control_ring as u32,
            control_cap_to_guest: cfg.control_ring as u32,
            bitmap_offset: bitmap_block.offset().0,
            bitmap_slots: cfg.max_conns,
        };
        crate::handoff::send_bootstrap(
            sock.as_fd(),
            &boot,
            region.fd(),
            guest_bell.as_fd(),
            monitor_bell.as_fd(),
        )?;
        nix::fcntl::fcntl(
            sock.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        let bell_token = (ctx.tokens)(SessionSource::Bell);
        let sock_token = (ctx.tokens)(SessionSource::Socket);
        ctx.registry.register(
            &mut mio::unix::SourceFd(&monitor_bell.as_fd().as_raw_fd()),
            bell_token,
            Interest::READABLE,
        )?;
        ctx.registry.register(
            &mut mio::unix::SourceFd(&sock.as_raw_fd()),
            sock_token,
            Interest::READABLE,
        )?;
        let fixed_bytes = alloc.stats().allocated;
        let s = Self {
            id,
            region,
            alloc,
            control,
            bitmap,
            _bitmap_block: bitmap_block,
            fixed_bytes,
            guest_bell,
            monitor_bell,
            sock,
            bell_token,
            sock_token,
            decoder: FrameDecoder::new(),
            outbox: Vec::new(),
            greeted: false,
            version: 0,
            resolving: HashMap::new(),
            resolver: ctx.resolver.cloned(),
            conns: HashMap::new(),
            listeners: HashMap::new(),
            ids: IdPool {
                free: Vec::new(),
                next: 1,
                limit: cfg.max_conns,
            },
            next_listener: 1,
            ready: VecDeque::new(),
            socket_pending: false,
            timers: BTreeMap::new(),
            futile: 0,
            ended: None,
            admission: Admission::new(id, cfg.policy.clone()),
            frame_warns: WarnLimiter::new(),
            fault_warns: WarnLimiter::new(),
        };
        tracing::info!(
            session = id,
            region = s.region.size(),
            "guest session started"
        );
        Ok(s)
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<&EndReason> {
        self.ended.as_ref()
    }

    /// Resource figures.
    pub fn stats(&self) -> SessionStats {
        let mut policy = self.admission.counters;
        policy.udp_denied = self.admission.udp_denied_closed
            + self
                .conns
                .values()
                .filter_map(|c| match &c.state {
                    ConnState::Udp(r) => Some(r.counters().denied),
                    _ => None,
                })
                .sum::<u64>();
        SessionStats {
            conns: self.conns.len(),
            listeners: self.listeners.len(),
            alloc: self.alloc.stats(),
            fixed_bytes: self.fixed_bytes,
            udp_sockets: self.admission.udp as usize,
            requests_in_flight: self.in_flight(),
            timers: self.timers.len(),
            futile_passes: self.futile,
            policy,
        }
    }

    /// Adds a connection, counting it against the limits.
    fn insert_conn(&mut self, id: ConnId, conn: Conn) {
        match conn.state {
            ConnState::Connecting { .. } => {
                self.admission.tcp += 1;
                self.admission.connecting += 1;
            }
            ConnState::Open(_) => self.admission.tcp += 1,
            ConnState::Udp(_) => self.admission.udp += 1,
        }
        self.conns.insert(id, conn);
    }

    /// Removes a connection, releasing what it counted.
    fn remove_conn(&mut self, id: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        let u = &mut self.admission;
        match &c.state {
            ConnState::Connecting { deadline, .. } => {
                u.tcp = u.tcp.saturating_sub(1);
                u.connecting = u.connecting.saturating_sub(1);
                if let Some(at) = deadline {
                    self.timers.remove(&(*at, id));
                }
            }
            ConnState::Open(_) => u.tcp = u.tcp.saturating_sub(1),
            ConnState::Udp(r) => {
                u.udp = u.udp.saturating_sub(1);
                u.udp_denied_closed += r.counters().denied;
            }
        }
        Some(c)
    }

    /// Control requests waiting for their answer: pending connects, accepts
    /// and resolutions.
    fn in_flight(&self) -> u64 {
        u64::from(self.admission.connecting)
            + self.resolving.len() as u64
            + self
                .listeners
                .values()
                .map(|l| l.pending.len() as u64)
                .sum::<u64>()
    }

    /// True when a pipe of `block` bytes fits the pipe memory limit.
    fn pipe_fits(&self, block: u64) -> bool {
        let used = self
            .alloc
            .stats()
            .allocated
            .saturating_sub(self.fixed_bytes);
        self.admission.pipe_fits(used, block)
    }

    /// True when some connection still has budgeted work queued.
    pub fn has_ready_work(&self) -> bool {
        !self.ready.is_empty() || self.socket_pending
    }

    fn end(&mut self, why: EndReason) {
        if self.ended.is_none() {
            match &why {
                EndReason::Violation(msg) => {
                    tracing::warn!(session = self.id, "closing session: {msg}")
                }
                other => tracing::info!(session = self.id, reason = ?other, "session ending"),
            }
            self.ended = Some(why);
        }
    }

    /// Handles readiness of one of this session's sources.
    pub fn on_event(
        &mut self,
        src: SessionSource,
        readable: bool,
        writable: bool,
        ctx: &mut Ctx<'_>,
    ) {
        match src {
            SessionSource::Bell => self.on_bell(ctx),
            SessionSource::Socket => self.on_socket(),
            SessionSource::Listener(id) => {
                self.accept_pending(id, ctx);
                // A refusal (AcceptErr) enqueues no connection, so no later
                // `run_ready` would send it: flush now.
                self.flush_outbox();
            }
            SessionSource::Conn(id) => self.on_conn_event(id, readable, writable, ctx),
        }
    }

    fn on_socket(&mut self) {
        // The guest never sends anything after connecting; a read of 0 or an
        // error means it is gone. Bytes it sends anyway are discarded.
        let mut buf = [0u8; 256];
        self.socket_pending = false;
        for _ in 0..SOCKET_READS {
            match nix::sys::socket::recv(
                self.sock.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return self.end(EndReason::GuestGone),
                Ok(_) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return self.end(EndReason::GuestGone),
            }
        }
        // Still sending: read on next turn (the socket is edge-triggered, so
        // no new event would come for what is already queued).
        self.socket_pending = true;
    }

    fn on_bell(&mut self, ctx: &mut Ctx<'_>) {
        // The bell is registered edge-triggered (mio): every ring is an event of its
        // own, so the counter is never read — a read per wake would only cost a system
        // call. Which pipes want service is in the bitmap.
        let mut slots = Vec::new();
        self.bitmap.take(|slot| slots.push(slot));
        for slot in slots {
            if slot != 0 {
                self.enqueue(ConnId(slot));
            }
        }
        self.service_control(ctx);
        self.run_ready(ctx);
    }

    fn enqueue(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.queued && matches!(c.state, ConnState::Open(_) | ConnState::Udp(_)) {
                c.queued = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Services queued connections once each (the loop calls this every
    /// turn while [`has_ready_work`](Self::has_ready_work)).
    pub fn run_ready(&mut self, ctx: &mut Ctx<'_>) {
        if self.socket_pending {
            self.on_socket();
        }
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(c) = self.conns.get_mut(&id) {
                c.queued = false;
            }
            self.service_conn(id, ctx);
        }
        // Control replies produced while relaying (none today) and any the
        // guest could not take before.
        self.flush_outbox();
    }

    fn on_conn_event(&mut self, id: ConnId, readable: bool, writable: bool, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.state.relay() {
            Some(relay) => {
                relay.on_event(readable, writable);
                self.service_conn(id, ctx);
            }
            None => self.finish_connect(id, ctx),
        }
    }

    fn service_conn(&mut self, id: ConnId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(relay) = c.state.relay() else {
            return; // still connecting
        };
        let outcome = relay.service(ctx.config.relay_budget);
        if outcome.is_err() {
            relay.abort_with(ctx.registry);
        }
        relay.release_finished(ctx.registry);
        let done = relay.is_done();
        let token = c.token;
        match outcome {
            Ok(p) => {
                if p.more && !c.queued {
                    c.queued = true;
                    self.ready.push_back(id);
                }
                if p.futile {
                    self.note_futile(id);
                }
            }
            Err(fault) => self.log_fault(id, &fault),
        }
        if done {
            self.remove_conn(id);
            (ctx.release)(token);
            self.ids.put(id);
            tracing::debug!(
                session = self.id,
                conn = id.0,
                "connection closed, pipe freed"
            );
        }
    }

    /// A service pass that was cut off without doing any work (see
    /// [`crate::relay::Progress::futile`]): counted, and logged at a bounded
    /// rate.
    fn note_futile(&mut self, id: ConnId) {
        self.futile += 1;
        if allow_warning(&mut self.fault_warns, self.id, "futile-pass") {
            tracing::warn!(
                session = self.id,
                conn = id.0,
                futile = self.futile,
                "a relay pass went round without moving a byte until cut off"
            );
        }
    }

    fn log_fault(&mut self, id: ConnId, fault: &RelayFault) {
        if allow_warning(&mut self.fault_warns, self.id, "pipe-fault") {
            tracing::warn!(
                session = self.id,
                conn = id.0,
                "closing connection: {fault}"
            );
        }
    }

    /// Gives an established socket a connection id and a pipe, and starts
    /// relaying. Returns what the guest needs to know.
    /// A new pipe block with rings of `up` (guest → monitor) and `down` bytes, waking the
    /// guest through its bell; `OutOfMemory` (logged) when the region has no room.
    fn new_pipe(&mut self, up: u64, down: u64, what: &str) -> Result<BidirectionalPipe, ErrorCode> {
        let pipe = self
            .alloc
            .alloc(BidirectionalPipe::block_size(up, down))
            .map_err(|_| ErrorCode::OutOfMemory)
            .and_then(|block| {
                let wake = PeerWakers::single(self.guest_bell.clone());
                BidirectionalPipe::create(&self.region, block, up, down, wake)
                    .map_err(|_| ErrorCode::OutOfMemory)
            });
        if pipe.is_err() {
            tracing::warn!(session = self.id, stats = ?self.alloc.stats(), "no room for a {what} pipe");
        }
        pipe
    }

    /// Takes a connection id and a token for `sock` and registers it for
    /// both readiness kinds; on failure gives both back.
    fn register_conn<S: mio::event::Source>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
    ) -> Result<(ConnId, Token), ErrorCode> {
        let id = self.ids.take().ok_or(ErrorCode::QuotaExceeded)?;
        let token = (ctx.tokens)(SessionSource::Conn(id));
        if let Err(e) = ctx
            .registry
            .register(sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            (ctx.release)(token);
            self.ids.put(id);
            return Err(ErrorCode::from_io(&e));
        }
        Ok((id, token))
    }

    /// Deregisters a removed connection's sockets and frees its token and id
    /// (its pipe, if any, is freed when dropped).
    fn release_conn(&mut self, id: ConnId, c: Conn, ctx: &mut Ctx<'_>) {
        if let Some(mut s) = c.sock {
            let _ = ctx.registry.deregister(&mut s);
        }
        (ctx.release)(c.token);
        self.ids.put(id);
    }

    fn drop_conn(&mut self, c: Conn, ctx: &mut Ctx<'_>) {
        let Conn {
            token, state, sock, ..
        } = c;
        if let Some(mut s) = sock {
            let _ = ctx.registry.deregister(&mut s);
        }
        match state {
            ConnState::Open(mut relay) => relay.abort_with(ctx.registry),
            ConnState::Udp(mut relay) => relay.abort_with(ctx.registry),
            ConnState::Connecting { request, .. } => {
                self.reply(
                    request,
                    Message::ConnectErr {
                        code: ErrorCode::ConnectionAborted,
                    },
                );
            }
        }
        (ctx.release)(token);
    }

    /// Removes the connection or UDP socket `handle` names, if this session
    /// holds one of that kind.
    fn take_conn(&mut self, handle: Handle) -> Option<Conn> {
        let (id, udp) = match handle {
            Handle::Connection(id) => (id, false),
            Handle::Udp(id) => (id, true),
            Handle::Listener(_) => return None,
        };
        let is_udp = matches!(self.conns.get(&id)?.state, ConnState::Udp(_));
        if is_udp == udp {
            self.remove_conn(id)
        } else {
            None
        }
    }

    /// Releases everything: sockets closed, pipes freed, region unmapped when
    /// the session is dropped.
    pub fn teardown(&mut self, ctx: &mut Ctx<'_>) {
        for (_, mut l) in self.listeners.drain() {
            let _ = ctx.registry.deregister(&mut l.sock);
            (ctx.release)(l.token);
        }
        let conns: Vec<_> = self.conns.drain().map(|(_, c)| c).collect();
        for c in conns {
            self.drop_conn(c, ctx);
        }
        let _ = ctx.registry.deregister(&mut mio::unix::SourceFd(
            &self.monitor_bell.as_fd().as_raw_fd(),
        ));
        let _ = ctx
            .registry
            .deregister(&mut mio::unix::SourceFd(&self.sock.as_raw_fd()));
        (ctx.release)(self.bell_token);
        (ctx.release)(self.sock_token);
        self.ready.clear();
        // Wake the guest so blocked calls notice (its socket also hangs up
        // when this session is dropped).
        self.control.close_write();
        self.control.close_read();
        self.guest_bell.ring();
        for (limiter, what) in [
            (&mut self.frame_warns, "malformed-frame"),
            (&mut self.fault_warns, "pipe-fault"),
            (&mut self.admission.logged, "policy"),
        ] {
            let suppressed = limiter.poll_suppressed();
            if suppressed > 0 {
                tracing::warn!(
                    session = self.id,
                    "{suppressed} more {what} warnings suppressed"
                );
            }
        }
        tracing::info!(session = self.id, alloc = ?self.alloc.stats(), "session torn down");
    }
}

/// Counts one guest-caused warning of kind `what`; true if it may be logged.
/// Reports the warnings suppressed in the window before, if any.
fn allow_warning(limiter: &mut WarnLimiter, session: SessionId, what: &str) -> bool {
    let v = limiter.handle_warning(Instant::now());
    if v.suppressed_before > 0 {
        tracing::warn!(
            session,
            "{} more {what} warnings suppressed",
            v.suppressed_before
        );
    }
    v.log
}

#[cfg(test)]
mod tests;
