//! arca-netstack: a guest-side network stack, so that unmodified programs (curl, Python, a
//! static binary) reach the network through arca with no change, no `LD_PRELOAD` and no arca
//! library.
//!
//! It runs **inside** the guest's network namespace (`arca-monitor run --isolate --net stack
//! -- PROGRAM`), holds the guest's arca session, and serves every program in the namespace:
//!
//! - a TUN device `arca0` with the guest's addresses ([`Addresses`]), default routes for
//!   IPv4 and IPv6, MTU 65520 and a transmit queue that holds the TCP window;
//! - TCP terminated by smoltcp (any destination address): each guest connection becomes an
//!   arca connection to its original destination ([`tcp`] has the refusal, half-close and
//!   back-pressure rules);
//! - UDP as per-flow arca UDP sockets ([`udp`]);
//! - a private `/etc/resolv.conf` (a mount namespace of the stack's own, inherited by the
//!   program) naming the stack's DNS address, which answers through a [`dns::Resolve`] seam
//!   ([`dns::ThroughMonitor`] in the binary: the monitor resolves), or forwards to the host's
//!   resolver when [`run`] is given none.
//!
//! # Trust
//! The guest's packets are hostile input: the one entry point ([`packet::classify`]) drops
//! and counts malformed, truncated, fragmented and oversized packets and never panics. The
//! host side (the monitor) never sees a packet: it serves the stack's arca requests as it
//! serves any guest's, under the same policy.
//!
//! # Addressing
//! The guest's `127.0.0.1` is its own loopback. The host's loopback is reached through the
//! gateway address ([`Addresses::stack_v4`], `10.0.2.2`, and [`Addresses::stack_v6`],
//! `fd00:a7ca::2`, which map to `127.0.0.1` and `::1`, as slirp's `10.0.2.2`); other
//! addresses of the stack's own network are never relayed.

#![warn(missing_docs)]
// Every unsafe block is in `sys`, which allows it and says why each is sound.
#![deny(unsafe_code)]

pub mod dns;
pub mod packet;
mod stack;
pub mod sys;
pub mod tcp;
pub mod udp;

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

pub use stack::{run, ProgramExit, DRAIN_LIMIT};

/// The TUN device's name.
pub const TUN_NAME: &str = "arca0";
/// The TUN device's MTU.
pub const TUN_MTU: u32 = 65_520;
/// The TUN device's transmit queue length: the guest's packets the kernel queues for the
/// stack. 4096 packets hold a full receive window (1 MiB, the stack's TCP buffer) of
/// segments down to 256 bytes, so a window-sized burst is not dropped at the queue.
pub const TUN_TXQUEUELEN: u32 = 4096;

/// The guest's network as the stack sets it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// The guest's IPv4 address (on the TUN device, /24).
    pub guest_v4: Ipv4Addr,
    /// The stack's IPv4 address, the gateway: it stands for the host's `127.0.0.1`.
    pub stack_v4: Ipv4Addr,
    /// The stack's IPv4 DNS address (in the guest's resolv.conf).
    pub dns_v4: Ipv4Addr,
    /// The guest's IPv6 address (/64).
    pub guest_v6: Ipv6Addr,
    /// The stack's IPv6 address: it stands for the host's `::1`.
    pub stack_v6: Ipv6Addr,
    /// The resolver DNS queries to [`dns_v4`](Self::dns_v4) port 53 are forwarded to, as
    /// the host sees it; `None` drops them.
    pub dns_upstream: Option<SocketAddr>,
}

impl Default for Addresses {
    fn default() -> Self {
        Self {
            guest_v4: Ipv4Addr::new(10, 0, 2, 15),
            stack_v4: Ipv4Addr::new(10, 0, 2, 2),
            dns_v4: Ipv4Addr::new(10, 0, 2, 3),
            guest_v6: Ipv6Addr::new(0xfd00, 0xa7ca, 0, 0, 0, 0, 0, 0x15),
            stack_v6: Ipv6Addr::new(0xfd00, 0xa7ca, 0, 0, 0, 0, 0, 2),
            dns_upstream: None,
        }
    }
}

impl Addresses {
    /// Where a guest connection or datagram to `dst` goes on the host: the gateway becomes
    /// loopback, the DNS address the upstream resolver, any other address of the stack's
    /// own network nothing (`None`), and every other address itself.
    pub fn host_destination(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match dst.ip() {
            IpAddr::V4(a) if a == self.stack_v4 => {
                Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port()))
            }
            IpAddr::V4(a) if a == self.dns_v4 && dst.port() == 53 => self.dns_upstream,
            IpAddr::V4(a) if same_net_v4(a, self.stack_v4) => None,
            IpAddr::V6(a) if a == self.stack_v6 => {
                Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), dst.port()))
            }
            IpAddr::V6(a) if same_net_v6(a, self.stack_v6) => None,
            IpAddr::V4(a) if a.is_unspecified() || a.is_broadcast() => None,
            IpAddr::V6(a) if a.is_unspecified() => None,
            _ => Some(dst),
        }
    }
}

fn same_net_v4(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a.octets().get(..3) == b.octets().get(..3)
}

fn same_net_v6(a: Ipv6Addr, b: Ipv6Addr) -> bool {
    a.segments().get(..4) == b.segments().get(..4)
}

/// The first `nameserver` of a resolv.conf's text, as a UDP address on port 53.
pub fn first_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// Sets up the namespace's network: loopback up, the TUN device with its addresses, MTU,
/// queue length and default routes. Returns the device.
///
/// # Errors
/// The step that failed, named.
pub fn setup_network(addrs: &Addresses) -> io::Result<std::os::fd::OwnedFd> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    sys::link_up("lo", 0, 0).map_err(step("bringing up lo"))?;
    let fd = sys::open_tun(TUN_NAME).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                e.kind(),
                format!("creating the TUN device: {e} (/dev/net/tun must be usable by this user: mode 0666, as most systems ship it)"),
            )
        } else {
            step("creating the TUN device")(e)
        }
    })?;
    // Nothing else answers on this link, so duplicate address detection only delays the
    // addresses: while it runs they are tentative and connections from them stall.
    if let Err(e) = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/accept_dad"),
        "0",
    ) {
        tracing::debug!(error = %e, "cannot turn off duplicate address detection");
    }
    sys::link_up(TUN_NAME, TUN_MTU, TUN_TXQUEUELEN).map_err(step("bringing up the TUN device"))?;
    // The kernel reports the new device's carrier asynchronously (up to a second later), and
    // that report restarts IPv6 address configuration: addresses added before it go back to
    // tentative for a moment, and a program connecting then gets a wrong source address.
    // Asking for the link state now makes the kernel handle the report first.
    if let Err(e) = sys::sync_link_state(TUN_NAME) {
        tracing::debug!(error = %e, "cannot settle the TUN device's link state");
    }
    sys::add_ipv4(TUN_NAME, addrs.guest_v4, 24).map_err(step("setting the IPv4 address"))?;
    sys::add_default_route_v4(TUN_NAME).map_err(step("adding the IPv4 default route"))?;
    let index = sys::if_index(TUN_NAME).map_err(step("looking up the TUN device"))?;
    match sys::add_ipv6(index, addrs.guest_v6, 64) {
        Ok(()) => {
            sys::add_default_route_v6(index).map_err(step("adding the IPv6 default route"))?;
            wait_usable_v6(index, addrs.guest_v6, addrs.stack_v6);
        }
        Err(e) => tracing::warn!(error = %e, "no IPv6 in the guest (IPv6 disabled here?)"),
    }
    Ok(fd)
}

/// `IFA_F_TENTATIVE` in `/proc/net/if_inet6`'s flags column.
const IFA_F_TENTATIVE: u32 = 0x40;

/// Whether `/proc/net/if_inet6`'s text shows interface `index` with a link-local address
/// and `addr`, neither tentative.
fn v6_ready(table: &str, index: i32, addr: Ipv6Addr) -> bool {
    let want: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    let settled = |l: &&str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let idx = f.get(1).and_then(|x| i32::from_str_radix(x, 16).ok());
        let flags = f.get(4).and_then(|x| u32::from_str_radix(x, 16).ok());
        idx == Some(index) && flags.is_some_and(|fl| fl & IFA_F_TENTATIVE == 0)
    };
    let lines: Vec<&str> = table.lines().filter(settled).collect();
    lines.iter().any(|l| l.starts_with("fe80")) && lines.iter().any(|l| l.starts_with(&want))
}

/// Waits (at most 3 s) until IPv6 on interface `index` has settled: the kernel readies a
/// new link asynchronously (its link-local address appears and every address goes through
/// duplicate address detection again, even when that is off), and a program connecting
/// meanwhile gets `::1` or a link-local source address and stalls. Settled means the
/// link-local address and `guest` are not tentative and the kernel picks `guest` as the
/// source towards `stack` (asked of a connected UDP socket, which sends nothing).
fn wait_usable_v6(index: i32, guest: Ipv6Addr, stack: Ipv6Addr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let source = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
            .and_then(|u| u.connect((stack, 9)).and_then(|()| u.local_addr()));
        if v6_ready(&table, index, guest) && source.is_ok_and(|a| a.ip() == IpAddr::V6(guest)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    tracing::warn!(%guest, "the guest's IPv6 address is still not in use after 3 s");
}

/// Gives the guest a resolv.conf of its own naming the stack's DNS address: written to a
/// temporary file, bind-mounted over `/etc/resolv.conf` in a new mount namespace, and the
/// temporary file unlinked. The host's file is never written.
///
/// # Errors
/// Writing the file, or the mount namespace or bind mount.
pub fn private_resolv_conf(addrs: &Addresses) -> io::Result<()> {
    let target = Path::new("/etc/resolv.conf");
    if !target.exists() {
        tracing::warn!("no /etc/resolv.conf to stand in for; the guest keeps none");
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("arca-netstack-resolv.{}", std::process::id()));
    std::fs::write(
        &tmp,
        format!(
            "# arca-netstack: the guest's resolver is the stack\nnameserver {}\n",
            addrs.dns_v4
        ),
    )?;
    let r = sys::private_bind(&tmp, target);
    let _ = std::fs::remove_file(&tmp);
    r
}

const USAGE: &str = "usage: arca-netstack [--no-dns] [--] PROGRAM [ARGS...]";

/// The `arca-netstack` command (also `arca-monitor netstack`): runs inside the guest's
/// network namespace with the session at `ARCA_FD`, sets up the network, starts `PROGRAM`,
/// serves it, and exits with its status.
pub fn main_with(args: Vec<OsString>) -> ExitCode {
    let mut dns = true;
    let mut it = args.into_iter();
    let mut program = Vec::new();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--") => {
                program.extend(it.by_ref());
                break;
            }
            Some("--no-dns") => dns = false,
            Some(s) if !s.starts_with('-') => {
                program.push(a);
                program.extend(it.by_ref());
                break;
            }
            _ => {
                eprintln!("arca-netstack: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if program.is_empty() {
        eprintln!("arca-netstack: no program given\n{USAGE}");
        return ExitCode::from(2);
    }
    match serve(program, dns) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arca-netstack: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(program: Vec<OsString>, dns: bool) -> io::Result<ExitCode> {
    use nix::sys::signal::{SigSet, Signal};
    // Stop signals are taken by one thread and passed on to the program. They are blocked
    // before any other thread exists (the session's dispatcher included), so every thread
    // inherits the mask and none is killed by them; the program starts with an empty mask.
    let mut stops = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        stops.add(s);
    }
    stops.thread_block()?;
    let session = arca::ArcaSession::from_env()
        .map_err(|e| io::Error::new(e.kind(), format!("attaching to the monitor: {e}")))?;
    // The session descriptor stays with the stack: the program never inherits it.
    let fd: i32 = std::env::var(arca::ENV_FD)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1);
    if fd >= 0 {
        sys::set_cloexec(fd)?;
    }
    let mut addrs = Addresses::default();
    if dns {
        addrs.dns_upstream = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| first_nameserver(&t));
    }
    let tun = setup_network(&addrs)?;
    if dns {
        private_resolv_conf(&addrs)
            .map_err(|e| io::Error::new(e.kind(), format!("private resolv.conf: {e}")))?;
    }
    let (prog, args) = program
        .split_first()
        .ok_or_else(|| io::Error::other("no program"))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).env_remove(arca::ENV_FD);
    // The program must not outlive the stack it depends on.
    sys::prepare_program(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "arca-netstack: cannot start {}: {e}",
                prog.to_string_lossy()
            );
            // As shells and `arca-monitor run` report it.
            return Ok(ExitCode::from(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            }));
        }
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = stops.wait() {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        })?;
    let exit = Arc::new(ProgramExit::default());
    let exit2 = Arc::clone(&exit);
    std::thread::Builder::new()
        .name("program".into())
        .spawn(move || {
            use std::os::unix::process::ExitStatusExt;
            let code = match child.wait() {
                Ok(st) => match (st.code(), st.signal()) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    _ => 1,
                },
                Err(_) => 1,
            };
            exit2.mark(code);
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    // The guest's DNS queries are answered with the monitor's resolution.
    let resolver: Arc<dyn dns::Resolve> = Arc::new(dns::ThroughMonitor(session.clone()));
    let r = local.block_on(
        &rt,
        run(session, tun, addrs, Some(resolver), Arc::clone(&exit)),
    );
    match (r, exit.code()) {
        (Ok(()), Some(code)) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        (Ok(()), None) => Ok(ExitCode::FAILURE),
        (Err(e), _) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_hosts_loopback_and_the_rest_of_the_net_is_not_relayed() {
        let mut a = Addresses::default();
        let sa = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            a.host_destination(sa("10.0.2.2:80")),
            Some(sa("127.0.0.1:80"))
        );
        assert_eq!(
            a.host_destination(sa("[fd00:a7ca::2]:443")),
            Some(sa("[::1]:443"))
        );
        assert_eq!(a.host_destination(sa("10.0.2.9:80")), None);
        assert_eq!(a.host_destination(sa("[fd00:a7ca::9]:80")), None);
        assert_eq!(a.host_destination(sa("10.0.2.3:53")), None, "no upstream");
        a.dns_upstream = Some(sa("127.0.0.53:53"));
        assert_eq!(
            a.host_destination(sa("10.0.2.3:53")),
            Some(sa("127.0.0.53:53"))
        );
        assert_eq!(a.host_destination(sa("10.0.2.3:80")), None);
        assert_eq!(
            a.host_destination(sa("192.0.2.1:80")),
            Some(sa("192.0.2.1:80"))
        );
        assert_eq!(a.host_destination(sa("255.255.255.255:67")), None);
    }

    #[test]
    fn first_nameserver_skips_comments_and_bad_lines() {
        let text = "# x\nsearch lan\nnameserver bogus\nnameserver 127.0.0.53\nnameserver ::1\n";
        assert_eq!(
            first_nameserver(text),
            Some("127.0.0.53:53".parse().expect("addr"))
        );
        assert_eq!(first_nameserver("options edns0\n"), None);
    }

    #[test]
    fn v6_is_ready_only_with_a_settled_link_local_and_address() {
        let guest: Ipv6Addr = "fd00:a7ca::15".parse().expect("addr");
        let ll = "fe80000000000000744f301a9a29cc40 02 40 20 80    arca0\n";
        let settled = "fd00a7ca000000000000000000000015 02 40 00 80    arca0\n";
        let tentative = "fd00a7ca000000000000000000000015 02 40 00 c0    arca0\n";
        assert!(v6_ready(&format!("{ll}{settled}"), 2, guest));
        assert!(!v6_ready(&format!("{ll}{tentative}"), 2, guest));
        assert!(!v6_ready(settled, 2, guest), "no link-local yet");
        assert!(
            !v6_ready(&format!("{ll}{settled}"), 3, guest),
            "another interface"
        );
    }
}
