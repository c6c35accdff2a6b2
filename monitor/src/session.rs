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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use arca_wire::{
    Bootstrap, ConnId, ErrorCode, Frame, FrameDecoder, FrameError, Handle, ListenerId, Message,
    PipeInfo, RequestId, SocketOption, HELLO_MAGIC, PROTOCOL_VERSION,
};
use mio::{Interest, Registry, Token};
use shm_ring::{
    AllocStats, BidirectionalPipe, BuddyAllocator, Doorbell, NotifyBitmap, PeerWakers, RingError,
    ShmAllocator, ShmRegion,
};

use crate::config::Config;
use crate::policy::{ConnectRate, Decision, Policy, PolicyCounters, Proto};
use crate::ratelimit::WarnLimiter;
use crate::relay::{Relay, RelayFault};
use crate::udp::UdpRelay;

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
    policy: Arc<Policy>,
    usage: Usage,
    /// Bounds the warnings this guest can cause with malformed frames...
    frame_warns: WarnLimiter,
    /// ...and with pipes closed for cause.
    fault_warns: WarnLimiter,
}

/// What a session holds, against its policy's limits.
#[derive(Debug)]
struct Usage {
    /// TCP connections, connecting or open.
    tcp: u32,
    /// Of which connecting (requests in flight).
    connecting: u32,
    /// UDP sockets.
    udp: u32,
    rate: ConnectRate,
    counters: PolicyCounters,
    /// Policy drops of UDP sockets already closed.
    udp_denied_closed: u64,
    /// Bounds the refusals logged (a guest can cause them at will).
    logged: WarnLimiter,
    /// Process-unique owner id for UDP port sharing (`udp::claim_reuse`).
    owner: u64,
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
    /// Carving the region failed.
    #[error("allocator: {0}")]
    Alloc(String),
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
        let alloc = ShmAllocator::new(
            BuddyAllocator::new(region.size(), 4096)
                .map_err(|e| SetupError::Alloc(e.to_string()))?,
        );
        let guest_bell = Arc::new(Doorbell::new()?);
        let monitor_bell = Doorbell::new()?;
        let block = alloc
            .alloc(BidirectionalPipe::block_size(
                cfg.control_ring,
                cfg.control_ring,
            ))
            .map_err(|e| SetupError::Alloc(e.to_string()))?;
        let control = BidirectionalPipe::create(
            &region,
            block,
            cfg.control_ring,
            cfg.control_ring,
            PeerWakers::single(guest_bell.clone()),
        )
        .map_err(|e| SetupError::Alloc(e.to_string()))?;
        // Armed before the guest can know the pipe exists: its first request
        // then always rings (arming later could miss a request written in
        // between).
        let mut control = control;
        control.rx().arm();
        let bitmap_block = alloc
            .alloc(NotifyBitmap::bytes_for(cfg.max_conns))
            .map_err(|e| SetupError::Alloc(e.to_string()))?;
        let bitmap = Arc::new(
            NotifyBitmap::new(&region, bitmap_block.offset(), cfg.max_conns)
                .map_err(|e| SetupError::Alloc(e.to_string()))?,
        );
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
            policy: cfg.policy.clone(),
            usage: Usage {
                tcp: 0,
                connecting: 0,
                udp: 0,
                rate: ConnectRate::new(
                    cfg.policy.limits.connect_rate,
                    cfg.policy.limits.connect_burst,
                ),
                counters: PolicyCounters::default(),
                udp_denied_closed: 0,
                logged: WarnLimiter::new(),
                owner: crate::udp::next_owner(),
            },
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
        let mut policy = self.usage.counters;
        policy.udp_denied = self.usage.udp_denied_closed
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
            udp_sockets: self.usage.udp as usize,
            requests_in_flight: self.in_flight(),
            timers: self.timers.len(),
            futile_passes: self.futile,
            policy,
        }
    }

    // ---- policy ---------------------------------------------------------

    /// Adds a connection, counting it against the limits.
    fn insert_conn(&mut self, id: ConnId, conn: Conn) {
        match conn.state {
            ConnState::Connecting { .. } => {
                self.usage.tcp += 1;
                self.usage.connecting += 1;
            }
            ConnState::Open(_) => self.usage.tcp += 1,
            ConnState::Udp(_) => self.usage.udp += 1,
        }
        self.conns.insert(id, conn);
    }

    /// Removes a connection, releasing what it counted.
    fn remove_conn(&mut self, id: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        let u = &mut self.usage;
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

    /// Control requests waiting for their answer: pending connects and
    /// accepts.
    fn in_flight(&self) -> u64 {
        u64::from(self.usage.connecting)
            + self
                .listeners
                .values()
                .map(|l| l.pending.len() as u64)
                .sum::<u64>()
    }

    /// Counts and logs a refusal by rule; the code to reply with.
    fn deny(
        &mut self,
        rid: RequestId,
        what: &str,
        addr: &dyn std::fmt::Display,
        d: Decision,
    ) -> ErrorCode {
        self.usage.counters.denied += 1;
        if allow_warning(&mut self.usage.logged, self.id, "policy") {
            tracing::warn!(session = self.id, request = rid.0, %addr, rule = %d, "{what} denied by policy");
        }
        ErrorCode::PermissionDenied
    }

    /// Counts and logs a refusal by limit; the code to reply with.
    fn over_quota(
        &mut self,
        rid: Option<RequestId>,
        what: &str,
        limit: &str,
        value: u64,
    ) -> ErrorCode {
        self.usage.counters.quota_hits += 1;
        if allow_warning(&mut self.usage.logged, self.id, "policy") {
            tracing::warn!(
                session = self.id,
                request = rid.map(|r| r.0),
                "{what} refused: {limit} quota of {value} reached"
            );
        }
        ErrorCode::QuotaExceeded
    }

    /// Rule, then limits, then rate: may this connect go ahead?
    fn admit_connect(&mut self, rid: RequestId, addr: SocketAddr) -> Result<(), ErrorCode> {
        let d = self.policy.outbound(addr, Proto::Tcp);
        if !d.allowed {
            return Err(self.deny(rid, "connect", &addr, d));
        }
        let limits = &self.policy.limits;
        let (in_flight, conns) = (u64::from(limits.requests_in_flight), limits.connections);
        if self.in_flight() >= in_flight {
            return Err(self.over_quota(Some(rid), "connect", "requests in flight", in_flight));
        }
        if self.usage.tcp >= conns {
            return Err(self.over_quota(Some(rid), "connect", "connections", u64::from(conns)));
        }
        if !self.usage.rate.try_take(Instant::now()) {
            let rate = u64::from(self.policy.limits.connect_rate);
            return Err(self.over_quota(Some(rid), "connect", "new connections per second", rate));
        }
        Ok(())
    }

    /// True when a pipe of `block` bytes fits the pipe memory limit.
    fn pipe_fits(&self, block: u64) -> bool {
        let Some(limit) = self.policy.limits.pipe_memory else {
            return true;
        };
        // The buddy allocator hands out power-of-two blocks of 4 KiB or more.
        let block = block
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(4096);
        let used = self
            .alloc
            .stats()
            .allocated
            .saturating_sub(self.fixed_bytes);
        used.saturating_add(block) <= limit
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
        match &mut c.state {
            ConnState::Connecting { .. } => self.finish_connect(id, ctx),
            ConnState::Open(relay) => {
                relay.on_event(readable, writable);
                self.service_conn(id, ctx);
            }
            ConnState::Udp(relay) => {
                relay.on_event(readable, writable);
                self.service_conn(id, ctx);
            }
        }
    }

    fn service_conn(&mut self, id: ConnId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let budget = ctx.config.relay_budget;
        let (outcome, done) = match &mut c.state {
            ConnState::Connecting { .. } => return,
            ConnState::Open(relay) => {
                let outcome = relay.service(budget);
                if outcome.is_err() {
                    if let Some(mut s) = relay.abort() {
                        let _ = ctx.registry.deregister(&mut s);
                    }
                }
                if let Some(mut s) = relay.take_finished_socket() {
                    let _ = ctx.registry.deregister(&mut s);
                }
                (outcome, relay.is_done())
            }
            ConnState::Udp(relay) => {
                let outcome = relay.service(budget);
                if outcome.is_err() {
                    if let Some(mut s) = relay.abort() {
                        let _ = ctx.registry.deregister(&mut s);
                    }
                }
                if let Some(mut s) = relay.take_finished_socket() {
                    let _ = ctx.registry.deregister(&mut s);
                }
                (outcome, relay.is_done())
            }
        };
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

    // ---- control pipe -------------------------------------------------

    /// Reads and answers control frames, up to the turn's budget.
    pub fn service_control(&mut self, ctx: &mut Ctx<'_>) {
        self.control.rx().disarm();
        let budget = ctx.config.control_budget;
        let mut handled = 0;
        let mut passes = 0;
        let mut buf = [0u8; 4096];
        // Bounded in frames handled and in passes: a guest that dribbles a
        // frame in byte by byte makes passes without completing frames.
        while handled < budget && passes < budget && self.ended.is_none() {
            passes += 1;
            // Backpressure: a guest that does not read its replies gets no
            // more of its requests read.
            self.flush_outbox();
            if self.outbox.len() > ctx.config.max_outbox_bytes {
                self.control.tx().arm();
                break;
            }
            if !self.handle_buffered(ctx, &mut handled) {
                break;
            }
            match self.control.read(&mut buf) {
                Ok(0) => self.end(EndReason::GuestGone),
                Ok(n) => {
                    let mut input = &buf[..n];
                    while !input.is_empty() && self.ended.is_none() {
                        let taken = self.decoder.feed(input);
                        input = &input[taken..];
                        // A full decoder buffer holds a whole frame: handle
                        // frames (past the budget if need be, as these bytes
                        // are already read) to make room.
                        if taken == 0
                            && !self.handle_buffered(ctx, &mut handled)
                            && !input.is_empty()
                        {
                            let unbounded = &mut 0;
                            self.handle_buffered(ctx, unbounded);
                        }
                    }
                }
                Err(RingError::WouldBlock) => {
                    if self.control.rx().arm() {
                        self.control.rx().disarm();
                        continue;
                    }
                    break;
                }
                Err(e) => self.end(EndReason::Violation(format!("control pipe: {e}"))),
            }
        }
        if (handled >= budget || passes >= budget) && self.ended.is_none() {
            // More may be waiting: come back on the next turn.
            self.bitmap.set(0);
            self.monitor_bell.ring();
        }
        self.flush_outbox();
    }

    /// Handles the frames already decoded, counting them in `handled`.
    /// Returns false when the budget is spent or the session ended.
    fn handle_buffered(&mut self, ctx: &mut Ctx<'_>, handled: &mut usize) -> bool {
        let budget = ctx.config.control_budget;
        loop {
            if self.ended.is_some() {
                return false;
            }
            if *handled >= budget {
                return false;
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    *handled += 1;
                    self.handle(frame, ctx);
                }
                Ok(None) => return true,
                Err(FrameError::Malformed { header, error }) => {
                    *handled += 1;
                    if allow_warning(&mut self.frame_warns, self.id, "malformed-frame") {
                        tracing::warn!(
                            session = self.id,
                            request = header.request_id.0,
                            "malformed frame: {error}"
                        );
                    }
                    self.reply(
                        header.request_id,
                        Message::Error {
                            code: ErrorCode::InvalidInput,
                            rejected_type: header.message_type,
                        },
                    );
                }
                Err(e) => {
                    // Frame boundaries are lost: the session cannot go on.
                    // The guest is told which request ended it (PROTOCOL.md §7).
                    if let Some(h) = self.decoder.rejected_header() {
                        self.reply(
                            h.request_id,
                            Message::Error {
                                code: ErrorCode::InvalidInput,
                                rejected_type: h.message_type,
                            },
                        );
                        self.flush_outbox();
                    }
                    self.end(EndReason::Violation(e.to_string()));
                    return false;
                }
            }
        }
    }

    fn reply(&mut self, request: RequestId, msg: Message) {
        msg.encode(request, &mut self.outbox);
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        match self.control.write(&self.outbox) {
            Ok(n) => {
                self.outbox.drain(..n);
            }
            Err(RingError::WouldBlock) => {}
            Err(RingError::BrokenPipe) => {
                // The guest closed its reading half (it exited with replies
                // unread): it is gone, not misbehaving.
                tracing::debug!(
                    session = self.id,
                    unread = self.outbox.len(),
                    "guest stopped reading replies"
                );
                self.outbox.clear();
                self.end(EndReason::GuestGone);
                return;
            }
            Err(e) => {
                self.end(EndReason::Violation(format!("control pipe: {e}")));
                return;
            }
        }
        if !self.outbox.is_empty() && self.control.tx().arm() {
            self.control.tx().disarm();
            self.flush_outbox();
        }
    }

    fn handle(&mut self, frame: Frame, ctx: &mut Ctx<'_>) {
        let Frame {
            request_id: rid,
            message,
        } = frame;
        if !self.greeted {
            return self.handle_hello(rid, message);
        }
        match message {
            Message::ListenRequest { addr, backlog } => self.listen(rid, addr, backlog, ctx),
            Message::ConnectRequest { addr, timeout_ms } => {
                self.connect(rid, addr, timeout_ms, ctx)
            }
            Message::AcceptRequest { listener } if self.listeners.contains_key(&listener) => {
                let limit = u64::from(self.policy.limits.requests_in_flight);
                if self.in_flight() >= limit {
                    let code = self.over_quota(Some(rid), "accept", "requests in flight", limit);
                    return self.reply(rid, Message::AcceptErr { code });
                }
                let Some(l) = self.listeners.get_mut(&listener) else {
                    return;
                };
                if l.pending.len() >= l.backlog {
                    return self.reply(
                        rid,
                        Message::AcceptErr {
                            code: ErrorCode::QuotaExceeded,
                        },
                    );
                }
                l.pending.push_back(rid);
                self.accept_pending(listener, ctx);
            }
            Message::AcceptRequest { .. } => self.reply(
                rid,
                Message::AcceptErr {
                    code: ErrorCode::NotFound,
                },
            ),
            Message::Close { handle } => self.close(rid, handle, ctx),
            Message::UdpBind { addr, flags } => self.udp_bind(rid, addr, flags, ctx),
            Message::UdpConnect { socket, addr } => {
                let d = self.policy.outbound(addr, Proto::Udp);
                let reply = match self.udp(socket) {
                    Some(_) if !d.allowed => Message::UdpConnectErr {
                        code: self.deny(rid, "udp connect", &addr, d),
                    },
                    Some(relay) => match relay.connect(addr) {
                        Ok(local) => Message::UdpConnectOk { local },
                        Err(e) => Message::UdpConnectErr {
                            code: ErrorCode::from_io(&e),
                        },
                    },
                    None => Message::UdpConnectErr {
                        code: ErrorCode::NotFound,
                    },
                };
                self.reply(rid, reply);
            }
            Message::Membership {
                socket,
                op,
                group,
                interface,
            } => {
                let d = self.policy.multicast(group.ip());
                let join = op == arca_wire::MembershipOp::Join && group.ip().is_multicast();
                let reply = match self.udp(socket) {
                    Some(_) if join && !d.allowed => Message::MembershipErr {
                        code: self.deny(rid, "multicast join", &group.ip(), d),
                    },
                    Some(relay) => match relay.membership(op, group, interface) {
                        Ok(()) => Message::MembershipOk,
                        Err(e) => Message::MembershipErr {
                            code: ErrorCode::from_io(&e),
                        },
                    },
                    None => Message::MembershipErr {
                        code: ErrorCode::NotFound,
                    },
                };
                self.reply(rid, reply);
            }
            Message::SetOption {
                handle,
                option,
                value,
            } => self.set_option(rid, handle, option, value),
            Message::Hello { .. } => self.reply(
                rid,
                Message::Error {
                    code: ErrorCode::InvalidInput,
                    rejected_type: message.message_type(),
                },
            ),
            other => {
                // A reply type, or a type this monitor does not know.
                tracing::debug!(
                    session = self.id,
                    request = rid.0,
                    kind = other.message_type(),
                    "unsupported message"
                );
                self.reply(
                    rid,
                    Message::Error {
                        code: ErrorCode::Unsupported,
                        rejected_type: other.message_type(),
                    },
                );
            }
        }
    }

    fn handle_hello(&mut self, rid: RequestId, message: Message) {
        let reply = match message {
            Message::Hello { magic, .. } if magic != HELLO_MAGIC => Message::HelloErr {
                code: ErrorCode::InvalidInput,
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            },
            Message::Hello { version, flags, .. } if version != PROTOCOL_VERSION || flags != 0 => {
                Message::HelloErr {
                    code: ErrorCode::Unsupported,
                    min_version: PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                }
            }
            Message::Hello { version, .. } => {
                self.greeted = true;
                Message::HelloOk { version, flags: 0 }
            }
            other => {
                self.reply(
                    rid,
                    Message::Error {
                        code: ErrorCode::InvalidInput,
                        rejected_type: other.message_type(),
                    },
                );
                return;
            }
        };
        let refused = matches!(reply, Message::HelloErr { .. });
        self.reply(rid, reply);
        if refused {
            self.flush_outbox();
            self.end(EndReason::Violation("handshake refused".into()));
        }
    }

    fn listen(&mut self, rid: RequestId, addr: SocketAddr, backlog: u32, ctx: &mut Ctx<'_>) {
        let d = self.policy.listen(addr, Proto::Tcp);
        if !d.allowed {
            let code = self.deny(rid, "listen", &addr, d);
            return self.reply(rid, Message::ListenErr { code });
        }
        let limit = self.policy.limits.listeners;
        if self.listeners.len() >= limit as usize {
            let code = self.over_quota(Some(rid), "listen", "listeners", u64::from(limit));
            return self.reply(rid, Message::ListenErr { code });
        }
        let backlog = if backlog == 0 {
            ctx.config.default_backlog
        } else {
            backlog.min(65535)
        };
        let sock = match bind_listener(addr, backlog) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(session = self.id, request = rid.0, %addr, error = %e, "listen failed");
                return self.reply(
                    rid,
                    Message::ListenErr {
                        code: ErrorCode::from_io(&e),
                    },
                );
            }
        };
        let local = match sock.local_addr() {
            Ok(a) => a,
            Err(e) => {
                return self.reply(
                    rid,
                    Message::ListenErr {
                        code: ErrorCode::from_io(&e),
                    },
                )
            }
        };
        let id = ListenerId(self.next_listener);
        self.next_listener = self.next_listener.wrapping_add(1).max(1);
        let token = (ctx.tokens)(SessionSource::Listener(id));
        let mut sock = sock;
        if let Err(e) = ctx.registry.register(&mut sock, token, Interest::READABLE) {
            (ctx.release)(token);
            return self.reply(
                rid,
                Message::ListenErr {
                    code: ErrorCode::from_io(&e),
                },
            );
        }
        tracing::debug!(session = self.id, listener = id.0, %local, "listening");
        self.listeners.insert(
            id,
            Listener {
                token,
                sock,
                pending: VecDeque::new(),
                backlog: usize::try_from(backlog).unwrap_or(usize::MAX).max(1),
            },
        );
        self.reply(
            rid,
            Message::ListenOk {
                listener: id,
                local,
            },
        );
    }

    fn accept_pending(&mut self, id: ListenerId, ctx: &mut Ctx<'_>) {
        loop {
            let Some(l) = self.listeners.get_mut(&id) else {
                return;
            };
            let Some(&rid) = l.pending.front() else {
                return;
            };
            match l.sock.accept() {
                Ok((sock, peer)) => {
                    l.pending.pop_front();
                    let limit = self.policy.limits.connections;
                    if self.usage.tcp >= limit {
                        // Accepted only to be closed: the peer sees the
                        // connection end, the guest's listener carries on.
                        drop(sock);
                        self.usage.counters.accepts_refused += 1;
                        let code = self.over_quota(
                            Some(rid),
                            "incoming connection",
                            "connections",
                            u64::from(limit),
                        );
                        tracing::debug!(session = self.id, %peer, "incoming connection closed (over quota)");
                        self.reply(rid, Message::AcceptErr { code });
                        continue;
                    }
                    match self.open_conn(sock, ctx) {
                        Ok((conn, pipe, local)) => self.reply(
                            rid,
                            Message::IncomingConnection {
                                listener: id,
                                conn,
                                pipe,
                                local,
                                peer,
                            },
                        ),
                        Err(code) => self.reply(rid, Message::AcceptErr { code }),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    l.pending.pop_front();
                    self.reply(
                        rid,
                        Message::AcceptErr {
                            code: ErrorCode::from_io(&e),
                        },
                    );
                }
            }
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

    /// A data pipe for a TCP connection, within the pipe memory limit.
    fn tcp_pipe(&mut self, ctx: &Ctx<'_>) -> Result<(BidirectionalPipe, PipeInfo), ErrorCode> {
        let (up, down) = (ctx.config.upload_ring(), ctx.config.data_ring);
        if !self.pipe_fits(ctx.config.data_pipe_block()) {
            let limit = self.policy.limits.pipe_memory.unwrap_or(u64::MAX);
            return Err(self.over_quota(None, "data pipe", "pipe memory", limit));
        }
        // A pipe that is dropped on a later error frees its block.
        let pipe = self.new_pipe(up, down, "data")?;
        let info = PipeInfo {
            shm_offset: pipe.layout().offset().0,
            cap_to_monitor: up as u32,
            cap_to_guest: down as u32,
        };
        Ok((pipe, info))
    }

    /// Gives an established socket (accepted, or connected inside
    /// `connect(2)`) an id, a pipe and its registration.
    fn open_conn(
        &mut self,
        mut sock: mio::net::TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Result<(ConnId, PipeInfo, SocketAddr), ErrorCode> {
        let local = sock.local_addr().map_err(|e| ErrorCode::from_io(&e))?;
        let (pipe, info) = self.tcp_pipe(ctx)?;
        let id = self.ids.take().ok_or(ErrorCode::QuotaExceeded)?;
        let token = (ctx.tokens)(SessionSource::Conn(id));
        if let Err(e) =
            ctx.registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            (ctx.release)(token);
            self.ids.put(id);
            return Err(ErrorCode::from_io(&e));
        }
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Open(Box::new(Relay::new(sock, pipe))),
                sock: None,
                queued: false,
            },
        );
        // Bytes may already be waiting on the socket.
        self.enqueue(id);
        Ok((id, info, local))
    }

    fn connect(&mut self, rid: RequestId, addr: SocketAddr, timeout_ms: u32, ctx: &mut Ctx<'_>) {
        if let Err(code) = self.admit_connect(rid, addr) {
            return self.reply(rid, Message::ConnectErr { code });
        }
        let mut sock = match mio::net::TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                return self.reply(
                    rid,
                    Message::ConnectErr {
                        code: ErrorCode::from_io(&e),
                    },
                )
            }
        };
        // On loopback the handshake is usually over by the time connect(2) returns: answer
        // now, without registering the socket to learn it from the next turn.
        if let Some(outcome) = connect_outcome(&sock) {
            return self.answer_connect(rid, addr, sock, outcome, ctx);
        }
        let Some(id) = self.ids.take() else {
            return self.reply(
                rid,
                Message::ConnectErr {
                    code: ErrorCode::QuotaExceeded,
                },
            );
        };
        let token = (ctx.tokens)(SessionSource::Conn(id));
        if let Err(e) =
            ctx.registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            (ctx.release)(token);
            self.ids.put(id);
            return self.reply(
                rid,
                Message::ConnectErr {
                    code: ErrorCode::from_io(&e),
                },
            );
        }
        let deadline = (timeout_ms > 0).then(|| {
            let at = Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
            self.timers.insert((at, id), rid);
            at
        });
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Connecting {
                    request: rid,
                    addr,
                    deadline,
                },
                sock: Some(sock),
                queued: false,
            },
        );
    }

    /// A connecting socket became ready: if its outcome is known, the
    /// connection opens where it stands — same id, same registration, its
    /// state turned from connecting to open — or ends with the error.
    fn finish_connect(&mut self, id: ConnId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let ConnState::Connecting { request, addr, .. } = c.state else {
            return;
        };
        let Some(sock) = c.sock.as_ref() else { return };
        let Some(outcome) = connect_outcome(sock) else {
            return; // still in progress
        };
        let opened = outcome
            .and_then(|()| sock.local_addr())
            .map_err(|e| {
                tracing::debug!(session = self.id, request = request.0, %addr, error = %e, "connect failed");
                ErrorCode::from_io(&e)
            })
            .and_then(|local| self.tcp_pipe(ctx).map(|(pipe, info)| (local, pipe, info)));
        let reply = match opened {
            Ok((local, pipe, info)) => {
                let Some(mut c) = self.remove_conn(id) else {
                    return;
                };
                let Some(sock) = c.sock.take() else {
                    return;
                };
                c.state = ConnState::Open(Box::new(Relay::new(sock, pipe)));
                self.insert_conn(id, c);
                self.enqueue(id);
                Message::ConnectOk {
                    conn: id,
                    pipe: info,
                    local,
                    peer: addr,
                }
            }
            Err(code) => {
                if let Some(c) = self.remove_conn(id) {
                    self.release_conn(id, c, ctx);
                }
                Message::ConnectErr { code }
            }
        };
        self.reply(request, reply);
        self.flush_outbox();
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

    /// Replies to a connect whose outcome is known: on success the connection opens.
    fn answer_connect(
        &mut self,
        request: RequestId,
        addr: SocketAddr,
        sock: mio::net::TcpStream,
        outcome: io::Result<()>,
        ctx: &mut Ctx<'_>,
    ) {
        match outcome {
            Err(e) => {
                tracing::debug!(session = self.id, request = request.0, %addr, error = %e, "connect failed");
                self.reply(
                    request,
                    Message::ConnectErr {
                        code: ErrorCode::from_io(&e),
                    },
                );
            }
            Ok(()) => match self.open_conn(sock, ctx) {
                Ok((conn, pipe, local)) => self.reply(
                    request,
                    Message::ConnectOk {
                        conn,
                        pipe,
                        local,
                        peer: addr,
                    },
                ),
                Err(code) => self.reply(request, Message::ConnectErr { code }),
            },
        }
        self.flush_outbox();
    }

    /// The earliest connect deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|&(at, _)| at)
    }

    /// Times out every connect whose deadline is not after `now`.
    pub fn fire_timers(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        while let Some((&(at, id), &rid)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.on_timer(id, rid, ctx);
        }
    }

    /// A connect deadline passed. Its timer left [`Self::timers`] with it;
    /// the connect is still pending on `id` (a connect's end removes its
    /// timer).
    fn on_timer(&mut self, id: ConnId, rid: RequestId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get(&id) else { return };
        let ConnState::Connecting { request, .. } = c.state else {
            return;
        };
        if request != rid {
            return;
        }
        if let Some(c) = self.remove_conn(id) {
            self.release_conn(id, c, ctx);
        }
        self.reply(
            request,
            Message::ConnectErr {
                code: ErrorCode::TimedOut,
            },
        );
        self.flush_outbox();
    }

    fn close(&mut self, rid: RequestId, handle: Handle, ctx: &mut Ctx<'_>) {
        match handle {
            Handle::Listener(id) => match self.listeners.remove(&id) {
                Some(mut l) => {
                    let _ = ctx.registry.deregister(&mut l.sock);
                    (ctx.release)(l.token);
                    for pending in l.pending {
                        self.reply(
                            pending,
                            Message::AcceptErr {
                                code: ErrorCode::ConnectionAborted,
                            },
                        );
                    }
                    self.reply(rid, Message::CloseOk);
                }
                None => self.reply(
                    rid,
                    Message::CloseErr {
                        code: ErrorCode::NotFound,
                    },
                ),
            },
            Handle::Connection(id) | Handle::Udp(id) => match self.take_conn(handle) {
                Some(c) => {
                    self.drop_conn(c, ctx);
                    self.ids.put(id);
                    self.reply(rid, Message::CloseOk);
                }
                None => self.reply(
                    rid,
                    Message::CloseErr {
                        code: ErrorCode::NotFound,
                    },
                ),
            },
        }
    }

    fn drop_conn(&mut self, c: Conn, ctx: &mut Ctx<'_>) {
        let Conn {
            token, state, sock, ..
        } = c;
        if let Some(mut s) = sock {
            let _ = ctx.registry.deregister(&mut s);
        }
        match state {
            ConnState::Open(mut relay) => {
                if let Some(mut s) = relay.abort() {
                    let _ = ctx.registry.deregister(&mut s);
                }
            }
            ConnState::Udp(mut relay) => {
                if let Some(mut s) = relay.abort() {
                    let _ = ctx.registry.deregister(&mut s);
                }
            }
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

    /// The UDP socket with this id, if the session holds one.
    fn udp(&self, id: ConnId) -> Option<&UdpRelay> {
        match &self.conns.get(&id)?.state {
            ConnState::Udp(relay) => Some(relay),
            _ => None,
        }
    }

    fn udp_bind(&mut self, rid: RequestId, addr: SocketAddr, flags: u32, ctx: &mut Ctx<'_>) {
        let d = self.policy.listen(addr, Proto::Udp);
        if !d.allowed {
            let code = self.deny(rid, "udp bind", &addr, d);
            return self.reply(rid, Message::UdpBindErr { code });
        }
        let limit = self.policy.limits.udp_sockets;
        if self.usage.udp >= limit {
            let code = self.over_quota(Some(rid), "udp bind", "udp sockets", u64::from(limit));
            return self.reply(rid, Message::UdpBindErr { code });
        }
        let reply = match self.open_udp(addr, flags, ctx) {
            Ok((socket, pipe, local)) => Message::UdpBindOk {
                socket,
                pipe,
                local,
            },
            Err(code) => {
                tracing::debug!(session = self.id, request = rid.0, %addr, ?code, "udp bind failed");
                Message::UdpBindErr { code }
            }
        };
        self.reply(rid, reply);
    }

    /// Opens a UDP socket with an id and a datagram pipe.
    fn open_udp(
        &mut self,
        addr: SocketAddr,
        flags: u32,
        ctx: &mut Ctx<'_>,
    ) -> Result<(ConnId, PipeInfo, SocketAddr), ErrorCode> {
        if flags & !arca_wire::UDP_REUSE_ADDR != 0 {
            return Err(ErrorCode::InvalidInput);
        }
        let reuse = flags & arca_wire::UDP_REUSE_ADDR != 0;
        let owner = self.usage.owner;
        if reuse && crate::udp::reuse_held_by_other(owner, addr) {
            return Err(ErrorCode::AddrInUse);
        }
        let cap = ctx.config.udp_ring;
        if !self.pipe_fits(BidirectionalPipe::block_size(cap, cap)) {
            let limit = self.policy.limits.pipe_memory.unwrap_or(u64::MAX);
            return Err(self.over_quota(None, "udp pipe", "pipe memory", limit));
        }
        let mut sock = crate::udp::bind(addr, reuse).map_err(|e| ErrorCode::from_io(&e))?;
        let local = sock.local_addr().map_err(|e| ErrorCode::from_io(&e))?;
        let claim = match reuse.then(|| crate::udp::claim_reuse(owner, local)) {
            Some(Err(e)) => return Err(ErrorCode::from_io(&e)),
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let pipe = self.new_pipe(cap, cap, "udp")?;
        let id = self.ids.take().ok_or(ErrorCode::QuotaExceeded)?;
        let token = (ctx.tokens)(SessionSource::Conn(id));
        if let Err(e) =
            ctx.registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            (ctx.release)(token);
            self.ids.put(id);
            return Err(ErrorCode::from_io(&e));
        }
        let info = PipeInfo {
            shm_offset: pipe.layout().offset().0,
            cap_to_monitor: cap as u32,
            cap_to_guest: cap as u32,
        };
        tracing::debug!(session = self.id, socket = id.0, %local, "udp socket open");
        let relay = UdpRelay::new(sock, pipe)
            .with_policy(self.policy.clone(), self.id)
            .with_claim(claim);
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Udp(Box::new(relay)),
                sock: None,
                queued: false,
            },
        );
        Ok((id, info, local))
    }

    fn set_option(&mut self, rid: RequestId, handle: Handle, option: SocketOption, value: u64) {
        let reply = match (handle, option) {
            (Handle::Connection(id), SocketOption::NoDelay) => {
                if value > 1 {
                    Message::SetOptionErr {
                        code: ErrorCode::InvalidInput,
                    }
                } else {
                    match self.conns.get_mut(&id).map(|c| &mut c.state) {
                        Some(ConnState::Open(relay)) => match relay.set_nodelay(value == 1) {
                            Ok(()) => Message::SetOptionOk,
                            Err(e) => Message::SetOptionErr {
                                code: ErrorCode::from_io(&e),
                            },
                        },
                        Some(ConnState::Connecting { .. }) => Message::SetOptionErr {
                            code: ErrorCode::NotConnected,
                        },
                        Some(ConnState::Udp(_)) | None => Message::SetOptionErr {
                            code: ErrorCode::NotFound,
                        },
                    }
                }
            }
            (Handle::Udp(id), option) => match self.udp(id) {
                Some(relay) => match relay.set_option(option, value) {
                    Ok(()) => Message::SetOptionOk,
                    Err(e) => Message::SetOptionErr {
                        code: ErrorCode::from_io(&e),
                    },
                },
                None => Message::SetOptionErr {
                    code: ErrorCode::NotFound,
                },
            },
            _ => Message::SetOptionErr {
                code: ErrorCode::Unsupported,
            },
        };
        self.reply(rid, reply);
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
            (&mut self.usage.logged, "policy"),
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

/// `socket` + `SO_REUSEADDR` + `bind` + `listen(backlog)`, non-blocking.
fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener> {
    use nix::sys::socket::{
        self as s, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = s::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    s::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        s::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    s::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let backlog =
        s::Backlog::new(i32::try_from(backlog).unwrap_or(i32::MAX)).unwrap_or(s::Backlog::MAXCONN);
    s::listen(&fd, backlog)?;
    Ok(mio::net::TcpListener::from_std(
        std::net::TcpListener::from(fd),
    ))
}

/// The outcome of a non-blocking connect: `None` while it is still in progress.
/// A peer address means connected (one system call, the usual answer on
/// loopback); otherwise `SO_ERROR` tells a failure from a handshake in flight.
fn connect_outcome(sock: &mio::net::TcpStream) -> Option<io::Result<()>> {
    match sock.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == ErrorKind::NotConnected => match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(Err(e)),
            Ok(None) => None,
        },
        Err(e) => Some(Err(e)),
    }
}
