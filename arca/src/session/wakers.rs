//! Async tasks waiting on the session, each under the key of what it waits for.
//!
//! A task that would block registers its waker under a [`WakeKey`]: a connection's read or
//! write side (with a probe that tells whether that side is ready now), or a request in
//! flight. The dispatcher wakes only what became ready: on a guest-bell ring it probes every
//! registered pipe and wakes those ready ([`WakerRegistry::take_ready`]); on a reply it wakes
//! that request's key ([`WakerRegistry::take`]). The session's end and `shutdown` wake all
//! ([`WakerRegistry::take_all`]), the fallback that keeps a missed condition from hanging a
//! task.
//!
//! No I/O here: the caller supplies readiness through a closure and wakes the returned
//! wakers after releasing its lock (a waker may run arbitrary code).

use std::collections::HashMap;
use std::task::Waker;

use arca_wire::{ConnId, RequestId};

/// What a registered task waits for.
// Only the async wrapper (feature `tokio`) registers tasks.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WakeKey {
    /// Bytes (or EOF, or an error) to read on a connection's pipe.
    Readable(ConnId),
    /// Room (or an error) to write on a connection's pipe.
    Writable(ConnId),
    /// The reply to a request in flight.
    Reply(RequestId),
}

#[derive(Debug)]
struct Entry<P> {
    /// Tasks waiting on the key; usually one (two tasks reading one stream is allowed,
    /// and both must wake).
    wakers: Vec<Waker>,
    /// Tells whether the key's condition holds now; `None` for a key only a reply wakes.
    probe: Option<P>,
}

/// Registered wakers by key. `P` is the pipe probe the shell gives with a pipe key.
///
/// Invariant: an entry holds at least one waker; a woken entry is removed (the task
/// registers again when it next has to wait).
#[derive(Debug)]
pub(crate) struct WakerRegistry<P> {
    entries: HashMap<WakeKey, Entry<P>>,
}

impl<P> Default for WakerRegistry<P> {
    fn default() -> Self {
        WakerRegistry {
            entries: HashMap::new(),
        }
    }
}

impl<P> WakerRegistry<P> {
    /// Registers `waker` under `key` (once: a waker that would wake the same task is not
    /// added again). `probe` replaces the key's probe when given.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn register(&mut self, key: WakeKey, waker: &Waker, probe: Option<P>) {
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            wakers: Vec::with_capacity(1),
            probe: None,
        });
        if !entry.wakers.iter().any(|w| w.will_wake(waker)) {
            entry.wakers.push(waker.clone());
        }
        if probe.is_some() {
            entry.probe = probe;
        }
    }

    /// Drops `key`'s entry without waking it (its waiter finished or went away).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn forget(&mut self, key: WakeKey) {
        self.entries.remove(&key);
    }

    /// Takes the wakers registered under `key`.
    pub(crate) fn take(&mut self, key: WakeKey) -> Vec<Waker> {
        self.entries
            .remove(&key)
            .map(|e| e.wakers)
            .unwrap_or_default()
    }

    /// Takes the wakers of every key with a probe for which `ready` holds. Keys without a
    /// probe (replies) are left alone. O(registered keys) probes.
    pub(crate) fn take_ready(&mut self, mut ready: impl FnMut(WakeKey, &P) -> bool) -> Vec<Waker> {
        let mut woken = Vec::new();
        self.entries.retain(|&key, e| match &e.probe {
            Some(p) if ready(key, p) => {
                woken.append(&mut e.wakers);
                false
            }
            _ => true,
        });
        woken
    }

    /// Takes every registered waker.
    pub(crate) fn take_all(&mut self) -> Vec<Waker> {
        self.entries.drain().flat_map(|(_, e)| e.wakers).collect()
    }

    /// How many keys have a waiting task.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Wakes each of `wakers`; returns how many.
pub(crate) fn wake(wakers: Vec<Waker>) -> usize {
    let n = wakers.len();
    for w in wakers {
        w.wake();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A task's waker that counts its wakes.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn task() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(Arc::clone(&c)))
    }

    fn count(c: &Counter) -> usize {
        c.0.load(Ordering::Relaxed)
    }

    /// A pipe side whose readiness the test sets.
    type Probe = Arc<AtomicBool>;

    fn probe_ready(_: WakeKey, p: &Probe) -> bool {
        p.load(Ordering::Relaxed)
    }

    #[test]
    fn traffic_on_one_of_n_idle_connections_wakes_only_its_task() {
        const N: u32 = 64;
        let mut reg = WakerRegistry::default();
        let mut tasks = Vec::new();
        for c in 1..=N {
            let (counter, waker) = task();
            let probe: Probe = Arc::new(AtomicBool::new(false));
            reg.register(
                WakeKey::Readable(ConnId(c)),
                &waker,
                Some(Arc::clone(&probe)),
            );
            tasks.push((counter, probe));
        }
        // A bell ring with nothing ready (the monitor rang for some other pipe) wakes nobody.
        assert_eq!(wake(reg.take_ready(probe_ready)), 0);
        // Bytes arrive for connection 17 only.
        let (busy, busy_probe) = &tasks[16];
        busy_probe.store(true, Ordering::Relaxed);
        assert_eq!(wake(reg.take_ready(probe_ready)), 1);
        assert_eq!(count(busy), 1);
        let others: usize = tasks.iter().map(|(c, _)| count(c)).sum::<usize>() - 1;
        assert_eq!(others, 0, "idle connections were woken");
        assert_eq!(reg.len(), N as usize - 1);
        // Woken once: a second ring does not wake it again until it registers again.
        assert_eq!(wake(reg.take_ready(probe_ready)), 0);
        // The session's end wakes everyone still waiting.
        assert_eq!(wake(reg.take_all()), N as usize - 1);
        assert!(tasks.iter().all(|(c, _)| count(c) == 1));
        assert_eq!(reg.len(), 0);
    }

    #[test]
    fn a_reply_wakes_only_its_request_and_probes_skip_replies() {
        let mut reg: WakerRegistry<Probe> = WakerRegistry::default();
        let (a, wa) = task();
        let (b, wb) = task();
        reg.register(WakeKey::Reply(RequestId(1)), &wa, None);
        reg.register(WakeKey::Reply(RequestId(2)), &wb, None);
        assert_eq!(wake(reg.take_ready(|_, _| true)), 0);
        assert_eq!(wake(reg.take(WakeKey::Reply(RequestId(2)))), 1);
        assert_eq!((count(&a), count(&b)), (0, 1));
        assert_eq!(wake(reg.take(WakeKey::Reply(RequestId(9)))), 0);
        reg.forget(WakeKey::Reply(RequestId(1)));
        assert_eq!(reg.len(), 0);
        assert_eq!(count(&a), 0);
    }

    #[test]
    fn read_and_write_sides_wake_apart_and_repeat_registration_counts_once() {
        let mut reg = WakerRegistry::default();
        let (r, wr) = task();
        let (w, ww) = task();
        let readable: Probe = Arc::new(AtomicBool::new(false));
        let writable: Probe = Arc::new(AtomicBool::new(true));
        for _ in 0..3 {
            reg.register(
                WakeKey::Readable(ConnId(5)),
                &wr,
                Some(Arc::clone(&readable)),
            );
        }
        reg.register(
            WakeKey::Writable(ConnId(5)),
            &ww,
            Some(Arc::clone(&writable)),
        );
        assert_eq!(wake(reg.take_ready(probe_ready)), 1);
        assert_eq!((count(&r), count(&w)), (0, 1));
        readable.store(true, Ordering::Relaxed);
        assert_eq!(wake(reg.take_ready(probe_ready)), 1);
        assert_eq!(count(&r), 1);
    }

    #[test]
    fn two_tasks_on_one_key_both_wake() {
        let mut reg = WakerRegistry::default();
        let (a, wa) = task();
        let (b, wb) = task();
        let p: Probe = Arc::new(AtomicBool::new(true));
        reg.register(WakeKey::Readable(ConnId(1)), &wa, Some(Arc::clone(&p)));
        reg.register(WakeKey::Readable(ConnId(1)), &wb, Some(p));
        assert_eq!(wake(reg.take_ready(probe_ready)), 2);
        assert_eq!((count(&a), count(&b)), (1, 1));
    }
}
