//! Shared-memory transport: a sealed region, a buddy allocator over it, SPSC
//! byte rings with closed flags, bidirectional pipes, and eventfd doorbells.
//!
//! # Trust model
//! Two processes map one sealed memfd ([`ShmRegion`]) at different addresses.
//! The *owner* (the monitor) creates it and carves it with a private
//! [`BuddyAllocator`]; the *peer* (the guest) is untrusted and may write any
//! byte of the region at any time. Therefore:
//! - only byte offsets ([`ShmOffset`]) cross the boundary, and every one is
//!   bounds-, overflow- and alignment-checked before use;
//! - allocator metadata, ring capacities, data bases and each side's own index
//!   live in private memory; a side only *publishes* its index;
//! - the peer's index is loaded once per operation and validated
//!   (`tail - head <= capacity`); a violation is [`RingError::Corrupt`], which
//!   poisons the pipe — never a panic, never an access outside the ring;
//! - no `&[u8]`/`&mut [u8]` is formed over shared bytes; ring headers are made
//!   only of atomics and payload moves through one audited copy helper;
//! - the memfd is sealed against shrinking, so the peer cannot turn our
//!   accesses into `SIGBUS`.
//!
//! # Memory model
//! The producer copies bytes in, then stores `tail` with `Release`; the
//! consumer loads `tail` with `Acquire`, then copies out, then stores `head`
//! with `Release`, which the producer loads with `Acquire` before reusing the
//! space. A closed flag is stored with `Release` after the last index store,
//! so a side that sees it (`Acquire`) also sees every byte before it. The
//! sleep/wake handshake is a store–`SeqCst` fence–load on each side. DATAPIPE.md
//! has the full table; the loom models in `src/loom_tests.rs` check it.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use shm_ring::{BidirectionalPipe, BuddyAllocator, NoNotify, PeerWakers, ShmAllocator, ShmRegion};
//!
//! let region = Arc::new(ShmRegion::create("example", 1 << 20)?);
//! let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096)?);
//! let wake = PeerWakers::single(Arc::new(NoNotify));
//! let block = alloc.alloc(BidirectionalPipe::block_size(4096, 4096))?;
//! let mut owner = BidirectionalPipe::create(&region, block, 4096, 4096, wake.clone())?;
//! // In real use the peer maps the region from the memfd and learns the layout
//! // from a control message.
//! let mut peer = BidirectionalPipe::attach(&region, owner.layout(), wake)?;
//!
//! peer.write(b"ping")?;
//! let mut buf = [0u8; 16];
//! assert_eq!(owner.read(&mut buf)?, 4);
//! assert_eq!(&buf[..4], b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bitmap;
mod buddy;
mod contention;
#[cfg(not(loom))]
mod doorbell;
mod header;
mod mem;
mod offset;
#[cfg(not(loom))]
mod pipe;
#[cfg(not(loom))]
mod region;
mod ring;
#[cfg(not(loom))]
mod segments;
#[cfg(not(loom))]
mod stream;
mod sync;
mod wait;
#[cfg(not(loom))]
mod waitset;

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(not(loom))]
pub use bitmap::{NotifyBitmap, SlotNotify};
pub use buddy::{
    AllocError, AllocStats, Allocation, BuddyAllocator, ConfigError, FreeError, ShmAllocator,
};
pub use contention::{cpu_contended, yield_cpu, BACKOFF, CONTENDED_YIELD};
#[cfg(not(loom))]
pub use doorbell::Doorbell;
pub use header::{RingHeader, LINE, RING_HEADER_SIZE};
pub use offset::{check_range, OffsetError, ShmOffset};
#[cfg(not(loom))]
pub use pipe::{
    BidirectionalPipe, PeerWakers, PipeError, PipeLayout, PipeStatus, Side, MAX_RING_CAPACITY,
    MIN_RING_CAPACITY, OWNER_COUNTER, OWNER_STATUS, PEER_STATUS, PIPE_HEADER_AREA, TO_OWNER_HEADER,
    TO_PEER_HEADER,
};
#[cfg(not(loom))]
pub use region::{RegionError, ShmRegion, MIN_REGION_SIZE, REQUIRED_SEALS};
pub use ring::{spin_step, BlockingError, Consumer, Producer, RingError, DEFAULT_SPIN};
#[cfg(not(loom))]
pub use segments::{ReadSegments, Readable, Segment, Segments, Writable, WriteSegments};
#[cfg(not(loom))]
pub use stream::{SyncReader, SyncStream, SyncWriter};
pub use wait::{NoNotify, Notify, Wait, WaitError};
#[cfg(not(loom))]
pub use waitset::{Trigger, WaitSet};
