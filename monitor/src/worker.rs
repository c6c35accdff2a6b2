//! One worker: a thread's event loop owning whole guest sessions.
//!
//! A worker has its own epoll (mio `Poll`) holding every descriptor of the
//! sessions it owns — doorbell, session socket, listeners, connections, UDP
//! sockets — and their timers. Nothing on that path is shared with another
//! worker; what crosses threads arrives through the worker's inbox, a channel
//! paired with a [`Waker`] on token [`WAKER`] (and the resolver's answers for
//! its sessions, through an [`Inbox`] on token [`RESOLVED`]):
//! - [`Msg::Adopt`]: a guest to serve (its session socket, and its place in
//!   the monitor-wide session limits, released when the session ends);
//! - [`Msg::Stats`]: a request for the worker's figures;
//! - [`Msg::Stop`]: end every session and return.
//!
//! Each turn: wait (without sleeping while work is flowing — see
//! [`Config::busy_poll`]), dispatch each ready source to its session, fire due
//! connect timeouts, give queued connections their next budgeted slice, and
//! tear down sessions that ended. Readiness on a token below
//! [`FIRST_DYNAMIC`] other than [`WAKER`] belongs to whoever drives the worker
//! ([`crate::Monitor`] for worker 0: the serve socket, signals, the guest's
//! exit) and is handed back from [`Worker::turn`].

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use crate::config::Config;
use crate::limits::SessionSlot;
use crate::resolver::{Inbox, ResolverClient};
use crate::serve_socket::Peer;
use crate::session::{Ctx, Session, SessionId, SessionSource, SessionStats, SetupError};

/// The inbox's wake-up token.
pub(crate) const WAKER: Token = Token(0);
/// The resolver's answers for this worker's sessions are in its [`Inbox`].
pub(crate) const RESOLVED: Token = Token(15);
/// Tokens below this are fixed sources; sessions get tokens from here up.
pub(crate) const FIRST_DYNAMIC: usize = 16;

/// A guest handed to a worker.
pub(crate) struct Adoption {
    pub sid: SessionId,
    pub sock: OwnedFd,
    /// Who attached, when it came through the serve socket.
    pub peer: Option<Peer>,
    /// Its place in the session limits; released with the session.
    pub slot: Option<SessionSlot>,
}

/// What another thread tells a worker.
pub(crate) enum Msg {
    Adopt(Adoption),
    Stats(mpsc::Sender<WorkerReport>),
    Stop,
}

/// One worker's figures, as it answers [`Msg::Stats`].
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerReport {
    pub index: usize,
    pub sessions: Vec<(SessionId, SessionStats)>,
    pub ended: u64,
    pub unreclaimed: u64,
}

/// How other threads reach a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerLink {
    index: usize,
    waker: Arc<Waker>,
    inbox: mpsc::Sender<Msg>,
    /// Sessions handed to the worker and not yet ended (adoptions still in
    /// the inbox included): the load new guests are balanced on.
    live: Arc<AtomicUsize>,
}

impl WorkerLink {
    pub fn index(&self) -> usize {
        self.index
    }

    /// Sessions this worker serves or is about to.
    pub fn load(&self) -> usize {
        // Relaxed: a balancing hint; the limits are enforced elsewhere.
        self.live.load(Ordering::Relaxed)
    }

    /// Counts one more session against this worker before handing it over,
    /// so the next choice sees it.
    pub fn charge(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    /// Undoes [`charge`](Self::charge) for a session that never started.
    pub fn uncharge(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Puts `msg` in the worker's inbox and wakes it.
    ///
    /// # Errors
    /// The message back when the worker is gone.
    pub fn send(&self, msg: Msg) -> Result<(), Msg> {
        self.inbox.send(msg).map_err(|e| e.0)?;
        // A failed wake leaves the message for the worker's next turn.
        let _ = self.waker.wake();
        Ok(())
    }

    /// Wakes the worker without a message (its driver has a flag to read).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// The index of the least-loaded worker in `links` (the first among equals).
pub(crate) fn least_loaded(links: &[WorkerLink]) -> usize {
    links
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| l.load())
        .map_or(0, |(i, _)| i)
}

/// A worker's event loop and the sessions it owns.
pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    events: Events,
    config: Config,
    reuse: crate::udp::ReuseOwners,
    pub(crate) sessions: HashMap<SessionId, Session>,
    /// Each session's place in the limits, dropped when it ends.
    slots: HashMap<SessionId, SessionSlot>,
    tokens: HashMap<Token, (SessionId, SessionSource)>,
    next_token: usize,
    ended: u64,
    unreclaimed: u64,
    inbox: mpsc::Receiver<Msg>,
    live: Arc<AtomicUsize>,
    stopping: bool,
    last_work: Instant,
    /// Where the resolver puts this worker's answers.
    resolved: Arc<Inbox>,
    /// The sessions' way to the resolver, if the monitor has one.
    resolver: Option<ResolverClient>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Worker `index` with its poll and inbox, and the link that reaches it.
    ///
    /// # Errors
    /// The epoll or waker set-up failing.
    pub fn new(
        index: usize,
        config: Config,
        reuse: crate::udp::ReuseOwners,
    ) -> io::Result<(Self, WorkerLink)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let resolved = Arc::new(Inbox::new(poll.registry(), RESOLVED)?);
        let resolver = config
            .resolver
            .as_ref()
            .map(|r| r.client(Arc::clone(&resolved)));
        let live = Arc::new(AtomicUsize::new(0));
        let link = WorkerLink {
            index,
            waker,
            inbox: tx,
            live: Arc::clone(&live),
        };
        let worker = Self {
            index,
            poll,
            events: Events::with_capacity(1024),
            config,
            reuse,
            sessions: HashMap::new(),
            slots: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_DYNAMIC,
            ended: 0,
            unreclaimed: 0,
            inbox: rx,
            live,
            stopping: false,
            last_work: Instant::now(),
            resolved,
            resolver,
        };
        Ok((worker, link))
    }

    /// Its place among the monitor's workers.
    pub fn index(&self) -> usize {
        self.index
    }

    /// For registering the driver's own sources (tokens below
    /// [`FIRST_DYNAMIC`]).
    pub fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Runs on a thread of its own until [`Msg::Stop`], then ends every
    /// session.
    ///
    /// # Errors
    /// Only if waiting on epoll itself fails (the sessions are ended first).
    pub fn run(mut self) -> io::Result<()> {
        let mut foreign = Vec::new();
        let result = loop {
            if self.stopping {
                break Ok(());
            }
            if let Err(e) = self.turn(None, &mut foreign) {
                break Err(e);
            }
        };
        self.shutdown();
        result
    }

    /// Serves the guest whose session socket is `a.sock`.
    ///
    /// # Errors
    /// When the session's resources cannot be created or the bootstrap
    /// cannot be sent; the session's charge and slot are released then.
    pub fn adopt(&mut self, a: Adoption) -> Result<SessionId, SetupError> {
        let sid = a.sid;
        match self.with_ctx(sid, |ctx| Session::new(sid, a.sock, ctx)) {
            Ok(session) => {
                self.sessions.insert(sid, session);
                if let Some(slot) = a.slot {
                    self.slots.insert(sid, slot);
                }
                if let Some(peer) = a.peer {
                    tracing::info!(
                        session = sid,
                        pid = peer.pid,
                        uid = peer.uid,
                        worker = self.index,
                        worker_sessions = self.sessions.len(),
                        "guest attached"
                    );
                }
                Ok(sid)
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::Relaxed);
                self.tokens.retain(|_, (s, _)| *s != sid);
                Err(e)
            }
        }
    }

    /// [`adopt`](Self::adopt) for a guest from the serve socket: a failure
    /// is logged, not returned.
    pub fn adopt_logged(&mut self, a: Adoption) {
        let pid = a.peer.map(|p| p.pid);
        match self.adopt(a) {
            Ok(_) => {}
            Err(SetupError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!(?pid, "the guest left before its bootstrap");
            }
            Err(e) => tracing::warn!(error = %e, "could not set up a guest session"),
        }
    }

    /// Ends every session.
    pub fn shutdown(&mut self) {
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.end_session(sid);
        }
        tracing::info!(worker = self.index, ended = self.ended, "worker stopped");
    }

    fn busy(&self) -> bool {
        self.sessions.values().any(Session::has_ready_work)
    }

    /// One turn of the loop, waiting at most `max_wait` (`None`: until an
    /// event). Readiness of the driver's own tokens is appended to `foreign`.
    ///
    /// # Errors
    /// Only if waiting on epoll itself fails.
    pub fn turn(&mut self, max_wait: Option<Duration>, foreign: &mut Vec<Token>) -> io::Result<()> {
        let now = Instant::now();
        let mut timeout = poll_timeout(
            self.busy(),
            now.duration_since(self.last_work) < self.config.busy_poll,
            shm_ring::cpu_contended(),
            max_wait,
        );
        if let Some(at) = self
            .sessions
            .values()
            .filter_map(Session::next_deadline)
            .min()
        {
            // Round up to the next millisecond so a timer never spins at 0.
            let until = at.saturating_duration_since(now) + Duration::from_millis(1);
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        if !self.events.is_empty() {
            self.last_work = Instant::now();
        } else if timeout == Some(Duration::ZERO) && !self.busy() {
            // Polling with nothing to do: let any thread that is waiting for this CPU run
            // first (the guest just woken, the peer accepting a connection) — still
            // runnable, so back without a wake. With nobody waiting this returns at once;
            // a yield that ran another thread for long marks the CPU contended, which ends
            // the busy poll (`poll_timeout`).
            shm_ring::yield_cpu();
        }
        let events: Vec<(Token, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_write_closed() || e.is_error(),
                )
            })
            .collect();
        for (token, readable, writable) in events {
            if token == WAKER {
                self.read_inbox();
            } else if token == RESOLVED {
                self.deliver_resolved();
            } else if token.0 < FIRST_DYNAMIC {
                foreign.push(token);
            } else if let Some(&(sid, src)) = self.tokens.get(&token) {
                self.with_session(sid, |s, ctx| s.on_event(src, readable, writable, ctx));
            }
        }
        self.fire_timers();
        let ready: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.has_ready_work())
            .map(|(&id, _)| id)
            .collect();
        for sid in ready {
            self.with_session(sid, |s, ctx| s.run_ready(ctx));
        }
        let ended: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ended().is_some())
            .map(|(&id, _)| id)
            .collect();
        for sid in ended {
            self.end_session(sid);
        }
        Ok(())
    }

    /// Handles what the inbox holds. Bounded by what was sent before this
    /// call: a sender cannot keep the worker here.
    fn read_inbox(&mut self) {
        let pending: Vec<Msg> = self.inbox.try_iter().collect();
        for msg in pending {
            match msg {
                Msg::Adopt(a) => self.adopt_logged(a),
                Msg::Stats(reply) => {
                    let _ = reply.send(self.report());
                }
                Msg::Stop => self.stopping = true,
            }
        }
    }

    /// Hands each finished resolution to its session (if it is still here).
    fn deliver_resolved(&mut self) {
        for r in self.resolved.take() {
            self.with_session(r.session, |s, ctx| {
                s.on_resolved(r.request, r.outcome, ctx);
            });
        }
    }

    /// This worker's figures.
    pub fn report(&self) -> WorkerReport {
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(&id, s)| (id, s.stats()))
            .collect();
        sessions.sort_by_key(|(id, _)| *id);
        WorkerReport {
            index: self.index,
            sessions,
            ended: self.ended,
            unreclaimed: self.unreclaimed,
        }
    }

    fn with_session(&mut self, sid: SessionId, f: impl FnOnce(&mut Session, &mut Ctx<'_>)) {
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        self.with_ctx(sid, |ctx| f(&mut session, ctx));
        self.sessions.insert(sid, session);
    }

    /// Lends session `sid` the loop's services: token allocation (mapped back
    /// to the session), token release (applied after `f`), timers, config.
    fn with_ctx<R>(&mut self, sid: SessionId, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
        let Self {
            poll,
            tokens,
            next_token,
            config,
            reuse,
            resolver,
            ..
        } = self;
        let mut released = Vec::new();
        let r = {
            let mut alloc_token = |src| {
                let t = Token(*next_token);
                *next_token += 1;
                tokens.insert(t, (sid, src));
                t
            };
            let mut release = |t: Token| released.push(t);
            let mut ctx = Ctx {
                registry: poll.registry(),
                tokens: &mut alloc_token,
                release: &mut release,
                config,
                reuse,
                net: &crate::net::Kernel,
                resolver: resolver.as_ref(),
                now: Instant::now(),
            };
            f(&mut ctx)
        };
        for t in released {
            tokens.remove(&t);
        }
        r
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next_deadline().is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for sid in due {
            self.with_session(sid, |s, ctx| s.fire_timers(now, ctx));
        }
    }

    fn end_session(&mut self, sid: SessionId) {
        self.with_session(sid, |s, ctx| s.teardown(ctx));
        if let Some(s) = self.sessions.remove(&sid) {
            let st = s.stats();
            if st.alloc.allocated != st.fixed_bytes {
                self.unreclaimed += 1;
                tracing::warn!(session = sid, alloc = ?st.alloc, fixed = st.fixed_bytes, "teardown left data-pipe blocks allocated");
            }
            tracing::info!(
                session = sid,
                reason = ?s.ended(),
                worker = self.index,
                worker_sessions = self.sessions.len(),
                "session closed"
            );
            self.slots.remove(&sid);
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.ended += 1;
        }
        self.tokens.retain(|_, (s, _)| *s != sid);
    }
}

/// How long one turn may wait for events: not at all while a session has ready work, nor
/// in the busy poll after work (`polling`) unless the CPU is contended — a poller that
/// yields to a CPU hog loses a time slice per event, where a sleeper is woken and scheduled
/// at once; otherwise `max_wait`.
fn poll_timeout(
    busy: bool,
    polling: bool,
    contended: bool,
    max_wait: Option<Duration>,
) -> Option<Duration> {
    if busy || (polling && !contended) {
        Some(Duration::ZERO)
    } else {
        max_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_poll_sleeps_while_the_cpu_is_contended() {
        let wait = Some(Duration::from_millis(100));
        assert_eq!(poll_timeout(false, true, false, wait), Some(Duration::ZERO));
        assert_eq!(poll_timeout(false, true, true, wait), wait);
        // Ready work is never put off.
        assert_eq!(poll_timeout(true, true, true, wait), Some(Duration::ZERO));
        assert_eq!(poll_timeout(true, false, false, None), Some(Duration::ZERO));
        assert_eq!(poll_timeout(false, false, false, None), None);
    }
}
