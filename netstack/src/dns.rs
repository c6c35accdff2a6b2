//! DNS answered by the stack through a [`Resolve`] seam: the guest's A and AAAA queries to
//! the stack's DNS address are answered with what the resolver says, so name resolution can
//! go through the monitor (its own resolver, under its policy) instead of a forwarded
//! resolver. Without a resolver the stack forwards queries (see [`crate::Addresses`]).
//!
//! [`answer`] is sans-IO: one query's bytes in, one reply's bytes out. It treats the query as
//! hostile: truncated or malformed queries get no reply (or FORMERR when the header is
//! readable), and nothing panics.

use std::io;
use std::net::IpAddr;

/// Resolves a name to addresses; implemented by whatever the stack's owner wires in (the
/// monitor's name resolution).
pub trait Resolve: Send + Sync {
    /// The addresses of `name` (no trailing dot). `NotFound` means the name does not exist.
    ///
    /// # Errors
    /// `NotFound` for a name that does not exist; any other error is a server failure.
    fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// Names resolved by the monitor, through the guest's arca session (`Resolve` requests,
/// under the monitor's policy: an address learned this way is what name rules allow).
pub struct ThroughMonitor(pub arca::ArcaSession);

impl Resolve for ThroughMonitor {
    fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        Ok(self.0.lookup_host((name, 0))?.map(|a| a.ip()).collect())
    }
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
/// TTL of every answer: short, the stack keeps no cache.
const TTL: u32 = 30;
/// Answers per reply (a UDP reply stays well under 512 bytes).
const MAX_ANSWERS: usize = 8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads the question's name starting at `at` (no compression in a question); returns the
/// dotted name and the offset after it.
fn read_name(q: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 || name.len() + len > 253 {
            return None;
        }
        let label = q.get(at..at + len)?;
        if !label
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|c| char::from(*c)));
        at += len;
    }
}

/// The reply to the DNS query `query`, asking `resolver`; `None` when the query is too
/// broken to answer (no readable header, or a response rather than a query).
pub fn answer(query: &[u8], resolver: &dyn Resolve) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = be16(header, 2)?;
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let id = [header[0], header[1]];
    let rd = (flags >> 8) as u8 & 0x01;
    let reply_head = |rcode: u8, qd: u16, an: u16| {
        let mut r = Vec::with_capacity(512);
        r.extend_from_slice(&id);
        r.push(0x80 | rd); // QR, opcode 0, RD copied
        r.push(0x80 | rcode); // RA
        r.extend_from_slice(&qd.to_be_bytes());
        r.extend_from_slice(&an.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r
    };
    let opcode = (flags >> 11) & 0x0f;
    if opcode != 0 {
        return Some(reply_head(RCODE_NOTIMP, 0, 0));
    }
    if be16(header, 4) != Some(1) {
        return Some(reply_head(RCODE_FORMERR, 0, 0));
    }
    let Some((name, at)) = read_name(query, 12) else {
        return Some(reply_head(RCODE_FORMERR, 0, 0));
    };
    let (Some(qtype), Some(qclass)) = (be16(query, at), be16(query, at + 2)) else {
        return Some(reply_head(RCODE_FORMERR, 0, 0));
    };
    let question = query.get(12..at + 4)?;
    let wanted = match (qtype, qclass) {
        (TYPE_A, CLASS_IN) => |ip: &IpAddr| ip.is_ipv4(),
        (TYPE_AAAA, CLASS_IN) => |ip: &IpAddr| ip.is_ipv6(),
        _ => {
            let mut r = reply_head(RCODE_NOTIMP, 1, 0);
            r.extend_from_slice(question);
            return Some(r);
        }
    };
    let addrs = match resolver.resolve(&name) {
        Ok(a) => a,
        Err(e) => {
            let rcode = if e.kind() == io::ErrorKind::NotFound {
                RCODE_NXDOMAIN
            } else {
                RCODE_SERVFAIL
            };
            let mut r = reply_head(rcode, 1, 0);
            r.extend_from_slice(question);
            return Some(r);
        }
    };
    let chosen: Vec<IpAddr> = addrs.into_iter().filter(wanted).take(MAX_ANSWERS).collect();
    let an = u16::try_from(chosen.len()).unwrap_or(0);
    let mut r = reply_head(0, 1, an);
    r.extend_from_slice(question);
    for ip in chosen {
        r.extend_from_slice(&[0xc0, 12]); // the question's name
        let (ty, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        r.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    struct Fixed;
    impl Resolve for Fixed {
        fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
            match name {
                "example.test" => Ok(vec![
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
                ]),
                "broken.test" => Err(io::Error::other("upstream down")),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
    }

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn a_and_aaaa_are_answered_from_the_resolver() {
        let q = query(0xbeef, "example.test", TYPE_A);
        let r = answer(&q, &Fixed).expect("reply");
        assert_eq!(&r[..4], &[0xbe, 0xef, 0x81, 0x80], "id, QR|RD, RA, NOERROR");
        assert_eq!(&r[4..8], &[0, 1, 0, 1], "one question, one answer");
        assert_eq!(&r[12..q.len()], &q[12..], "the question echoed");
        let a = &r[q.len()..];
        assert_eq!(a, &[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 7]);

        let q6 = query(1, "example.test", TYPE_AAAA);
        let r6 = answer(&q6, &Fixed).expect("reply");
        assert_eq!(&r6[6..8], &[0, 1]);
        assert_eq!(
            &r6[r6.len() - 16..],
            &Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).octets()
        );
    }

    #[test]
    fn missing_names_failures_and_other_types_get_their_codes() {
        let r = answer(&query(2, "nowhere.test", TYPE_A), &Fixed).expect("reply");
        assert_eq!(r[3] & 0x0f, RCODE_NXDOMAIN);
        let r = answer(&query(3, "broken.test", TYPE_A), &Fixed).expect("reply");
        assert_eq!(r[3] & 0x0f, RCODE_SERVFAIL);
        let r = answer(&query(4, "example.test", 15), &Fixed).expect("reply");
        assert_eq!(r[3] & 0x0f, RCODE_NOTIMP);
    }

    #[test]
    fn broken_queries_get_formerr_or_nothing_and_never_a_panic() {
        let q = query(5, "example.test", TYPE_A);
        for cut in 0..q.len() {
            if let Some(r) = answer(&q[..cut], &Fixed) {
                assert_eq!(r[3] & 0x0f, RCODE_FORMERR, "cut at {cut}");
            }
        }
        let mut reply = q.clone();
        reply[2] |= 0x80;
        assert_eq!(answer(&reply, &Fixed), None, "responses are not answered");
        let mut looped = q.clone();
        looped[12] = 0xc0; // a compression pointer in the question
        assert_eq!(
            answer(&looped, &Fixed).expect("reply")[3] & 0x0f,
            RCODE_FORMERR
        );
    }
}
