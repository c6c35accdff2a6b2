//! A guest's session with the monitor: the mapped region, the control pipe, and the wait
//! machinery around two sans-IO cores: the request table ([`table::RequestTable`]: ids,
//! requests in flight, which one a reply completes) and the async waker registry
//! ([`wakers::WakerRegistry`]: which task waits for what).
//!
//! # Requests
//! Every request is registered in the table (which picks its id) with how its requester
//! waits ([`Waiter`]), then sent. Whoever drains the control pipe — the dispatcher thread,
//! or a thread blocked in [`Shared::request`] — feeds each decoded reply to the table and
//! hands it over as the table says: to the requester's channel, waking the requester as its
//! `Waiter` needs; a reply that answers nothing (unknown id, a second reply, or the wrong
//! type, which also fails its request) gives back what it holds (a connection, a listener).
//!
//! # Waking
//! The monitor rings one doorbell (the *guest bell*) for every pipe of the session. Every
//! sleeper watches it **edge-triggered** in an epoll set of its own ([`shm_ring::WaitSet`]),
//! so one ring wakes each of them directly and nobody drains the eventfd:
//! - a thread blocked in a request polls the control pipe itself for up to
//!   [`REQUEST_SPIN`], draining it when it can, then sleeps on the guest bell and drains
//!   again on each wake; whoever else completes its request rings the *wake bell* too;
//! - the dispatcher (with the session socket, the liveness fd, and its stop bell) drains the
//!   control pipe and, for async tasks, probes the pipes they wait on. It watches the guest
//!   bell only while a reply is due to someone who does not drain for themselves (an
//!   accept, a fired close, an async task) or async tasks use the session
//!   ([`Shared::update_interest`]), so rings for data pipes do not wake it otherwise;
//! - a blocked stream or socket call ([`SessionWait`]) takes a set from the session's pool
//!   in `prepare`, before it arms its ring's need-wakeup flag, and sleeps on it in `wait`; a
//!   ring after `prepare` stays on that set's ready list, so no wake-up is lost. Its set also
//!   watches the session socket and the wake bell that `shutdown` and the session's end ring.
//!
//! A wake of a blocked thread is therefore one hop, monitor → the thread, not monitor →
//! dispatcher → thread.
//!
//! An async task that would block registers its waker under a [`WakeKey`] — its
//! connection's read or write side with a probe of that pipe, or its request's id — before
//! it arms the ring (or checks its reply). On each wake the dispatcher probes the registered
//! pipes (`poll_readable` / `poll_writable`: O(registered tasks) loads of shared indices)
//! and wakes only those ready; a reply wakes only its request's task. The session's end and
//! `shutdown` wake every task, so no condition the probes do not cover can strand one.

mod table;
mod wakers;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use arca_wire::{ConnId, Frame, FrameDecoder, FrameError, Handle, Message, PipeInfo, RequestId};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use shm_ring::{
    BidirectionalPipe, Consumer, Doorbell, Notify, NotifyBitmap, PeerWakers, PipeLayout, Producer,
    RingError, ShmOffset, ShmRegion, Trigger, Wait, WaitError, WaitSet,
};

use crate::bootstrap;
pub(crate) use table::Waiter;
use table::{Delivery, Pending, RequestTable};
pub(crate) use wakers::WakeKey;
use wakers::WakerRegistry;

/// Locks a mutex, ignoring poisoning (every critical section here leaves its data valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error every call gets once the monitor is gone.
pub(crate) fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "arca: the monitor is gone (session ended)",
    )
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

type Reply = io::Result<Message>;

/// Where a request's reply goes: `None` for a request nobody waits for.
type Sink = Option<mpsc::Sender<Reply>>;

/// Readiness of a connection's pipe, for the dispatcher's probe of async tasks' pipes.
/// Must not block (a side that is busy may report ready: a spurious wake is harmless).
pub(crate) trait PipeProbe: Send + Sync {
    /// Bytes, EOF or an error to read (or the read side shut down).
    fn is_readable(&self) -> bool;
    /// Room or an error to write (or the write side shut down).
    fn is_writable(&self) -> bool;
}

/// Everything the dispatcher and the handles share.
pub(crate) struct Shared {
    /// The session socket: liveness both ways.
    sock: OwnedFd,
    region: Arc<ShmRegion>,
    bitmap: Arc<NotifyBitmap>,
    guest_bell: Arc<Doorbell>,
    monitor_bell: Arc<Doorbell>,
    /// Rung when the last handle is dropped, to stop the dispatcher.
    stop_bell: Doorbell,
    stop: AtomicBool,
    control_tx: Mutex<Producer>,
    /// The control pipe's reading half: drained by the dispatcher, and by a thread blocked
    /// in [`request`](Shared::request) while it waits for its reply.
    control_rx: Mutex<ControlRx>,
    /// Requests in flight; closed once the session is dead.
    requests: Mutex<RequestTable<Sink>>,
    /// Rung to wake every blocked call at once (shutdown, the session's end).
    wake_bell: Doorbell,
    /// Idle wait sets of blocked calls, each watching the guest bell, the wake bell and the
    /// session socket; one per thread that has slept at once, reused.
    sleep_sets: Mutex<Vec<WaitSet>>,
    dead: AtomicBool,
    /// Async tasks waiting, by what they wait for.
    wakers: Mutex<WakerRegistry<Weak<dyn PipeProbe>>>,
    /// Set once an async task has waited here: from then on the dispatcher always watches
    /// the guest bell (re-enabling it per wait would report at once, every time).
    async_used: AtomicBool,
    /// The dispatcher's wait set: the guest bell (watched only while needed, see
    /// [`update_interest`](Shared::update_interest)), the session socket, the stop bell.
    dispatch_set: WaitSet,
    /// Whether `dispatch_set` watches the guest bell now.
    bell_watched: Mutex<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `try_lock`: formatting never waits for (or deadlocks with) a lock holder.
        let in_flight = self.requests.try_lock().ok().map(|t| t.in_flight());
        let tasks_waiting = self.wakers.try_lock().ok().map(|w| w.len());
        f.debug_struct("Session")
            .field("sock", &self.sock.as_raw_fd())
            .field("dead", &self.dead.load(Ordering::Relaxed))
            .field("in_flight", &in_flight)
            .field("tasks_waiting", &tasks_waiting)
            .finish_non_exhaustive()
    }
}

/// A [`Wait`] for a blocked stream or socket call: sleeps on the session's guest bell
/// directly (see the module documentation), optionally cancelled by a shutdown flag.
pub(crate) struct SessionWait<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) cancel: Option<&'a AtomicBool>,
}

/// The error [`SessionWait`] returns when its cancel flag is set.
pub(crate) fn cancelled() -> WaitError {
    WaitError::Io(io::Error::other("arca: half shut down while waiting"))
}

/// Tokens of a sleeper's wait set.
const SLEEP_GUEST_BELL: u32 = 0;
const SLEEP_WAKE_BELL: u32 = 1;
const SLEEP_SOCK: u32 = 2;

/// A wait set taken from the session's pool for one wait; it goes back on drop. `None` when
/// no set could be made (out of descriptors): the wait then naps briefly instead.
pub(crate) struct SleepSet<'a> {
    set: Option<WaitSet>,
    pool: &'a Mutex<Vec<WaitSet>>,
}

impl Drop for SleepSet<'_> {
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            lock(self.pool).push(set);
        }
    }
}

impl<'a> Wait for SessionWait<'a> {
    type Token = SleepSet<'a>;

    /// Takes a wait set before the caller arms its ring's need-wakeup flag: a ring after
    /// this point stays on the set's ready list until this wait harvests it, and no other
    /// thread can harvest it meanwhile (the set is ours until the token drops).
    fn prepare(&self) -> SleepSet<'a> {
        SleepSet {
            set: self.shared.take_sleep_set(),
            pool: &self.shared.sleep_sets,
        }
    }

    fn wait(&self, token: SleepSet<'a>, deadline: Option<Instant>) -> Result<(), WaitError> {
        let cancelled_now = || self.cancel.is_some_and(|c| c.load(Ordering::Acquire));
        if self.shared.is_dead() {
            return Err(WaitError::PeerGone);
        }
        if cancelled_now() {
            return Err(cancelled());
        }
        let fired = match token.set.as_ref() {
            Some(set) => set.wait(deadline).map_err(WaitError::Io)?,
            None => {
                std::thread::sleep(Duration::from_millis(1));
                match deadline {
                    Some(d) if Instant::now() >= d => 0,
                    _ => 1 << SLEEP_GUEST_BELL,
                }
            }
        };
        if self.shared.is_dead() || (fired & (1 << SLEEP_SOCK) != 0 && self.shared.probe_dead()) {
            return Err(WaitError::PeerGone);
        }
        if cancelled_now() {
            return Err(cancelled());
        }
        if fired == 0 {
            return Err(WaitError::TimedOut);
        }
        Ok(())
    }
}

impl Shared {
    /// True once the monitor is known to be gone.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Checks the session socket right now (no sleeping) for a hang-up.
    pub(crate) fn probe_dead(&self) -> bool {
        if self.is_dead() {
            return true;
        }
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {
                let hup = fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
                hup || self.socket_eof()
            }
            _ => false,
        }
    }

    /// Reads (and discards) whatever the socket holds; true on EOF or error.
    fn socket_eof(&self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match nix::sys::socket::recv(
                self.sock.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(nix::errno::Errno::EAGAIN) => return false,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return true,
            }
        }
    }

    /// Wakes the async tasks whose pipe is ready now (see the module documentation).
    fn wake_ready_pipes(&self) {
        let woken = lock(&self.wakers).take_ready(|key, probe| match probe.upgrade() {
            // The pipe is gone: nobody can be waiting on it; dropping the entry is all.
            None => true,
            Some(p) => match key {
                WakeKey::Readable(_) => p.is_readable(),
                WakeKey::Writable(_) => p.is_writable(),
                WakeKey::Reply(_) => false,
            },
        });
        wakers::wake(woken);
    }

    /// Wakes every blocked call, threads and tasks, so each re-checks its condition (and
    /// its shutdown flag).
    pub(crate) fn wake_all(&self) {
        self.wake_bell.ring();
        let all = lock(&self.wakers).take_all();
        wakers::wake(all);
    }

    /// A wait set for one blocked call: an idle one from the pool, or a new one.
    fn take_sleep_set(&self) -> Option<WaitSet> {
        if let Some(set) = lock(&self.sleep_sets).pop() {
            return Some(set);
        }
        let set = WaitSet::new().ok()?;
        set.add(self.guest_bell.as_fd(), SLEEP_GUEST_BELL, Trigger::Edge)
            .ok()?;
        set.add(self.wake_bell.as_fd(), SLEEP_WAKE_BELL, Trigger::Edge)
            .ok()?;
        set.add(self.sock.as_fd(), SLEEP_SOCK, Trigger::Level)
            .ok()?;
        Some(set)
    }

    /// Registers a task to wake when `key`'s condition may hold: a pipe key with the probe
    /// of its pipe, a reply key without. Call it *before* arming the ring or checking the
    /// reply, so that a change after that check wakes the task.
    #[cfg(feature = "tokio")]
    pub(crate) fn register_waker(
        &self,
        key: WakeKey,
        waker: &std::task::Waker,
        probe: Option<Weak<dyn PipeProbe>>,
    ) {
        lock(&self.wakers).register(key, waker, probe);
        if !self.async_used.swap(true, Ordering::AcqRel) {
            self.update_interest();
        }
    }

    /// Drops the task registered under `key` (its wait ended otherwise).
    #[cfg(feature = "tokio")]
    pub(crate) fn forget_waker(&self, key: WakeKey) {
        lock(&self.wakers).forget(key);
    }

    /// Makes the dispatcher watch the guest bell exactly while it has a reason to: a reply
    /// is awaited by nobody but the dispatcher (an accept, a fired close, an async caller's
    /// request) or async tasks use the session. Otherwise every ring
    /// for a data pipe would wake it for nothing. Called after every change of either
    /// reason; it reads both under its own lock, so the last call leaves the right state.
    /// Enabling happens before the request goes out, so the reply's ring is never missed.
    fn update_interest(&self) {
        let mut watched = lock(&self.bell_watched);
        // A blocking request's own thread takes its reply (see `request`): only the
        // others need the dispatcher.
        let want =
            self.async_used.load(Ordering::Acquire) || lock(&self.requests).needs_dispatcher();
        if want != *watched {
            let how = want.then_some(Trigger::Edge);
            // MOD fails only without kernel memory; the state then stays as it was, and a
            // request still waiting is met by its own polling or the next change.
            if self
                .dispatch_set
                .modify(self.guest_bell.as_fd(), DISPATCH_GUEST_BELL, how)
                .is_ok()
            {
                *watched = want;
            }
        }
    }

    /// Marks the session dead, fails every pending request and wakes everyone.
    fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        // Dropping the senders fails every waiting request with "monitor gone".
        let failed = lock(&self.requests).handle_death();
        drop(failed);
        self.update_interest();
        self.wake_all();
    }

    /// Writes one whole frame to the control pipe, blocking while it is full.
    fn send_frame(&self, id: RequestId, msg: &Message) -> io::Result<()> {
        let bytes = msg.to_frame(id);
        let mut tx = lock(&self.control_tx);
        let mut off = 0;
        while let Some(rest) = bytes.get(off..).filter(|r| !r.is_empty()) {
            if self.is_dead() {
                return Err(gone());
            }
            match tx.write(rest) {
                Ok(n) => off += n,
                Err(RingError::WouldBlock) => {
                    let w = SessionWait {
                        shared: self,
                        cancel: None,
                    };
                    tx.wait_writable(&w, None).map_err(|e| match e {
                        WaitError::PeerGone => gone(),
                        other => other.into(),
                    })?;
                }
                Err(RingError::BrokenPipe | RingError::Closed) => return Err(gone()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends an async task's request and returns its id (the task registers its waker
    /// under [`WakeKey::Reply`] of it) and the receiver its reply will arrive on. The
    /// dispatcher polls for the reply a short while before it sleeps (see [`REPLY_SPIN`]),
    /// since a task cannot poll itself; an accept, answered whenever a peer connects, is
    /// never polled for.
    #[cfg(feature = "tokio")]
    pub(crate) fn start_request(
        &self,
        msg: &Message,
    ) -> io::Result<(RequestId, mpsc::Receiver<Reply>)> {
        self.send_request(msg, Waiter::Task)
    }

    fn send_request(
        &self,
        msg: &Message,
        waiter: Waiter,
    ) -> io::Result<(RequestId, mpsc::Receiver<Reply>)> {
        let request = msg.kind().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "arca: a frame of unknown type is no request",
            )
        })?;
        let (tx, rx) = mpsc::channel();
        let sink = (waiter != Waiter::Detached).then_some(tx);
        let id = lock(&self.requests)
            .register(request, waiter, sink)
            .map_err(|_| gone())?;
        self.update_interest();
        if let Err(e) = self.send_frame(id, msg) {
            lock(&self.requests).remove(id);
            self.update_interest();
            return Err(e);
        }
        Ok((id, rx))
    }

    /// Sends a request and blocks until its reply. A prompt reply is met without a wake:
    /// for up to [`REQUEST_SPIN`] the caller drains the control pipe itself (whoever
    /// drains completes every reply found, its own included); after that it sleeps on the
    /// guest bell and drains again on each wake, and whoever else completes the request
    /// rings the wake bell. An accept, which may wait for a peer indefinitely, just sleeps
    /// until the dispatcher delivers.
    pub(crate) fn request(&self, msg: &Message) -> io::Result<Message> {
        if matches!(msg, Message::AcceptRequest { .. }) {
            // Answered whenever a peer connects: sleep until the dispatcher delivers.
            let (_, rx) = self.send_request(msg, Waiter::Channel)?;
            return rx.recv().unwrap_or_else(|_| Err(gone()));
        }
        let (id, rx) = self.send_request(msg, Waiter::Thread)?;
        // Its own reply, if this thread drains it, needs no wake.
        let _own = OwnRequest::enter(id);
        let start = Instant::now();
        let waiter = SessionWait {
            shared: self,
            cancel: None,
        };
        // False once the spin is over: its budget spent, or the CPU contended.
        let mut spinning = true;
        loop {
            // Past the spin, take a wait set *before* the last look: a reply delivered
            // after it rings the wake bell (see `Waiter::Thread`) or the guest bell, and
            // either stays on the set's ready list.
            spinning = spinning && start.elapsed() < REQUEST_SPIN;
            let token = (!spinning).then(|| waiter.prepare());
            match rx.try_recv() {
                Ok(reply) => return reply,
                Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if self.help_drain() {
                continue;
            }
            match token {
                None => spinning = shm_ring::spin_step(start, REQUEST_SPIN),
                Some(t) => match waiter.wait(t, None) {
                    Ok(()) => {}
                    Err(WaitError::PeerGone) => return Err(gone()),
                    Err(WaitError::TimedOut) => {}
                    Err(WaitError::Io(e)) => return Err(e),
                },
            }
        }
    }

    /// Drains the control pipe on the dispatcher's behalf if it is free and holds frames;
    /// true if it did.
    fn help_drain(&self) -> bool {
        let Ok(mut c) = self.control_rx.try_lock() else {
            return false;
        };
        if !c.rx.poll_readable() {
            return false;
        }
        let live = drain(self, &mut c);
        drop(c);
        if !live {
            self.kill();
        }
        true
    }

    /// Sends a request whose reply nobody waits for (it is discarded on arrival). It is
    /// in flight like any other, so the dispatcher watches for its reply, which must not
    /// pile up unread.
    pub(crate) fn fire(&self, msg: &Message) {
        if !self.is_dead() {
            let _ = self.send_request(msg, Waiter::Detached);
        }
    }

    /// Maps a connection's data pipe announced by the monitor.
    pub(crate) fn attach_pipe(
        &self,
        conn: ConnId,
        pipe: PipeInfo,
    ) -> io::Result<BidirectionalPipe> {
        if conn.0 == 0 || conn.0 >= self.bitmap.slots() {
            return Err(invalid(format!(
                "arca: monitor announced connection id {} outside 1..{}",
                conn.0,
                self.bitmap.slots()
            )));
        }
        let layout = PipeLayout::new(
            ShmOffset(pipe.shm_offset),
            u64::from(pipe.cap_to_monitor),
            u64::from(pipe.cap_to_guest),
        )
        .map_err(|e| invalid(format!("arca: bad data pipe: {e}")))?;
        let bell: Arc<dyn Notify> = self.monitor_bell.clone();
        let n: Arc<dyn Notify> = Arc::new(self.bitmap.notifier(conn.0, bell));
        let wakers = PeerWakers {
            reader: Arc::clone(&n),
            writer: n,
        };
        BidirectionalPipe::attach(&self.region, layout, wakers)
            .map_err(|e| invalid(format!("arca: bad data pipe: {e}")))
    }

    /// A reply that no request is waiting for: give back what it hands us.
    fn discard(&self, msg: Message) {
        match msg {
            Message::ConnectOk { conn, pipe, .. }
            | Message::IncomingConnection { conn, pipe, .. } => {
                // Closing both halves tells the monitor to drop the connection.
                match self.attach_pipe(conn, pipe) {
                    Ok(p) => drop(p),
                    Err(_) => self.fire_nonblocking(&Message::Close {
                        handle: Handle::Connection(conn),
                    }),
                }
            }
            Message::UdpBindOk { socket, pipe, .. } => match self.attach_pipe(socket, pipe) {
                Ok(p) => drop(p),
                Err(_) => self.fire_nonblocking(&Message::Close {
                    handle: Handle::Udp(socket),
                }),
            },
            Message::ListenOk { listener, .. } => self.fire_nonblocking(&Message::Close {
                handle: Handle::Listener(listener),
            }),
            _ => {}
        }
    }

    /// Like [`fire`](Self::fire) but never blocks (the dispatcher must not): the frame is
    /// dropped if the control ring lacks room for all of it.
    fn fire_nonblocking(&self, msg: &Message) {
        let Some(request) = msg.kind() else {
            return;
        };
        let mut tx = lock(&self.control_tx);
        // In flight like a `fire` (see there); only the dispatcher or a draining requester
        // calls this, and either takes the reply. Registered first for the id the frame
        // carries, withdrawn if the ring lacks room.
        let Ok(id) = lock(&self.requests).register(request, Waiter::Detached, None) else {
            return;
        };
        let bytes = msg.to_frame(id);
        if tx.free().is_ok_and(|f| f >= bytes.len()) {
            let _ = tx.write(&bytes);
            drop(tx);
            self.update_interest();
        } else {
            drop(tx);
            lock(&self.requests).remove(id);
        }
    }

    /// Feeds one decoded reply to the request table and acts on what it says.
    fn complete(&self, frame: Frame) {
        let delivery = lock(&self.requests).handle_reply(frame);
        match delivery {
            Delivery::Completed { id, pending, reply } => {
                self.update_interest();
                self.hand_over(id, pending, Ok(reply));
            }
            Delivery::WrongType { id, pending, reply } => {
                self.update_interest();
                let err = invalid(format!(
                    "arca: the monitor answered a {} request with {reply:?}",
                    pending.request.name()
                ));
                self.discard(reply);
                self.hand_over(id, pending, Err(err));
            }
            // Answers nothing in flight (PROTOCOL.md §6): give back what it holds.
            Delivery::Duplicate { reply, .. } | Delivery::Unknown { reply, .. } => {
                self.discard(reply);
            }
        }
    }

    /// Fails request `id` (its reply could not be decoded), if it is in flight.
    fn fail_request(&self, id: RequestId, err: io::Error) {
        let pending = lock(&self.requests).remove(id);
        if let Some(p) = pending {
            self.update_interest();
            self.hand_over(id, p, Err(err));
        }
    }

    /// Puts a finished request's outcome where its requester looks, and wakes the
    /// requester as its [`Waiter`] needs.
    fn hand_over(&self, id: RequestId, pending: Pending<Sink>, reply: Reply) {
        match pending.sink {
            Some(tx) => {
                if let Err(mpsc::SendError(Ok(msg))) = tx.send(reply) {
                    // The requester gave up (a dropped future): give back what it holds.
                    self.discard(msg);
                }
            }
            None => {
                if let Ok(msg) = reply {
                    self.discard(msg);
                }
            }
        }
        match pending.waiter {
            // A thread completing its own request, draining, needs no ring.
            Waiter::Thread if !OwnRequest::is(id) => self.wake_bell.ring(),
            Waiter::Task => {
                let woken = lock(&self.wakers).take(WakeKey::Reply(id));
                wakers::wake(woken);
            }
            // A channel's receiver wakes with the send; a detached request has nobody.
            Waiter::Thread | Waiter::Channel | Waiter::Detached => {}
        }
    }
}

thread_local! {
    /// The request this thread is blocked in ([`Shared::request`]), 0 for none.
    static OWN_REQUEST: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the request a thread is blocked in, for as long as the guard lives: a reply
/// that thread completes itself, draining the control pipe, needs no wake-bell ring —
/// a ring nobody needs costs a system call, and a spurious wake of the next sleep.
struct OwnRequest;

impl OwnRequest {
    fn enter(id: RequestId) -> Self {
        OWN_REQUEST.with(|c| c.set(id.0));
        OwnRequest
    }

    fn is(id: RequestId) -> bool {
        OWN_REQUEST.with(|c| c.get() == id.0)
    }
}

impl Drop for OwnRequest {
    fn drop(&mut self) {
        OWN_REQUEST.with(|c| c.set(0));
    }
}

/// Owns the dispatcher: dropping the last handle stops it (and so ends the session).
pub(crate) struct Owner {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.stop_bell.ring();
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

/// Sets up a session on a connected session socket.
pub(crate) fn start(sock: OwnedFd) -> io::Result<Arc<Owner>> {
    bootstrap::set_cloexec(sock.as_fd())?;
    let got = bootstrap::receive(sock.as_fd())?;
    let boot = got.boot;
    let region = Arc::new(
        ShmRegion::open(got.region, boot.region_size)
            .map_err(|e| invalid(format!("arca: cannot map the region: {e}")))?,
    );
    let guest_bell = Arc::new(Doorbell::from_fd(got.guest_bell)?);
    let monitor_bell = Arc::new(Doorbell::from_fd(got.monitor_bell)?);
    let bitmap = Arc::new(
        NotifyBitmap::new(&region, ShmOffset(boot.bitmap_offset), boot.bitmap_slots)
            .map_err(|e| invalid(format!("arca: bad notification bitmap: {e}")))?,
    );
    if boot.bitmap_slots == 0 {
        return Err(invalid("arca: notification bitmap has no slots"));
    }
    let layout = PipeLayout::new(
        ShmOffset(boot.control_offset),
        u64::from(boot.control_cap_to_monitor),
        u64::from(boot.control_cap_to_guest),
    )
    .map_err(|e| invalid(format!("arca: bad control pipe: {e}")))?;
    let bell: Arc<dyn Notify> = monitor_bell.clone();
    let n: Arc<dyn Notify> = Arc::new(bitmap.notifier(0, bell));
    let control = BidirectionalPipe::attach(
        &region,
        layout,
        PeerWakers {
            reader: Arc::clone(&n),
            writer: n,
        },
    )
    .map_err(|e| invalid(format!("arca: bad control pipe: {e}")))?;
    let (tx, rx) = control.split();
    let shared = Arc::new(Shared {
        sock,
        region,
        bitmap,
        guest_bell,
        monitor_bell,
        stop_bell: Doorbell::new()?,
        stop: AtomicBool::new(false),
        control_tx: Mutex::new(tx),
        control_rx: Mutex::new(ControlRx {
            rx,
            decoder: FrameDecoder::new(),
            buf: vec![0u8; 8192],
        }),
        requests: Mutex::new(RequestTable::new()),
        wake_bell: Doorbell::new()?,
        sleep_sets: Mutex::new(Vec::new()),
        dead: AtomicBool::new(false),
        wakers: Mutex::new(WakerRegistry::default()),
        async_used: AtomicBool::new(false),
        dispatch_set: WaitSet::new()?,
        bell_watched: Mutex::new(false),
    });
    // The guest bell starts unwatched: `update_interest` turns it on with the first request.
    let set = &shared.dispatch_set;
    set.add(
        shared.guest_bell.as_fd(),
        DISPATCH_GUEST_BELL,
        Trigger::Edge,
    )?;
    set.modify(shared.guest_bell.as_fd(), DISPATCH_GUEST_BELL, None)?;
    set.add(shared.sock.as_fd(), DISPATCH_SOCK, Trigger::Level)?;
    set.add(shared.stop_bell.as_fd(), DISPATCH_STOP, Trigger::Level)?;
    let d = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("arca-dispatch".into())
        .spawn(move || dispatch(&d))?;
    let owner = Arc::new(Owner { shared });
    match owner.shared.request(&Message::hello())? {
        Message::HelloOk { .. } => Ok(owner),
        Message::HelloErr { code, .. } => {
            Err(code.into_io_error("arca: monitor refused the handshake"))
        }
        Message::Error { code, .. } => Err(code.into_io_error("arca: handshake rejected")),
        other => Err(invalid(format!(
            "arca: unexpected handshake reply {other:?}"
        ))),
    }
}

/// How long a blocking requester polls for its reply before it sleeps on the guest bell:
/// about what a wake costs, as for a stream ([`shm_ring::DEFAULT_SPIN`]), and in the same
/// way ([`shm_ring::spin_step`]): busy at first, then yielding the CPU, which the monitor
/// (answering) or a local peer (accepting a connect) may need more.
const REQUEST_SPIN: Duration = shm_ring::DEFAULT_SPIN;

/// How long the dispatcher polls for a reply due to an async caller (which cannot poll
/// itself) before it sleeps.
const REPLY_SPIN: Duration = Duration::from_micros(50);

fn replies_due(shared: &Shared) -> bool {
    lock(&shared.requests).replies_due()
}

/// The control pipe's reading half and its frame decoder.
struct ControlRx {
    rx: Consumer,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

/// Polls the control ring for up to [`REPLY_SPIN`]; true if it became readable.
fn spin_for_reply(rx: &mut Consumer) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < REPLY_SPIN {
        let spin_on = shm_ring::spin_step(start, REPLY_SPIN);
        if rx.poll_readable() {
            return true;
        }
        if !spin_on {
            break;
        }
    }
    false
}

/// Tokens of the dispatcher's wait set.
const DISPATCH_GUEST_BELL: u32 = 0;
const DISPATCH_SOCK: u32 = 1;
const DISPATCH_STOP: u32 = 2;

/// The dispatcher thread's body: see the module documentation.
fn dispatch(shared: &Shared) {
    let set = &shared.dispatch_set;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let mut c = lock(&shared.control_rx);
        if !drain(shared, &mut c) {
            drop(c);
            shared.kill();
            break;
        }
        shared.wake_ready_pipes();
        // While a prompt reply is due to an async caller (any request but an accept),
        // poll for it for a short while instead of paying a sleep and a wake (the monitor
        // does the same after work). Idle sessions never spin.
        if replies_due(shared) && spin_for_reply(&mut c.rx) {
            continue;
        }
        if c.rx.arm() {
            c.rx.disarm();
            continue;
        }
        // Never sleep holding the control pipe: a blocked `request` may drain it.
        drop(c);
        let fired = set.wait(None).unwrap_or_else(|_| {
            // Cannot sleep: avoid a hot loop, keep serving.
            std::thread::sleep(Duration::from_millis(10));
            0
        });
        if fired & (1 << DISPATCH_SOCK) != 0 && shared.socket_eof() {
            shared.kill();
            break;
        }
        lock(&shared.control_rx).rx.disarm();
    }
    // Leaving closes the control pipe's reading half.
    lock(&shared.control_rx).rx.close();
}

/// Reads every available control byte and completes the requests answered. False when the
/// session is over (control pipe closed or corrupt, stream out of sync).
fn drain(shared: &Shared, c: &mut ControlRx) -> bool {
    let ControlRx { rx, decoder, buf } = c;
    loop {
        let n = match rx.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(RingError::WouldBlock) => return true,
            Err(_) => return false,
        };
        let mut input = buf.get(..n).unwrap_or_default();
        while !input.is_empty() {
            let taken = decoder.feed(input);
            input = input.get(taken..).unwrap_or_default();
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => shared.complete(frame),
                    Ok(None) => break,
                    Err(FrameError::Malformed { header, error }) => shared.fail_request(
                        header.request_id,
                        invalid(format!("arca: undecodable reply from the monitor: {error}")),
                    ),
                    Err(FrameError::Desync(_)) => return false,
                }
            }
            if taken == 0 && decoder.is_poisoned() {
                return false;
            }
        }
    }
}

/// Formats a remote error with the operation and address involved.
pub(crate) fn op_error(
    code: arca_wire::ErrorCode,
    op: &str,
    addr: Option<SocketAddr>,
) -> io::Error {
    match addr {
        Some(a) => code.into_io_error(format!("arca: {op} {a}")),
        None => code.into_io_error(format!("arca: {op}")),
    }
}
