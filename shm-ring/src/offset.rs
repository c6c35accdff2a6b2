//! Byte offsets into the shared region: the only kind of address that crosses
//! the process boundary.

use std::fmt;

/// A byte offset from the start of a shared region.
///
/// Both processes map the region at different addresses, so pointers are
/// meaningless to the peer; offsets are not. An offset received from the peer
/// is untrusted until [`ShmRegion::from_offset`](crate::ShmRegion::from_offset)
/// (or [`check_range`]) has validated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShmOffset(pub u64);

impl ShmOffset {
    /// The offset as a `u64`.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ShmOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why an offset was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// `offset + len` does not fit in a `u64`/`usize`.
    #[error("offset {offset:#x} + length {len} overflows")]
    Overflow {
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
    },
    /// The range ends past the region.
    #[error("range {offset:#x}..+{len} lies outside the {region_size}-byte region")]
    OutOfBounds {
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The region's size.
        region_size: u64,
    },
    /// The offset is not a multiple of the required alignment.
    #[error("offset {offset:#x} is not aligned to {align}")]
    Misaligned {
        /// The offset asked for.
        offset: u64,
        /// The alignment required.
        align: u64,
    },
}

/// Checks that `offset..offset + len` lies inside a region of `region_size`
/// bytes and that `offset` is a multiple of `align` (a power of two).
///
/// This is the single bounds check every peer-supplied offset goes through.
///
/// # Errors
/// [`OffsetError`] naming the values involved.
pub fn check_range(
    offset: ShmOffset,
    len: u64,
    align: u64,
    region_size: u64,
) -> Result<(), OffsetError> {
    debug_assert!(align.is_power_of_two());
    let off = offset.0;
    let end = off
        .checked_add(len)
        .ok_or(OffsetError::Overflow { offset: off, len })?;
    if usize::try_from(end).is_err() {
        return Err(OffsetError::Overflow { offset: off, len });
    }
    if end > region_size {
        return Err(OffsetError::OutOfBounds {
            offset: off,
            len,
            region_size,
        });
    }
    if off & (align - 1) != 0 {
        return Err(OffsetError::Misaligned { offset: off, align });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ranges_inside() {
        assert_eq!(check_range(ShmOffset(0), 4096, 4096, 4096), Ok(()));
        assert_eq!(check_range(ShmOffset(128), 128, 128, 4096), Ok(()));
        assert_eq!(check_range(ShmOffset(4096), 0, 1, 4096), Ok(()));
    }

    #[test]
    fn rejects_out_of_bounds_overflow_and_misalignment() {
        assert!(matches!(
            check_range(ShmOffset(4000), 97, 1, 4096),
            Err(OffsetError::OutOfBounds {
                offset: 4000,
                len: 97,
                region_size: 4096
            })
        ));
        assert!(matches!(
            check_range(ShmOffset(u64::MAX - 3), 8, 1, u64::MAX),
            Err(OffsetError::Overflow { .. })
        ));
        assert!(matches!(
            check_range(ShmOffset(8), 8, 128, 4096),
            Err(OffsetError::Misaligned {
                offset: 8,
                align: 128
            })
        ));
    }

    #[test]
    fn error_messages_carry_values() {
        let e = check_range(ShmOffset(0x2000), 16, 8, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "range 0x2000..+16 lies outside the 4096-byte region"
        );
    }
}
