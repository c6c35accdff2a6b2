//! A notification bitmap in the shared region: which pipes want attention.
//!
//! One eventfd wakes the owner for all of a peer's pipes. So that the owner
//! need not scan every pipe on every wake, the peer sets the bit of the pipe it
//! is ringing for (`fetch_or`) *before* ringing; the owner, once woken, swaps
//! each non-zero word to zero and services the pipes whose bits were set. A
//! bit set after the owner's swap is followed by its own ring, so it is seen on
//! the next wake.
//!
//! Rings coalesce: a notifier whose `fetch_or` finds its bit already set does
//! not ring. The bit is one the owner has not taken yet, so the ring that
//! followed its setting is still to be handled (or is being handled before
//! the swap), and the swap that clears the bit comes later in the word's
//! modification order than our `fetch_or` — the owner's `Acquire` swap then
//! sees everything we published before it. Two notifications for one pipe in
//! quick succession (a stream dropping both its halves) cost one system call.
//!
//! The peer is untrusted: a bit it sets without cause only makes the owner
//! look at that pipe (a bounded, harmless check); a bit it never sets, or
//! leaves set, only delays its own pipes.

#[cfg(not(loom))]
use std::ptr::NonNull;
#[cfg(not(loom))]
use std::sync::Arc;

#[cfg(not(loom))]
use crate::offset::{OffsetError, ShmOffset};
#[cfg(not(loom))]
use crate::region::ShmRegion;
use crate::sync::{AtomicU64, Ordering};
#[cfg(not(loom))]
use crate::wait::Notify;

/// Sets `bit` of `word`; true if it was clear, i.e. the caller must ring the
/// owner's doorbell (see the module documentation for why a caller that
/// finds it set need not).
#[cfg_attr(all(loom, not(test)), allow(dead_code))]
pub(crate) fn mark(word: &AtomicU64, bit: u32) -> bool {
    // Release: what the setter published before is visible to the owner
    // that swaps the word with Acquire — also when the bit was already set,
    // as the owner's swap then reads from this read-modify-write's release
    // sequence.
    let mask = 1u64 << (bit % 64);
    word.fetch_or(mask, Ordering::Release) & mask == 0
}

/// Takes every bit of `word` (clearing them), for the owner.
#[cfg_attr(all(loom, not(test)), allow(dead_code))]
pub(crate) fn take(word: &AtomicU64) -> u64 {
    if word.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    word.swap(0, Ordering::Acquire)
}

/// A bitmap of `slots` bits at an offset of the region.
#[cfg(not(loom))]
pub struct NotifyBitmap {
    base: NonNull<AtomicU64>,
    words: usize,
    slots: u32,
    _region: Arc<ShmRegion>,
}

// SAFETY: `base` points into `_region`'s mapping, kept alive by the `Arc`; all
// access is atomic.
#[cfg(not(loom))]
unsafe impl Send for NotifyBitmap {}
// SAFETY: as above.
#[cfg(not(loom))]
unsafe impl Sync for NotifyBitmap {}

#[cfg(not(loom))]
impl std::fmt::Debug for NotifyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyBitmap")
            .field("slots", &self.slots)
            .finish()
    }
}

#[cfg(not(loom))]
impl NotifyBitmap {
    /// Bytes a bitmap of `slots` bits occupies (whole 64-bit words).
    pub fn bytes_for(slots: u32) -> u64 {
        u64::from(slots).div_ceil(64) * 8
    }

    /// Resolves the bitmap at `offset` after validating the range.
    ///
    /// # Errors
    /// [`OffsetError`] if it does not lie inside the region 8-aligned.
    pub fn new(
        region: &Arc<ShmRegion>,
        offset: ShmOffset,
        slots: u32,
    ) -> Result<Self, OffsetError> {
        let bytes = Self::bytes_for(slots);
        let base = region.from_offset(offset, bytes, 8)?;
        Ok(Self {
            base: base.cast(),
            words: (bytes / 8) as usize,
            slots,
            _region: Arc::clone(region),
        })
    }

    /// Number of bits.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < self.words);
        // SAFETY: `i < words`, and `new` validated `words * 8` bytes from
        // `base`, 8-aligned, inside the mapping that `_region` keeps alive.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// Clears every bit (the owner, before announcing the bitmap).
    pub fn reset(&self) {
        for i in 0..self.words {
            self.word(i).store(0, Ordering::Relaxed);
        }
    }

    /// Sets bit `slot`; true if it was clear (ring the owner), false if it
    /// was already set (a ring for it is pending) or `slot` is out of range.
    pub fn set(&self, slot: u32) -> bool {
        slot < self.slots && mark(self.word((slot / 64) as usize), slot)
    }

    /// Takes every set bit (clearing them) and calls `f` with each slot.
    pub fn take(&self, mut f: impl FnMut(u32)) {
        for i in 0..self.words {
            let mut bits = take(self.word(i));
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let slot = (i as u32) * 64 + b;
                if slot < self.slots {
                    f(slot);
                }
            }
        }
    }

    /// A [`Notify`] for one pipe: sets its bit, then rings `bell` if the bit
    /// was clear.
    pub fn notifier(self: &Arc<Self>, slot: u32, bell: Arc<dyn Notify>) -> SlotNotify {
        SlotNotify {
            bitmap: Arc::clone(self),
            slot,
            bell,
        }
    }
}

/// Sets one slot's bit, then rings the owner's doorbell unless the bit was
/// already set (a ring for it is pending).
#[cfg(not(loom))]
pub struct SlotNotify {
    bitmap: Arc<NotifyBitmap>,
    slot: u32,
    bell: Arc<dyn Notify>,
}

#[cfg(not(loom))]
impl Notify for SlotNotify {
    fn notify(&self) {
        if self.bitmap.set(self.slot) {
            self.bell.notify();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::wait::NoNotify;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Notify for Count {
        fn notify(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_pending_bit_coalesces_rings() {
        let region = Arc::new(ShmRegion::create("bm", 8192).unwrap());
        let bm = Arc::new(NotifyBitmap::new(&region, ShmOffset(4096), 130).unwrap());
        bm.reset();
        let bell = Arc::new(Count::default());
        let rings = || bell.0.load(std::sync::atomic::Ordering::Relaxed);
        let five = bm.notifier(5, bell.clone());
        let seventy = bm.notifier(70, bell.clone());
        five.notify();
        five.notify();
        assert_eq!(rings(), 1, "the second notify found its bit pending");
        seventy.notify();
        assert_eq!(rings(), 2, "another slot's bit was clear");
        let mut got = Vec::new();
        bm.take(|s| got.push(s));
        assert_eq!(got, vec![5, 70]);
        five.notify();
        assert_eq!(rings(), 3, "taken bits ring again");
        // Out of range: nothing to take, so nothing to ring for.
        bm.notifier(130, bell.clone()).notify();
        assert_eq!(rings(), 3);
    }

    #[test]
    fn set_and_take() {
        let region = Arc::new(ShmRegion::create("bm", 8192).unwrap());
        let bm = Arc::new(NotifyBitmap::new(&region, ShmOffset(4096), 130).unwrap());
        bm.reset();
        assert!(bm.set(0));
        assert!(bm.set(64));
        assert!(bm.set(129));
        assert!(!bm.set(130));
        bm.notifier(3, Arc::new(NoNotify)).notify();
        let mut got = Vec::new();
        bm.take(|s| got.push(s));
        assert_eq!(got, vec![0, 3, 64, 129]);
        let mut again = Vec::new();
        bm.take(|s| again.push(s));
        assert!(again.is_empty());
    }

    #[test]
    fn out_of_region_is_refused() {
        let region = Arc::new(ShmRegion::create("bm", 4096).unwrap());
        assert!(NotifyBitmap::new(&region, ShmOffset(4096 - 8), 65).is_err());
        assert!(NotifyBitmap::new(&region, ShmOffset(4), 64).is_err());
    }
}
