//! Deterministic simulation of the sans-IO cores: one sender, N receivers, a simulated clock,
//! in-memory TCP (delivered in order, in random-sized pieces) and a multicast "network" with
//! seeded loss, duplication, reordering, corruption and forgery. Every drive is bounded in
//! steps and simulated time, and fails instead of hanging.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use daisy::receiver::{Receiver, ReceiverConfig, RecvAction, RecvError};
use daisy::sender::{Action, DropReason, ReceiverId, Sender, SenderConfig};
use daisy::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const STEP: Duration = Duration::from_micros(200);
const MAX_STEPS: u32 = 400_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Speaks the extensions.
    Ext,
    /// Plain (never sends EXT_HELLO).
    Plain,
    /// Stops answering (but keeps its connection) after delivering this many rounds.
    StallAfter(u32),
    /// Closes its connection after delivering this many rounds.
    DieAfter(u32),
}

#[derive(Clone, Debug)]
struct Net {
    loss: f64,
    dup: f64,
    /// Probability a datagram is held back up to 5 steps (reordering).
    delay: f64,
    /// Probability per datagram of an additional corrupted copy (bad additive sum).
    corrupt: f64,
    /// Probability per datagram of an additional forged copy (valid additive sum, wrong data).
    forge: f64,
    /// Rate-independent loss: receiver `r` drops every packet with
    /// `(seq + 7919 r) % every == 0`, a fixed count per round at any rate (0: none).
    every: u32,
    /// A bottleneck in front of all receivers: datagrams queue in `buffer` bytes drained at
    /// `bytes_per_sec`, and those finding it full are lost (loss that grows with the rate).
    bottleneck: Option<Bottleneck>,
    /// Steps every datagram takes longer than the TCP connection (a relay's latency).
    trail: u32,
}

#[derive(Clone, Copy, Debug)]
struct Bottleneck {
    bytes_per_sec: f64,
    buffer: f64,
}

const CLEAN: Net = Net {
    loss: 0.0,
    dup: 0.0,
    delay: 0.0,
    corrupt: 0.0,
    forge: 0.0,
    every: 0,
    bottleneck: None,
    trail: 0,
};

struct SimRx {
    kind: Kind,
    core: Receiver,
    /// Bytes in flight sender → receiver.
    down: VecDeque<u8>,
    /// Bytes in flight receiver → sender.
    up: VecDeque<u8>,
    /// Datagrams in flight: (due step, bytes).
    udp: Vec<(u32, Vec<u8>)>,
    out: Vec<u8>,
    rounds: u32,
    error: Option<RecvError>,
    finished: bool,
    gone: bool,
    stalled: bool,
}

struct Outcome {
    stats: daisy::sender::SenderStats,
    success: bool,
    rxs: Vec<SimRx>,
    input: Vec<u8>,
}

fn sender_cfg(clients: usize) -> SenderConfig {
    SenderConfig {
        clients,
        group: SocketAddrV4::new(Ipv4Addr::new(224, 238, 0, 31), 18383),
        payload_size: 1000,
        packets_per_buffer: 32,
        rate: None,
        deadline: Duration::from_millis(300),
        min_complete: 1,
        extensions: true,
        input_len: None,
    }
}

fn take_chunk(q: &mut VecDeque<u8>, rng: &mut StdRng) -> Vec<u8> {
    let n = rng.gen_range(1..=q.len().clamp(1, 4000)).min(q.len());
    q.drain(..n).collect()
}

fn run(seed: u64, kinds: &[Kind], net: Net, scfg: SenderConfig, len: usize) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let t0 = Instant::now();
    let mut now = t0;
    let ext_sender = scfg.extensions;
    let deadline = scfg.deadline;
    let mut s = Sender::new(scfg, now).expect("config");
    let rcfg = |ext| ReceiverConfig {
        deadline,
        extensions: ext,
        max_round_bytes: 1 << 24,
        // Nothing assumed: the window is learnt from how late datagrams trail SERVER_SENT.
        settle: Duration::ZERO,
        settle_max: Duration::from_millis(50),
    };
    let mut rxs: Vec<SimRx> = kinds
        .iter()
        .map(|&k| SimRx {
            kind: k,
            core: Receiver::new(rcfg(k != Kind::Plain), now),
            down: VecDeque::new(),
            up: VecDeque::new(),
            udp: Vec::new(),
            out: Vec::new(),
            rounds: 0,
            error: None,
            finished: false,
            gone: false,
            stalled: false,
        })
        .collect();
    for (i, _) in kinds.iter().enumerate() {
        let id = s
            .handle_connect(SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16)), now)
            .expect("room");
        assert_eq!(id, ReceiverId(i as u32));
    }
    // One more: refused, and an extended receiver reads "transfer is full" from it.
    assert!(s
        .handle_connect(SocketAddr::from(([127, 0, 0, 1], 1)), now)
        .is_err());
    // A plain sender cannot say why; it just closes after the greeting.
    let mut late = Receiver::new(rcfg(true), now);
    let want = if ext_sender {
        Err(RecvError::Full)
    } else {
        Ok(())
    };
    assert_eq!(late.handle_tcp(&s.full_greeting(), now), want);

    let mut cursor = 0usize;
    let mut step = 0u32;
    // Bottleneck queue: bytes held, as of step `queue_at`.
    let mut queued = 0.0f64;
    let mut queue_at = 0u32;
    loop {
        step += 1;
        assert!(
            step < MAX_STEPS,
            "simulation did not finish within {MAX_STEPS} steps"
        );
        now += STEP;
        s.handle_timeout(now);
        let mut finished = false;
        while let Some(a) = s.poll_action() {
            match a {
                Action::SendTcp { to, bytes } => {
                    let r = &mut rxs[to.0 as usize];
                    if !r.gone {
                        r.down.extend(bytes);
                    }
                }
                Action::Multicast { first, count } => {
                    for i in first..first + count {
                        let (h, p) = s.datagram(i).expect("packet in round");
                        let mut d = h.to_vec();
                        d.extend_from_slice(p);
                        let seq = wire::parse_datagram(&d).expect("own datagram").0.seq;
                        let mut arrive = step + net.trail;
                        if let Some(b) = net.bottleneck {
                            let per_step = b.bytes_per_sec * STEP.as_secs_f64();
                            queued = (queued - per_step * f64::from(step - queue_at)).max(0.0);
                            queue_at = step;
                            if queued + d.len() as f64 > b.buffer {
                                continue;
                            }
                            queued += d.len() as f64;
                            arrive += (queued / per_step) as u32;
                        }
                        for (ri, r) in rxs.iter_mut().enumerate() {
                            if net.every > 0 && seq.wrapping_add(7919 * ri as u32) % net.every == 0
                            {
                                continue;
                            }
                            if rng.gen_bool(net.corrupt) {
                                let mut c = d.clone();
                                let k = rng.gen_range(12..c.len());
                                c[k] ^= 0x40;
                                r.udp.push((step, c));
                            }
                            if rng.gen_bool(net.forge) {
                                // Same seq, different payload, additive sum made valid; some
                                // also of another length, some arriving late (after the
                                // round's SERVER_SENT, while repairs are under way).
                                let mut f = d.clone();
                                let k = rng.gen_range(12..f.len());
                                f[k] = f[k].wrapping_add(1);
                                if f.len() > 16 && rng.gen_bool(0.3) {
                                    f.truncate(f.len() - 4);
                                    let size = (f.len() - 12) as u32;
                                    f[8..12].copy_from_slice(&size.to_le_bytes());
                                }
                                let sum = wire::additive_sum(&f[12..]);
                                f[4..8].copy_from_slice(&sum.to_le_bytes());
                                let due = if rng.gen_bool(0.3) {
                                    step + rng.gen_range(1..12)
                                } else {
                                    step
                                };
                                r.udp.push((due, f));
                            }
                            if rng.gen_bool(net.loss) {
                                continue;
                            }
                            let due = if rng.gen_bool(net.delay) {
                                arrive + rng.gen_range(1..5)
                            } else {
                                arrive
                            };
                            r.udp.push((due, d.clone()));
                            if rng.gen_bool(net.dup) {
                                r.udp.push((step + 1, d.clone()));
                            }
                        }
                    }
                }
                Action::Fill => {
                    let buf = s.buffer_mut();
                    let n = buf.len().min(input.len() - cursor);
                    buf[..n].copy_from_slice(&input[cursor..cursor + n]);
                    cursor += n;
                    s.handle_filled(n, now);
                }
                Action::Close { who, .. } => {
                    rxs[who.0 as usize].gone = true;
                }
                Action::Finished => finished = true,
            }
        }
        if finished {
            break;
        }
        for (i, r) in rxs.iter_mut().enumerate() {
            if r.gone || r.error.is_some() || r.stalled {
                continue;
            }
            // Datagrams due now, in random order (reordering within a step too).
            let mut due: Vec<Vec<u8>> = Vec::new();
            r.udp.retain(|(t, d)| {
                if *t <= step {
                    due.push(d.clone());
                    false
                } else {
                    true
                }
            });
            for k in (1..due.len()).rev() {
                let j = rng.gen_range(0..=k);
                due.swap(k, j);
            }
            for d in &due {
                r.core.handle_datagram(d, now);
            }
            if !r.down.is_empty() {
                let c = take_chunk(&mut r.down, &mut rng);
                if let Err(e) = r.core.handle_tcp(&c, now) {
                    r.error = Some(e);
                    continue;
                }
            }
            if let Err(e) = r.core.handle_timeout(now) {
                r.error = Some(e);
                continue;
            }
            while let Some(a) = r.core.poll_action() {
                match a {
                    RecvAction::Join(g) => assert_eq!(g.port(), 18383),
                    RecvAction::SendTcp(b) => r.up.extend(b),
                    RecvAction::Deliver => {
                        for c in r.core.output() {
                            r.out.extend_from_slice(c);
                        }
                        r.core.handle_delivered(now);
                        r.rounds += 1;
                        match r.kind {
                            Kind::StallAfter(n) if r.rounds >= n => r.stalled = true,
                            Kind::DieAfter(n) if r.rounds >= n => {
                                r.gone = true;
                                s.handle_closed(ReceiverId(i as u32), "simulated death", now);
                            }
                            _ => {}
                        }
                    }
                    RecvAction::Finished => r.finished = true,
                }
            }
            if !r.up.is_empty() && !r.gone {
                let c = take_chunk(&mut r.up, &mut rng);
                s.handle_tcp(ReceiverId(i as u32), &c, now);
            }
        }
    }
    // Deliver the receivers' last bytes (CLIENT_DONE of the end round was already counted).
    Outcome {
        success: s.succeeded(),
        stats: s.stats().clone(),
        rxs,
        input,
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn assert_complete(o: &Outcome, who: &[usize]) {
    for &i in who {
        let r = &o.rxs[i];
        assert!(r.error.is_none(), "receiver {i} failed: {:?}", r.error);
        assert!(r.finished, "receiver {i} did not finish");
        assert_eq!(r.out.len(), o.input.len(), "receiver {i} length");
        assert!(
            r.out == o.input,
            "receiver {i} output differs from the input"
        );
        assert_eq!(r.core.stats().sha256, sha(&o.input));
    }
    assert_eq!(o.stats.sha256, sha(&o.input));
}

#[test]
fn clean_transfer_two_extended() {
    let o = run(1, &[Kind::Ext, Kind::Ext], CLEAN, sender_cfg(2), 100_000);
    assert!(o.success);
    assert_complete(&o, &[0, 1]);
    assert_eq!(o.stats.completed, 2);
    assert_eq!(o.stats.extended, 2);
    assert_eq!(o.stats.repaired, 0);
    assert_eq!(o.stats.bytes, 100_000);
}

#[test]
fn lossy_network_is_repaired() {
    for seed in 0..4 {
        let net = Net {
            loss: 0.1,
            dup: 0.05,
            delay: 0.1,
            corrupt: 0.1,
            forge: 0.0,
            ..CLEAN
        };
        let o = run(
            seed,
            &[Kind::Ext, Kind::Plain, Kind::Ext],
            net,
            sender_cfg(3),
            150_000,
        );
        assert!(o.success, "seed {seed}");
        assert_complete(&o, &[0, 1, 2]);
        assert!(o.stats.repaired > 0, "seed {seed}: loss must cause repairs");
        assert!(o.rxs.iter().any(|r| r.core.stats().duplicates > 0));
        assert!(o.rxs.iter().all(|r| r.core.stats().rejected > 0));
    }
}

#[test]
fn forged_datagrams_never_reach_extended_output() {
    for seed in 10..14 {
        let net = Net {
            loss: 0.02,
            dup: 0.0,
            delay: 0.2,
            corrupt: 0.0,
            forge: 0.1,
            ..CLEAN
        };
        let o = run(seed, &[Kind::Ext, Kind::Ext], net, sender_cfg(2), 120_000);
        assert!(o.success);
        assert_complete(&o, &[0, 1]);
        for r in &o.rxs {
            assert!(r.core.stats().rejected > 0, "forgeries must be counted");
        }
    }
}

#[test]
fn forged_datagrams_fool_a_plain_receiver_but_not_extended_ones() {
    // Why the extension exists: with forgeries, the plain receiver (additive sum only) may
    // write wrong bytes; the extended one never does.
    let net = Net {
        forge: 0.3,
        ..CLEAN
    };
    let o = run(21, &[Kind::Ext, Kind::Plain], net, sender_cfg(2), 60_000);
    assert_complete(&o, &[0]);
    assert!(
        o.rxs[1].out != o.input,
        "the plain receiver was expected to be fooled"
    );
}

#[test]
fn stalled_receiver_is_dropped_and_others_finish() {
    let o = run(
        3,
        &[Kind::Ext, Kind::StallAfter(2), Kind::Plain],
        Net {
            loss: 0.05,
            ..CLEAN
        },
        sender_cfg(3),
        200_000,
    );
    assert!(o.success);
    assert_complete(&o, &[0, 2]);
    assert_eq!(o.stats.completed, 2);
    assert_eq!(o.stats.dropped.len(), 1);
    assert_eq!(o.stats.dropped[0].id, ReceiverId(1));
    assert!(matches!(
        o.stats.dropped[0].reason,
        DropReason::Stalled { .. }
    ));
}

#[test]
fn dying_receiver_is_dropped_and_others_finish() {
    let o = run(
        4,
        &[Kind::DieAfter(1), Kind::Ext],
        CLEAN,
        sender_cfg(2),
        200_000,
    );
    assert!(o.success);
    assert_complete(&o, &[1]);
    assert_eq!(o.stats.dropped.len(), 1);
    assert!(matches!(o.stats.dropped[0].reason, DropReason::Lost(_)));
}

#[test]
fn all_receivers_dying_fails_without_hanging() {
    let o = run(
        5,
        &[Kind::DieAfter(1), Kind::StallAfter(1)],
        CLEAN,
        sender_cfg(2),
        200_000,
    );
    assert!(!o.success);
    assert_eq!(o.stats.completed, 0);
    assert_eq!(o.stats.dropped.len(), 2);
}

#[test]
fn plain_sender_with_extended_receivers() {
    let mut cfg = sender_cfg(2);
    cfg.extensions = false;
    cfg.payload_size = 4000; // capped to 1460 for plain peers
    let o = run(
        6,
        &[Kind::Ext, Kind::Plain],
        Net {
            loss: 0.05,
            delay: 0.1,
            ..CLEAN
        },
        cfg,
        100_000,
    );
    assert!(o.success);
    assert_complete(&o, &[0, 1]);
    assert_eq!(o.stats.extended, 0);
    assert!(!o.rxs[0].core.stats().extended);
    assert!(o.stats.packets >= 100_000 / 1460);
}

#[test]
fn large_payload_only_when_all_extended() {
    let mut cfg = sender_cfg(2);
    cfg.payload_size = 8000;
    let all_ext = run(7, &[Kind::Ext, Kind::Ext], CLEAN, cfg.clone(), 400_000);
    assert_complete(&all_ext, &[0, 1]);
    // Round 1: 32 × 1460; the rest at 8000 bytes.
    let rest = 400_000 - 32 * 1460;
    assert_eq!(all_ext.stats.packets, 32 + (rest as u64).div_ceil(8000));
    let mixed = run(8, &[Kind::Ext, Kind::Plain], CLEAN, cfg, 400_000);
    assert_complete(&mixed, &[0, 1]);
    assert_eq!(mixed.stats.packets, 400_000u64.div_ceil(1460));
}

#[test]
fn empty_input() {
    let o = run(9, &[Kind::Ext, Kind::Plain], CLEAN, sender_cfg(2), 0);
    assert!(o.success);
    assert_complete(&o, &[0, 1]);
    assert_eq!(o.stats.packets, 0);
}

/// Rounds big enough that the pacing rate, not the sender's 10 ms burst, shapes them.
fn rate_cfg(clients: usize) -> SenderConfig {
    SenderConfig {
        payload_size: 1400,
        packets_per_buffer: 8000,
        // The simulated TCP carries about 10 MB/s: repairing a round sent far above a
        // bottleneck takes it most of a second.
        deadline: Duration::from_secs(5),
        ..sender_cfg(clients)
    }
}

/// Bytes for 12 rounds of [`rate_cfg`].
const RATE_LEN: usize = 12 * 8000 * 1400;

/// (start, min, final, mean) in MB/s, printed for the record.
fn rates(name: &str, o: &Outcome) -> (f64, f64, f64, f64) {
    let (a, b, c, d) = o.stats.rate_summary().expect("rounds");
    let mb = |x: f64| x / 1e6;
    eprintln!(
        "{name}: rate MB/s start={:.0} min={:.0} final={:.0} mean={:.0} losses={}",
        mb(a),
        mb(b),
        mb(c),
        mb(d),
        o.stats.losses_compact()
    );
    (mb(a), mb(b), mb(c), mb(d))
}

/// The mean rate of the second half of the rounds, MB/s.
fn settled_rate(o: &Outcome) -> f64 {
    let r = &o.stats.rounds;
    let tail = &r[r.len() / 2..];
    tail.iter().map(|x| x.rate).sum::<f64>() / tail.len() as f64 / 1e6
}

#[test]
fn rate_independent_loss_does_not_pull_the_rate_down() {
    let clean = run(30, &[Kind::Ext, Kind::Plain], CLEAN, rate_cfg(2), RATE_LEN);
    assert_complete(&clean, &[0, 1]);
    let (_, _, clean_final, clean_mean) = rates("clean", &clean);
    // A fixed 0.5 % of each round (every 200th packet), and random 0.5 % loss.
    let fixed = Net {
        every: 200,
        ..CLEAN
    };
    let random = Net {
        loss: 0.005,
        ..CLEAN
    };
    for (name, net) in [("fixed 0.5 %", fixed), ("random 0.5 %", random)] {
        let o = run(31, &[Kind::Ext, Kind::Plain], net, rate_cfg(2), RATE_LEN);
        assert!(o.success, "{name}");
        assert_complete(&o, &[0, 1]);
        assert!(
            o.stats.rounds.iter().all(|r| r.lost > 0),
            "{name}: loss each round"
        );
        let (_, _, fin, mean) = rates(name, &o);
        assert!(
            fin >= 0.7 * clean_final && mean >= 0.7 * clean_mean,
            "{name}: final {fin:.0} / mean {mean:.0} MB/s against clean {clean_final:.0} / \
             {clean_mean:.0}"
        );
    }
}

const CAPACITY: f64 = 50e6;

/// A 50 MB/s bottleneck with a 15 ms queue (the sender's 10 ms bursts fit at that rate).
fn congested() -> Net {
    Net {
        bottleneck: Some(Bottleneck {
            bytes_per_sec: CAPACITY,
            buffer: CAPACITY * 0.015,
        }),
        ..CLEAN
    }
}

#[test]
fn congestion_brings_the_rate_to_the_capacity() {
    let o = run(
        32,
        &[Kind::Ext, Kind::Plain],
        congested(),
        rate_cfg(2),
        RATE_LEN,
    );
    assert!(o.success);
    assert_complete(&o, &[0, 1]);
    let (start, _, fin, _) = rates("congested", &o);
    let c = CAPACITY / 1e6;
    assert!(start > 10.0 * c, "starts far above the capacity");
    let settled = settled_rate(&o);
    eprintln!("congested: settled {settled:.0} MB/s, capacity {c:.0}");
    assert!(fin <= 1.3 * c && settled <= 1.3 * c, "above the capacity");
    assert!(settled >= 0.5 * c, "collapsed below the capacity");
}

#[test]
fn congestion_with_rate_independent_loss_settles_at_the_capacity() {
    let net = Net {
        every: 200,
        ..congested()
    };
    let o = run(
        33,
        &[Kind::Ext, Kind::Plain, Kind::Ext],
        net,
        rate_cfg(3),
        RATE_LEN,
    );
    assert!(o.success);
    assert_complete(&o, &[0, 1, 2]);
    let (_, _, fin, _) = rates("congested + fixed 0.5 %", &o);
    let c = CAPACITY / 1e6;
    let settled = settled_rate(&o);
    eprintln!("congested + fixed 0.5 %: settled {settled:.0} MB/s, capacity {c:.0}");
    assert!(fin <= 1.3 * c && settled <= 1.3 * c, "above the capacity");
    assert!(settled >= 0.5 * c, "collapsed below the capacity");
}

#[test]
fn datagrams_trailing_the_end_of_round_are_waited_for_not_repaired() {
    // Every datagram arrives 4 ms after it was sent, SERVER_SENT at once: the first round's
    // tail is asked for before it arrives; from then on the receivers wait long enough.
    let net = Net { trail: 20, ..CLEAN };
    let o = run(
        34,
        &[Kind::Ext, Kind::Plain],
        net,
        sender_cfg(2),
        32 * 1000 * 10,
    );
    assert!(o.success);
    assert_complete(&o, &[0, 1]);
    let first = o.stats.rounds[0].lost;
    let late: u64 = o.rxs.iter().map(|r| r.core.stats().late).sum();
    let settle = o.rxs[0].core.stats().settle;
    eprintln!(
        "trailing 4 ms: first round lost {first}, later {}, late {late}, window {settle:?}",
        o.stats.losses_compact()
    );
    assert!(first > 0, "the first round's window was too short");
    assert!(late > 0 && late <= 2 * u64::from(first));
    assert!(
        o.stats.rounds[1..].iter().all(|r| r.lost == 0),
        "repairs after the window was learnt: {}",
        o.stats.losses_compact()
    );
    assert!(settle >= Duration::from_millis(4) && settle <= Duration::from_millis(50));
}
