//! Receiving a session over its Unix socket: the 48-byte bootstrap and its three descriptors.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use arca_wire::{Bootstrap, BOOTSTRAP_FDS, BOOTSTRAP_LEN};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// How long to wait for the monitor's bootstrap after attaching.
pub(crate) const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the monitor handed over.
pub(crate) struct Received {
    pub boot: Bootstrap,
    pub region: OwnedFd,
    pub guest_bell: OwnedFd,
    pub monitor_bell: OwnedFd,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Waits (bounded) for the bootstrap message on `sock` and takes its descriptors.
pub(crate) fn receive(sock: BorrowedFd<'_>) -> io::Result<Received> {
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    let ms = u16::try_from(BOOTSTRAP_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "arca: no bootstrap from the monitor",
                ))
            }
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = [0u8; BOOTSTRAP_LEN + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; BOOTSTRAP_FDS]);
    let (len, flags, raw) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut raw: Vec<RawFd> = Vec::new();
                if let Ok(it) = msg.cmsgs() {
                    for c in it {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            raw.extend(fds);
                        }
                    }
                }
                break (msg.bytes, msg.flags, raw);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let owned: Vec<OwnedFd> = raw
        .into_iter()
        .map(|fd| {
            // SAFETY: SCM_RIGHTS just installed these descriptors in our table; nothing else
            // owns them, so each is wrapped exactly once (and closed on every error path).
            #[allow(unsafe_code)]
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            owned
        })
        .collect();
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(invalid("arca: bootstrap control data truncated"));
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "arca: monitor closed the session before the bootstrap",
        ));
    }
    let bytes = buf
        .get(..len)
        .ok_or_else(|| invalid("arca: bootstrap too long"))?;
    let boot = Bootstrap::parse(bytes).map_err(|e| invalid(format!("arca: bad bootstrap: {e}")))?;
    let [region, guest_bell, monitor_bell]: [OwnedFd; BOOTSTRAP_FDS] =
        owned.try_into().map_err(|v: Vec<OwnedFd>| {
            invalid(format!(
                "arca: bootstrap carried {} descriptors, expected {BOOTSTRAP_FDS}",
                v.len()
            ))
        })?;
    for fd in [&region, &guest_bell, &monitor_bell] {
        set_cloexec(fd.as_fd())?;
    }
    Ok(Received {
        boot,
        region,
        guest_bell,
        monitor_bell,
    })
}

pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}
