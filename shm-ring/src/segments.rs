//! A ring's readable or free bytes as up to two runs (they may wrap), for
//! zero-copy system calls and for copies that go through the ring's audited
//! helpers. A `Segments` keeps the mapping and the ring's block alive, so it
//! can never point into memory that is gone; its bytes are shared with the
//! peer and are never borrowed as a Rust slice.

use std::marker::PhantomData;

use crate::mem::RingMem;

/// A contiguous run of a ring's data area, as handed to `readv`/`writev`.
///
/// It is an address and a length, deliberately not a slice: the bytes are
/// shared with the peer and must not be borrowed as `&[u8]`/`&mut [u8]`.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
}

impl Segment {
    const EMPTY: Segment = Segment {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    /// Where the run starts (for comparing addresses; the bytes are reached
    /// through [`Segments`]' copies or a system call's iovec).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for an empty run.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// As an `iovec` for `readv`/`writev`/`recvmsg`/`sendmsg`.
    pub fn as_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        }
    }
}

/// Marks [`Segments`] of published bytes the reader may take.
#[derive(Debug)]
pub enum Readable {}

/// Marks [`Segments`] of free space the writer may fill.
#[derive(Debug)]
pub enum Writable {}

/// Published bytes, from [`Consumer::readable_segments`](crate::Consumer::readable_segments).
pub type ReadSegments = Segments<Readable>;
/// Free space, from [`Producer::writable_segments`](crate::Producer::writable_segments).
pub type WriteSegments = Segments<Writable>;

/// Up to two runs of one ring's data area: `len` bytes from ring position
/// `pos`.
pub struct Segments<D> {
    mem: RingMem,
    pos: u64,
    len: usize,
    runs: [Segment; 2],
    count: usize,
    _dir: PhantomData<D>,
}

impl<D> Clone for Segments<D> {
    fn clone(&self) -> Self {
        Self::new(&self.mem, self.pos, self.len)
    }
}

impl<D> std::fmt::Debug for Segments<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("pos", &self.pos)
            .field("len", &self.len)
            .field("runs", &self.as_slice())
            .finish()
    }
}

impl<D> Segments<D> {
    /// `len` bytes (at most the capacity) from ring position `pos` of `mem`.
    pub(crate) fn new(mem: &RingMem, pos: u64, len: usize) -> Self {
        let len = len.min(mem.cap());
        let (p, contiguous) = mem.raw_at(pos);
        let first = len.min(contiguous);
        let mut runs = [Segment { ptr: p, len: first }, Segment::EMPTY];
        let mut count = usize::from(first > 0);
        if len > first {
            let (p0, _) = mem.raw_at(0);
            runs[count] = Segment {
                ptr: p0,
                len: len - first,
            };
            count += 1;
        }
        Self {
            mem: mem.clone(),
            pos,
            len,
            runs,
            count,
            _dir: PhantomData,
        }
    }

    /// The non-empty runs, in ring order.
    pub fn as_slice(&self) -> &[Segment] {
        &self.runs[..self.count]
    }

    /// Total bytes over all runs.
    pub fn total(&self) -> usize {
        self.len
    }

    /// The `len` bytes starting `offset` bytes in (clamped to what these
    /// segments hold).
    pub fn range(&self, offset: usize, len: usize) -> Self {
        let offset = offset.min(self.len);
        let len = len.min(self.len - offset);
        Self::new(&self.mem, self.pos.wrapping_add(offset as u64), len)
    }

    /// As iovecs, with the count to pass, for a system call that reads
    /// ([`ReadSegments`]) or fills ([`WriteSegments`]) these bytes.
    pub fn iovecs(&self) -> ([libc::iovec; 2], usize) {
        (
            [self.runs[0].as_iovec(), self.runs[1].as_iovec()],
            self.count,
        )
    }
}

impl Segments<Readable> {
    /// Copies the first `dst.len()` bytes (at most [`total`](Self::total))
    /// out; returns how many.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len);
        self.mem.copy_out(self.pos, &mut dst[..n]);
        n
    }
}

impl Segments<Writable> {
    /// Copies `src` (at most [`total`](Self::total) bytes of it) into the
    /// free space, from its start; returns how many. Nothing is published
    /// until the producer commits.
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.len);
        self.mem.copy_in(self.pos, &src[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{BidirectionalPipe, BuddyAllocator, NoNotify, PeerWakers, ShmAllocator, ShmRegion};

    #[test]
    fn copies_go_through_the_wrap_and_ranges_clamp() {
        let region = Arc::new(ShmRegion::create("segments-test", 1 << 20).unwrap());
        let alloc = ShmAllocator::new(BuddyAllocator::new(region.size(), 4096).unwrap());
        let block = alloc.alloc(BidirectionalPipe::block_size(64, 64)).unwrap();
        let quiet = || PeerWakers::single(Arc::new(NoNotify));
        let mut owner = BidirectionalPipe::create(&region, block, 64, 64, quiet()).unwrap();
        let mut peer = BidirectionalPipe::attach(&region, owner.layout(), quiet()).unwrap();
        // Move the ring's position to 48 so that 40 bytes wrap.
        peer.write(&[0; 48]).unwrap();
        let mut sink = [0u8; 48];
        owner.read(&mut sink).unwrap();
        let free = peer.tx().writable_segments().unwrap();
        assert_eq!((free.total(), free.as_slice().len()), (64, 2));
        let data: Vec<u8> = (1..=40).collect();
        assert_eq!(free.range(0, 40).copy_from(&data), 40);
        peer.tx().commit(40).unwrap();
        let ready = owner.rx().readable_segments().unwrap();
        assert_eq!(
            ready.as_slice().len(),
            2,
            "16 bytes to the end, 24 after the wrap"
        );
        let mut back = [0u8; 40];
        assert_eq!(ready.copy_to(&mut back), 40);
        assert_eq!(&back[..], &data[..]);
        let mid = ready.range(10, 100);
        assert_eq!(mid.total(), 30, "clamped to what is there");
        let mut tail = [0u8; 30];
        mid.copy_to(&mut tail);
        assert_eq!(&tail[..], &data[10..]);
        assert_eq!(ready.range(50, 5).total(), 0);
        // The segments keep the mapping alive after the pipe is gone.
        drop(owner);
        drop(peer);
        drop(region);
        let mut again = [0u8; 5];
        assert_eq!(ready.range(0, 5).copy_to(&mut again), 5);
        assert_eq!(&again, &[1, 2, 3, 4, 5]);
    }
}
