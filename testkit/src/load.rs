//! A standard CPU load for benchmarks under contention: one busy-loop process per CPU
//! (`sh -c 'while :; do :; done'`), each a [`Proc`], so it dies with the thread that started
//! it and is killed and reaped when the [`BusyLoad`] drops.

use std::process::Command;

use crate::child::Proc;

/// Busy-loop processes, killed when this drops.
#[derive(Debug)]
pub struct BusyLoad {
    procs: Vec<Proc>,
}

impl BusyLoad {
    /// Starts `n` busy-loop processes, left to the scheduler (not pinned), so they compete
    /// for every CPU the way other users' work does.
    ///
    /// # Errors
    /// A process could not be spawned (those already started are killed).
    pub fn start(n: usize) -> Result<Self, String> {
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "while :; do :; done"]);
            procs.push(Proc::spawn(&format!("busy loop {i}"), &mut cmd)?);
        }
        Ok(Self { procs })
    }

    /// One busy-loop process per CPU this process may run on.
    ///
    /// # Errors
    /// As [`BusyLoad::start`].
    pub fn per_cpu() -> Result<Self, String> {
        Self::start(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// The busy loops' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::procfs::cpu_time;

    #[test]
    fn the_load_burns_cpu_and_ends_when_dropped() {
        let load = BusyLoad::start(1).expect("start");
        let pids = load.pids();
        assert_eq!(pids.len(), 1);
        let pid = pids[0];
        let start = Instant::now();
        let mut used = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(10) && used < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(20));
            used = cpu_time(pid).expect("the busy loop is running");
        }
        assert!(
            used >= Duration::from_millis(100),
            "busy loop used {used:?}"
        );
        drop(load);
        assert!(cpu_time(pid).is_none(), "pid {pid} is still there");
    }
}
