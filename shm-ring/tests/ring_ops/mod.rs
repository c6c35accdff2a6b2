//! One interpreter for "a hostile peer between the owner's operations", shared
//! by the property test (`tests/fuzz_ring.rs`) and the cargo-fuzz target
//! (`fuzz/fuzz_targets/ring.rs`).
//!
//! The input bytes are a program: each step is an owner operation (read,
//! write, peek, discard, zero-copy segments with commit/consume, arm, close),
//! an honest peer operation, or a raw store of an arbitrary word into the
//! pipe's shared header (either ring's `head`/`tail`, a flag). Checked after
//! every step:
//! - nothing panics, and every length reported is within the capacity;
//! - every zero-copy segment lies inside its ring's data area;
//! - while the peer has been honest, the owner's stream is exactly the
//!   peer's, both ways (through copies and through segments);
//! - once the owner has seen `Corrupt`, every later data operation on either
//!   half returns `Corrupt` (the pipe stays poisoned).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;

use shm_ring::{
    BidirectionalPipe, BuddyAllocator, NoNotify, PeerWakers, RingError, Segments, ShmAllocator,
    ShmOffset, ShmRegion, PIPE_HEADER_AREA, TO_OWNER_HEADER, TO_PEER_HEADER,
};

/// Bytes of the region every program runs in.
pub const REGION: u64 = 1 << 16;

/// A region and an allocator, reused across programs.
pub struct Fixture {
    pub region: Arc<ShmRegion>,
    pub alloc: ShmAllocator,
}

impl Fixture {
    pub fn new() -> Fixture {
        let region = Arc::new(ShmRegion::create("ring-ops", REGION).unwrap());
        let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096).unwrap());
        Fixture { region, alloc }
    }
}

/// What one program did, for the run's totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub steps: u64,
    pub pokes: u64,
    pub poisoned: bool,
    pub bytes_checked: u64,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte()?;
        }
        Some(u64::from_le_bytes(v))
    }
    /// A length up to about twice `cap`, biased to small and edge values.
    fn len(&mut self, cap: usize) -> Option<usize> {
        let b = self.byte()?;
        Some(match b % 4 {
            0 => usize::from(b >> 2),
            1 => cap,
            2 => cap + usize::from(b >> 2),
            _ => (usize::from(b) * cap * 2) / 255,
        })
    }
}

fn poisoned(r: &Result<impl Sized, RingError>) -> bool {
    matches!(r, Err(RingError::Corrupt { .. }))
}

fn check_segments<D>(segs: &Segments<D>, base: *const u8, cap: usize) {
    assert!(
        segs.total() <= cap,
        "segments offer {} of {cap}",
        segs.total()
    );
    for s in segs.as_slice() {
        let start = s.as_ptr() as usize;
        let lo = base as usize;
        assert!(
            start >= lo && start + s.len() <= lo + cap,
            "segment {start:#x}+{} outside data area {lo:#x}+{cap}",
            s.len()
        );
    }
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9) >> 13) as u8
}

/// Runs one program. Panics (the test fails) on any violated property.
pub fn run(f: &Fixture, program: &[u8]) -> Outcome {
    let mut input = Input(program);
    let mut out = Outcome::default();
    let Some(first) = input.byte() else {
        return out;
    };
    let cap = 64usize << (first % 4); // 64..512
    let Ok(block) = f
        .alloc
        .alloc(BidirectionalPipe::block_size(cap as u64, cap as u64))
    else {
        return out;
    };
    let wake = || PeerWakers::single(Arc::new(NoNotify));
    let mut owner =
        BidirectionalPipe::create(&f.region, block, cap as u64, cap as u64, wake()).unwrap();
    let mut peer = BidirectionalPipe::attach(&f.region, owner.layout(), wake()).unwrap();
    let off = owner.layout().offset().0;
    let base = f
        .region
        .from_offset(ShmOffset(0), f.region.size(), 1)
        .unwrap()
        .as_ptr()
        .cast_const();
    let off_usize = usize::try_from(off).unwrap();
    let hdr = usize::try_from(PIPE_HEADER_AREA).unwrap();
    // SAFETY: offsets inside the mapping (the pipe block was validated).
    let to_owner_data = unsafe { base.add(off_usize + hdr) };
    // SAFETY: as above.
    let to_peer_data = unsafe { base.add(off_usize + hdr + cap) };

    // The honest streams: bytes written and not yet read, each way.
    let mut up: VecDeque<u8> = VecDeque::new(); // peer → owner
    let mut down: VecDeque<u8> = VecDeque::new(); // owner → peer
    let (mut up_n, mut down_n) = (0u64, 0u64);
    let mut honest = true;
    let mut poison = false;
    let mut buf = vec![0u8; 2 * cap + 64];

    while let Some(op) = input.byte() {
        out.steps += 1;
        match op % 14 {
            0 => {
                let Some(n) = input.len(cap) else { break };
                let data: Vec<u8> = (0..n as u64).map(|i| pattern_byte(up_n + i)).collect();
                if let Ok(w) = peer.write(&data) {
                    up.extend(&data[..w]);
                    up_n += w as u64;
                }
            }
            1 => {
                let Some(n) = input.len(cap) else { break };
                let r = owner.read(&mut buf[..n]);
                poison |= poisoned(&r);
                if let Ok(got) = r {
                    assert!(got <= n);
                    if honest {
                        for &b in &buf[..got] {
                            assert_eq!(Some(b), up.pop_front(), "owner read a wrong byte");
                        }
                        out.bytes_checked += got as u64;
                    }
                }
            }
            2 => {
                let Some(k) = input.len(cap) else { break };
                let r = owner.rx().readable_segments();
                poison |= poisoned(&r);
                if let Ok(segs) = r {
                    check_segments(&segs, to_owner_data, cap);
                    if honest {
                        let mut i = 0;
                        for s in segs.as_slice() {
                            for j in 0..s.len() {
                                // SAFETY: inside the data area (checked
                                // above), published and unconsumed.
                                let b = unsafe { s.as_ptr().add(j).read_volatile() };
                                assert_eq!(Some(&b), up.get(i), "segment byte {i} wrong");
                                i += 1;
                            }
                        }
                        out.bytes_checked += i as u64;
                    }
                    match owner.rx().consume(k) {
                        Ok(()) => {
                            assert!(k <= segs.total());
                            if honest {
                                up.drain(..k);
                            }
                        }
                        Err(e) => assert!(
                            matches!(e, RingError::Overcommit { .. }) && k > segs.total()
                                || poisoned(&Err::<(), _>(e)),
                            "consume({k}) of {}: {e}",
                            segs.total()
                        ),
                    }
                }
            }
            3 => {
                let (Some(skip), Some(n)) = (input.len(cap), input.len(cap)) else {
                    break;
                };
                let r = owner.rx().peek(skip, &mut buf[..n]);
                poison |= poisoned(&r);
                if let Ok(got) = r {
                    assert!(got <= n);
                    if honest {
                        for (i, &b) in buf[..got].iter().enumerate() {
                            assert_eq!(Some(&b), up.get(skip + i));
                        }
                    }
                }
            }
            4 => {
                let Some(k) = input.len(cap) else { break };
                let r = owner.rx().discard(k);
                poison |= poisoned(&r);
                if r.is_ok() && honest {
                    assert!(k <= up.len());
                    up.drain(..k);
                }
            }
            5 => {
                let Some(n) = input.len(cap) else { break };
                let data: Vec<u8> = (0..n as u64).map(|i| pattern_byte(!down_n - i)).collect();
                let r = owner.write(&data);
                poison |= poisoned(&r);
                if let Ok(w) = r {
                    assert!(w <= n);
                    down.extend(&data[..w]);
                    down_n += w as u64;
                }
            }
            6 => {
                let Some(n) = input.len(cap) else { break };
                if let Ok(got) = peer.read(&mut buf[..n]) {
                    if honest {
                        for &b in &buf[..got] {
                            assert_eq!(Some(b), down.pop_front(), "peer read a wrong byte");
                        }
                        out.bytes_checked += got as u64;
                    }
                }
            }
            7 => {
                let Some(k) = input.len(cap) else { break };
                let r = owner.tx().writable_segments();
                poison |= poisoned(&r);
                if let Ok(segs) = r {
                    check_segments(&segs, to_peer_data, cap);
                    let staged: Vec<u8> = (0..segs.total() as u64)
                        .map(|i| pattern_byte(!(down_n + i)))
                        .collect();
                    assert_eq!(segs.copy_from(&staged), staged.len());
                    match owner.tx().commit(k) {
                        Ok(()) => {
                            assert!(k <= segs.total());
                            down.extend(&staged[..k]);
                            down_n += k as u64;
                        }
                        Err(e) => assert!(
                            matches!(e, RingError::Overcommit { .. }) && k > segs.total()
                                || poisoned(&Err::<(), _>(e)),
                            "commit({k}) of {}: {e}",
                            segs.total()
                        ),
                    }
                }
            }
            8..=10 => {
                // The peer stores an arbitrary word into the header.
                let (Some(which), Some(v)) = (input.byte(), input.u64()) else {
                    break;
                };
                let ring = if which & 1 == 0 {
                    TO_OWNER_HEADER
                } else {
                    TO_PEER_HEADER
                };
                let field = u64::from(which >> 1) % 6 * 128;
                // Near-valid values as often as wild ones.
                let v = match op {
                    8 => v,
                    9 => up_n
                        .wrapping_add(v % (2 * cap as u64 + 1))
                        .wrapping_sub(cap as u64),
                    _ => v & 1,
                };
                let width = if field < 256 { 8 } else { 4 };
                let p = f
                    .region
                    .from_offset(ShmOffset(off + ring + field), width, width)
                    .unwrap();
                // SAFETY: in bounds and aligned (checked); plays the peer.
                unsafe {
                    if width == 8 {
                        p.as_ptr().cast::<u64>().write_volatile(v);
                    } else {
                        p.as_ptr().cast::<u32>().write_volatile(v as u32);
                    }
                }
                out.pokes += 1;
                honest = false;
            }
            11 => {
                let r = owner.rx().available();
                poison |= poisoned(&r);
                if let Ok(a) = r {
                    assert!(a <= cap);
                }
                let r = owner.tx().free();
                poison |= poisoned(&r);
                if let Ok(fr) = r {
                    assert!(fr <= cap);
                }
            }
            12 => {
                let _ = owner.rx().arm();
                let _ = owner.tx().arm();
                let _ = owner.rx().poll_readable();
                let _ = owner.tx().poll_writable();
                owner.rx().disarm();
                owner.tx().disarm();
            }
            _ => match input.byte().map(|b| b % 8) {
                Some(0) => owner.close_write(),
                Some(1) => owner.close_read(),
                Some(2) => peer.close_write(),
                Some(3) => peer.close_read(),
                None => break,
                _ => {}
            },
        }
        if poison {
            // Sticky: every data operation on either half says so.
            assert!(poisoned(&owner.rx().available()));
            assert!(poisoned(&owner.tx().free()));
            assert!(poisoned(&owner.read(&mut buf[..1])));
            assert!(poisoned(&owner.tx().commit(0)));
            assert!(poisoned(&owner.rx().consume(0)));
            out.poisoned = true;
        }
    }
    out
}
