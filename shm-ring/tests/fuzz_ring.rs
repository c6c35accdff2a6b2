//! The ring against a hostile peer: regression tests for stale zero-copy
//! offers and for a poisoned pipe, then long randomized runs in which the peer
//! writes arbitrary `head`/`tail`/flag words between the owner's operations.
//!
//! Scale the randomized runs with `ARCA_FUZZ_CASES` (default: a few seconds'
//! worth), e.g. `ARCA_FUZZ_CASES=200000 cargo test --release -p shm-ring --test fuzz_ring`.

mod ring_ops;

use std::sync::Arc;

use shm_ring::{
    BidirectionalPipe, BuddyAllocator, NoNotify, PeerWakers, RingError, ShmAllocator, ShmOffset,
    ShmRegion, TO_OWNER_HEADER, TO_PEER_HEADER,
};

struct Fixture {
    region: Arc<ShmRegion>,
    alloc: ShmAllocator,
}

fn fixture() -> Fixture {
    let region = Arc::new(ShmRegion::create("fuzz-ring", 1 << 20).unwrap());
    let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096).unwrap());
    Fixture { region, alloc }
}

fn nowake() -> PeerWakers {
    PeerWakers::single(Arc::new(NoNotify))
}

fn pair(f: &Fixture, cap: u64) -> (BidirectionalPipe, BidirectionalPipe) {
    let block = f
        .alloc
        .alloc(BidirectionalPipe::block_size(cap, cap))
        .unwrap();
    let owner = BidirectionalPipe::create(&f.region, block, cap, cap, nowake()).unwrap();
    let peer = BidirectionalPipe::attach(&f.region, owner.layout(), nowake()).unwrap();
    (owner, peer)
}

/// Raw store of a u64 into the region, as a hostile peer would.
fn poke(region: &ShmRegion, off: u64, v: u64) {
    let p = region.from_offset(ShmOffset(off), 8, 8).unwrap();
    // SAFETY: in bounds and aligned (checked by `from_offset`); plays the peer.
    unsafe { p.as_ptr().cast::<u64>().write_volatile(v) };
}

// ---- known issue 1: a stale zero-copy offer ---------------------------------

#[test]
fn producer_offer_is_void_after_a_write() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    let segs = peer.tx().writable_segments().unwrap();
    assert_eq!(segs.total(), 64);
    // The ring is filled by a plain write after the offer was made...
    assert_eq!(peer.write(&[1; 64]).unwrap(), 64);
    // ...so committing the old offer would publish 128 bytes into a 64-byte
    // ring, overwriting unread bytes.
    assert!(
        matches!(peer.tx().commit(64), Err(RingError::Overcommit { .. })),
        "a stale offer must not be committable"
    );
    // The honest owner still sees exactly the 64 bytes written.
    assert_eq!(owner.rx().available().unwrap(), 64);
    let mut buf = [0u8; 64];
    assert_eq!(owner.read(&mut buf).unwrap(), 64);
    assert_eq!(buf, [1; 64]);
}

#[test]
fn producer_offer_is_void_after_a_record_write() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    peer.tx().writable_segments().unwrap();
    peer.tx().write_record(&[&[2; 40]]).unwrap();
    assert!(matches!(
        peer.tx().commit(30),
        Err(RingError::Overcommit { .. })
    ));
    assert_eq!(owner.rx().available().unwrap(), 40);
}

#[test]
fn consumer_offer_is_void_after_a_read() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    peer.write(&[3; 48]).unwrap();
    let segs = owner.rx().readable_segments().unwrap();
    assert_eq!(segs.total(), 48);
    assert_eq!(owner.read(&mut [0; 48]).unwrap(), 48);
    // Consuming the old offer would move `head` 48 bytes past `tail`: the
    // next offer would expose bytes never written.
    assert!(matches!(
        owner.rx().consume(48),
        Err(RingError::Overcommit { .. })
    ));
    assert_eq!(owner.rx().available().unwrap(), 0);
    assert_eq!(peer.tx().free().unwrap(), 64);
}

#[test]
fn consumer_offer_is_void_after_a_discard() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    peer.write(&[4; 32]).unwrap();
    owner.rx().readable_segments().unwrap();
    owner.rx().discard(32).unwrap();
    assert!(matches!(
        owner.rx().consume(1),
        Err(RingError::Overcommit { .. })
    ));
    assert_eq!(peer.tx().free().unwrap(), 64);
}

#[test]
fn partial_commits_of_one_offer_still_work() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    let segs = peer.tx().writable_segments().unwrap();
    assert_eq!(segs.total(), 64);
    peer.tx().commit(10).unwrap();
    peer.tx().commit(20).unwrap();
    assert!(matches!(
        peer.tx().commit(35),
        Err(RingError::Overcommit {
            requested: 35,
            available: 34
        })
    ));
    assert_eq!(owner.rx().available().unwrap(), 30);
    owner.rx().readable_segments().unwrap();
    owner.rx().consume(5).unwrap();
    owner.rx().consume(25).unwrap();
    assert!(owner.rx().consume(1).is_err());
}

// ---- known issue 2: commit/consume on a poisoned pipe -----------------------

#[test]
fn commit_and_consume_refuse_a_poisoned_pipe() {
    let f = fixture();
    let (mut owner, mut peer) = pair(&f, 64);
    peer.write(&[5; 16]).unwrap();
    let off = owner.layout().offset().0;
    // Offers made while the pipe was healthy...
    assert_eq!(owner.tx().writable_segments().unwrap().total(), 64);
    assert_eq!(owner.rx().readable_segments().unwrap().total(), 16);
    // ...then the peer claims 1 TiB written: the owner's next load poisons.
    poke(&f.region, off + TO_OWNER_HEADER, 1 << 40);
    assert!(matches!(
        owner.rx().available(),
        Err(RingError::Corrupt { .. })
    ));
    assert!(matches!(
        owner.tx().commit(8),
        Err(RingError::Corrupt { .. })
    ));
    assert!(matches!(
        owner.rx().consume(8),
        Err(RingError::Corrupt { .. })
    ));
    // Nothing was published to the peer by the refused commit.
    assert_eq!(peer.rx().available().unwrap(), 0);
    // A `head` far ahead poisons the producer side the same way.
    let (mut owner2, _peer2) = pair(&f, 64);
    owner2.tx().writable_segments().unwrap();
    poke(
        &f.region,
        owner2.layout().offset().0 + TO_PEER_HEADER + 128,
        999,
    );
    assert!(matches!(owner2.tx().free(), Err(RingError::Corrupt { .. })));
    assert!(matches!(
        owner2.tx().commit(1),
        Err(RingError::Corrupt { .. })
    ));
}

#[test]
fn commit_after_close_is_refused() {
    let f = fixture();
    let (_owner, mut peer) = pair(&f, 64);
    peer.tx().writable_segments().unwrap();
    peer.close_write();
    assert!(matches!(peer.tx().commit(1), Err(RingError::Closed)));
}

// ---- randomized: a peer writing arbitrary header words between operations --

/// splitmix64, seeded: programs are reproducible from `ARCA_FUZZ_SEED`.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_programs_against_a_hostile_peer() {
    let cases = env_u64("ARCA_FUZZ_CASES", 100_000);
    let mut state = env_u64("ARCA_FUZZ_SEED", 0x5EED_A2CA);
    let f = ring_ops::Fixture::new();
    let (mut steps, mut pokes, mut poisoned, mut checked) = (0u64, 0u64, 0u64, 0u64);
    for case in 0..cases {
        let len = 1 + (splitmix(&mut state) % 600) as usize;
        // Half the programs stay honest longer: pokes only in their second half.
        let calm = case % 2 == 0;
        let program: Vec<u8> = (0..len)
            .map(|i| {
                let b = splitmix(&mut state) as u8;
                if calm && i < len / 2 && (8..=10).contains(&(b % 14)) {
                    b.wrapping_add(3)
                } else {
                    b
                }
            })
            .collect();
        let o = ring_ops::run(&f, &program);
        steps += o.steps;
        pokes += o.pokes;
        poisoned += u64::from(o.poisoned);
        checked += o.bytes_checked;
    }
    println!(
        "ring programs: {cases} cases, {steps} steps, {pokes} header pokes, {poisoned} poisoned, {checked} bytes checked"
    );
    assert!(
        checked > 0 && poisoned > 0,
        "the generator reaches both regimes"
    );
    // Every block went back to the allocator.
    assert_eq!(f.alloc.stats().allocated, 0);
}
