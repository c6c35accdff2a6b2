//! Deterministic byte streams for end-to-end checks.
//!
//! A stream is a pseudo-random *period* of bytes repeated forever. Its length
//! is deliberately not a power of two, so the period never lines up with a
//! ring's capacity: a byte delivered twice, dropped or moved changes the
//! checksum. The expected CRC-32C of any prefix is computed from the period's
//! CRC with `crc32c_combine`, without generating the stream.

use std::io::{self, Read, Write};

/// Default period: 1 MiB plus a prime, so it is coprime with every ring size.
pub const DEFAULT_PERIOD: usize = (1 << 20) + 4093;

/// `len` deterministic pseudo-random bytes from `seed` (splitmix64: cheap and
/// good enough to make every byte position count).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A repeating pseudo-random byte stream.
#[derive(Debug, Clone)]
pub struct Pattern {
    period: Vec<u8>,
    period_crc: u32,
}

impl Pattern {
    /// The stream for `seed`, repeating every `period` bytes (`period > 0`;
    /// 0 is treated as 1).
    pub fn new(seed: u64, period: usize) -> Self {
        let bytes = random_bytes(seed, period.max(1));
        let period_crc = crc32c::crc32c(&bytes);
        Self {
            period: bytes,
            period_crc,
        }
    }

    /// The stream's period in bytes.
    pub fn period(&self) -> usize {
        self.period.len()
    }

    /// The bytes from stream position `pos`, at most `max` of them, up to the
    /// end of the current period.
    pub fn chunk(&self, pos: u64, max: usize) -> &[u8] {
        let len = self.period.len() as u64;
        let start = (pos % len) as usize;
        let end = start + max.min(self.period.len() - start);
        &self.period[start..end]
    }

    /// CRC-32C of the stream's first `total` bytes.
    pub fn expected_crc(&self, total: u64) -> u32 {
        let len = self.period.len() as u64;
        let mut crc = 0u32;
        for _ in 0..total / len {
            crc = crc32c::crc32c_combine(crc, self.period_crc, self.period.len());
        }
        let rest = (total % len) as usize;
        crc32c::crc32c_combine(crc, crc32c::crc32c(&self.period[..rest]), rest)
    }

    /// Writes the stream's first `total` bytes to `w`, in writes whose sizes
    /// cycle through `sizes` (each nonzero; empty means 64 KiB).
    ///
    /// # Errors
    /// The first write error.
    pub fn write_to(&self, w: &mut impl Write, total: u64, sizes: &[usize]) -> io::Result<()> {
        self.write_range(w, 0, total, sizes)
    }

    /// Writes stream positions `start..end` to `w`, as
    /// [`write_to`](Self::write_to) does.
    ///
    /// # Errors
    /// The first write error.
    pub fn write_range(
        &self,
        w: &mut impl Write,
        start: u64,
        end: u64,
        sizes: &[usize],
    ) -> io::Result<()> {
        let sizes = if sizes.is_empty() {
            &[1 << 16][..]
        } else {
            sizes
        };
        let total = end;
        let mut pos = start;
        let mut i = 0usize;
        while pos < total {
            let want = sizes[i % sizes.len()].max(1);
            i = i.wrapping_add(1);
            let left = usize::try_from(total - pos).unwrap_or(usize::MAX);
            let chunk = self.chunk(pos, want.min(left));
            w.write_all(chunk)?;
            pos += chunk.len() as u64;
        }
        Ok(())
    }
}

/// Bytes received and their running CRC-32C.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Bytes seen.
    pub bytes: u64,
    /// CRC-32C of those bytes.
    pub crc: u32,
}

impl Tally {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.bytes += data.len() as u64;
    }

    /// Reads `r` to end of stream, in reads whose buffer sizes cycle through
    /// `sizes` (empty means 64 KiB), and tallies what arrived.
    ///
    /// # Errors
    /// The first read error other than `Interrupted`; the tally so far is
    /// lost, use [`read_into`](Self::read_into) to keep it.
    pub fn read_all(r: &mut impl Read, sizes: &[usize]) -> io::Result<Self> {
        let mut t = Self::default();
        t.read_into(r, sizes)?;
        Ok(t)
    }

    /// As [`read_all`](Self::read_all), accumulating into `self` so that the
    /// bytes that arrived before an error are still counted.
    ///
    /// # Errors
    /// The first read error other than `Interrupted`.
    pub fn read_into(&mut self, r: &mut impl Read, sizes: &[usize]) -> io::Result<()> {
        let sizes = if sizes.is_empty() {
            &[1 << 16][..]
        } else {
            sizes
        };
        let max = sizes.iter().copied().max().unwrap_or(1).max(1);
        let mut buf = vec![0u8; max];
        let mut i = 0usize;
        loop {
            let want = sizes[i % sizes.len()].clamp(1, max);
            i = i.wrapping_add(1);
            match r.read(&mut buf[..want]) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_crc_matches_generated_stream() {
        let p = Pattern::new(7, 1000 + 3);
        for total in [0u64, 1, 999, 1003, 1004, 5 * 1003 + 17] {
            let mut out = Vec::new();
            p.write_to(&mut out, total, &[1, 64, 333, 2000]).unwrap();
            assert_eq!(out.len() as u64, total);
            assert_eq!(crc32c::crc32c(&out), p.expected_crc(total), "total {total}");
            let t = Tally::read_all(&mut &out[..], &[7, 100]).unwrap();
            assert_eq!(t.bytes, total);
            assert_eq!(t.crc, p.expected_crc(total));
        }
    }

    #[test]
    fn a_moved_byte_changes_the_checksum() {
        let p = Pattern::new(1, 97);
        let mut out = Vec::new();
        p.write_to(&mut out, 500, &[]).unwrap();
        out.swap(10, 11 + 97);
        assert_ne!(crc32c::crc32c(&out), p.expected_crc(500));
        assert_ne!(
            Pattern::new(1, 97).chunk(0, 8),
            Pattern::new(2, 97).chunk(0, 8)
        );
    }
}
