//! The monitor: worker threads serving guest sessions, and the front that
//! feeds them.
//!
//! Worker 0 runs on the thread that calls [`Monitor::run`] (or
//! [`Monitor::run_guest`]); workers 1.. get threads of their own when it
//! starts. Each owns whole sessions in its own event loop
//! (the `worker` module). Worker 0's loop also carries the front's sources: the
//! serve socket, the signalfd and the guest's pidfd. An attaching guest is
//! checked (access rules, then the monitor-wide limits of
//! [`crate::limits`]) and handed to the least-loaded worker. Workers share
//! only those limits, the read-only [`Config`] (its policy an `Arc`) and the
//! UDP reuse-owner table ([`crate::udp::ReuseOwners`], a mutex taken when a
//! reuse-bound socket is opened or closed).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use crate::config::Config;
use crate::limits::{LimitError, Limits, SessionSlot};
use crate::ratelimit::WarnLimiter;
use crate::serve_socket::{Access, Peer, ServeSocket, ServeSocketError};
use crate::session::{SessionId, SessionStats};
use crate::worker::{least_loaded, Adoption, Msg, Worker, WorkerLink, WorkerReport};

const SERVER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CHILD: Token = Token(3);
/// How often `run_guest` checks for the guest's exit when it has no pidfd.
pub const CHILD_POLL: Duration = Duration::from_millis(50);

/// Resource figures for every live session.
#[derive(Debug, Clone, Default)]
pub struct MonitorStats {
    /// Live sessions and their figures, by id.
    pub sessions: Vec<(SessionId, SessionStats)>,
    /// Sessions ended so far.
    pub ended: u64,
    /// Ended sessions whose allocator still held data-pipe blocks after
    /// teardown (0 unless a connection's resources were not released).
    pub unreclaimed: u64,
    /// Each worker's share, by worker index.
    pub workers: Vec<WorkerStats>,
}

/// One worker's share of the sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Live sessions it serves, by id.
    pub sessions: Vec<SessionId>,
    /// Sessions it has ended.
    pub ended: u64,
}

/// Controls a monitor running on another thread.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
    links: Vec<WorkerLink>,
}

impl MonitorHandle {
    /// Asks the monitor to shut down cleanly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(front) = self.links.first() {
            front.wake();
        }
    }

    /// The current figures, from every worker's loop itself (waits up to 5 s
    /// in all); `None` if a worker does not answer.
    pub fn stats(&self) -> Option<MonitorStats> {
        let (tx, rx) = mpsc::channel();
        for link in &self.links {
            link.send(Msg::Stats(tx.clone())).ok()?;
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reports: Vec<WorkerReport> = Vec::with_capacity(self.links.len());
        while reports.len() < self.links.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            reports.push(rx.recv_timeout(left).ok()?);
        }
        reports.sort_by_key(|r| r.index);
        let mut stats = MonitorStats::default();
        for r in reports {
            stats.workers.push(WorkerStats {
                sessions: r.sessions.iter().map(|(id, _)| *id).collect(),
                ended: r.ended,
            });
            stats.sessions.extend(r.sessions);
            stats.ended += r.ended;
            stats.unreclaimed += r.unreclaimed;
        }
        stats.sessions.sort_by_key(|(id, _)| *id);
        Some(stats)
    }
}

/// The monitor: serves guests until stopped.
pub struct Monitor {
    /// Worker 0, run on the caller's thread.
    worker: Worker,
    /// Workers 1.., until their threads start.
    idle: Vec<Worker>,
    /// Every worker's link, by index.
    links: Vec<WorkerLink>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// Whether [`start_workers`](Self::start_workers) ran.
    started: bool,
    config: Config,
    limits: Arc<Limits>,
    next_session: SessionId,
    server: Option<ServeSocket>,
    access: Access,
    /// Bounds the warnings refused attaches can cause.
    refusals_logged: WarnLimiter,
    signals: Option<nix::sys::signalfd::SignalFd>,
    /// Stop signals read and not yet acted on by [`Monitor::run_guest`].
    stop_signals: Vec<StopSignal>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("workers", &self.links.len())
            .field("sessions", &self.worker.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Why an attaching guest was turned away.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("user {0} is not allowed to attach (--allow-uid, --allow-gid)")]
    NotAllowed(u32),
    #[error(transparent)]
    Limit(#[from] LimitError),
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
    /// A monitor with no guests yet, and `config.workers` workers whose
    /// threads start with [`run`](Self::run) or [`run_guest`](Self::run_guest)
    /// (so they inherit the signal mask [`handle_signals`](Self::handle_signals)
    /// sets, and the caller's `tracing` subscriber).
    ///
    /// # Errors
    /// An invalid `config`, or the epoll set-up failing.
    pub fn new(config: Config) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let reuse = crate::udp::ReuseOwners::default();
        let (worker, front) = Worker::new(0, config.clone(), reuse.clone())?;
        let mut links = vec![front];
        let mut idle = Vec::with_capacity(config.workers - 1);
        for index in 1..config.workers {
            let (w, link) = Worker::new(index, config.clone(), reuse.clone())?;
            idle.push(w);
            links.push(link);
        }
        Ok(Self {
            worker,
            idle,
            links,
            threads: Vec::new(),
            started: false,
            limits: Limits::new(config.max_sessions, config.max_sessions_per_uid),
            config,
            next_session: 1,
            server: None,
            access: Access::default(),
            refusals_logged: WarnLimiter::new(),
            signals: None,
            stop_signals: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A handle to stop the monitor or read its figures from another thread.
    pub fn handle(&self) -> MonitorHandle {
        MonitorHandle {
            stop: Arc::clone(&self.stop),
            links: self.links.clone(),
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
        self.worker
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
        self.worker.registry().register(
            &mut mio::unix::SourceFd(&sfd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        self.signals = Some(sfd);
        Ok(())
    }

    /// Serves a guest whose session socket is `sock` (the monitor's end), on
    /// worker 0.
    ///
    /// # Errors
    /// When the session's resources cannot be created or the bootstrap
    /// cannot be sent.
    pub fn add_guest(&mut self, sock: OwnedFd) -> Result<SessionId, crate::session::SetupError> {
        let sid = self.next_sid();
        self.links[0].charge();
        self.worker.adopt(Adoption {
            sid,
            sock,
            peer: None,
            slot: None,
        })
    }

    fn next_sid(&mut self) -> SessionId {
        let sid = self.next_session;
        self.next_session += 1;
        sid
    }

    /// Starts the threads of workers 1.. (once), pinning them and this
    /// thread, worker 0, when [`Config::pin`] says so.
    fn start_workers(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let allowed = if self.config.pin {
            crate::cpus::allowed().unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.config.pin {
            crate::cpus::pin_worker(0, &allowed);
        }
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        for worker in self.idle.drain(..) {
            let index = worker.index();
            let dispatch = dispatch.clone();
            let allowed = allowed.clone();
            let stop = Arc::clone(&self.stop);
            let front = self.links[0].clone();
            let spawned = std::thread::Builder::new()
                .name(format!("arca-worker-{index}"))
                .spawn(move || {
                    let _log = tracing::dispatcher::set_default(&dispatch);
                    if !allowed.is_empty() {
                        crate::cpus::pin_worker(index, &allowed);
                    }
                    let r = worker.run();
                    if let Err(e) = &r {
                        // One worker failing stops the monitor, as the loop failing does.
                        tracing::error!(worker = index, error = %e, "worker failed");
                        stop.store(true, Ordering::SeqCst);
                        front.wake();
                    }
                    r
                });
            match spawned {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    // The worker went with the closure: its inbox is closed,
                    // so a guest handed to it is refused (`hand_over`), and
                    // the monitor stops.
                    tracing::error!(worker = index, error = %e, "could not start a worker thread");
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
        }
        tracing::info!(
            workers = self.links.len(),
            pin = self.config.pin,
            "workers started"
        );
    }

    /// Stops workers 1.. and waits for them (each ends its sessions first).
    ///
    /// # Errors
    /// The first worker's failure.
    fn stop_workers(&mut self) -> io::Result<()> {
        for link in &self.links[1..] {
            let _ = link.send(Msg::Stop);
        }
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Runs until [`MonitorHandle::stop`] or a handled signal.
    ///
    /// # Errors
    /// If waiting on epoll fails, in any worker.
    pub fn run(&mut self) -> io::Result<()> {
        self.start_workers();
        let mut result = Ok(());
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(e) = self.turn(None, None) {
                result = Err(e);
                break;
            }
        }
        let stopped = self.shutdown();
        result.and(stopped)
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
        self.start_workers();
        if let Some(pidfd) = pidfd {
            self.worker.registry().register(
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
        while !self.worker.sessions.is_empty() && Instant::now() < deadline {
            self.turn(Some(Duration::from_millis(10)), None)?;
        }
        self.shutdown()?;
        Ok(GuestOutcome::Exited(status))
    }

    /// Ends every session, in every worker.
    fn shutdown(&mut self) -> io::Result<()> {
        let stopped = self.stop_workers();
        self.worker.shutdown();
        tracing::info!("monitor stopped");
        stopped
    }

    /// One turn of worker 0's loop, then the front's own sources.
    fn turn(
        &mut self,
        max_wait: Option<Duration>,
        child_exited: Option<&mut bool>,
    ) -> io::Result<()> {
        let mut foreign = Vec::new();
        self.worker.turn(max_wait, &mut foreign)?;
        let mut child_exited = child_exited;
        for token in foreign {
            match token {
                SERVER => self.accept_guests(),
                SIGNALS => self.read_signals(),
                CHILD => {
                    if let Some(flag) = child_exited.as_deref_mut() {
                        *flag = true;
                    }
                }
                _ => {}
            }
        }
        Ok(())
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
            let slot = match self.admit(peer) {
                Ok(slot) => slot,
                Err(why) => {
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
            };
            let adoption = Adoption {
                sid: self.next_sid(),
                sock,
                peer: Some(peer),
                slot: Some(slot),
            };
            self.hand_over(adoption);
        }
    }

    /// Gives a guest to the least-loaded worker: worker 0 (this thread) sets
    /// its session up at once, another worker on its next turn.
    fn hand_over(&mut self, adoption: Adoption) {
        let link = &self.links[least_loaded(&self.links)];
        link.charge();
        if link.index() == 0 {
            self.worker.adopt_logged(adoption);
            return;
        }
        if let Err(Msg::Adopt(a)) = link.send(Msg::Adopt(adoption)) {
            link.uncharge();
            tracing::warn!(
                session = a.sid,
                worker = link.index(),
                "the worker is gone; guest refused"
            );
        }
    }

    /// May `peer` attach now: allowed by the serve socket's access rules,
    /// and within the session limits? Its place in the limits, if so.
    fn admit(&self, peer: Peer) -> Result<SessionSlot, Refusal> {
        let own = nix::unistd::geteuid().as_raw();
        if !self.access.admits(own, peer) {
            return Err(Refusal::NotAllowed(peer.uid));
        }
        Ok(self.limits.reserve(peer.uid)?)
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
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop_workers();
    }
}
