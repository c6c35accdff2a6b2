//! The session bootstrap: the one message the monitor sends over the session's Unix socket,
//! before any control frame, together with three file descriptors (`SCM_RIGHTS`): the region
//! memfd, the guest's doorbell (the monitor rings it) and the monitor's doorbell (the guest
//! rings it).
//!
//! Layout, 48 bytes, little-endian (PROTOCOL.md, "Session bootstrap"):
//!
//! | offset | size | field                    | type     |
//! |-------:|-----:|--------------------------|----------|
//! | 0      | 4    | `magic` (`A R C S`)      | [u8; 4]  |
//! | 4      | 2    | `version` (1)            | u16 LE   |
//! | 6      | 2    | `flags` (0)              | u16 LE   |
//! | 8      | 8    | `region_size`            | u64 LE   |
//! | 16     | 8    | `control_offset`         | u64 LE   |
//! | 24     | 4    | `control_cap_to_monitor` | u32 LE   |
//! | 28     | 4    | `control_cap_to_guest`   | u32 LE   |
//! | 32     | 8    | `bitmap_offset`          | u64 LE   |
//! | 40     | 4    | `bitmap_slots`           | u32 LE   |
//! | 44     | 4    | `reserved` (0)           | u32 LE   |
//!
//! `RawBootstrap` declares this layout; the compiler checks its size and every field's offset
//! against the table.

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::error::WireError;

/// The bootstrap's first four bytes.
pub const BOOTSTRAP_MAGIC: [u8; 4] = *b"ARCS";
/// The bootstrap layout version this crate speaks.
pub const BOOTSTRAP_VERSION: u16 = 1;
/// The bootstrap's length in bytes.
pub const BOOTSTRAP_LEN: usize = 48;
/// Number of descriptors sent with it, in order: region, guest bell, monitor bell.
pub const BOOTSTRAP_FDS: usize = 3;

/// The bootstrap's bytes, field by field: byte arrays holding little-endian values, so the
/// struct has alignment 1 and no padding.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawBootstrap {
    magic: [u8; 4],
    version: [u8; 2],
    flags: [u8; 2],
    region_size: [u8; 8],
    control_offset: [u8; 8],
    control_cap_to_monitor: [u8; 4],
    control_cap_to_guest: [u8; 4],
    bitmap_offset: [u8; 8],
    bitmap_slots: [u8; 4],
    reserved: [u8; 4],
}

const _: () = assert!(size_of::<RawBootstrap>() == BOOTSTRAP_LEN);
const _: () = assert!(offset_of!(RawBootstrap, magic) == 0);
const _: () = assert!(offset_of!(RawBootstrap, version) == 4);
const _: () = assert!(offset_of!(RawBootstrap, flags) == 6);
const _: () = assert!(offset_of!(RawBootstrap, region_size) == 8);
const _: () = assert!(offset_of!(RawBootstrap, control_offset) == 16);
const _: () = assert!(offset_of!(RawBootstrap, control_cap_to_monitor) == 24);
const _: () = assert!(offset_of!(RawBootstrap, control_cap_to_guest) == 28);
const _: () = assert!(offset_of!(RawBootstrap, bitmap_offset) == 32);
const _: () = assert!(offset_of!(RawBootstrap, bitmap_slots) == 40);
const _: () = assert!(offset_of!(RawBootstrap, reserved) == 44);

/// Where the session's shared structures are.
///
/// The values come from the monitor; the guest validates every offset and capacity against the
/// region itself (`shm-ring` does) before using it. This type only carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bootstrap {
    /// Size of the region memfd in bytes.
    pub region_size: u64,
    /// Offset of the control pipe's block.
    pub control_offset: u64,
    /// Capacity of the control pipe's guest → monitor ring.
    pub control_cap_to_monitor: u32,
    /// Capacity of the control pipe's monitor → guest ring.
    pub control_cap_to_guest: u32,
    /// Offset of the notification bitmap (DATAPIPE.md).
    pub bitmap_offset: u64,
    /// Number of bits in it (connection ids are below this).
    pub bitmap_slots: u32,
}

impl Bootstrap {
    /// The 48-byte encoding.
    pub fn to_bytes(&self) -> [u8; BOOTSTRAP_LEN] {
        bytemuck::must_cast(RawBootstrap {
            magic: BOOTSTRAP_MAGIC,
            version: BOOTSTRAP_VERSION.to_le_bytes(),
            flags: [0; 2],
            region_size: self.region_size.to_le_bytes(),
            control_offset: self.control_offset.to_le_bytes(),
            control_cap_to_monitor: self.control_cap_to_monitor.to_le_bytes(),
            control_cap_to_guest: self.control_cap_to_guest.to_le_bytes(),
            bitmap_offset: self.bitmap_offset.to_le_bytes(),
            bitmap_slots: self.bitmap_slots.to_le_bytes(),
            reserved: [0; 4],
        })
    }

    /// Parses the encoding: exactly [`BOOTSTRAP_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::BadBootstrap`] for a wrong length, magic, version, flags or reserved field.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let bad = |why: &'static str| WireError::BadBootstrap {
            why,
            len: bytes.len(),
        };
        let exact: [u8; BOOTSTRAP_LEN] = bytes
            .try_into()
            .map_err(|_| bad("wrong length, need 48 bytes"))?;
        let raw: RawBootstrap = bytemuck::must_cast(exact);
        if raw.magic != BOOTSTRAP_MAGIC {
            return Err(bad("bad magic"));
        }
        if u16::from_le_bytes(raw.version) != BOOTSTRAP_VERSION {
            return Err(bad("unsupported bootstrap version"));
        }
        if raw.flags != [0; 2] || raw.reserved != [0; 4] {
            return Err(bad("non-zero flags or reserved field"));
        }
        Ok(Self {
            region_size: u64::from_le_bytes(raw.region_size),
            control_offset: u64::from_le_bytes(raw.control_offset),
            control_cap_to_monitor: u32::from_le_bytes(raw.control_cap_to_monitor),
            control_cap_to_guest: u32::from_le_bytes(raw.control_cap_to_guest),
            bitmap_offset: u64::from_le_bytes(raw.bitmap_offset),
            bitmap_slots: u32::from_le_bytes(raw.bitmap_slots),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Bootstrap = Bootstrap {
        region_size: 64 << 20,
        control_offset: 0,
        control_cap_to_monitor: 65536,
        control_cap_to_guest: 65536,
        bitmap_offset: 0x2_2000,
        bitmap_slots: 65536,
    };

    #[test]
    fn golden_bytes() {
        #[rustfmt::skip]
        let expect: [u8; 48] = [
            b'A', b'R', b'C', b'S', 1, 0, 0, 0, // magic, version, flags
            0, 0, 0, 4, 0, 0, 0, 0, // region_size 64 MiB
            0, 0, 0, 0, 0, 0, 0, 0, // control_offset
            0, 0, 1, 0, 0, 0, 1, 0, // caps 65536, 65536
            0, 0x20, 2, 0, 0, 0, 0, 0, // bitmap_offset
            0, 0, 1, 0, 0, 0, 0, 0, // bitmap_slots, reserved
        ];
        assert_eq!(SAMPLE.to_bytes(), expect);
        assert_eq!(Bootstrap::parse(&expect), Ok(SAMPLE));
    }

    #[test]
    fn rejects_malformed() {
        let good = SAMPLE.to_bytes();
        let bad = |why, len| Err(WireError::BadBootstrap { why, len });
        assert_eq!(
            Bootstrap::parse(&good[..47]),
            bad("wrong length, need 48 bytes", 47)
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            Bootstrap::parse(&long),
            bad("wrong length, need 48 bytes", 49)
        );
        for (index, why) in [
            (0, "bad magic"),
            (3, "bad magic"),
            (4, "unsupported bootstrap version"),
            (5, "unsupported bootstrap version"),
            (6, "non-zero flags or reserved field"),
            (7, "non-zero flags or reserved field"),
            (44, "non-zero flags or reserved field"),
            (47, "non-zero flags or reserved field"),
        ] {
            let mut b = good;
            b[index] ^= 0x40;
            assert_eq!(Bootstrap::parse(&b), bad(why, 48), "byte {index}");
        }
        assert_eq!(
            WireError::BadBootstrap {
                why: "bad magic",
                len: 48
            }
            .to_string(),
            "bad session bootstrap (48 bytes): bad magic"
        );
    }

    #[test]
    fn every_field_round_trips() {
        let b = Bootstrap {
            region_size: 0x0102_0304_0506_0708,
            control_offset: 0x1112_1314_1516_1718,
            control_cap_to_monitor: 0x2122_2324,
            control_cap_to_guest: 0x3132_3334,
            bitmap_offset: 0x4142_4344_4546_4748,
            bitmap_slots: 0x5152_5354,
        };
        assert_eq!(Bootstrap::parse(&b.to_bytes()), Ok(b));
    }
}
