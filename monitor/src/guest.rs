//! Starting a guest program for `arca-monitor run`: its session socket
//! inherited as fd 3 (named by `ARCA_FD`), optionally in a network namespace
//! of its own so that the monitor is its only way out.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

/// The descriptor number the guest finds its session socket at.
pub const GUEST_FD: RawFd = 3;
/// The environment variable that names it.
pub const GUEST_FD_ENV: &str = "ARCA_FD";

/// Why a guest could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Creating the session socket failed.
    #[error("cannot create the session socket")]
    Socket(#[source] io::Error),
    /// Isolation was asked for and the system refused it.
    #[error(
        "cannot isolate the guest in a network namespace \
         (needs root, or unprivileged user namespaces enabled: sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)"
    )]
    Isolate(#[source] io::Error),
    /// The program could not be executed.
    #[error("cannot start {program}")]
    Exec {
        /// The program.
        program: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `pidfd_open` failed.
    #[error("cannot watch the guest process")]
    Pidfd(#[source] io::Error),
}

impl SpawnError {
    /// The exit status `run` gives for this failure, as shells and
    /// `timeout(1)` do: 127 when the program is not found, 126 when it cannot
    /// be executed, 1 for any other failure to start it.
    pub fn exit_status(&self) -> u8 {
        match self {
            SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            SpawnError::Exec { .. } => 126,
            _ => 1,
        }
    }
}

/// A running guest and the monitor's ends of its session.
#[derive(Debug)]
pub struct SpawnedGuest {
    /// The guest process.
    pub child: Child,
    /// The monitor's end of the session socket.
    pub sock: OwnedFd,
    /// A pidfd that becomes readable when the guest exits; `None` where the
    /// kernel (or valgrind) has no `pidfd_open`, and the monitor then polls
    /// for the exit instead.
    pub pidfd: Option<OwnedFd>,
}

/// Which isolation `spawn` applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The guest shares the host's network.
    None,
    /// A new network namespace (root).
    NetNs,
    /// A new user namespace mapping the caller's ids, and a network namespace
    /// inside it (unprivileged).
    UserNetNs,
}

/// Starts `program args` with the session socket at fd 3 and `ARCA_FD=3`.
/// With `isolate`, the guest gets a network namespace of its own.
///
/// # Errors
/// [`SpawnError`] saying which step failed.
pub fn spawn(
    program: &OsString,
    args: &[OsString],
    isolate: bool,
) -> Result<(SpawnedGuest, Isolation), SpawnError> {
    spawn_as(program, args, isolate, false)
}

/// As [`spawn`]; with `root_inside`, an unprivileged caller's user namespace maps its ids to
/// root (0) inside, as `unshare -r` does, so that the guest keeps its capabilities in the
/// namespace across `exec` (the guest-side network stack needs `CAP_NET_ADMIN` there to make
/// its TUN device). Without it, ids map to themselves and an unprivileged guest has no
/// capabilities after `exec`.
///
/// # Errors
/// [`SpawnError`] saying which step failed.
pub fn spawn_as(
    program: &OsString,
    args: &[OsString],
    isolate: bool,
    root_inside: bool,
) -> Result<(SpawnedGuest, Isolation), SpawnError> {
    let (mon, guest) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SpawnError::Socket(e.into()))?;

    let isolation = if !isolate {
        Isolation::None
    } else if nix::unistd::geteuid().is_root() {
        Isolation::NetNs
    } else {
        Isolation::UserNetNs
    };
    // Everything the child writes is formatted before the fork: between fork
    // and exec only async-signal-safe calls are made.
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let (inner_uid, inner_gid) = if root_inside {
        (0, 0)
    } else {
        (uid.as_raw(), gid.as_raw())
    };
    let uid_map = CString::new(format!("{inner_uid} {uid} 1"))
        .map_err(|e| SpawnError::Socket(io::Error::other(e)))?;
    let gid_map = CString::new(format!("{inner_gid} {gid} 1"))
        .map_err(|e| SpawnError::Socket(io::Error::other(e)))?;

    let mut cmd = Command::new(program);
    cmd.args(args).env(GUEST_FD_ENV, GUEST_FD.to_string());
    crate::sys::prepare_guest(
        &mut cmd,
        crate::sys::GuestSetup {
            session: guest.as_raw_fd(),
            isolation,
            uid_map,
            gid_map,
        },
    );
    let child = cmd.spawn().map_err(|e| {
        if e.get_ref().is_some_and(|inner| inner.is::<IsolateFailed>())
            || is_isolation_errno(&e, isolation)
        {
            SpawnError::Isolate(e)
        } else {
            SpawnError::Exec {
                program: program.to_string_lossy().into_owned(),
                source: e,
            }
        }
    })?;
    drop(guest);
    let pidfd = match crate::sys::pidfd_open(child.id()) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            tracing::info!("pidfd_open is not available; polling for the guest's exit");
            None
        }
        Err(e) => return Err(SpawnError::Pidfd(e)),
    };
    Ok((
        SpawnedGuest {
            child,
            sock: mon,
            pidfd,
        },
        isolation,
    ))
}

/// std reports a pre-exec error by its errno only, so the payload above may
/// not survive; an EPERM/EINVAL/ENOSPC when isolating is the namespace step.
fn is_isolation_errno(e: &io::Error, isolation: Isolation) -> bool {
    isolation != Isolation::None
        && matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS)
        )
}

/// A namespace step that failed in the child, with its errno.
#[derive(Debug)]
pub(crate) struct IsolateFailed(pub(crate) i32);

impl std::fmt::Display for IsolateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unshare failed: {}",
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl std::error::Error for IsolateFailed {}
