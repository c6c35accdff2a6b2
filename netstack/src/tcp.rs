//! One guest TCP connection: the held SYN becomes an arca connect to the original
//! destination, then bytes are relayed both ways between the smoltcp socket and the arca
//! stream.
//!
//! - **Refusal.** The guest's SYN is answered only after arca's connect does: SYN-ACK when it
//!   connected, RST when it was refused, denied by policy or failed, so the program's
//!   `connect()` fails promptly with `ECONNREFUSED` and never connects-then-resets.
//! - **Half-close.** The guest's FIN becomes `shutdown(Write)` on the arca stream once every
//!   byte before it was written; the host's EOF becomes a FIN after every byte before it.
//! - **Back-pressure.** Each direction holds at most one chunk outside the two buffers: the
//!   arca stream is read only when the previous chunk went into smoltcp's send buffer (a slow
//!   guest reader closes the window towards the host), and smoltcp's receive buffer is read
//!   only when the previous chunk went into the arca ring (a slow host closes the guest's
//!   window).
//! - **Resets.** A reset from either side resets the other.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use arca::tokio::AsyncTcpStream;
use arca::ArcaSession;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::packet::FlowKey;
use crate::stack::Core;
use crate::Addresses;

/// The most one direction moves per step (one arca read or one smoltcp read).
const CHUNK: usize = 256 * 1024;

/// Opens the arca connection for the held SYN of `key`, then relays it.
pub(crate) async fn open(
    core: Rc<RefCell<Core>>,
    session: ArcaSession,
    kick: Arc<Notify>,
    addrs: Rc<Addresses>,
    key: FlowKey,
    seq: u32,
    syn: Vec<u8>,
) {
    tracing::debug!(guest = %key.guest, dst = %key.dst, "held a SYN");
    let Some(target) = addrs.host_destination(key.dst) else {
        tracing::debug!(dst = %key.dst, "refusing a connection to the stack's own network");
        core.borrow_mut().refuse(key, seq);
        return;
    };
    let stream = match AsyncTcpStream::connect(&session, target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "connect refused");
            core.borrow_mut().refuse(key, seq);
            return;
        }
    };
    let accepted = core.borrow_mut().accept(key, syn);
    let Some(h) = accepted else {
        tracing::debug!(dst = %key.dst, "smoltcp refused the held SYN");
        return;
    };
    let result = relay(&core, &kick, h, stream).await;
    if let Err(e) = result {
        tracing::debug!(dst = %key.dst, error = %e, "relay ended with an error");
        core.borrow_mut().sockets.get_mut::<tcp::Socket>(h).abort();
    }
    core.borrow_mut().relay_done(key);
    kick.notify_one();
}

/// Relays both directions until both ended (Ok) or either failed (Err: the caller resets).
async fn relay(
    core: &Rc<RefCell<Core>>,
    kick: &Notify,
    h: SocketHandle,
    stream: AsyncTcpStream,
) -> io::Result<()> {
    let up = guest_to_host(core, kick, h, stream.clone());
    let down = host_to_guest(core, kick, h, stream);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => { r?; up_done = true; }
            r = &mut down, if !down_done => { r?; down_done = true; }
        }
    }
    Ok(())
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the guest reset the connection",
    )
}

/// Guest → host: smoltcp's receive buffer into the arca stream; the guest's FIN becomes
/// `shutdown(Write)`.
async fn guest_to_host(
    core: &Rc<RefCell<Core>>,
    kick: &Notify,
    h: SocketHandle,
    mut stream: AsyncTcpStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = poll_fn(|cx| {
            let mut c = core.borrow_mut();
            let s = c.sockets.get_mut::<tcp::Socket>(h);
            if s.can_recv() {
                return Poll::Ready(s.recv_slice(&mut buf).map_err(|_| reset()));
            }
            match s.state() {
                State::Closed | State::Listen | State::SynSent => Poll::Ready(Err(reset())),
                State::SynReceived | State::Established | State::FinWait1 | State::FinWait2 => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                // The guest's FIN came and every byte before it was read.
                State::CloseWait | State::LastAck | State::Closing | State::TimeWait => {
                    Poll::Ready(Ok(0))
                }
            }
        })
        .await?;
        if n == 0 {
            stream.get_ref().shutdown(Shutdown::Write)?;
            return Ok(());
        }
        // The window opened: let smoltcp say so.
        kick.notify_one();
        stream.write_all(buf.get(..n).unwrap_or(&[])).await?;
    }
}

/// Host → guest: the arca stream into smoltcp's send buffer; the host's EOF becomes a FIN.
async fn host_to_guest(
    core: &Rc<RefCell<Core>>,
    kick: &Notify,
    h: SocketHandle,
    mut stream: AsyncTcpStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            core.borrow_mut().sockets.get_mut::<tcp::Socket>(h).close();
            kick.notify_one();
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            let sent = poll_fn(|cx| {
                let mut c = core.borrow_mut();
                let s = c.sockets.get_mut::<tcp::Socket>(h);
                if s.state() == State::SynReceived || (s.may_send() && !s.can_send()) {
                    s.register_send_waker(cx.waker());
                    return Poll::Pending;
                }
                if !s.may_send() {
                    // The guest closed or reset: nobody reads these bytes.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the guest no longer receives",
                    )));
                }
                Poll::Ready(
                    s.send_slice(buf.get(off..n).unwrap_or(&[]))
                        .map_err(|_| reset()),
                )
            })
            .await?;
            off += sent;
            kick.notify_one();
        }
    }
}
