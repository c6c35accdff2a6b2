//! Addresses as the guest API takes them: the shapes of `std::net::ToSocketAddrs`, with host
//! names resolved by the monitor (`Resolve`, PROTOCOL.md §8), never inside the guest.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use arca_wire::{FamilyHint, HostName, Message};

use crate::session::{op_error, Shared};
use crate::stream::unexpected;

/// What an address argument names: addresses already, or a host name and a port for the
/// monitor to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These addresses, in order.
    Addrs(Vec<SocketAddr>),
    /// A host name (not yet checked) and the port to pair its addresses with.
    Name {
        /// The host as written.
        host: String,
        /// The port.
        port: u16,
    },
}

mod sealed {
    pub trait Sealed {
        fn target(&self) -> std::io::Result<super::Target>;
    }
}

/// Anything the guest API accepts as a socket address, as `std::net::ToSocketAddrs` does:
/// `SocketAddr` and its parts, `(IpAddr, u16)`, `"host:port"` strings, `("host", port)`
/// pairs and slices of addresses. A host name is resolved **through the monitor**
/// ([`ArcaSession::lookup_host`](crate::ArcaSession::lookup_host)), so the monitor's policy
/// sees it; the guest never resolves a name itself.
///
/// Sealed: implemented for the types above only.
pub trait ToSocketAddrs: sealed::Sealed {}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `host:port` as std reads it: the port after the last colon.
fn split_host_port(s: &str) -> io::Result<(&str, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| invalid("invalid socket address"))?;
    let port = port.parse().map_err(|_| invalid("invalid port value"))?;
    Ok((host, port))
}

fn host_and_port(host: &str, port: u16) -> Target {
    match host.parse::<IpAddr>() {
        Ok(ip) => Target::Addrs(vec![SocketAddr::new(ip, port)]),
        Err(_) => Target::Name {
            host: host.to_owned(),
            port,
        },
    }
}

macro_rules! addr_like {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {
            fn target(&self) -> io::Result<Target> {
                Ok(Target::Addrs(vec![SocketAddr::from(*self)]))
            }
        }
        impl ToSocketAddrs for $t {}
    )*};
}

addr_like!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

impl sealed::Sealed for str {
    fn target(&self) -> io::Result<Target> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return Ok(Target::Addrs(vec![addr]));
        }
        let (host, port) = split_host_port(self)?;
        Ok(host_and_port(host, port))
    }
}
impl ToSocketAddrs for str {}

impl sealed::Sealed for String {
    fn target(&self) -> io::Result<Target> {
        self.as_str().target()
    }
}
impl ToSocketAddrs for String {}

impl sealed::Sealed for (&str, u16) {
    fn target(&self) -> io::Result<Target> {
        Ok(host_and_port(self.0, self.1))
    }
}
impl ToSocketAddrs for (&str, u16) {}

impl sealed::Sealed for (String, u16) {
    fn target(&self) -> io::Result<Target> {
        Ok(host_and_port(&self.0, self.1))
    }
}
impl ToSocketAddrs for (String, u16) {}

impl sealed::Sealed for [SocketAddr] {
    fn target(&self) -> io::Result<Target> {
        Ok(Target::Addrs(self.to_vec()))
    }
}
impl ToSocketAddrs for [SocketAddr] {}

impl<T: ToSocketAddrs + ?Sized> sealed::Sealed for &T {
    fn target(&self) -> io::Result<Target> {
        (**self).target()
    }
}
impl<T: ToSocketAddrs + ?Sized> ToSocketAddrs for &T {}

/// What `addr` names, without resolving.
pub(crate) fn target(addr: &(impl ToSocketAddrs + ?Sized)) -> io::Result<Target> {
    sealed::Sealed::target(addr)
}

/// The `Resolve` request for `host`: `InvalidInput` (with the reason as its source) for a
/// name of bad form, before anything is sent.
pub(crate) fn resolve_request(host: &str) -> io::Result<Message> {
    let name = HostName::new(host.as_bytes()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            ResolveInputError {
                host: host.to_owned(),
                error: e,
            },
        )
    })?;
    Ok(Message::Resolve {
        family: FamilyHint::Any,
        name,
    })
}

/// A host name the guest library refused to send; its source is the [`arca_wire::NameError`].
#[derive(Debug)]
struct ResolveInputError {
    host: String,
    error: arca_wire::NameError,
}

impl std::fmt::Display for ResolveInputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "arca: cannot resolve {:?}: {}", self.host, self.error)
    }
}

impl std::error::Error for ResolveInputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The addresses a `Resolve` reply gives for `host`, each with `port`.
pub(crate) fn addrs_from_reply(
    reply: Message,
    host: &str,
    port: u16,
) -> io::Result<Vec<SocketAddr>> {
    match reply {
        Message::ResolveOk { answers } => Ok(answers
            .as_slice()
            .iter()
            .map(|a| SocketAddr::new(a.addr, port))
            .collect()),
        Message::ResolveErr { code } | Message::Error { code, .. } => {
            Err(op_error(code, &format!("resolve {host}"), None))
        }
        other => Err(unexpected(&other)),
    }
}

/// Resolves `addr` through `shared`'s monitor when it names a host (blocking).
pub(crate) fn resolve(
    shared: &Shared,
    addr: &(impl ToSocketAddrs + ?Sized),
) -> io::Result<Vec<SocketAddr>> {
    match target(addr)? {
        Target::Addrs(list) => Ok(list),
        Target::Name { host, port } => {
            let reply = shared.request(&resolve_request(&host)?)?;
            addrs_from_reply(reply, &host, port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(a: &(impl ToSocketAddrs + ?Sized)) -> io::Result<Target> {
        target(a)
    }

    #[test]
    fn addresses_parse_in_the_guest_and_names_are_left_to_the_monitor() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(t(&a).unwrap(), Target::Addrs(vec![a]));
        assert_eq!(t("127.0.0.1:80").unwrap(), Target::Addrs(vec![a]));
        assert_eq!(t(&("127.0.0.1", 80)).unwrap(), Target::Addrs(vec![a]));
        assert_eq!(
            t("[::1]:443").unwrap(),
            Target::Addrs(vec!["[::1]:443".parse().unwrap()])
        );
        let name = Target::Name {
            host: "example.com".into(),
            port: 443,
        };
        assert_eq!(t("example.com:443").unwrap(), name);
        assert_eq!(t(&String::from("example.com:443")).unwrap(), name);
        assert_eq!(t(&("example.com", 443)).unwrap(), name);
        assert_eq!(t(&(String::from("example.com"), 443)).unwrap(), name);
        let two = [a, "10.0.0.1:1".parse().unwrap()];
        assert_eq!(t(&two[..]).unwrap(), Target::Addrs(two.to_vec()));
        assert_eq!(
            t(&(Ipv4Addr::LOCALHOST, 80)).unwrap(),
            Target::Addrs(vec![a])
        );
    }

    #[test]
    fn bad_strings_are_invalid_input() {
        for bad in ["example.com", "example.com:http", "example.com:70000", ""] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        for bad in ["bücher.de", "a\0b.com", "a..b", "-x.com:"] {
            let e = resolve_request(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(resolve_request("bücher.de")
            .unwrap_err()
            .to_string()
            .contains("IDNA"));
    }
}
