//! Host names and resolver answers: the fields of `Resolve` and `ResolveOk` (PROTOCOL.md §5.7,
//! §5.8).
//!
//! A [`HostName`] is checked for *form* when it is made, on either end: 1 to
//! [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-` and `_`, in dot-separated labels of 1
//! to 63 bytes, with at most one trailing dot, and a last label that is not all digits (so no
//! IPv4 literal or numeric alias such as `2130706433` passes for a name). Internationalised
//! names are not translated here: a guest sends their `xn--` form. Whether the guest may
//! resolve the name is the monitor's policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addr::{FAMILY_V4, FAMILY_V6};
use crate::error::WireError;

/// The longest name `Resolve` carries, in bytes (RFC 1035's 255-byte wire form, less its
/// length octets, is 253 characters of text).
pub const MAX_NAME_LEN: usize = 253;

/// The most addresses one `ResolveOk` carries; a longer answer is cut to its first ones.
pub const MAX_ANSWERS: usize = 8;

/// Bytes of one answer entry in `ResolveOk`.
pub const ANSWER_LEN: usize = 24;

/// The longest label, in bytes (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Why bytes are not a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// No bytes at all (or only a dot).
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    TooLong(usize),
    /// A byte that is not ASCII: internationalised names travel in their `xn--` form.
    NonAscii {
        /// Where.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// An ASCII byte a host name cannot hold (NUL, a space, `:`, `/`, …).
    BadByte {
        /// Where.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// Two dots in a row, or a leading dot.
    EmptyLabel {
        /// Where the empty label starts.
        at: usize,
    },
    /// A label longer than 63 bytes.
    LabelTooLong {
        /// Its length.
        len: usize,
    },
    /// The last label is all digits: an address or a numeric alias, not a name.
    Numeric,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty host name"),
            NameError::TooLong(len) => {
                write!(f, "host name of {len} bytes exceeds {MAX_NAME_LEN}")
            }
            NameError::NonAscii { at, byte } => write!(
                f,
                "non-ASCII byte {byte:#04x} at {at} in host name (IDNA is not supported: \
                 use the xn-- form)"
            ),
            NameError::BadByte { at, byte } => {
                write!(f, "byte {byte:#04x} at {at} cannot appear in a host name")
            }
            NameError::EmptyLabel { at } => write!(f, "empty label at {at} in host name"),
            NameError::LabelTooLong { len } => {
                write!(
                    f,
                    "label of {len} bytes in host name exceeds {MAX_LABEL_LEN}"
                )
            }
            NameError::Numeric => {
                f.write_str("host name's last label is all digits (an address, not a name)")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// A host name of valid form (see the module documentation), as the guest wrote it: case and
/// a trailing dot are kept (the monitor's policy ignores both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(String);

impl HostName {
    /// Checks `bytes` and makes a name of them.
    ///
    /// # Errors
    /// [`NameError`] naming the first problem.
    pub fn new(bytes: &[u8]) -> Result<HostName, NameError> {
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(bytes.len()));
        }
        let body = bytes.strip_suffix(b".").unwrap_or(bytes);
        if body.is_empty() {
            return Err(NameError::Empty);
        }
        let mut start = 0;
        let mut last_numeric = true;
        for label in body.split(|b| *b == b'.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel { at: start });
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong { len: label.len() });
            }
            for (i, &byte) in label.iter().enumerate() {
                let at = start + i;
                if !byte.is_ascii() {
                    return Err(NameError::NonAscii { at, byte });
                }
                if !(byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
                    return Err(NameError::BadByte { at, byte });
                }
            }
            last_numeric = label.iter().all(u8::is_ascii_digit);
            start += label.len() + 1;
        }
        if last_numeric {
            return Err(NameError::Numeric);
        }
        // Every byte is ASCII (checked above), so this cannot fail.
        String::from_utf8(bytes.to_vec())
            .map(HostName)
            .map_err(|_| NameError::Empty)
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in lower case without a trailing dot: the form policy matching uses.
    pub fn canonical(&self) -> String {
        self.0
            .strip_suffix('.')
            .unwrap_or(&self.0)
            .to_ascii_lowercase()
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<HostName, NameError> {
        HostName::new(s.as_bytes())
    }
}

/// `Resolve.family`: which addresses the guest wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FamilyHint {
    /// IPv4 and IPv6; wire value 0.
    Any,
    /// IPv4 only; wire value 4.
    V4,
    /// IPv6 only; wire value 6.
    V6,
}

impl FamilyHint {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            FamilyHint::Any => 0,
            FamilyHint::V4 => FAMILY_V4,
            FamilyHint::V6 => FAMILY_V6,
        }
    }

    /// The hint for a wire byte.
    ///
    /// # Errors
    /// [`WireError::UnknownFamilyHint`] for anything but 0, 4 and 6.
    pub fn from_u8(raw: u8) -> Result<FamilyHint, WireError> {
        match raw {
            0 => Ok(FamilyHint::Any),
            FAMILY_V4 => Ok(FamilyHint::V4),
            FAMILY_V6 => Ok(FamilyHint::V6),
            other => Err(WireError::UnknownFamilyHint(other)),
        }
    }

    /// Whether `ip` is of a family this hint asks for.
    pub fn admits(self, ip: IpAddr) -> bool {
        match self {
            FamilyHint::Any => true,
            FamilyHint::V4 => ip.is_ipv4(),
            FamilyHint::V6 => ip.is_ipv6(),
        }
    }
}

/// One address of an answer, with how long it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Answer {
    /// The address.
    pub addr: IpAddr,
    /// Seconds the answer stays valid (the DNS TTL left).
    pub ttl: u32,
}

impl Answer {
    /// The entry's bytes: family, three zero bytes, TTL (LE), the address's 16 bytes (IPv4 in
    /// the first 4, the rest zero).
    pub fn to_bytes(self) -> [u8; ANSWER_LEN] {
        let (family, octets) = match self.addr {
            IpAddr::V4(a) => {
                let [a, b, c, d] = a.octets();
                (FAMILY_V4, [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets()),
        };
        let mut out = [0u8; ANSWER_LEN];
        let bytes = [family, 0, 0, 0]
            .into_iter()
            .chain(self.ttl.to_le_bytes())
            .chain(octets);
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = src;
        }
        out
    }

    /// Parses one in-use entry.
    ///
    /// # Errors
    /// [`WireError::BadAnswer`] for an unknown family, nonzero reserved bytes, or an IPv4
    /// entry with nonzero bytes after its address.
    pub fn from_bytes(b: [u8; ANSWER_LEN]) -> Result<Answer, WireError> {
        let [family, r0, r1, r2, t0, t1, t2, t3, rest @ ..] = b;
        if [r0, r1, r2] != [0; 3] {
            return Err(WireError::BadAnswer("nonzero reserved bytes"));
        }
        let ttl = u32::from_le_bytes([t0, t1, t2, t3]);
        let addr = match family {
            FAMILY_V4 => {
                let [a, b, c, d, tail @ ..] = rest;
                if tail != [0; 12] {
                    return Err(WireError::BadAnswer("ipv4 entry has nonzero bytes 4..16"));
                }
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(rest)),
            _ => return Err(WireError::BadAnswer("unknown address family")),
        };
        Ok(Answer { addr, ttl })
    }
}

/// The addresses of one `ResolveOk`: at most [`MAX_ANSWERS`], in the resolver's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Answers(Vec<Answer>);

impl Answers {
    /// The first [`MAX_ANSWERS`] of `answers`.
    pub fn new(answers: impl IntoIterator<Item = Answer>) -> Answers {
        Answers(answers.into_iter().take(MAX_ANSWERS).collect())
    }

    /// The addresses.
    pub fn as_slice(&self) -> &[Answer] {
        &self.0
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_good_form_pass_as_written() {
        for ok in [
            "github.com",
            "GitHub.COM.",
            "a",
            "_acme-challenge.example.org",
            "xn--bcher-kva.example",
            "1password.com",
            "host-1.10.example",
        ] {
            assert_eq!(HostName::new(ok.as_bytes()).unwrap().as_str(), ok);
        }
        let n: HostName = "Files.PyPI.org.".parse().unwrap();
        assert_eq!(n.canonical(), "files.pypi.org");
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(long.len(), MAX_NAME_LEN);
        assert!(HostName::new(long.as_bytes()).is_ok());
    }

    #[test]
    fn names_of_bad_form_are_refused_with_the_reason() {
        let err = |s: &[u8]| HostName::new(s).unwrap_err();
        assert_eq!(err(b""), NameError::Empty);
        assert_eq!(err(b"."), NameError::Empty);
        assert_eq!(err(&[b'a'; 254]), NameError::TooLong(254));
        assert_eq!(err(b"a..b"), NameError::EmptyLabel { at: 2 });
        assert_eq!(err(b".a"), NameError::EmptyLabel { at: 0 });
        assert_eq!(err(b"a.b.."), NameError::EmptyLabel { at: 4 });
        assert_eq!(err(b"evil\0.com"), NameError::BadByte { at: 4, byte: 0 });
        assert_eq!(err(b"a b"), NameError::BadByte { at: 1, byte: b' ' });
        assert_eq!(err(b"::1"), NameError::BadByte { at: 0, byte: b':' });
        assert_eq!(
            err("bücher.de".as_bytes()),
            NameError::NonAscii { at: 1, byte: 0xc3 }
        );
        assert!(err("bücher.de".as_bytes()).to_string().contains("IDNA"));
        assert_eq!(
            err(format!("{}.com", "x".repeat(64)).as_bytes()),
            NameError::LabelTooLong { len: 64 }
        );
        for numeric in ["127.0.0.1", "2130706433", "10.1", "a.123."] {
            assert_eq!(err(numeric.as_bytes()), NameError::Numeric, "{numeric}");
        }
    }

    #[test]
    fn family_hints_round_trip_and_filter() {
        for h in [FamilyHint::Any, FamilyHint::V4, FamilyHint::V6] {
            assert_eq!(FamilyHint::from_u8(h.to_u8()), Ok(h));
        }
        assert_eq!(FamilyHint::from_u8(5), Err(WireError::UnknownFamilyHint(5)));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(FamilyHint::V4.admits(v4) && !FamilyHint::V4.admits(v6));
        assert!(FamilyHint::V6.admits(v6) && !FamilyHint::V6.admits(v4));
        assert!(FamilyHint::Any.admits(v4) && FamilyHint::Any.admits(v6));
    }

    #[test]
    fn answers_encode_in_one_way_only() {
        let a = Answer {
            addr: "192.0.2.7".parse().unwrap(),
            ttl: 300,
        };
        let b = a.to_bytes();
        assert_eq!(&b[..8], &[4, 0, 0, 0, 0x2c, 0x01, 0, 0]);
        assert_eq!(&b[8..12], &[192, 0, 2, 7]);
        assert_eq!(Answer::from_bytes(b), Ok(a));
        let mut padded = b;
        padded[20] = 1;
        assert!(Answer::from_bytes(padded).is_err());
        let mut reserved = b;
        reserved[2] = 1;
        assert!(Answer::from_bytes(reserved).is_err());
        let mut family = b;
        family[0] = 5;
        assert!(Answer::from_bytes(family).is_err());
        let v6 = Answer {
            addr: "2001:db8::1".parse().unwrap(),
            ttl: 1,
        };
        assert_eq!(Answer::from_bytes(v6.to_bytes()), Ok(v6));
        assert_eq!(Answers::new(std::iter::repeat_n(a, 40)).len(), MAX_ANSWERS);
    }
}
