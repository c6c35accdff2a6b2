//! `TcpListener`: a listening socket the monitor holds for the guest.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arca_wire::{Handle, ListenerId, Message};

use crate::session::{op_error, Owner};
use crate::stream::{unexpected, TcpStream};

/// A TCP listener held by the monitor, shaped like [`std::net::TcpListener`].
///
/// Accepts may run on several threads at once: the monitor queues them and hands each the
/// next inbound connection. Dropping the listener closes it (pending accepts then fail with
/// `ConnectionAborted`).
#[derive(Debug)]
pub struct TcpListener {
    owner: Arc<Owner>,
    id: ListenerId,
    local: SocketAddr,
}

impl TcpListener {
    pub(crate) fn new(owner: Arc<Owner>, id: ListenerId, local: SocketAddr) -> Self {
        Self { owner, id, local }
    }

    /// The address the monitor's socket is bound to (with the real port when 0 was asked).
    ///
    /// # Errors
    /// None today; the `Result` mirrors `std`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Waits for the next inbound connection.
    ///
    /// # Errors
    /// The monitor's error (`ConnectionAborted` if the listener is closed meanwhile), or
    /// `ConnectionAborted` once the monitor is gone.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let msg = Message::AcceptRequest { listener: self.id };
        let reply = self.owner.shared.request(&msg)?;
        self.finish_accept(reply)
    }

    pub(crate) fn finish_accept(&self, reply: Message) -> io::Result<(TcpStream, SocketAddr)> {
        match reply {
            Message::IncomingConnection {
                conn,
                pipe,
                local,
                peer,
                ..
            } => {
                let s = TcpStream::attach(Arc::clone(&self.owner), conn, pipe, local, peer)?;
                Ok((s, peer))
            }
            Message::AcceptErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "accept on", Some(self.local)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// An endless iterator of [`accept`](Self::accept) results.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The listener's id in this session.
    pub fn listener_id(&self) -> u32 {
        self.id.0
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.owner
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn id(&self) -> ListenerId {
        self.id
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        // Fire and forget: the reply (CloseOk) is discarded when it comes.
        self.owner.shared.fire(&Message::Close {
            handle: Handle::Listener(self.id),
        });
    }
}

/// Iterator over a listener's inbound connections ([`TcpListener::incoming`]).
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}
