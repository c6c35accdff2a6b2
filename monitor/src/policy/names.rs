//! Policy by name (POLICY.md §5): the patterns of `names = [...]` in outbound rules, and the
//! addresses a guest learned by resolving an allowed name through the monitor.
//!
//! No I/O here either: [`Learned`] takes the time as an argument.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::canonical;

/// Addresses one session may have learned at once; past this, answers teach nothing more
/// until older ones expire (a connect to an address not learned is simply judged without it).
pub const MAX_LEARNED: usize = 4096;

/// A name in an outbound rule: `github.com` (that name only), `*.pypi.org` (any name below
/// `pypi.org`, not `pypi.org` itself) or `*` (every name). Matching ignores case and a
/// trailing dot; stored in lower case without the dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// `*`: every name.
    Any,
    /// One name.
    Exact(String),
    /// `*.suffix`: names that end in `.suffix`.
    Below(String),
}

impl NamePattern {
    /// Whether `name` (in [`arca_wire::HostName::canonical`] form: lower case, no trailing
    /// dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Exact(n) => name == n,
            NamePattern::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl FromStr for NamePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(NamePattern::Any);
        }
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = arca_wire::HostName::new(rest.as_bytes())
            .map_err(|e| format!("`{s}` is not a name pattern: {e}"))?;
        let name = name.canonical();
        Ok(if wild {
            NamePattern::Below(name)
        } else {
            NamePattern::Exact(name)
        })
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Any => f.write_str("*"),
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Below(n) => write!(f, "*.{n}"),
        }
    }
}

impl Serialize for NamePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Whether an address may never be allowed by a name, whatever the name's rule says: the
/// unspecified addresses, IPv4 broadcast, multicast and link-local (`169.254.0.0/16`, where
/// cloud metadata services live, and `fe80::/10`). Only an address rule can allow these.
pub fn never_learned(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_link_local()
        }
        IpAddr::V6(a) => {
            let [first, ..] = a.segments();
            a.is_unspecified() || a.is_multicast() || first & 0xffc0 == 0xfe80
        }
    }
}

/// One address learned through a name: which rule allowed the name, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    rule: usize,
    until: Instant,
}

/// The addresses one session learned by resolving allowed names, each for the answer's TTL
/// plus the configured grace, for the rule that allowed the name. Shared by the session and its UDP
/// sockets (whose datagrams are judged with it), hence the lock; it is never contended
/// across threads in practice (one session is served by one thread at a time).
#[derive(Debug, Default)]
pub struct Learned {
    map: Mutex<HashMap<IpAddr, Vec<Grant>>>,
}

impl Learned {
    /// Records that `ip` was learned through a name allowed by outbound rule `rule`, valid
    /// until `until`. Returns false when the address is not recorded: it is one no name may
    /// allow ([`never_learned`]), or the session holds [`MAX_LEARNED`] live addresses.
    pub fn learn(&self, ip: IpAddr, rule: usize, until: Instant, now: Instant) -> bool {
        let ip = canonical(ip);
        if never_learned(ip) {
            return false;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_LEARNED && !map.contains_key(&ip) {
            map.retain(|_, grants| {
                grants.retain(|g| g.until > now);
                !grants.is_empty()
            });
            if map.len() >= MAX_LEARNED {
                return false;
            }
        }
        let grants = map.entry(ip).or_default();
        grants.retain(|g| g.until > now);
        match grants.iter_mut().find(|g| g.rule == rule) {
            Some(g) => g.until = g.until.max(until),
            None => grants.push(Grant { rule, until }),
        }
        true
    }

    /// The first rule (lowest index) among the live grants for `ip` that `covers` accepts.
    pub fn rule_for(
        &self,
        ip: IpAddr,
        now: Instant,
        covers: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let ip = canonical(ip);
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)?
            .iter()
            .filter(|g| g.until > now && covers(g.rule))
            .map(|g| g.rule)
            .min()
    }

    /// Live learned addresses (for tests and logs).
    pub fn len(&self, now: Instant) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|grants| grants.iter().any(|g| g.until > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pat(s: &str) -> NamePattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_by_name_ignoring_case_and_a_trailing_dot() {
        let gh = pat("GitHub.com.");
        assert_eq!(gh, NamePattern::Exact("github.com".into()));
        assert!(gh.matches("github.com"));
        assert!(!gh.matches("api.github.com"));
        assert!(!gh.matches("evilgithub.com"));
        let py = pat("*.PyPI.org");
        assert_eq!(py.to_string(), "*.pypi.org");
        assert!(py.matches("files.pypi.org"));
        assert!(py.matches("a.b.pypi.org"));
        assert!(!py.matches("pypi.org"), "the suffix itself is not below it");
        assert!(!py.matches("evilpypi.org"));
        assert!(!py.matches(".pypi.org"));
        assert!(pat("*").matches("anything.example"));
    }

    #[test]
    fn bad_patterns_are_refused_clearly() {
        for (bad, why) in [
            ("bücher.de", "IDNA"),
            ("a..b", "empty label"),
            ("*.", "empty host name"),
            ("**.x.com", "cannot appear"),
            ("x.*.com", "cannot appear"),
            ("10.0.0.1", "all digits"),
            ("evil\0.com", "cannot appear"),
            ("", "empty"),
        ] {
            let e = bad.parse::<NamePattern>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn learned_addresses_last_their_ttl_and_only_for_their_rule() {
        let l = Learned::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(l.learn(ip, 2, t0 + Duration::from_secs(10), t0));
        assert_eq!(l.rule_for(ip, t0, |_| true), Some(2));
        assert_eq!(l.rule_for(ip, t0, |r| r != 2), None, "rule must cover");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(l.rule_for(mapped, t0, |_| true), Some(2), "mapped is IPv4");
        assert_eq!(l.rule_for(ip, t0 + Duration::from_secs(10), |_| true), None);
        assert_eq!(l.len(t0), 1);
        assert_eq!(l.len(t0 + Duration::from_secs(11)), 0);
    }

    #[test]
    fn link_local_and_metadata_addresses_are_never_learned() {
        let l = Learned::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        for ip in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
            "::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!l.learn(ip, 0, until, t0), "{ip}");
            assert_eq!(l.rule_for(ip, t0, |_| true), None);
        }
        assert!(l.learn("127.0.0.1".parse().unwrap(), 0, until, t0));
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_expired_entries() {
        let l = Learned::default();
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        for i in 0..MAX_LEARNED {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            assert!(l.learn(ip, 0, soon, t0));
        }
        let extra: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!l.learn(extra, 0, soon, t0), "full");
        assert!(
            l.learn(extra, 0, soon + Duration::from_secs(5), soon),
            "expired make room"
        );
        assert_eq!(l.len(soon), 1);
    }
}
