//! Admission: what a session holds against its policy's limits, and the
//! decisions made from it (POLICY.md §3, §4). No I/O: the clock and the
//! figures that live elsewhere (requests in flight, pipe memory in use) are
//! passed in. Refusals are counted here and logged at a bounded rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arca_wire::{ErrorCode, RequestId};

use super::{allow_warning, SessionId};
use crate::policy::{ConnectRate, Decision, Learned, Policy, PolicyCounters, Proto};
use crate::ratelimit::WarnLimiter;

/// One session's holdings and refusals.
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) policy: Arc<Policy>,
    session: SessionId,
    /// TCP connections, connecting or open.
    pub(super) tcp: u32,
    /// Of which connecting (requests in flight).
    pub(super) connecting: u32,
    /// UDP sockets.
    pub(super) udp: u32,
    rate: ConnectRate,
    /// Resolutions per second.
    resolve_rate: ConnectRate,
    /// Addresses learned through allowed names (shared with the UDP sockets).
    pub(super) learned: Arc<Learned>,
    pub(super) counters: PolicyCounters,
    /// Policy drops of UDP sockets already closed.
    pub(super) udp_denied_closed: u64,
    /// Bounds the refusals logged (a guest can cause them at will).
    pub(super) logged: WarnLimiter,
}

impl Admission {
    pub(super) fn new(session: SessionId, policy: Arc<Policy>) -> Self {
        let rate = ConnectRate::new(policy.limits.connect_rate, policy.limits.connect_burst);
        let resolve_rate =
            ConnectRate::new(policy.limits.resolve_rate, policy.limits.resolve_burst);
        Self {
            resolve_rate,
            learned: Arc::new(Learned::default()),
            policy,
            session,
            tcp: 0,
            connecting: 0,
            udp: 0,
            rate,
            counters: PolicyCounters::default(),
            udp_denied_closed: 0,
            logged: WarnLimiter::new(),
        }
    }

    /// Counts and logs a refusal by rule; the code to reply with.
    pub(super) fn deny(
        &mut self,
        rid: RequestId,
        what: &str,
        addr: &dyn std::fmt::Display,
        d: Decision,
    ) -> ErrorCode {
        self.counters.denied += 1;
        if allow_warning(&mut self.logged, self.session, "policy") {
            tracing::warn!(session = self.session, request = rid.0, %addr, rule = %d, "{what} denied by policy");
        }
        ErrorCode::PermissionDenied
    }

    /// Counts and logs a refusal by limit; the code to reply with.
    pub(super) fn over_quota(
        &mut self,
        rid: Option<RequestId>,
        what: &str,
        limit: &str,
        value: u64,
    ) -> ErrorCode {
        self.counters.quota_hits += 1;
        if allow_warning(&mut self.logged, self.session, "policy") {
            tracing::warn!(
                session = self.session,
                request = rid.map(|r| r.0),
                "{what} refused: {limit} quota of {value} reached"
            );
        }
        ErrorCode::QuotaExceeded
    }

    /// Rule, then limits, then rate: may a connect to `addr` go ahead now,
    /// with `in_flight` requests already waiting?
    pub(super) fn connect(
        &mut self,
        now: Instant,
        rid: RequestId,
        addr: SocketAddr,
        in_flight: u64,
    ) -> Result<(), ErrorCode> {
        let d = self
            .policy
            .outbound_learned(addr, Proto::Tcp, &self.learned, now);
        if !d.allowed {
            return Err(self.deny(rid, "connect", &addr, d));
        }
        if d.learned {
            tracing::debug!(session = self.session, request = rid.0, %addr, rule = %d, "connect allowed by a name");
        }
        self.request(rid, "connect", in_flight)?;
        let conns = self.policy.limits.connections;
        if self.tcp >= conns {
            return Err(self.over_quota(Some(rid), "connect", "connections", u64::from(conns)));
        }
        if !self.rate.try_take(now) {
            let rate = u64::from(self.policy.limits.connect_rate);
            return Err(self.over_quota(Some(rid), "connect", "new connections per second", rate));
        }
        Ok(())
    }

    /// Rule, then limits, then rate: may the guest resolve `name` (canonical form) now, with
    /// `in_flight` requests and `resolving` resolutions waiting? `Ok` carries the outbound
    /// rule whose names allow it (its answers are learned for that rule), `None` when no rule
    /// names it (resolved; the answers allow nothing by themselves).
    pub(super) fn resolve(
        &mut self,
        now: Instant,
        rid: RequestId,
        name: &str,
        in_flight: u64,
        resolving: usize,
    ) -> Result<Option<usize>, ErrorCode> {
        let d = self.policy.resolve(name);
        if !d.allowed {
            return Err(self.deny(rid, "resolve", &name, d));
        }
        self.request(rid, "resolve", in_flight)?;
        let limit = self.policy.limits.resolves_in_flight;
        if resolving >= limit as usize {
            return Err(self.over_quota(
                Some(rid),
                "resolve",
                "resolves in flight",
                u64::from(limit),
            ));
        }
        if !self.resolve_rate.try_take(now) {
            let rate = u64::from(self.policy.limits.resolve_rate);
            return Err(self.over_quota(Some(rid), "resolve", "resolves per second", rate));
        }
        Ok(d.rule)
    }

    /// May one more request wait for its answer, with `in_flight` waiting?
    pub(super) fn request(
        &mut self,
        rid: RequestId,
        what: &str,
        in_flight: u64,
    ) -> Result<(), ErrorCode> {
        let limit = u64::from(self.policy.limits.requests_in_flight);
        if in_flight >= limit {
            return Err(self.over_quota(Some(rid), what, "requests in flight", limit));
        }
        Ok(())
    }

    /// May the session listen on `addr`, holding `listeners` already?
    pub(super) fn listen(
        &mut self,
        rid: RequestId,
        addr: SocketAddr,
        listeners: usize,
    ) -> Result<(), ErrorCode> {
        let d = self.policy.listen(addr, Proto::Tcp);
        if !d.allowed {
            return Err(self.deny(rid, "listen", &addr, d));
        }
        let limit = self.policy.limits.listeners;
        if listeners >= limit as usize {
            return Err(self.over_quota(Some(rid), "listen", "listeners", u64::from(limit)));
        }
        Ok(())
    }

    /// May the session bind a UDP socket to `addr`?
    pub(super) fn udp_bind(&mut self, rid: RequestId, addr: SocketAddr) -> Result<(), ErrorCode> {
        let d = self.policy.listen(addr, Proto::Udp);
        if !d.allowed {
            return Err(self.deny(rid, "udp bind", &addr, d));
        }
        let limit = self.policy.limits.udp_sockets;
        if self.udp >= limit {
            return Err(self.over_quota(Some(rid), "udp bind", "udp sockets", u64::from(limit)));
        }
        Ok(())
    }

    /// May one more connection be accepted for the guest?
    pub(super) fn incoming(&mut self, rid: RequestId) -> Result<(), ErrorCode> {
        let limit = self.policy.limits.connections;
        if self.tcp >= limit {
            self.counters.accepts_refused += 1;
            let what = "incoming connection";
            return Err(self.over_quota(Some(rid), what, "connections", u64::from(limit)));
        }
        Ok(())
    }

    /// Does a pipe block of `block` bytes fit the pipe memory limit, with
    /// `used` bytes of data pipes held? The buddy allocator hands out
    /// power-of-two blocks of 4 KiB or more.
    pub(super) fn pipe_fits(&self, used: u64, block: u64) -> bool {
        let Some(limit) = self.policy.limits.pipe_memory else {
            return true;
        };
        let block = block
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(4096);
        used.saturating_add(block) <= limit
    }

    /// The pipe memory limit, for refusals.
    pub(super) fn pipe_memory_limit(&self) -> u64 {
        self.policy.limits.pipe_memory.unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(text: &str) -> Arc<Policy> {
        Arc::new(Policy::from_toml(text, "test").unwrap())
    }

    const OPEN: &str = "[[outbound]]\naction = \"allow\"\nnets = [\"0.0.0.0/0\"]\n";

    #[test]
    fn a_connect_is_judged_by_rule_then_in_flight_then_connections_then_rate() {
        let p = policy(&format!(
            "[limits]\nconnections = 2\nrequests_in_flight = 3\nconnect_rate = 1\nconnect_burst = 2\n\
             [[outbound]]\naction = \"deny\"\nnets = [\"10.0.0.0/8\"]\n{OPEN}"
        ));
        let mut a = Admission::new(1, p);
        let t0 = Instant::now();
        let rid = RequestId(1);
        let to = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            a.connect(t0, rid, to("10.1.2.3:80"), 0),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(a.counters.denied, 1);
        assert_eq!(
            a.connect(t0, rid, to("192.0.2.1:80"), 3),
            Err(ErrorCode::QuotaExceeded),
            "requests in flight"
        );
        a.tcp = 2;
        assert_eq!(
            a.connect(t0, rid, to("192.0.2.1:80"), 0),
            Err(ErrorCode::QuotaExceeded),
            "connections"
        );
        a.tcp = 0;
        // A burst of two, then one a second: time is the caller's.
        assert_eq!(a.connect(t0, rid, to("192.0.2.1:80"), 0), Ok(()));
        assert_eq!(a.connect(t0, rid, to("192.0.2.1:80"), 0), Ok(()));
        assert_eq!(
            a.connect(t0, rid, to("192.0.2.1:80"), 0),
            Err(ErrorCode::QuotaExceeded),
            "rate"
        );
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(a.connect(later, rid, to("192.0.2.1:80"), 0), Ok(()));
        assert_eq!(a.counters.quota_hits, 3);
    }

    #[test]
    fn listeners_udp_sockets_and_incoming_connections_count_against_their_limits() {
        let p = policy(
            "[limits]\nlisteners = 1\nudp_sockets = 1\nconnections = 1\n\
             [[listen]]\naction = \"allow\"\nnets = [\"127.0.0.1\"]\n",
        );
        let mut a = Admission::new(1, p);
        let rid = RequestId(9);
        let local = "127.0.0.1:0".parse().unwrap();
        let other = "192.0.2.1:0".parse().unwrap();
        assert_eq!(a.listen(rid, local, 0), Ok(()));
        assert_eq!(a.listen(rid, local, 1), Err(ErrorCode::QuotaExceeded));
        assert_eq!(a.listen(rid, other, 0), Err(ErrorCode::PermissionDenied));
        assert_eq!(a.udp_bind(rid, local), Ok(()));
        a.udp = 1;
        assert_eq!(a.udp_bind(rid, local), Err(ErrorCode::QuotaExceeded));
        assert_eq!(a.incoming(rid), Ok(()));
        a.tcp = 1;
        assert_eq!(a.incoming(rid), Err(ErrorCode::QuotaExceeded));
        assert_eq!(a.counters.accepts_refused, 1);
    }

    #[test]
    fn pipe_memory_counts_whole_power_of_two_blocks() {
        let mut a = Admission::new(1, policy("[limits]\npipe_memory = 1048576\n"));
        assert!(
            a.pipe_fits(0, 600 << 10),
            "rounds up to 1 MiB: fits exactly"
        );
        assert!(!a.pipe_fits(4096, 600 << 10));
        assert!(a.pipe_fits(0, 1), "at least 4 KiB");
        a.policy = policy("");
        assert!(a.pipe_fits(u64::MAX - 1, 1 << 30), "no limit");
    }
}
