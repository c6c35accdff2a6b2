//! The control pipe: reading and decoding frames within the turn's bounds,
//! the handshake, dispatching each request, and the replies' outbox.

use super::*;

impl Session {
    /// Reads and answers control frames, up to the turn's budget.
    pub fn service_control(&mut self, ctx: &mut Ctx<'_>) {
        self.control.rx().disarm();
        let budget = ctx.config.control_budget;
        let mut handled = 0;
        let mut passes = 0;
        let mut buf = [0u8; 4096];
        // Bounded in frames handled and in passes: a guest that dribbles a
        // frame in byte by byte makes passes without completing frames.
        while handled < budget && passes < budget && self.ended.is_none() {
            passes += 1;
            // Backpressure: a guest that does not read its replies gets no
            // more of its requests read.
            self.flush_outbox();
            if self.outbox.len() > ctx.config.max_outbox_bytes {
                self.control.tx().arm();
                break;
            }
            if !self.handle_buffered(ctx, &mut handled) {
                break;
            }
            match self.control.read(&mut buf) {
                Ok(0) => self.end(EndReason::GuestGone),
                Ok(n) => {
                    let mut input = &buf[..n];
                    while !input.is_empty() && self.ended.is_none() {
                        let taken = self.decoder.feed(input);
                        input = &input[taken..];
                        // A full decoder buffer holds a whole frame: handle
                        // frames (past the budget if need be, as these bytes
                        // are already read) to make room.
                        if taken == 0
                            && !self.handle_buffered(ctx, &mut handled)
                            && !input.is_empty()
                        {
                            let unbounded = &mut 0;
                            self.handle_buffered(ctx, unbounded);
                        }
                    }
                }
                Err(RingError::WouldBlock) => {
                    if self.control.rx().arm() {
                        self.control.rx().disarm();
                        continue;
                    }
                    break;
                }
                Err(e) => self.end(EndReason::Violation(format!("control pipe: {e}"))),
            }
        }
        if (handled >= budget || passes >= budget) && self.ended.is_none() {
            // More may be waiting: come back on the next turn.
            self.bitmap.set(0);
            self.monitor_bell.ring();
        }
        self.flush_outbox();
    }

    /// Handles the frames already decoded, counting them in `handled`.
    /// Returns false when the budget is spent or the session ended.
    pub(super) fn handle_buffered(&mut self, ctx: &mut Ctx<'_>, handled: &mut usize) -> bool {
        let budget = ctx.config.control_budget;
        loop {
            if self.ended.is_some() {
                return false;
            }
            if *handled >= budget {
                return false;
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    *handled += 1;
                    self.handle(frame, ctx);
                }
                Ok(None) => return true,
                Err(FrameError::Malformed { header, error }) => {
                    *handled += 1;
                    if allow_warning(&mut self.frame_warns, self.id, "malformed-frame") {
                        tracing::warn!(
                            session = self.id,
                            request = header.request_id.0,
                            "malformed frame: {error}"
                        );
                    }
                    self.reply(
                        header.request_id,
                        Message::Error {
                            code: ErrorCode::InvalidInput,
                            rejected_type: header.message_type,
                        },
                    );
                }
                Err(e) => {
                    // Frame boundaries are lost: the session cannot go on.
                    // The guest is told which request ended it (PROTOCOL.md §7).
                    if let Some(h) = self.decoder.rejected_header() {
                        self.reply(
                            h.request_id,
                            Message::Error {
                                code: ErrorCode::InvalidInput,
                                rejected_type: h.message_type,
                            },
                        );
                        self.flush_outbox();
                    }
                    self.end(EndReason::Violation(e.to_string()));
                    return false;
                }
            }
        }
    }

    pub(super) fn reply(&mut self, request: RequestId, msg: Message) {
        msg.encode(request, &mut self.outbox);
    }

    pub(super) fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        match self.control.write(&self.outbox) {
            Ok(n) => {
                self.outbox.drain(..n);
            }
            Err(RingError::WouldBlock) => {}
            Err(RingError::BrokenPipe) => {
                // The guest closed its reading half (it exited with replies
                // unread): it is gone, not misbehaving.
                tracing::debug!(
                    session = self.id,
                    unread = self.outbox.len(),
                    "guest stopped reading replies"
                );
                self.outbox.clear();
                self.end(EndReason::GuestGone);
                return;
            }
            Err(e) => {
                self.end(EndReason::Violation(format!("control pipe: {e}")));
                return;
            }
        }
        if !self.outbox.is_empty() && self.control.tx().arm() {
            self.control.tx().disarm();
            self.flush_outbox();
        }
    }

    pub(super) fn handle(&mut self, frame: Frame, ctx: &mut Ctx<'_>) {
        let Frame {
            request_id: rid,
            message,
        } = frame;
        if !self.greeted {
            return self.handle_hello(rid, message);
        }
        match message {
            Message::ListenRequest { addr, backlog } => self.listen(rid, addr, backlog, ctx),
            Message::ConnectRequest { addr, timeout_ms } => {
                self.connect(rid, addr, timeout_ms, ctx)
            }
            Message::AcceptRequest { listener } if self.listeners.contains_key(&listener) => {
                let in_flight = self.in_flight();
                if let Err(code) = self.admission.request(rid, "accept", in_flight) {
                    return self.reply(rid, Message::AcceptErr { code });
                }
                let Some(l) = self.listeners.get_mut(&listener) else {
                    return;
                };
                if l.pending.len() >= l.backlog {
                    return self.reply(
                        rid,
                        Message::AcceptErr {
                            code: ErrorCode::QuotaExceeded,
                        },
                    );
                }
                l.pending.push_back(rid);
                self.accept_pending(listener, ctx);
            }
            Message::AcceptRequest { .. } => self.reply(
                rid,
                Message::AcceptErr {
                    code: ErrorCode::NotFound,
                },
            ),
            Message::Close { handle } => self.close(rid, handle, ctx),
            Message::Resolve { family, name } if self.version >= 2 => {
                self.resolve(rid, family, name, ctx)
            }
            Message::UdpBind { addr, flags } => self.udp_bind(rid, addr, flags, ctx),
            Message::UdpConnect { socket, addr } => self.udp_connect(rid, socket, addr, ctx.now),
            Message::Membership {
                socket,
                op,
                group,
                interface,
            } => self.membership(rid, socket, op, group, interface),
            Message::SetOption {
                handle,
                option,
                value,
            } => self.set_option(rid, handle, option, value),
            Message::Hello { .. } => self.reply(
                rid,
                Message::Error {
                    code: ErrorCode::InvalidInput,
                    rejected_type: message.message_type(),
                },
            ),
            other => {
                // A reply type, or a type this monitor does not know.
                tracing::debug!(
                    session = self.id,
                    request = rid.0,
                    kind = other.message_type(),
                    "unsupported message"
                );
                self.reply(
                    rid,
                    Message::Error {
                        code: ErrorCode::Unsupported,
                        rejected_type: other.message_type(),
                    },
                );
            }
        }
    }

    pub(super) fn handle_hello(&mut self, rid: RequestId, message: Message) {
        let reply = match message {
            Message::Hello { magic, .. } if magic != HELLO_MAGIC => Message::HelloErr {
                code: ErrorCode::InvalidInput,
                min_version: MIN_PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            },
            Message::Hello { version, flags, .. }
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) || flags != 0 =>
            {
                Message::HelloErr {
                    code: ErrorCode::Unsupported,
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                }
            }
            Message::Hello { version, .. } => {
                self.greeted = true;
                self.version = version;
                Message::HelloOk { version, flags: 0 }
            }
            other => {
                self.reply(
                    rid,
                    Message::Error {
                        code: ErrorCode::InvalidInput,
                        rejected_type: other.message_type(),
                    },
                );
                return;
            }
        };
        let refused = matches!(reply, Message::HelloErr { .. });
        self.reply(rid, reply);
        if refused {
            self.flush_outbox();
            self.end(EndReason::Violation("handshake refused".into()));
        }
    }

    pub(super) fn set_option(
        &mut self,
        rid: RequestId,
        handle: Handle,
        option: SocketOption,
        value: u64,
    ) {
        let reply = match (handle, option) {
            (Handle::Connection(id), SocketOption::NoDelay) => {
                if value > 1 {
                    Message::SetOptionErr {
                        code: ErrorCode::InvalidInput,
                    }
                } else {
                    match self.conns.get_mut(&id).map(|c| &mut c.state) {
                        Some(ConnState::Open(relay)) => match relay.set_nodelay(value == 1) {
                            Ok(()) => Message::SetOptionOk,
                            Err(e) => Message::SetOptionErr {
                                code: ErrorCode::from_io(&e),
                            },
                        },
                        Some(ConnState::Connecting { .. }) => Message::SetOptionErr {
                            code: ErrorCode::NotConnected,
                        },
                        Some(ConnState::Udp(_)) | None => Message::SetOptionErr {
                            code: ErrorCode::NotFound,
                        },
                    }
                }
            }
            (Handle::Udp(id), option) => match self.udp(id) {
                Some(relay) => match relay.set_option(option, value) {
                    Ok(()) => Message::SetOptionOk,
                    Err(e) => Message::SetOptionErr {
                        code: ErrorCode::from_io(&e),
                    },
                },
                None => Message::SetOptionErr {
                    code: ErrorCode::NotFound,
                },
            },
            _ => Message::SetOptionErr {
                code: ErrorCode::Unsupported,
            },
        };
        self.reply(rid, reply);
    }
}
