//! The error-code table carried by every error reply, and its mapping to [`io::ErrorKind`].
//!
//! Codes are `u16` on the wire, grouped by origin:
//!
//! | range             | origin                                                            |
//! |-------------------|-------------------------------------------------------------------|
//! | `0x0000`          | never sent                                                        |
//! | `0x0001..=0x00FF` | the protocol and the monitor itself (bad input, unknown id, …)    |
//! | `0x0100..=0x01FF` | the host's socket calls (refused, reset, address in use, …)       |
//! | `0x0200..=0x02FF` | the monitor's policy and per-guest quotas                         |
//!
//! A number this crate does not know decodes to [`ErrorCode::Unknown`] holding the raw value,
//! never to a decode failure, so a newer monitor can add codes without breaking older guests.

use std::fmt;
use std::io;

use thiserror::Error;

/// An error reported over the control pipe.
///
/// `Unknown` holds only numbers not assigned below; [`ErrorCode::from_u16`] never produces it
/// for an assigned number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `0x0001` — anything without a better code.
    Other,
    /// `0x0002` — unknown protocol version, message type or socket option.
    Unsupported,
    /// `0x0003` — malformed frame or invalid argument.
    InvalidInput,
    /// `0x0004` — the id names nothing this session holds.
    NotFound,
    /// `0x0005` — the shared region (or the host) has no memory for another pipe.
    OutOfMemory,
    /// `0x0006` — the operation was interrupted.
    Interrupted,
    /// `0x0007` — the operation would block.
    WouldBlock,
    /// `0x0008` — the operation timed out (for example `ConnectRequest.timeout_ms`).
    TimedOut,
    /// `0x0009` — a resolved name does not exist (NXDOMAIN), or has no address of the family
    /// asked for.
    NoSuchName,
    /// `0x000A` — the monitor's resolver failed (no server answered usefully, a bad answer).
    ResolverFailure,
    /// `0x0100` — `ECONNREFUSED`.
    ConnectionRefused,
    /// `0x0101` — `ECONNRESET`.
    ConnectionReset,
    /// `0x0102` — `ECONNABORTED`; also a request pending on a handle that was closed.
    ConnectionAborted,
    /// `0x0103` — `ENOTCONN`.
    NotConnected,
    /// `0x0104` — `EPIPE`.
    BrokenPipe,
    /// `0x0105` — `EADDRINUSE`.
    AddrInUse,
    /// `0x0106` — `EADDRNOTAVAIL`.
    AddrNotAvailable,
    /// `0x0107` — `EHOSTUNREACH`.
    HostUnreachable,
    /// `0x0108` — `ENETUNREACH`.
    NetworkUnreachable,
    /// `0x0109` — `ENETDOWN`.
    NetworkDown,
    /// `0x0200` — the monitor's policy denies the request, or the host said `EACCES`/`EPERM`.
    PermissionDenied,
    /// `0x0201` — a per-guest limit (connections, listeners, pipe memory, requests in flight,
    /// connection rate) is reached.
    QuotaExceeded,
    /// A number not assigned above.
    Unknown(u16),
}

use ErrorCode as E;

impl ErrorCode {
    /// Every assigned code, in numeric order.
    pub const ALL: [ErrorCode; 22] = [
        E::Other,
        E::Unsupported,
        E::InvalidInput,
        E::NotFound,
        E::OutOfMemory,
        E::Interrupted,
        E::WouldBlock,
        E::TimedOut,
        E::NoSuchName,
        E::ResolverFailure,
        E::ConnectionRefused,
        E::ConnectionReset,
        E::ConnectionAborted,
        E::NotConnected,
        E::BrokenPipe,
        E::AddrInUse,
        E::AddrNotAvailable,
        E::HostUnreachable,
        E::NetworkUnreachable,
        E::NetworkDown,
        E::PermissionDenied,
        E::QuotaExceeded,
    ];

    /// `(number, io kind, description)`: the table PROTOCOL.md reproduces. An exhaustive
    /// match, so a new code cannot be left without a number.
    const fn info(self) -> Option<(u16, io::ErrorKind, &'static str)> {
        use io::ErrorKind as K;
        Some(match self {
            E::Other => (0x0001, K::Other, "other error"),
            E::Unsupported => (0x0002, K::Unsupported, "unsupported"),
            E::InvalidInput => (0x0003, K::InvalidInput, "invalid input"),
            E::NotFound => (0x0004, K::NotFound, "not found"),
            E::OutOfMemory => (0x0005, K::OutOfMemory, "out of memory"),
            E::Interrupted => (0x0006, K::Interrupted, "interrupted"),
            E::WouldBlock => (0x0007, K::WouldBlock, "operation would block"),
            E::TimedOut => (0x0008, K::TimedOut, "timed out"),
            E::NoSuchName => (0x0009, K::NotFound, "no such name"),
            E::ResolverFailure => (0x000A, K::Other, "resolver failure"),
            E::ConnectionRefused => (0x0100, K::ConnectionRefused, "connection refused"),
            E::ConnectionReset => (0x0101, K::ConnectionReset, "connection reset"),
            E::ConnectionAborted => (0x0102, K::ConnectionAborted, "connection aborted"),
            E::NotConnected => (0x0103, K::NotConnected, "not connected"),
            E::BrokenPipe => (0x0104, K::BrokenPipe, "broken pipe"),
            E::AddrInUse => (0x0105, K::AddrInUse, "address in use"),
            E::AddrNotAvailable => (0x0106, K::AddrNotAvailable, "address not available"),
            E::HostUnreachable => (0x0107, K::HostUnreachable, "host unreachable"),
            E::NetworkUnreachable => (0x0108, K::NetworkUnreachable, "network unreachable"),
            E::NetworkDown => (0x0109, K::NetworkDown, "network down"),
            E::PermissionDenied => (0x0200, K::PermissionDenied, "permission denied"),
            E::QuotaExceeded => (0x0201, K::QuotaExceeded, "quota exceeded"),
            E::Unknown(_) => return None,
        })
    }

    /// The code for a wire number; total (unassigned numbers become [`ErrorCode::Unknown`]).
    pub fn from_u16(raw: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.to_u16() == raw)
            .unwrap_or(ErrorCode::Unknown(raw))
    }

    /// The wire number.
    pub const fn to_u16(self) -> u16 {
        match (self, self.info()) {
            (_, Some((raw, _, _))) | (ErrorCode::Unknown(raw), None) => raw,
            // Every variant but Unknown has info.
            (_, None) => 0,
        }
    }

    /// The [`io::ErrorKind`] a `std::net` call would report for this error. `Unknown` codes map
    /// to [`io::ErrorKind::Other`].
    pub fn to_io_kind(self) -> io::ErrorKind {
        self.info()
            .map_or(io::ErrorKind::Other, |(_, kind, _)| kind)
    }

    /// The code for an [`io::ErrorKind`]; kinds without a code of their own become
    /// [`ErrorCode::Other`].
    pub fn from_io_kind(kind: io::ErrorKind) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.to_io_kind() == kind)
            .unwrap_or(ErrorCode::Other)
    }

    /// The code for an error from a host socket call, as the monitor reports it.
    ///
    /// For OS errors std derives [`io::Error::kind`] from the raw errno, so `ECONNREFUSED`
    /// becomes [`ConnectionRefused`](ErrorCode::ConnectionRefused), `EADDRINUSE`
    /// [`AddrInUse`](ErrorCode::AddrInUse), `EACCES` and `EPERM`
    /// [`PermissionDenied`](ErrorCode::PermissionDenied), `ETIMEDOUT`
    /// [`TimedOut`](ErrorCode::TimedOut), `ENETUNREACH`, `EHOSTUNREACH`, `ECONNRESET` their
    /// namesakes, and so on. An error that wraps a [`RemoteError`] keeps that error's code.
    pub fn from_io(error: &io::Error) -> ErrorCode {
        if let Some(remote) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<RemoteError>())
        {
            return remote.code;
        }
        ErrorCode::from_io_kind(error.kind())
    }

    /// A short lower-case description, for example `"connection refused"`.
    pub fn description(self) -> &'static str {
        self.info()
            .map_or("unknown error code", |(_, _, description)| description)
    }

    /// Turns a code received from the monitor into the `io::Error` a `std::net` call would
    /// return: kind from [`to_io_kind`](Self::to_io_kind), a [`RemoteError`] as the inner error
    /// (so the code can be recovered with [`ErrorCode::from_io`]).
    ///
    /// `context` names the operation, for example `"connect to 127.0.0.1:80"`.
    pub fn into_io_error(self, context: impl Into<String>) -> io::Error {
        io::Error::new(
            self.to_io_kind(),
            RemoteError {
                code: self,
                context: context.into(),
            },
        )
    }
}

impl From<u16> for ErrorCode {
    fn from(raw: u16) -> Self {
        ErrorCode::from_u16(raw)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.to_u16()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(raw) => write!(f, "unknown error code {raw:#06x}"),
            known => f.write_str(known.description()),
        }
    }
}

/// An error code reported by the other end of the control pipe, with what was being attempted.
///
/// The inner error of the `io::Error`s built by [`ErrorCode::into_io_error`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{context}: {code}")]
pub struct RemoteError {
    /// The code from the error reply.
    pub code: ErrorCode,
    /// The operation that failed.
    pub context: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for code in ErrorCode::ALL {
            let raw = code.to_u16();
            let kind = code.to_io_kind();
            assert_ne!(raw, 0);
            assert_eq!(ErrorCode::from_u16(raw), code);
            // Numbers are unique.
            assert_eq!(
                ErrorCode::ALL.iter().filter(|c| c.to_u16() == raw).count(),
                1
            );
            // Kinds are unique but for the resolver's codes, which share the kind of an
            // earlier code (a host socket call never needs them).
            let sharing = ErrorCode::ALL
                .iter()
                .filter(|c| c.to_io_kind() == kind)
                .count();
            if matches!(code, E::NoSuchName | E::ResolverFailure) {
                assert_eq!(sharing, 2, "{code:?}");
                assert_ne!(ErrorCode::from_io_kind(kind), code);
                assert!(ErrorCode::from_io_kind(kind).to_u16() < raw);
            } else {
                assert_eq!(ErrorCode::from_io_kind(kind), code);
                let shared_by_resolver = matches!(code, E::NotFound | E::Other);
                assert_eq!(sharing, 1 + usize::from(shared_by_resolver), "{code:?}");
            }
        }
        assert!(ErrorCode::ALL
            .windows(2)
            .all(|w| w[0].to_u16() < w[1].to_u16()));
        let assigned = (0..=u16::MAX)
            .filter(|&raw| !matches!(ErrorCode::from_u16(raw), ErrorCode::Unknown(_)))
            .count();
        assert_eq!(assigned, ErrorCode::ALL.len());
    }

    #[test]
    fn unknown_numbers_are_kept() {
        for raw in [0u16, 0x000b, 0x00ff, 0x010a, 0x0202, 0xffff] {
            let code = ErrorCode::from(raw);
            assert_eq!(code, ErrorCode::Unknown(raw));
            assert_eq!(u16::from(code), raw);
            assert_eq!(code.to_io_kind(), io::ErrorKind::Other);
        }
        assert_eq!(
            ErrorCode::Unknown(0x1234).to_string(),
            "unknown error code 0x1234"
        );
    }

    #[test]
    fn unmapped_kinds_become_other() {
        assert_eq!(
            ErrorCode::from_io_kind(io::ErrorKind::UnexpectedEof),
            ErrorCode::Other
        );
        assert_eq!(
            ErrorCode::from_io_kind(io::ErrorKind::AlreadyExists),
            ErrorCode::Other
        );
    }

    /// Linux errno numbers, hard-coded so the test needs no libc.
    #[cfg(target_os = "linux")]
    #[test]
    fn from_io_uses_errno() {
        let cases = [
            (1, ErrorCode::PermissionDenied),     // EPERM
            (4, ErrorCode::Interrupted),          // EINTR
            (11, ErrorCode::WouldBlock),          // EAGAIN
            (12, ErrorCode::OutOfMemory),         // ENOMEM
            (13, ErrorCode::PermissionDenied),    // EACCES
            (22, ErrorCode::InvalidInput),        // EINVAL
            (32, ErrorCode::BrokenPipe),          // EPIPE
            (98, ErrorCode::AddrInUse),           // EADDRINUSE
            (99, ErrorCode::AddrNotAvailable),    // EADDRNOTAVAIL
            (100, ErrorCode::NetworkDown),        // ENETDOWN
            (101, ErrorCode::NetworkUnreachable), // ENETUNREACH
            (103, ErrorCode::ConnectionAborted),  // ECONNABORTED
            (104, ErrorCode::ConnectionReset),    // ECONNRESET
            (107, ErrorCode::NotConnected),       // ENOTCONN
            (110, ErrorCode::TimedOut),           // ETIMEDOUT
            (111, ErrorCode::ConnectionRefused),  // ECONNREFUSED
            (113, ErrorCode::HostUnreachable),    // EHOSTUNREACH
            (122, ErrorCode::QuotaExceeded),      // EDQUOT
        ];
        for (errno, code) in cases {
            assert_eq!(
                ErrorCode::from_io(&io::Error::from_raw_os_error(errno)),
                code,
                "errno {errno}"
            );
        }
    }

    #[test]
    fn into_io_error_round_trips() {
        let err = ErrorCode::ConnectionRefused.into_io_error("connect to 127.0.0.1:9");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            err.to_string(),
            "connect to 127.0.0.1:9: connection refused"
        );
        assert_eq!(ErrorCode::from_io(&err), ErrorCode::ConnectionRefused);
        let remote = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<RemoteError>())
            .expect("inner error is a RemoteError");
        assert_eq!(remote.context, "connect to 127.0.0.1:9");

        // An unknown code keeps its number through the io::Error.
        let err = ErrorCode::Unknown(0x0777).into_io_error("listen");
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(ErrorCode::from_io(&err), ErrorCode::Unknown(0x0777));
    }
}
