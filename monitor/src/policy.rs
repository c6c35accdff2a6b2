//! The monitor's policy: which addresses a guest may reach, listen on and
//! join, and how much of the host it may hold (POLICY.md).
//!
//! A [`Policy`] is read once from TOML (`arca-monitor run|serve --policy
//! FILE`) or is [`Policy::default`], the documented safe default. It is
//! immutable and shared by every session of a monitor. Rules are tried in
//! order and the first match wins; an address no rule matches is denied.
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as the IPv4
//! address they carry, in requests and in rules alike, so a guest cannot slip
//! past an IPv4 rule by writing the mapped form. The other IPv6 forms that
//! carry an IPv4 address (IPv4-compatible, NAT64, 6to4, Teredo, ISATAP: see
//! [`embedded_ipv4`]) are matched twice, as the IPv6 address and as each
//! IPv4 address inside it, and are allowed only when every one of those is:
//! an IPv4 deny cannot be sidestepped by tunnelling or translating to it.
//!
//! This module does no I/O: [`Policy`] answers questions, [`ConnectRate`]
//! takes the time as an argument, and [`DestCache`] remembers the last
//! answer for a UDP socket's hot path. The session enforces.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub mod names;

pub use names::{Learned, NamePattern};

/// A policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown key, a bad CIDR, a bad port
    /// range or a bad limit. The message names the line and column.
    #[error("policy file {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's message, with the line, the column and the excerpt.
        message: String,
    },
}

/// Why an address block or a port range in a rule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Not an address, nor an address with a prefix.
    #[error("`{0}` is not an address block (examples: 10.0.0.0/8, ::1/128)")]
    NotABlock(String),
    /// The prefix is not a number.
    #[error("`{block}`: `{prefix}` is not a prefix length")]
    BadPrefix {
        /// The block as written.
        block: String,
        /// Its prefix as written.
        prefix: String,
    },
    /// The prefix is longer than the address.
    #[error("prefix length {prefix} is longer than the address ({max} bits)")]
    PrefixTooLong {
        /// The prefix length.
        prefix: u8,
        /// The address's length in bits.
        max: u8,
    },
    /// Bits past the prefix are set.
    #[error("{addr}/{prefix} has host bits set (the block is {network}/{prefix})")]
    HostBitsSet {
        /// The address as written.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
        /// The block's network address.
        network: IpAddr,
    },
    /// A block as written, and what is wrong with it.
    #[error("`{block}`: {error}")]
    InBlock {
        /// The block as written.
        block: String,
        /// What is wrong.
        error: Box<RuleError>,
    },
    /// Not a port number.
    #[error("`{0}` is not a port (0 to 65535)")]
    NotAPort(String),
    /// A range whose low end is above its high end.
    #[error("port range `{range}` is empty ({lo} > {hi})")]
    EmptyRange {
        /// The range as written.
        range: String,
        /// Its low end.
        lo: u16,
        /// Its high end.
        hi: u16,
    },
}

/// What a rule does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it with `PermissionDenied`.
    Deny,
}

/// The transport a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// Both.
    #[default]
    Any,
}

impl Proto {
    fn covers(self, asked: Proto) -> bool {
        self == Proto::Any || self == asked
    }
}

/// An address block: `10.0.0.0/8`, `::1/128`, or a bare address (a host
/// block). Host bits must be zero. An IPv4-mapped IPv6 block of prefix 96 or
/// more is stored as the IPv4 block it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block `addr/prefix`.
    ///
    /// # Errors
    /// A message when the prefix is longer than the address or host bits are
    /// set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, RuleError> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(RuleError::PrefixTooLong { prefix, max });
        }
        let c = Self { addr, prefix };
        if c.network() != addr {
            return Err(RuleError::HostBitsSet {
                addr,
                prefix,
                network: c.network(),
            });
        }
        Ok(c)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// True when `ip` (already canonical: see [`canonical`]) lies in the
    /// block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    fn is_multicast_block(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => self.prefix >= 4 && a.is_multicast(),
            IpAddr::V6(a) => self.prefix >= 8 && a.is_multicast(),
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// `ip`, with an IPv4-mapped IPv6 address turned into its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// How an IPv6 address carries an IPv4 address that traffic to it reaches
/// (by translation or by a tunnel). IPv4-mapped addresses are not among these:
/// [`canonical`] turns them into IPv4 outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated): the last
    /// 32 bits. `::` and `::1` are IPv6's own unspecified and loopback
    /// addresses, not this form.
    Compatible,
    /// NAT64 under the well-known prefix `64:ff9b::/96` (RFC 6052): the last
    /// 32 bits.
    Nat64,
    /// NAT64 under the local-use prefix `64:ff9b:1::/48` (RFC 8215). Where
    /// the IPv4 address sits depends on the length of the prefix the operator
    /// carved out of the /48 (RFC 6052 §2.2), which the monitor cannot know:
    /// its [`Embedded::v4`] is `None` and the address is denied.
    Nat64LocalUse,
    /// 6to4 `2002::/16` (RFC 3056): bits 16..48, the IPv4 tunnel endpoint.
    SixToFour,
    /// Teredo `2001::/32` (RFC 4380): the server, bits 32..64.
    TeredoServer,
    /// Teredo `2001::/32`: the client's public address, bits 96..128
    /// inverted.
    TeredoClient,
    /// An ISATAP interface identifier (RFC 5214), `0:5efe:a.b.c.d` or
    /// `200:5efe:a.b.c.d` under any unicast prefix: the last 32 bits, the
    /// IPv4 tunnel endpoint.
    Isatap,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Embedding::Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64 (64:ff9b::/96)",
            Embedding::Nat64LocalUse => "local-use NAT64 (64:ff9b:1::/48)",
            Embedding::SixToFour => "6to4",
            Embedding::TeredoServer => "Teredo server",
            Embedding::TeredoClient => "Teredo client",
            Embedding::Isatap => "ISATAP",
        })
    }
}

/// An IPv4 address found inside an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// The form that carries it.
    pub form: Embedding,
    /// The IPv4 address; `None` when the form carries one at a place the
    /// monitor cannot know ([`Embedding::Nat64LocalUse`]).
    pub v4: Option<Ipv4Addr>,
}

/// The IPv4 addresses that traffic to `ip` may reach besides `ip` itself
/// (POLICY.md, "IPv4 inside IPv6"): at most three (a Teredo address carries
/// two, and its interface identifier may also read as ISATAP's). None for an
/// IPv4 address, an IPv4-mapped one (that *is* IPv4, see [`canonical`]) or a
/// multicast group.
pub fn embedded_ipv4(ip: IpAddr) -> impl Iterator<Item = Embedded> {
    let v6 = match ip {
        IpAddr::V6(v6) if !v6.is_multicast() && v6.to_ipv4_mapped().is_none() => Some(v6),
        _ => None,
    };
    let (prefixed, teredo_client, isatap) = v6.map_or((None, None, None), embedded_in);
    [prefixed, teredo_client, isatap].into_iter().flatten()
}

/// [`embedded_ipv4`] for a unicast, unmapped IPv6 address: the form named by
/// the prefix, the Teredo client, the ISATAP endpoint.
fn embedded_in(v6: Ipv6Addr) -> (Option<Embedded>, Option<Embedded>, Option<Embedded>) {
    let bits = u128::from(v6);
    let o = v6.octets();
    let at = |i: usize| {
        <[u8; 4]>::try_from(o.get(i..i + 4)?)
            .ok()
            .map(Ipv4Addr::from)
    };
    let found = |form, v4| Some(Embedded { form, v4 });
    let last = at(12);
    let prefixed = if bits >> 32 == 0 && bits > 1 {
        found(Embedding::Compatible, last)
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        found(Embedding::Nat64, last)
    } else if bits >> 80 == 0x0064_ff9b_0001 {
        found(Embedding::Nat64LocalUse, None)
    } else if bits >> 112 == 0x2002 {
        found(Embedding::SixToFour, at(2))
    } else if bits >> 96 == 0x2001_0000 {
        found(Embedding::TeredoServer, at(4))
    } else {
        None
    };
    let teredo_client = if bits >> 96 == 0x2001_0000 {
        found(Embedding::TeredoClient, last.map(|a| !a))
    } else {
        None
    };
    // The identifier's first octet holds the universal/local bit, which
    // ISATAP sets for a global IPv4 address (RFC 5214 §6.1), and the group
    // bit; any value of the two counts, which can only make a check stricter.
    let iid_high = (bits >> 32) & 0xffff_ffff;
    let isatap = if iid_high & 0xfcff_ffff == 0x0000_5efe {
        found(Embedding::Isatap, last)
    } else {
        None
    };
    (prefixed, teredo_client, isatap)
}

impl FromStr for Cidr {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| RuleError::NotABlock(s.to_owned()))?;
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| RuleError::BadPrefix {
                block: s.to_owned(),
                prefix: p.to_owned(),
            })?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).map_err(|e| RuleError::InBlock {
            block: s.to_owned(),
            error: Box::new(e),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A block of multicast groups: a [`Cidr`] that lies inside 224.0.0.0/4 or
/// ff00::/8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBlock(pub Cidr);

impl Serialize for GroupBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for GroupBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = Cidr::deserialize(d)?;
        if c.is_multicast_block() {
            Ok(GroupBlock(c))
        } else {
            Err(de::Error::custom(format!(
                "{c} is not a block of multicast groups (inside 224.0.0.0/4 or ff00::/8)"
            )))
        }
    }
}

/// An inclusive port range; written `443` or `"1024-65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (`lo <= hi`).
    pub hi: u16,
}

impl PortRange {
    /// Every port, 0 included.
    pub const ANY: PortRange = PortRange { lo: 0, hi: 65535 };

    fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| RuleError::NotAPort(p.to_owned()))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(RuleError::EmptyRange {
                range: s.to_owned(),
                lo,
                hi,
            });
        }
        Ok(PortRange { lo, hi })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(&format_args!("{}-{}", self.lo, self.hi))
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"1024-65535\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let p = u16::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a port (0 to 65535)")))?;
                Ok(PortRange { lo: p, hi: p })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn any_ports() -> Vec<PortRange> {
    vec![PortRange::ANY]
}

fn is_any_ports(p: &[PortRange]) -> bool {
    p == [PortRange::ANY]
}

fn is_any_proto(p: &Proto) -> bool {
    *p == Proto::Any
}

/// An outbound or listen rule: the addresses (or, outbound, the names), ports and transport
/// it covers. A rule has `nets`, `names` or both; listen rules have no `names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrRule {
    /// What a match does.
    pub action: Action,
    /// Address blocks (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<Cidr>,
    /// Host names (any of them): the addresses the guest learns by resolving one through the
    /// monitor (POLICY.md §5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NamePattern>,
    /// Port ranges (any of them); every port when omitted.
    #[serde(default = "any_ports", skip_serializing_if = "is_any_ports")]
    pub ports: Vec<PortRange>,
    /// Transport; both when omitted.
    #[serde(default, skip_serializing_if = "is_any_proto")]
    pub proto: Proto,
}

impl AddrRule {
    fn matches(&self, ip: IpAddr, port: u16, proto: Proto) -> bool {
        self.proto.covers(proto)
            && self.ports.iter().any(|r| r.contains(port))
            && self.nets.iter().any(|c| c.contains(ip))
    }
}

/// A multicast rule: which groups a guest may join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// What a match does.
    pub action: Action,
    /// Group blocks (any of them).
    pub groups: Vec<GroupBlock>,
}

/// Per-guest limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// TCP connections held at once, connecting, open or accepted.
    pub connections: u32,
    /// TCP listeners held at once.
    pub listeners: u32,
    /// UDP sockets held at once.
    pub udp_sockets: u32,
    /// Bytes of data and datagram pipes held at once (allocator block sizes);
    /// when omitted, the guest's region is the only bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipe_memory: Option<u64>,
    /// Control requests waiting for their answer (pending connects and
    /// accepts).
    pub requests_in_flight: u32,
    /// New outbound connections per second, sustained.
    pub connect_rate: u32,
    /// New outbound connections allowed in a burst above the rate.
    pub connect_burst: NonZeroU32,
    /// Name resolutions waiting for the resolver at once.
    pub resolves_in_flight: u32,
    /// Name resolutions per second, sustained.
    pub resolve_rate: u32,
    /// Name resolutions allowed in a burst above the rate.
    pub resolve_burst: NonZeroU32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // The monitor's default slot count (`Config::max_conns`): one
            // guest may hold 10,000 connections (monitor/tests/load.rs).
            connections: 16384,
            listeners: 256,
            udp_sockets: 256,
            pipe_memory: None,
            requests_in_flight: 1024,
            connect_rate: 10_000,
            connect_burst: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
            resolves_in_flight: 64,
            resolve_rate: 100,
            resolve_burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The whole policy. A section left out of a file takes the safe default's
/// rules; a section written as an empty list (`outbound = []`) denies
/// everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Per-guest limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where a guest may connect and send datagrams.
    #[serde(default = "default_outbound")]
    pub outbound: Vec<AddrRule>,
    /// Where a guest may listen (TCP) or bind (UDP).
    #[serde(default = "default_listen")]
    pub listen: Vec<AddrRule>,
    /// Which multicast groups a guest may join.
    #[serde(default = "default_multicast")]
    pub multicast: Vec<GroupRule>,
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

fn default_outbound() -> Vec<AddrRule> {
    vec![
        AddrRule {
            action: Action::Deny,
            nets: cidrs(&["169.254.0.0/16", "fe80::/10", "255.255.255.255/32"]),
            names: Vec::new(),
            ports: any_ports(),
            proto: Proto::Any,
        },
        AddrRule {
            action: Action::Allow,
            nets: cidrs(&["0.0.0.0/0", "::/0"]),
            names: Vec::new(),
            ports: any_ports(),
            proto: Proto::Any,
        },
    ]
}

fn unprivileged() -> Vec<PortRange> {
    vec![
        PortRange { lo: 0, hi: 0 },
        PortRange {
            lo: 1024,
            hi: 65535,
        },
    ]
}

fn default_listen() -> Vec<AddrRule> {
    vec![
        AddrRule {
            action: Action::Allow,
            nets: cidrs(&["127.0.0.0/8", "::1/128"]),
            names: Vec::new(),
            ports: unprivileged(),
            proto: Proto::Any,
        },
        AddrRule {
            action: Action::Allow,
            nets: cidrs(&["0.0.0.0/32", "::/128", "224.0.0.0/4", "ff00::/8"]),
            names: Vec::new(),
            ports: unprivileged(),
            proto: Proto::Udp,
        },
    ]
}

fn default_multicast() -> Vec<GroupRule> {
    let groups = |list: &[&str]| cidrs(list).into_iter().map(GroupBlock).collect();
    vec![
        GroupRule {
            action: Action::Deny,
            groups: groups(&["224.0.0.0/24"]),
        },
        GroupRule {
            action: Action::Allow,
            groups: groups(&[
                "224.0.0.0/4",
                "ff05::/16",
                "ff08::/16",
                "ff0e::/16",
                "ff15::/16",
                "ff18::/16",
                "ff1e::/16",
                "ff35::/16",
                "ff38::/16",
                "ff3e::/16",
            ]),
        },
    ]
}

impl Default for Policy {
    /// The safe default (POLICY.md, "The default").
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            outbound: default_outbound(),
            listen: default_listen(),
            multicast: default_multicast(),
        }
    }
}

/// Which rule list a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `[[outbound]]`.
    Outbound,
    /// `[[listen]]`.
    Listen,
    /// `[[multicast]]`.
    Multicast,
}

/// The answer to one question, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The rule list consulted.
    pub section: Section,
    /// The index of the rule that matched, `None` when none did (denied).
    pub rule: Option<usize>,
    /// The IPv4 address inside the IPv6 address asked about that decided
    /// (denied), `None` when the address itself decided.
    pub embedded: Option<Embedded>,
    /// Allowed because the guest learned the address by resolving a name that
    /// `rule` names ([`Policy::outbound_learned`]).
    pub learned: bool,
}

impl Decision {
    /// An answer given without a policy (the relay's unit tests).
    pub const ALLOW: Decision = Decision {
        allowed: true,
        section: Section::Outbound,
        rule: None,
        embedded: None,
        learned: false,
    };
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let section = match self.section {
            Section::Outbound => "outbound",
            Section::Listen => "listen",
            Section::Multicast => "multicast",
        };
        let verdict = if self.allowed { "allow" } else { "deny" };
        if let (true, Some(i)) = (self.learned, self.rule) {
            return write!(
                f,
                "{section}[{i}] ({verdict}) for an address learned from its names"
            );
        }
        match (self.rule, self.embedded) {
            (_, Some(Embedded { form, v4: None })) => write!(
                f,
                "{form} address: where its IPv4 address sits is unknown (deny)"
            ),
            (Some(i), Some(Embedded { form, v4: Some(v4) })) => write!(
                f,
                "{section}[{i}] ({verdict}) for {v4}, the {form} address inside"
            ),
            (None, Some(Embedded { form, v4: Some(v4) })) => write!(
                f,
                "no {section} rule matched {v4}, the {form} address inside (deny)"
            ),
            (Some(i), None) => write!(f, "{section}[{i}] ({verdict})"),
            (None, None) if self.allowed => f.write_str("no policy"),
            (None, None) => write!(f, "no {section} rule matched (deny)"),
        }
    }
}

impl Policy {
    /// Parses a policy from TOML text; `path` names the source in errors.
    ///
    /// # Errors
    /// [`PolicyError::Parse`] naming the line of the first problem.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        policy.check_rules().map_err(|message| PolicyError::Parse {
            path: path.to_owned(),
            message,
        })?;
        Ok(policy)
    }

    /// What TOML's types cannot say: every rule has `nets` or `names`, and only outbound
    /// rules have `names`.
    fn check_rules(&self) -> Result<(), String> {
        for (i, r) in self.outbound.iter().enumerate() {
            if r.nets.is_empty() && r.names.is_empty() {
                return Err(format!("outbound[{i}] has neither `nets` nor `names`"));
            }
        }
        for (i, r) in self.listen.iter().enumerate() {
            if !r.names.is_empty() {
                return Err(format!(
                    "listen[{i}] has `names`: a guest listens on addresses (`nets`) only"
                ));
            }
            if r.nets.is_empty() {
                return Err(format!("listen[{i}] has no `nets`"));
            }
        }
        Ok(())
    }

    /// May a guest resolve `name` (lower case, no trailing dot)? The first outbound rule whose
    /// `names` match decides; a name no rule names is resolved, and the answer allows nothing
    /// by itself (`rule` is `None`).
    pub fn resolve(&self, name: &str) -> Decision {
        let rule = self
            .outbound
            .iter()
            .position(|r| r.names.iter().any(|p| p.matches(name)));
        Decision {
            allowed: rule
                .and_then(|i| self.outbound.get(i))
                .is_none_or(|r| r.action == Action::Allow),
            section: Section::Outbound,
            rule,
            embedded: None,
            learned: false,
        }
    }

    /// Whether outbound rule `rule` is an allow rule whose ports and transport cover `port`
    /// and `proto` (for an address learned through one of its names).
    fn rule_covers(&self, rule: usize, port: u16, proto: Proto) -> bool {
        self.outbound.get(rule).is_some_and(|r| {
            r.action == Action::Allow
                && r.proto.covers(proto)
                && r.ports.iter().any(|p| p.contains(port))
        })
    }

    /// [`Policy::outbound`], then the addresses the guest learned through names: an address
    /// no address rule matches is allowed while a live grant in `learned` names a rule that
    /// covers the port and transport. An address rule that matches — deny or allow — decides
    /// first, so a name never opens what an address rule denies.
    pub fn outbound_learned(
        &self,
        addr: SocketAddr,
        proto: Proto,
        learned: &Learned,
        now: Instant,
    ) -> Decision {
        let d = self.outbound(addr, proto);
        if d.rule.is_some() || d.embedded.is_some() {
            return d;
        }
        let port = addr.port();
        match learned.rule_for(addr.ip(), now, |r| self.rule_covers(r, port, proto)) {
            Some(rule) => Decision {
                allowed: true,
                rule: Some(rule),
                learned: true,
                ..d
            },
            None => d,
        }
    }

    /// Reads and parses a policy file.
    ///
    /// # Errors
    /// [`PolicyError`] when the file cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The policy as TOML (parses back to an equal policy).
    pub fn to_toml(&self) -> String {
        // Serialising these plain types cannot fail; an empty string would
        // still parse back as the default.
        toml::to_string(self).unwrap_or_default()
    }

    /// May a guest connect (TCP) or send (UDP) to `addr`? An IPv6 address
    /// that carries an IPv4 address is allowed only when both are.
    pub fn outbound(&self, addr: SocketAddr, proto: Proto) -> Decision {
        decide(&self.outbound, Section::Outbound, addr, proto)
    }

    /// May a guest listen (TCP) or bind (UDP) on `addr`? Judged like
    /// [`Policy::outbound`], embedded IPv4 addresses included.
    pub fn listen(&self, addr: SocketAddr, proto: Proto) -> Decision {
        decide(&self.listen, Section::Listen, addr, proto)
    }

    /// May a guest join `group`? A group (`224.0.0.0/4`, `ff00::/8`, or the
    /// IPv4-mapped form of the first) carries no other IPv4 address.
    pub fn multicast(&self, group: IpAddr) -> Decision {
        let ip = canonical(group);
        let rule = self
            .multicast
            .iter()
            .position(|r| r.groups.iter().any(|g| g.0.contains(ip)));
        Decision {
            allowed: rule
                .and_then(|i| self.multicast.get(i))
                .is_some_and(|r| r.action == Action::Allow),
            section: Section::Multicast,
            rule,
            embedded: None,
            learned: false,
        }
    }
}

/// The decision of `rules` for `addr`: the IPv6 address and every IPv4
/// address inside it ([`embedded_ipv4`]) must each be allowed, with the same
/// port and transport. The first refusal is the answer (an inside address
/// is tried first, so the log names it); when all are allowed, the answer is
/// the address's own.
fn decide(rules: &[AddrRule], section: Section, addr: SocketAddr, proto: Proto) -> Decision {
    let ip = canonical(addr.ip());
    for e in embedded_ipv4(ip) {
        let inside = match e.v4 {
            Some(v4) => first_match(rules, section, IpAddr::V4(v4), addr.port(), proto),
            None => Decision {
                allowed: false,
                section,
                rule: None,
                embedded: None,
                learned: false,
            },
        };
        if !inside.allowed {
            return Decision {
                embedded: Some(e),
                ..inside
            };
        }
    }
    first_match(rules, section, ip, addr.port(), proto)
}

fn first_match(
    rules: &[AddrRule],
    section: Section,
    ip: IpAddr,
    port: u16,
    proto: Proto,
) -> Decision {
    let rule = rules.iter().position(|r| r.matches(ip, port, proto));
    Decision {
        allowed: rule
            .and_then(|i| rules.get(i))
            .is_some_and(|r| r.action == Action::Allow),
        section,
        rule,
        embedded: None,
        learned: false,
    }
}

/// The last destination a UDP socket sent to and the policy's answer for it,
/// so that a stream of datagrams to one peer costs one compare each.
#[derive(Debug, Default)]
pub struct DestCache {
    last: Option<(SocketAddr, Decision)>,
}

impl DestCache {
    /// The policy's answer for a datagram to `addr`.
    pub fn check(&mut self, policy: &Policy, addr: SocketAddr) -> Decision {
        match self.last {
            Some((a, d)) if a == addr => d,
            _ => {
                let d = policy.outbound(addr, Proto::Udp);
                self.last = Some((addr, d));
                d
            }
        }
    }

    /// [`check`](Self::check) with the addresses the guest learned through names. Only
    /// answers an address rule gave are remembered: an address no rule matches may be
    /// learned, or expire, between two datagrams, so its answer is asked again each time.
    pub fn check_learned(
        &mut self,
        policy: &Policy,
        learned: &Learned,
        addr: SocketAddr,
        now: Instant,
    ) -> Decision {
        match self.last {
            Some((a, d)) if a == addr => d,
            _ => {
                let d = policy.outbound_learned(addr, Proto::Udp, learned, now);
                if !d.learned && (d.rule.is_some() || d.embedded.is_some()) {
                    self.last = Some((addr, d));
                }
                d
            }
        }
    }
}

/// New-connection rate limiting by GCRA (the generic cell rate algorithm, a
/// token bucket kept as one timestamp): `rate` per second sustained, up to
/// `burst` at once. The time comes in as an argument.
#[derive(Debug, Clone)]
pub struct ConnectRate {
    /// Time between connections at the sustained rate; `None` for rate 0
    /// (no new connections at all).
    interval: Option<Duration>,
    /// How far ahead of `now` the theoretical arrival time may run.
    tolerance: Duration,
    /// Theoretical arrival time of the next connection.
    tat: Option<Instant>,
}

impl ConnectRate {
    /// A limiter for `rate` per second with bursts of `burst`.
    pub fn new(rate: u32, burst: NonZeroU32) -> Self {
        let interval = (rate > 0).then(|| Duration::from_secs(1) / rate);
        let tolerance = interval.unwrap_or_default() * (burst.get() - 1);
        Self {
            interval,
            tolerance,
            tat: None,
        }
    }

    /// Takes one connection's worth at `now`; false when over the rate.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat > now + self.tolerance {
            return false;
        }
        self.tat = Some(tat + interval);
        true
    }
}

/// What a session's policy refused, for [`SessionStats`](crate::SessionStats)
/// and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Requests refused by a rule (`PermissionDenied`).
    pub denied: u64,
    /// Requests refused by a limit (`QuotaExceeded`), accepts included.
    pub quota_hits: u64,
    /// Incoming connections accepted and closed at once because the guest
    /// held its connection quota.
    pub accepts_refused: u64,
    /// Datagrams dropped because the policy denies their destination.
    pub udp_denied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.to_string(), "::1/128");
        // A mapped block is stored as IPv4.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "nope/8", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!("80".parse(), Ok(PortRange { lo: 80, hi: 80 }));
        assert_eq!(
            "1024-65535".parse(),
            Ok(PortRange {
                lo: 1024,
                hi: 65535
            })
        );
        assert!("2-1".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("1-".parse::<PortRange>().is_err());
    }

    #[test]
    fn first_match_wins() {
        let p = Policy::from_toml(
            r#"
            [[outbound]]
            action = "deny"
            nets = ["10.0.0.0/8"]
            ports = [22, "6000-6010"]
            proto = "tcp"
            [[outbound]]
            action = "allow"
            nets = ["10.0.0.0/8"]
            [[outbound]]
            action = "deny"
            nets = ["0.0.0.0/0"]
            "#,
            "t",
        )
        .unwrap();
        let out = |a: &str, proto| p.outbound(sa(a), proto);
        assert_eq!(out("10.0.0.1:22", Proto::Tcp).rule, Some(0));
        assert!(!out("10.0.0.1:22", Proto::Tcp).allowed);
        assert!(!out("10.0.0.1:6005", Proto::Tcp).allowed);
        assert!(out("10.0.0.1:6011", Proto::Tcp).allowed);
        assert!(out("10.0.0.1:22", Proto::Udp).allowed, "rule 0 is tcp only");
        assert_eq!(out("10.0.0.1:22", Proto::Udp).rule, Some(1));
        assert_eq!(out("8.8.8.8:53", Proto::Udp).rule, Some(2));
        let none = out("[2001:db8::1]:80", Proto::Tcp);
        assert_eq!((none.allowed, none.rule), (false, None), "no match denies");
        assert_eq!(none.to_string(), "no outbound rule matched (deny)");
    }

    #[test]
    fn v4_mapped_addresses_match_as_ipv4() {
        let p = Policy::default();
        let d = p.outbound(sa("[::ffff:169.254.169.254]:80"), Proto::Tcp);
        assert!(!d.allowed);
        assert_eq!(d.rule, Some(0));
        let l = p.listen(sa("[::ffff:127.0.0.1]:8080"), Proto::Tcp);
        assert!(l.allowed);
        assert!(!p.multicast("::ffff:224.0.0.1".parse().unwrap()).allowed);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn inside(s: &str) -> Vec<(Embedding, Option<Ipv4Addr>)> {
        embedded_ipv4(ip(s)).map(|e| (e.form, e.v4)).collect()
    }

    #[test]
    fn ipv4_addresses_inside_ipv6_are_found() {
        let metadata = Some(Ipv4Addr::new(169, 254, 169, 254));
        use Embedding::*;
        assert_eq!(inside("::169.254.169.254"), [(Compatible, metadata)]);
        assert_eq!(inside("::a9fe:a9fe"), [(Compatible, metadata)]);
        assert_eq!(inside("64:ff9b::a9fe:a9fe"), [(Nat64, metadata)]);
        assert_eq!(inside("64:ff9b::169.254.169.254"), [(Nat64, metadata)]);
        assert_eq!(inside("64:ff9b:1::a9fe:a9fe"), [(Nat64LocalUse, None)]);
        assert_eq!(inside("64:ff9b:1:ab::1"), [(Nat64LocalUse, None)]);
        assert_eq!(inside("2002:a9fe:a9fe::1"), [(SixToFour, metadata)]);
        assert_eq!(inside("2002:a9fe:a9fe:5:6:7:8:9"), [(SixToFour, metadata)]);
        // Teredo: server 93.184.216.34, client 169.254.169.254 (inverted: 5601:5601).
        assert_eq!(
            inside("2001:0:5db8:d822:8000:f227:5601:5601"),
            [
                (TeredoServer, Some(Ipv4Addr::new(93, 184, 216, 34))),
                (TeredoClient, metadata)
            ]
        );
        assert_eq!(inside("2001:db8::200:5efe:a9fe:a9fe"), [(Isatap, metadata)]);
        assert_eq!(inside("fe80::5efe:169.254.169.254"), [(Isatap, metadata)]);
        assert_eq!(
            inside("2002:a00:1::5efe:a9fe:a9fe"),
            [
                (SixToFour, Some(Ipv4Addr::new(10, 0, 0, 1))),
                (Isatap, metadata)
            ]
        );
        // Addresses that carry no other IPv4 address.
        for none in [
            "::",
            "::1",
            "::ffff:169.254.169.254",
            "169.254.169.254",
            "2001:db8::a9fe:a9fe",
            "2001:db8::400:5efe:a9fe:a9fe",
            "64:ff9b:2::a9fe:a9fe",
            "64:ff9a::a9fe:a9fe",
            "2003:a9fe:a9fe::1",
            "2001:1::a9fe:a9fe",
            "fe80::1",
            "ff0e::5efe:a9fe:a9fe",
            "ff0e::a9fe:a9fe",
        ] {
            assert_eq!(inside(none), [], "{none}");
        }
    }

    /// Every spelling of `v4` (`a9fe:a9fe` style hex in `hex`) that carries it.
    fn spellings(v4: &str, hex: &str) -> Vec<String> {
        let inv: u32 = !u32::from(v4.parse::<Ipv4Addr>().unwrap());
        let inv = format!("{:x}:{:x}", inv >> 16, inv & 0xffff);
        vec![
            format!("[::ffff:{v4}]"),
            format!("[::{v4}]"),
            format!("[64:ff9b::{hex}]"),
            format!("[2002:{hex}::1]"),
            format!("[2001:0:{hex}:0:f227:5db8:d822]"),
            format!("[2001:0:5db8:d822:8000:f227:{inv}]"),
            format!("[2001:db8::200:5efe:{hex}]"),
        ]
    }

    #[test]
    fn the_default_denies_every_ipv6_spelling_of_a_denied_ipv4_address() {
        let p = Policy::default();
        for port in [80, 443] {
            for a in spellings("169.254.169.254", "a9fe:a9fe")
                .into_iter()
                .chain(spellings("255.255.255.255", "ffff:ffff"))
                .chain(["[64:ff9b:1::a9fe:a9fe]".into()])
            {
                let addr = sa(&format!("{a}:{port}"));
                for proto in [Proto::Tcp, Proto::Udp] {
                    let d = p.outbound(addr, proto);
                    assert!(!d.allowed, "{addr} {proto:?}: {d}");
                }
            }
        }
        let d = p.outbound(sa("[64:ff9b::a9fe:a9fe]:80"), Proto::Tcp);
        assert_eq!(d.rule, Some(0));
        assert_eq!(
            d.embedded,
            Some(Embedded {
                form: Embedding::Nat64,
                v4: Some(Ipv4Addr::new(169, 254, 169, 254))
            })
        );
        assert_eq!(
            d.to_string(),
            "outbound[0] (deny) for 169.254.169.254, the NAT64 (64:ff9b::/96) address inside"
        );
        let d = p.outbound(sa("[64:ff9b:1::5db8:d822]:443"), Proto::Tcp);
        assert_eq!((d.allowed, d.rule), (false, None));
        assert_eq!(
            d.to_string(),
            "local-use NAT64 (64:ff9b:1::/48) address: where its IPv4 address sits is unknown (deny)"
        );
        // The same forms carrying an allowed address are allowed, by the address's own rule.
        for a in spellings("93.184.216.34", "5db8:d822") {
            let d = p.outbound(sa(&format!("{a}:443")), Proto::Tcp);
            assert!(d.allowed, "{a}: {d}");
            assert_eq!((d.rule, d.embedded), (Some(1), None), "{a}");
        }
    }

    #[test]
    fn an_ipv4_deny_wins_over_an_ipv6_allow() {
        // The IPv6 allow comes first: rules of one family never match the other, so the
        // order cannot matter.
        let p = Policy::from_toml(
            r#"
            [[outbound]]
            action = "allow"
            nets = ["::/0"]
            [[outbound]]
            action = "deny"
            nets = ["10.0.0.0/8"]
            [[outbound]]
            action = "deny"
            nets = ["192.0.2.7"]
            ports = [22]
            proto = "tcp"
            [[outbound]]
            action = "allow"
            nets = ["0.0.0.0/0"]
            "#,
            "t",
        )
        .unwrap();
        for a in spellings("10.1.2.3", "a01:203") {
            let d = p.outbound(sa(&format!("{a}:443")), Proto::Udp);
            assert!(!d.allowed, "{a}: {d}");
            assert_eq!(d.rule, Some(1), "{a}");
        }
        let d = p.outbound(sa("[2002:a01:203::1]:443"), Proto::Tcp);
        assert_eq!(
            d.to_string(),
            "outbound[1] (deny) for 10.1.2.3, the 6to4 address inside"
        );
        // The inside address is judged with the request's port and transport.
        for a in spellings("192.0.2.7", "c000:207") {
            assert!(
                !p.outbound(sa(&format!("{a}:22")), Proto::Tcp).allowed,
                "{a}"
            );
            assert!(
                p.outbound(sa(&format!("{a}:22")), Proto::Udp).allowed,
                "{a}"
            );
            assert!(
                p.outbound(sa(&format!("{a}:80")), Proto::Tcp).allowed,
                "{a}"
            );
        }
        // Plain IPv6 and forms carrying an allowed IPv4 address go through.
        for ok in ["[2001:db8::1]:443", "[64:ff9b::808:808]:53", "[::1]:80"] {
            assert!(p.outbound(sa(ok), Proto::Udp).allowed, "{ok}");
        }
        // The local-use NAT64 prefix is refused even where every address is allowed.
        let d = p.outbound(sa("[64:ff9b:1::808:808]:53"), Proto::Udp);
        assert!(!d.allowed, "{d}");

        // No IPv4 rule at all: an address inside is denied like any unmatched address.
        let v6_only =
            Policy::from_toml("[[outbound]]\naction = \"allow\"\nnets = [\"::/0\"]\n", "t")
                .unwrap();
        let d = v6_only.outbound(sa("[64:ff9b::808:808]:53"), Proto::Udp);
        assert_eq!((d.allowed, d.rule), (false, None));
        assert_eq!(
            d.to_string(),
            "no outbound rule matched 8.8.8.8, the NAT64 (64:ff9b::/96) address inside (deny)"
        );
        assert!(v6_only.outbound(sa("[2001:db8::1]:53"), Proto::Udp).allowed);
    }

    #[test]
    fn listen_addresses_are_judged_with_the_ipv4_inside_them() {
        let p = Policy::from_toml(
            "[[listen]]\naction = \"deny\"\nnets = [\"127.0.0.0/8\"]\n\
             [[listen]]\naction = \"allow\"\nnets = [\"::/0\"]\n",
            "t",
        )
        .unwrap();
        for a in spellings("127.0.0.1", "7f00:1") {
            let d = p.listen(sa(&format!("{a}:8080")), Proto::Tcp);
            assert!(!d.allowed, "{a}: {d}");
        }
        // The unspecified and loopback addresses are IPv6's own, not IPv4-compatible.
        assert!(p.listen(sa("[::1]:8080"), Proto::Tcp).allowed);
        assert!(p.listen(sa("[::]:8080"), Proto::Udp).allowed);
        // The default allows IPv6 loopback only: the compatible spelling of 127.0.0.1 is
        // some other IPv6 address.
        let d = Policy::default().listen(sa("[::127.0.0.1]:8080"), Proto::Tcp);
        assert!(!d.allowed, "{d}");
    }

    #[test]
    fn the_default_is_what_policy_md_says() {
        let p = Policy::default();
        assert!(p.outbound(sa("93.184.216.34:443"), Proto::Tcp).allowed);
        assert!(p.outbound(sa("[2001:db8::1]:443"), Proto::Tcp).allowed);
        assert!(!p.outbound(sa("169.254.169.254:80"), Proto::Tcp).allowed);
        assert!(!p.outbound(sa("[fe80::1]:80"), Proto::Udp).allowed);
        assert!(!p.outbound(sa("255.255.255.255:67"), Proto::Udp).allowed);
        assert!(p.listen(sa("127.0.0.1:0"), Proto::Tcp).allowed);
        assert!(p.listen(sa("127.0.0.2:8080"), Proto::Tcp).allowed);
        assert!(p.listen(sa("[::1]:1024"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("127.0.0.1:80"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("0.0.0.0:8080"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("[::]:8080"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("10.0.0.1:8080"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("[2001:db8::1]:8080"), Proto::Tcp).allowed);
        assert!(!p.listen(sa("239.1.2.3:8080"), Proto::Tcp).allowed);
        assert!(p.listen(sa("239.1.2.3:8080"), Proto::Udp).allowed);
        assert!(p.listen(sa("0.0.0.0:0"), Proto::Udp).allowed);
        assert!(p.listen(sa("[::]:0"), Proto::Udp).allowed);
        assert!(p.listen(sa("0.0.0.0:5000"), Proto::Udp).allowed);
        assert!(!p.listen(sa("0.0.0.0:53"), Proto::Udp).allowed);
        assert!(!p.listen(sa("10.0.0.1:5000"), Proto::Udp).allowed);
        for ok in [
            "224.238.0.31",
            "239.255.0.1",
            "224.0.1.1",
            "ff05::1",
            "ff3e::8000:1",
        ] {
            assert!(p.multicast(ok.parse().unwrap()).allowed, "{ok}");
        }
        for no in [
            "224.0.0.1",
            "224.0.0.251",
            "ff02::1",
            "ff01::1",
            "ff12::1",
            "ff04::1",
        ] {
            assert!(!p.multicast(no.parse().unwrap()).allowed, "{no}");
        }
    }

    #[test]
    fn default_round_trips_through_toml() {
        let p = Policy::default();
        let text = p.to_toml();
        assert_eq!(Policy::from_toml(&text, "default").unwrap(), p, "{text}");
        // An empty file is the default too.
        assert_eq!(Policy::from_toml("", "empty").unwrap(), p);
    }

    #[test]
    fn the_default_in_policy_md_is_the_default() {
        let doc = include_str!("../../POLICY.md");
        let block = doc
            .split_once("## 2. The default")
            .and_then(|(_, rest)| rest.split_once("```toml\n"))
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(toml, _)| toml)
            .expect("POLICY.md §2 holds a TOML block");
        assert_eq!(
            Policy::from_toml(block, "POLICY.md").unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn sections_left_out_keep_the_default_and_empty_ones_deny() {
        let p = Policy::from_toml("outbound = []\n[limits]\nconnections = 3\n", "t").unwrap();
        assert!(!p.outbound(sa("1.2.3.4:80"), Proto::Tcp).allowed);
        assert_eq!(p.listen, default_listen());
        assert_eq!(p.limits.connections, 3);
        assert_eq!(p.limits.listeners, Limits::default().listeners);
    }

    fn parse_err(text: &str) -> String {
        match Policy::from_toml(text, "bad.toml") {
            Ok(p) => panic!("accepted {text:?} as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_line() {
        let e = parse_err("[limits]\nconnections = 1\nconections = 2\n");
        assert!(e.contains("line 3") && e.contains("conections"), "{e}");
        let e = parse_err("[[outbound]]\naction = \"allow\"\nnets = [\"10.0.0.0/33\"]\n");
        assert!(
            e.contains("line 3") && e.contains("prefix length 33"),
            "{e}"
        );
        let e = parse_err("[[listen]]\naction = \"allow\"\nnets = [\"::1\"]\nports = [\"9-3\"]\n");
        assert!(e.contains("line 4") && e.contains("empty"), "{e}");
        let e = parse_err("[[listen]]\naction = \"allow\"\nnets = [\"::1\"]\nports = [70000]\n");
        assert!(e.contains("line 4") && e.contains("70000"), "{e}");
        let e = parse_err("[[multicast]]\naction = \"allow\"\ngroups = [\"10.0.0.0/8\"]\n");
        assert!(e.contains("line 3") && e.contains("multicast"), "{e}");
        let e = parse_err("[[outbound]]\naction = \"maybe\"\nnets = []\n");
        assert!(e.contains("line 2") && e.contains("maybe"), "{e}");
        let e = parse_err("[limits]\nconnect_burst = 0\n");
        assert!(e.contains("line 2"), "{e}");
        let e = parse_err("[[outbound]]\nnets = [\"0.0.0.0/0\"]\n");
        assert!(e.contains("action"), "{e}");
        let e =
            parse_err("[[outbound]]\naction = \"allow\"\nnets = [\"1.2.3.4\"]\nproto = \"sctp\"\n");
        assert!(e.contains("line 4") && e.contains("sctp"), "{e}");
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = ConnectRate::new(10, NonZeroU32::new(3).unwrap());
        assert!(r.try_take(t0) && r.try_take(t0) && r.try_take(t0));
        assert!(!r.try_take(t0), "burst of 3 spent");
        assert!(!r.try_take(t0 + Duration::from_millis(50)));
        assert!(r.try_take(t0 + Duration::from_millis(100)));
        assert!(!r.try_take(t0 + Duration::from_millis(100)));
        // After a long pause the whole burst is back, no more.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3).all(|_| r.try_take(later)));
        assert!(!r.try_take(later));
        let mut none = ConnectRate::new(0, NonZeroU32::MIN);
        assert!(!none.try_take(t0));
    }

    #[test]
    fn the_dest_cache_answers_like_the_policy() {
        let p = Policy::default();
        let mut c = DestCache::default();
        for a in [
            "1.2.3.4:5",
            "1.2.3.4:5",
            "169.254.1.1:5",
            "169.254.1.1:5",
            "[64:ff9b::a9fe:101]:5",
            "[64:ff9b::a9fe:101]:5",
            "[2002:a9fe:101::1]:5",
            "[::169.254.1.1]:5",
            "[2001:db8::1]:5",
            "1.2.3.4:5",
        ] {
            assert_eq!(c.check(&p, sa(a)), p.outbound(sa(a), Proto::Udp), "{a}");
        }
        // A cached allow for one spelling is not an answer for another.
        assert!(c.check(&p, sa("[2001:db8::1]:5")).allowed);
        assert!(!c.check(&p, sa("[2002:a9fe:101::1]:5")).allowed);
        assert!(!c.check(&p, sa("[2002:a9fe:101::1]:5")).allowed);
    }

    const BY_NAME: &str = r#"
        [[outbound]]
        action = "deny"
        nets = ["169.254.0.0/16", "10.0.0.0/8"]
        [[outbound]]
        action = "deny"
        names = ["evil.pypi.org"]
        [[outbound]]
        action = "allow"
        names = ["GitHub.com.", "*.pypi.org"]
        ports = [443]
        proto = "tcp"
        [[outbound]]
        action = "allow"
        nets = ["192.0.2.0/24"]
        [[outbound]]
        action = "deny"
        names = ["*"]
        "#;

    #[test]
    fn names_are_judged_by_the_first_rule_naming_them() {
        let p = Policy::from_toml(BY_NAME, "t").unwrap();
        let r = |n: &str| p.resolve(n);
        assert_eq!(
            (r("github.com").allowed, r("github.com").rule),
            (true, Some(2))
        );
        assert_eq!(r("files.pypi.org").rule, Some(2));
        assert_eq!(
            (r("evil.pypi.org").allowed, r("evil.pypi.org").rule),
            (false, Some(1)),
            "a deny before the wildcard wins"
        );
        assert_eq!(
            (r("example.com").allowed, r("example.com").rule),
            (false, Some(4))
        );
        let open = Policy::default();
        assert_eq!(
            (
                open.resolve("x.example").allowed,
                open.resolve("x.example").rule
            ),
            (true, None)
        );
    }

    #[test]
    fn a_learned_address_is_allowed_for_its_rule_ports_and_ttl_and_deny_rules_win() {
        let p = Policy::from_toml(BY_NAME, "t").unwrap();
        let l = Learned::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        for ip in ["203.0.113.5", "10.1.2.3", "169.254.169.254", "2001:db8::5"] {
            l.learn(ip.parse().unwrap(), 2, until, t0);
        }
        let out = |a: &str, proto, t| p.outbound_learned(sa(a), proto, &l, t);
        let d = out("203.0.113.5:443", Proto::Tcp, t0);
        assert!(d.allowed && d.learned && d.rule == Some(2), "{d}");
        assert_eq!(
            d.to_string(),
            "outbound[2] (allow) for an address learned from its names"
        );
        assert!(out("[2001:db8::5]:443", Proto::Tcp, t0).allowed);
        assert!(
            out("[::ffff:203.0.113.5]:443", Proto::Tcp, t0).allowed,
            "mapped form"
        );
        assert!(
            !out("203.0.113.5:80", Proto::Tcp, t0).allowed,
            "rule's ports only"
        );
        assert!(
            !out("203.0.113.5:443", Proto::Udp, t0).allowed,
            "rule's proto only"
        );
        assert!(
            !out("203.0.113.5:443", Proto::Tcp, until).allowed,
            "expired"
        );
        assert!(
            !out("203.0.113.6:443", Proto::Tcp, t0).allowed,
            "not learned"
        );
        // DNS rebinding: an address rule that denies wins over the name.
        let d = out("10.1.2.3:443", Proto::Tcp, t0);
        assert_eq!((d.allowed, d.rule, d.learned), (false, Some(0), false));
        assert!(!out("169.254.169.254:443", Proto::Tcp, t0).allowed);
        // NAT64 spelling of a denied address stays denied.
        assert!(!out("[64:ff9b::a01:203]:443", Proto::Tcp, t0).allowed);
        // A name learned for a deny rule grants nothing.
        l.learn("198.51.100.1".parse().unwrap(), 1, until, t0);
        assert!(!out("198.51.100.1:443", Proto::Tcp, t0).allowed);
        // Address rules are unchanged.
        assert!(out("192.0.2.9:22", Proto::Udp, t0).allowed);
        let mut c = DestCache::default();
        // An address no rule matches is asked again each time: learning it later counts.
        let dns_rule = Policy::from_toml(
            "[[outbound]]\naction = \"allow\"\nnames = [\"x.test\"]\nproto = \"udp\"\n",
            "t",
        )
        .unwrap();
        let fresh = Learned::default();
        let mut udp_cache = DestCache::default();
        let to = sa("198.51.100.9:53");
        assert!(!udp_cache.check_learned(&dns_rule, &fresh, to, t0).allowed);
        fresh.learn(to.ip(), 0, until, t0);
        assert!(udp_cache.check_learned(&dns_rule, &fresh, to, t0).allowed);
        assert!(
            !udp_cache
                .check_learned(&dns_rule, &fresh, to, until)
                .allowed,
            "expired"
        );
        let udp = c.check_learned(&p, &l, sa("203.0.113.5:443"), t0);
        assert!(!udp.allowed, "the rule is tcp only");
        assert!(c.check_learned(&p, &l, sa("192.0.2.1:53"), t0).allowed);
    }

    #[test]
    fn name_rules_are_checked_when_the_file_is_read() {
        let e = parse_err("[[outbound]]\naction = \"allow\"\nnames = [\"bücher.de\"]\n");
        assert!(e.contains("line 3") && e.contains("IDNA"), "{e}");
        let e = parse_err("[[outbound]]\naction = \"allow\"\nnames = [\"a..b\"]\n");
        assert!(e.contains("line 3") && e.contains("empty label"), "{e}");
        let e = parse_err("[[outbound]]\naction = \"allow\"\nports = [443]\n");
        assert!(e.contains("outbound[0] has neither"), "{e}");
        let e =
            parse_err("[[listen]]\naction = \"allow\"\nnets = [\"::1\"]\nnames = [\"x.com\"]\n");
        assert!(e.contains("listen[0] has `names`"), "{e}");
        let p = Policy::from_toml(BY_NAME, "t").unwrap();
        assert_eq!(Policy::from_toml(&p.to_toml(), "again").unwrap(), p);
    }
}
