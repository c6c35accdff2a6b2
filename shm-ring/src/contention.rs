//! Whether this process's CPUs are contended, learned from its own yields.
//!
//! Spinning pays on an idle CPU and costs on a busy one: a thread that yields to a CPU hog
//! stays runnable but not running, so the wake it spins for finds it off the CPU until the
//! hog's time slice ends (milliseconds), where a thread asleep on its doorbell would have
//! been woken and scheduled at once. So every spin-wait yields through [`yield_cpu`], which
//! times the yield: one that took [`CONTENDED_YIELD`] or longer means another thread ran a
//! long stretch on this CPU. For [`BACKOFF`] after that, [`cpu_contended`] is true and the
//! spin-waits of this process ([`spin_step`](crate::spin_step), the monitor's busy poll)
//! sleep at once; the first spin after it probes again.
//!
//! The state is one process-wide word, private memory only (never shared with a peer), so
//! it uses `std`'s atomics rather than the crate's `sync` module: loom does not model it,
//! and under loom no spin-wait runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A yield that lasted this long ran another thread for a long stretch: longer than a peer
/// needs to answer (a cross-CPU wake and a relay turn are tens of µs), shorter than a time
/// slice (about 1–3 ms).
pub const CONTENDED_YIELD: Duration = Duration::from_micros(200);

/// How long a contended yield stops spinning. Under a steady load one probe per
/// backoff loses one slice: about one exchange in a thousand at 50 µs round trips.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// Until when spinning is off: nanoseconds since a process-wide epoch, 0 for never.
struct Contention {
    until: AtomicU64,
}

impl Contention {
    const fn new() -> Self {
        Self {
            until: AtomicU64::new(0),
        }
    }

    /// Notes a yield that began at `start` and ended at `end` (both in nanoseconds since
    /// the epoch); true if it was contended.
    fn note_yield(&self, start: u64, end: u64) -> bool {
        let contended = end.saturating_sub(start) >= nanos(CONTENDED_YIELD);
        if contended {
            // Relaxed: a hint read by spin-waits, pairing with nothing; a lost race
            // between two threads only moves the deadline by one yield.
            self.until
                .store(end.saturating_add(nanos(BACKOFF)), Ordering::Relaxed);
        }
        contended
    }

    fn contended_at(&self, now: u64) -> bool {
        now < self.until.load(Ordering::Relaxed)
    }
}

static STATE: Contention = Contention::new();

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the process-wide epoch (the first call).
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    nanos(EPOCH.get_or_init(Instant::now).elapsed())
}

/// Yields the CPU to any thread waiting for it and times the yield; true if it was
/// contended ([`CONTENDED_YIELD`] or longer), which turns spinning off for [`BACKOFF`].
pub fn yield_cpu() -> bool {
    let start = now();
    std::thread::yield_now();
    STATE.note_yield(start, now())
}

/// True while a recent yield of this process was contended: spin-waits should sleep rather
/// than spin.
pub fn cpu_contended() -> bool {
    STATE.contended_at(now())
}

/// Marks the CPU contended as a slow yield ending now would (for tests of spin-waits).
#[cfg(test)]
pub(crate) fn mark_contended() {
    let end = now();
    STATE.note_yield(end.saturating_sub(nanos(CONTENDED_YIELD)), end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_yield_turns_spinning_off_for_the_backoff() {
        let c = Contention::new();
        let ms = |x: u64| x * 1_000_000;
        assert!(!c.contended_at(ms(1)));
        // A quick yield (nobody waiting, or a peer answering) changes nothing.
        assert!(!c.note_yield(ms(1), ms(1) + 5_000));
        assert!(!c.contended_at(ms(1)));
        // A slice-long one turns spinning off for BACKOFF from its end.
        assert!(c.note_yield(ms(10), ms(13)));
        assert!(c.contended_at(ms(13)));
        assert!(c.contended_at(ms(13) + nanos(BACKOFF) - 1));
        assert!(!c.contended_at(ms(13) + nanos(BACKOFF)));
    }

    #[test]
    fn yielding_to_a_busy_thread_on_the_same_cpu_is_contended() {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        // This thread and a busy one on one CPU: a yield hands it the CPU for a slice.
        let all = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let cpu = (0..CpuSet::count())
            .find(|&c| all.is_set(c).unwrap_or(false))
            .expect("a CPU");
        let mut one = CpuSet::new();
        one.set(cpu).expect("cpu set");
        sched_setaffinity(Pid::from_raw(0), &one).expect("pin");
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                sched_setaffinity(Pid::from_raw(0), &one).expect("pin busy thread");
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(10) {
                    std::hint::spin_loop();
                }
            })
        };
        let start = Instant::now();
        let mut seen = false;
        while !seen && start.elapsed() < Duration::from_secs(5) {
            seen = yield_cpu();
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().expect("busy thread");
        sched_setaffinity(Pid::from_raw(0), &all).expect("unpin");
        assert!(seen, "no yield in 5 s took {CONTENDED_YIELD:?}");
        assert!(cpu_contended());
    }
}
