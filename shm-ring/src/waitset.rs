//! A small epoll set for sleeping on doorbells and liveness fds.
//!
//! Doorbells are watched **edge-triggered**: every ring after [`WaitSet::add`]
//! leaves the doorbell on the set's ready list until a [`WaitSet::wait`]
//! harvests it, so a ring that lands between a sleeper's last check and its
//! sleep is never missed, and nobody has to read (drain) the eventfd — one
//! system call per wake. Because a drain would empty the counter that epoll
//! re-checks when it harvests an edge, **an eventfd watched this way must not
//! be drained by anyone** (a drain racing a harvest would swallow the wake).
//! The counter then only grows; it saturates after 2⁶⁴ − 2 rings, centuries at
//! any real rate.
//!
//! Liveness fds (a socket the peer never writes to, a pidfd) are watched
//! **level-triggered**: once the peer is gone, every wait sees it.
//!
//! Any number of sets may watch one eventfd; a ring wakes each of them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// How a watched fd reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Once per change (doorbells).
    Edge,
    /// For as long as the condition holds (liveness fds).
    Level,
}

/// An epoll set over a few fds, each named by a token below 64.
#[derive(Debug)]
pub struct WaitSet {
    fd: OwnedFd,
}

impl WaitSet {
    /// An empty set (close-on-exec).
    ///
    /// # Errors
    /// The `epoll_create1` error (for example `EMFILE`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: `epoll_create1` has no memory-safety preconditions.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Watches `fd` for readability, peer hang-up or error, reported as
    /// `token` (below 64).
    ///
    /// # Errors
    /// The `epoll_ctl` error; `InvalidInput` for a token of 64 or more.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u32, trigger: Trigger) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, Some(trigger))
    }

    /// Changes how an added `fd` is watched; `None` stops watching it until
    /// the next change (it stays in the set). Re-enabling an eventfd whose
    /// counter is non-zero reports it at once.
    ///
    /// # Errors
    /// As [`add`](Self::add); `ENOENT` if `fd` was never added.
    pub fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u32,
        trigger: Option<Trigger>,
    ) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, trigger)
    }

    fn ctl(
        &self,
        op: i32,
        fd: BorrowedFd<'_>,
        token: u32,
        trigger: Option<Trigger>,
    ) -> io::Result<()> {
        if token >= 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wait-set tokens are below 64",
            ));
        }
        let events = match trigger {
            None => 0,
            Some(Trigger::Level) => (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            Some(Trigger::Edge) => (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        };
        let mut ev = libc::epoll_event {
            events,
            u64: u64::from(token),
        };
        // SAFETY: both descriptors are live and `ev` is a valid event.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sleeps until a watched fd fires or `deadline` passes. Returns the
    /// tokens that fired as a bit mask (`1 << token`); `0` only once the
    /// deadline has passed. A deadline already past gives one non-blocking
    /// look, so an event that raced the deadline still counts.
    ///
    /// # Errors
    /// The `epoll_wait` error (`EINTR` is retried).
    pub fn wait(&self, deadline: Option<Instant>) -> io::Result<u64> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        loop {
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        0
                    } else {
                        // Rounded up, so the wait never ends early.
                        let ns = (d - now).as_nanos();
                        i32::try_from(ns.div_ceil(1_000_000)).unwrap_or(i32::MAX)
                    }
                }
            };
            // SAFETY: the set is live and `events` is a writable array of
            // the length passed.
            let n = unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout_ms,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let fired = events
                .iter()
                .take(n as usize)
                .fold(0u64, |m, e| m | 1u64.checked_shl(e.u64 as u32).unwrap_or(0));
            if fired != 0 || timeout_ms == 0 {
                return Ok(fired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Doorbell;
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(20))
    }

    #[test]
    fn every_set_watching_a_doorbell_sees_each_ring_once() {
        let bell = Doorbell::new().unwrap();
        let (a, b) = (WaitSet::new().unwrap(), WaitSet::new().unwrap());
        a.add(bell.as_fd(), 3, Trigger::Edge).unwrap();
        b.add(bell.as_fd(), 5, Trigger::Edge).unwrap();
        bell.ring();
        bell.ring();
        assert_eq!(a.wait(soon()).unwrap(), 1 << 3);
        assert_eq!(b.wait(soon()).unwrap(), 1 << 5);
        // Two rings before a wait are one wake; then the set sleeps.
        assert_eq!(a.wait(soon()).unwrap(), 0);
        bell.ring();
        assert_eq!(a.wait(soon()).unwrap(), 1 << 3);
    }

    #[test]
    fn a_hung_up_liveness_fd_fires_every_time() {
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        let set = WaitSet::new().unwrap();
        set.add(x.as_fd(), 0, Trigger::Level).unwrap();
        assert_eq!(set.wait(soon()).unwrap(), 0);
        drop(y);
        assert_eq!(set.wait(soon()).unwrap(), 1);
        assert_eq!(set.wait(soon()).unwrap(), 1);
    }

    #[test]
    fn a_disabled_doorbell_is_reported_when_enabled_again() {
        let bell = Doorbell::new().unwrap();
        let set = WaitSet::new().unwrap();
        set.add(bell.as_fd(), 1, Trigger::Edge).unwrap();
        set.modify(bell.as_fd(), 1, None).unwrap();
        bell.ring();
        assert_eq!(set.wait(soon()).unwrap(), 0, "not watched while disabled");
        set.modify(bell.as_fd(), 1, Some(Trigger::Edge)).unwrap();
        assert_eq!(
            set.wait(soon()).unwrap(),
            1 << 1,
            "the pending ring shows on enabling"
        );
        assert_eq!(set.wait(soon()).unwrap(), 0);
    }

    #[test]
    fn tokens_of_64_or_more_are_refused() {
        let bell = Doorbell::new().unwrap();
        let set = WaitSet::new().unwrap();
        let e = set.add(bell.as_fd(), 64, Trigger::Edge).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
