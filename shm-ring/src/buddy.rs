//! A buddy allocator over the byte range of a shared region.
//!
//! All metadata lives in this process's private memory: the peer can scribble
//! over every byte of the region and the allocator's view of which blocks are
//! free is unaffected.
//!
//! Blocks are powers of two from `min_block` up to the arena size. Each order
//! keeps a free list as a vector of block indices plus, per index, its
//! position in that vector, so removing a buddy during coalescing is O(1) and
//! `alloc` / `free` are O(log n) in the number of orders.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::offset::ShmOffset;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// A zero-byte request.
    #[error("zero-sized allocation")]
    ZeroSize,
    /// The request is larger than the whole arena.
    #[error("allocation of {requested} bytes exceeds the {arena}-byte arena")]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The arena's size.
        arena: u64,
    },
    /// No free block is large enough.
    #[error("region exhausted: need a {block}-byte block for {requested} bytes, largest free block is {largest_free} bytes")]
    Exhausted {
        /// Bytes asked for.
        requested: u64,
        /// The block size that would have served it.
        block: u64,
        /// The largest free block now.
        largest_free: u64,
    },
}

/// Why a free was refused (always a bug in the caller, never peer input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// The offset is not the start of a live allocation.
    #[error("offset {0} is not the start of a live allocation")]
    NotAllocated(ShmOffset),
}

/// Why an allocator could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Sizes must be powers of two with `min_block <= arena`.
    #[error("arena {arena} and minimum block {min_block} must be powers of two with min_block <= arena and arena / min_block < 2^32")]
    BadGeometry {
        /// The arena size given.
        arena: u64,
        /// The minimum block size given.
        min_block: u64,
    },
}

/// A snapshot of the allocator's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in live blocks (block sizes, not request sizes).
    pub allocated: u64,
    /// Bytes in free blocks.
    pub free: u64,
    /// The largest block that can be allocated now.
    pub largest_free: u64,
    /// Number of live allocations.
    pub live: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    /// Not the start of any block, or the start of a block that has been
    /// split (its first half carries the tag).
    Inner,
    /// Start of a free block of this order, at `pos[index]` in its list.
    Free(u8),
    /// Start of a live block of this order.
    Used(u8),
}

/// The allocator proper: pure bookkeeping over block indices.
#[derive(Debug)]
pub struct BuddyAllocator {
    min_shift: u32,
    max_order: u8,
    /// `free[k]` holds the indices (in units of `min_block`) of free blocks of
    /// order `k` (size `min_block << k`).
    free: Vec<Vec<u32>>,
    slot: Vec<Slot>,
    /// For a `Free` slot, its position in `free[order]`.
    pos: Vec<u32>,
    allocated: u64,
    live: u64,
}

impl BuddyAllocator {
    /// An allocator for `arena` bytes handing out blocks of at least
    /// `min_block` bytes; both must be powers of two.
    ///
    /// # Errors
    /// [`ConfigError::BadGeometry`].
    pub fn new(arena: u64, min_block: u64) -> Result<Self, ConfigError> {
        let bad = ConfigError::BadGeometry { arena, min_block };
        if !arena.is_power_of_two() || !min_block.is_power_of_two() || min_block > arena {
            return Err(bad);
        }
        let blocks = arena / min_block;
        let blocks32 = u32::try_from(blocks).map_err(|_| bad)?;
        let n = usize::try_from(blocks).map_err(|_| bad)?;
        let max_order = u8::try_from(blocks.trailing_zeros()).map_err(|_| bad)?;
        let mut free = vec![Vec::new(); usize::from(max_order) + 1];
        free[usize::from(max_order)].push(0);
        let mut slot = vec![Slot::Inner; n];
        slot[0] = Slot::Free(max_order);
        debug_assert!(blocks32 >= 1);
        Ok(Self {
            min_shift: min_block.trailing_zeros(),
            max_order,
            free,
            slot,
            pos: vec![0; n],
            allocated: 0,
            live: 0,
        })
    }

    /// The arena's size in bytes.
    pub fn arena(&self) -> u64 {
        self.block_size(self.max_order)
    }

    /// The smallest block handed out.
    pub fn min_block(&self) -> u64 {
        1 << self.min_shift
    }

    fn block_size(&self, order: u8) -> u64 {
        1u64 << (self.min_shift + u32::from(order))
    }

    /// The block size a request of `size` bytes would occupy.
    pub fn block_size_for(&self, size: u64) -> Option<u64> {
        self.order_for(size).map(|k| self.block_size(k))
    }

    fn order_for(&self, size: u64) -> Option<u8> {
        if size == 0 || size > self.arena() {
            return None;
        }
        let blocks = size.div_ceil(self.min_block());
        let order = blocks.next_power_of_two().trailing_zeros();
        u8::try_from(order).ok()
    }

    fn push_free(&mut self, idx: u32, order: u8) {
        let list = &mut self.free[usize::from(order)];
        self.pos[idx as usize] = list.len() as u32;
        list.push(idx);
        self.slot[idx as usize] = Slot::Free(order);
    }

    fn remove_free(&mut self, idx: u32, order: u8) {
        let p = self.pos[idx as usize] as usize;
        let list = &mut self.free[usize::from(order)];
        debug_assert_eq!(list[p], idx);
        list.swap_remove(p);
        if let Some(&moved) = list.get(p) {
            self.pos[moved as usize] = p as u32;
        }
        self.slot[idx as usize] = Slot::Inner;
    }

    /// Allocates a block of at least `size` bytes and returns its offset.
    ///
    /// # Errors
    /// [`AllocError`] for a zero, oversized or unsatisfiable request.
    pub fn alloc(&mut self, size: u64) -> Result<ShmOffset, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        let Some(order) = self.order_for(size) else {
            return Err(AllocError::TooLarge {
                requested: size,
                arena: self.arena(),
            });
        };
        let Some(mut k) = (order..=self.max_order).find(|&k| !self.free[usize::from(k)].is_empty())
        else {
            return Err(AllocError::Exhausted {
                requested: size,
                block: self.block_size(order),
                largest_free: self.largest_free(),
            });
        };
        let idx = *self.free[usize::from(k)]
            .last()
            .expect("list checked non-empty");
        self.remove_free(idx, k);
        while k > order {
            k -= 1;
            self.push_free(idx + (1u32 << k), k);
        }
        self.slot[idx as usize] = Slot::Used(order);
        self.allocated += self.block_size(order);
        self.live += 1;
        Ok(ShmOffset(u64::from(idx) << self.min_shift))
    }

    /// Returns the block starting at `offset` and coalesces it with its free
    /// buddies. Returns the size of the block freed.
    ///
    /// # Errors
    /// [`FreeError::NotAllocated`] if `offset` is not the start of a live
    /// block (a double free, or an offset this allocator never returned).
    pub fn free(&mut self, offset: ShmOffset) -> Result<u64, FreeError> {
        let bad = FreeError::NotAllocated(offset);
        if offset.0 & (self.min_block() - 1) != 0 || offset.0 >= self.arena() {
            return Err(bad);
        }
        let mut idx = u32::try_from(offset.0 >> self.min_shift).map_err(|_| bad)?;
        let Slot::Used(mut order) = self.slot[idx as usize] else {
            return Err(bad);
        };
        let freed = self.block_size(order);
        self.allocated -= freed;
        self.live -= 1;
        self.slot[idx as usize] = Slot::Inner;
        while order < self.max_order {
            let buddy = idx ^ (1u32 << order);
            if self.slot[buddy as usize] != Slot::Free(order) {
                break;
            }
            self.remove_free(buddy, order);
            idx = idx.min(buddy);
            order += 1;
        }
        self.push_free(idx, order);
        Ok(freed)
    }

    /// The largest block that could be allocated now (0 if none).
    pub fn largest_free(&self) -> u64 {
        (0..=self.max_order)
            .rev()
            .find(|&k| !self.free[usize::from(k)].is_empty())
            .map_or(0, |k| self.block_size(k))
    }

    /// Occupancy figures.
    pub fn stats(&self) -> AllocStats {
        AllocStats {
            allocated: self.allocated,
            free: self.arena() - self.allocated,
            largest_free: self.largest_free(),
            live: self.live,
        }
    }
}

/// A thread-safe, shareable allocator whose allocations free themselves on
/// drop.
#[derive(Debug, Clone)]
pub struct ShmAllocator {
    inner: Arc<Mutex<BuddyAllocator>>,
}

impl ShmAllocator {
    /// Wraps an allocator for shared, RAII use.
    pub fn new(alloc: BuddyAllocator) -> Self {
        Self {
            inner: Arc::new(Mutex::new(alloc)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BuddyAllocator> {
        // The allocator's invariants hold between calls, and no method panics
        // midway, so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates at least `size` bytes.
    ///
    /// # Errors
    /// See [`BuddyAllocator::alloc`].
    pub fn alloc(&self, size: u64) -> Result<Allocation, AllocError> {
        let mut a = self.lock();
        let offset = a.alloc(size)?;
        let len = a.block_size_for(size).unwrap_or(size);
        drop(a);
        Ok(Allocation {
            offset,
            len,
            owner: self.clone(),
        })
    }

    /// Occupancy figures.
    pub fn stats(&self) -> AllocStats {
        self.lock().stats()
    }
}

/// A live block of the region; returned to the allocator on drop.
#[derive(Debug)]
pub struct Allocation {
    offset: ShmOffset,
    len: u64,
    owner: ShmAllocator,
}

impl Allocation {
    /// Where the block starts.
    pub fn offset(&self) -> ShmOffset {
        self.offset
    }

    /// The block's size (the request rounded up to a power of two).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: blocks are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let r = self.owner.lock().free(self.offset);
        debug_assert!(r.is_ok(), "allocation {} freed twice", self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn geometry_is_validated() {
        assert!(BuddyAllocator::new(1 << 20, 4096).is_ok());
        assert!(BuddyAllocator::new(3 << 20, 4096).is_err());
        assert!(BuddyAllocator::new(4096, 8192).is_err());
        assert!(BuddyAllocator::new(1 << 20, 1000).is_err());
    }

    #[test]
    fn splits_and_coalesces() {
        let mut a = BuddyAllocator::new(1 << 16, 4096).unwrap();
        let x = a.alloc(1).unwrap();
        let y = a.alloc(4096).unwrap();
        let z = a.alloc(8193).unwrap();
        assert_eq!(x, ShmOffset(0));
        assert_eq!(y, ShmOffset(4096));
        assert_eq!(z.0 % 16384, 0);
        assert_eq!(a.stats().allocated, 4096 + 4096 + 16384);
        assert_eq!(a.stats().live, 3);
        a.free(y).unwrap();
        a.free(x).unwrap();
        a.free(z).unwrap();
        assert_eq!(
            a.stats(),
            AllocStats {
                allocated: 0,
                free: 1 << 16,
                largest_free: 1 << 16,
                live: 0
            }
        );
    }

    #[test]
    fn exhaustion_and_misuse_are_errors() {
        let mut a = BuddyAllocator::new(1 << 14, 4096).unwrap();
        assert_eq!(a.alloc(0), Err(AllocError::ZeroSize));
        assert!(matches!(a.alloc(1 << 15), Err(AllocError::TooLarge { .. })));
        let x = a.alloc(1 << 13).unwrap();
        let _y = a.alloc(1 << 12).unwrap();
        let e = a.alloc(1 << 13).unwrap_err();
        assert_eq!(
            e,
            AllocError::Exhausted {
                requested: 1 << 13,
                block: 1 << 13,
                largest_free: 1 << 12
            }
        );
        assert!(e.to_string().contains("largest free block is 4096 bytes"));
        a.free(x).unwrap();
        assert_eq!(a.free(x), Err(FreeError::NotAllocated(x)));
        assert_eq!(
            a.free(ShmOffset(100)),
            Err(FreeError::NotAllocated(ShmOffset(100)))
        );
        assert_eq!(
            a.free(ShmOffset(1 << 20)),
            Err(FreeError::NotAllocated(ShmOffset(1 << 20)))
        );
    }

    #[test]
    fn raii_allocation_frees_on_drop() {
        let a = ShmAllocator::new(BuddyAllocator::new(1 << 20, 4096).unwrap());
        {
            let x = a.alloc(5000).unwrap();
            assert_eq!(x.len(), 8192);
            assert_eq!(a.stats().allocated, 8192);
        }
        assert_eq!(a.stats().allocated, 0);
        assert_eq!(a.stats().largest_free, 1 << 20);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..=(1 << 17)).prop_map(Op::Alloc),
            2 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Against a reference model (a map of live ranges): blocks never
        /// overlap, never leave the arena, are aligned to their size, the
        /// byte counts agree, and freeing everything coalesces to one block.
        #[test]
        fn never_overlaps_and_coalesces(ops in proptest::collection::vec(op(), 1..400)) {
            const ARENA: u64 = 1 << 20;
            let mut a = BuddyAllocator::new(ARENA, 4096).unwrap();
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc(size) => match a.alloc(size) {
                        Ok(off) => {
                            let len = a.block_size_for(size).unwrap();
                            prop_assert!(len >= size && len.is_power_of_two());
                            prop_assert_eq!(off.0 % len, 0, "block aligned to its size");
                            prop_assert!(off.0 + len <= ARENA);
                            if let Some((&s, &l)) = live.range(..off.0 + len).next_back() {
                                prop_assert!(s + l <= off.0, "overlap with {s:#x}+{l}");
                            }
                            live.insert(off.0, len);
                        }
                        Err(AllocError::Exhausted { largest_free, block, .. }) => {
                            prop_assert!(largest_free < block);
                            prop_assert_eq!(largest_free, a.largest_free());
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    },
                    Op::Free(i) => {
                        if live.is_empty() { continue; }
                        let key = *live.keys().nth(i % live.len()).unwrap();
                        let len = live.remove(&key).unwrap();
                        prop_assert_eq!(a.free(ShmOffset(key)), Ok(len));
                    }
                }
                prop_assert_eq!(a.stats().allocated, live.values().sum::<u64>());
                prop_assert_eq!(a.stats().live, live.len() as u64);
            }
            for (off, _) in std::mem::take(&mut live) {
                a.free(ShmOffset(off)).unwrap();
            }
            prop_assert_eq!(a.stats().largest_free, ARENA);
            prop_assert_eq!(a.free.iter().map(Vec::len).sum::<usize>(), 1, "one block left");
        }
    }
}
