//! `arca-monitor serve` as a child process, with its figures from `/proc`; the Unix socket
//! paths monitors serve on; whether `arca-monitor run --isolate` can work here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::bins::monitor_bin;
use crate::child::{wait_exit, Reaped};
use crate::procfs::{fd_count, rss, Rss};
use crate::wait::wait_until;

/// A fresh Unix socket path for a monitor.
pub fn socket_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "arca-{name}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Waits until `path` exists (a monitor renames its socket into place once it listens);
/// fails the test as soon as `child`, the monitor, exits without creating it, or when `limit`
/// passes.
pub fn wait_for_socket(path: &Path, child: &mut Child, limit: Duration) {
    let mut exited = None;
    wait_until(limit, || {
        exited = child.try_wait().expect("try_wait");
        path.exists() || exited.is_some()
    });
    if !path.exists() {
        match exited {
            Some(st) => panic!("monitor exited ({st}) without creating {}", path.display()),
            None => panic!("monitor never created {} within {limit:?}", path.display()),
        }
    }
}

/// `arca-monitor serve` as a child process.
pub struct MonitorProc {
    pub child: Reaped,
    pub path: PathBuf,
}

impl MonitorProc {
    /// Starts `arca-monitor serve` with `extra` arguments (sizes) and waits
    /// until its socket exists.
    pub fn serve(name: &str, extra: &[&str]) -> MonitorProc {
        let path = socket_path(name);
        let child = Command::new(monitor_bin())
            .arg("serve")
            .arg("--socket")
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn arca-monitor");
        let mut m = MonitorProc {
            child: Reaped(child),
            path,
        };
        wait_for_socket(&m.path, &mut m.child.0, Duration::from_secs(20));
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The monitor's resident memory.
    pub fn rss(&self) -> Rss {
        rss(self.pid()).expect("monitor is gone")
    }

    /// The monitor's open descriptors.
    pub fn fds(&self) -> usize {
        fd_count(&self.pid().to_string())
    }

    /// Asks it to stop (SIGTERM) and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let st = wait_exit(&mut self.child.0, Duration::from_secs(10));
        let _ = std::fs::remove_file(&self.path);
        st
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `arca-monitor run --isolate` can work here: root, or unprivileged user namespaces
/// allowed (checked with `unshare -rn true`, as the monitor's own tests do).
///
/// # Errors
/// Why it cannot.
pub fn isolation_available() -> Result<(), String> {
    let root = nix::unistd::geteuid().is_root();
    let unshare_ok = Command::new("unshare")
        .args(["-rn", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root || unshare_ok {
        Ok(())
    } else {
        Err("not root and this system forbids unprivileged network namespaces".into())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn waiting_for_a_socket_ends_when_the_path_appears() {
        let path = socket_path("kit-appears");
        let script = format!("sleep 0.2; : > '{}'; exec sleep 30", path.display());
        let mut child = Reaped(Command::new("sh").args(["-c", &script]).spawn().unwrap());
        wait_for_socket(&path, &mut child.0, Duration::from_secs(20));
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_monitor_that_exits_without_its_socket_fails_the_wait_at_once() {
        let mut child = Reaped(Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap());
        let path = socket_path("kit-never");
        let start = Instant::now();
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for_socket(&path, &mut child.0, Duration::from_secs(60));
        }))
        .expect_err("the wait fails");
        let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("exited (exit status: 3)"), "{msg}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }
}
