//! A notification bitmap in the shared region: which pipes want attention.
//!
//! One eventfd wakes the owner for all of a peer's pipes. So that the owner
//! need not scan every pipe on every wake, the peer sets the bit of the pipe it
//! is ringing for (`fetch_or`) *before* ringing; the owner, once woken, swaps
//! each non-zero word to zero and services the pipes whose bits were set. A
//! bit set after the owner's swap is followed by its own ring, so it is seen on
//! the next wake. The peer is untrusted: a bit it sets without cause only makes
//! the owner look at that pipe (a bounded, harmless check); a bit it never sets
//! only delays its own pipe.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::offset::{OffsetError, ShmOffset};
use crate::region::ShmRegion;
use crate::sync::{AtomicU64, Ordering};
use crate::wait::Notify;

/// A bitmap of `slots` bits at an offset of the region.
pub struct NotifyBitmap {
    base: NonNull<AtomicU64>,
    words: usize,
    slots: u32,
    _region: Arc<ShmRegion>,
}

// SAFETY: `base` points into `_region`'s mapping, kept alive by the `Arc`; all
// access is atomic.
unsafe impl Send for NotifyBitmap {}
// SAFETY: as above.
unsafe impl Sync for NotifyBitmap {}

impl std::fmt::Debug for NotifyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyBitmap")
            .field("slots", &self.slots)
            .finish()
    }
}

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

    /// Sets bit `slot`; false if `slot` is out of range.
    pub fn set(&self, slot: u32) -> bool {
        if slot >= self.slots {
            return false;
        }
        // Release: what the setter published before is visible to the owner
        // that swaps the word with Acquire.
        self.word((slot / 64) as usize)
            .fetch_or(1 << (slot % 64), Ordering::Release);
        true
    }

    /// Takes every set bit (clearing them) and calls `f` with each slot.
    pub fn take(&self, mut f: impl FnMut(u32)) {
        for i in 0..self.words {
            let w = self.word(i);
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::Acquire);
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

    /// A [`Notify`] for one pipe: sets its bit, then rings `bell`.
    pub fn notifier(self: &Arc<Self>, slot: u32, bell: Arc<dyn Notify>) -> SlotNotify {
        SlotNotify {
            bitmap: Arc::clone(self),
            slot,
            bell,
        }
    }
}

/// Sets one slot's bit, then rings the owner's doorbell.
pub struct SlotNotify {
    bitmap: Arc<NotifyBitmap>,
    slot: u32,
    bell: Arc<dyn Notify>,
}

impl Notify for SlotNotify {
    fn notify(&self) {
        self.bitmap.set(self.slot);
        self.bell.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::NoNotify;

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
