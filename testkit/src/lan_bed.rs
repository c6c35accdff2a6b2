//! A LAN made of network namespaces, for multicast over links that lose, limit and delay.
//!
//! Topology: one namespace holds a Linux bridge (multicast snooping off, so group traffic is
//! flooded as by a switch without IGMP snooping); a sender namespace and one namespace per
//! receiver (at most [`MAX_RECEIVERS`]) each have an `eth0` on a veth pair whose other end is
//! a port of that bridge. Addresses: the sender [`SENDER_IP`], receiver `i` (1-based)
//! `10.79.0.(10 + i)`, all in 10.79.0.0/24, with a route for 224.0.0.0/4 through `eth0`.
//! Nothing is created in the calling process's own namespace, so beds of concurrent runs
//! cannot meet: every namespace is named `arcalan-PID-N-ROLE`, unique per process and bed.
//!
//! Each receiver's link (the bridge port towards it, and its own ingress) gets a [`Link`]:
//! - `loss_percent`: every IP packet towards the receiver (datagrams and TCP segments alike)
//!   is dropped with this probability, by an nftables rule (`numgen random`) on its ingress;
//! - `drop_every`: every Nth UDP datagram towards the receiver is dropped (`numgen inc`), a
//!   loss that is the same fraction at any rate and a fixed count for rounds of fixed size;
//! - `rate_mbit`: a token bucket (`tc qdisc tbf`) on the bridge port towards the receiver,
//!   with a queue of [`RATE_QUEUE_MS`] of traffic at that rate, beyond which it drops;
//! - `delay`: one-way delay on the bridge port towards the receiver (`tc qdisc netem`), only
//!   where the kernel has `sch_netem` ([`LanBed::delay_available`]; [`LanBed::create`] refuses a
//!   delay otherwise, so a caller decides whether to go on without it).
//!
//! The sender's `eth0` has `gso_max_segs 1`: a `UDP_SEGMENT` send is cut into datagrams as it
//! leaves the sender, as a NIC does on the wire, so every loss and limit above acts on single
//! datagrams rather than on 64 KB segmentation bursts.
//!
//! Dropping the [`LanBed`] deletes its namespaces, and with them every interface, qdisc and
//! rule in them (processes still inside keep a namespace alive: stop them first). A bed left
//! behind by a process that was killed is deleted by the next [`LanBed::create`].
//!
//! Needs root, `ip` and `tc` (iproute2) and `nft` (nftables): [`LanBed::available`].

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Most receivers a bed has.
pub const MAX_RECEIVERS: usize = 8;
/// The sender's address.
pub const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
/// How long a rate-limited link queues before it drops, in milliseconds: its token bucket
/// holds this much traffic at its rate beyond the burst.
pub const RATE_QUEUE_MS: u64 = 20;
const NS_PREFIX: &str = "arcalan-";
const NETNS_DIR: &str = "/run/netns";

/// The impairments of one receiver's link (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Percent of IP packets towards the receiver dropped at random (0 to 100).
    pub loss_percent: f64,
    /// Drop every Nth UDP datagram towards the receiver (N >= 2).
    pub drop_every: Option<u32>,
    /// Bandwidth towards the receiver, in Mbit/s (10^6 bits per second).
    pub rate_mbit: Option<u32>,
    /// One-way delay towards the receiver (needs `sch_netem`).
    pub delay: Option<Duration>,
}

/// Receiver `i`'s address (1-based).
pub fn receiver_ip(i: usize) -> Ipv4Addr {
    let host = u8::try_from(10 + i).unwrap_or(u8::MAX);
    Ipv4Addr::new(10, 79, 0, host)
}

/// Runs `program args` and fails with its stderr; `input` goes to its stdin.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args, None)
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    ip(&all)
}

/// Whether `program` is in `PATH`.
fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// The nftables ruleset of a receiver's ingress for `link`, or `None` when it loses nothing.
fn nft_rules(link: &Link) -> Option<String> {
    let mut rules = String::new();
    if let Some(n) = link.drop_every {
        rules.push_str(&format!("    meta l4proto udp numgen inc mod {n} 0 drop\n"));
    }
    // In units of 0.001 %, so that 0.1 % and 1.5 % are exact.
    let per_100k = (link.loss_percent * 1000.0).round();
    if per_100k >= 1.0 {
        rules.push_str(&format!(
            "    numgen random mod 100000 < {} drop\n",
            per_100k.min(100_000.0)
        ));
    }
    (!rules.is_empty()).then(|| {
        format!(
            "table inet arcalan {{\n  chain ingress {{\n    type filter hook prerouting \
             priority raw; policy accept;\n{rules}  }}\n}}\n"
        )
    })
}

/// The `tc qdisc add` arguments (after `dev PORT`) for `link`'s rate and delay, in order,
/// or an empty list.
fn qdisc_args(link: &Link) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut out = Vec::new();
    let delay = link.delay.map(|d| format!("{}us", d.as_micros()));
    match (link.rate_mbit, delay) {
        (Some(rate), delay) => {
            // Bytes the bucket holds at once (at least 10 frames, else tbf refuses small
            // rates), and bytes it queues: RATE_QUEUE_MS at the rate.
            let bytes_per_s = u64::from(rate) * 1_000_000 / 8;
            let burst = (bytes_per_s / 1000).max(15_000);
            let limit = burst + bytes_per_s * RATE_QUEUE_MS / 1000;
            out.push(s(&[
                "root",
                "handle",
                "1:",
                "tbf",
                "rate",
                &format!("{rate}mbit"),
                "burst",
                &burst.to_string(),
                "limit",
                &limit.to_string(),
            ]));
            if let Some(d) = delay {
                out.push(s(&["parent", "1:1", "handle", "10:", "netem", "delay", &d]));
            }
        }
        (None, Some(d)) => out.push(s(&["root", "netem", "delay", &d])),
        (None, None) => {}
    }
    out
}

/// A bed of namespaces; deleted on drop.
#[derive(Debug)]
pub struct LanBed {
    prefix: String,
    links: Vec<Link>,
    /// Every namespace made so far (the drop deletes exactly these).
    made: Vec<String>,
}

impl LanBed {
    /// Whether beds can be made here.
    ///
    /// # Errors
    /// Why not: not root, or `ip`, `tc` or `nft` missing.
    pub fn available() -> Result<(), String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the LAN test bed needs root (network namespaces, a bridge)".into());
        }
        let missing: Vec<&str> = ["ip", "tc", "nft"]
            .into_iter()
            .filter(|p| !in_path(p))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the LAN test bed needs {} (iproute2, nftables) in PATH",
                missing.join(", ")
            ))
        }
    }

    /// A bed with one receiver per entry of `links` (1 to [`MAX_RECEIVERS`]).
    ///
    /// # Errors
    /// Not [`available`](LanBed::available), a bad count, a link asking for a delay where
    /// the kernel has no `sch_netem`, or a command failing (its message quoted). What was
    /// made is deleted again.
    pub fn create(links: &[Link]) -> Result<LanBed, String> {
        LanBed::available()?;
        if links.is_empty() || links.len() > MAX_RECEIVERS {
            return Err(format!(
                "a LAN test bed has 1 to {MAX_RECEIVERS} receivers, not {}",
                links.len()
            ));
        }
        for (i, l) in links.iter().enumerate() {
            if !(0.0..=100.0).contains(&l.loss_percent) {
                return Err(format!(
                    "receiver {}: loss {} % is not 0 to 100",
                    i + 1,
                    l.loss_percent
                ));
            }
            if l.drop_every.is_some_and(|n| n < 2) || l.rate_mbit == Some(0) {
                return Err(format!(
                    "receiver {}: drop_every must be >= 2 and rate_mbit > 0: {l:?}",
                    i + 1
                ));
            }
        }
        sweep_stale();
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut bed = LanBed {
            prefix: format!(
                "{NS_PREFIX}{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            links: links.to_vec(),
            made: Vec::new(),
        };
        bed.build()?; // on error, the drop deletes what was made
        Ok(bed)
    }

    fn add_ns(&mut self, ns: String) -> Result<(), String> {
        ip(&["netns", "add", &ns])?;
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<(), String> {
        let br = self.bridge_ns();
        self.add_ns(br.clone())?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        if !LanBed::delay_available() {
            if let Some(i) = self.links.iter().position(|l| l.delay.is_some()) {
                return Err(format!(
                    "receiver {}: a delay needs the kernel's sch_netem, which this kernel lacks",
                    i + 1
                ));
            }
        }
        let tx = self.sender_ns();
        self.add_ns(tx.clone())?;
        self.plug(&tx, "ptx", SENDER_IP)?;
        // Segmentation offload ends at the sender's device: datagrams cross the bridge one
        // by one, as frames cross a wire.
        ip(&["-n", &tx, "link", "set", "eth0", "gso_max_segs", "1"])?;
        for i in 1..=self.links.len() {
            let link = self.links[i - 1];
            let rx = self.receiver_ns(i);
            self.add_ns(rx.clone())?;
            let port = format!("p{i}");
            self.plug(&rx, &port, receiver_ip(i))?;
            for args in qdisc_args(&link) {
                let mut all = vec!["qdisc", "add", "dev", &port];
                all.extend(args.iter().map(String::as_str));
                in_ns(&br, "tc", &all)?;
            }
            if let Some(rules) = nft_rules(&link) {
                run(
                    "ip",
                    &["netns", "exec", &rx, "nft", "-f", "-"],
                    Some(&rules),
                )?;
            }
        }
        Ok(())
    }

    /// A veth pair: `eth0` with `addr` in `ns`, `port` on the bridge.
    fn plug(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<(), String> {
        let br = self.bridge_ns();
        ip(&[
            "-n", &br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &br, "link", "set", port, "master", "br0"])?;
        ip(&["-n", &br, "link", "set", port, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "brd",
            "+",
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The sender's namespace.
    pub fn sender_ns(&self) -> String {
        format!("{}-tx", self.prefix)
    }

    /// Receiver `i`'s namespace (1-based).
    pub fn receiver_ns(&self, i: usize) -> String {
        format!("{}-rx{i}", self.prefix)
    }

    /// How many receivers the bed has.
    pub fn receivers(&self) -> usize {
        self.links.len()
    }

    /// Whether links can be delayed here: the kernel has `sch_netem` (tried once per
    /// process, on the loopback device of a scratch namespace).
    pub fn delay_available() -> bool {
        static NETEM: OnceLock<bool> = OnceLock::new();
        *NETEM.get_or_init(|| {
            if LanBed::available().is_err() {
                return false;
            }
            let ns = format!("{NS_PREFIX}{}-netem-probe", std::process::id());
            if ip(&["netns", "add", &ns]).is_err() {
                return false;
            }
            let ok = in_ns(&ns, "tc", &["qdisc", "add", "dev", "lo", "root", "netem"]).is_ok();
            let _ = ip(&["netns", "del", &ns]);
            ok
        })
    }

    /// `program` to be run in namespace `ns` (`ip netns exec NS PROGRAM`, which execs it:
    /// the child's pid is the program's).
    pub fn command(ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// The bridge port towards receiver `i`'s counters: (packets sent, packets dropped)
    /// by its qdisc, from `tc -s qdisc show`; `None` without a qdisc of ours.
    pub fn port_drops(&self, i: usize) -> Option<(u64, u64)> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.bridge_ns(),
                "tc",
                "-s",
                "qdisc",
                "show",
            ])
            .args(["dev", &format!("p{i}")])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `qdisc tbf 1: root … \n Sent 123 bytes 45 pkt (dropped 6, overlimits …`
        let sent = text.split(" Sent ").nth(1)?;
        let pkts = sent.split(" bytes ").nth(1)?.split(" pkt").next()?;
        let dropped = sent.split("(dropped ").nth(1)?.split(',').next()?;
        Some((pkts.trim().parse().ok()?, dropped.trim().parse().ok()?))
    }
}

impl Drop for LanBed {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Deletes the namespaces of beds whose process is gone (killed before its drop ran).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_each_kind_of_loss() {
        assert_eq!(nft_rules(&Link::default()), None);
        let r = nft_rules(&Link {
            loss_percent: 1.5,
            drop_every: Some(200),
            ..Link::default()
        })
        .unwrap();
        assert!(
            r.contains("meta l4proto udp numgen inc mod 200 0 drop"),
            "{r}"
        );
        assert!(r.contains("numgen random mod 100000 < 1500 drop"), "{r}");
    }

    #[test]
    fn qdiscs_for_rate_and_delay() {
        assert!(qdisc_args(&Link::default()).is_empty());
        let both = qdisc_args(&Link {
            rate_mbit: Some(200),
            delay: Some(Duration::from_millis(2)),
            ..Link::default()
        });
        assert_eq!(both.len(), 2);
        // 25 MB/s: a 25,000-byte bucket, plus 20 ms (500,000 bytes) of queue.
        assert_eq!(
            both[0].join(" "),
            "root handle 1: tbf rate 200mbit burst 25000 limit 525000"
        );
        assert_eq!(
            both[1].join(" "),
            "parent 1:1 handle 10: netem delay 2000us"
        );
        let delay = qdisc_args(&Link {
            delay: Some(Duration::from_millis(20)),
            ..Link::default()
        });
        assert_eq!(delay, vec![vec!["root", "netem", "delay", "20000us"]]);
    }

    #[test]
    fn receiver_addresses() {
        assert_eq!(receiver_ip(1), Ipv4Addr::new(10, 79, 0, 11));
        assert_eq!(receiver_ip(8), Ipv4Addr::new(10, 79, 0, 18));
    }
}
