//! Field-level readers and writers shared by the message codec.
//!
//! [`Reader`] is the only code that walks a received payload. It checks the payload's length
//! against the message's fixed length once, up front, then hands out fixed-size arrays with
//! `split_first_chunk`, so no read can index past the end, and a mismatch between a layout in
//! code and its declared length surfaces as an error rather than a panic.

use std::net::SocketAddr;

use crate::addr::{decode_socket_addr, encode_socket_addr, SOCKET_ADDR_LEN};
use crate::error::WireError;
use crate::error_code::ErrorCode;
use crate::fields::{ConnId, Handle, ListenerId, PipeInfo, SocketOption};

/// Reads the fields of one fixed-layout payload, in order.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    message: &'static str,
    len: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `payload`, which must be exactly `expected` bytes long.
    pub(crate) fn new(
        message: &'static str,
        expected: usize,
        payload: &'a [u8],
    ) -> Result<Self, WireError> {
        let have = payload.len();
        if have < expected {
            return Err(WireError::Truncated {
                message,
                need: expected,
                have,
            });
        }
        if have > expected {
            return Err(WireError::TrailingBytes {
                message,
                expected,
                have,
            });
        }
        Ok(Reader {
            rest: payload,
            message,
            len: have,
        })
    }

    fn consumed(&self) -> usize {
        self.len - self.rest.len()
    }

    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(WireError::Truncated {
                message: self.message,
                need: self.consumed() + N,
                have: self.len,
            }),
        }
    }

    /// Ends the payload; bytes left over are an error.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                message: self.message,
                expected: self.consumed(),
                have: self.len,
            })
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let [b] = self.take::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        self.take().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        self.take().map(u32::from_le_bytes)
    }

    /// Four bytes in network order (an IPv4 address's octets).
    pub(crate) fn u32_be(&mut self) -> Result<u32, WireError> {
        self.take().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        self.take().map(u64::from_le_bytes)
    }

    pub(crate) fn code(&mut self) -> Result<ErrorCode, WireError> {
        self.u16().map(ErrorCode::from_u16)
    }

    pub(crate) fn option(&mut self) -> Result<SocketOption, WireError> {
        self.u16().map(SocketOption::from_u16)
    }

    pub(crate) fn conn(&mut self) -> Result<ConnId, WireError> {
        self.u32().map(ConnId)
    }

    pub(crate) fn listener(&mut self) -> Result<ListenerId, WireError> {
        self.u32().map(ListenerId)
    }

    pub(crate) fn addr(&mut self) -> Result<SocketAddr, WireError> {
        decode_socket_addr(self.take::<SOCKET_ADDR_LEN>()?)
    }

    pub(crate) fn pipe(&mut self) -> Result<PipeInfo, WireError> {
        self.take::<{ PipeInfo::LEN }>().map(PipeInfo::from_bytes)
    }

    pub(crate) fn handle(&mut self) -> Result<Handle, WireError> {
        Handle::from_bytes(self.take::<{ Handle::LEN }>()?)
    }
}

/// Appends little-endian fields to an output buffer.
pub(crate) trait Put {
    fn put(&mut self, bytes: &[u8]);

    fn put_u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn put_code(&mut self, code: ErrorCode) {
        self.put_u16(code.to_u16());
    }
    fn put_option(&mut self, option: SocketOption) {
        self.put_u16(option.to_u16());
    }
    fn put_addr(&mut self, addr: &SocketAddr) {
        self.put(&encode_socket_addr(addr));
    }
    fn put_pipe(&mut self, pipe: &PipeInfo) {
        self.put(&pipe.to_bytes());
    }
    fn put_handle(&mut self, handle: Handle) {
        self.put(&handle.to_bytes());
    }
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_checks_length_up_front() {
        assert_eq!(
            Reader::new("x", 4, &[1, 2]).err(),
            Some(WireError::Truncated {
                message: "x",
                need: 4,
                have: 2
            })
        );
        assert_eq!(
            Reader::new("x", 1, &[1, 2]).err(),
            Some(WireError::TrailingBytes {
                message: "x",
                expected: 1,
                have: 2
            })
        );
    }

    #[test]
    fn reader_reports_layout_mismatches_as_errors() {
        // A layout that reads more than it declared: an error, not a panic.
        let mut r = Reader::new("x", 2, &[1, 2]).unwrap();
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(
            r.u32(),
            Err(WireError::Truncated {
                message: "x",
                need: 5,
                have: 2
            })
        );
        // A layout that reads less than it declared.
        let mut r = Reader::new("y", 3, &[1, 2, 3]).unwrap();
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(
            r.finish(),
            Err(WireError::TrailingBytes {
                message: "y",
                expected: 2,
                have: 3
            })
        );
    }

    #[test]
    fn put_is_little_endian() {
        let mut out = Vec::new();
        out.put_u8(1);
        out.put_u16(0x0302);
        out.put_u32(0x0706_0504);
        out.put_u64(0x0f0e_0d0c_0b0a_0908);
        assert_eq!(out, (1..=15).collect::<Vec<u8>>());
    }
}
