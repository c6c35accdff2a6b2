//! Daisy against udpcast and uftp, in the same run, over real multicast between network
//! namespaces.
//!
//! Run: `scripts/bench-daisy [ARGS]` (builds the binaries, installs the baselines), or
//! `cargo bench --bench daisy -- [ARGS]` with:
//!
//! ```text
//! --size-mb N            input size in MB (10^6 bytes), default 200
//! --receivers 1,2,4      receiver counts, default 1,2,4
//! --repeat N             runs per cell (the table shows medians), default 3
//! --tools LIST           udpcast,uftp,daisy-native,daisy-isolated (default: all)
//! --timeout SECS         per run, default 120
//! --workdir DIR          input and outputs (default /dev/shm: tmpfs, no disk in the way)
//! --keep-logs            keep the run directory (the last run's logs of each tool)
//! --send-arg ARG         one more argument for daisy-send (repeatable; for tuning runs)
//! --daisy-send P --daisy-recv P --arca-monitor P   (default: next to this bench binary)
//! --lan                  the LAN test bed instead of the host-side bridge (below)
//! --loss PCT --drop-every N --rate-mbit N --delay-ms N
//!                        with --lan: every receiver's link loses PCT % of its packets at
//!                        random, every Nth datagram, is limited to N Mbit/s, is delayed
//!                        (delay only where the kernel has sch_netem)
//! --udp-sender P --udp-receiver P --uftp P --uftpd P (default: from PATH)
//! ```
//!
//! Topology (needs root): a Linux bridge `arcabr0` with 10.77.0.1/24 in the host namespace,
//! multicast snooping off (the bridge floods group traffic as a switch without IGMP snooping
//! would), and one namespace `arcad-rxI` per receiver with a veth into the bridge at
//! 10.77.0.1I. Every sender runs on the host side with the bridge address as its multicast
//! interface; every receiver in its own namespace. `daisy-isolated` runs the sender under
//! `arca-monitor run --isolate`, so its sockets are the monitor's, with the monitor's default
//! policy plus one rule letting the guest listen on 10.77.0.1:18483 (the default allows
//! loopback listeners only). Everything is torn down at
//! the end, on failure and on Ctrl-C, and leftovers of an interrupted run are removed first.
//!
//! With `--lan` the topology is `arca_testkit::lan_bed` instead: the senders run in a
//! namespace of their own at 10.79.0.1 (interface `eth0`, segmentation offload ending at its
//! device), the bridge in another, and each receiver's link is impaired as the options say.
//! The host namespace is not touched; the bed is deleted at the end.
//!
//! Per run: wall time from the sender's start until every process of the transfer has
//! exited (uftp: until the sender exits, which it does once every client confirmed), MB/s of
//! input, repaired packets (daisy: the sender's summary; udpcast: the sender's `re-xmits`;
//! uftp: the NAKs the sender logged), Daisy's duplicates and final pacing rate (its
//! summary's `duplicates` and `rate_final`), and CPU: user + sys of every process of the run
//! (`getrusage(RUSAGE_CHILDREN)` before and after; all of them are waited for). Every
//! output is compared with the input byte for byte; a mismatch fails the run. Runs are
//! interleaved (repeat → receivers → tool) so that noise hits every tool alike.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_testkit::bins::profile_dir;
use arca_testkit::child::{describe, Proc};
use arca_testkit::daisy_run::Summary;
use arca_testkit::lan_bed::{self, LanBed, Link};
use arca_testkit::procfs::{tcp_listening, udp_bound};
use arca_testkit::wait::wait_for;

const BRIDGE: &str = "arcabr0";
const HOST_IP: &str = "10.77.0.1";
const MAX_RECEIVERS: usize = 8;
/// Daisy's port and group here: not the defaults, so a Daisy test running on the host's
/// loopback at the same time cannot meet this traffic.
const DAISY_PORT: u16 = 18483;
const DAISY_GROUP: &str = "224.238.0.77";
const DAISY_PAYLOAD: u64 = 1460;
const UDPCAST_PORT: u16 = 9000;
const UDPCAST_BLOCK: u64 = 1456;
const UFTP_PORT: u16 = 1044;
const UFTP_BLOCK: u64 = 1300;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn ns(i: usize) -> String {
    format!("arcad-rx{i}")
}

fn veth(i: usize) -> String {
    format!("arcad-v{i}")
}

fn rx_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Udpcast,
    Uftp,
    DaisyNative,
    DaisyIsolated,
}

impl Tool {
    const ALL: [Tool; 4] = [
        Tool::Udpcast,
        Tool::Uftp,
        Tool::DaisyNative,
        Tool::DaisyIsolated,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Udpcast => "udpcast",
            Tool::Uftp => "uftp",
            Tool::DaisyNative => "daisy-native",
            Tool::DaisyIsolated => "daisy-isolated",
        }
    }

    /// Payload bytes per data packet, to express repairs as a share of the packets.
    fn packet(self) -> u64 {
        match self {
            Tool::Udpcast => UDPCAST_BLOCK,
            Tool::Uftp => UFTP_BLOCK,
            Tool::DaisyNative | Tool::DaisyIsolated => DAISY_PAYLOAD,
        }
    }
}

#[derive(Debug)]
struct Opts {
    size_mb: u64,
    receivers: Vec<usize>,
    repeat: usize,
    tools: Vec<Tool>,
    timeout: Duration,
    workdir: PathBuf,
    keep_logs: bool,
    send_args: Vec<String>,
    /// Payload bytes per data packet for every tool (daisy `--payload-size`, udpcast
    /// `--blocksize`, uftp `-b`); each tool's default when unset.
    payload: Option<u64>,
    /// MTU of the bridge and every veth (jumbo frames for large payloads).
    mtu: u32,
    /// The LAN test bed, every receiver's link impaired so, instead of the host bridge.
    lan: Option<Link>,
    daisy_send: PathBuf,
    daisy_recv: PathBuf,
    monitor: PathBuf,
    udp_sender: PathBuf,
    udp_receiver: PathBuf,
    uftp: PathBuf,
    uftpd: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench daisy -- [--size-mb N] [--receivers 1,2,4] \
[--repeat N] [--tools udpcast,uftp,daisy-native,daisy-isolated] [--timeout SECS] \
[--workdir DIR] [--keep-logs] [--send-arg ARG]... [--payload BYTES (all tools)] [--mtu N] \
[--lan [--loss PCT] [--drop-every N] [--rate-mbit N] [--delay-ms N]] [--daisy-send P] [--daisy-recv P] [--arca-monitor P] [--udp-sender P] \
[--udp-receiver P] [--uftp P] [--uftpd P]";

fn parse_args() -> Result<Opts, String> {
    let bin_dir = profile_dir()?;
    let mut o = Opts {
        size_mb: 200,
        receivers: vec![1, 2, 4],
        repeat: 3,
        tools: Tool::ALL.to_vec(),
        timeout: Duration::from_secs(120),
        workdir: if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        },
        keep_logs: false,
        send_args: Vec::new(),
        payload: None,
        mtu: 1500,
        lan: None,
        daisy_send: bin_dir.join("daisy-send"),
        daisy_recv: bin_dir.join("daisy-recv"),
        monitor: bin_dir.join("arca-monitor"),
        udp_sender: "udp-sender".into(),
        udp_receiver: "udp-receiver".into(),
        uftp: "uftp".into(),
        uftpd: "uftpd".into(),
    };
    let mut args = std::env::args().skip(1);
    let mut link = Link::default();
    let mut link_set = false;
    while let Some(a) = args.next() {
        if a == "--bench" {
            continue; // passed by `cargo bench`
        }
        let mut val = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        let num =
            |v: String| -> Result<u64, String> { v.parse().map_err(|e| format!("{a} {v}: {e}")) };
        match a.as_str() {
            "--size-mb" => o.size_mb = num(val()?)?,
            "--repeat" => o.repeat = usize::try_from(num(val()?)?.max(1)).unwrap_or(1),
            "--timeout" => o.timeout = Duration::from_secs(num(val()?)?.max(1)),
            "--receivers" => {
                o.receivers = val()?
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if (1..=MAX_RECEIVERS).contains(&n) => Ok(n),
                        _ => Err(format!("--receivers: `{s}` is not 1..={MAX_RECEIVERS}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--tools" => {
                o.tools = val()?
                    .split(',')
                    .map(|s| {
                        Tool::ALL
                            .into_iter()
                            .find(|t| t.name() == s.trim())
                            .ok_or_else(|| format!("--tools: unknown tool `{s}`"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--workdir" => o.workdir = val()?.into(),
            "--keep-logs" => o.keep_logs = true,
            "--send-arg" => o.send_args.push(val()?),
            "--payload" => o.payload = Some(num(val()?)?.clamp(256, 8192)),
            "--mtu" => {
                o.mtu = u32::try_from(num(val()?)?.clamp(1280, 9000)).unwrap_or(1500);
            }
            "--lan" => o.lan = Some(Link::default()),
            "--loss" => {
                let v = val()?;
                link.loss_percent = match v.parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => p,
                    _ => return Err(format!("--loss {v}: not a percentage 0 to 100")),
                };
                link_set = true;
            }
            "--drop-every" => {
                let v = val()?;
                link.drop_every = match v.parse::<u32>() {
                    Ok(n) if n >= 2 => Some(n),
                    _ => return Err(format!("--drop-every {v}: not a whole number >= 2")),
                };
                link_set = true;
            }
            "--rate-mbit" => {
                let v = val()?;
                link.rate_mbit = match v.parse::<u32>() {
                    Ok(n) if n >= 1 => Some(n),
                    _ => return Err(format!("--rate-mbit {v}: not a whole number >= 1")),
                };
                link_set = true;
            }
            "--delay-ms" => {
                link.delay = Some(Duration::from_millis(num(val()?)?));
                link_set = true;
            }
            "--daisy-send" => o.daisy_send = val()?.into(),
            "--daisy-recv" => o.daisy_recv = val()?.into(),
            "--arca-monitor" => o.monitor = val()?.into(),
            "--udp-sender" => o.udp_sender = val()?.into(),
            "--udp-receiver" => o.udp_receiver = val()?.into(),
            "--uftp" => o.uftp = val()?.into(),
            "--uftpd" => o.uftpd = val()?.into(),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument `{a}`\n{USAGE}")),
        }
    }
    match &mut o.lan {
        Some(l) => *l = link,
        None if link_set => {
            return Err(format!(
                "--loss, --drop-every, --rate-mbit and --delay-ms need --lan\n{USAGE}"
            ))
        }
        None => {}
    }
    if o.lan.is_some() && o.mtu != 1500 {
        return Err("--mtu applies to the host bridge only, not to --lan".into());
    }
    if o.receivers.is_empty() || o.tools.is_empty() || o.size_mb == 0 {
        return Err(format!("nothing to run\n{USAGE}"));
    }
    Ok(o)
}

/// Whether `prog` can be run: an existing path, or a name found in PATH.
fn runnable(prog: &Path) -> bool {
    if prog.components().count() > 1 {
        return prog.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The bridge and the receivers' namespaces; torn down on drop.
struct Topology;

impl Topology {
    fn create(receivers: usize, mtu: u32) -> Result<Topology, String> {
        let mtu = mtu.to_string();
        Topology::teardown();
        let topo = Topology; // from here on, drop tears down whatever was made
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "brd",
            "+",
            "dev",
            BRIDGE,
        ])?;
        std::fs::write(
            format!("/sys/class/net/{BRIDGE}/bridge/multicast_snooping"),
            "0",
        )
        .map_err(|e| format!("turning multicast snooping off on {BRIDGE}: {e}"))?;
        ip(&["link", "set", BRIDGE, "mtu", &mtu])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 1..=receivers {
            let (ns, veth, addr) = (ns(i), veth(i), format!("{}/24", rx_ip(i)));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "mtu", &mtu])?;
            ip(&["-n", &ns, "link", "set", "eth0", "mtu", &mtu])?;
            ip(&["link", "set", &veth, "master", BRIDGE])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "brd", "+", "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Multicast (and udpcast's broadcasts) leave through eth0.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(topo)
    }

    /// Removes every namespace, veth and the bridge this benchmark may have made.
    fn teardown() {
        for i in 1..=MAX_RECEIVERS {
            let _ = ip(&["netns", "del", &ns(i)]);
            let _ = ip(&["link", "del", &veth(i)]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Topology::teardown();
    }
}

/// Where the runs happen: the host-side bridge (senders in this namespace) or the LAN bed
/// (senders in a namespace of their own).
enum Net {
    Bridge(Topology),
    Lan(LanBed),
}

impl Net {
    fn sender_ip(&self) -> String {
        match self {
            Net::Bridge(_) => HOST_IP.to_owned(),
            Net::Lan(_) => lan_bed::SENDER_IP.to_string(),
        }
    }

    /// The senders' multicast interface.
    fn sender_if(&self) -> &'static str {
        match self {
            Net::Bridge(_) => BRIDGE,
            Net::Lan(_) => "eth0",
        }
    }

    fn sender(&self, prog: &Path) -> Command {
        match self {
            Net::Bridge(_) => Command::new(prog),
            Net::Lan(bed) => LanBed::command(&bed.sender_ns(), prog),
        }
    }

    /// A command run inside receiver `i`'s namespace.
    fn receiver(&self, i: usize, prog: &Path) -> Command {
        match self {
            Net::Bridge(_) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns(i)]).arg(prog);
                c
            }
            Net::Lan(bed) => LanBed::command(&bed.receiver_ns(i), prog),
        }
    }

    fn rx_ip(&self, i: usize) -> String {
        match self {
            Net::Bridge(_) => rx_ip(i),
            Net::Lan(_) => lan_bed::receiver_ip(i).to_string(),
        }
    }

    /// Whether the sender `pid` listens on TCP `port` (in its own namespace).
    fn sender_listens(&self, pid: u32, port: u16) -> bool {
        match self {
            Net::Bridge(_) => tcp_listening(None, port),
            Net::Lan(_) => tcp_listening(Some(pid), port),
        }
    }
}

/// The work directory (input, outputs, logs); removed on drop unless `keep_logs` (then only
/// the input and outputs go).
struct WorkDir {
    path: PathBuf,
    keep_logs: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep_logs {
            let _ = std::fs::remove_dir_all(&self.path);
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                continue;
            }
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
        println!("logs kept in {}", self.path.display());
    }
}

/// User + system CPU seconds of every terminated, waited-for descendant.
fn children_cpu() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; getrusage only writes into it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: zero-initialised above and filled by a successful getrusage.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// A log file for one process's stdout and stderr.
fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc, String> {
    let (out, err) = log_file(log)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Proc::spawn(name, cmd)
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn check_stop() -> Result<(), String> {
    if STOP.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Waits until every process in `procs` has exited or `deadline` passes (or Ctrl-C).
fn wait_all(procs: &mut [Proc], deadline: Instant) -> Result<(), String> {
    loop {
        check_stop()?;
        let mut running = None;
        for p in procs.iter_mut() {
            if p.try_wait()?.is_none() {
                running = Some(p.name().to_owned());
            }
        }
        let Some(name) = running else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(format!("{name} still running at the run's time limit"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Fails unless every process exited 0; the message quotes the log of the first that did not.
fn all_succeeded(procs: &mut [Proc], logs: &[PathBuf]) -> Result<(), String> {
    for (p, log) in procs.iter_mut().zip(logs) {
        match p.try_wait()? {
            Some(st) if st.success() => {}
            st => {
                let text = read_log(log);
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                return Err(format!(
                    "{} ended with {}; log tail:\n  {}",
                    p.name(),
                    st.map_or("no status".into(), describe),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                ));
            }
        }
    }
    Ok(())
}

/// Byte-for-byte comparison of two files.
fn same_file(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("{}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("{}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    cpu: f64,
    repaired: Option<u64>,
    /// Daisy's: duplicates and final pacing rate (MB/s) from its summary.
    duplicates: Option<u64>,
    rate_final: Option<f64>,
}

/// What one tool's run reports before the outputs are checked.
struct Outcome {
    secs: f64,
    repaired: Option<u64>,
    duplicates: Option<u64>,
    rate_final: Option<f64>,
    /// The output files, to compare with the input.
    files: Vec<PathBuf>,
}

struct Bench<'a> {
    o: &'a Opts,
    net: &'a Net,
    dir: PathBuf,
    input: PathBuf,
}

impl Bench<'_> {
    fn run(&self, tool: Tool, n: usize) -> Result<Sample, String> {
        let outs: Vec<PathBuf> = (1..=n).map(|i| self.dir.join(format!("out{i}"))).collect();
        for o in &outs {
            let _ = std::fs::remove_file(o);
            let _ = std::fs::remove_dir_all(o);
        }
        let cpu0 = children_cpu();
        let out = match tool {
            Tool::Udpcast => self.udpcast(n, &outs)?,
            Tool::Uftp => self.uftp(n, &outs)?,
            Tool::DaisyNative => self.daisy(false, n, &outs)?,
            Tool::DaisyIsolated => self.daisy(true, n, &outs)?,
        };
        let cpu = children_cpu() - cpu0;
        for f in &out.files {
            if !same_file(&self.input, f)? {
                return Err(format!(
                    "{}: output {} differs from the input",
                    tool.name(),
                    f.display()
                ));
            }
        }
        for o in &outs {
            let _ = std::fs::remove_file(o);
            let _ = std::fs::remove_dir_all(o);
        }
        Ok(Sample {
            secs: out.secs,
            cpu,
            repaired: out.repaired,
            duplicates: out.duplicates,
            rate_final: out.rate_final,
        })
    }

    /// The monitor's default policy plus one rule: the guest may listen on the bridge
    /// address at Daisy's port (the default allows loopback only).
    fn policy(&self) -> Result<PathBuf, String> {
        let path = self.dir.join("policy.toml");
        if path.exists() {
            return Ok(path);
        }
        let out = Command::new(&self.o.monitor)
            .args(["policy", "--print-default"])
            .output()
            .map_err(|e| format!("arca-monitor policy --print-default: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "arca-monitor policy --print-default: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = write!(
            text,
            "\n[[listen]]\naction = \"allow\"\nnets = [\"{}/32\"]\nports = [{DAISY_PORT}]\nproto = \"tcp\"\n",
            self.net.sender_ip()
        );
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }

    fn daisy(&self, isolated: bool, n: usize, outs: &[PathBuf]) -> Result<Outcome, String> {
        let o = self.o;
        let net = self.net;
        let sender_ip = net.sender_ip();
        let mut cmd = if isolated {
            let mut c = net.sender(&o.monitor);
            c.args(["run", "--isolate", "--policy"])
                .arg(self.policy()?)
                .arg("--")
                .arg(&o.daisy_send);
            c
        } else {
            net.sender(&o.daisy_send)
        };
        let deadline_arg = o.timeout.as_secs().to_string();
        cmd.args(["--clients", &n.to_string()])
            .args(["--port", &DAISY_PORT.to_string()])
            .args(["--group", DAISY_GROUP])
            .args(["--interface", &sender_ip])
            .args(["--bind", &sender_ip])
            .args(["--net", if isolated { "arca" } else { "std" }])
            .args(["--deadline", &deadline_arg])
            .arg("--no-progress");
        if let Some(p) = o.payload {
            cmd.args(["--payload-size", &p.to_string()]);
        }
        cmd.args(&o.send_args).arg(&self.input);
        let mut logs = vec![self.log("daisy-send")];
        let start = Instant::now();
        let deadline = start + o.timeout;
        let mut procs = vec![spawn_logged("daisy-send", &mut cmd, &logs[0])?];
        let pid = procs[0].id();
        wait_for("daisy-send to listen", deadline, || {
            STOP.load(Ordering::Relaxed)
                || net.sender_listens(pid, DAISY_PORT)
                || procs[0].try_wait().ok().flatten().is_some()
        })?;
        check_stop()?;
        for (i, out) in (1..=n).zip(outs) {
            let mut c = net.receiver(i, &o.daisy_recv);
            c.args(["--local-ip", &net.rx_ip(i)])
                .args(["--deadline", &deadline_arg])
                .arg("--no-progress")
                .arg("-o")
                .arg(out)
                .arg(format!("{sender_ip}:{DAISY_PORT}"));
            logs.push(self.log(&format!("daisy-recv{i}")));
            procs.push(spawn_logged(&format!("daisy-recv {i}"), &mut c, &logs[i])?);
        }
        wait_all(&mut procs, deadline)?;
        let secs = start.elapsed().as_secs_f64();
        all_succeeded(&mut procs, &logs)?;
        let sum = Summary::parse("daisy-send", &read_log(&logs[0]))?;
        if sum.u64("completed_receivers")? != n as u64 {
            return Err(format!(
                "daisy-send completed fewer than {n} receivers: {sum:?}"
            ));
        }
        Ok(Outcome {
            secs,
            repaired: Some(sum.u64("repaired")?),
            duplicates: Some(sum.u64("duplicates")?),
            rate_final: sum.f64("rate_final").ok(),
            files: outs.to_vec(),
        })
    }

    fn udpcast(&self, n: usize, outs: &[PathBuf]) -> Result<Outcome, String> {
        let o = self.o;
        let mut logs = vec![self.log("udp-sender")];
        let mut procs = Vec::new();
        let ready_by = Instant::now() + Duration::from_secs(10);
        for (i, out) in (1..=n).zip(outs) {
            let mut c = self.net.receiver(i, &o.udp_receiver);
            c.arg("--file")
                .arg(out)
                .args(["--interface", "eth0", "--nokbd"]);
            logs.push(self.log(&format!("udp-receiver{i}")));
            let p = spawn_logged(&format!("udp-receiver {i}"), &mut c, &logs[i])?;
            let pid = p.id();
            procs.push(p);
            wait_for("udp-receiver to bind", ready_by, || {
                STOP.load(Ordering::Relaxed) || udp_bound(Some(pid), UDPCAST_PORT)
            })?;
        }
        check_stop()?;
        let mut s = self.net.sender(&o.udp_sender);
        s.arg("--file")
            .arg(&self.input)
            .args(["--interface", self.net.sender_if(), "--nokbd"])
            .args(["--min-receivers", &n.to_string()])
            // The sender checks for enough receivers only when it re-sends its hello (every
            // 2 s by default), which would add up to 2 s to every run.
            .args(["--rexmit-hello-interval", "20"]);
        if let Some(p) = o.payload {
            s.args(["--blocksize", &p.to_string()]);
        }
        let start = Instant::now();
        procs.insert(0, spawn_logged("udp-sender", &mut s, &logs[0])?);
        wait_all(&mut procs, start + o.timeout)?;
        let secs = start.elapsed().as_secs_f64();
        all_succeeded(&mut procs, &logs)?;
        // The last progress line: `bytes= 200 000 000  re-xmits=0000038 (  0.0%) …`.
        let text = read_log(&logs[0]);
        let rexmits = text
            .rsplit("re-xmits=")
            .next()
            .filter(|_| text.contains("re-xmits="))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        Ok(Outcome {
            secs,
            repaired: rexmits,
            duplicates: None,
            rate_final: None,
            files: outs.to_vec(),
        })
    }

    fn uftp(&self, n: usize, outs: &[PathBuf]) -> Result<Outcome, String> {
        let o = self.o;
        let client_id = |i: usize| format!("0x0a4d00{:02x}", 10 + i);
        let mut daemons = Vec::new();
        let mut dlogs = Vec::new();
        let ready_by = Instant::now() + Duration::from_secs(10);
        for (i, out) in (1..=n).zip(outs) {
            std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut c = self.net.receiver(i, &o.uftpd);
            c.arg("-d")
                .arg("-D")
                .arg(out)
                .args(["-I", "eth0", "-U", &client_id(i), "-q"]);
            dlogs.push(self.log(&format!("uftpd{i}")));
            let p = spawn_logged(&format!("uftpd {i}"), &mut c, &dlogs[i - 1])?;
            let pid = p.id();
            daemons.push(p);
            wait_for("uftpd to bind", ready_by, || {
                STOP.load(Ordering::Relaxed) || udp_bound(Some(pid), UFTP_PORT)
            })?;
        }
        check_stop()?;
        let ids: Vec<String> = (1..=n).map(client_id).collect();
        let mut s = self.net.sender(&o.uftp);
        s.args(["-R", "-1", "-Y", "none", "-I", self.net.sender_if()])
            .args(["-H", &ids.join(",")]);
        if let Some(p) = o.payload {
            s.args(["-b", &p.to_string()]);
        }
        s.arg(&self.input);
        let slog = vec![self.log("uftp")];
        let start = Instant::now();
        let mut sender = vec![spawn_logged("uftp", &mut s, &slog[0])?];
        wait_all(&mut sender, start + o.timeout)?;
        let secs = start.elapsed().as_secs_f64();
        for d in &daemons {
            d.signal(libc::SIGTERM);
        }
        let _ = wait_all(&mut daemons, Instant::now() + Duration::from_secs(5));
        drop(daemons); // kills any that ignored SIGTERM, and reaps them (their CPU counts)
        all_succeeded(&mut sender, &slog)?;
        let text = read_log(&slog[0]);
        // `Got 24 NAKs for section 13 from client …`
        let naks = text
            .lines()
            .filter_map(|l| {
                l.split("Got ")
                    .nth(1)?
                    .split(" NAKs")
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let name = self
            .input
            .file_name()
            .ok_or("input has no file name")?
            .to_owned();
        Ok(Outcome {
            secs,
            repaired: Some(naks),
            duplicates: None,
            rate_final: None,
            files: outs.iter().map(|d| d.join(&name)).collect(),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median figures of one (tool, receivers) cell.
struct Cell {
    tool: Tool,
    n: usize,
    samples: Vec<Sample>,
    failures: Vec<String>,
}

impl Cell {
    fn mbps(&self, size: u64) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| size as f64 / 1e6 / s.secs)
            .collect()
    }

    fn repaired(&self) -> Option<f64> {
        let r: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.repaired.map(|x| x as f64))
            .collect();
        (!r.is_empty()).then(|| median(r))
    }
}

fn report(o: &Opts, size: u64, cells: &[Cell], header: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{header}\n");
    let _ = writeln!(
        t,
        "| receivers | tool | MB/s (median) | MB/s range | wall s | repaired packets | repairs % | duplicates | final rate MB/s | CPU s (user+sys) | runs ok |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let ok = format!("{}/{}", c.samples.len(), c.samples.len() + c.failures.len());
        if c.samples.is_empty() {
            let _ = writeln!(
                t,
                "| {} | {} | failed | | | | | | | | {ok} |",
                c.n,
                c.tool.name()
            );
            continue;
        }
        let mbps = c.mbps(size);
        let lo = mbps.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mbps.iter().copied().fold(0.0, f64::max);
        let packets = size.div_ceil(o.payload.unwrap_or(c.tool.packet())).max(1) as f64;
        let (rep, pct) = match c.repaired() {
            Some(r) => (format!("{r:.0}"), format!("{:.2} %", 100.0 * r / packets)),
            None => ("n/a".into(), "n/a".into()),
        };
        let median_of = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = c.samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let dups = median_of(|s| s.duplicates.map(|d| d as f64))
            .map_or("n/a".into(), |d| format!("{d:.0}"));
        let rate = median_of(|s| s.rate_final).map_or("n/a".into(), |r| format!("{r:.0}"));
        let _ = writeln!(
            t,
            "| {} | {} | **{:.1}** | {lo:.1}–{hi:.1} | {:.2} | {rep} | {pct} | {dups} | {rate} | {:.2} | {ok} |",
            c.n,
            c.tool.name(),
            median(mbps.clone()),
            median(c.samples.iter().map(|s| s.secs).collect()),
            median(c.samples.iter().map(|s| s.cpu).collect()),
        );
    }
    // The target on the host bridge: daisy-isolated at least as fast as the better baseline,
    // repairs < 1 %. On the LAN bed, whose links lose: 1.5 times the better baseline (every
    // copy is verified in any case; a run whose copy differs is a failed run).
    let (ratio, repairs_cap) = if o.lan.is_some() {
        (1.5, None)
    } else {
        (1.0, Some(1.0))
    };
    let target = match repairs_cap {
        Some(cap) => format!("≥ {ratio}× best baseline, repairs < {cap} %"),
        None => format!("≥ {ratio}× best baseline"),
    };
    let find = |tool: Tool, n: usize| {
        cells
            .iter()
            .find(|c| c.tool == tool && c.n == n && !c.samples.is_empty())
    };
    if o.tools.contains(&Tool::DaisyIsolated) {
        let _ = writeln!(
            t,
            "\n| receivers | daisy-isolated MB/s | best baseline MB/s | ratio | repairs % | target ({target}) |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|");
        for &n in &o.receivers {
            let Some(d) = find(Tool::DaisyIsolated, n) else {
                let _ = writeln!(t, "| {n} | failed | | | | not met |");
                continue;
            };
            let dm = median(d.mbps(size));
            let best = [Tool::Udpcast, Tool::Uftp]
                .into_iter()
                .filter_map(|tool| find(tool, n).map(|c| (tool, median(c.mbps(size)))))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let rep = d
                .repaired()
                .map(|r| 100.0 * r / size.div_ceil(DAISY_PAYLOAD).max(1) as f64);
            let rep_s = rep.map_or("n/a".into(), |r| format!("{r:.2} %"));
            match best {
                Some((tool, b)) => {
                    let met = dm >= ratio * b
                        && repairs_cap.is_none_or(|cap| rep.is_some_and(|r| r < cap));
                    let _ = writeln!(
                        t,
                        "| {n} | {dm:.1} | {b:.1} ({}) | {:.2}× | {rep_s} | {} |",
                        tool.name(),
                        dm / b,
                        if met { "met" } else { "not met" }
                    );
                }
                None => {
                    let _ = writeln!(t, "| {n} | {dm:.1} | no baseline ran | | {rep_s} | n/a |");
                }
            }
        }
    }
    let failures: Vec<String> = cells
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .map(move |f| format!("- {} × {}: {f}", c.tool.name(), c.n))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(t, "\nFailed runs:\n{}", failures.join("\n"));
    }
    t
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: the Daisy benchmark needs root (a bridge and network namespaces)");
        return;
    }
    if let Err(e) = run(&o) {
        eprintln!("daisy bench: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let mut tools = Vec::new();
    for &t in &o.tools {
        let need: Vec<&Path> = match t {
            Tool::Udpcast => vec![&o.udp_sender, &o.udp_receiver],
            Tool::Uftp => vec![&o.uftp, &o.uftpd],
            Tool::DaisyNative => vec![&o.daisy_send, &o.daisy_recv],
            Tool::DaisyIsolated => vec![&o.daisy_send, &o.daisy_recv, &o.monitor],
        };
        match need.iter().find(|p| !runnable(p)) {
            Some(p) => println!("note: skipping {}: {} not found", t.name(), p.display()),
            None => tools.push(t),
        }
    }
    if tools.is_empty() {
        return Err("none of the requested tools is installed".into());
    }
    let dir = o
        .workdir
        .join(format!("arca-daisy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _dir_guard = WorkDir {
        path: dir.clone(),
        keep_logs: o.keep_logs,
    };
    let size = o.size_mb * 1_000_000;
    let input = dir.join("input.bin");
    {
        let len = usize::try_from(size).map_err(|_| "--size-mb too large")?;
        let data = arca_testkit::pattern::random_bytes(0x000d_a157, len);
        std::fs::write(&input, data).map_err(|e| format!("{}: {e}", input.display()))?;
    }
    let max_n = o.receivers.iter().copied().max().unwrap_or(1);
    let net = match o.lan {
        Some(link) => {
            if link.delay.is_some() && !LanBed::delay_available() {
                return Err(
                    "--delay-ms: this kernel has no sch_netem, so links cannot be \
                            delayed; run without --delay-ms"
                        .into(),
                );
            }
            Net::Lan(LanBed::create(&vec![link; max_n])?)
        }
        None => Net::Bridge(Topology::create(max_n, o.mtu)?),
    };
    let bench = Bench {
        o,
        net: &net,
        dir: dir.clone(),
        input,
    };
    let mut cells: Vec<Cell> = o
        .receivers
        .iter()
        .flat_map(|&n| {
            tools.iter().map(move |&tool| Cell {
                tool,
                n,
                samples: Vec::new(),
                failures: Vec::new(),
            })
        })
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let topology = match o.lan {
        Some(l) => {
            let mut parts = vec![format!("loss {} %", l.loss_percent)];
            parts.extend(
                l.drop_every
                    .map(|n| format!("every {n}th datagram dropped")),
            );
            parts.extend(l.rate_mbit.map(|r| format!("{r} Mbit/s")));
            parts.extend(l.delay.map(|d| format!("delay {d:?}")));
            format!("LAN bed, every receiver's link: {}", parts.join(", "))
        }
        None => "host bridge".into(),
    };
    println!(
        "Daisy benchmark ({topology}): {} MB, receivers {:?}, {} run(s) each; load average at start: {}",
        o.size_mb,
        o.receivers,
        o.repeat,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for rep in 1..=o.repeat {
        for cell in cells.iter_mut() {
            check_stop()?;
            match bench.run(cell.tool, cell.n) {
                Ok(s) => {
                    println!(
                        "run {rep}: {:>14} × {}: {:7.1} MB/s  {:6.2} s  repaired {:>6}  \
                         duplicates {:>5}  final rate {:>6}  cpu {:.2} s",
                        cell.tool.name(),
                        cell.n,
                        size as f64 / 1e6 / s.secs,
                        s.secs,
                        s.repaired.map_or("n/a".into(), |r| r.to_string()),
                        s.duplicates.map_or("n/a".into(), |r| r.to_string()),
                        s.rate_final.map_or("n/a".into(), |r| format!("{r:.0}")),
                        s.cpu
                    );
                    cell.samples.push(s);
                }
                Err(e) => {
                    check_stop()?;
                    println!(
                        "run {rep}: {:>14} × {}: FAILED: {e}",
                        cell.tool.name(),
                        cell.n
                    );
                    cell.failures
                        .push(e.lines().next().unwrap_or("").to_owned());
                }
            }
        }
    }
    let cmdline: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let header = format!(
        "### Daisy benchmark: {} MB, {} run(s) per cell, medians (args: `{}`)",
        o.size_mb,
        o.repeat,
        cmdline.join(" ")
    );
    let table = report(o, size, &cells, &header);
    println!("\n{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| profile_dir().ok()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"));
    let out = target.join("daisy-bench.md");
    std::fs::write(&out, &table).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}
