//! How a blocked side sleeps and how the other side wakes it.
//!
//! The ring protocol (see [`Consumer::wait_readable`](crate::Consumer::wait_readable))
//! only needs two capabilities, kept abstract so the same protocol runs over
//! eventfds in production and over loom's primitives under the model checker.

use std::time::Instant;

/// Something that wakes a sleeping peer (an eventfd doorbell in production).
pub trait Notify: Send + Sync {
    /// Wake whoever sleeps on the other end. Must not block.
    fn notify(&self);
}

/// Something a side sleeps on until [`Notify::notify`] is called.
///
/// The protocol calls [`prepare`](Self::prepare) *before* it publishes its
/// need-wakeup flag and re-checks the ring, then [`wait`](Self::wait) with the
/// token. An implementation must return from `wait` if a notification arrived
/// at any time after `prepare` returned; that is what makes the sleep/wake
/// handshake lose no wakeup.
pub trait Wait {
    /// Whatever `wait` needs to tell "notified since prepare" apart.
    type Token;

    /// Called before the need-wakeup flag is published.
    fn prepare(&self) -> Self::Token;

    /// Sleeps until notified after `prepare`, until `deadline`, or until the
    /// peer is known to be gone. Spurious returns are allowed.
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] past the deadline, [`WaitError::PeerGone`] when
    /// the peer has died, [`WaitError::Io`] when sleeping itself failed.
    fn wait(&self, token: Self::Token, deadline: Option<Instant>) -> Result<(), WaitError>;
}

/// Why a blocking wait ended without the ring becoming ready.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The peer process is gone (its liveness fd hung up).
    #[error("peer is gone")]
    PeerGone,
    /// Sleeping failed.
    #[error("wait failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<WaitError> for std::io::Error {
    fn from(e: WaitError) -> Self {
        use std::io::ErrorKind;
        match e {
            WaitError::TimedOut => std::io::Error::new(ErrorKind::TimedOut, e),
            WaitError::PeerGone => std::io::Error::new(ErrorKind::ConnectionAborted, e),
            WaitError::Io(io) => io,
        }
    }
}

/// A notifier that does nothing: for a side that never sleeps (a busy-polling
/// peer) or for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotify;

impl Notify for NoNotify {
    fn notify(&self) {}
}
