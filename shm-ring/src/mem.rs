//! Where a ring's bytes live, private to one side: pointers into the shared
//! mapping (kept alive with the ring's block) and the audited copies in and
//! out of it. Under loom the header and data live on the heap instead.

#[cfg(loom)]
pub(crate) use heap::RingMem;
#[cfg(not(loom))]
pub(crate) use shared::RingMem;

#[cfg(not(loom))]
mod shared {
    use std::ptr::NonNull;
    use std::sync::Arc;

    use crate::buddy::Allocation;
    use crate::header::{RingHeader, RING_HEADER_SIZE};
    use crate::offset::{OffsetError, ShmOffset};
    use crate::region::ShmRegion;

    /// Where one ring lives: header and data pointers into a mapped region,
    /// and the capacity, all private to this side.
    #[derive(Clone)]
    pub(crate) struct RingMem {
        header: NonNull<RingHeader>,
        data: NonNull<u8>,
        cap: usize,
        _region: Arc<ShmRegion>,
        /// The block this ring lives in, freed once every half is dropped.
        _block: Option<Arc<Allocation>>,
    }

    // SAFETY: the pointers refer into `_region`'s mapping, which this struct
    // keeps alive and which is `Send + Sync` (see `ShmRegion`); the header is
    // only accessed through atomics and the data only through the audited copy
    // helpers below.
    unsafe impl Send for RingMem {}
    // SAFETY: as above.
    unsafe impl Sync for RingMem {}

    impl RingMem {
        /// Resolves a ring inside `region` after validating both ranges.
        pub(crate) fn new(
            region: &Arc<ShmRegion>,
            header: ShmOffset,
            data: ShmOffset,
            cap: u64,
            block: Option<Arc<Allocation>>,
        ) -> Result<Self, OffsetError> {
            let h = region.from_offset(header, RING_HEADER_SIZE as u64, 128)?;
            let d = region.from_offset(data, cap, 1)?;
            let cap = usize::try_from(cap).map_err(|_| OffsetError::Overflow {
                offset: data.0,
                len: cap,
            })?;
            Ok(Self {
                header: h.cast(),
                data: d,
                cap,
                _region: Arc::clone(region),
                _block: block,
            })
        }

        pub(crate) fn header(&self) -> &RingHeader {
            // SAFETY: `new` checked that the header range lies in the mapping
            // and is 128-aligned; the mapping outlives `self`; `RingHeader` is
            // made only of atomics (checked at compile time in header.rs), so
            // a shared reference is sound even while the peer writes to it.
            unsafe { self.header.as_ref() }
        }

        pub(crate) fn cap(&self) -> usize {
            self.cap
        }

        /// Copies `src` into the data area starting at ring position `pos`,
        /// wrapping at the end. `src.len() <= cap`.
        pub(crate) fn copy_in(&self, pos: u64, src: &[u8]) {
            let (start, first) = self.split(pos, src.len());
            let (a, b) = src.split_at(first);
            // SAFETY: `split` keeps `start + a.len() <= cap` and
            // `b.len() <= start <= cap`; `new` proved `data..data + cap` lies
            // in the mapping.
            unsafe {
                copy_to_shared(self.data.as_ptr().add(start), a);
                copy_to_shared(self.data.as_ptr(), b);
            }
        }

        /// Copies from the data area at ring position `pos` into `dst`,
        /// wrapping at the end. `dst.len() <= cap`.
        pub(crate) fn copy_out(&self, pos: u64, dst: &mut [u8]) {
            let (start, first) = self.split(pos, dst.len());
            let (a, b) = dst.split_at_mut(first);
            // SAFETY: as in `copy_in`.
            unsafe {
                copy_from_shared(a, self.data.as_ptr().add(start));
                copy_from_shared(b, self.data.as_ptr());
            }
        }

        /// Raw pointer to ring position `pos` and the contiguous bytes from
        /// there to the end of the data area.
        pub(crate) fn raw_at(&self, pos: u64) -> (*mut u8, usize) {
            let start = (pos as usize) & (self.cap - 1);
            // SAFETY: `start < cap`, inside the validated data range.
            (unsafe { self.data.as_ptr().add(start) }, self.cap - start)
        }

        fn split(&self, pos: u64, len: usize) -> (usize, usize) {
            debug_assert!(len <= self.cap);
            let start = (pos as usize) & (self.cap - 1);
            (start, len.min(self.cap - start))
        }
    }

    /// The one audited copy into peer-visible memory.
    ///
    /// # Safety
    /// `dst..dst + src.len()` must lie inside a live shared mapping.
    ///
    /// The peer may read or write the same bytes concurrently. For an honest
    /// peer the ring protocol gives this side exclusive use of the range
    /// (Release/Acquire on the indices); a dishonest one can only make the
    /// bytes garbage, which it controls anyway. No Rust reference to the
    /// shared bytes is ever formed, so no aliasing guarantee is violated.
    unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
        // SAFETY: the caller guarantees `dst` is valid for `src.len()` bytes;
        // a private slice cannot overlap the shared mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// The one audited copy out of peer-visible memory.
    ///
    /// # Safety
    /// `src..src + dst.len()` must lie inside a live shared mapping. See
    /// [`copy_to_shared`] for why a concurrent peer write is tolerated.
    unsafe fn copy_from_shared(dst: &mut [u8], src: *const u8) {
        // SAFETY: the caller guarantees `src` is valid for `dst.len()` bytes;
        // a private slice cannot overlap the shared mapping.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }
}

#[cfg(loom)]
mod heap {
    use loom::cell::UnsafeCell;
    use std::sync::Arc;

    use crate::header::RingHeader;

    /// Under loom the header and data live on the heap, and every data byte is
    /// a loom cell, so an access not ordered by the index protocol is reported
    /// as a causality violation.
    #[derive(Clone)]
    pub(crate) struct RingMem {
        header: Arc<RingHeader>,
        data: Arc<[UnsafeCell<u8>]>,
    }

    impl RingMem {
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) fn heap(cap: usize) -> Self {
            assert!(cap.is_power_of_two());
            Self {
                header: Arc::new(RingHeader::new()),
                data: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
            }
        }
        pub(crate) fn header(&self) -> &RingHeader {
            &self.header
        }
        pub(crate) fn cap(&self) -> usize {
            self.data.len()
        }
        pub(crate) fn copy_in(&self, pos: u64, src: &[u8]) {
            let mask = self.cap() - 1;
            for (i, &b) in src.iter().enumerate() {
                let cell = &self.data[(pos as usize + i) & mask];
                // SAFETY: loom checks this access is ordered against others.
                cell.with_mut(|p| unsafe { *p = b });
            }
        }
        pub(crate) fn copy_out(&self, pos: u64, dst: &mut [u8]) {
            let mask = self.cap() - 1;
            for (i, d) in dst.iter_mut().enumerate() {
                let cell = &self.data[(pos as usize + i) & mask];
                // SAFETY: loom checks this access is ordered against others.
                *d = cell.with(|p| unsafe { *p });
            }
        }
    }
}
