//! The monitor's one event loop: every guest's doorbell and session socket,
//! every listening and connected socket, the serve socket, signals and the
//! guest's exit, in one epoll (mio).
//!
//! Each turn: wait (without sleeping while work is flowing — see
//! [`Config::busy_poll`]), dispatch each ready source to its session, fire due
//! connect timeouts, give queued connections their next budgeted slice, and
//! tear down sessions that ended.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::ratelimit::WarnLimiter;
use crate::resolver::{Inbox, ResolverClient};
use crate::serve_socket::{Access, Peer, ServeSocket, ServeSocketError};
use crate::session::{Ctx, Session, SessionId, SessionSource, SessionStats};

const WAKER: Token = Token(0);
const SERVER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CHILD: Token = Token(3);
/// The resolver's answers are in [`Monitor::resolved`].
const RESOLVED: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;
/// How often `run_guest` checks for the guest's exit when it has no pidfd.
pub const CHILD_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Src {
    Session(SessionId, SessionSource),
}

/// Resource figures for every live session.
#[derive(Debug, Clone, Default)]
pub struct MonitorStats {
    /// Live sessions and their figures.
    pub sessions: Vec<(SessionId, SessionStats)>,
    /// Sessions ended so far.
    pub ended: u64,
    /// Ended sessions whose allocator still held data-pipe blocks after
    /// teardown (0 unless a connection's resources were not released).
    pub unreclaimed: u64,
}

/// Controls a monitor running on another thread.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    stats: mpsc::Sender<mpsc::Sender<MonitorStats>>,
}

impl MonitorHandle {
    /// Asks the loop to shut down cleanly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// The current figures, from the loop itself (waits up to 5 s).
    pub fn stats(&self) -> Option<MonitorStats> {
        let (tx, rx) = mpsc::channel();
        self.stats.send(tx).ok()?;
        self.waker.wake().ok()?;
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }
}

/// The monitor: serves guests until stopped.
pub struct Monitor {
    poll: Poll,
    events: Events,
    config: Config,
    reuse: crate::udp::ReuseOwners,
    sessions: HashMap<SessionId, Session>,
    tokens: HashMap<Token, Src>,
    next_token: usize,
    next_session: SessionId,
    ended: u64,
    unreclaimed: u64,
    server: Option<ServeSocket>,
    access: Access,
    /// The attaching peer's user of each session that came through the
    /// serve socket (for the per-user session limit).
    session_uids: HashMap<SessionId, u32>,
    /// Bounds the warnings refused attaches can cause.
    refusals_logged: WarnLimiter,
    signals: Option<nix::sys::signalfd::SignalFd>,
    /// Stop signals read and not yet acted on by [`Monitor::run_guest`].
    stop_signals: Vec<StopSignal>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    stats_tx: mpsc::Sender<mpsc::Sender<MonitorStats>>,
    stats_rx: mpsc::Receiver<mpsc::Sender<MonitorStats>>,
    last_work: Instant,
    /// Where the resolver puts this loop's answers.
    resolved: Arc<Inbox>,
    /// The sessions' way to the resolver, if the monitor has one.
    resolver: Option<ResolverClient>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Why an attaching guest was turned away.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("user {0} is not allowed to attach (--allow-uid, --allow-gid)")]
    NotAllowed(u32),
    #[error("the monitor serves its limit of {0} sessions")]
    Sessions(usize),
    #[error("user {0} holds its limit of {1} sessions")]
    UserSessions(u32, usize),
}

/// A stop signal as the monitor received it.
#[derive(Debug, Clone, Copy)]
struct StopSignal {
    signo: i32,
    /// `si_code`: `SI_KERNEL` for one the terminal sent to the whole
    /// foreground process group.
    code: i32,
}

impl StopSignal {
    /// [`MonitorHandle::stop`], as a SIGTERM sent to the monitor alone.
    fn from_handle() -> Self {
        Self {
            signo: libc::SIGTERM,
            code: libc::SI_USER,
        }
    }

    fn sent_by_terminal(self) -> bool {
        self.code == libc::SI_KERNEL
    }
}

/// What ended [`Monitor::run_guest`].
#[derive(Debug)]
pub enum GuestOutcome {
    /// The guest exited with this status.
    Exited(ExitStatus),
}

impl Monitor {
    /// A monitor with no guests yet.
    ///
    /// # Errors
    /// An invalid `config`, or the epoll set-up failing.
    pub fn new(config: Config) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (stats_tx, stats_rx) = mpsc::channel();
        let resolved = Arc::new(Inbox::new(poll.registry(), RESOLVED)?);
        let resolver = config
            .resolver
            .as_ref()
            .map(|r| r.client(Arc::clone(&resolved)));
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            config,
            reuse: crate::udp::ReuseOwners::default(),
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_DYNAMIC,
            next_session: 1,
            ended: 0,
            unreclaimed: 0,
            server: None,
            access: Access::default(),
            session_uids: HashMap::new(),
            refusals_logged: WarnLimiter::new(),
            signals: None,
            stop_signals: Vec::new(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            stats_tx,
            stats_rx,
            last_work: Instant::now(),
            resolved,
            resolver,
        })
    }

    /// A handle to stop the loop or read its figures from another thread.
    pub fn handle(&self) -> MonitorHandle {
        MonitorHandle {
            waker: Arc::clone(&self.waker),
            stop: Arc::clone(&self.stop),
            stats: self.stats_tx.clone(),
        }
    }

    /// Accepts guests on a `SOCK_SEQPACKET` Unix socket at `path`, with the
    /// default [`Access`] (the monitor's own user and root).
    ///
    /// # Errors
    /// See [`listen_unix_with`](Self::listen_unix_with).
    pub fn listen_unix(&mut self, path: &Path) -> Result<(), ServeSocketError> {
        self.listen_unix_with(path, Access::default())
    }

    /// Accepts guests on a `SOCK_SEQPACKET` Unix socket at `path` (see
    /// [`ServeSocket`]: a live or non-socket path is refused), admitting the
    /// peers `access` names.
    ///
    /// # Errors
    /// [`ServeSocketError`], or registering the socket with epoll failing.
    pub fn listen_unix_with(
        &mut self,
        path: &Path,
        access: Access,
    ) -> Result<(), ServeSocketError> {
        let server = ServeSocket::bind(path, &access)?;
        self.poll
            .registry()
            .register(
                &mut mio::unix::SourceFd(&server.fd().as_raw_fd()),
                SERVER,
                Interest::READABLE,
            )
            .map_err(|source| ServeSocketError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::info!(path = %path.display(), mode = format!("{:o}", access.mode()), "serving guests");
        self.server = Some(server);
        self.access = access;
        Ok(())
    }

    /// Stops cleanly on SIGINT or SIGTERM (blocks them in this thread and
    /// reads them from a signalfd).
    ///
    /// # Errors
    /// The signal calls' errors.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().map_err(io::Error::from)?;
        let sfd = nix::sys::signalfd::SignalFd::with_flags(
            &set,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&sfd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        self.signals = Some(sfd);
        Ok(())
    }

    /// Serves a guest whose session socket is `sock` (the monitor's end).
    ///
    /// # Errors
    /// When the session's resources cannot be created or the bootstrap
    /// cannot be sent.
    pub fn add_guest(&mut self, sock: OwnedFd) -> Result<SessionId, crate::session::SetupError> {
        let sid = self.next_session;
        self.next_session += 1;
        let session = self.with_ctx(sid, |ctx| Session::new(sid, sock, ctx))?;
        self.sessions.insert(sid, session);
        Ok(sid)
    }

    /// Runs until [`MonitorHandle::stop`] or a handled signal.
    ///
    /// # Errors
    /// Only if waiting on epoll itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stop.load(Ordering::SeqCst) {
            self.turn(None, None)?;
        }
        self.shutdown();
        Ok(())
    }

    /// Serves `guest` (already added with its socket) until it exits; returns
    /// its status. Stopping it works as with `timeout(1)`:
    /// - the first SIGINT or SIGTERM is passed on to the guest (one that came
    ///   from the terminal reached the guest already, as it shares the
    ///   monitor's process group, and is not sent twice); so is a
    ///   [`MonitorHandle::stop`], as SIGTERM;
    /// - a second one, or `grace` passing after the first, kills the guest
    ///   (SIGKILL).
    ///
    /// Without a `pidfd` (no `pidfd_open` on this kernel, or under valgrind)
    /// the loop wakes every [`CHILD_POLL`] to check whether the guest exited.
    ///
    /// # Errors
    /// If epoll or waiting for the child fails.
    pub fn run_guest(
        &mut self,
        child: &mut Child,
        pidfd: Option<&OwnedFd>,
        grace: Duration,
    ) -> io::Result<GuestOutcome> {
        use nix::sys::signal::{kill, Signal};
        if let Some(pidfd) = pidfd {
            self.poll.registry().register(
                &mut mio::unix::SourceFd(&pidfd.as_raw_fd()),
                CHILD,
                Interest::READABLE,
            )?;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        let mut exited = false;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        while !exited {
            let mut signals = std::mem::take(&mut self.stop_signals);
            if self.stop.swap(false, Ordering::SeqCst) && signals.is_empty() {
                signals.push(StopSignal::from_handle());
            }
            for sig in signals {
                if kill_at.is_none() {
                    kill_at = Some(Instant::now() + grace);
                    if sig.sent_by_terminal() {
                        tracing::info!(
                            signal = sig.signo,
                            "the guest got the stop signal from the terminal"
                        );
                    } else if let Ok(signal) = Signal::try_from(sig.signo) {
                        tracing::info!(%signal, "passing the stop signal on to the guest");
                        let _ = kill(pid, signal);
                    }
                } else if !killed {
                    tracing::warn!("second stop signal: killing the guest");
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
            }
            if let Some(at) = kill_at.filter(|_| !killed) {
                if Instant::now() >= at {
                    tracing::warn!(
                        ?grace,
                        "the guest did not stop in its grace period: killing it"
                    );
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
            }
            let until_kill = kill_at
                .filter(|_| !killed)
                .map(|at| at.saturating_duration_since(Instant::now()));
            if pidfd.is_some() {
                self.turn(until_kill, Some(&mut exited))?;
            } else {
                let wait = until_kill.map_or(CHILD_POLL, |d| d.min(CHILD_POLL));
                self.turn(Some(wait), None)?;
                exited = child.try_wait()?.is_some();
            }
        }
        let status = child.wait()?;
        // Let the session notice its socket hang up and release everything.
        let deadline = Instant::now() + Duration::from_millis(200);
        while !self.sessions.is_empty() && Instant::now() < deadline {
            self.turn(Some(Duration::from_millis(10)), None)?;
        }
        self.shutdown();
        Ok(GuestOutcome::Exited(status))
    }

    fn shutdown(&mut self) {
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.end_session(sid);
        }
        tracing::info!(ended = self.ended, "monitor stopped");
    }

    fn busy(&self) -> bool {
        self.sessions.values().any(Session::has_ready_work)
    }

    /// One turn of the loop.
    fn turn(
        &mut self,
        max_wait: Option<Duration>,
        child_exited: Option<&mut bool>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut timeout =
            if self.busy() || now.duration_since(self.last_work) < self.config.busy_poll {
                Some(Duration::ZERO)
            } else {
                max_wait
            };
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
            // runnable, so back without a wake. With nobody waiting this returns at once.
            std::thread::yield_now();
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
        let mut child_exited = child_exited;
        for (token, readable, writable) in events {
            match token {
                WAKER => self.answer_stats(),
                SERVER => self.accept_guests(),
                SIGNALS => self.read_signals(),
                RESOLVED => self.deliver_resolved(),
                CHILD => {
                    if let Some(flag) = child_exited.as_deref_mut() {
                        *flag = true;
                    }
                }
                t => {
                    let Some(&Src::Session(sid, src)) = self.tokens.get(&t) else {
                        continue;
                    };
                    self.with_session(sid, |s, ctx| s.on_event(src, readable, writable, ctx));
                }
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

    /// Hands each finished resolution to its session (if it is still there).
    fn deliver_resolved(&mut self) {
        for r in self.resolved.take() {
            self.with_session(r.session, |s, ctx| {
                s.on_resolved(r.request, r.outcome, ctx);
            });
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
                tokens.insert(t, Src::Session(sid, src));
                t
            };
            let mut release = |t: Token| released.push(t);
            let mut ctx = Ctx {
                registry: poll.registry(),
                tokens: &mut alloc_token,
                release: &mut release,
                config,
                reuse,
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
            tracing::info!(session = sid, reason = ?s.ended(), "session closed");
            self.session_uids.remove(&sid);
            self.ended += 1;
        }
        self.tokens.retain(|_, Src::Session(s, _)| *s != sid);
    }

    fn accept_guests(&mut self) {
        let Some(server) = self.server.as_ref().map(|s| s.fd().as_raw_fd()) else {
            return;
        };
        for _ in 0..64 {
            let sock = match crate::sys::accept(server) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a guest failed");
                    return;
                }
            };
            let peer = match crate::serve_socket::peer_of(sock.as_fd()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read an attaching guest's credentials; refused");
                    continue;
                }
            };
            if let Err(why) = self.admit(peer) {
                let v = self.refusals_logged.handle_warning(Instant::now());
                if v.suppressed_before > 0 {
                    tracing::warn!("{} more refused attaches not logged", v.suppressed_before);
                }
                if v.log {
                    tracing::warn!(
                        pid = peer.pid,
                        uid = peer.uid,
                        gid = peer.gid,
                        "guest refused: {why}"
                    );
                }
                continue; // dropping the socket tells the guest: no bootstrap
            }
            match self.add_guest(sock) {
                Ok(sid) => {
                    self.session_uids.insert(sid, peer.uid);
                    tracing::info!(
                        session = sid,
                        pid = peer.pid,
                        uid = peer.uid,
                        "guest attached"
                    );
                }
                Err(crate::session::SetupError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    tracing::debug!(pid = peer.pid, "the guest left before its bootstrap");
                }
                Err(e) => tracing::warn!(error = %e, "could not set up a guest session"),
            }
        }
    }

    /// May `peer` attach now: allowed by the serve socket's access rules,
    /// and within the session limits?
    fn admit(&self, peer: Peer) -> Result<(), Refusal> {
        let own = nix::unistd::geteuid().as_raw();
        if !self.access.admits(own, peer) {
            return Err(Refusal::NotAllowed(peer.uid));
        }
        let total = self.config.max_sessions;
        if self.sessions.len() >= total {
            return Err(Refusal::Sessions(total));
        }
        let per_uid = self.config.max_sessions_per_uid;
        let held = self
            .session_uids
            .values()
            .filter(|&&u| u == peer.uid)
            .count();
        if held >= per_uid {
            return Err(Refusal::UserSessions(peer.uid, per_uid));
        }
        Ok(())
    }

    fn read_signals(&mut self) {
        let Some(sfd) = self.signals.as_mut() else {
            return;
        };
        while let Ok(Some(info)) = sfd.read_signal() {
            tracing::info!(signal = info.ssi_signo, "stop requested");
            self.stop_signals.push(StopSignal {
                signo: i32::try_from(info.ssi_signo).unwrap_or(libc::SIGTERM),
                code: info.ssi_code,
            });
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn answer_stats(&mut self) {
        while let Ok(reply) = self.stats_rx.try_recv() {
            let mut sessions: Vec<_> = self
                .sessions
                .iter()
                .map(|(&id, s)| (id, s.stats()))
                .collect();
            sessions.sort_by_key(|(id, _)| *id);
            let _ = reply.send(MonitorStats {
                sessions,
                ended: self.ended,
                unreclaimed: self.unreclaimed,
            });
        }
    }
}
