//! A UDP echo server through the monitor: binds ADDR through the session and sends every
//! datagram back to whoever sent it. With `--join GROUP` it also joins that multicast group
//! (on the interface with address `--interface`, default 0.0.0.0 = the host's choice), so
//! datagrams sent to the group on ADDR's port are echoed too. Serves forever, or `--count N`
//! datagrams and then exits.
//!
//! ```text
//! cargo build --release -p arca-suite --example udp_echo
//! target/release/arca-monitor run -- target/release/examples/udp_echo 127.0.0.1:7001
//! target/release/arca-monitor run -- target/release/examples/udp_echo 0.0.0.0:7002 \
//!     --join 239.1.2.3 --interface 127.0.0.1
//! ```
//!
//! The monitor's default policy lets a guest bind UDP on loopback or the wildcard (ports
//! 1024–65535 or 0) and join multicast groups outside 224.0.0.0/24.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use arca::ArcaSession;

const USAGE: &str = "usage: udp_echo ADDR [--join GROUP [--interface IFACE_ADDR]] [--count N]   \
                     (IPv4 addresses; run under `arca-monitor run --`)";

#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    join: Option<(Ipv4Addr, Ipv4Addr)>,
    count: Option<u64>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut addr = None;
    let mut group = None;
    let mut interface = None;
    let mut count = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--join" => {
                let v = value("--join")?;
                let g: Ipv4Addr = v
                    .parse()
                    .map_err(|_| format!("--join `{v}` is not an IPv4 address"))?;
                if !g.is_multicast() {
                    return Err(format!(
                        "--join `{g}` is not a multicast group (224.0.0.0/4)"
                    ));
                }
                group = Some(g);
            }
            "--interface" => {
                let v = value("--interface")?;
                interface = Some(
                    v.parse::<Ipv4Addr>()
                        .map_err(|_| format!("--interface `{v}` is not an IPv4 address"))?,
                );
            }
            "--count" => {
                let v = value("--count")?;
                count = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--count `{v}` is not a positive number"))?,
                );
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            _ if addr.is_some() => return Err(format!("unexpected argument `{a}`")),
            _ => {
                addr = Some(
                    a.parse::<SocketAddr>()
                        .map_err(|_| format!("`{a}` is not an IP:PORT address"))?,
                );
            }
        }
    }
    let addr = addr.ok_or("ADDR is missing")?;
    let join = match (group, interface) {
        (Some(g), i) => Some((g, i.unwrap_or(Ipv4Addr::UNSPECIFIED))),
        (None, Some(_)) => return Err("--interface needs --join".into()),
        (None, None) => None,
    };
    Ok(Args { addr, join, count })
}

fn run(args: &Args) -> io::Result<()> {
    let session = ArcaSession::from_env()?;
    let sock = session.bind_udp(args.addr)?;
    println!("udp_echo: bound {}", sock.local_addr()?);
    if let Some((group, interface)) = args.join {
        sock.join_multicast_v4(&group, &interface)?;
        println!("udp_echo: joined {group} on {interface}");
    }
    let mut buf = vec![0u8; 65_536];
    let mut echoed = 0u64;
    while args.count.is_none_or(|max| echoed < max) {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
        echoed += 1;
        println!("udp_echo: echoed {n} bytes to {from}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("udp_echo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
