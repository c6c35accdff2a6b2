//! Child processes of a test, each killed and reaped when its guard drops, and every wait on
//! them bounded.
//!
//! - [`Reaped`]: a plain child, killed and reaped on drop.
//! - [`Proc`]: a child in a process group of its own that dies with the thread that started
//!   it; dropping it kills the whole group (so a guest under `arca-monitor run` goes too) and
//!   reaps it.
//! - [`guest_command`]: the running test binary re-executed as a guest in a role
//!   ([`ROLE`]), running only its `guest_entry` test; [`read_marker`] and
//!   [`collect_stdout`] read what it prints.

use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable naming the guest role of a re-executed test binary.
pub const ROLE: &str = "ARCA_TEST_ROLE";

/// The libtest arguments that make a re-executed test binary run its `guest_entry` test
/// (ignored in a normal run) and nothing else, with its output uncaptured.
pub const GUEST_ARGS: [&str; 6] = [
    "--exact",
    "guest_entry",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// Kills and reaps a child on drop, so no test leaves processes behind.
pub struct Reaped(pub Child);

impl Reaped {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, failing the test after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit within {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// This test binary re-executed as a guest in `role`, with its stdout piped.
pub fn guest_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(GUEST_ARGS)
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// Reads the child's stdout until a line starting with `prefix` (libtest
/// prints its own lines first) and returns the rest of that line; `None` if
/// the child ends first or `limit` passes. The rest of the output is drained
/// in the background so the child never blocks on a full pipe.
pub fn read_marker(child: &mut Child, prefix: &str, limit: Duration) -> Option<String> {
    use std::io::BufRead;
    let out = child.stdout.take()?;
    let prefix = prefix.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out).lines().map_while(Result::ok);
        let found = lines
            .by_ref()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned));
        let _ = tx.send(found);
        for _ in lines {}
    });
    rx.recv_timeout(limit).ok().flatten()
}

/// Collects the child's whole stdout on a thread.
pub fn collect_stdout(child: &mut Child) -> JoinHandle<String> {
    let mut out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    })
}

/// A child process in its own process group, killed with `SIGKILL` if the starting thread
/// dies (`PR_SET_PDEATHSIG`), and killed (whole group) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` as `name` (used in error messages).
    ///
    /// # Errors
    /// Spawning failed.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        cmd.process_group(0);
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and the
        // closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, String> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| format!("waiting for {}: {e}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits for it to exit, polling, until `deadline`.
    ///
    /// # Errors
    /// It is still running at `deadline` (it is left running: drop kills it).
    pub fn wait(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} (pid {}) did not exit in time",
                    self.name,
                    self.id()
                ));
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
        }
    }

    /// Sends `signal` to the process alone.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped
                // child, so it cannot have been recycled.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Kills the whole process group with `SIGKILL` and reaps the child (bounded to 5 s).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: as in `signal`; the group id is the unreaped child's pid, so the
                // group is still ours.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = self.wait(Instant::now() + Duration::from_secs(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Exit status as text that shows a signal (`exit 1`, `signal 9`).
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::wait::wait_for;

    #[test]
    fn proc_kills_its_group_on_drop() {
        use std::io::BufRead;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped());
        let mut p = Proc::spawn("sh", &mut cmd).unwrap();
        let mut line = String::new();
        io::BufReader::new(p.child_mut().stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleeper: u32 = line.trim().parse().unwrap();
        assert!(p.try_wait().unwrap().is_none());
        let err = p
            .wait(Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(err.contains("did not exit"), "{err}");
        let pid = p.id();
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "shell reaped");
        // The shell's `sleep` (same group) was killed too; init reaps it soon.
        let gone = wait_for(
            "sleep to die",
            Instant::now() + Duration::from_secs(5),
            || {
                std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                    .map_or(true, |s| s.contains(") Z "))
            },
        );
        assert!(gone.is_ok(), "the group's other process survived");
    }
}
