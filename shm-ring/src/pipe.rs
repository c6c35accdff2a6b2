//! A bidirectional pipe: two rings in one buddy block of the region.
//!
//! Layout of the block (see DATAPIPE.md):
//!
//! | offset                    | size            | what                          |
//! |--------------------------:|-----------------|-------------------------------|
//! | 0                         | 768             | header of ring `to_owner`     |
//! | 1024                      | 768             | header of ring `to_peer`      |
//! | 2048, 2176                | 4 each          | owner's, peer's status word   |
//! | 2304                      | 8               | owner's counter               |
//! | 4096                      | `cap_to_owner`  | data of ring `to_owner`       |
//! | 4096 + `cap_to_owner`     | `cap_to_peer`   | data of ring `to_peer`        |
//!
//! The *owner* (the monitor) allocates and resets the block and announces its
//! offset and capacities; the *peer* (the guest) attaches to them. The owner
//! writes `to_peer` and reads `to_owner`; the peer the reverse.

use std::sync::Arc;

use crate::offset::{OffsetError, ShmOffset};
use crate::ring::{Consumer, Poison, Producer, RingError};
use crate::wait::Notify;

#[cfg(not(loom))]
use crate::{buddy::Allocation, region::ShmRegion, ring::RingMem};

/// Bytes reserved at the start of a pipe block for the two ring headers.
pub const PIPE_HEADER_AREA: u64 = 4096;
/// Offset of the `to_owner` ring header inside the block.
pub const TO_OWNER_HEADER: u64 = 0;
/// Offset of the `to_peer` ring header inside the block.
pub const TO_PEER_HEADER: u64 = 1024;
/// Offset of the owner's status word (a `u32` on its own 128-byte line).
pub const OWNER_STATUS: u64 = 2048;
/// Offset of the peer's status word (a `u32` on its own 128-byte line).
pub const PEER_STATUS: u64 = 2176;
/// Offset of the owner's counter (a `u64` on its own 128-byte line): for a
/// datagram pipe, the datagrams the owner dropped because the peer's ring was
/// full (DATAPIPE.md §10).
pub const OWNER_COUNTER: u64 = 2304;
/// Smallest ring capacity accepted.
pub const MIN_RING_CAPACITY: u64 = 64;
/// Largest ring capacity accepted (1 GiB).
pub const MAX_RING_CAPACITY: u64 = 1 << 30;

/// Which end of a pipe this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Allocated the block; writes `to_peer`, reads `to_owner`.
    Owner,
    /// Attached to an announced block; writes `to_owner`, reads `to_peer`.
    Peer,
}

/// Why a pipe description was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// A capacity is not a power of two in range.
    #[error("ring capacity {0} must be a power of two between 64 and 2^30")]
    BadCapacity(u64),
    /// The block does not fit the region or is misplaced.
    #[error("pipe block: {0}")]
    Offset(#[from] OffsetError),
    /// The allocation is smaller than the layout needs.
    #[error("allocation of {have} bytes is smaller than the {need} bytes the pipe needs")]
    TooSmall {
        /// Bytes required.
        need: u64,
        /// Bytes available.
        have: u64,
    },
}

/// Where a pipe lives: what the owner announces and the peer validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeLayout {
    offset: ShmOffset,
    cap_to_owner: u64,
    cap_to_peer: u64,
}

impl PipeLayout {
    /// Describes a pipe at `offset` with the given ring capacities.
    ///
    /// # Errors
    /// [`PipeError::BadCapacity`] unless both are powers of two in
    /// `MIN_RING_CAPACITY..=MAX_RING_CAPACITY`; [`PipeError::Offset`] if the
    /// offset is not page-aligned or the block's end overflows.
    pub fn new(offset: ShmOffset, cap_to_owner: u64, cap_to_peer: u64) -> Result<Self, PipeError> {
        for cap in [cap_to_owner, cap_to_peer] {
            if !cap.is_power_of_two() || !(MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&cap) {
                return Err(PipeError::BadCapacity(cap));
            }
        }
        let layout = Self {
            offset,
            cap_to_owner,
            cap_to_peer,
        };
        crate::offset::check_range(offset, layout.size(), PIPE_HEADER_AREA, u64::MAX)?;
        Ok(layout)
    }

    /// Bytes the block needs: header area plus both data areas.
    pub fn size(&self) -> u64 {
        PIPE_HEADER_AREA + self.cap_to_owner + self.cap_to_peer
    }

    /// Bytes a pipe with these capacities needs (before buddy rounding).
    pub fn size_for(cap_to_owner: u64, cap_to_peer: u64) -> u64 {
        PIPE_HEADER_AREA + cap_to_owner + cap_to_peer
    }

    /// The block's offset.
    pub fn offset(&self) -> ShmOffset {
        self.offset
    }

    /// Capacity of the peer → owner ring.
    pub fn cap_to_owner(&self) -> u64 {
        self.cap_to_owner
    }

    /// Capacity of the owner → peer ring.
    pub fn cap_to_peer(&self) -> u64 {
        self.cap_to_peer
    }

    fn at(&self, rel: u64) -> ShmOffset {
        // `new` checked `offset + size()` does not overflow, and every `rel`
        // used is below `size()`.
        ShmOffset(self.offset.0 + rel)
    }
}

/// Whom to wake on the other side: its reader when we write, its writer when
/// we read. Both may be the same doorbell.
#[derive(Clone)]
pub struct PeerWakers {
    /// Rung when we publish bytes and the peer's reader sleeps.
    pub reader: Arc<dyn Notify>,
    /// Rung when we free space and the peer's writer sleeps.
    pub writer: Arc<dyn Notify>,
}

impl PeerWakers {
    /// Both roles served by one notifier.
    pub fn single(n: Arc<dyn Notify>) -> Self {
        Self {
            reader: Arc::clone(&n),
            writer: n,
        }
    }
}

/// Both rings of a pipe, from one side.
pub struct BidirectionalPipe {
    tx: Producer,
    rx: Consumer,
    layout: PipeLayout,
    side: Side,
    #[cfg(not(loom))]
    status: PipeStatus,
}

impl std::fmt::Debug for BidirectionalPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BidirectionalPipe")
            .field("layout", &self.layout)
            .field("side", &self.side)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

#[cfg(not(loom))]
impl BidirectionalPipe {
    /// Owner side: lays a fresh pipe into `alloc` (which it keeps until both
    /// halves are dropped), resetting both ring headers. Announce
    /// [`layout`](Self::layout) to the peer afterwards.
    ///
    /// # Errors
    /// [`PipeError`] when the capacities are invalid or do not fit `alloc`.
    pub fn create(
        region: &Arc<ShmRegion>,
        alloc: Allocation,
        cap_to_owner: u64,
        cap_to_peer: u64,
        wake: PeerWakers,
    ) -> Result<Self, PipeError> {
        let layout = PipeLayout::new(alloc.offset(), cap_to_owner, cap_to_peer)?;
        if layout.size() > alloc.len() {
            return Err(PipeError::TooSmall {
                need: layout.size(),
                have: alloc.len(),
            });
        }
        let keep = Arc::new(alloc);
        let (to_owner, to_peer) = Self::rings(region, &layout, Some(keep))?;
        to_owner.header().reset();
        to_peer.header().reset();
        let status = PipeStatus::new(region, &layout, Side::Owner)?;
        status.reset();
        Ok(Self::assemble(
            to_owner,
            to_peer,
            layout,
            Side::Owner,
            wake,
            status,
        ))
    }

    /// Peer side: attaches to a pipe the owner announced, after validating the
    /// layout against the region.
    ///
    /// # Errors
    /// [`PipeError`] when the layout is invalid or outside the region.
    pub fn attach(
        region: &Arc<ShmRegion>,
        layout: PipeLayout,
        wake: PeerWakers,
    ) -> Result<Self, PipeError> {
        let (to_owner, to_peer) = Self::rings(region, &layout, None)?;
        let status = PipeStatus::new(region, &layout, Side::Peer)?;
        Ok(Self::assemble(
            to_owner,
            to_peer,
            layout,
            Side::Peer,
            wake,
            status,
        ))
    }

    fn rings(
        region: &Arc<ShmRegion>,
        l: &PipeLayout,
        keep: Option<Arc<Allocation>>,
    ) -> Result<(RingMem, RingMem), PipeError> {
        crate::offset::check_range(l.offset, l.size(), PIPE_HEADER_AREA, region.size())?;
        let to_owner = RingMem::new(
            region,
            l.at(TO_OWNER_HEADER),
            l.at(PIPE_HEADER_AREA),
            l.cap_to_owner,
            keep.clone(),
        )?;
        let to_peer = RingMem::new(
            region,
            l.at(TO_PEER_HEADER),
            l.at(PIPE_HEADER_AREA + l.cap_to_owner),
            l.cap_to_peer,
            keep,
        )?;
        Ok((to_owner, to_peer))
    }

    fn assemble(
        to_owner: RingMem,
        to_peer: RingMem,
        layout: PipeLayout,
        side: Side,
        wake: PeerWakers,
        status: PipeStatus,
    ) -> Self {
        let poison = Poison::default();
        let (tx_mem, rx_mem) = match side {
            Side::Owner => (to_peer, to_owner),
            Side::Peer => (to_owner, to_peer),
        };
        let tx = crate::ring::producer_only(tx_mem, poison.clone(), wake.reader);
        let rx = crate::ring::consumer_only(rx_mem, poison, wake.writer);
        Self {
            tx,
            rx,
            layout,
            side,
            status,
        }
    }

    /// The pipe's status words (clonable; outlives a [`split`](Self::split)).
    pub fn status(&self) -> PipeStatus {
        self.status.clone()
    }
}

/// The two status words of a pipe: each side may store a non-zero code
/// (for example "connection reset") *before* closing its writing half, and the
/// other side reads it after seeing the close. Zero means "no error".
///
/// The owner (the monitor) only ever stores its own word and reads the peer's
/// as untrusted input; the peer trusts the owner's.
#[cfg(not(loom))]
#[derive(Clone)]
pub struct PipeStatus {
    own: std::ptr::NonNull<crate::sync::AtomicU32>,
    peer: std::ptr::NonNull<crate::sync::AtomicU32>,
    counter: std::ptr::NonNull<crate::sync::AtomicU64>,
    _region: Arc<ShmRegion>,
}

// SAFETY: the pointers refer to atomics inside `_region`'s mapping, which is
// kept alive by the `Arc` and is itself `Send + Sync`.
#[cfg(not(loom))]
unsafe impl Send for PipeStatus {}
// SAFETY: as above; all access is atomic.
#[cfg(not(loom))]
unsafe impl Sync for PipeStatus {}

#[cfg(not(loom))]
impl PipeStatus {
    fn new(region: &Arc<ShmRegion>, l: &PipeLayout, side: Side) -> Result<Self, PipeError> {
        let owner = region.from_offset(l.at(OWNER_STATUS), 4, 128)?.cast();
        let peer = region.from_offset(l.at(PEER_STATUS), 4, 128)?.cast();
        let counter = region.from_offset(l.at(OWNER_COUNTER), 8, 128)?.cast();
        let (own, peer) = match side {
            Side::Owner => (owner, peer),
            Side::Peer => (peer, owner),
        };
        Ok(Self {
            own,
            peer,
            counter,
            _region: Arc::clone(region),
        })
    }

    fn word(&self, p: std::ptr::NonNull<crate::sync::AtomicU32>) -> &crate::sync::AtomicU32 {
        // SAFETY: `new` validated the word lies in the mapping, 128-aligned;
        // the mapping outlives `self`; an atomic may be shared with a writer
        // in another process.
        unsafe { p.as_ref() }
    }

    fn counter_word(&self) -> &crate::sync::AtomicU64 {
        // SAFETY: `new` validated the word lies in the mapping, 128-aligned;
        // the mapping outlives `self`; atomics may be shared across processes.
        unsafe { self.counter.as_ref() }
    }

    fn reset(&self) {
        self.word(self.own).store(0, crate::sync::Ordering::Relaxed);
        self.word(self.peer)
            .store(0, crate::sync::Ordering::Relaxed);
        self.counter_word().store(0, crate::sync::Ordering::Relaxed);
    }

    /// Owner side: publishes the owner's counter (kept privately by the
    /// caller and only ever stored here, never read back).
    pub fn publish_counter(&self, value: u64) {
        self.counter_word()
            .store(value, crate::sync::Ordering::Release);
    }

    /// The owner's counter as last published (untrusted on the owner side).
    pub fn counter(&self) -> u64 {
        self.counter_word().load(crate::sync::Ordering::Acquire)
    }

    /// Peer side: reads the other side's status code and clears it
    /// (`take_error` for a datagram pipe, where the code is the last send
    /// error rather than a stream's final status).
    pub fn take_peer(&self) -> u32 {
        self.word(self.peer).swap(0, crate::sync::Ordering::AcqRel)
    }

    /// Stores our status code. Store it before closing the writing half: the
    /// close's Release store orders it for the reader.
    pub fn set(&self, code: u32) {
        self.word(self.own)
            .store(code, crate::sync::Ordering::Release);
    }

    /// The other side's status code (0 if none). Untrusted on the owner side.
    pub fn peer(&self) -> u32 {
        self.word(self.peer).load(crate::sync::Ordering::Acquire)
    }
}

#[cfg(not(loom))]
impl std::fmt::Debug for PipeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeStatus")
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}

impl BidirectionalPipe {
    /// Where the pipe lives (what the owner announces).
    pub fn layout(&self) -> PipeLayout {
        self.layout
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Non-blocking write into our outgoing ring. See [`Producer::write`].
    ///
    /// # Errors
    /// See [`Producer::write`].
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        self.tx.write(buf)
    }

    /// Non-blocking read from our incoming ring. See [`Consumer::read`].
    ///
    /// # Errors
    /// See [`Consumer::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.rx.read(buf)
    }

    /// We will write no more; the peer reads EOF after the last byte.
    ///
    /// The peer is rung, except by the owner when the peer has closed its
    /// reading half: nobody waits on this ring any more. (The peer's closes
    /// always ring: the owner frees the block once it sees all four flags.)
    pub fn close_write(&mut self) {
        let wake = self.side == Side::Peer || !self.tx.is_peer_closed();
        self.tx.close_with(wake);
    }

    /// We will read no more; the peer's writes fail with `BrokenPipe`.
    ///
    /// Rings the peer as [`close_write`](Self::close_write) does: always from
    /// the peer, from the owner only while the peer's writing half is open.
    pub fn close_read(&mut self) {
        let wake = self.side == Side::Peer || !self.rx.is_peer_closed();
        self.rx.close_with(wake);
    }

    /// The peer has closed its writing half (EOF after the remaining bytes).
    pub fn is_peer_write_closed(&self) -> bool {
        self.rx.is_peer_closed()
    }

    /// The peer has closed its reading half.
    pub fn is_peer_read_closed(&self) -> bool {
        self.tx.is_peer_closed()
    }

    /// Both directions are fully closed — both halves by us, both by the peer
    /// — so the owner may free the block.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
            && self.rx.is_closed()
            && self.is_peer_write_closed()
            && self.is_peer_read_closed()
    }

    /// The outgoing ring's writer.
    pub fn tx(&mut self) -> &mut Producer {
        &mut self.tx
    }

    /// The incoming ring's reader.
    pub fn rx(&mut self) -> &mut Consumer {
        &mut self.rx
    }

    /// Splits into the two halves (for a reader thread and a writer thread).
    /// The block stays allocated until both are dropped.
    pub fn split(self) -> (Producer, Consumer) {
        (self.tx, self.rx)
    }
}

impl BidirectionalPipe {
    /// Bytes to allocate for a pipe with these ring capacities.
    pub fn block_size(cap_to_owner: u64, cap_to_peer: u64) -> u64 {
        PipeLayout::size_for(cap_to_owner, cap_to_peer)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::buddy::{BuddyAllocator, ShmAllocator};
    use crate::header::RING_HEADER_SIZE;
    use crate::region::ShmRegion;
    use crate::wait::NoNotify;
    use crate::Doorbell;
    use rand::{Rng, SeedableRng};

    struct Fixture {
        region: Arc<ShmRegion>,
        alloc: ShmAllocator,
    }

    fn fixture() -> Fixture {
        let region = Arc::new(ShmRegion::create("pipe-test", 1 << 20).unwrap());
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

    /// Raw write of a u64 into the region, as a hostile peer would.
    fn poke(region: &ShmRegion, off: u64, v: u64) {
        let p = region.from_offset(ShmOffset(off), 8, 8).unwrap();
        // SAFETY: in bounds and aligned (checked above); plays the peer.
        unsafe { p.as_ptr().cast::<u64>().write_volatile(v) };
    }

    struct Counting(std::sync::atomic::AtomicUsize);
    impl Notify for Counting {
        fn notify(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_reader_armed_for_a_whole_record_waits_for_its_rest_and_is_rung() {
        let f = fixture();
        let rings = Arc::new(Counting(Default::default()));
        let block = f
            .alloc
            .alloc(BidirectionalPipe::block_size(64, 64))
            .unwrap();
        let mut owner = BidirectionalPipe::create(&f.region, block, 64, 64, nowake()).unwrap();
        let wake: Arc<dyn Notify> = rings.clone();
        let mut peer =
            BidirectionalPipe::attach(&f.region, owner.layout(), PeerWakers::single(wake)).unwrap();
        let count = || rings.0.load(std::sync::atomic::Ordering::SeqCst);
        // Ten bytes of a twenty-byte record: not ready, and stays armed.
        peer.write(&[7; 10]).unwrap();
        assert!(!owner.rx().arm_for(20));
        assert!(!owner.rx().poll_readable_for(20));
        assert!(owner.rx().poll_readable_for(10));
        let before = count();
        peer.write(&[7; 10]).unwrap();
        assert!(
            count() > before,
            "the publish that completes the record rings"
        );
        assert!(owner.rx().arm_for(20));
        owner.rx().disarm();
        // More than the ring holds is clamped to its capacity.
        let mut buf = [0u8; 64];
        assert_eq!(owner.read(&mut buf).unwrap(), 20);
        peer.write(&[1; 64]).unwrap();
        assert!(owner.rx().poll_readable_for(1 << 20));
        assert_eq!(owner.read(&mut buf).unwrap(), 64);
        // A writer that closes with a record cut short: ready (EOF decides).
        peer.write(&[1; 3]).unwrap();
        peer.close_write();
        assert!(owner.rx().arm_for(20));
    }

    #[test]
    fn bytes_cross_both_ways_with_wraparound() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        let mut seq = 0u8;
        let mut expect = 0u8;
        let mut buf = [0u8; 48];
        for _ in 0..100 {
            let out: Vec<u8> = (0..40)
                .map(|_| {
                    seq = seq.wrapping_add(1);
                    seq
                })
                .collect();
            assert_eq!(peer.write(&out).unwrap(), 40);
            assert_eq!(owner.read(&mut buf).unwrap(), 40);
            for &b in &buf[..40] {
                expect = expect.wrapping_add(1);
                assert_eq!(b, expect);
            }
            assert_eq!(owner.write(&out[..33]).unwrap(), 33);
            assert_eq!(peer.read(&mut buf).unwrap(), 33);
            assert_eq!(&buf[..33], &out[..33]);
        }
    }

    #[test]
    fn a_batch_of_records_writes_the_whole_ones_that_fit_with_one_publish() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        let mut got = [0u8; 64];
        for round in 0u8..40 {
            // Four 3 + 12-byte records; 60 of 64 bytes: all fit, the fifth does not.
            let bodies: Vec<[u8; 12]> = (0..5).map(|i| [round ^ i; 12]).collect();
            let heads: Vec<[u8; 3]> = (0..5).map(|i| [round, i, 0xAA]).collect();
            let records: Vec<[&[u8]; 2]> =
                (0..5).map(|i| [&heads[i][..], &bodies[i][..]]).collect();
            assert_eq!(peer.tx().write_records(&records).unwrap(), 4);
            assert_eq!(owner.rx().available().unwrap(), 60);
            assert_eq!(
                peer.tx().write_records(&records[4..]),
                Err(RingError::WouldBlock)
            );
            assert_eq!(owner.read(&mut got).unwrap(), 60);
            for i in 0..4 {
                assert_eq!(&got[i * 15..i * 15 + 3], &heads[i]);
                assert_eq!(&got[i * 15 + 3..i * 15 + 15], &bodies[i]);
            }
        }
        let empty: [[&[u8]; 1]; 0] = [];
        assert_eq!(peer.tx().write_records(&empty).unwrap(), 0);
        assert_eq!(
            peer.tx().write_records(&[[&[0u8; 65][..]]]),
            Err(RingError::RecordTooLarge {
                len: 65,
                capacity: 64
            })
        );
        // A too-large record after written ones ends the batch; it is not an error yet.
        let big = [0u8; 65];
        let batch: [&[u8]; 2] = [&[1u8; 10], &big];
        let records: Vec<[&[u8]; 1]> = batch.iter().map(|b| [*b]).collect();
        assert_eq!(peer.tx().write_records(&records).unwrap(), 1);
        assert_eq!(owner.read(&mut got).unwrap(), 10);
    }

    #[test]
    fn records_are_whole_or_absent_across_the_wrap() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        // 3 + 20 bytes per record; the ring wraps every few records.
        let mut hdr = [0u8; 3];
        let mut body = [0u8; 20];
        for round in 0u8..50 {
            let payload = [round; 20];
            peer.tx().write_record(&[&[round, 1, 2], &payload]).unwrap();
            peer.tx().write_record(&[&[round, 3, 4], &payload]).unwrap();
            // 46 of 64 bytes used: a third record does not fit and nothing of it is published.
            assert_eq!(
                peer.tx().write_record(&[&[9; 3], &payload]),
                Err(RingError::WouldBlock)
            );
            assert_eq!(owner.rx().available().unwrap(), 46);
            for tag in [[round, 1, 2], [round, 3, 4]] {
                assert_eq!(owner.rx().peek(0, &mut hdr).unwrap(), 3);
                assert_eq!(hdr, tag);
                assert_eq!(owner.rx().peek(3, &mut body).unwrap(), 20);
                assert_eq!(body, payload);
                owner.rx().discard(23).unwrap();
            }
            assert_eq!(owner.rx().peek(0, &mut hdr).unwrap(), 0);
        }
        assert_eq!(
            peer.tx().write_record(&[&[0; 60], &[0; 5]]),
            Err(RingError::RecordTooLarge {
                len: 65,
                capacity: 64
            })
        );
        assert!(matches!(
            owner.rx().discard(1),
            Err(RingError::Overcommit { .. })
        ));
        // Space for a 40-byte record is "writable for 40" only once 40 are free.
        peer.write(&[7; 30]).unwrap();
        assert!(peer.tx().poll_writable_for(34));
        assert!(!peer.tx().poll_writable_for(35));
        assert!(peer.tx().poll_writable());
    }

    #[test]
    fn segment_ranges_pick_out_a_record_across_the_wrap() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        peer.write(&[0; 50]).unwrap();
        owner.rx().discard(50).unwrap();
        let data: Vec<u8> = (0..40).collect();
        peer.write(&data).unwrap(); // positions 50..90: wraps after 14 bytes
        let segs = owner.rx().readable_segments().unwrap();
        assert_eq!(segs.as_slice().len(), 2);
        let r = segs.range(10, 8); // 4 bytes before the wrap, 4 after
        assert_eq!(r.as_slice().len(), 2);
        assert_eq!(r.total(), 8);
        let mut got = Vec::new();
        for seg in r.as_slice() {
            // SAFETY: the segment lies in published, unconsumed ring data.
            got.extend_from_slice(unsafe { std::slice::from_raw_parts(seg.as_ptr(), seg.len()) });
        }
        assert_eq!(got, (10..18).collect::<Vec<u8>>());
        assert_eq!(segs.range(38, 10).total(), 2, "clamped to what is there");
        assert_eq!(segs.range(40, 1).total(), 0);
        assert_eq!(segs.range(20, 5).as_slice().len(), 1);
        owner.rx().consume(40).unwrap();
    }

    #[test]
    fn owner_counter_and_taking_the_owner_status() {
        let f = fixture();
        let (owner, peer) = pair(&f, 64);
        assert_eq!(peer.status().counter(), 0);
        owner.status().publish_counter(42);
        assert_eq!(peer.status().counter(), 42);
        owner.status().set(0x0107);
        assert_eq!(peer.status().take_peer(), 0x0107);
        assert_eq!(peer.status().take_peer(), 0);
    }

    #[test]
    fn full_ring_would_block_and_partial_writes() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        assert_eq!(peer.write(&[1; 100]).unwrap(), 64);
        assert_eq!(peer.write(&[1; 1]), Err(RingError::WouldBlock));
        let mut buf = [0u8; 10];
        assert_eq!(owner.read(&mut buf).unwrap(), 10);
        assert_eq!(peer.write(&[2; 100]).unwrap(), 10);
        let mut all = [0u8; 128];
        assert_eq!(owner.read(&mut all).unwrap(), 64);
        assert_eq!(owner.read(&mut all), Err(RingError::WouldBlock));
    }

    #[test]
    fn eof_only_after_every_byte_and_half_close_each_way() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        peer.write(b"last words").unwrap();
        peer.close_write();
        assert!(owner.is_peer_write_closed());
        let mut buf = [0u8; 4];
        assert_eq!(owner.read(&mut buf).unwrap(), 4);
        assert_eq!(owner.read(&mut [0u8; 64]).unwrap(), 6);
        assert_eq!(owner.read(&mut buf).unwrap(), 0, "EOF");
        assert_eq!(owner.read(&mut buf).unwrap(), 0, "EOF stays");
        // The other direction still works after the peer's write half closed.
        owner.write(b"reply").unwrap();
        assert_eq!(peer.read(&mut [0u8; 8]).unwrap(), 5);
        assert_eq!(peer.write(b"x"), Err(RingError::Closed));
        // Reader close gives the writer BrokenPipe.
        peer.close_read();
        assert!(owner.is_peer_read_closed());
        assert_eq!(owner.write(b"more"), Err(RingError::BrokenPipe));
        assert!(!owner.is_closed());
        owner.close_write();
        owner.close_read();
        assert!(owner.is_closed());
    }

    /// Counts rings.
    #[derive(Default)]
    struct Rings(std::sync::atomic::AtomicUsize);

    impl Notify for Rings {
        fn notify(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Rings {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A pipe pair whose wakers count rings: (owner, peer, rings to the
    /// peer, rings to the owner).
    fn counted_pair(f: &Fixture) -> (BidirectionalPipe, BidirectionalPipe, Arc<Rings>, Arc<Rings>) {
        let block = f
            .alloc
            .alloc(BidirectionalPipe::block_size(64, 64))
            .unwrap();
        let (to_peer, to_owner) = (Arc::new(Rings::default()), Arc::new(Rings::default()));
        let owner = BidirectionalPipe::create(
            &f.region,
            block,
            64,
            64,
            PeerWakers::single(to_peer.clone()),
        )
        .unwrap();
        let peer = BidirectionalPipe::attach(
            &f.region,
            owner.layout(),
            PeerWakers::single(to_owner.clone()),
        )
        .unwrap();
        (owner, peer, to_peer, to_owner)
    }

    #[test]
    fn closes_ring_the_peer_unless_the_owner_closes_a_ring_the_peer_left() {
        let f = fixture();
        let (mut owner, mut peer, to_peer, to_owner) = counted_pair(&f);
        // The owner closes its writing half while the peer still reads: rung.
        owner.close_write();
        assert_eq!(to_peer.count(), 1);
        // The peer leaves both rings; each close rings the owner, who frees
        // the block on seeing all four flags.
        peer.close_read();
        peer.close_write();
        assert_eq!(to_owner.count(), 2);
        // The owner's last close is on a ring the peer has left: no ring.
        owner.close_read();
        assert_eq!(to_peer.count(), 1);
        assert!(owner.is_closed());

        // The other order: the owner goes first, so every close rings.
        let (mut owner, mut peer, to_peer, to_owner) = counted_pair(&f);
        owner.close_read();
        owner.close_write();
        assert_eq!(to_peer.count(), 2);
        peer.close_write();
        peer.close_read();
        assert_eq!(
            to_owner.count(),
            2,
            "the peer's closes ring even on rings the owner left"
        );
    }

    #[test]
    fn block_returns_to_allocator_when_both_halves_drop() {
        let f = fixture();
        let (owner, peer) = pair(&f, 4096);
        assert!(f.alloc.stats().allocated > 0);
        drop(peer);
        let (tx, rx) = owner.split();
        drop(tx);
        assert!(
            f.alloc.stats().allocated > 0,
            "consumer half still holds the block"
        );
        drop(rx);
        assert_eq!(f.alloc.stats().allocated, 0);
    }

    #[test]
    fn attach_validates_layout_against_region() {
        let f = fixture();
        let l = PipeLayout::new(ShmOffset(1 << 20), 4096, 4096).unwrap();
        assert!(matches!(
            BidirectionalPipe::attach(&f.region, l, nowake()),
            Err(PipeError::Offset(OffsetError::OutOfBounds { .. }))
        ));
        assert!(matches!(
            PipeLayout::new(ShmOffset(0), 100, 4096),
            Err(PipeError::BadCapacity(100))
        ));
        assert!(matches!(
            PipeLayout::new(ShmOffset(0), 1 << 31, 4096),
            Err(PipeError::BadCapacity(_))
        ));
        assert!(matches!(
            PipeLayout::new(ShmOffset(100), 4096, 4096),
            Err(PipeError::Offset(OffsetError::Misaligned { .. }))
        ));
        assert!(matches!(
            PipeLayout::new(ShmOffset(!4095), 4096, 4096),
            Err(PipeError::Offset(OffsetError::Overflow { .. }))
        ));
    }

    #[test]
    fn tail_past_capacity_is_corrupt_and_poisons_the_pipe() {
        let f = fixture();
        let (mut owner, peer) = pair(&f, 64);
        let base = owner.layout().offset().0;
        // The peer claims to have written 65 bytes into a 64-byte ring.
        poke(&f.region, base + TO_OWNER_HEADER, 65);
        let e = owner.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(
            e,
            RingError::Corrupt {
                head: 0,
                tail: 65,
                capacity: 64
            }
        );
        // Poisoned: the other direction refuses too, even after the peer
        // "fixes" its index.
        poke(&f.region, base + TO_OWNER_HEADER, 0);
        assert!(matches!(owner.write(b"x"), Err(RingError::Corrupt { .. })));
        assert!(matches!(
            owner.read(&mut [0u8; 1]),
            Err(RingError::Corrupt { .. })
        ));
        drop(peer);
    }

    #[test]
    fn head_ahead_of_tail_is_corrupt() {
        let f = fixture();
        let (mut owner, _peer) = pair(&f, 64);
        let base = owner.layout().offset().0;
        owner.write(&[0; 64]).unwrap();
        // Peer's head runs ahead of our tail: would make free space > cap.
        poke(&f.region, base + TO_PEER_HEADER + 128, 1000);
        assert!(matches!(
            owner.write(&[0; 1]),
            Err(RingError::Corrupt {
                head: 1000,
                tail: 64,
                capacity: 64
            })
        ));
    }

    /// A peer scribbling random bytes over both ring headers and the data
    /// areas while the owner keeps using the pipe: the owner sees only data
    /// (garbage), `WouldBlock`, EOF, `BrokenPipe` or `Corrupt` — never a
    /// panic, never an access outside the block (the block is surrounded by
    /// canary blocks that must stay intact).
    #[test]
    fn scribbling_peer_gets_errors_not_panics() {
        let f = fixture();
        let canary_before = f.alloc.alloc(4096).unwrap();
        let (mut owner, _peer) = pair(&f, 256);
        let canary_after = f.alloc.alloc(4096).unwrap();
        let canary = |a: &crate::Allocation, v: u64| {
            for w in 0..512 {
                poke(&f.region, a.offset().0 + w * 8, v);
            }
        };
        canary(&canary_before, 0xa5a5_a5a5_a5a5_a5a5);
        canary(&canary_after, 0x5a5a_5a5a_5a5a_5a5a);
        let base = owner.layout().offset().0;
        let size = owner.layout().size();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut outcomes = [0usize; 6];
        for round in 0..20_000 {
            // Scribble: a random aligned word anywhere in the block, biased
            // towards the index and flag words of both headers.
            let off = if rng.gen_bool(0.5) {
                let hdr = if rng.gen() {
                    TO_OWNER_HEADER
                } else {
                    TO_PEER_HEADER
                };
                hdr + 128 * rng.gen_range(0..(RING_HEADER_SIZE as u64 / 128))
            } else {
                rng.gen_range(0..size / 8) * 8
            };
            let val = match rng.gen_range(0..4) {
                0 => rng.gen::<u64>(),
                1 => rng.gen_range(0..512),
                2 => u64::MAX - rng.gen_range(0..512),
                _ => u64::from(rng.gen::<bool>()),
            };
            poke(&f.region, base + off, val);
            let mut buf = [0u8; 300];
            let r = if round % 2 == 0 {
                owner.read(&mut buf)
            } else {
                owner.write(&buf)
            };
            let slot = match r {
                Ok(0) => 0,
                Ok(_) => 1,
                Err(RingError::WouldBlock) => 2,
                Err(RingError::BrokenPipe) | Err(RingError::Closed) => 3,
                Err(RingError::Corrupt { .. }) => 4,
                Err(RingError::Overcommit { .. } | RingError::RecordTooLarge { .. }) => 5,
            };
            outcomes[slot] += 1;
            if slot == 4 {
                // Poisoned; start over on a fresh pipe, as the monitor would.
                let (o, _p) = pair(&f, 256);
                owner = o;
            }
        }
        assert!(outcomes[4] > 0, "some scribbles are detected: {outcomes:?}");
        assert_eq!(outcomes[5], 0);
        for w in 0..512 {
            let rd = |a: &crate::Allocation| {
                let p = f
                    .region
                    .from_offset(ShmOffset(a.offset().0 + w * 8), 8, 8)
                    .unwrap();
                // SAFETY: in bounds, aligned.
                unsafe { p.as_ptr().cast::<u64>().read_volatile() }
            };
            assert_eq!(rd(&canary_before), 0xa5a5_a5a5_a5a5_a5a5);
            assert_eq!(rd(&canary_after), 0x5a5a_5a5a_5a5a_5a5a);
        }
    }

    #[test]
    fn zero_copy_segments_wrap_and_commit() {
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 64);
        peer.write(&[9; 50]).unwrap();
        assert_eq!(owner.read(&mut [0; 50]).unwrap(), 50);
        // Free space now wraps: 14 bytes at the end, 50 at the start.
        let segs = peer.tx().writable_segments().unwrap();
        assert_eq!(segs.as_slice().len(), 2);
        assert_eq!(segs.as_slice()[0].len(), 14);
        assert_eq!(segs.total(), 64);
        assert!(matches!(
            peer.tx().commit(65),
            Err(RingError::Overcommit {
                requested: 65,
                available: 64
            })
        ));
        peer.tx().commit(20).unwrap();
        let segs = owner.rx().readable_segments().unwrap();
        assert_eq!(segs.total(), 20);
        assert_eq!(segs.as_slice().len(), 2);
        owner.rx().consume(20).unwrap();
        assert_eq!(owner.rx().available().unwrap(), 0);
    }

    #[test]
    fn fd_relay_moves_bytes_without_a_buffer() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let f = fixture();
        let (mut owner, mut peer) = pair(&f, 4096);
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[7u8; 5000]).unwrap();
        // socket → ring (readv), bounded by the free space.
        assert_eq!(
            owner.tx().read_from_fd(b.as_fd(), usize::MAX).unwrap(),
            4096
        );
        let mut got = vec![0u8; 4096];
        assert_eq!(peer.read(&mut got).unwrap(), 4096);
        assert!(got.iter().all(|&x| x == 7));
        // ring → socket (writev), bounded by `limit`.
        peer.write(&[3u8; 1000]).unwrap();
        assert_eq!(owner.rx().write_to_fd(b.as_fd(), 600).unwrap(), 600);
        assert_eq!(owner.rx().write_to_fd(b.as_fd(), 600).unwrap(), 400);
        let mut back = [0u8; 1000];
        a.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&x| x == 3));
    }

    #[test]
    fn blocking_stream_with_doorbells_across_threads() {
        use crate::stream::SyncStream;
        use std::io::{Read, Write};
        let f = fixture();
        // Four doorbells: each blocking role sleeps on its own.
        let owner_rd = Arc::new(Doorbell::new().unwrap());
        let owner_wr = Arc::new(Doorbell::new().unwrap());
        let peer_rd = Arc::new(Doorbell::new().unwrap());
        let peer_wr = Arc::new(Doorbell::new().unwrap());
        let block = f
            .alloc
            .alloc(BidirectionalPipe::block_size(256, 256))
            .unwrap();
        let owner = BidirectionalPipe::create(
            &f.region,
            block,
            256,
            256,
            PeerWakers {
                reader: peer_rd.clone(),
                writer: peer_wr.clone(),
            },
        )
        .unwrap();
        let peer = BidirectionalPipe::attach(
            &f.region,
            owner.layout(),
            PeerWakers {
                reader: owner_rd.clone(),
                writer: owner_wr.clone(),
            },
        )
        .unwrap();
        let o = SyncStream::new(owner, owner_rd, owner_wr);
        let p = SyncStream::new(peer, peer_rd, peer_wr);
        let (mut pr, mut pw) = p.split();
        // Echo in the peer: reader thread forwards to writer.
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 100];
            loop {
                let n = pr.read(&mut buf).unwrap();
                if n == 0 {
                    pw.shutdown();
                    return;
                }
                pw.write_all(&buf[..n]).unwrap();
            }
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (mut or, mut ow) = o.split();
        let sender = {
            let data = data.clone();
            std::thread::spawn(move || {
                ow.write_all(&data).unwrap();
                ow.shutdown();
            })
        };
        let mut back = Vec::new();
        or.read_to_end(&mut back).unwrap();
        sender.join().unwrap();
        echo.join().unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn blocking_read_times_out_and_write_after_reader_close_is_broken_pipe() {
        use crate::stream::SyncStream;
        use std::io::{ErrorKind, Read, Write};
        use std::time::Duration;
        let f = fixture();
        let (owner, peer) = pair(&f, 64);
        let mut o = SyncStream::new(owner, Doorbell::new().unwrap(), Doorbell::new().unwrap());
        o.reader().set_timeout(Some(Duration::from_millis(30)));
        assert_eq!(
            o.read(&mut [0u8; 4]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        drop(peer); // closes both of the peer's halves
        assert_eq!(o.read(&mut [0u8; 4]).unwrap(), 0);
        assert_eq!(o.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
