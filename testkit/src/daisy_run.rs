//! Driving real `daisy-send`, `daisy-recv` and `arca-monitor` processes from the end-to-end
//! tests (`tests/daisy.rs`, and `tests/examples.rs` for the examples) and the Daisy benchmark
//! (`benches/daisy.rs`).
//!
//! - [`Bins`]: the binaries next to the running test or bench executable, built with `$CARGO`
//!   ([`cargo_build`]) when missing.
//! - [`Proc`]: a child in a process group of its own that dies with the process that started
//!   it; dropping it kills the whole group (so a guest under `arca-monitor run` goes too) and
//!   reaps it. Every wait takes a deadline.
//! - [`Summary`]: the `daisy-send: summary k=v …` / `daisy-recv: summary k=v …` line.
//! - [`tcp_sockets`] / [`udp_bound`]: `/proc/<pid>/net` look-ups, to know when a server
//!   listens (also inside another network namespace) without connecting to it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The three binaries the Daisy tests and benchmark run.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `daisy-send`.
    pub send: PathBuf,
    /// `daisy-recv`.
    pub recv: PathBuf,
    /// `arca-monitor`.
    pub monitor: PathBuf,
}

/// Cargo's output directory for the running executable's profile (`target/release` for
/// `target/release/deps/daisy-…`).
///
/// # Errors
/// The executable's path has no such parent.
pub fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

impl Bins {
    /// The binaries in `dir`, whether or not they exist.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            send: dir.join("daisy-send"),
            recv: dir.join("daisy-recv"),
            monitor: dir.join("arca-monitor"),
        }
    }

    /// Whether all three exist.
    pub fn exist(&self) -> bool {
        [&self.send, &self.recv, &self.monitor]
            .iter()
            .all(|p| p.is_file())
    }

    /// The binaries next to the running executable; when one is missing, builds them with
    /// `$CARGO build [--release] -p daisy -p arca-monitor --bins` into the same target
    /// directory and profile (bounded to `limit`).
    ///
    /// # Errors
    /// The build failed, timed out, or did not produce them.
    pub fn locate_or_build(limit: Duration) -> Result<Bins, String> {
        let dir = profile_dir()?;
        let bins = Bins::in_dir(&dir);
        if bins.exist() {
            return Ok(bins);
        }
        eprintln!("daisy binaries missing in {}: building them", dir.display());
        cargo_build(
            &dir,
            &["-p", "daisy", "-p", "arca-monitor", "--bins"],
            limit,
        )?;
        if bins.exist() {
            Ok(bins)
        } else {
            Err(format!(
                "cargo build succeeded but {} lacks daisy-send, daisy-recv or arca-monitor",
                dir.display()
            ))
        }
    }
}

/// Runs `$CARGO build --quiet ARGS` into the target directory and profile of `dir` (a
/// [`profile_dir`]), bounded to `limit`.
///
/// # Errors
/// The build failed or timed out, or `dir` does not name a profile directory.
pub fn cargo_build(dir: &Path, args: &[&str], limit: Duration) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = dir
        .parent()
        .ok_or_else(|| format!("{} has no target directory", dir.display()))?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(target);
    match dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Err(format!("cannot tell the profile of {}", dir.display())),
    }
    let mut build = Proc::spawn("cargo build", &mut cmd)?;
    let status = build.wait(Instant::now() + limit)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build {} failed: {status}", args.join(" ")))
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

/// The fields of a Daisy summary line: `<role>: summary k=v k=v …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    role: String,
    fields: BTreeMap<String, String>,
}

impl Summary {
    /// The last summary line of `role` (`daisy-send`, `daisy-recv`) in `text`.
    ///
    /// # Errors
    /// No such line, or a field that is not `key=value`.
    pub fn parse(role: &str, text: &str) -> Result<Summary, String> {
        let tag = format!("{role}: summary ");
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.find(&tag).map(|at| &l[at + tag.len()..]))
            .ok_or_else(|| format!("no `{tag}` line in:\n{text}"))?;
        let mut fields = BTreeMap::new();
        for kv in line.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("summary field `{kv}` is not key=value in `{line}`"))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        Ok(Summary {
            role: role.to_owned(),
            fields,
        })
    }

    /// A field as text.
    ///
    /// # Errors
    /// The field is missing.
    pub fn text(&self, key: &str) -> Result<&str, String> {
        self.fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("{} summary has no `{key}`: {:?}", self.role, self.fields))
    }

    /// A field as an integer.
    ///
    /// # Errors
    /// Missing or not an integer.
    pub fn u64(&self, key: &str) -> Result<u64, String> {
        let v = self.text(key)?;
        v.parse()
            .map_err(|e| format!("{} summary `{key}={v}`: {e}", self.role))
    }

    /// A field as a number.
    ///
    /// # Errors
    /// Missing or not a number.
    pub fn f64(&self, key: &str) -> Result<f64, String> {
        let v = self.text(key)?;
        v.parse()
            .map_err(|e| format!("{} summary `{key}={v}`: {e}", self.role))
    }
}

/// A TCP socket from `/proc/<pid>/net/tcp{,6}`: local port, remote port, state
/// (`0x0A` listen, `0x01` established).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// Local port.
    pub local_port: u16,
    /// Remote port.
    pub remote_port: u16,
    /// Kernel state number.
    pub state: u8,
}

/// Kernel TCP state: listening.
pub const TCP_LISTEN: u8 = 0x0A;
/// Kernel TCP state: established.
pub const TCP_ESTABLISHED: u8 = 0x01;

fn port_of(addr: &str) -> Option<u16> {
    u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok()
}

/// The TCP sockets of the network namespace `pid` lives in (`None`: this process's).
pub fn tcp_sockets(pid: Option<u32>) -> Vec<TcpEntry> {
    let base = match pid {
        Some(p) => format!("/proc/{p}/net"),
        None => "/proc/self/net".to_owned(),
    };
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("{base}/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(l), Some(r), Some(st)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            if let (Some(local_port), Some(remote_port), Ok(state)) =
                (port_of(l), port_of(r), u8::from_str_radix(st, 16))
            {
                out.push(TcpEntry {
                    local_port,
                    remote_port,
                    state,
                });
            }
        }
    }
    out
}

/// Whether something in `pid`'s network namespace listens on TCP `port`.
pub fn tcp_listening(pid: Option<u32>, port: u16) -> bool {
    tcp_sockets(pid)
        .iter()
        .any(|e| e.local_port == port && e.state == TCP_LISTEN)
}

/// Whether a UDP socket in `pid`'s network namespace is bound to `port`.
pub fn udp_bound(pid: Option<u32>, port: u16) -> bool {
    let base = match pid {
        Some(p) => format!("/proc/{p}/net"),
        None => "/proc/self/net".to_owned(),
    };
    ["udp", "udp6"].iter().any(|file| {
        std::fs::read_to_string(format!("{base}/{file}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                line.split_whitespace()
                    .nth(1)
                    .and_then(port_of)
                    .is_some_and(|p| p == port)
            })
        })
    })
}

/// Polls `cond` every 2 ms until it holds or `deadline` passes.
///
/// # Errors
/// `deadline` passed; the message names `what`.
pub fn wait_for(
    what: &str,
    deadline: Instant,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_parses_the_last_line() {
        let text = "progress\n\
            daisy-recv: summary bytes=1 packets=1 sha256=aa\n\
            noise\n\
            daisy-recv: summary bytes=4380 packets=3 repaired=0 duplicates=2 rejected=7 \
            seconds=0.5 mbps=8.76 sha256=abcd\n";
        let s = Summary::parse("daisy-recv", text).unwrap();
        assert_eq!(s.u64("bytes").unwrap(), 4380);
        assert_eq!(s.u64("rejected").unwrap(), 7);
        assert!((s.f64("mbps").unwrap() - 8.76).abs() < 1e-9);
        assert_eq!(s.text("sha256").unwrap(), "abcd");
        assert!(s.u64("nope").is_err());
        assert!(s.u64("sha256").is_err());
        assert!(Summary::parse("daisy-send", text).is_err());
        assert!(Summary::parse("daisy-recv", "daisy-recv: summary bytes").is_err());
    }

    #[test]
    fn proc_net_sees_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening(None, port));
        let pid = std::process::id();
        assert!(tcp_listening(Some(pid), port));
        drop(l);
        assert!(!tcp_listening(None, port));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(udp_bound(None, u.local_addr().unwrap().port()));
    }

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
