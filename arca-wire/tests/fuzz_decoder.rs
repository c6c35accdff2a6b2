//! Large randomized runs over every parser a guest's bytes reach: message
//! payloads of every type, the streaming frame decoder fed mutated streams in
//! random chunks, datagram record headers and the bootstrap. Nothing may
//! panic, and every accepted value must survive a round trip.
//!
//! Deterministic (seeded) and sized to take a few seconds; scale with
//! `ARCA_FUZZ_CASES` (cases per property) and pick a seed with
//! `ARCA_FUZZ_SEED`, e.g.
//! `ARCA_FUZZ_CASES=5000000 cargo test --release -p arca-wire --test fuzz_decoder`.
//! The coverage-guided equivalents are the cargo-fuzz targets in `fuzz/`.

use std::net::SocketAddr;

use arca_wire::{
    max_datagram_for, Bootstrap, DatagramHeader, Frame, FrameDecoder, FrameError, FrameHeader,
    Message, MessageType, RequestId, WireError, BOOTSTRAP_LEN, DATAGRAM_HEADER_LEN, HEADER_LEN,
    MAX_DATAGRAM, MAX_FRAME_LEN, MAX_FRAME_PAYLOAD,
};

/// splitmix64: a small, seedable generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("ARCA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed(salt: u64) -> Rng {
    let s = std::env::var("ARCA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_A2CA);
    Rng(s ^ salt)
}

/// A payload length near what `ty` expects (most bugs hide at the edges),
/// or anywhere up to the frame cap.
fn payload_len_for(rng: &mut Rng, ty: u8) -> usize {
    let want = MessageType::from_u8(ty).map_or(0, |t| usize::from(t.payload_len()));
    match rng.below(4) {
        0 => rng.below(MAX_FRAME_PAYLOAD + 1),
        _ => (want + rng.below(5)).saturating_sub(2),
    }
}

/// Random payloads for every type byte: decoding never panics, and whatever
/// decodes re-encodes to exactly the expected size and decodes to itself.
#[test]
fn every_type_with_random_payloads() {
    let n = cases(1_500_000);
    let mut rng = seed(1);
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for i in 0..n {
        let ty = if i % 2 == 0 {
            MessageType::ALL[rng.below(MessageType::ALL.len())].to_u8()
        } else {
            rng.byte()
        };
        let len = payload_len_for(&mut rng, ty);
        let payload = rng.bytes(len);
        let header = FrameHeader::new(ty, len as u16, RequestId(rng.next() as u32));
        match Message::decode(&header, &payload) {
            Ok(Message::Unknown(t)) => {
                assert_eq!(t, ty);
                assert!(MessageType::from_u8(ty).is_none());
                accepted += 1;
            }
            Ok(m) => {
                let kind = MessageType::from_u8(ty).expect("a known type decoded");
                assert_eq!(m.message_type(), ty);
                let mut again = Vec::new();
                m.encode_payload(&mut again);
                assert_eq!(again.len(), usize::from(kind.payload_len()));
                assert_eq!(
                    Message::decode(&header, &again),
                    Ok(m.clone()),
                    "re-encoding of {m:?} does not decode to itself"
                );
                accepted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    println!("payloads: {n} cases, {accepted} accepted, {rejected} rejected");
    assert_eq!(accepted + rejected, n);
}

/// A valid frame of a random known type (random payloads until one decodes).
fn valid_frame(rng: &mut Rng, id: u32) -> Vec<u8> {
    loop {
        let ty = MessageType::ALL[rng.below(MessageType::ALL.len())];
        let len = usize::from(ty.payload_len());
        let mut payload = rng.bytes(len);
        // Address families and handle kinds are mostly invalid at random;
        // steer the first bytes towards valid ones now and then.
        if let Some(b) = payload.get_mut(0) {
            if rng.below(2) == 0 {
                *b = [4, 6, 1, 2, 3][rng.below(5)];
            }
        }
        let header = FrameHeader::new(ty.to_u8(), len as u16, RequestId(id));
        if let Ok(m) = Message::decode(&header, &payload) {
            return m.to_frame(RequestId(id));
        }
    }
}

fn mutate(rng: &mut Rng, stream: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        if stream.is_empty() {
            let n = rng.below(64);
            stream.extend(rng.bytes(n));
            continue;
        }
        let at = rng.below(stream.len());
        match rng.below(7) {
            0 => stream[at] ^= 1 << rng.below(8),
            1 => stream[at] = rng.byte(),
            2 => {
                let end = (at + rng.below(16)).min(stream.len());
                stream.drain(at..end);
            }
            3 => {
                let n = rng.below(32);
                let junk = rng.bytes(n);
                stream.splice(at..at, junk);
            }
            4 => {
                // A payload_len anywhere, including past the cap.
                if stream.len() >= at + 3 {
                    let v = rng.next() as u16;
                    stream[at + 1..at + 3].copy_from_slice(&v.to_le_bytes());
                }
            }
            5 => stream.truncate(at),
            _ => {
                let end = (at + rng.below(64)).min(stream.len());
                let copy = stream[at..end].to_vec();
                stream.extend(copy);
            }
        }
    }
}

/// What a decoder should report for a whole stream given at once.
fn reference(stream: &[u8]) -> Vec<Result<Frame, FrameError>> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        let header = match FrameHeader::parse(rest) {
            Ok(h) => h,
            Err(WireError::HeaderTruncated { .. }) => return out,
            Err(e) => {
                out.push(Err(FrameError::Desync(e)));
                return out;
            }
        };
        if rest.len() < header.frame_len() {
            return out;
        }
        let (frame, tail) = rest.split_at(header.frame_len());
        out.push(match Message::decode(&header, &frame[HEADER_LEN..]) {
            Ok(m) => Ok(Frame::new(header.request_id, m)),
            Err(error) => Err(FrameError::Malformed { header, error }),
        });
        rest = tail;
    }
}

/// Mutated streams of valid frames, fed in random chunks: the streaming
/// decoder agrees with the whole-stream reference, stays bounded, and stays
/// poisoned after a desync.
#[test]
fn streaming_decoder_on_mutated_streams() {
    let n = cases(150_000);
    let mut rng = seed(2);
    let (mut frames_seen, mut desyncs) = (0u64, 0u64);
    for case in 0..n {
        let mut stream = Vec::new();
        for k in 0..rng.below(8) {
            stream.extend(valid_frame(&mut rng, (case as u32) ^ (k as u32)));
        }
        if case % 8 == 0 {
            // Now and then a maximal frame, to fill the decoder's buffer.
            let h = FrameHeader::new(0xEE, MAX_FRAME_PAYLOAD as u16, RequestId(1));
            stream.extend(h.to_bytes());
            stream.extend(rng.bytes(MAX_FRAME_PAYLOAD));
        }
        mutate(&mut rng, &mut stream);
        let want = reference(&stream);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        let mut pos = 0;
        'outer: while pos < stream.len() {
            let max = if rng.below(2) == 0 { 8 } else { 2048 };
            let chunk = 1 + rng.below(max);
            let end = (pos + chunk).min(stream.len());
            let mut input = &stream[pos..end];
            pos = end;
            let mut refused = 0;
            while !input.is_empty() {
                let taken = d.feed(input);
                // A refusal means a whole frame is buffered; once it is taken
                // the next feed must make progress.
                refused = if taken == 0 { refused + 1 } else { 0 };
                assert!(refused < 2, "decoder stalled without a frame");
                assert!(taken <= input.len());
                assert!(d.buffered_len() <= MAX_FRAME_LEN);
                input = &input[taken..];
                loop {
                    match d.next_frame() {
                        Ok(None) => break,
                        Ok(Some(f)) => got.push(Ok(f)),
                        Err(e) => {
                            let fatal = e.is_fatal();
                            got.push(Err(e));
                            if fatal {
                                assert!(d.is_poisoned());
                                assert_eq!(d.feed(&[0; 8]), 0);
                                break 'outer;
                            }
                        }
                    }
                }
            }
        }
        frames_seen += got.len() as u64;
        desyncs += u64::from(matches!(got.last(), Some(Err(e)) if e.is_fatal()));
        assert_eq!(got, want, "case {case}: stream {stream:02x?}");
    }
    println!("decoder: {n} streams, {frames_seen} outcomes, {desyncs} desyncs");
}

fn random_addr(rng: &mut Rng) -> SocketAddr {
    if rng.below(2) == 0 {
        let ip: [u8; 4] = rng.bytes(4).try_into().unwrap();
        SocketAddr::from((ip, rng.next() as u16))
    } else {
        let ip: [u8; 16] = rng.bytes(16).try_into().unwrap();
        SocketAddr::V6(std::net::SocketAddrV6::new(
            ip.into(),
            rng.next() as u16,
            rng.next() as u32,
            rng.next() as u32,
        ))
    }
}

/// Datagram record headers: random and mutated-valid bytes. Whatever parses
/// is within its family's limit and round-trips; valid headers always parse.
#[test]
fn datagram_headers() {
    let n = cases(2_000_000);
    let mut rng = seed(3);
    let mut accepted = 0u64;
    for i in 0..n {
        let mut raw = [0u8; DATAGRAM_HEADER_LEN];
        if i % 2 == 0 {
            raw.copy_from_slice(&rng.bytes(DATAGRAM_HEADER_LEN));
        } else {
            let addr = random_addr(&mut rng);
            let len = rng.below(max_datagram_for(&addr) + 1);
            let h = DatagramHeader::new(len, addr).unwrap();
            raw = h.to_bytes();
            assert_eq!(DatagramHeader::parse(&raw), Ok(h));
            let at = rng.below(DATAGRAM_HEADER_LEN);
            raw[at] = rng.byte();
        }
        if let Ok(h) = DatagramHeader::parse(&raw) {
            accepted += 1;
            assert!(usize::from(h.payload_len) <= max_datagram_for(&h.addr));
            assert!(h.record_len() <= DATAGRAM_HEADER_LEN + MAX_DATAGRAM);
            assert_eq!(DatagramHeader::parse(&h.to_bytes()), Ok(h));
        }
    }
    println!("datagram headers: {n} cases, {accepted} accepted");
}

/// The bootstrap message at every length around its own.
#[test]
fn bootstrap_bytes() {
    let n = cases(1_000_000);
    let mut rng = seed(4);
    let mut accepted = 0u64;
    for i in 0..n {
        let bytes = match i % 3 {
            0 => rng.bytes(BOOTSTRAP_LEN),
            1 => {
                let n = rng.below(2 * BOOTSTRAP_LEN + 1);
                rng.bytes(n)
            }
            _ => {
                // A valid one with one byte changed and maybe a length change.
                let b = Bootstrap {
                    region_size: rng.next(),
                    control_offset: rng.next(),
                    control_cap_to_monitor: rng.next() as u32,
                    control_cap_to_guest: rng.next() as u32,
                    bitmap_offset: rng.next(),
                    bitmap_slots: rng.next() as u32,
                };
                let mut v = b.to_bytes().to_vec();
                assert_eq!(Bootstrap::parse(&v), Ok(b));
                let at = rng.below(v.len());
                v[at] = rng.byte();
                if rng.below(4) == 0 {
                    let n = rng.below(2 * BOOTSTRAP_LEN + 1);
                    v.resize(n, 0);
                }
                v
            }
        };
        if let Ok(b) = Bootstrap::parse(&bytes) {
            accepted += 1;
            assert_eq!(Bootstrap::parse(&b.to_bytes()), Ok(b));
        }
    }
    println!("bootstrap: {n} cases, {accepted} accepted");
}
