//! Eventfd doorbells: how one process wakes another that sleeps.
//!
//! A doorbell is an eventfd: ringing adds one to its counter, and a sleeper
//! polls it (so the monitor can wait on many doorbells and sockets in one
//! epoll). A doorbell may also watch a *liveness fd* — a pidfd of the peer, or
//! a socket on which nothing is ever sent — which becomes readable or hangs up
//! when the peer dies, so that a sleeper gets [`WaitError::PeerGone`] instead
//! of sleeping forever.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::wait::{Notify, Wait, WaitError};
use crate::waitset::{Trigger, WaitSet};

/// An eventfd doorbell.
///
/// As a [`Wait`], one doorbell serves one sleeping thread at a time: a ring
/// wakes one sleeper, and a second thread sleeping on the same doorbell could
/// take the wake meant for the first. Give each blocking role (a reader, a
/// writer) its own doorbell, or fan one doorbell out to many sleepers.
#[derive(Debug)]
pub struct Doorbell {
    efd: OwnedFd,
    liveness: Option<Arc<OwnedFd>>,
    /// The epoll set [`wait_until`](Self::wait_until) sleeps on.
    wait_set: OnceLock<WaitSet>,
}

impl Doorbell {
    /// A fresh doorbell (non-blocking, close-on-exec).
    ///
    /// # Errors
    /// The `eventfd` error.
    pub fn new() -> io::Result<Self> {
        // SAFETY: `eventfd` has no memory-safety preconditions; it returns a
        // new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let efd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        Ok(Self {
            efd,
            liveness: None,
            wait_set: OnceLock::new(),
        })
    }

    /// Wraps a doorbell received from the peer.
    ///
    /// # Errors
    /// `InvalidInput` if `fd` is not an eventfd.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("doorbell fd is {}, not an eventfd", link.display()),
            ));
        }
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self {
            efd: fd,
            liveness: None,
            wait_set: OnceLock::new(),
        })
    }

    /// Makes waits on this doorbell also end, with [`WaitError::PeerGone`],
    /// when `fd` becomes readable or hangs up.
    #[must_use]
    pub fn with_liveness(mut self, fd: Arc<OwnedFd>) -> Self {
        self.liveness = Some(fd);
        // A wait set made before this would not watch it.
        self.wait_set = OnceLock::new();
        self
    }

    /// Wakes the sleeper. Never blocks; a saturated counter already means a
    /// pending wake, so its `EAGAIN` is ignored.
    pub fn ring(&self) {
        let _ = nix::unistd::write(&self.efd, &1u64.to_ne_bytes());
    }

    /// Clears pending rings; returns how many there were. Only for a doorbell
    /// polled level-triggered; never for one watched edge-triggered (a
    /// [`wait_until`](Self::wait_until), any [`WaitSet`]), where it could
    /// swallow a wake.
    pub fn drain(&self) -> u64 {
        let mut b = [0u8; 8];
        match nix::unistd::read(self.efd.as_raw_fd(), &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    /// Sleeps until rung, until `deadline`, or until the liveness fd fires.
    ///
    /// The sleep is one `epoll_wait` on a [`WaitSet`] made at the first wait:
    /// the eventfd edge-triggered, the liveness fd level-triggered. A wait
    /// returns once for all rings since the previous wait returned; it does
    /// not read the counter (that would be a second system call per wake).
    /// Do not [`drain`](Self::drain) a doorbell that is waited on this way
    /// (see [`WaitSet`]).
    ///
    /// # Errors
    /// [`WaitError::TimedOut`], [`WaitError::PeerGone`], [`WaitError::Io`].
    pub fn wait_until(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        let set = self.wait_set().map_err(WaitError::Io)?;
        let fired = set.wait(deadline).map_err(WaitError::Io)?;
        if fired & (1 << TOKEN_BELL) != 0 {
            Ok(())
        } else if fired & (1 << TOKEN_LIVENESS) != 0 {
            Err(WaitError::PeerGone)
        } else {
            Err(WaitError::TimedOut)
        }
    }

    /// The set this doorbell's waits sleep on, made on first use (a doorbell
    /// that is only rung never costs one).
    fn wait_set(&self) -> io::Result<&WaitSet> {
        if let Some(set) = self.wait_set.get() {
            return Ok(set);
        }
        let set = WaitSet::new()?;
        set.add(self.efd.as_fd(), TOKEN_BELL, Trigger::Edge)?;
        if let Some(l) = &self.liveness {
            set.add(l.as_fd(), TOKEN_LIVENESS, Trigger::Level)?;
        }
        // A racing first wait in another thread may have set it; either set
        // works, the loser's is closed.
        Ok(self.wait_set.get_or_init(|| set))
    }
}

/// Wait-set tokens.
const TOKEN_BELL: u32 = 0;
const TOKEN_LIVENESS: u32 = 1;

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

impl Notify for Doorbell {
    fn notify(&self) {
        self.ring();
    }
}

impl Wait for Doorbell {
    type Token = ();

    fn prepare(&self) {}

    /// A ring after `prepare` stays in the eventfd's counter until read, so it
    /// cannot be missed.
    fn wait(&self, (): (), deadline: Option<Instant>) -> Result<(), WaitError> {
        self.wait_until(deadline)
    }
}

impl Notify for Arc<Doorbell> {
    fn notify(&self) {
        self.ring();
    }
}

impl Wait for Arc<Doorbell> {
    type Token = ();

    fn prepare(&self) {}

    fn wait(&self, (): (), deadline: Option<Instant>) -> Result<(), WaitError> {
        self.wait_until(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ring_then_wait_returns_at_once() {
        let d = Doorbell::new().unwrap();
        d.ring();
        d.ring();
        d.wait_until(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        // Both rings were one wake: the next wait sleeps until a new ring.
        let e = d
            .wait_until(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap_err();
        assert!(matches!(e, WaitError::TimedOut));
        d.ring();
        d.wait_until(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        // The counter was never read by the waits.
        assert_eq!(d.drain(), 3);
    }

    #[test]
    fn wait_times_out() {
        let d = Doorbell::new().unwrap();
        let t = Instant::now();
        let e = d
            .wait_until(Some(t + Duration::from_millis(20)))
            .unwrap_err();
        assert!(matches!(e, WaitError::TimedOut));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wakes_a_sleeper_in_another_thread() {
        let d = Arc::new(Doorbell::new().unwrap());
        let d2 = Arc::clone(&d);
        let h = std::thread::spawn(move || {
            d2.wait_until(Some(Instant::now() + Duration::from_secs(10)))
        });
        std::thread::sleep(Duration::from_millis(20));
        d.ring();
        h.join().unwrap().unwrap();
    }

    #[test]
    fn liveness_hangup_ends_the_wait() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let d = Doorbell::new()
            .unwrap()
            .with_liveness(Arc::new(OwnedFd::from(a)));
        drop(b);
        let e = d
            .wait_until(Some(Instant::now() + Duration::from_secs(10)))
            .unwrap_err();
        assert!(matches!(e, WaitError::PeerGone));
    }

    #[test]
    fn from_fd_rejects_non_eventfds() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = Doorbell::from_fd(OwnedFd::from(f)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let d = Doorbell::new().unwrap();
        let dup = d.as_fd().try_clone_to_owned().unwrap();
        let d2 = Doorbell::from_fd(dup).unwrap();
        d2.ring();
        assert_eq!(d.drain(), 1);
    }
}
