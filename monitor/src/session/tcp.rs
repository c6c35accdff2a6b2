//! TCP: listeners and their pending accepts, connects and their deadlines,
//! opening a connection's pipe, and closing handles.

use super::*;

impl Session {
    pub(super) fn listen(
        &mut self,
        rid: RequestId,
        addr: SocketAddr,
        backlog: u32,
        ctx: &mut Ctx<'_>,
    ) {
        if let Err(code) = self.admission.listen(rid, addr, self.listeners.len()) {
            return self.reply(rid, Message::ListenErr { code });
        }
        let backlog = if backlog == 0 {
            ctx.config.default_backlog
        } else {
            backlog.min(65535)
        };
        let sock = match ctx.net.listen(addr, backlog) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(session = self.id, request = rid.0, %addr, error = %e, "listen failed");
                return self.reply(
                    rid,
                    Message::ListenErr {
                        code: ErrorCode::from_io(&e),
                    },
                );
            }
        };
        let local = match sock.local_addr() {
            Ok(a) => a,
            Err(e) => {
                return self.reply(
                    rid,
                    Message::ListenErr {
                        code: ErrorCode::from_io(&e),
                    },
                )
            }
        };
        let id = ListenerId(self.next_listener);
        self.next_listener = self.next_listener.wrapping_add(1).max(1);
        let token = (ctx.tokens)(SessionSource::Listener(id));
        let mut sock = sock;
        if let Err(e) = ctx.registry.register(&mut sock, token, Interest::READABLE) {
            (ctx.release)(token);
            return self.reply(
                rid,
                Message::ListenErr {
                    code: ErrorCode::from_io(&e),
                },
            );
        }
        tracing::debug!(session = self.id, listener = id.0, %local, "listening");
        self.listeners.insert(
            id,
            Listener {
                token,
                sock,
                pending: VecDeque::new(),
                backlog: usize::try_from(backlog).unwrap_or(usize::MAX).max(1),
            },
        );
        self.reply(
            rid,
            Message::ListenOk {
                listener: id,
                local,
            },
        );
    }

    pub(super) fn accept_pending(&mut self, id: ListenerId, ctx: &mut Ctx<'_>) {
        loop {
            let Some(l) = self.listeners.get_mut(&id) else {
                return;
            };
            let Some(&rid) = l.pending.front() else {
                return;
            };
            match ctx.net.accept(&l.sock) {
                Ok((sock, peer)) => {
                    l.pending.pop_front();
                    if let Err(code) = self.admission.incoming(rid) {
                        // Accepted only to be closed: the peer sees the
                        // connection end, the guest's listener carries on.
                        drop(sock);
                        tracing::debug!(session = self.id, %peer, "incoming connection closed (over quota)");
                        self.reply(rid, Message::AcceptErr { code });
                        continue;
                    }
                    match self.open_conn(sock, ctx) {
                        Ok((conn, pipe, local)) => self.reply(
                            rid,
                            Message::IncomingConnection {
                                listener: id,
                                conn,
                                pipe,
                                local,
                                peer,
                            },
                        ),
                        Err(code) => self.reply(rid, Message::AcceptErr { code }),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    l.pending.pop_front();
                    self.reply(
                        rid,
                        Message::AcceptErr {
                            code: ErrorCode::from_io(&e),
                        },
                    );
                }
            }
        }
    }

    /// A data pipe for a TCP connection, within the pipe memory limit.
    pub(super) fn tcp_pipe(
        &mut self,
        ctx: &Ctx<'_>,
    ) -> Result<(BidirectionalPipe, PipeInfo), ErrorCode> {
        let (up, down) = (ctx.config.upload_ring(), ctx.config.data_ring);
        if !self.pipe_fits(ctx.config.data_pipe_block()) {
            let limit = self.admission.pipe_memory_limit();
            return Err(self
                .admission
                .over_quota(None, "data pipe", "pipe memory", limit));
        }
        // A pipe that is dropped on a later error frees its block.
        let pipe = self.new_pipe(up, down, "data")?;
        let info = PipeInfo {
            shm_offset: pipe.layout().offset().0,
            cap_to_monitor: up as u32,
            cap_to_guest: down as u32,
        };
        Ok((pipe, info))
    }

    /// Gives an established socket (accepted, or connected inside
    /// `connect(2)`) an id, a pipe and its registration.
    pub(super) fn open_conn(
        &mut self,
        mut sock: mio::net::TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Result<(ConnId, PipeInfo, SocketAddr), ErrorCode> {
        let local = sock.local_addr().map_err(|e| ErrorCode::from_io(&e))?;
        let (pipe, info) = self.tcp_pipe(ctx)?;
        let (id, token) = self.register_conn(&mut sock, ctx)?;
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Open(Box::new(Relay::new(sock, pipe))),
                sock: None,
                queued: false,
            },
        );
        // Bytes may already be waiting on the socket.
        self.enqueue(id);
        Ok((id, info, local))
    }

    pub(super) fn connect(
        &mut self,
        rid: RequestId,
        addr: SocketAddr,
        timeout_ms: u32,
        ctx: &mut Ctx<'_>,
    ) {
        let in_flight = self.in_flight();
        if let Err(code) = self.admission.connect(ctx.now, rid, addr, in_flight) {
            return self.reply(rid, Message::ConnectErr { code });
        }
        let mut sock = match ctx.net.connect(addr) {
            Ok(s) => s,
            Err(e) => {
                return self.reply(
                    rid,
                    Message::ConnectErr {
                        code: ErrorCode::from_io(&e),
                    },
                )
            }
        };
        // On loopback the handshake is usually over by the time connect(2) returns: answer
        // now, without registering the socket to learn it from the next turn.
        if let Some(outcome) = ctx.net.connect_outcome(&sock) {
            return self.answer_connect(rid, addr, sock, outcome, ctx);
        }
        let (id, token) = match self.register_conn(&mut sock, ctx) {
            Ok(registered) => registered,
            Err(code) => return self.reply(rid, Message::ConnectErr { code }),
        };
        let deadline = (timeout_ms > 0).then(|| {
            let at = ctx.now + std::time::Duration::from_millis(u64::from(timeout_ms));
            self.timers.insert((at, id), rid);
            at
        });
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Connecting {
                    request: rid,
                    addr,
                    deadline,
                },
                sock: Some(sock),
                queued: false,
            },
        );
    }

    /// A connecting socket became ready: if its outcome is known, the
    /// connection opens where it stands — same id, same registration, its
    /// state turned from connecting to open — or ends with the error.
    pub(super) fn finish_connect(&mut self, id: ConnId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let ConnState::Connecting { request, addr, .. } = c.state else {
            return;
        };
        let Some(sock) = c.sock.as_ref() else { return };
        let Some(outcome) = ctx.net.connect_outcome(sock) else {
            return; // still in progress
        };
        let opened = outcome
            .and_then(|()| sock.local_addr())
            .map_err(|e| {
                tracing::debug!(session = self.id, request = request.0, %addr, error = %e, "connect failed");
                ErrorCode::from_io(&e)
            })
            .and_then(|local| self.tcp_pipe(ctx).map(|(pipe, info)| (local, pipe, info)));
        let reply = match opened {
            Ok((local, pipe, info)) => {
                let Some(mut c) = self.remove_conn(id) else {
                    return;
                };
                let Some(sock) = c.sock.take() else {
                    return;
                };
                c.state = ConnState::Open(Box::new(Relay::new(sock, pipe)));
                self.insert_conn(id, c);
                self.enqueue(id);
                Message::ConnectOk {
                    conn: id,
                    pipe: info,
                    local,
                    peer: addr,
                }
            }
            Err(code) => {
                if let Some(c) = self.remove_conn(id) {
                    self.release_conn(id, c, ctx);
                }
                Message::ConnectErr { code }
            }
        };
        self.reply(request, reply);
        self.flush_outbox();
    }

    /// Replies to a connect whose outcome is known: on success the connection opens.
    pub(super) fn answer_connect(
        &mut self,
        request: RequestId,
        addr: SocketAddr,
        sock: mio::net::TcpStream,
        outcome: io::Result<()>,
        ctx: &mut Ctx<'_>,
    ) {
        match outcome {
            Err(e) => {
                tracing::debug!(session = self.id, request = request.0, %addr, error = %e, "connect failed");
                self.reply(
                    request,
                    Message::ConnectErr {
                        code: ErrorCode::from_io(&e),
                    },
                );
            }
            Ok(()) => match self.open_conn(sock, ctx) {
                Ok((conn, pipe, local)) => self.reply(
                    request,
                    Message::ConnectOk {
                        conn,
                        pipe,
                        local,
                        peer: addr,
                    },
                ),
                Err(code) => self.reply(request, Message::ConnectErr { code }),
            },
        }
        self.flush_outbox();
    }

    /// The earliest connect deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|&(at, _)| at)
    }

    /// Times out every connect whose deadline is not after `now`.
    pub fn fire_timers(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        while let Some((&(at, id), &rid)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.on_timer(id, rid, ctx);
        }
    }

    /// A connect deadline passed. Its timer left [`Self::timers`] with it;
    /// the connect is still pending on `id` (a connect's end removes its
    /// timer).
    pub(super) fn on_timer(&mut self, id: ConnId, rid: RequestId, ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get(&id) else { return };
        let ConnState::Connecting { request, .. } = c.state else {
            return;
        };
        if request != rid {
            return;
        }
        if let Some(c) = self.remove_conn(id) {
            self.release_conn(id, c, ctx);
        }
        self.reply(
            request,
            Message::ConnectErr {
                code: ErrorCode::TimedOut,
            },
        );
        self.flush_outbox();
    }

    pub(super) fn close(&mut self, rid: RequestId, handle: Handle, ctx: &mut Ctx<'_>) {
        match handle {
            Handle::Listener(id) => match self.listeners.remove(&id) {
                Some(mut l) => {
                    let _ = ctx.registry.deregister(&mut l.sock);
                    (ctx.release)(l.token);
                    for pending in l.pending {
                        self.reply(
                            pending,
                            Message::AcceptErr {
                                code: ErrorCode::ConnectionAborted,
                            },
                        );
                    }
                    self.reply(rid, Message::CloseOk);
                }
                None => self.reply(
                    rid,
                    Message::CloseErr {
                        code: ErrorCode::NotFound,
                    },
                ),
            },
            Handle::Connection(id) | Handle::Udp(id) => match self.take_conn(handle) {
                Some(c) => {
                    self.drop_conn(c, ctx);
                    self.ids.put(id);
                    self.reply(rid, Message::CloseOk);
                }
                None => self.reply(
                    rid,
                    Message::CloseErr {
                        code: ErrorCode::NotFound,
                    },
                ),
            },
        }
    }
}
