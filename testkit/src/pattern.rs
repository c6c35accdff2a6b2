//! Deterministic byte streams for end-to-end checks.
//!
//! A stream is a pseudo-random *period* of bytes repeated forever. Its length
//! is deliberately not a power of two, so the period never lines up with a
//! ring's capacity: a byte delivered twice, dropped or moved changes the
//! checksum. The expected CRC-32C of any prefix is computed from the period's
//! CRC with `crc32c_combine`, without generating the stream.
//!
//! A *positional* stream ([`fill`], [`check`]) gives byte `i` of stream `seed` without state,
//! so a reader can check any window at any offset; [`echo_verified`] pushes one through an
//! echo and checks every byte that comes back.

use std::io::{self, Read, Write};

use arca::TcpStream;

/// Default period: 1 MiB plus a prime, so it is coprime with every ring size.
pub const DEFAULT_PERIOD: usize = (1 << 20) + 4093;

/// `len` deterministic pseudo-random bytes from `seed`: the [`splitmix`] outputs of `seed`,
/// `seed + γ`, `seed + 2γ`, … in little-endian order (SplitMix64: cheap and good enough to
/// make every byte position count).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    let mut x = seed;
    while bytes.len() < len {
        bytes.extend_from_slice(&splitmix(x).to_le_bytes());
        x = x.wrapping_add(GAMMA);
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

// ---- positional streams ----------------------------------------------------

/// A deterministic byte stream: byte `i` of stream `seed`. Generating any
/// window needs no state, so a reader can check what it got at any offset.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let word = splitmix(seed ^ (pos / 8).wrapping_mul(GAMMA));
        *b = word.to_le_bytes()[(pos % 8) as usize];
    }
}

/// SplitMix64's increment γ (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks `got` against stream `seed` at `offset`; on a mismatch, names the
/// first differing byte.
pub fn check(seed: u64, offset: u64, got: &[u8]) -> Result<(), String> {
    let mut want = vec![0u8; got.len()];
    fill(seed, offset, &mut want);
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "stream {seed:#x}: byte {} is {:#04x}, expected {:#04x}",
            offset + i as u64,
            got[i],
            want[i]
        )),
    }
}

/// Sends `len` bytes of stream `seed` through `stream` (a writer thread),
/// half-closes, reads the echo to EOF and verifies every byte. Returns the
/// bytes verified.
pub fn echo_verified(stream: &TcpStream, seed: u64, len: u64) -> io::Result<u64> {
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> io::Result<()> {
            let mut w = stream;
            let mut buf = vec![0u8; 32 << 10];
            let mut sent = 0u64;
            while sent < len {
                let n = usize::try_from((len - sent).min(buf.len() as u64)).unwrap_or(buf.len());
                fill(seed, sent, &mut buf[..n]);
                w.write_all(&buf[..n])?;
                sent += n as u64;
            }
            stream.shutdown(std::net::Shutdown::Write)
        });
        let mut r = stream;
        let mut buf = vec![0u8; 32 << 10];
        let mut got = 0u64;
        let read = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = check(seed, got, &buf[..n]) {
                        break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    got += n as u64;
                }
                Err(e) => break Err(e),
            }
        };
        let wrote = writer.join().expect("writer thread panicked");
        read?;
        wrote?;
        if got != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("echo of stream {seed:#x} ended after {got} of {len} bytes"),
            ));
        }
        Ok(got)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_pinned() {
        // The Daisy tests and benchmark name their data by seed: the bytes must not drift.
        assert_eq!(
            random_bytes(0x1234, 12),
            [0x88, 0x38, 0xe2, 0xd5, 0x87, 0x2f, 0x64, 0x5f, 0xb5, 0x4c, 0x03, 0x3d]
        );
        assert_eq!(random_bytes(0x1234, 3), random_bytes(0x1234, 12)[..3]);
    }

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
