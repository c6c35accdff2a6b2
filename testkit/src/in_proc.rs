//! Shared helpers for the end-to-end TCP tests: an in-process monitor serving a Unix socket,
//! and guests attached to it from the same process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::{Config, Monitor, MonitorHandle, SessionStats};

/// Upper bound for any single blocking step in a test.
pub const STEP: Duration = Duration::from_secs(20);

/// A monitor running on its own thread, stopped on drop.
pub struct TestMonitor {
    pub path: PathBuf,
    pub handle: MonitorHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestMonitor {
    /// Starts a monitor with the default configuration on a fresh socket path.
    pub fn start() -> TestMonitor {
        TestMonitor::with_config(Config::default())
    }

    /// Starts a monitor with `config`.
    pub fn with_config(config: Config) -> TestMonitor {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "arca-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut m = Monitor::new(config).expect("monitor");
        m.listen_unix(&path).expect("listen_unix");
        let handle = m.handle();
        let thread = std::thread::spawn(move || m.run());
        TestMonitor {
            path,
            handle,
            thread: Some(thread),
        }
    }

    /// A new guest session attached to this monitor.
    pub fn session(&self) -> ArcaSession {
        ArcaSession::attach(&self.path).expect("attach")
    }

    /// Stops the monitor and waits for its thread.
    pub fn stop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Every live session's figures.
    pub fn sessions(&self) -> Vec<SessionStats> {
        self.handle
            .stats()
            .expect("stats")
            .sessions
            .into_iter()
            .map(|(_, s)| s)
            .collect()
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
}

impl Drop for TestMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deterministic pseudo-random bytes, `len` long, from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    crate::pattern::random_bytes(seed, len)
}

/// A host `std::net` echo server on 127.0.0.1:0 (echo until EOF, then shut
/// down writing). Returns its address.
pub fn echo_server() -> std::net::SocketAddr {
    crate::servers::echo_server().expect("bind echo server")
}
