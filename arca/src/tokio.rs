//! Async streams and listeners for tokio (feature `tokio`).
//!
//! No reactor registration is needed: a task that would block registers its `Waker` with the
//! session under what it waits for — its connection's read or write side, or its request —
//! then arms the ring's need-wakeup flag (or checks for its reply) and re-checks. When the
//! monitor rings the guest, the session's dispatcher thread wakes only the tasks whose pipe is
//! ready; a reply wakes only its request's task; `shutdown` and the session's end wake all.
//! Spurious wake-ups are possible and harmless.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};

use arca_wire::{Message, RequestId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addrs::{self, Target, ToSocketAddrs};
use crate::session::{gone, op_error, Owner, WakeKey};
use crate::stream::unexpected;
use crate::{ArcaSession, TcpListener, TcpStream};

/// The addresses `host` names, resolved by the monitor without blocking the runtime: the
/// async form of [`ArcaSession::lookup_host`], shaped like `tokio::net::lookup_host`.
///
/// # Errors
/// As [`ArcaSession::lookup_host`].
pub async fn lookup_host(
    session: &ArcaSession,
    host: impl ToSocketAddrs,
) -> io::Result<std::vec::IntoIter<SocketAddr>> {
    resolve(&session.owner, &host).await.map(Vec::into_iter)
}

async fn resolve(
    owner: &Arc<Owner>,
    addr: &(impl ToSocketAddrs + ?Sized),
) -> io::Result<Vec<SocketAddr>> {
    match addrs::target(addr)? {
        Target::Addrs(list) => Ok(list),
        Target::Name { host, port } => {
            let (id, rx) = owner
                .shared
                .start_request(&addrs::resolve_request(&host)?)?;
            let reply = Reply { owner, id, rx }.await?;
            addrs::addrs_from_reply(reply, &host, port)
        }
    }
}

/// A [`TcpStream`] with tokio's `AsyncRead` and `AsyncWrite`.
#[derive(Debug, Clone)]
pub struct AsyncTcpStream {
    inner: TcpStream,
}

impl AsyncTcpStream {
    /// Wraps a stream (its blocking settings are ignored by the async calls).
    pub fn new(inner: TcpStream) -> Self {
        Self { inner }
    }

    /// Connects through `session` without blocking the runtime, trying each address `addr`
    /// names in turn (a name is resolved by the monitor, as [`lookup_host`] does).
    ///
    /// # Errors
    /// As [`ArcaSession::connect`].
    pub async fn connect(session: &ArcaSession, addr: impl ToSocketAddrs) -> io::Result<Self> {
        let mut last = None;
        for a in resolve(&session.owner, &addr).await? {
            match Self::connect_one(session, a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any addresses",
            )
        }))
    }

    async fn connect_one(session: &ArcaSession, addr: SocketAddr) -> io::Result<Self> {
        let owner = Arc::clone(&session.owner);
        let (id, rx) = owner.shared.start_request(&Message::ConnectRequest {
            addr,
            timeout_ms: 0,
        })?;
        match (Reply {
            owner: &owner,
            id,
            rx,
        })
        .await?
        {
            Message::ConnectOk {
                conn,
                pipe,
                local,
                peer,
            } => Ok(Self::new(TcpStream::attach(
                owner, conn, pipe, local, peer,
            )?)),
            Message::ConnectErr { code } | Message::Error { code, .. } => {
                Err(op_error(code, "connect to", Some(addr)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The blocking stream inside.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Unwraps the blocking stream.
    pub fn into_inner(self) -> TcpStream {
        self.inner
    }
}

impl AsyncRead for AsyncTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Register before arming, so a ring after the re-check wakes this task.
        let key = WakeKey::Readable(arca_wire::ConnId(self.inner.conn_id()));
        let probe = self.inner.probe();
        self.inner
            .owner()
            .shared
            .register_waker(key, cx.waker(), Some(probe));
        match self.inner.try_read_armed(buf.initialize_unfilled()) {
            Ok(Some(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for AsyncTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let key = WakeKey::Writable(arca_wire::ConnId(self.inner.conn_id()));
        let probe = self.inner.probe();
        self.inner
            .owner()
            .shared
            .register_waker(key, cx.waker(), Some(probe));
        match self.inner.try_write_armed(buf) {
            Ok(Some(n)) => Poll::Ready(Ok(n)),
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.shutdown(Shutdown::Write))
    }
}

/// A [`TcpListener`] with an async `accept`.
#[derive(Debug)]
pub struct AsyncTcpListener {
    inner: TcpListener,
}

impl AsyncTcpListener {
    /// Wraps a listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }

    /// Binds through `session` (the bind itself is quick and done inline).
    ///
    /// # Errors
    /// As [`ArcaSession::bind`].
    pub fn bind(session: &ArcaSession, addr: SocketAddr) -> io::Result<Self> {
        session.bind(addr).map(Self::new)
    }

    /// The bound address.
    ///
    /// # Errors
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits for the next inbound connection without blocking the runtime.
    ///
    /// # Errors
    /// As [`TcpListener::accept`].
    pub async fn accept(&self) -> io::Result<(AsyncTcpStream, SocketAddr)> {
        let owner = self.inner.owner();
        let (id, rx) = owner.shared.start_request(&Message::AcceptRequest {
            listener: self.inner.id(),
        })?;
        let reply = Reply { owner, id, rx }.await?;
        let (s, peer) = self.inner.finish_accept(reply)?;
        Ok((AsyncTcpStream::new(s), peer))
    }
}

/// A request's reply, awaited. Dropping it early is safe: a late `ConnectOk` or
/// `IncomingConnection` is then closed by the dispatcher.
struct Reply<'a> {
    owner: &'a Arc<Owner>,
    id: RequestId,
    rx: mpsc::Receiver<io::Result<Message>>,
}

impl Drop for Reply<'_> {
    fn drop(&mut self) {
        self.owner.shared.forget_waker(WakeKey::Reply(self.id));
    }
}

impl Future for Reply<'_> {
    type Output = io::Result<Message>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Register before looking, so a reply delivered after the look wakes this task.
        self.owner
            .shared
            .register_waker(WakeKey::Reply(self.id), cx.waker(), None);
        match self.rx.try_recv() {
            Ok(r) => Poll::Ready(r),
            Err(mpsc::TryRecvError::Empty) => Poll::Pending,
            Err(mpsc::TryRecvError::Disconnected) => Poll::Ready(Err(gone())),
        }
    }
}
