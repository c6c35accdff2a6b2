//! The sans-IO receiver core: greeting, rounds, packet slots, checks, repairs, deadlines.
//!
//! # Call order
//! 1. [`Receiver::new`]; feed every byte from the sender's TCP connection to
//!    [`Receiver::handle_tcp`] and every datagram from the group to
//!    [`Receiver::handle_datagram`]; call [`Receiver::handle_timeout`] when
//!    [`Receiver::poll_timeout`] passes. A returned `Err` ends the transfer.
//! 2. Drain [`Receiver::poll_action`] after each call. On [`RecvAction::Join`], join the group;
//!    on [`RecvAction::SendTcp`], send the bytes; on [`RecvAction::Deliver`], write
//!    [`Receiver::output`] in order, then call [`Receiver::handle_delivered`]; on
//!    [`RecvAction::Finished`], the transfer is complete.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wire::{
    self, BufferHeader, ExtHello, Greeting, PacketHeader, SenderMsg, WireError, CAP_CHECKS,
    CAP_SIZE, CHECK_LEN, CLIENT_DONE, CLIENT_READY, EXT_MAX_PAYLOAD, EXT_VERSION, GREET_FLAG_FULL,
    PACKET_HEADER_LEN, PLAIN_MAX_PAYLOAD,
};

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Longest silence from the sender while it works for this receiver; twice this plus one
    /// second while it may be waiting on other receivers (it drops those after its own
    /// deadline).
    pub deadline: Duration,
    /// Speak the extensions when the sender offers them.
    pub extensions: bool,
    /// Largest round (packets × slot size) accepted, in bytes.
    pub max_round_bytes: usize,
    /// After SERVER_SENT with packets missing, the least time to keep taking datagrams
    /// before asking for repairs (datagrams may trail the TCP signal through a relay). The
    /// window used is learnt: 1.5 × the latest a datagram of the last [`SPREAD_ROUNDS`]
    /// rounds arrived after its round's SERVER_SENT, at least `settle`, at most
    /// `settle_max`.
    pub settle: Duration,
    /// The longest settle window; zero asks for repairs at SERVER_SENT, learning nothing.
    pub settle_max: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            deadline: Duration::from_secs(10),
            extensions: true,
            max_round_bytes: 1 << 30,
            settle: Duration::from_millis(3),
            settle_max: Duration::from_millis(50),
        }
    }
}

/// Why a transfer failed at the receiver.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RecvError {
    /// The sender refused this receiver.
    #[error("transfer is full (the sender already has all its receivers)")]
    Full,
    /// The sender broke the wire format.
    #[error("sender protocol error: {0}")]
    Wire(#[from] WireError),
    /// The sender broke the protocol's order or limits.
    #[error("sender protocol error: {0}")]
    Protocol(String),
    /// The sender went silent.
    #[error("deadline: nothing from the sender for {0:.1} s")]
    Deadline(f64),
    /// The sender closed the connection before the end.
    #[error("sender closed the connection before the end of the transfer")]
    Closed,
    /// The whole-transfer digest does not match what was written.
    #[error("transfer digest mismatch: sender {sender}, received {received}")]
    Digest {
        /// Sender's SHA-256 (hex).
        sender: String,
        /// Ours (hex).
        received: String,
    },
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvAction {
    /// Join this group (bind its port) on the local interface.
    Join(SocketAddrV4),
    /// Send these bytes to the sender.
    SendTcp(Vec<u8>),
    /// Write [`Receiver::output`] in order, then call [`Receiver::handle_delivered`].
    Deliver,
    /// The transfer completed.
    Finished,
}

/// Counters of a transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvStats {
    /// Bytes delivered.
    pub bytes: u64,
    /// Packets delivered.
    pub packets: u64,
    /// Packets obtained through repair.
    pub repaired: u64,
    /// Datagrams for a packet already held (or for another round).
    pub duplicates: u64,
    /// Datagrams failing a check (length, additive sum, strong check, oversize).
    pub rejected: u64,
    /// Datagrams received from the group.
    pub datagrams: u64,
    /// SHA-256 of the delivered bytes (valid once finished).
    pub sha256: [u8; 32],
    /// Whether the extensions were in use.
    pub extended: bool,
    /// Datagrams that arrived after this receiver had asked for their repair (each one
    /// repaired and received: the settle window was too short for it).
    pub late: u64,
    /// The settle window the next round would use.
    pub settle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Header,
    /// Extended rounds ≥ 2: waiting for EXT_ROUND before CLIENT_READY.
    RoundInfo,
    Receiving,
    /// The round's digest did not match: waiting for EXT_CHECKS.
    AwaitChecks,
    Repairing,
    Delivering,
    Finished,
}

const EMPTY: u8 = 0;
const HELD: u8 = 1;
/// Rounds whose arrival spread the settle window covers.
pub const SPREAD_ROUNDS: usize = 8;
/// Repair requests per round before giving up.
const MAX_REQUESTS: u32 = 16;

/// The receiver state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    state: State,
    ext: bool,
    inbuf: Vec<u8>,
    actions: VecDeque<RecvAction>,
    round: BufferHeader,
    first_round: bool,
    slot: usize,
    data: Vec<u8>,
    lens: Vec<u32>,
    marks: Vec<u8>,
    /// Slots this receiver asked to be repaired this round.
    asked: Vec<bool>,
    held: u32,
    checks: Vec<[u8; CHECK_LEN]>,
    round_digest: Option<[u8; 32]>,
    sent_seen: bool,
    expect: VecDeque<u32>,
    requests: u32,
    end: Option<([u8; 32], u64)>,
    out: Vec<Range<usize>>,
    /// SHA-256 of everything delivered before this round.
    sha: Sha256,
    /// `sha` extended over this round's first `hashed` slots (hashed while packets arrive,
    /// so little is left to hash when the round completes).
    next_sha: Sha256,
    hashed: usize,
    last_heard: Instant,
    now: Instant,
    settle_until: Option<Instant>,
    /// Whether this round's settle time was granted.
    settled: bool,
    /// When this round's SERVER_SENT arrived.
    sent_at: Option<Instant>,
    /// The latest a datagram of this round arrived after its SERVER_SENT.
    late_max: Duration,
    /// `late_max` of the previous rounds, newest last.
    spread: VecDeque<Duration>,
    /// An error found while handling a datagram, reported by the next `handle_*` call.
    failed: Option<RecvError>,
    /// Whether the sender may be waiting on other receivers (longer patience).
    patient: bool,
    /// Whether EXT_SIZE may come now: from our EXT_HELLO to the first round's EXT_ROUND.
    size_window: bool,
    /// The transfer's length as the sender announced it (EXT_SIZE).
    expected: Option<u64>,
    stats: RecvStats,
}

impl Receiver {
    /// A receiver that has just connected at `now`.
    pub fn new(cfg: ReceiverConfig, now: Instant) -> Receiver {
        let settle = cfg.settle.min(cfg.settle_max);
        Receiver {
            cfg,
            state: State::Greeting,
            ext: false,
            inbuf: Vec::new(),
            actions: VecDeque::new(),
            round: BufferHeader::default(),
            first_round: true,
            slot: PLAIN_MAX_PAYLOAD,
            data: Vec::new(),
            lens: Vec::new(),
            marks: Vec::new(),
            asked: Vec::new(),
            held: 0,
            checks: Vec::new(),
            round_digest: None,
            sent_seen: false,
            expect: VecDeque::new(),
            requests: 0,
            end: None,
            out: Vec::new(),
            sha: Sha256::new(),
            next_sha: Sha256::new(),
            hashed: 0,
            last_heard: now,
            now,
            settle_until: None,
            settled: false,
            sent_at: None,
            late_max: Duration::ZERO,
            spread: VecDeque::new(),
            failed: None,
            patient: true,
            size_window: false,
            expected: None,
            stats: RecvStats {
                settle,
                ..RecvStats::default()
            },
        }
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<RecvAction> {
        self.actions.pop_front()
    }

    /// Counters so far.
    pub fn stats(&self) -> &RecvStats {
        &self.stats
    }

    /// Whether the transfer completed.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The round's payload to write on [`RecvAction::Deliver`], as slices in order.
    pub fn output(&self) -> impl Iterator<Item = &[u8]> {
        self.out.iter().filter_map(|r| self.data.get(r.clone()))
    }

    /// The transfer's length as an extended sender announced it before the first round, for
    /// a progress display; `None` from a plain sender or for input of unknown length. Only
    /// EXT_END's length is checked against what arrived.
    pub fn expected_bytes(&self) -> Option<u64> {
        self.expected
    }

    /// The largest payload this receiver may see in the current round.
    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// When [`Receiver::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Finished | State::Delivering => None,
            _ => {
                let d = self.last_heard + self.patience();
                Some(self.settle_until.map_or(d, |s| s.min(d)))
            }
        }
    }

    fn patience(&self) -> Duration {
        if self.patient {
            self.cfg.deadline * 2 + Duration::from_secs(1)
        } else {
            self.cfg.deadline
        }
    }

    /// Time passed.
    ///
    /// # Errors
    /// [`RecvError::Deadline`] when the sender has been silent too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), RecvError> {
        self.now = now.max(self.now);
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if matches!(self.state, State::Finished | State::Delivering) {
            return Ok(());
        }
        if self.settle_until.is_some_and(|t| now >= t) {
            self.settle_until = None;
            self.after_sent()?;
        }
        let p = self.patience();
        if now.saturating_duration_since(self.last_heard) >= p {
            return Err(RecvError::Deadline(p.as_secs_f64()));
        }
        Ok(())
    }

    /// The sender closed its connection.
    ///
    /// # Errors
    /// [`RecvError::Closed`] unless the transfer had finished.
    pub fn handle_tcp_closed(&mut self) -> Result<(), RecvError> {
        if self.state == State::Finished {
            Ok(())
        } else {
            Err(RecvError::Closed)
        }
    }

    /// Bytes from the sender's TCP connection.
    ///
    /// # Errors
    /// A [`RecvError`] when the sender breaks the protocol or refuses this receiver.
    pub fn handle_tcp(&mut self, bytes: &[u8], now: Instant) -> Result<(), RecvError> {
        self.last_heard = now;
        self.now = now.max(self.now);
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.inbuf.extend_from_slice(bytes);
        let mut at = 0;
        let r = self.parse_tcp(&mut at);
        self.inbuf.drain(..at.min(self.inbuf.len()));
        r
    }

    fn parse_tcp(&mut self, at: &mut usize) -> Result<(), RecvError> {
        loop {
            let rest = self.inbuf.get(*at..).unwrap_or(&[]);
            if rest.is_empty() {
                return Ok(());
            }
            match self.state {
                State::Greeting => {
                    let Some((g, used)) = Greeting::parse(rest)? else {
                        return Ok(());
                    };
                    *at += used;
                    if let Some(e) = g.ext {
                        if e.flags & GREET_FLAG_FULL != 0 {
                            return Err(RecvError::Full);
                        }
                        self.ext = self.cfg.extensions && e.version == EXT_VERSION;
                        self.stats.extended = self.ext;
                    }
                    self.actions.push_back(RecvAction::Join(g.group));
                    self.state = State::Header;
                }
                State::Header => {
                    let Some((h, used)) = BufferHeader::parse(rest)? else {
                        return Ok(());
                    };
                    *at += used;
                    self.start_round(h)?;
                }
                State::Repairing => {
                    let Some(ph) = PacketHeader::parse(rest) else {
                        return Ok(());
                    };
                    if ph.data_size as usize > self.slot {
                        return Err(RecvError::Protocol(format!(
                            "repair of seq {} carries {} bytes, more than the round's {}",
                            ph.seq, ph.data_size, self.slot
                        )));
                    }
                    let len = PACKET_HEADER_LEN + ph.data_size as usize;
                    if rest.len() < len {
                        return Ok(());
                    }
                    let want = self.expect.pop_front();
                    if want != Some(ph.seq) {
                        return Err(RecvError::Protocol(format!(
                            "repair answered seq {}, expected {:?}",
                            ph.seq, want
                        )));
                    }
                    let start = *at;
                    *at += len;
                    // Move the packet out of inbuf's borrow: index math only.
                    self.repair_from_inbuf(start, len);
                    if self.expect.is_empty() {
                        self.after_sent()?;
                    }
                }
                State::RoundInfo | State::Receiving | State::AwaitChecks => {
                    let Some((m, used)) = SenderMsg::parse(rest)? else {
                        return Ok(());
                    };
                    *at += used;
                    self.on_sender_msg(m)?;
                }
                State::Delivering | State::Finished => {
                    return Err(RecvError::Protocol(format!(
                        "{} unexpected bytes from the sender",
                        rest.len()
                    )));
                }
            }
        }
    }

    fn start_round(&mut self, h: BufferHeader) -> Result<(), RecvError> {
        if self.sent_at.take().is_some() {
            if self.spread.len() == SPREAD_ROUNDS {
                self.spread.pop_front();
            }
            self.spread.push_back(self.late_max);
            self.stats.settle = self.settle_window();
        }
        self.late_max = Duration::ZERO;
        self.round = h;
        self.sent_seen = false;
        self.settled = false;
        self.settle_until = None;
        self.requests = 0;
        self.checks.clear();
        self.round_digest = None;
        self.end = None;
        self.restart_hash();
        self.held = 0;
        self.slot = PLAIN_MAX_PAYLOAD;
        let n = h.pkt_count as usize;
        self.lens.clear();
        self.lens.resize(n, 0);
        self.marks.clear();
        self.marks.resize(n, EMPTY);
        self.asked.clear();
        self.asked.resize(n, false);
        let mut ready = Vec::with_capacity(9);
        if self.ext && self.first_round {
            ready.extend_from_slice(
                &ExtHello {
                    version: EXT_VERSION,
                    caps: CAP_CHECKS | CAP_SIZE,
                    max_payload: EXT_MAX_PAYLOAD as u32,
                }
                .encode(),
            );
            self.size_window = true;
        }
        let wait_info = self.ext && !self.first_round && n > 0;
        self.first_round = false;
        if wait_info {
            self.state = State::RoundInfo;
            self.patient = false;
        } else {
            self.ensure_room()?;
            ready.push(CLIENT_READY);
            self.actions.push_back(RecvAction::SendTcp(ready));
            self.state = State::Receiving;
            self.patient = true;
        }
        Ok(())
    }

    fn ensure_room(&mut self) -> Result<(), RecvError> {
        let n = self.round.pkt_count as usize;
        let need = n.saturating_mul(self.slot);
        if need > self.cfg.max_round_bytes {
            return Err(RecvError::Protocol(format!(
                "round of {n} packets × {} bytes exceeds the {} byte limit",
                self.slot, self.cfg.max_round_bytes
            )));
        }
        if self.round.buffer_size as usize > need {
            return Err(RecvError::Protocol(format!(
                "buffer_size {} exceeds {n} packets × {} bytes",
                self.round.buffer_size, self.slot
            )));
        }
        if self.data.len() < need {
            self.data.resize(need, 0);
        }
        Ok(())
    }

    fn on_sender_msg(&mut self, m: SenderMsg) -> Result<(), RecvError> {
        if !self.ext && m != SenderMsg::Sent {
            return Err(RecvError::Protocol(
                "extension message from a sender that did not offer extensions".into(),
            ));
        }
        match m {
            SenderMsg::Round {
                payload_size,
                digest,
            } => {
                if self.round_digest.is_some() || self.round.pkt_count == 0 {
                    return Err(RecvError::Protocol("EXT_ROUND out of turn".into()));
                }
                self.round_digest = Some(digest);
                self.size_window = false;
                if self.state == State::RoundInfo {
                    self.slot = payload_size as usize;
                    self.ensure_room()?;
                    self.actions
                        .push_back(RecvAction::SendTcp(vec![CLIENT_READY]));
                    self.state = State::Receiving;
                    self.patient = true;
                } else if payload_size as usize > self.slot {
                    return Err(RecvError::Protocol(format!(
                        "EXT_ROUND payload size {payload_size} above {} in the first round",
                        self.slot
                    )));
                }
            }
            SenderMsg::Size { total } => {
                if !self.size_window || self.expected.is_some() {
                    return Err(RecvError::Protocol(
                        "EXT_SIZE outside the first round's start".into(),
                    ));
                }
                self.expected = Some(total);
            }
            SenderMsg::Checks(checks) => {
                if self.state != State::AwaitChecks || checks.len() != self.round.pkt_count as usize
                {
                    return Err(RecvError::Protocol(format!(
                        "EXT_CHECKS ({} checks) out of turn for a round of {} packets",
                        checks.len(),
                        self.round.pkt_count
                    )));
                }
                self.checks = checks;
                self.discard_failing();
                self.state = State::Receiving;
                self.after_sent()?;
            }
            SenderMsg::End { sha256, total } => {
                if self.round.pkt_count != 0 || self.state != State::Receiving {
                    return Err(RecvError::Protocol("EXT_END before the last round".into()));
                }
                self.end = Some((sha256, total));
            }
            SenderMsg::Sent => {
                if self.state != State::Receiving || self.sent_seen {
                    return Err(RecvError::Protocol("SERVER_SENT out of turn".into()));
                }
                self.sent_seen = true;
                self.sent_at = Some(self.now);
                self.patient = false;
                self.after_sent()?;
            }
        }
        Ok(())
    }

    /// After SERVER_SENT or a batch of repairs: verify, then ask again or deliver.
    fn after_sent(&mut self) -> Result<(), RecvError> {
        if self.ext && self.round.pkt_count > 0 && self.round_digest.is_none() {
            return Err(RecvError::Protocol(
                "extended sender sent no EXT_ROUND for the round".into(),
            ));
        }
        if self.held < self.round.pkt_count {
            let window = self.settle_window();
            if !self.settled && !window.is_zero() && self.state == State::Receiving {
                self.settled = true;
                self.settle_until = Some(self.now + window);
                return Ok(());
            }
            if self.requests >= MAX_REQUESTS {
                return Err(RecvError::Protocol(format!(
                    "packets still missing after {MAX_REQUESTS} repair requests"
                )));
            }
            self.requests += 1;
            let base = self.round.packet_id_base;
            let mut missing = Vec::new();
            for (i, &m) in self.marks.iter().enumerate() {
                if m != HELD {
                    self.asked[i] = true;
                    missing.push(base.wrapping_add(i as u32));
                }
            }
            let mut b = Vec::new();
            wire::encode_req(&missing, &mut b);
            self.expect = missing.into();
            self.actions.push_back(RecvAction::SendTcp(b));
            self.state = State::Repairing;
            return Ok(());
        }
        self.deliver()
    }

    fn deliver(&mut self) -> Result<(), RecvError> {
        let total: u64 = self.lens.iter().map(|&l| u64::from(l)).sum();
        if total != u64::from(self.round.buffer_size) {
            // A datagram of the wrong length (forged or corrupted) took a slot. An extended
            // sender can tell us which: ask for the per-packet checks, as for a bad digest.
            if self.round_digest.is_some() && self.checks.is_empty() {
                self.need_checks();
                return Ok(());
            }
            return Err(RecvError::Protocol(format!(
                "round carried {total} bytes, its header said {}",
                self.round.buffer_size
            )));
        }
        // Coalesce slots into runs: a full slot continues the run into the next one.
        self.out.clear();
        let mut run: Option<Range<usize>> = None;
        for (i, &l) in self.lens.iter().enumerate() {
            let start = i * self.slot;
            let end = start + l as usize;
            run = match run {
                Some(r) if r.end == start => Some(r.start..end),
                Some(r) => {
                    self.out.push(r);
                    Some(start..end)
                }
                None => Some(start..end),
            };
        }
        self.out.extend(run);
        self.hash_prefix();
        if let Some(want) = self.round_digest {
            let got: [u8; 32] = self.next_sha.clone().finalize().into();
            if got != want {
                self.out.clear();
                self.restart_hash();
                if !self.checks.is_empty() {
                    return Err(RecvError::Digest {
                        sender: wire::hex(&want),
                        received: wire::hex(&got),
                    });
                }
                // Something forged or corrupted got in: ask for per-packet checks.
                self.need_checks();
                return Ok(());
            }
        }
        self.sha = self.next_sha.clone();
        self.stats.bytes += u64::from(self.round.buffer_size);
        self.stats.packets += u64::from(self.round.pkt_count);
        if self.round.pkt_count == 0 {
            self.stats.sha256 = self.sha.clone().finalize().into();
            if self.ext {
                let Some((sha, total)) = self.end else {
                    return Err(RecvError::Protocol(
                        "extended sender sent no EXT_END digest".into(),
                    ));
                };
                if sha != self.stats.sha256 || total != self.stats.bytes {
                    return Err(RecvError::Digest {
                        sender: wire::hex(&sha),
                        received: wire::hex(&self.stats.sha256),
                    });
                }
            }
            self.actions
                .push_back(RecvAction::SendTcp(vec![CLIENT_DONE]));
            self.actions.push_back(RecvAction::Finished);
            self.state = State::Finished;
            return Ok(());
        }
        self.state = State::Delivering;
        self.actions.push_back(RecvAction::Deliver);
        Ok(())
    }

    /// The round cannot be verified as received: asks the sender for per-packet checks
    /// (DAISY-EXT.md), which tell the bad slots apart so they can be repaired.
    fn need_checks(&mut self) {
        self.out.clear();
        self.restart_hash();
        self.actions
            .push_back(RecvAction::SendTcp(vec![wire::EXT_NEED_CHECKS]));
        self.state = State::AwaitChecks;
        self.patient = false;
    }

    /// The round's output was written; tells the sender.
    pub fn handle_delivered(&mut self, now: Instant) {
        if self.state != State::Delivering {
            return;
        }
        self.out.clear();
        self.last_heard = now;
        self.patient = true;
        self.state = State::Header;
        self.actions
            .push_back(RecvAction::SendTcp(vec![CLIENT_DONE]));
    }

    /// A datagram from the group.
    pub fn handle_datagram(&mut self, d: &[u8], now: Instant) {
        self.stats.datagrams += 1;
        self.now = now.max(self.now);
        let (h, payload) = match wire::parse_datagram(d) {
            Ok(x) => x,
            Err(_) => {
                self.stats.rejected += 1;
                return;
            }
        };
        let off = h.seq.wrapping_sub(self.round.packet_id_base);
        if let (Some(t), true) = (self.sent_at, off < self.round.pkt_count) {
            // A datagram of this round after its SERVER_SENT: how late datagrams trail.
            self.late_max = self.late_max.max(now.saturating_duration_since(t));
            if self.asked.get(off as usize) == Some(&true) {
                self.stats.late += 1;
            }
        }
        if self.state != State::Receiving || (self.sent_seen && self.settle_until.is_none()) {
            self.stats.duplicates += 1;
            return;
        }
        if off >= self.round.pkt_count {
            self.stats.duplicates += 1;
            return;
        }
        let i = off as usize;
        if payload.len() > self.slot {
            self.stats.rejected += 1;
            return;
        }
        self.last_heard = now;
        if self.marks.get(i) != Some(&EMPTY) {
            self.stats.duplicates += 1;
            return;
        }
        // With the round's per-packet checks in hand (after a bad digest), nothing unchecked
        // gets a slot again.
        if !self.checks.is_empty()
            && self.checks.get(i) != Some(&wire::strong_check(h.seq, payload))
        {
            self.stats.rejected += 1;
            return;
        }
        self.store(i, payload);
        if i == self.hashed {
            self.hash_prefix();
        }
        if self.settle_until.is_some() && self.held == self.round.pkt_count {
            self.settle_until = None;
            if let Err(e) = self.after_sent() {
                self.failed = Some(e);
            }
        }
    }

    /// How long to keep taking datagrams after SERVER_SENT before asking for repairs: 1.5 ×
    /// the latest arrival after SERVER_SENT over the last [`SPREAD_ROUNDS`] rounds, within
    /// the configured bounds.
    fn settle_window(&self) -> Duration {
        if self.cfg.settle_max.is_zero() {
            return Duration::ZERO;
        }
        let learnt = self.spread.iter().max().copied().unwrap_or_default() * 3 / 2;
        learnt.max(self.cfg.settle).min(self.cfg.settle_max)
    }

    fn store(&mut self, i: usize, payload: &[u8]) {
        let start = i * self.slot;
        if let Some(dst) = self.data.get_mut(start..start + payload.len()) {
            dst.copy_from_slice(payload);
            if self.marks[i] != HELD {
                self.held += 1;
            }
            self.marks[i] = HELD;
            self.lens[i] = payload.len() as u32;
        }
    }

    /// Extends `next_sha` over the held slots that follow the hashed prefix.
    fn hash_prefix(&mut self) {
        while let Some(&HELD) = self.marks.get(self.hashed) {
            let start = self.hashed * self.slot;
            let len = self.lens.get(self.hashed).map_or(0, |&l| l as usize);
            if let Some(d) = self.data.get(start..start + len) {
                self.next_sha.update(d);
            }
            self.hashed += 1;
        }
    }

    /// Forgets this round's hashing (its slots changed or were found bad).
    fn restart_hash(&mut self) {
        self.next_sha = self.sha.clone();
        self.hashed = 0;
    }

    /// With per-packet checks in hand, empties every held slot whose check fails.
    fn discard_failing(&mut self) {
        self.restart_hash();
        let base = self.round.packet_id_base;
        for i in 0..self.marks.len() {
            if self.marks[i] != HELD {
                continue;
            }
            let start = i * self.slot;
            let ok = self
                .data
                .get(start..start + self.lens[i] as usize)
                .zip(self.checks.get(i))
                .is_some_and(|(p, c)| wire::strong_check(base.wrapping_add(i as u32), p) == *c);
            if !ok {
                self.stats.rejected += 1;
                self.marks[i] = EMPTY;
                self.lens[i] = 0;
                self.held -= 1;
            }
        }
    }

    fn repair_from_inbuf(&mut self, start: usize, len: usize) {
        let Some(pkt) = self.inbuf.get(start..start + len) else {
            return;
        };
        let Some(h) = PacketHeader::parse(pkt) else {
            return;
        };
        let payload = &pkt[PACKET_HEADER_LEN..];
        let off = h.seq.wrapping_sub(self.round.packet_id_base);
        if h.data_size == 0 || off >= self.round.pkt_count || wire::additive_sum(payload) != h.crc {
            self.stats.rejected += 1;
            return;
        }
        let i = off as usize;
        if !self.checks.is_empty()
            && self.checks.get(i) != Some(&wire::strong_check(h.seq, payload))
        {
            self.stats.rejected += 1;
            return;
        }
        if self.marks.get(i) == Some(&HELD) {
            self.stats.duplicates += 1;
            return;
        }
        // Copy out of inbuf first (the borrow), then store.
        let payload = payload.to_vec();
        self.store(i, &payload);
        self.stats.repaired += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{GreetingExt, EXT_HELLO_LEN};
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// An extended receiver that has read the greeting and round 1's header (one packet of
    /// three bytes), with the EXT_HELLO it answered.
    fn at_round_one() -> (Receiver, ExtHello, Instant) {
        let t = Instant::now();
        let mut r = Receiver::new(ReceiverConfig::default(), t);
        let g = Greeting {
            group: SocketAddrV4::new(Ipv4Addr::new(224, 238, 0, 9), 18383),
            ext: Some(GreetingExt {
                version: EXT_VERSION,
                flags: 0,
            }),
        };
        let h = BufferHeader {
            buffer_id: 1,
            buffer_size: 3,
            packet_id_base: 0,
            pkt_count: 1,
        };
        let mut b = g.encode().to_vec();
        b.extend_from_slice(&h.encode());
        r.handle_tcp(&b, t).unwrap();
        let sent = std::iter::from_fn(|| r.poll_action())
            .find_map(|a| match a {
                RecvAction::SendTcp(b) => Some(b),
                _ => None,
            })
            .expect("EXT_HELLO and CLIENT_READY");
        assert_eq!(sent.len(), EXT_HELLO_LEN + 1);
        let hello = ExtHello {
            version: sent[1],
            caps: sent[2],
            max_payload: u32::from_le_bytes([sent[4], sent[5], sent[6], sent[7]]),
        };
        (r, hello, t)
    }

    #[test]
    fn the_announced_size_is_taken_before_the_first_round_info() {
        let (mut r, hello, t) = at_round_one();
        assert_eq!(hello.caps & (CAP_CHECKS | CAP_SIZE), CAP_CHECKS | CAP_SIZE);
        assert_eq!(r.expected_bytes(), None);
        let digest: [u8; 32] = Sha256::digest(b"abc").into();
        let mut b = wire::encode_size(3).to_vec();
        b.extend_from_slice(&wire::encode_round(3, &digest));
        r.handle_tcp(&b, t).unwrap();
        assert_eq!(r.expected_bytes(), Some(3));
    }

    #[test]
    fn a_size_after_the_round_info_or_twice_is_a_protocol_error() {
        let digest: [u8; 32] = Sha256::digest(b"abc").into();
        let (mut r, _, t) = at_round_one();
        r.handle_tcp(&wire::encode_round(3, &digest), t).unwrap();
        assert!(matches!(
            r.handle_tcp(&wire::encode_size(3), t),
            Err(RecvError::Protocol(_))
        ));
        let (mut r, _, t) = at_round_one();
        let mut b = wire::encode_size(3).to_vec();
        b.extend_from_slice(&wire::encode_size(3));
        assert!(matches!(r.handle_tcp(&b, t), Err(RecvError::Protocol(_))));
    }
}
