//! The shared region: one sealed memfd, mapped read-write by both sides.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::offset::{check_range, OffsetError, ShmOffset};

/// The seals a region must carry: its size can never change (so the peer
/// cannot truncate it and turn our accesses into SIGBUS), and no further seal
/// can be added (so the peer cannot make it read-only under us).
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// The smallest region accepted: one page.
pub const MIN_REGION_SIZE: u64 = 4096;

/// Why a region could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The requested size is unusable.
    #[error("region size {size} is invalid: {why}")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The received fd's size is not the one announced.
    #[error("region fd is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The size the creator announced.
        expected: u64,
        /// The size the fd has.
        actual: u64,
    },
    /// The received fd lacks seals that keep its size fixed.
    #[error("region fd seals are {actual:?}, need at least {required:?}")]
    NotSealed {
        /// Seals found.
        actual: SealFlag,
        /// Seals required.
        required: SealFlag,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// The failing operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> RegionError {
    move |e| RegionError::Sys {
        op,
        source: std::io::Error::from(e),
    }
}

/// A sealed memfd mapped shared and read-write.
///
/// The mapping is only ever accessed through raw pointers obtained from
/// [`from_offset`](Self::from_offset): the peer may write any byte at any time,
/// so no `&[u8]` over the mapping is ever created (see the crate docs).
#[derive(Debug)]
pub struct ShmRegion {
    map: MmapRaw,
    file: File,
    size: u64,
}

// SAFETY: `ShmRegion` only hands out raw pointers; every access through them is
// either atomic or goes through the crate's audited copy helpers, which are
// designed for concurrent modification by another process. Sharing the mapping
// between threads adds no hazard beyond that.
unsafe impl Sync for ShmRegion {}
// SAFETY: as above; the mapping and fd are not tied to a thread.
unsafe impl Send for ShmRegion {}

impl ShmRegion {
    /// Creates a fresh zero-filled region of `size` bytes (a multiple of the
    /// page size), sealed against resizing.
    ///
    /// # Errors
    /// [`RegionError::BadSize`] for a size that is zero, not page-aligned or
    /// too large; [`RegionError::Sys`] if a system call fails.
    pub fn create(name: &str, size: u64) -> Result<Self, RegionError> {
        if size < MIN_REGION_SIZE || size % MIN_REGION_SIZE != 0 {
            return Err(RegionError::BadSize {
                size,
                why: "must be a non-zero multiple of 4096",
            });
        }
        let len = usize::try_from(size).map_err(|_| RegionError::BadSize {
            size,
            why: "does not fit in usize",
        })?;
        let off = i64::try_from(size).map_err(|_| RegionError::BadSize {
            size,
            why: "does not fit in off_t",
        })?;
        let cname = std::ffi::CString::new(name.replace('\0', "_"))
            .map_err(|_| RegionError::BadSize { size, why: "name" })?;
        let fd = memfd_create(
            &cname,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(sys("memfd_create"))?;
        nix::unistd::ftruncate(&fd, off).map_err(sys("ftruncate"))?;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(sys("F_ADD_SEALS"))?;
        Self::map(fd, len, size)
    }

    /// Maps a region received from its creator, after checking that its size
    /// is `expected_size` and that it carries [`REQUIRED_SEALS`].
    ///
    /// # Errors
    /// [`RegionError::SizeMismatch`], [`RegionError::NotSealed`], or
    /// [`RegionError::Sys`].
    pub fn open(fd: OwnedFd, expected_size: u64) -> Result<Self, RegionError> {
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(sys("F_GET_SEALS"))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(REQUIRED_SEALS) {
            return Err(RegionError::NotSealed {
                actual: seals,
                required: REQUIRED_SEALS,
            });
        }
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(sys("fstat"))?;
        let actual = u64::try_from(st.st_size).unwrap_or(0);
        if actual != expected_size {
            return Err(RegionError::SizeMismatch {
                expected: expected_size,
                actual,
            });
        }
        if actual < MIN_REGION_SIZE || actual % MIN_REGION_SIZE != 0 {
            return Err(RegionError::BadSize {
                size: actual,
                why: "must be a non-zero multiple of 4096",
            });
        }
        let len = usize::try_from(actual).map_err(|_| RegionError::BadSize {
            size: actual,
            why: "does not fit in usize",
        })?;
        Self::map(fd, len, actual)
    }

    fn map(fd: OwnedFd, len: usize, size: u64) -> Result<Self, RegionError> {
        let file = File::from(fd);
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|source| RegionError::Sys { op: "mmap", source })?;
        Ok(Self { map, file, size })
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd, to hand to the peer (for example with `SCM_RIGHTS`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Turns a (possibly peer-supplied) offset into a pointer into this
    /// mapping, after checking that `offset..offset + len` lies inside the
    /// region and that `offset` is a multiple of `align`.
    ///
    /// The pointer is valid for as long as `self` lives. Dereferencing it is
    /// still `unsafe`: the peer may write those bytes at any moment.
    ///
    /// # Errors
    /// [`OffsetError`] when the range is out of bounds, overflows or is
    /// misaligned.
    pub fn from_offset(
        &self,
        offset: ShmOffset,
        len: u64,
        align: u64,
    ) -> Result<NonNull<u8>, OffsetError> {
        check_range(offset, len, align, self.size)?;
        // `check_range` proved `offset + len <= size`, and `size` fits in usize.
        let off = usize::try_from(offset.0).map_err(|_| OffsetError::Overflow {
            offset: offset.0,
            len,
        })?;
        let base = self.map.as_mut_ptr();
        // SAFETY: `off <= size == map.len()`, so the result stays inside (or
        // one past the end of) the mapping, which is a single allocation.
        let p = unsafe { base.add(off) };
        NonNull::new(p).ok_or(OffsetError::Overflow {
            offset: offset.0,
            len,
        })
    }

    /// Returns the pages of `offset..offset + len` to the kernel (they read
    /// as zero afterwards). Used when a large block is freed, so an idle
    /// region does not keep its high-water mark resident.
    ///
    /// # Errors
    /// [`RegionError::Sys`] if `fallocate` fails; the range is validated
    /// first and must be page-aligned.
    pub fn release_pages(&self, offset: ShmOffset, len: u64) -> Result<(), RegionError> {
        check_range(offset, len, MIN_REGION_SIZE, self.size).map_err(|e| RegionError::Sys {
            op: "release_pages",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let (Ok(off), Ok(l)) = (i64::try_from(offset.0), i64::try_from(len)) else {
            return Ok(());
        };
        nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
        .map_err(sys("fallocate(PUNCH_HOLE)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn create_then_open_from_a_duplicate_fd() {
        let r = ShmRegion::create("t", 1 << 16).unwrap();
        let fd = r.fd().try_clone_to_owned().unwrap();
        let peer = ShmRegion::open(fd, 1 << 16).unwrap();
        let a = r.from_offset(ShmOffset(4096), 8, 8).unwrap();
        let b = peer.from_offset(ShmOffset(4096), 8, 8).unwrap();
        // SAFETY: both pointers are in-bounds, 8-aligned and refer to the same
        // page; nothing else touches it.
        unsafe {
            a.as_ptr().cast::<u64>().write_volatile(0xdead_beef);
            assert_eq!(b.as_ptr().cast::<u64>().read_volatile(), 0xdead_beef);
        }
    }

    #[test]
    fn open_rejects_wrong_size() {
        let r = ShmRegion::create("t", 8192).unwrap();
        let fd = r.fd().try_clone_to_owned().unwrap();
        let err = ShmRegion::open(fd, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                RegionError::SizeMismatch {
                    expected: 4096,
                    actual: 8192
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn open_rejects_unsealed_fd() {
        let fd = memfd_create(c"plain", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(fd.as_fd(), 4096).unwrap();
        let err = ShmRegion::open(fd, 4096).unwrap_err();
        assert!(matches!(err, RegionError::NotSealed { .. }), "{err}");
    }

    #[test]
    fn sealed_region_cannot_be_truncated() {
        let r = ShmRegion::create("t", 8192).unwrap();
        assert!(nix::unistd::ftruncate(r.fd(), 4096).is_err());
        assert!(nix::unistd::ftruncate(r.fd(), 16384).is_err());
    }

    #[test]
    fn create_rejects_bad_sizes() {
        assert!(matches!(
            ShmRegion::create("t", 0),
            Err(RegionError::BadSize { .. })
        ));
        assert!(matches!(
            ShmRegion::create("t", 5000),
            Err(RegionError::BadSize { .. })
        ));
    }

    #[test]
    fn from_offset_checks_bounds() {
        let r = ShmRegion::create("t", 8192).unwrap();
        assert!(r.from_offset(ShmOffset(8192 - 8), 8, 8).is_ok());
        assert!(r.from_offset(ShmOffset(8192 - 4), 8, 4).is_err());
        assert!(r.from_offset(ShmOffset(u64::MAX), 2, 1).is_err());
    }

    #[test]
    fn released_pages_read_as_zero() {
        let r = ShmRegion::create("t", 3 * 4096).unwrap();
        let p = r.from_offset(ShmOffset(4096), 8, 8).unwrap();
        // SAFETY: in bounds, aligned, private to this test.
        unsafe { p.as_ptr().cast::<u64>().write_volatile(7) };
        r.release_pages(ShmOffset(4096), 4096).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { p.as_ptr().cast::<u64>().read_volatile() }, 0);
    }
}
