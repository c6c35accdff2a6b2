//! Sending a guest its session: the bootstrap message plus the region memfd
//! and both doorbells over the session's `SOCK_SEQPACKET` Unix socket.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

use arca_wire::Bootstrap;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Sends `boot` with the three descriptors, in PROTOCOL.md's order: region,
/// guest bell, monitor bell.
///
/// # Errors
/// The `sendmsg` error, or `WriteZero` for a short send.
pub fn send_bootstrap(
    sock: BorrowedFd<'_>,
    boot: &Bootstrap,
    region: BorrowedFd<'_>,
    guest_bell: BorrowedFd<'_>,
    monitor_bell: BorrowedFd<'_>,
) -> io::Result<()> {
    let bytes = boot.to_bytes();
    let fds = [
        region.as_raw_fd(),
        guest_bell.as_raw_fd(),
        monitor_bell.as_raw_fd(),
    ];
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let n = loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short bootstrap send",
        ));
    }
    Ok(())
}
