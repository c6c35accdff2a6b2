//! Two real processes: the parent re-executes its own binary as a child in a
//! named *role*, and hands it file descriptors and parameters.
//!
//! # Handoff
//! - `ARCA_TWOPROC_ROLE=<role>` ([`ROLE_ENV`]) tells the re-executed binary
//!   to act as the child; without it the binary runs normally.
//! - Each inherited fd keeps the number it has in the parent; the child finds
//!   it in `ARCA_TWOPROC_FD_<NAME>=<number>` ([`FD_ENV_PREFIX`]). In the
//!   parent every fd stays close-on-exec (so no *other* child spawned
//!   concurrently by another thread inherits it); only in the forked child,
//!   between `fork` and `exec`, is `FD_CLOEXEC` cleared on exactly the handed
//!   fds. The child sets it again when it takes them.
//! - Parameters travel as `ARCA_TWOPROC_ARG_<NAME>=<value>` ([`ARG_ENV_PREFIX`]).
//! - The child reports results as one stdout line starting with
//!   [`REPORT_PREFIX`] (`key=value` pairs); other stdout lines (a test
//!   harness's chatter) are ignored.
//!
//! # No stray children
//! [`ChildGuard`] kills (`SIGKILL`) and reaps the child when dropped, and the
//! child is started with `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the
//! parent even if the parent is killed. Linux ties that signal to the
//! *thread* that spawned the child: spawn from a thread that outlives the
//! guard (a test's own thread, `main`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Names the child's role; its presence makes a binary act as the child.
pub const ROLE_ENV: &str = "ARCA_TWOPROC_ROLE";
/// Prefix of the variables carrying inherited fd numbers.
pub const FD_ENV_PREFIX: &str = "ARCA_TWOPROC_FD_";
/// Prefix of the variables carrying parameters.
pub const ARG_ENV_PREFIX: &str = "ARCA_TWOPROC_ARG_";
/// Prefix of the stdout line on which a child reports its results.
pub const REPORT_PREFIX: &str = "twoproc-report:";

/// What to run as the child: the current executable, in `role`, with fds and
/// parameters to hand over.
#[derive(Debug)]
pub struct ChildCommand {
    role: String,
    args: Vec<OsString>,
    fds: Vec<(String, OwnedFd)>,
    vars: Vec<(String, String)>,
}

impl ChildCommand {
    /// A child of the current executable acting in `role`.
    pub fn new(role: &str) -> Self {
        Self {
            role: role.to_owned(),
            args: Vec::new(),
            fds: Vec::new(),
            vars: Vec::new(),
        }
    }

    /// Adds command-line arguments for the re-executed binary (for a libtest
    /// binary: the filter that selects the child entry point).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Hands `fd` to the child under `name`. The parent's copy is closed once
    /// the child is spawned (pass a `try_clone_to_owned` duplicate to keep
    /// one).
    #[must_use]
    pub fn fd(mut self, name: &str, fd: OwnedFd) -> Self {
        self.fds.push((name.to_owned(), fd));
        self
    }

    /// Passes a parameter.
    #[must_use]
    pub fn var(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.vars.push((name.to_owned(), value.to_string()));
        self
    }

    /// Starts the child. Its stdout is captured (see [`ChildOutput`]); its
    /// stderr is the parent's.
    ///
    /// # Errors
    /// Finding the current executable or spawning failed.
    pub fn spawn(self) -> io::Result<ChildGuard> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .env(ROLE_ENV, &self.role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, fd) in &self.fds {
            cmd.env(format!("{FD_ENV_PREFIX}{name}"), fd.as_raw_fd().to_string());
        }
        for (name, value) in &self.vars {
            cmd.env(format!("{ARG_ENV_PREFIX}{name}"), value);
        }
        let raw: Vec<RawFd> = self.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let hook = move || -> io::Result<()> {
            for &fd in &raw {
                // SAFETY: fcntl on an fd number is async-signal-safe; `fd` is
                // open (the parent owns it until after the spawn returns).
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only
            // affects this (child) process.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                // The parent died before the death signal was armed.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the hook runs between fork and exec and only makes
        // async-signal-safe calls (fcntl, prctl, getppid) on data captured
        // before the fork; it neither allocates nor takes locks.
        unsafe { cmd.pre_exec(hook) };
        let mut child = cmd.spawn()?;
        drop(self.fds); // close the parent's copies: the child has its own
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut s = String::new();
                out.read_to_string(&mut s).map(|_| s)
            })
        });
        Ok(ChildGuard {
            child,
            stdout,
            status: None,
        })
    }
}

/// A running child; killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    stdout: Option<JoinHandle<io::Result<String>>>,
    status: Option<ExitStatus>,
}

/// How a child ended and what it printed.
#[derive(Debug)]
pub struct ChildOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
}

impl ChildOutput {
    /// The `key=value` pairs of the child's report lines.
    pub fn report(&self) -> HashMap<String, String> {
        parse_report(&self.stdout)
    }
}

/// Collects `key=value` pairs from every line that starts with
/// [`REPORT_PREFIX`].
pub fn parse_report(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(REPORT_PREFIX))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl ChildGuard {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `SIGKILL` (no-op once reaped).
    ///
    /// # Errors
    /// The `kill` error.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.child.kill()
    }

    /// Waits up to `timeout` for the child to exit. On timeout the child is
    /// killed and reaped and `TimedOut` returned.
    ///
    /// # Errors
    /// `TimedOut`, or the `wait` error.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(100);
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.status = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let s = self.child.wait()?;
                self.status = Some(s);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("child {} still running after {timeout:?}", self.child.id()),
                ));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the child to exit and collects its stdout.
    ///
    /// # Errors
    /// As [`wait_timeout`](Self::wait_timeout); the stdout reader's error.
    pub fn finish(mut self, timeout: Duration) -> io::Result<ChildOutput> {
        let status = self.wait_timeout(timeout)?;
        let stdout = match self.stdout.take() {
            None => String::new(),
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("stdout reader panicked"))??,
        };
        Ok(ChildOutput { status, stdout })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.status = Some(s);
            }
        }
        if let Some(h) = self.stdout.take() {
            // The child is gone, so its end of the pipe is closed and the
            // reader thread finishes.
            let _ = h.join();
        }
    }
}

/// The child's view of the handoff: its role, fds and parameters.
#[derive(Debug)]
pub struct ChildEnv {
    role: String,
    fds: Mutex<HashMap<String, RawFd>>,
}

impl ChildEnv {
    /// The handoff if this process was started as a child, else `None`.
    /// Reads the environment once; every call returns the same value.
    pub fn get() -> Option<&'static ChildEnv> {
        static ENV: OnceLock<Option<ChildEnv>> = OnceLock::new();
        ENV.get_or_init(|| {
            let role = std::env::var(ROLE_ENV).ok()?;
            let fds = std::env::vars()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix(FD_ENV_PREFIX)?;
                    Some((name.to_owned(), v.parse::<RawFd>().ok()?))
                })
                .collect();
            Some(ChildEnv {
                role,
                fds: Mutex::new(fds),
            })
        })
        .as_ref()
    }

    /// The role the parent asked for.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Takes ownership of the fd handed over as `name` (once per name).
    ///
    /// # Errors
    /// `NotFound` if there is no such fd (or it was taken already), or the fd
    /// is not open.
    pub fn take_fd(&self, name: &str) -> io::Result<OwnedFd> {
        let raw = self
            .fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no inherited fd named {name}"),
                )
            })?;
        if raw < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {name}={raw}"),
            ));
        }
        // SAFETY: F_SETFD on any number is harmless; an unopened one fails
        // with EBADF, which we report.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is open (checked above) and was inherited across exec
        // for us; the map hands each name out once, and nothing else in this
        // process opened or owns that number (it was occupied since exec).
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// The parameter `name` as a string.
    ///
    /// # Errors
    /// `NotFound` if absent.
    pub fn var(&self, name: &str) -> io::Result<String> {
        std::env::var(format!("{ARG_ENV_PREFIX}{name}")).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no parameter named {name}"),
            )
        })
    }

    /// The parameter `name`, parsed.
    ///
    /// # Errors
    /// `NotFound` if absent, `InvalidInput` if it does not parse.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> io::Result<T> {
        let v = self.var(name)?;
        v.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("parameter {name}={v} does not parse"),
            )
        })
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`, which both processes share: lets a
/// child report when something happened on a clock the parent can compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Prints one report line (`key=value` pairs) on stdout and flushes it.
///
/// # Errors
/// The stdout write error.
pub fn report(pairs: &[(&str, &dyn std::fmt::Display)]) -> io::Result<()> {
    let mut line = String::from(REPORT_PREFIX);
    for (k, v) in pairs {
        line.push_str(&format!(" {k}={v}"));
    }
    line.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_parsed_and_chatter_ignored() {
        let out = "running 1 test\ntwoproc-report: a=1 b=xyz\nnoise c=3\n  twoproc-report: c=4\n";
        let r = parse_report(out);
        assert_eq!(r.len(), 3);
        assert_eq!(r["a"], "1");
        assert_eq!(r["b"], "xyz");
        assert_eq!(r["c"], "4");
    }
}
