//! The CPUs this process may run on, and pinning a thread to one of them.

use std::io;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the calling thread may use (its affinity mask), in order.
///
/// # Errors
/// `sched_getaffinity`'s error.
pub fn allowed() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// How many CPUs the process may use (at least 1).
pub fn available() -> usize {
    allowed().map_or(1, |cpus| cpus.len().max(1))
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// `cpu` out of the set's range, or `sched_setaffinity`'s error.
pub fn pin_current(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Pins the calling thread, worker `index`, to the `index`-th allowed CPU
/// (round robin when workers outnumber them). A failure is logged: the
/// worker runs unpinned.
pub fn pin_worker(index: usize, allowed: &[usize]) {
    let Some(&cpu) = allowed.get(index % allowed.len().max(1)) else {
        return;
    };
    match pin_current(cpu) {
        Ok(()) => tracing::debug!(worker = index, cpu, "worker pinned"),
        Err(e) => tracing::warn!(worker = index, cpu, error = %e, "could not pin the worker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_alone() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        assert_eq!(available(), cpus.len());
        let last = *cpus.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_worker(cpus.len() - 1, &cpus);
            allowed().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        assert!(
            pin_current(CpuSet::count()).is_err(),
            "a CPU beyond the set"
        );
    }
}
