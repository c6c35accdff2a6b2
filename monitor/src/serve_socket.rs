//! The Unix socket `serve` listens on, and who may attach through it.
//!
//! - Made without harm to what is at its path: a path that is not a socket is
//!   refused, a socket another monitor answers on is refused, and only a
//!   stale socket (nobody listening) is replaced.
//! - Bound under a temporary name, given its mode, then renamed into place,
//!   so the path never names a socket that refuses connections or has the
//!   umask's mode.
//! - Owner-only (0600) unless widened ([`Access`]); each peer's credentials
//!   (`SO_PEERCRED`) are checked against the same rules when it attaches.
//! - Removed at exit only if the path still names this socket (same device
//!   and inode): a monitor never unlinks a socket another one made.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self as s, AddressFamily, SockFlag, SockType, UnixAddr};

/// Who may attach to a `serve` socket, and the socket file's mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The socket file's mode; `None` derives it from the lists (see
    /// [`Access::mode`]).
    pub mode: Option<u32>,
    /// Users besides the monitor's own (and root) who may attach.
    pub uids: Vec<u32>,
    /// Groups whose members (by primary group) may attach.
    pub gids: Vec<u32>,
}

/// A peer's credentials as `SO_PEERCRED` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl Access {
    /// The socket file's mode: the explicit one, or 0600 for the owner
    /// alone, 0660 when groups are allowed, 0666 when other users are (the
    /// credentials check then decides). Connecting needs write permission.
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(if !self.uids.is_empty() {
            0o666
        } else if !self.gids.is_empty() {
            0o660
        } else {
            0o600
        })
    }

    /// The group to give the socket file: the single allowed group, so that
    /// its members pass the file's group permission.
    pub fn group(&self) -> Option<u32> {
        match self.gids.as_slice() {
            [gid] => Some(*gid),
            _ => None,
        }
    }

    /// May `peer` attach to a monitor running as `own_uid`? Its own user and
    /// root always may; others only when listed by user or group.
    pub fn admits(&self, own_uid: u32, peer: Peer) -> bool {
        peer.uid == own_uid
            || peer.uid == 0
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
    }
}

/// Why the socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServeSocketError {
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A monitor answers on the socket at the path.
    #[error("{0}: another monitor is serving on this socket")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// The listening socket and the file that names it.
#[derive(Debug)]
pub struct ServeSocket {
    fd: OwnedFd,
    path: PathBuf,
    /// Device and inode of the socket file this process made.
    made: (u64, u64),
}

impl ServeSocket {
    /// Makes a listening `SOCK_SEQPACKET` socket at `path` (see the module's
    /// documentation for what it refuses to replace).
    ///
    /// # Errors
    /// [`ServeSocketError`] naming the path.
    pub fn bind(path: &Path, access: &Access) -> Result<Self, ServeSocketError> {
        let io_err = |source: io::Error| ServeSocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        let nix_err = |e: nix::Error| io_err(io::Error::from(e));
        clear_stale(path)?;
        let fd = s::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(nix_err)?;
        let tmp = temporary_name(path);
        let bind_at = match &tmp {
            Some(t) if UnixAddr::new(t.as_path()).is_ok() => t.as_path(),
            _ => path,
        };
        s::bind(fd.as_raw_fd(), &UnixAddr::new(bind_at).map_err(nix_err)?).map_err(nix_err)?;
        let placed = (|| {
            if let Some(gid) = access.group() {
                std::os::unix::fs::chown(bind_at, None, Some(gid))?;
            }
            std::fs::set_permissions(bind_at, std::fs::Permissions::from_mode(access.mode()))?;
            s::listen(&fd, s::Backlog::new(128).unwrap_or(s::Backlog::MAXCONN))?;
            if bind_at != path {
                std::fs::rename(bind_at, path)?;
            }
            let meta = std::fs::symlink_metadata(path)?;
            Ok::<_, io::Error>((meta.dev(), meta.ino()))
        })();
        match placed {
            Ok(made) => Ok(Self {
                fd,
                path: path.to_path_buf(),
                made,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(bind_at);
                Err(io_err(e))
            }
        }
    }

    /// The listening descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path guests attach to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServeSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.made);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The credentials of the process at the other end of `sock`.
///
/// # Errors
/// The `getsockopt` error.
pub fn peer_of(sock: BorrowedFd<'_>) -> io::Result<Peer> {
    let c = s::getsockopt(&sock, s::sockopt::PeerCredentials)?;
    Ok(Peer {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Removes a stale socket at `path`; refuses anything else that is there.
fn clear_stale(path: &Path) -> Result<(), ServeSocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeSocketError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeSocketError::NotASocket(path.to_path_buf()));
    }
    match answers(path) {
        Ok(true) => Err(ServeSocketError::InUse(path.to_path_buf())),
        Ok(false) => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ServeSocketError::Io {
                path: path.to_path_buf(),
                source,
            }),
        },
        Err(source) => Err(ServeSocketError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether something listens on the socket at `path`: a refused connect
/// means a stale file; a connect that goes through (or finds the backlog
/// full) means a live one.
fn answers(path: &Path) -> io::Result<bool> {
    let fd = s::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match s::connect(fd.as_raw_fd(), &UnixAddr::new(path)?) {
        Ok(()) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINPROGRESS) => Ok(true),
        Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT) => Ok(false),
        // A socket of another type at the path: nobody we could serve beside.
        Err(nix::errno::Errno::EPROTOTYPE) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// `.NAME.PID.tmp` beside `path`.
fn temporary_name(path: &Path) -> Option<PathBuf> {
    path.file_name().map(|name| {
        let mut t = std::ffi::OsString::from(".");
        t.push(name);
        t.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arca-ss-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_mode_follows_who_is_allowed() {
        let mut a = Access::default();
        assert_eq!(a.mode(), 0o600);
        a.gids = vec![100];
        assert_eq!((a.mode(), a.group()), (0o660, Some(100)));
        a.uids = vec![1000];
        assert_eq!(a.mode(), 0o666);
        a.mode = Some(0o640);
        assert_eq!(a.mode(), 0o640);
    }

    #[test]
    fn peers_are_admitted_by_user_or_group() {
        let peer = |uid, gid| Peer { pid: 1, uid, gid };
        let a = Access {
            uids: vec![1001],
            gids: vec![50],
            ..Access::default()
        };
        assert!(a.admits(1000, peer(1000, 1000)), "the monitor's own user");
        assert!(a.admits(1000, peer(0, 0)), "root");
        assert!(a.admits(1000, peer(1001, 7)));
        assert!(a.admits(1000, peer(2000, 50)));
        assert!(!a.admits(1000, peer(2000, 7)));
        assert!(!Access::default().admits(1000, peer(1001, 50)));
    }

    #[test]
    fn a_socket_is_owner_only_and_removed_only_by_its_maker() {
        let d = dir("owner");
        let path = d.join("s.sock");
        let first = ServeSocket::bind(&path, &Access::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live socket is not taken over.
        assert!(matches!(
            ServeSocket::bind(&path, &Access::default()),
            Err(ServeSocketError::InUse(_))
        ));
        // Someone replaced the file: dropping the first leaves theirs alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not ours").unwrap();
        drop(first);
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_regular_file_is_refused_and_a_stale_socket_replaced() {
        let d = dir("stale");
        let path = d.join("s.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            ServeSocket::bind(&path, &Access::default()),
            Err(ServeSocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
        // A socket file nobody listens on any more.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let fresh = ServeSocket::bind(&path, &Access::default()).unwrap();
        drop(fresh);
        assert!(!path.exists(), "its maker removes it");
        let _ = std::fs::remove_dir_all(&d);
    }
}
