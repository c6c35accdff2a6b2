//! The ring header as it sits in shared memory: six 128-byte lines made only
//! of atomics, so that a reference to it never covers a plain byte the peer
//! may write.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Separation between fields written by different sides. Fixed at 128 bytes
/// (two 64-byte lines, against adjacent-line prefetch) so both processes agree
/// on the layout whatever `CachePadded` would choose on their target.
pub const LINE: usize = 128;

/// One line holding a 64-bit counter.
#[repr(C, align(128))]
pub(crate) struct Line64 {
    pub(crate) v: AtomicU64,
    #[cfg(not(loom))]
    _pad: [AtomicU64; 15],
}

/// One line holding a 32-bit flag.
#[repr(C, align(128))]
pub(crate) struct Line32 {
    pub(crate) v: AtomicU32,
    #[cfg(not(loom))]
    _pad: [AtomicU32; 31],
}

impl Line64 {
    fn new() -> Self {
        Self {
            v: AtomicU64::new(0),
            #[cfg(not(loom))]
            _pad: [const { AtomicU64::new(0) }; 15],
        }
    }
}

impl Line32 {
    fn new() -> Self {
        Self {
            v: AtomicU32::new(0),
            #[cfg(not(loom))]
            _pad: [const { AtomicU32::new(0) }; 31],
        }
    }
}

/// The shared header of one SPSC byte ring. See DATAPIPE.md for the layout
/// and for which store pairs with which load.
///
/// | offset | field            | written by | meaning                                   |
/// |-------:|------------------|------------|-------------------------------------------|
/// |      0 | `tail: u64`      | producer   | bytes ever written (free-running)         |
/// |    128 | `head: u64`      | consumer   | bytes ever read (free-running)            |
/// |    256 | `writer_closed`  | producer   | 1 once the producer will write no more    |
/// |    384 | `reader_closed`  | consumer   | 1 once the consumer will read no more     |
/// |    512 | `reader_waiting` | consumer   | 1 while the consumer may sleep for data   |
/// |    640 | `writer_waiting` | producer   | 1 while the producer may sleep for space  |
///
/// Invariant for an honest peer: `tail - head <= capacity` (wrapping
/// arithmetic). Each side validates the peer's index against it on every load.
#[repr(C)]
pub struct RingHeader {
    pub(crate) tail: Line64,
    pub(crate) head: Line64,
    pub(crate) writer_closed: Line32,
    pub(crate) reader_closed: Line32,
    pub(crate) reader_waiting: Line32,
    pub(crate) writer_waiting: Line32,
}

/// Bytes one ring header occupies in shared memory.
pub const RING_HEADER_SIZE: usize = 6 * LINE;

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<RingHeader>() == RING_HEADER_SIZE);
    assert!(align_of::<RingHeader>() == LINE);
    assert!(offset_of!(RingHeader, tail) == 0);
    assert!(offset_of!(RingHeader, head) == 128);
    assert!(offset_of!(RingHeader, writer_closed) == 256);
    assert!(offset_of!(RingHeader, reader_closed) == 384);
    assert!(offset_of!(RingHeader, reader_waiting) == 512);
    assert!(offset_of!(RingHeader, writer_waiting) == 640);
    assert!(size_of::<Line64>() == LINE && size_of::<Line32>() == LINE);
    // The header must be made only of atomics: 8-byte and 4-byte atomics
    // tile each line exactly, so no byte of it is a plain (non-atomic) byte.
    assert!(16 * size_of::<AtomicU64>() == LINE && 32 * size_of::<AtomicU32>() == LINE);
};

impl RingHeader {
    /// A zeroed header in private memory (used under loom and in tests).
    pub fn new() -> Self {
        Self {
            tail: Line64::new(),
            head: Line64::new(),
            writer_closed: Line32::new(),
            reader_closed: Line32::new(),
            reader_waiting: Line32::new(),
            writer_waiting: Line32::new(),
        }
    }

    /// Returns the header to its initial state (empty ring, both sides open,
    /// nobody waiting). Only the ring's owner calls this, before announcing
    /// the ring's offset to the peer; the announcement itself (a control
    /// message on a ring with Release/Acquire publication) orders these stores
    /// before any peer access.
    pub fn reset(&self) {
        self.tail.v.store(0, Ordering::Relaxed);
        self.head.v.store(0, Ordering::Relaxed);
        self.writer_closed.v.store(0, Ordering::Relaxed);
        self.reader_closed.v.store(0, Ordering::Relaxed);
        self.reader_waiting.v.store(0, Ordering::Relaxed);
        self.writer_waiting.v.store(0, Ordering::Relaxed);
    }
}

impl Default for RingHeader {
    fn default() -> Self {
        Self::new()
    }
}
