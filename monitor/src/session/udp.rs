//! UDP sockets: binding one with its datagram pipe, connecting it, and
//! multicast membership.

use super::*;

impl Session {
    /// The UDP socket with this id, if the session holds one.
    pub(super) fn udp(&self, id: ConnId) -> Option<&UdpRelay> {
        match &self.conns.get(&id)?.state {
            ConnState::Udp(relay) => Some(relay),
            _ => None,
        }
    }

    pub(super) fn udp_bind(
        &mut self,
        rid: RequestId,
        addr: SocketAddr,
        flags: u32,
        ctx: &mut Ctx<'_>,
    ) {
        if let Err(code) = self.admission.udp_bind(rid, addr) {
            return self.reply(rid, Message::UdpBindErr { code });
        }
        let reply = match self.open_udp(addr, flags, ctx) {
            Ok((socket, pipe, local)) => Message::UdpBindOk {
                socket,
                pipe,
                local,
            },
            Err(code) => {
                tracing::debug!(session = self.id, request = rid.0, %addr, ?code, "udp bind failed");
                Message::UdpBindErr { code }
            }
        };
        self.reply(rid, reply);
    }

    /// Opens a UDP socket with an id and a datagram pipe.
    pub(super) fn open_udp(
        &mut self,
        addr: SocketAddr,
        flags: u32,
        ctx: &mut Ctx<'_>,
    ) -> Result<(ConnId, PipeInfo, SocketAddr), ErrorCode> {
        if flags & !arca_wire::UDP_REUSE_ADDR != 0 {
            return Err(ErrorCode::InvalidInput);
        }
        let reuse = flags & arca_wire::UDP_REUSE_ADDR != 0;
        let owner = self.id;
        if reuse && ctx.reuse.held_by_other(owner, addr) {
            return Err(ErrorCode::AddrInUse);
        }
        let cap = ctx.config.udp_ring;
        if !self.pipe_fits(BidirectionalPipe::block_size(cap, cap)) {
            let limit = self.admission.pipe_memory_limit();
            return Err(self
                .admission
                .over_quota(None, "udp pipe", "pipe memory", limit));
        }
        let mut sock = ctx
            .net
            .bind_udp(addr, reuse)
            .map_err(|e| ErrorCode::from_io(&e))?;
        let local = sock.local_addr().map_err(|e| ErrorCode::from_io(&e))?;
        let claim = match reuse.then(|| ctx.reuse.claim(owner, local)) {
            Some(Err(e)) => return Err(ErrorCode::from_io(&e)),
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let pipe = self.new_pipe(cap, cap, "udp")?;
        let (id, token) = self.register_conn(&mut sock, ctx)?;
        let info = PipeInfo {
            shm_offset: pipe.layout().offset().0,
            cap_to_monitor: cap as u32,
            cap_to_guest: cap as u32,
        };
        tracing::debug!(session = self.id, socket = id.0, %local, "udp socket open");
        let relay = UdpRelay::new(sock, pipe)
            .with_policy(self.admission.policy.clone(), self.id)
            .with_learned(self.admission.learned.clone())
            .with_claim(claim);
        self.insert_conn(
            id,
            Conn {
                token,
                state: ConnState::Udp(Box::new(relay)),
                sock: None,
                queued: false,
            },
        );
        Ok((id, info, local))
    }

    /// Connects a UDP socket to `addr`, as the outbound rules allow.
    pub(super) fn udp_connect(
        &mut self,
        rid: RequestId,
        socket: ConnId,
        addr: SocketAddr,
        now: std::time::Instant,
    ) {
        let a = &self.admission;
        let d = a.policy.outbound_learned(addr, Proto::Udp, &a.learned, now);
        let reply = match self.udp(socket) {
            Some(_) if !d.allowed => Message::UdpConnectErr {
                code: self.admission.deny(rid, "udp connect", &addr, d),
            },
            Some(relay) => match relay.connect(addr) {
                Ok(local) => Message::UdpConnectOk { local },
                Err(e) => Message::UdpConnectErr {
                    code: ErrorCode::from_io(&e),
                },
            },
            None => Message::UdpConnectErr {
                code: ErrorCode::NotFound,
            },
        };
        self.reply(rid, reply);
    }

    /// Joins or leaves a multicast group; a join as the multicast rules
    /// allow (leaving is always allowed).
    pub(super) fn membership(
        &mut self,
        rid: RequestId,
        socket: ConnId,
        op: arca_wire::MembershipOp,
        group: SocketAddr,
        interface: std::net::Ipv4Addr,
    ) {
        let d = self.admission.policy.multicast(group.ip());
        let join = op == arca_wire::MembershipOp::Join && group.ip().is_multicast();
        let reply = match self.udp(socket) {
            Some(_) if join && !d.allowed => Message::MembershipErr {
                code: self.admission.deny(rid, "multicast join", &group.ip(), d),
            },
            Some(relay) => match relay.membership(op, group, interface) {
                Ok(()) => Message::MembershipOk,
                Err(e) => Message::MembershipErr {
                    code: ErrorCode::from_io(&e),
                },
            },
            None => Message::MembershipErr {
                code: ErrorCode::NotFound,
            },
        };
        self.reply(rid, reply);
    }
}
