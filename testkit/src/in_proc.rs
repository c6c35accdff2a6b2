//! A monitor running on a thread of the test process, serving a Unix socket, with guests
//! attached to it from the same process; its figures come from [`MonitorHandle::stats`].

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::{Config, Monitor, MonitorHandle, MonitorStats, SessionStats};

use crate::monitor_proc::socket_path;

/// A monitor running on its own thread, stopped on drop.
pub struct InProcMonitor {
    pub path: PathBuf,
    pub handle: MonitorHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcMonitor {
    /// Starts a monitor with `config` on a fresh socket path named after `name`, and waits
    /// until its loop answers.
    pub fn start(name: &str, config: Config) -> InProcMonitor {
        let path = socket_path(name);
        let mut m = Monitor::new(config).expect("monitor");
        m.listen_unix(&path).expect("listen_unix");
        let handle = m.handle();
        let thread = std::thread::spawn(move || m.run());
        // Answered by the loop itself: it is running.
        handle.stats().expect("monitor loop answers");
        InProcMonitor {
            path,
            handle,
            thread: Some(thread),
        }
    }

    /// A new guest session attached to this monitor.
    pub fn session(&self) -> ArcaSession {
        ArcaSession::attach(&self.path).expect("attach")
    }

    /// The monitor's figures.
    pub fn stats(&self) -> MonitorStats {
        self.handle.stats().expect("monitor stats")
    }

    /// Every live session's figures.
    pub fn sessions(&self) -> Vec<SessionStats> {
        self.stats().sessions.into_iter().map(|(_, s)| s).collect()
    }

    /// Polls `cond` on the stats until it holds or `timeout` passes; returns the last stats.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        cond: impl Fn(&[SessionStats]) -> bool,
    ) -> (bool, Vec<SessionStats>) {
        let end = Instant::now() + timeout;
        loop {
            let s = self.sessions();
            if cond(&s) {
                return (true, s);
            }
            if Instant::now() >= end {
                return (false, s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the monitor and waits for its thread.
    pub fn stop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for InProcMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}
