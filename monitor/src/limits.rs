//! The monitor-wide session limits: sessions in total and per user.
//!
//! The only counters workers share. A guest's place is reserved by the thread
//! that accepts it ([`Limits::reserve`]) and travels with its session to the
//! worker that serves it, as a [`SessionSlot`]; dropping the slot (the session
//! ended, or never started) gives the place back. A small mutex guards both
//! counts: it is taken once per attach and once per session end, never on the
//! relay path, so checking and counting are one step and no interleaving of
//! workers can exceed a limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a guest got no place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The monitor serves its limit of sessions.
    #[error("the monitor serves its limit of {0} sessions")]
    Sessions(usize),
    /// The user holds its limit of sessions.
    #[error("user {0} holds its limit of {1} sessions")]
    UserSessions(u32, usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Sessions held by each user; a user holding none has no entry.
    per_uid: HashMap<u32, usize>,
}

/// Sessions held against `max_total` and `max_per_uid`.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_uid: usize,
    counts: Mutex<Counts>,
}

impl Limits {
    /// No sessions held yet.
    pub fn new(max_total: usize, max_per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_uid,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent across a panic elsewhere: every update
        // is a single increment or decrement.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more session of user `uid`.
    ///
    /// # Errors
    /// [`LimitError`] naming the limit that is full.
    pub fn reserve(self: &Arc<Self>, uid: u32) -> Result<SessionSlot, LimitError> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(LimitError::Sessions(self.max_total));
        }
        let held = c.per_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.max_per_uid {
            return Err(LimitError::UserSessions(uid, self.max_per_uid));
        }
        c.total += 1;
        c.per_uid.insert(uid, held + 1);
        Ok(SessionSlot {
            limits: Arc::clone(self),
            uid,
        })
    }

    /// Sessions held in total.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Sessions user `uid` holds.
    pub fn held_by(&self, uid: u32) -> usize {
        self.counts().per_uid.get(&uid).copied().unwrap_or(0)
    }
}

/// One session's place in the [`Limits`]; given back on drop.
#[derive(Debug)]
pub struct SessionSlot {
    limits: Arc<Limits>,
    uid: u32,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.limits.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_limits_hold_and_places_come_back() {
        let l = Limits::new(3, 2);
        let a = l.reserve(1000).unwrap();
        let b = l.reserve(1000).unwrap();
        assert_eq!(
            l.reserve(1000).unwrap_err(),
            LimitError::UserSessions(1000, 2)
        );
        let c = l.reserve(1001).unwrap();
        assert_eq!(l.reserve(1002).unwrap_err(), LimitError::Sessions(3));
        drop(a);
        assert_eq!((l.total(), l.held_by(1000)), (2, 1));
        let d = l.reserve(1000).unwrap();
        drop((b, c, d));
        assert_eq!((l.total(), l.held_by(1000), l.held_by(1001)), (0, 0, 0));
        assert!(
            l.counts().per_uid.is_empty(),
            "no entry for users holding none"
        );
    }

    /// Threads reserving and dropping places at once, as an accepting thread
    /// and the workers ending sessions do: a limit is never exceeded, and
    /// every place comes back. Each thread records the largest count it saw
    /// while holding a place.
    #[test]
    fn racing_threads_never_exceed_a_limit() {
        const THREADS: u32 = 8;
        const ROUNDS: usize = 2_000;
        let l = Limits::new(5, 2);
        let peak = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let l = Arc::clone(&l);
                    s.spawn(move || {
                        let uid = t % 3;
                        let (mut peak_total, mut peak_uid, mut got) = (0, 0, 0);
                        for _ in 0..ROUNDS {
                            if let Ok(slot) = l.reserve(uid) {
                                got += 1;
                                peak_total = peak_total.max(l.total());
                                peak_uid = peak_uid.max(l.held_by(uid));
                                std::thread::yield_now();
                                drop(slot);
                            }
                        }
                        (peak_total, peak_uid, got)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1), a.2 + b.2))
        });
        assert!(peak.0 <= 5, "total peaked at {}", peak.0);
        assert!(peak.1 <= 2, "a user peaked at {}", peak.1);
        assert!(peak.2 > 0, "some reservations succeeded");
        assert_eq!(l.total(), 0);
    }
}
