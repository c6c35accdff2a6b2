//! The sans-IO sender core: rounds, receiver bookkeeping, repairs, deadlines and pacing.
//!
//! No sockets, clocks or files: the shell feeds events and drains actions.
//!
//! # Call order
//! 1. [`Sender::new`]. For each accepted connection call [`Sender::handle_connect`]; a refused
//!    one (`Err(Full)`) gets [`Sender::full_greeting`] and is closed by the shell.
//! 2. After every event — TCP bytes ([`Sender::handle_tcp`]), a lost connection
//!    ([`Sender::handle_closed`]), a filled buffer ([`Sender::handle_filled`]) — and whenever
//!    [`Sender::poll_timeout`] passes, call [`Sender::handle_timeout`] with the time now, then
//!    drain [`Sender::poll_action`] until `None`.
//! 3. On [`Action::Fill`], read input into [`Sender::buffer_mut`] (until full or end of input)
//!    and report the count with `handle_filled`. On [`Action::Multicast`], send the packets
//!    [`Sender::datagram`] describes. On [`Action::Finished`], stop; [`Sender::stats`] tells
//!    how it went.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wire::{
    self, BufferHeader, ExtHello, Greeting, GreetingExt, PacketHeader, ReceiverMsg, CAP_CHECKS,
    CAP_SIZE, CHECK_LEN, EXT_MAX_PAYLOAD, EXT_VERSION, GREET_FLAG_FULL, MAX_PACKETS_PER_BUFFER,
    PACKET_HEADER_LEN, PLAIN_MAX_PAYLOAD, SERVER_SENT,
};

/// A receiver's index in the sender, in accept order from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceiverId(pub u32);

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Receivers expected before the first round.
    pub clients: usize,
    /// Multicast group and port named in the greeting.
    pub group: SocketAddrV4,
    /// Payload bytes per packet (above 1460 only when every receiver is extended).
    pub payload_size: usize,
    /// Packets per round (1..=65 536).
    pub packets_per_buffer: u32,
    /// Fixed rate in bytes per second; `None` adapts to repair requests.
    pub rate: Option<f64>,
    /// Longest wait for any one receiver (and for the receivers to connect).
    pub deadline: Duration,
    /// Completed receivers needed to start (of those connected by the deadline) and to count
    /// as at least [`Delivery::Partial`]; the shells default it to `clients`.
    pub min_complete: usize,
    /// Offer the extensions (DAISY-EXT.md); `false` behaves exactly as a plain sender.
    pub extensions: bool,
    /// The input's length when known in advance (a regular file): sent as EXT_SIZE to
    /// extended receivers that ask for it, for their progress display.
    pub input_len: Option<u64>,
}

impl SenderConfig {
    /// Whether [`Sender::new`] accepts this configuration.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.payload_size == 0 || self.payload_size > EXT_MAX_PAYLOAD {
            return Err(ConfigError::PayloadSize(self.payload_size));
        }
        if self.packets_per_buffer == 0 || self.packets_per_buffer > MAX_PACKETS_PER_BUFFER {
            return Err(ConfigError::PacketsPerBuffer(self.packets_per_buffer));
        }
        if self.clients == 0 {
            return Err(ConfigError::NoClients);
        }
        let round_max = self.payload_size as u64 * u64::from(self.packets_per_buffer);
        if round_max > u64::from(u32::MAX) {
            return Err(ConfigError::RoundTooBig(round_max));
        }
        Ok(())
    }
}

/// A configuration the sender cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Payload size out of range.
    #[error("payload size {0} outside 1..={EXT_MAX_PAYLOAD}")]
    PayloadSize(usize),
    /// Packets per buffer out of range.
    #[error("packets per buffer {0} outside 1..={MAX_PACKETS_PER_BUFFER}")]
    PacketsPerBuffer(u32),
    /// No receivers expected.
    #[error("--clients must be at least 1")]
    NoClients,
    /// Round bytes do not fit the wire's u32 `buffer_size`.
    #[error("a round of {0} bytes does not fit the 32-bit buffer_size")]
    RoundTooBig(u64),
}

/// Initial adaptive rate (bytes per second).
const RATE_START: f64 = 600e6;
/// Adaptive rate bounds (bytes per second).
const RATE_MIN: f64 = 1e6;
const RATE_MAX: f64 = 20e9;
/// Token bucket depth: 10 ms at the current rate (at least 64 KiB), so an unthrottled round
/// leaves in one burst (every sleep costs a scheduler wake-up) and a throttled one is spread.
const BURST_SECS: f64 = 0.010;
const BURST_MIN: f64 = 64.0 * 1024.0;
/// Packets per [`Action::Multicast`].
const BATCH: u32 = 64;
/// Most packets emitted by one `handle_timeout` call, so the shell keeps serving TCP.
const MAX_PER_TURN: u32 = 1024;

/// Rounds of history the rate controller compares a round against.
const HISTORY: usize = 8;
/// Rate growth after a round without congestive loss: fast while none was seen within
/// [`HISTORY`] rounds, slow near a rate where it was.
const GROW_FAST: f64 = 1.25;
const GROW_SLOW: f64 = 1.05;
/// Loss fraction above the baseline tolerated as noise (plus three binomial deviations).
const TOLERANCE: f64 = 0.002;
/// Most a single round's cut takes off the rate.
const CUT_FLOOR: f64 = 0.3;

/// The adaptive rate controller: tells rate-independent loss from congestive loss by how the
/// worst receiver's loss responds to the rate, using only what every receiver (plain or
/// extended) reports: the packets it asks to be repaired.
///
/// A round's loss is compared with the *baseline*: the least loss seen in recent rounds sent
/// at this rate or slower, or the round's own loss when the rate was just lowered and the
/// loss did not fall with it (loss that does not follow the rate is not congestion). Loss
/// above the baseline (plus noise) is congestive: the rate is cut by that fraction, which
/// brings it to what got through. Otherwise the rate grows. Rate-independent loss thus
/// costs at most one small cut, while loss that grows with the rate is cut back each time.
#[derive(Debug, Default)]
struct RateControl {
    /// Recent rounds, oldest first: (rate, loss fraction).
    history: VecDeque<(f64, f64)>,
    /// Rounds since the last congestive cut, while within [`HISTORY`].
    since_cut: Option<usize>,
}

impl RateControl {
    /// The next round's rate after a round at `rate` of `packets` packets, of which the worst
    /// receiver asked `lost` to be repaired.
    fn next_rate(&mut self, rate: f64, lost: f64, packets: f64) -> f64 {
        let loss = (lost / packets).clamp(0.0, 1.0);
        let tol = |base: f64| TOLERANCE + 3.0 * (base / packets).sqrt();
        let mut base = self
            .history
            .iter()
            .filter(|(r, _)| *r <= rate)
            .map(|(_, l)| *l)
            .fold(f64::INFINITY, f64::min);
        if let Some(&(prev_rate, prev_loss)) = self.history.back() {
            if rate < prev_rate && loss >= prev_loss - tol(prev_loss) {
                // Slower, yet no less loss: that loss does not depend on the rate.
                base = loss;
                self.since_cut = None;
            }
        }
        if !base.is_finite() {
            base = 0.0;
        }
        self.since_cut = self.since_cut.map(|n| n + 1).filter(|&n| n < HISTORY);
        let excess = loss - base;
        let next = if excess > tol(base) {
            self.since_cut = Some(0);
            rate * (1.0 - excess).max(CUT_FLOOR)
        } else if self.since_cut.is_some() {
            rate * GROW_SLOW
        } else {
            rate * GROW_FAST
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((rate, loss));
        next.clamp(RATE_MIN, RATE_MAX)
    }
}

/// One round as the sender saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundStat {
    /// Pacing rate of its multicast, bytes per second.
    pub rate: f64,
    /// Packets in the round.
    pub packets: u32,
    /// Packets the worst receiver asked to be repaired.
    pub lost: u32,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue these bytes on receiver `to`'s TCP connection.
    SendTcp {
        /// Receiver.
        to: ReceiverId,
        /// Bytes, in order after everything queued before.
        bytes: Vec<u8>,
    },
    /// Multicast packets `first .. first + count` of the round (indexes, see
    /// [`Sender::datagram`]).
    Multicast {
        /// First packet index in the round.
        first: u32,
        /// Number of packets.
        count: u32,
    },
    /// Fill [`Sender::buffer_mut`] from the input and call [`Sender::handle_filled`].
    Fill,
    /// Close this receiver's connection: after its queued bytes when `reason` is `None` (it
    /// completed), at once otherwise.
    Close {
        /// Receiver.
        who: ReceiverId,
        /// Why it was dropped; `None` for a normal end.
        reason: Option<DropReason>,
    },
    /// The transfer is over; see [`Sender::stats`].
    Finished,
}

/// Why a receiver was dropped.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DropReason {
    /// Its connection closed or failed.
    #[error("connection lost: {0}")]
    Lost(String),
    /// It broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// It did not answer within the deadline.
    #[error("no {waiting} within {secs:.1} s")]
    Stalled {
        /// What was awaited.
        waiting: &'static str,
        /// The deadline in seconds.
        secs: f64,
    },

    /// The transfer never started: too few receivers connected within the deadline.
    #[error("transfer not started: {connected} receivers connected, {required} required")]
    NotStarted {
        /// Receivers connected when the deadline passed.
        connected: usize,
        /// `min_complete`.
        required: usize,
    },
}

/// How many receivers got the whole, verified transfer, against what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every one of `clients` receivers completed.
    All,
    /// At least `min_complete` completed, but not all `clients`.
    Partial,
    /// Fewer than `min_complete` completed (or none at all).
    Failed,
}

impl Delivery {
    /// Classifies `completed` receivers out of `clients` expected, `min_complete` required.
    pub fn classify(completed: usize, clients: usize, min_complete: usize) -> Delivery {
        if completed >= clients && completed > 0 {
            Delivery::All
        } else if completed >= min_complete && completed > 0 {
            Delivery::Partial
        } else {
            Delivery::Failed
        }
    }
}

/// A connection refused because the transfer already has its receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("transfer is full")]
pub struct Full;

/// A dropped receiver, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// Receiver.
    pub id: ReceiverId,
    /// Its address.
    pub addr: SocketAddr,
    /// Why.
    pub reason: DropReason,
}

/// Counters of a transfer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderStats {
    /// Input bytes sent.
    pub bytes: u64,
    /// Data packets (each counted once, however many receivers).
    pub packets: u64,
    /// Packets re-sent over TCP, summed over receivers.
    pub repaired: u64,
    /// Sequence numbers a receiver asked for again in the same round.
    pub duplicates: u64,
    /// Packets multicast (a round's packets once each).
    pub multicast: u64,
    /// Dropped receivers.
    pub dropped: Vec<Dropped>,
    /// Receivers that finished the whole transfer.
    pub completed: usize,
    /// SHA-256 of the input (valid once finished).
    pub sha256: [u8; 32],
    /// Receivers that spoke the extensions.
    pub extended: usize,
    /// Receivers expected but never connected (deadline passed).
    pub missing: usize,
    /// Final pacing rate, bytes per second.
    pub rate: f64,
    /// Every round with data, in order.
    pub rounds: Vec<RoundStat>,
}

impl SenderStats {
    /// The rate trajectory over the rounds with data: (start, min, final, mean), bytes per
    /// second; the mean weighs each round by its packets (the rate the data was paced at on
    /// average). `None` before the first round.
    pub fn rate_summary(&self) -> Option<(f64, f64, f64, f64)> {
        let first = self.rounds.first()?;
        let last = self.rounds.last()?;
        let min = self
            .rounds
            .iter()
            .map(|r| r.rate)
            .fold(f64::INFINITY, f64::min);
        let packets: f64 = self.rounds.iter().map(|r| f64::from(r.packets)).sum();
        let time: f64 = self
            .rounds
            .iter()
            .map(|r| f64::from(r.packets) / r.rate)
            .sum();
        Some((first.rate, min, last.rate, packets / time))
    }

    /// The worst receiver's losses per round, run-length encoded: `LOST` or `LOST*ROUNDS`
    /// separated by commas, e.g. `0*3,30*12,0`; `-` when there were no rounds.
    pub fn losses_compact(&self) -> String {
        let mut runs: Vec<(u32, usize)> = Vec::new();
        for r in &self.rounds {
            match runs.last_mut() {
                Some((l, n)) if *l == r.lost => *n += 1,
                _ => runs.push((r.lost, 1)),
            }
        }
        if runs.is_empty() {
            return "-".into();
        }
        runs.iter()
            .map(|&(l, n)| {
                if n == 1 {
                    l.to_string()
                } else {
                    format!("{l}*{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Accepting,
    Filling,
    Sync,
    Multicast,
    Collect,
    Finished,
}

#[derive(Debug)]
struct Rx {
    addr: SocketAddr,
    alive: bool,
    ext: Option<ExtHello>,
    /// Bytes received but not yet parsed.
    inbuf: Vec<u8>,
    ready: bool,
    done: bool,
    /// When the current wait on this receiver started.
    since: Instant,
    /// Sequence numbers repaired to it this round (sorted on use).
    asked: Vec<u32>,
    /// Requests this round.
    requests: u32,
}

/// The sender state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    phase: Phase,
    now: Instant,
    accept_until: Instant,
    rxs: Vec<Rx>,
    actions: VecDeque<Action>,
    /// Round payload: `round.buffer_size` bytes, packet `i` at `i * round_payload`.
    buf: Vec<u8>,
    round: BufferHeader,
    round_payload: usize,
    headers: Vec<[u8; PACKET_HEADER_LEN]>,
    checks: Vec<[u8; CHECK_LEN]>,
    /// SHA-256 of the input up to the end of the current round.
    round_digest: [u8; 32],
    next_seq: u32,
    eof: bool,
    sha: Sha256,
    next_index: u32,
    tokens: f64,
    refill_at: Instant,
    rate: f64,
    control: RateControl,
    stats: SenderStats,
}

impl Sender {
    /// A sender that starts accepting at `now`.
    ///
    /// # Errors
    /// A [`ConfigError`] for settings out of range.
    pub fn new(cfg: SenderConfig, now: Instant) -> Result<Sender, ConfigError> {
        cfg.check()?;
        let rate = cfg.rate.unwrap_or(RATE_START);
        Ok(Sender {
            accept_until: now + cfg.deadline,
            phase: Phase::Accepting,
            now,
            rxs: Vec::new(),
            actions: VecDeque::new(),
            buf: Vec::new(),
            round: BufferHeader::default(),
            round_payload: 0,
            headers: Vec::new(),
            checks: Vec::new(),
            round_digest: [0; 32],
            next_seq: 0,
            eof: false,
            sha: Sha256::new(),
            next_index: 0,
            tokens: BURST_MIN,
            refill_at: now,
            rate,
            control: RateControl::default(),
            stats: SenderStats {
                rate,
                ..SenderStats::default()
            },
            cfg,
        })
    }

    fn greeting(&self, flags: u8) -> [u8; wire::GREETING_LEN] {
        Greeting {
            group: self.cfg.group,
            ext: self.cfg.extensions.then_some(GreetingExt {
                version: EXT_VERSION,
                flags,
            }),
        }
        .encode()
    }

    /// The greeting for a connection refused with [`Full`]: plain receivers read a normal
    /// greeting and then end of stream; extended ones see the flag and report "transfer is
    /// full".
    pub fn full_greeting(&self) -> [u8; wire::GREETING_LEN] {
        self.greeting(GREET_FLAG_FULL)
    }

    /// A receiver connected from `addr`.
    ///
    /// # Errors
    /// [`Full`] when all expected receivers are connected or the transfer has started.
    pub fn handle_connect(&mut self, addr: SocketAddr, now: Instant) -> Result<ReceiverId, Full> {
        self.now = now;
        if self.phase != Phase::Accepting || self.rxs.len() >= self.cfg.clients {
            return Err(Full);
        }
        let id = ReceiverId(u32::try_from(self.rxs.len()).map_err(|_| Full)?);
        self.rxs.push(Rx {
            addr,
            alive: true,
            ext: None,
            inbuf: Vec::new(),
            ready: false,
            done: false,
            since: now,
            asked: Vec::new(),
            requests: 0,
        });
        let bytes = self.greeting(0).to_vec();
        self.actions.push_back(Action::SendTcp { to: id, bytes });
        if self.rxs.len() == self.cfg.clients {
            self.start_fill();
        }
        Ok(id)
    }

    /// Bytes arrived on receiver `id`'s connection.
    pub fn handle_tcp(&mut self, id: ReceiverId, bytes: &[u8], now: Instant) {
        self.now = now;
        let Some(rx) = self.rx_mut(id) else { return };
        if !rx.alive {
            return;
        }
        rx.inbuf.extend_from_slice(bytes);
        let mut at = 0usize;
        loop {
            let Some(rx) = self.rx_mut(id) else { return };
            if !rx.alive {
                return;
            }
            let rest = rx.inbuf.get(at..).unwrap_or(&[]);
            match ReceiverMsg::parse(rest) {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    at += used;
                    if let Err(why) = self.on_msg(id, msg) {
                        self.drop_rx(id, DropReason::Protocol(why));
                        self.advance();
                        return;
                    }
                }
                Err(e) => {
                    self.drop_rx(id, DropReason::Protocol(e.to_string()));
                    self.advance();
                    return;
                }
            }
        }
        if let Some(rx) = self.rx_mut(id) {
            rx.inbuf.drain(..at.min(rx.inbuf.len()));
        }
        self.advance();
    }

    /// Receiver `id`'s connection ended or failed (`why` for the report).
    pub fn handle_closed(&mut self, id: ReceiverId, why: &str, now: Instant) {
        self.now = now;
        let finished = self.phase == Phase::Finished;
        let eof = self.eof;
        // A receiver that said CLIENT_DONE to the end-of-input round has completed: its
        // close is the normal end, not a loss.
        if !finished && self.rx_mut(id).is_some_and(|r| r.alive && !(eof && r.done)) {
            self.drop_rx(id, DropReason::Lost(why.to_string()));
            self.advance();
        }
    }

    /// The buffer to fill on [`Action::Fill`]: exactly one round's capacity.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        let cap = self.round_capacity();
        if self.buf.len() < cap {
            self.buf.resize(cap, 0);
        }
        &mut self.buf[..cap]
    }

    /// `n` bytes of input were written to the front of [`Sender::buffer_mut`]; fewer than its
    /// length only at end of input, 0 at end of input.
    pub fn handle_filled(&mut self, n: usize, now: Instant) {
        self.now = now;
        if self.phase != Phase::Filling {
            return;
        }
        let cap = self.round_capacity().min(self.buf.len());
        let n = n.min(cap);
        let ps = self.round_payload;
        let count = n.div_ceil(ps);
        let count32 = u32::try_from(count).unwrap_or(u32::MAX);
        self.round = BufferHeader {
            buffer_id: self.round.buffer_id.wrapping_add(1),
            // cap fits in u32 (checked in `new`).
            buffer_size: u32::try_from(n).unwrap_or(u32::MAX),
            packet_id_base: self.next_seq,
            pkt_count: count32,
        };
        self.next_seq = self.next_seq.wrapping_add(count32);
        if n == 0 {
            self.eof = true;
        }
        let data = &self.buf[..n];
        self.sha.update(data);
        self.headers.clear();
        self.checks.clear();
        for (i, p) in data.chunks(ps).enumerate() {
            let seq = self.round.packet_id_base.wrapping_add(i as u32);
            self.headers
                .push(PacketHeader::for_payload(seq, p).encode());
        }
        self.stats.bytes += n as u64;
        self.stats.packets += count as u64;
        if self.rxs.iter().any(|r| r.alive) {
            self.round_digest = self.sha.clone().finalize().into();
        }
        let hdr = self.round.encode();
        for i in 0..self.rxs.len() {
            let r = &mut self.rxs[i];
            if !r.alive {
                continue;
            }
            r.ready = false;
            r.done = false;
            r.since = now;
            r.asked.clear();
            r.requests = 0;
            let mut bytes = hdr.to_vec();
            if r.ext.is_some() && count > 0 {
                bytes.extend_from_slice(&wire::encode_round(ps as u32, &self.round_digest));
            }
            self.actions.push_back(Action::SendTcp {
                to: ReceiverId(i as u32),
                bytes,
            });
        }
        self.phase = Phase::Sync;
        self.advance();
    }

    /// Time passed: refill the pacing bucket, drop receivers past their deadline, emit due
    /// packets.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        match self.phase {
            Phase::Accepting if now >= self.accept_until => {
                let n = self.rxs.iter().filter(|r| r.alive).count();
                self.stats.missing = self.cfg.clients - self.rxs.len();
                if n >= self.cfg.min_complete && n > 0 {
                    self.start_fill();
                } else {
                    let reason = DropReason::NotStarted {
                        connected: n,
                        required: self.cfg.min_complete,
                    };
                    for i in 0..self.rxs.len() {
                        self.drop_rx(ReceiverId(i as u32), reason.clone());
                    }
                    self.finish();
                }
            }
            Phase::Sync | Phase::Collect => {
                let waiting = if self.phase == Phase::Sync {
                    "CLIENT_READY"
                } else {
                    "CLIENT_DONE"
                };
                for i in 0..self.rxs.len() {
                    let r = &self.rxs[i];
                    let pending = if self.phase == Phase::Sync {
                        !r.ready
                    } else {
                        !r.done
                    };
                    if r.alive && pending && now.duration_since(r.since) >= self.cfg.deadline {
                        let secs = self.cfg.deadline.as_secs_f64();
                        self.drop_rx(ReceiverId(i as u32), DropReason::Stalled { waiting, secs });
                    }
                }
            }
            _ => {}
        }
        self.advance();
    }

    /// When [`Sender::handle_timeout`] must next be called, if anything is timed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Accepting => Some(self.accept_until),
            Phase::Sync | Phase::Collect => self
                .rxs
                .iter()
                .filter(|r| {
                    r.alive
                        && if self.phase == Phase::Sync {
                            !r.ready
                        } else {
                            !r.done
                        }
                })
                .map(|r| r.since + self.cfg.deadline)
                .min(),
            Phase::Multicast => {
                if self.tokens > 0.0 {
                    Some(self.now)
                } else {
                    let wait = (-self.tokens + 1.0) / self.rate;
                    Some(self.now + Duration::from_secs_f64(wait.min(1.0)))
                }
            }
            Phase::Filling | Phase::Finished => None,
        }
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Packet `index` of the current round: its 12-byte header and payload.
    pub fn datagram(&self, index: u32) -> Option<(&[u8; PACKET_HEADER_LEN], &[u8])> {
        let i = usize::try_from(index).ok()?;
        let h = self.headers.get(i)?;
        let start = i.checked_mul(self.round_payload)?;
        let end = (start + self.round_payload).min(self.round.buffer_size as usize);
        Some((h, self.buf.get(start..end)?))
    }

    /// Counters so far (final once [`Action::Finished`] was emitted).
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Whether the transfer is over.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether it ended with at least `min_complete` receivers done.
    pub fn succeeded(&self) -> bool {
        self.is_finished() && self.stats.completed >= self.cfg.min_complete
    }

    /// How the transfer ended; [`Delivery::Failed`] until it has.
    pub fn delivery(&self) -> Delivery {
        if self.is_finished() {
            Delivery::classify(
                self.stats.completed,
                self.cfg.clients,
                self.cfg.min_complete,
            )
        } else {
            Delivery::Failed
        }
    }

    /// The address of receiver `id`.
    pub fn addr(&self, id: ReceiverId) -> Option<SocketAddr> {
        self.rxs.get(id.0 as usize).map(|r| r.addr)
    }

    fn rx_mut(&mut self, id: ReceiverId) -> Option<&mut Rx> {
        self.rxs.get_mut(usize::try_from(id.0).ok()?)
    }

    fn round_capacity(&self) -> usize {
        self.round_payload * self.cfg.packets_per_buffer as usize
    }

    fn start_fill(&mut self) {
        // Payload above the plain maximum only once every live receiver said it accepts it.
        let all_ext = self.rxs.iter().filter(|r| r.alive).all(|r| {
            r.ext
                .is_some_and(|e| e.max_payload as usize >= self.cfg.payload_size)
        });
        let any_live = self.rxs.iter().any(|r| r.alive);
        self.round_payload = if all_ext && any_live && self.round.buffer_id > 0 {
            self.cfg.payload_size
        } else {
            self.cfg.payload_size.min(PLAIN_MAX_PAYLOAD)
        };
        self.phase = Phase::Filling;
        self.actions.push_back(Action::Fill);
    }

    fn compute_checks(&mut self) {
        if !self.checks.is_empty() || self.round.pkt_count == 0 {
            return;
        }
        let ps = self.round_payload;
        let data = &self.buf[..self.round.buffer_size as usize];
        let base = self.round.packet_id_base;
        self.checks.extend(
            data.chunks(ps)
                .enumerate()
                .map(|(i, p)| wire::strong_check(base.wrapping_add(i as u32), p)),
        );
    }

    fn on_msg(&mut self, id: ReceiverId, msg: ReceiverMsg) -> Result<(), String> {
        let phase = self.phase;
        let now = self.now;
        let round = self.round;
        let idx = id.0 as usize;
        match msg {
            ReceiverMsg::Hello(h) => {
                let r = &mut self.rxs[idx];
                if !self.cfg.extensions
                    || r.ext.is_some()
                    || r.ready
                    || round.buffer_id != 1
                    || phase != Phase::Sync
                {
                    return Err("EXT_HELLO outside the first round's sync".into());
                }
                if h.version != EXT_VERSION || h.caps & CAP_CHECKS == 0 {
                    // A future or reduced peer: treat it as plain.
                    return Ok(());
                }
                r.ext = Some(h);
                self.stats.extended += 1;
                if round.pkt_count > 0 {
                    let mut bytes = Vec::with_capacity(wire::EXT_SIZE_LEN + wire::EXT_ROUND_LEN);
                    if let Some(n) = self.cfg.input_len.filter(|_| h.caps & CAP_SIZE != 0) {
                        bytes.extend_from_slice(&wire::encode_size(n));
                    }
                    bytes.extend_from_slice(&wire::encode_round(
                        self.round_payload as u32,
                        &self.round_digest,
                    ));
                    self.actions.push_back(Action::SendTcp { to: id, bytes });
                }
            }
            ReceiverMsg::Ready => {
                let r = &mut self.rxs[idx];
                if phase != Phase::Sync || r.ready {
                    return Err("CLIENT_READY out of turn".into());
                }
                r.ready = true;
                r.since = now;
            }
            ReceiverMsg::Req(seqs) => {
                if phase != Phase::Collect || self.rxs[idx].done {
                    return Err("CLIENT_REQ out of turn".into());
                }
                let mut bytes = Vec::new();
                for &s in &seqs {
                    let off = s.wrapping_sub(round.packet_id_base);
                    match self.datagram(off).filter(|_| off < round.pkt_count) {
                        Some((h, p)) => {
                            bytes.extend_from_slice(h);
                            bytes.extend_from_slice(p);
                        }
                        None => bytes.extend_from_slice(
                            &PacketHeader {
                                seq: s,
                                crc: 0,
                                data_size: 0,
                            }
                            .encode(),
                        ),
                    }
                }
                let r = &mut self.rxs[idx];
                r.since = now;
                r.requests += 1;
                let before = r.asked.len();
                r.asked.extend_from_slice(&seqs);
                r.asked.sort_unstable();
                r.asked.dedup();
                let new = (r.asked.len() - before) as u64;
                self.stats.repaired += seqs.len() as u64;
                self.stats.duplicates += seqs.len() as u64 - new;
                self.actions.push_back(Action::SendTcp { to: id, bytes });
            }
            ReceiverMsg::NeedChecks => {
                let r = &mut self.rxs[idx];
                if phase != Phase::Collect || r.done || r.ext.is_none() || round.pkt_count == 0 {
                    return Err("EXT_NEED_CHECKS out of turn".into());
                }
                r.since = now;
                self.compute_checks();
                let mut bytes = Vec::new();
                wire::encode_checks(&self.checks, &mut bytes);
                self.actions.push_back(Action::SendTcp { to: id, bytes });
            }
            ReceiverMsg::Done => {
                let r = &mut self.rxs[idx];
                if phase != Phase::Collect || r.done {
                    return Err("CLIENT_DONE out of turn".into());
                }
                r.done = true;
            }
        }
        Ok(())
    }

    fn drop_rx(&mut self, id: ReceiverId, reason: DropReason) {
        let Some(r) = self.rx_mut(id) else { return };
        if !r.alive {
            return;
        }
        r.alive = false;
        r.inbuf = Vec::new();
        let addr = r.addr;
        self.stats.dropped.push(Dropped {
            id,
            addr,
            reason: reason.clone(),
        });
        self.actions.push_back(Action::Close {
            who: id,
            reason: Some(reason),
        });
    }

    /// Moves the round forward as far as the receivers allow.
    fn advance(&mut self) {
        loop {
            let live = self.rxs.iter().filter(|r| r.alive).count();
            let before = self.phase;
            match self.phase {
                Phase::Accepting | Phase::Filling | Phase::Finished => {}
                _ if live == 0 => self.finish(),
                Phase::Sync => {
                    if self.rxs.iter().all(|r| !r.alive || r.ready) {
                        self.phase = Phase::Multicast;
                        self.next_index = 0;
                        self.refill_at = self.now;
                    }
                }
                Phase::Multicast => {
                    self.emit_packets();
                    if self.next_index >= self.round.pkt_count {
                        let end = self.eof.then(|| {
                            let sha: [u8; 32] = self.sha.clone().finalize().into();
                            self.stats.sha256 = sha;
                            wire::encode_end(&sha, self.stats.bytes)
                        });
                        let now = self.now;
                        for i in 0..self.rxs.len() {
                            let r = &mut self.rxs[i];
                            if !r.alive {
                                continue;
                            }
                            r.since = now;
                            let mut bytes = Vec::with_capacity(42);
                            if let (Some(e), Some(_)) = (&end, r.ext) {
                                bytes.extend_from_slice(e);
                            }
                            bytes.push(SERVER_SENT);
                            self.actions.push_back(Action::SendTcp {
                                to: ReceiverId(i as u32),
                                bytes,
                            });
                        }
                        self.phase = Phase::Collect;
                    }
                }
                Phase::Collect => {
                    if self.rxs.iter().all(|r| !r.alive || r.done) {
                        self.adapt_rate();
                        if self.eof {
                            self.stats.completed = live;
                            for i in 0..self.rxs.len() {
                                if self.rxs[i].alive {
                                    self.actions.push_back(Action::Close {
                                        who: ReceiverId(i as u32),
                                        reason: None,
                                    });
                                }
                            }
                            self.finish();
                        } else {
                            self.start_fill();
                        }
                    }
                }
            }
            if self.phase == before {
                break;
            }
        }
    }

    fn emit_packets(&mut self) {
        let dt = self
            .now
            .saturating_duration_since(self.refill_at)
            .as_secs_f64();
        self.refill_at = self.now;
        let burst = (self.rate * BURST_SECS).max(BURST_MIN);
        self.tokens = (self.tokens + dt * self.rate).min(burst);
        let pkt = (self.round_payload + PACKET_HEADER_LEN + 28) as f64;
        let mut sent = 0u32;
        while self.tokens > 0.0 && self.next_index < self.round.pkt_count && sent < MAX_PER_TURN {
            let count = BATCH
                .min(self.round.pkt_count - self.next_index)
                .min(MAX_PER_TURN - sent);
            self.actions.push_back(Action::Multicast {
                first: self.next_index,
                count,
            });
            self.next_index += count;
            sent += count;
            self.tokens -= pkt * f64::from(count);
            self.stats.multicast += u64::from(count);
        }
    }

    /// After a round: records it and sets the next round's rate (see [`RateControl`]).
    fn adapt_rate(&mut self) {
        if self.round.pkt_count == 0 {
            return;
        }
        let worst = self
            .rxs
            .iter()
            .filter(|r| r.alive)
            .map(|r| r.asked.len())
            .max()
            .unwrap_or(0);
        self.stats.rounds.push(RoundStat {
            rate: self.rate,
            packets: self.round.pkt_count,
            lost: u32::try_from(worst).unwrap_or(u32::MAX),
        });
        if self.cfg.rate.is_some() {
            return;
        }
        self.rate =
            self.control
                .next_rate(self.rate, worst as f64, f64::from(self.round.pkt_count));
        self.stats.rate = self.rate;
    }

    fn finish(&mut self) {
        if self.phase == Phase::Finished {
            return;
        }
        if self.stats.sha256 == [0; 32] {
            self.stats.sha256 = self.sha.clone().finalize().into();
        }
        self.phase = Phase::Finished;
        self.actions.push_back(Action::Finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> SenderConfig {
        SenderConfig {
            clients: 1,
            group: SocketAddrV4::new(Ipv4Addr::new(224, 238, 0, 31), 18383),
            payload_size: 4,
            packets_per_buffer: 2,
            rate: None,
            deadline: Duration::from_secs(1),
            min_complete: 1,
            extensions: true,
            input_len: None,
        }
    }

    fn drain(s: &mut Sender) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    /// One receiver, first round filled with `data`, receiver ready and multicast done.
    fn in_collect(data: &[u8]) -> (Sender, Instant) {
        let t = Instant::now();
        let mut s = Sender::new(cfg(), t).unwrap();
        let id = s.handle_connect("127.0.0.1:1".parse().unwrap(), t).unwrap();
        assert!(drain(&mut s).contains(&Action::Fill));
        s.buffer_mut()[..data.len()].copy_from_slice(data);
        s.handle_filled(data.len(), t);
        s.handle_tcp(id, &[CLIENT_READY_BYTE], t);
        s.handle_timeout(t);
        let acts = drain(&mut s);
        assert!(acts.iter().any(|a| matches!(a, Action::Multicast { .. })));
        assert!(acts.contains(&Action::SendTcp {
            to: id,
            bytes: vec![SERVER_SENT]
        }));
        (s, t)
    }

    const CLIENT_READY_BYTE: u8 = wire::CLIENT_READY;

    #[test]
    fn repair_answers_in_order_and_zero_for_unknown() {
        let (mut s, t) = in_collect(b"abcdefg");
        let mut req = Vec::new();
        wire::encode_req(&[1, 99, 0], &mut req);
        s.handle_tcp(ReceiverId(0), &req, t);
        let Some(Action::SendTcp { bytes, .. }) = s.poll_action() else {
            panic!("expected a repair answer");
        };
        let mut want = Vec::new();
        wire::encode_packet(1, b"efg", &mut want);
        want.extend_from_slice(
            &PacketHeader {
                seq: 99,
                crc: 0,
                data_size: 0,
            }
            .encode(),
        );
        wire::encode_packet(0, b"abcd", &mut want);
        assert_eq!(bytes, want);
        assert_eq!(s.stats().repaired, 3);
    }

    #[test]
    fn garbage_drops_the_receiver_and_fails() {
        let (mut s, t) = in_collect(b"abcdefg");
        s.handle_tcp(ReceiverId(0), &[0x77], t);
        let acts = drain(&mut s);
        assert!(matches!(
            acts.first(),
            Some(Action::Close {
                reason: Some(DropReason::Protocol(_)),
                ..
            })
        ));
        assert!(acts.contains(&Action::Finished));
        assert!(!s.succeeded());
    }

    #[test]
    fn stalled_receiver_is_dropped_at_the_deadline() {
        let (mut s, t) = in_collect(b"abcdefg");
        s.handle_timeout(t + Duration::from_millis(999));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(1)));
        s.handle_timeout(t + Duration::from_secs(1));
        let acts = drain(&mut s);
        assert!(matches!(
            acts.first(),
            Some(Action::Close {
                reason: Some(DropReason::Stalled { .. }),
                ..
            })
        ));
        assert!(s.is_finished());
    }

    #[test]
    fn delivery_is_all_only_when_every_expected_receiver_completed() {
        assert_eq!(Delivery::classify(2, 2, 2), Delivery::All);
        assert_eq!(Delivery::classify(1, 2, 2), Delivery::Failed);
        assert_eq!(Delivery::classify(1, 2, 1), Delivery::Partial);
        assert_eq!(Delivery::classify(0, 2, 0), Delivery::Failed);
        assert_eq!(Delivery::classify(3, 3, 1), Delivery::All);
    }

    #[test]
    fn too_few_receivers_by_the_deadline_are_dropped_as_not_started() {
        let t = Instant::now();
        let mut c = cfg();
        c.clients = 3;
        c.min_complete = 2;
        let mut s = Sender::new(c, t).unwrap();
        let id = s.handle_connect("127.0.0.1:7".parse().unwrap(), t).unwrap();
        drain(&mut s);
        s.handle_timeout(t + Duration::from_secs(1));
        let acts = drain(&mut s);
        let want = DropReason::NotStarted {
            connected: 1,
            required: 2,
        };
        assert!(acts.contains(&Action::Close {
            who: id,
            reason: Some(want.clone())
        }));
        assert!(acts.contains(&Action::Finished));
        assert_eq!(s.stats().missing, 2);
        assert_eq!(s.stats().dropped.len(), 1);
        assert_eq!(s.stats().dropped[0].reason, want);
        assert_eq!(s.delivery(), Delivery::Failed);
    }

    /// What an extended receiver with `caps` gets in answer to its EXT_HELLO, the sender
    /// knowing the input's length or not.
    fn answer_to_hello(caps: u8, input_len: Option<u64>) -> Vec<u8> {
        let t = Instant::now();
        let mut c = cfg();
        c.input_len = input_len;
        let mut s = Sender::new(c, t).unwrap();
        let id = s.handle_connect("127.0.0.1:1".parse().unwrap(), t).unwrap();
        drain(&mut s);
        s.buffer_mut()[..3].copy_from_slice(b"abc");
        s.handle_filled(3, t);
        drain(&mut s);
        let hello = ExtHello {
            version: EXT_VERSION,
            caps,
            max_payload: 1460,
        };
        s.handle_tcp(id, &hello.encode(), t);
        drain(&mut s)
            .into_iter()
            .find_map(|a| match a {
                Action::SendTcp { to, bytes } if to == id => Some(bytes),
                _ => None,
            })
            .expect("an answer to EXT_HELLO")
    }

    #[test]
    fn the_size_goes_before_the_first_round_info_to_receivers_that_ask() {
        let digest: [u8; 32] = Sha256::digest(b"abc").into();
        let round = wire::encode_round(4, &digest);
        let mut want = wire::encode_size(3).to_vec();
        want.extend_from_slice(&round);
        assert_eq!(answer_to_hello(CAP_CHECKS | CAP_SIZE, Some(3)), want);
        // Not asked for, or not known: the round info alone.
        assert_eq!(answer_to_hello(CAP_CHECKS, Some(3)), round);
        assert_eq!(answer_to_hello(CAP_CHECKS | CAP_SIZE, None), round);
    }

    /// Rates a controller picks over `rounds` rounds of 10 000 packets, with `lost(rate)`.
    fn trajectory(rounds: usize, lost: impl Fn(f64) -> f64) -> Vec<f64> {
        let mut c = RateControl::default();
        let mut rate = RATE_START;
        let mut out = vec![rate];
        for _ in 0..rounds {
            rate = c.next_rate(rate, lost(rate), 10_000.0);
            out.push(rate);
        }
        out
    }

    #[test]
    fn a_constant_loss_count_costs_one_small_cut() {
        let r = trajectory(6, |_| 50.0);
        assert!((r[1] - RATE_START * 0.995).abs() < 1.0, "{r:?}");
        for w in r[1..].windows(2) {
            assert!((w[1] / w[0] - GROW_FAST).abs() < 1e-9, "{r:?}");
        }
    }

    #[test]
    fn loss_growing_with_the_rate_is_cut_to_the_capacity() {
        let cap = 100e6;
        let r = trajectory(20, |rate| 10_000.0 * (1.0 - cap / rate).max(0.0));
        assert!(
            (r[1] - RATE_START * 0.3).abs() < 1.0,
            "at most 0.3x at once: {r:?}"
        );
        for &x in &r[4..] {
            assert!(x > 0.9 * cap && x < 1.1 * cap, "{r:?}");
        }
    }

    #[test]
    fn losses_are_run_length_encoded() {
        let mut st = SenderStats::default();
        assert_eq!(st.losses_compact(), "-");
        assert_eq!(st.rate_summary(), None);
        for (rate, lost) in [(100e6, 0), (100e6, 0), (50e6, 30), (200e6, 0)] {
            st.rounds.push(RoundStat {
                rate,
                packets: 100,
                lost,
            });
        }
        assert_eq!(st.losses_compact(), "0*2,30,0");
        // 400 packets in 1 + 1 + 2 + 0.5 time units.
        let mean = 400.0 / (100.0 / 100e6 * 2.0 + 100.0 / 50e6 + 100.0 / 200e6);
        assert_eq!(st.rate_summary(), Some((100e6, 50e6, 200e6, mean)));
    }

    #[test]
    fn bad_config_is_refused() {
        let t = Instant::now();
        let mut c = cfg();
        c.payload_size = 0;
        assert_eq!(Sender::new(c, t).err(), Some(ConfigError::PayloadSize(0)));
        let mut c = cfg();
        c.packets_per_buffer = 65_537;
        assert!(Sender::new(c, t).is_err());
        let mut c = cfg();
        c.clients = 0;
        assert_eq!(Sender::new(c, t).err(), Some(ConfigError::NoClients));
    }
}
