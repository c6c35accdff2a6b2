//! The monitor confines itself once set up (SECURITY.md): what
//! it may still do, and the steps that take everything else away.
//!
//! In order, for the whole process:
//! 1. `PR_SET_NO_NEW_PRIVS`: no `execve` can grant privileges again (and
//!    unprivileged seccomp and Landlock need it).
//! 2. Landlock: no file system access except removing `serve`'s socket file
//!    at exit (nothing at all for `run`); abstract Unix sockets created
//!    outside the domain are out of reach, and for `serve` so is signalling
//!    any other process. Degrades with a warning where the kernel has no
//!    Landlock.
//! 3. Capabilities: the bounding and ambient sets emptied; with `--user`,
//!    groups, gid and uid switched; the effective and permitted sets reduced
//!    to what the policy needs (`CAP_NET_BIND_SERVICE` only when it lets
//!    guests listen below the kernel's unprivileged port start, else none).
//! 4. seccomp-BPF ([`allowlist`]), on every thread (`TSYNC`): exactly the
//!    system calls the relay makes, with argument filters on socket families
//!    and types, `ioctl` requests, `fcntl` commands, `clone` flags (threads
//!    only), `prctl` options, executable mappings and, for `run`, the one
//!    process `kill` may signal. Anything else raises SIGSYS, whose handler
//!    names the call on stderr and ends the monitor with status 159
//!    (128 + SIGSYS).
//!
//! Landlock and capabilities belong to a thread: threads started after
//! [`confine`] inherit them, threads started before get only the seccomp
//! filter and the user switch (a warning says so). Two calls get an error
//! instead of a stop ([`ANSWERED`]): `clone3` answers `ENOSYS` (its flags sit
//! in memory a filter cannot read), so thread creation falls back to `clone`,
//! whose flags are checked; `openat` answers `EACCES`, as Landlock does.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::policy::{Action, Policy};

mod syscall_names;

/// `CAP_NET_BIND_SERVICE`'s number.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// What the confined monitor still needs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// `serve`'s socket file, which the monitor removes at exit: Landlock
    /// lets it remove files beneath the socket's directory, nothing more.
    pub socket: Option<PathBuf>,
    /// `run`'s guest: the one process `kill` may signal, and the child
    /// `wait4`/`waitid` reap. `None` for `serve`, which signals nobody.
    pub guest_pid: Option<i32>,
    /// Keep `CAP_NET_BIND_SERVICE` (see [`needs_privileged_ports`]).
    pub bind_privileged_ports: bool,
    /// `serve --user`: the user to become.
    pub user: Option<User>,
}

/// A user to switch to, looked up before confinement.
#[derive(Debug, Clone)]
pub struct User {
    /// The name given.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl User {
    /// Looks `name` (or a numeric uid) up in the user database.
    ///
    /// # Errors
    /// An unknown user, or the lookup failing.
    pub fn lookup(name: &str) -> Result<Self, ConfineError> {
        let found = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(name),
        };
        match found {
            Ok(Some(u)) => Ok(Self {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(ConfineError::NoSuchUser(name.to_owned())),
            Err(e) => Err(ConfineError::User {
                name: name.to_owned(),
                source: e.into(),
            }),
        }
    }
}

/// Why the monitor could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    /// Installing the SIGSYS reporter failed.
    #[error("cannot install the SIGSYS handler")]
    Sigsys(#[source] io::Error),
    /// Landlock refused the ruleset (not merely unsupported: that degrades).
    #[error("landlock refused the ruleset")]
    Landlock(#[source] landlock::RulesetError),
    /// Opening the socket's directory for the Landlock rule failed.
    #[error("cannot open {path} for the landlock rule")]
    LandlockPath {
        /// The directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: landlock::PathFdError,
    },
    /// Dropping capabilities failed.
    #[error("cannot drop capabilities")]
    Capabilities(#[source] io::Error),
    /// `--user` names nobody.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// Switching to the `--user` failed.
    #[error("cannot switch to user {name}")]
    User {
        /// The user.
        name: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// This architecture has no allowlist.
    #[error("no seccomp allowlist for {0} (run with --no-confine)")]
    Arch(&'static str),
    /// Building the seccomp filter failed.
    #[error("cannot build the seccomp filter: {0}")]
    Filter(String),
    /// The kernel refused the seccomp filter.
    #[error("the kernel refused the seccomp filter (a container without seccomp? --no-confine runs unconfined): {0}")]
    Seccomp(String),
}

/// What [`confine`] achieved, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Landlock's state: fully enforced, partially, or not at all.
    pub landlock: LandlockState,
    /// Whether the bounding set could be emptied (needs `CAP_SETPCAP`; an
    /// unprivileged monitor has nothing there to use anyway, as
    /// no_new_privs stops `execve` from granting any of it).
    pub bounding_set_dropped: bool,
    /// The capabilities kept (a bit per number).
    pub kept_capabilities: u64,
    /// Threads that were running before confinement (1: the caller alone).
    pub threads: usize,
    /// System calls in the allowlist.
    pub allowed_calls: usize,
}

/// How much of the Landlock ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockState {
    /// Every restriction asked for.
    Full,
    /// Some (an older Landlock ABI).
    Partial,
    /// None: the kernel has no Landlock, or it is disabled.
    Unavailable,
}

/// Whether `policy` lets a guest listen on a port below `unprivileged_start`
/// (`net.ipv4.ip_unprivileged_port_start`), which needs
/// `CAP_NET_BIND_SERVICE` for a monitor that is not root. Port 0 asks the
/// kernel for an ephemeral port, which needs nothing.
pub fn needs_privileged_ports(policy: &Policy, unprivileged_start: u16) -> bool {
    policy
        .listen
        .iter()
        .filter(|r| r.action == Action::Allow)
        .flat_map(|r| r.ports.iter())
        .any(|p| p.hi >= 1 && p.lo < unprivileged_start && unprivileged_start > 1)
}

/// `net.ipv4.ip_unprivileged_port_start` (1024 where it cannot be read).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Confines the process (the module's steps, in order).
///
/// # Errors
/// [`ConfineError`] naming the step that failed. A kernel without Landlock
/// is not an error ([`Report::landlock`] says so).
pub fn confine(plan: &Plan) -> Result<Report, ConfineError> {
    let threads = thread_count();
    nix::sys::prctl::set_no_new_privs().map_err(|e| ConfineError::NoNewPrivs(e.into()))?;
    install_reporter()?;
    let landlock = restrict_files(plan)?;
    #[cfg(feature = "confine-test")]
    test_hooks::after_landlock();
    let keep = if plan.bind_privileged_ports {
        1u64 << CAP_NET_BIND_SERVICE
    } else {
        0
    };
    let bounding_set_dropped = match crate::sys::drop_bounding_set(keep) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
        Err(e) => return Err(ConfineError::Capabilities(e)),
    };
    if let Some(user) = &plan.user {
        switch_user(user, keep != 0)?;
    }
    let kept_capabilities = match crate::sys::set_capabilities(keep) {
        Ok(()) => keep,
        // Not permitted now (an unprivileged monitor): keep nothing.
        Err(e) if keep != 0 && e.raw_os_error() == Some(libc::EPERM) => {
            crate::sys::set_capabilities(0).map_err(ConfineError::Capabilities)?;
            0
        }
        Err(e) => return Err(ConfineError::Capabilities(e)),
    };
    let (filters, allowed_calls) = filters(plan)?;
    for f in &filters {
        seccompiler::apply_filter_all_threads(f)
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    }
    Ok(Report {
        landlock,
        bounding_set_dropped,
        kept_capabilities,
        threads,
        allowed_calls,
    })
}

/// Switches to `user`: no supplementary groups, its gid, then its uid (real,
/// effective and saved; glibc applies them to every thread). With
/// `keep_caps`, the permitted capabilities survive the switch so that
/// [`crate::sys::set_capabilities`] can keep the ones asked for.
///
/// # Errors
/// [`ConfineError::User`] (not privileged enough to switch, typically).
pub fn switch_user(user: &User, keep_caps: bool) -> Result<(), ConfineError> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let err = |e: nix::Error| ConfineError::User {
        name: user.name.clone(),
        source: e.into(),
    };
    if keep_caps {
        nix::sys::prctl::set_keepcaps(true).map_err(err)?;
    }
    setgroups(&[]).map_err(err)?;
    setgid(Gid::from_raw(user.gid)).map_err(err)?;
    setuid(Uid::from_raw(user.uid)).map_err(err)?;
    if keep_caps {
        nix::sys::prctl::set_keepcaps(false).map_err(err)?;
    }
    Ok(())
}

/// Threads of this process now (1 when it cannot tell).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count().max(1))
}

#[cfg(target_pointer_width = "64")]
fn install_reporter() -> Result<(), ConfineError> {
    crate::sys::install_sigsys_reporter().map_err(ConfineError::Sigsys)
}

#[cfg(not(target_pointer_width = "64"))]
fn install_reporter() -> Result<(), ConfineError> {
    Err(ConfineError::Arch(std::env::consts::ARCH))
}

/// Step 2: Landlock.
fn restrict_files(plan: &Plan) -> Result<LandlockState, ConfineError> {
    let abi = ABI::V6;
    let mut scopes: landlock::BitFlags<Scope> = Scope::AbstractUnixSocket.into();
    if plan.guest_pid.is_none() {
        scopes |= Scope::Signal;
    }
    let ll = ConfineError::Landlock;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll)?
        .scope(scopes)
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    if let Some(dir) = plan.socket.as_deref().map(socket_dir) {
        let fd = PathFd::new(&dir).map_err(|source| ConfineError::LandlockPath {
            path: dir.clone(),
            source,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))
            .map_err(ll)?;
    }
    let status = ruleset.restrict_self().map_err(ll)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockState::Full,
        RulesetStatus::PartiallyEnforced => LandlockState::Partial,
        _ => LandlockState::Unavailable,
    })
}

/// The directory holding `socket` (`.` for a bare name).
fn socket_dir(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The seccomp target for this build.
fn target_arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| ConfineError::Arch(std::env::consts::ARCH))
}

/// Calls answered with an error instead of stopping the monitor: `clone3`
/// with `ENOSYS` (glibc then falls back to `clone`, whose flags the
/// allowlist can check), and opening a file with `EACCES`, the answer
/// Landlock gives. glibc opens files of its own accord in the middle of
/// ordinary calls (malloc reads `/proc/sys/vm/overcommit_memory` the first
/// time a thread's heap shrinks, as when a worker ends) and copes with a
/// refusal; a stop there would turn a library's habit into a crash.
const ANSWERED: [(i64, i32); 2] = [
    (libc::SYS_clone3, libc::ENOSYS),
    (libc::SYS_openat, libc::EACCES),
];

/// Step 4's programs: one per [`ANSWERED`] call, then the allowlist (which
/// lets the answered calls through to their answer); and how many calls the
/// allowlist holds. Where filters disagree the kernel takes the strictest
/// action, so an answered call gets its error and anything else not allowed
/// traps.
fn filters(plan: &Plan) -> Result<(Vec<BpfProgram>, usize), ConfineError> {
    let arch = target_arch()?;
    let built = |f: Result<SeccompFilter, seccompiler::BackendError>| {
        f.and_then(BpfProgram::try_from)
            .map_err(|e| ConfineError::Filter(e.to_string()))
    };
    let mut rules = allowlist(plan).map_err(|e| ConfineError::Filter(e.to_string()))?;
    let count = rules.len();
    let mut programs = Vec::new();
    for (nr, errno) in ANSWERED {
        rules.entry(nr).or_default();
        programs.push(built(SeccompFilter::new(
            BTreeMap::from([(nr, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(errno.unsigned_abs()),
            arch,
        ))?);
    }
    programs.push(built(SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    ))?);
    Ok((programs, count))
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn arg(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// One rule per value: argument `index` equal to any of `values`.
fn any_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![arg(index, SeccompCmpOp::Eq, v)?]))
        .collect()
}

fn unsigned(v: libc::c_int) -> u64 {
    u64::from(v.unsigned_abs())
}

/// The system calls the confined monitor makes, each with the arguments it
/// passes where they are cheap to check (SECURITY.md says why
/// each is there). An empty rule list allows the call outright; the kernel's
/// seccomp cache (Linux 5.11+) then skips the filter for it altogether, which
/// is what keeps the relay's hot calls free.
pub fn allowlist(plan: &Plan) -> Result<Rules, seccompiler::BackendError> {
    let mut rules = Rules::new();
    let plain: &[i64] = &[
        // The relay and the control pipe.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvmmsg,
        libc::SYS_sendmmsg,
        libc::SYS_close,
        libc::SYS_shutdown,
        // The event loop and its wake-ups.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_restart_syscall,
        // Guest sockets (created by `socket`, filtered below).
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        // Each session's sealed region.
        libc::SYS_memfd_create,
        libc::SYS_ftruncate,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        // Memory.
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        // Threads and signals.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Removing `serve`'s socket file at exit (Landlock limits where).
        libc::SYS_unlinkat,
    ];
    for &nr in plain {
        rules.insert(nr, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_epoll_wait, libc::SYS_unlink, libc::SYS_poll] {
        rules.insert(nr, Vec::new());
    }

    // TCP and UDP over IPv4 and IPv6, nothing else (no AF_UNIX, AF_NETLINK,
    // AF_PACKET, raw sockets): the type is masked of SOCK_NONBLOCK and
    // SOCK_CLOEXEC.
    const SOCK_TYPE_MASK: u64 = 0xf;
    let mut socket = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            socket.push(SeccompRule::new(vec![
                arg(0, SeccompCmpOp::Eq, unsigned(family))?,
                arg(1, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), unsigned(ty))?,
            ])?);
        }
    }
    rules.insert(libc::SYS_socket, socket);

    // `--pin`: a worker pins the thread it runs on (pid 0, itself) as it
    // starts, after confinement; no other thread's or process's affinity.
    rules.insert(
        libc::SYS_sched_setaffinity,
        vec![SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, 0)?])?],
    );

    let ioctls = [libc::FIONBIO, libc::FIONREAD, libc::TIOCOUTQ, libc::FIOCLEX];
    rules.insert(
        libc::SYS_ioctl,
        // `libc::Ioctl` is `c_ulong` on glibc (the cast is a no-op) and
        // `c_int` on musl; the kernel compares the low 32 bits either way.
        #[allow(clippy::unnecessary_cast)]
        any_of(1, &ioctls.map(|r| r as u64))?,
    );
    let fcntls = [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_SETFL,
        libc::F_DUPFD_CLOEXEC,
        libc::F_ADD_SEALS,
        libc::F_GET_SEALS,
    ];
    rules.insert(libc::SYS_fcntl, any_of(1, &fcntls.map(unsigned))?);

    // No new executable memory.
    let prot_exec = unsigned(libc::PROT_EXEC);
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        rules.insert(
            nr,
            vec![SeccompRule::new(vec![arg(
                2,
                SeccompCmpOp::MaskedEq(prot_exec),
                0,
            )?])?],
        );
    }

    // Threads, never processes: `clone` must carry CLONE_THREAD.
    let thread = unsigned(libc::CLONE_THREAD);
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![arg(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // glibc installs its internal handlers for the first signals past the
    // kernel's 31 (cancellation, set*id broadcast) when it starts the first
    // thread; no other handler changes once confined.
    rules.insert(libc::SYS_rt_sigaction, any_of(0, &[32, 33])?);
    // Naming a thread (std does, for named threads).
    rules.insert(libc::SYS_prctl, any_of(0, &[unsigned(libc::PR_SET_NAME)])?);

    // `run`: signal the guest (and only it), reap it.
    if let Some(pid) = plan.guest_pid {
        let pid = u64::from(pid.unsigned_abs());
        rules.insert(libc::SYS_kill, any_of(0, &[pid])?);
        rules.insert(libc::SYS_wait4, Vec::new());
        rules.insert(libc::SYS_waitid, Vec::new());
    }
    Ok(rules)
}

/// The name of system call `nr` on this architecture, where known. Called
/// from the SIGSYS handler: no allocation, no lock.
pub fn syscall_name(nr: i32) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        usize::try_from(nr)
            .ok()
            .and_then(|i| syscall_names::X86_64.get(i))
            .copied()
            .filter(|n| !n.is_empty())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        None
    }
}

/// A line built on the stack, for the SIGSYS handler (which must not
/// allocate). Bytes past its capacity are dropped.
pub(crate) struct ReportLine {
    buf: [u8; 256],
    len: usize,
}

impl ReportLine {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    pub(crate) fn push_number(&mut self, n: i32) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + u8::try_from(v % 10).unwrap_or(0);
            }
            v /= 10;
            if v == 0 || i == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or(&[]));
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// The `confine-test` build's forbidden attempts, chosen by
/// `ARCA_CONFINE_TEST` (tests/confine.rs). Each reports on stderr as
/// `confine-test: WHAT: RESULT`; one the seccomp filter stops never returns.
#[cfg(feature = "confine-test")]
pub mod test_hooks {
    use std::io::Read as _;

    /// The variable naming the attempt.
    pub const VAR: &str = "ARCA_CONFINE_TEST";

    fn chosen() -> Option<String> {
        std::env::var(VAR).ok()
    }

    /// Between Landlock and seccomp: `landlock-read:PATH` reads PATH, which
    /// Landlock alone must refuse.
    pub fn after_landlock() {
        let Some(what) = chosen() else { return };
        if let Some(path) = what.strip_prefix("landlock-read:") {
            let result = std::fs::File::open(path).and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).map(|_| s.len())
            });
            match result {
                Ok(n) => eprintln!("confine-test: landlock-read: read {n} bytes"),
                Err(e) => eprintln!("confine-test: landlock-read: {:?}", e.kind()),
            }
        }
    }

    /// Once confined: the attempt `ARCA_CONFINE_TEST` names.
    pub fn after_confine() {
        let Some(what) = chosen() else { return };
        let report = |r: std::io::Result<()>| match r {
            Ok(()) => eprintln!("confine-test: {what}: ok"),
            Err(e) => eprintln!("confine-test: {what}: {e}"),
        };
        match what.as_str() {
            "open" => report(std::fs::File::open("/etc/hostname").map(drop)),
            "execve" => report(
                nix::unistd::execv(c"/bin/true", &[c"true"])
                    .map(drop)
                    .map_err(Into::into),
            ),
            "fork" => report(std::process::Command::new("/bin/true").status().map(drop)),
            "ptrace" => report(crate::sys::ptrace_traceme()),
            "socket-packet" | "socket-netlink" | "socket-unix" => {
                let family = match what.as_str() {
                    "socket-packet" => socket2::Domain::PACKET,
                    "socket-netlink" => socket2::Domain::from(libc::AF_NETLINK),
                    _ => socket2::Domain::UNIX,
                };
                report(socket2::Socket::new(family, socket2::Type::DGRAM, None).map(drop));
            }
            "tokio" => {
                // A thread started after confinement running a current-thread
                // runtime (as the resolver does) over UDP and TCP.
                let spawned = std::thread::Builder::new()
                    .name("confine-test".into())
                    .spawn(|| {
                        let r = tokio_round_trip();
                        match r {
                            Ok(()) => eprintln!("confine-test: tokio: ok"),
                            Err(e) => eprintln!("confine-test: tokio: {e}"),
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("confine-test: tokio: cannot start a thread: {e}");
                }
            }
            _ => {}
        }
    }

    fn tokio_round_trip() -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let work = async {
                let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                let b = tokio::net::UdpSocket::bind("[::1]:0").await.ok();
                a.send_to(b"ping", a.local_addr()?).await?;
                let mut buf = [0u8; 8];
                let (n, _) = a.recv_from(&mut buf).await?;
                if buf.get(..n) != Some(&b"ping"[..]) {
                    return Err(std::io::Error::other("udp payload differs"));
                }
                drop(b);
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let mut c = tokio::net::TcpStream::connect(l.local_addr()?).await?;
                let (mut s, _) = l.accept().await?;
                c.write_all(b"pong").await?;
                let mut got = [0u8; 4];
                s.read_exact(&mut got).await?;
                if &got != b"pong" {
                    return Err(std::io::Error::other("tcp payload differs"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(())
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), work)
                .await
                .map_err(|_| std::io::Error::other("timed out"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AddrRule, PortRange, Proto};

    fn listen_on(ports: Vec<PortRange>, action: Action) -> Policy {
        Policy {
            listen: vec![AddrRule {
                action,
                nets: vec!["127.0.0.0/8".parse().unwrap()],
                names: Vec::new(),
                ports,
                proto: Proto::Any,
            }],
            ..Policy::default()
        }
    }

    #[test]
    fn a_capability_is_kept_only_for_allowed_privileged_ports() {
        assert!(!needs_privileged_ports(&Policy::default(), 1024));
        let http = listen_on(vec![PortRange { lo: 80, hi: 80 }], Action::Allow);
        assert!(needs_privileged_ports(&http, 1024));
        // The kernel lets anyone bind 80 when its unprivileged start is lower.
        assert!(!needs_privileged_ports(&http, 80));
        let denied = listen_on(vec![PortRange { lo: 80, hi: 80 }], Action::Deny);
        assert!(!needs_privileged_ports(&denied, 1024));
        let ephemeral = listen_on(vec![PortRange { lo: 0, hi: 0 }], Action::Allow);
        assert!(!needs_privileged_ports(&ephemeral, 1024));
        let all = listen_on(vec![PortRange::ANY], Action::Allow);
        assert!(needs_privileged_ports(&all, 1024));
    }

    #[test]
    fn the_allowlist_filters_sockets_and_signals_only_runs_guest() {
        let serve = allowlist(&Plan::default()).unwrap();
        for nr in [
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_socketpair,
            libc::SYS_ptrace,
        ] {
            assert!(
                !serve.contains_key(&nr),
                "{:?} allowed",
                syscall_name(i32::try_from(nr).unwrap_or(-1))
            );
        }
        assert!(!serve.contains_key(&libc::SYS_kill), "serve signals nobody");
        assert_eq!(serve.get(&libc::SYS_socket).map(Vec::len), Some(4));
        assert_eq!(serve.get(&libc::SYS_read).map(Vec::len), Some(0));
        let run = allowlist(&Plan {
            guest_pid: Some(4242),
            ..Plan::default()
        })
        .unwrap();
        assert_eq!(run.get(&libc::SYS_kill).map(Vec::len), Some(1));
        assert!(run.contains_key(&libc::SYS_wait4));
        assert!(filters(&Plan::default()).is_ok());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn syscalls_are_named_by_number() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(257), Some("openat"));
        assert_eq!(syscall_name(59), Some("execve"));
        assert_eq!(syscall_name(-1), None);
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn the_report_line_formats_numbers_and_stops_at_its_capacity() {
        let mut l = ReportLine::new();
        l.push(b"n=");
        l.push_number(0);
        l.push(b",");
        l.push_number(-257);
        l.push(b",");
        l.push_number(i32::MAX);
        assert_eq!(l.as_bytes(), b"n=0,-257,2147483647");
        for _ in 0..100 {
            l.push(b"xxxx");
        }
        assert_eq!(l.as_bytes().len(), 256);
    }
}
