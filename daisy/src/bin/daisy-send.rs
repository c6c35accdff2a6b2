//! `daisy-send`: multicast a file (or stdin) to N Daisy receivers.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use daisy::net::{ArcaNet, McastOptions, StdNet};
use daisy::send_shell::{run_sender, summary_json, summary_line, SendOptions, SendReport};
use daisy::sender::{Delivery, SenderConfig};
use daisy::wire::{DEFAULT_GROUP, DEFAULT_PORT, MAX_PACKETS_PER_BUFFER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetKind {
    /// arca when ARCA_FD is set, else std.
    Auto,
    /// Host sockets.
    Std,
    /// Through the arca monitor (inside `arca-monitor run`).
    Arca,
}

/// Exit status when at least `--min-complete` but not all receivers completed.
const EXIT_PARTIAL: u8 = 3;
/// Exit status for bad arguments (clap uses it for its own errors too).
const EXIT_USAGE: u8 = 2;

/// Multicast a file (or stdin) reliably to N Daisy receivers.
///
/// Diagnostics: ARCA_LOG sets their filter (default warn; e.g. info, daisy=debug); colour
/// only on a terminal without NO_COLOR.
#[derive(Debug, Parser)]
#[command(
    name = "daisy-send",
    version,
    after_help = "Exit status:\n  \
        0  every one of --clients receivers got the whole transfer (extended receivers verify \
        its SHA-256)\n  \
        1  failure: fewer than --min-complete receivers did, or an error (input, network)\n  \
        2  usage: bad arguments\n  \
        3  partial: at least --min-complete (set below --clients) did, but not all; the \
        summary's failed= field lists the others as ID@ADDRESS"
)]
struct Args {
    /// Receivers to wait for before sending.
    #[arg(long)]
    clients: usize,
    /// TCP control port; the UDP data port is the same number.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Multicast group.
    #[arg(long, default_value_t = DEFAULT_GROUP)]
    group: Ipv4Addr,
    /// Multicast TTL.
    #[arg(long, default_value_t = 8)]
    ttl: u32,
    /// Interface address to multicast from.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    interface: Ipv4Addr,
    /// TCP listen address.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Payload bytes per packet (above 1460 only used when every receiver is extended).
    #[arg(long, default_value_t = 1460)]
    payload_size: usize,
    /// Packets per round (at most 65536). Every round costs the receivers' round trips
    /// (header, ready, sent, done); 8192 × 1460 B ≈ 12 MB rounds keep that overhead small
    /// while the sender holds one round and each receiver one round in memory.
    #[arg(long, default_value_t = 8192)]
    packets_per_buffer: u32,
    /// Rate in MB/s (10^6 bytes per second); 0 adapts to repair requests.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to wait for receivers to connect, and for any one receiver's answer.
    #[arg(long, default_value_t = 10.0)]
    deadline: f64,
    /// Receivers that must complete for a partial success (exit status 3) rather than a
    /// failure (1). Also the fewest connected receivers the transfer starts with once
    /// --deadline passes. Default: --clients (anything short of every receiver fails).
    #[arg(long)]
    min_complete: Option<usize>,
    /// Network: arca (the monitor's relay), std (host sockets), auto.
    #[arg(long, value_enum, default_value_t = NetKind::Auto)]
    net: NetKind,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Also print the summary as one JSON object on stdout, for scripts (the summary line
    /// stays on stderr).
    #[arg(long)]
    json: bool,
    /// Input file; stdin when omitted or `-`.
    file: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli_log::init("ARCA_LOG", "warn");
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("daisy-send: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let min_complete = opts.core.min_complete;
    match run(&args, opts) {
        Ok(r) => {
            for d in &r.stats.dropped {
                eprintln!(
                    "daisy-send: receiver {} ({}) failed: {}",
                    d.id.0, d.addr, d.reason
                );
            }
            if r.stats.missing > 0 {
                eprintln!(
                    "daisy-send: {} of {} receivers never connected",
                    r.stats.missing, args.clients
                );
            }
            eprintln!("{}", summary_line(&r));
            if args.json {
                println!("{}", summary_json(&r));
            }
            match r.delivery {
                Delivery::All => ExitCode::SUCCESS,
                Delivery::Partial => {
                    eprintln!(
                        "daisy-send: partial: {} of {} receivers got the transfer \
                         (--min-complete {min_complete})",
                        r.stats.completed, args.clients
                    );
                    ExitCode::from(EXIT_PARTIAL)
                }
                Delivery::Failed => {
                    eprintln!(
                        "daisy-send: error: {} of {} receivers got the transfer, {min_complete} \
                         required",
                        r.stats.completed, args.clients
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("daisy-send: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments; every error here is a usage error.
fn options(a: &Args) -> Result<SendOptions, String> {
    if a.packets_per_buffer == 0 || a.packets_per_buffer > MAX_PACKETS_PER_BUFFER {
        return Err(format!(
            "--packets-per-buffer {} outside 1..={MAX_PACKETS_PER_BUFFER}",
            a.packets_per_buffer
        ));
    }
    if !(a.deadline > 0.0 && a.deadline < 1e6) {
        return Err(format!("--deadline {} must be positive", a.deadline));
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        return Err(format!("--rate {} must be 0 or positive", a.rate));
    }
    let min_complete = a.min_complete.unwrap_or(a.clients);
    if min_complete > a.clients {
        return Err(format!(
            "--min-complete {min_complete} exceeds --clients {}",
            a.clients
        ));
    }
    let group = SocketAddrV4::new(a.group, a.port);
    let core = SenderConfig {
        clients: a.clients,
        group,
        payload_size: a.payload_size,
        packets_per_buffer: a.packets_per_buffer,
        rate: (a.rate > 0.0).then_some(a.rate * 1e6),
        deadline: Duration::from_secs_f64(a.deadline),
        min_complete,
        extensions: true,
        input_len: None,
    };
    core.check().map_err(|e| e.to_string())?;
    Ok(SendOptions {
        core,
        bind: SocketAddr::new(a.bind, a.port),
        mcast: McastOptions {
            group,
            ttl: a.ttl,
            looped: true,
            interface: a.interface,
        },
        progress: !a.no_progress,
    })
}

fn run(a: &Args, opts: SendOptions) -> io::Result<SendReport> {
    let (input, len): (Box<dyn Read>, Option<u64>) = match a.file.as_deref() {
        None | Some("-") => (Box::new(io::stdin().lock()), None),
        Some(p) => {
            let f = File::open(p).map_err(|e| io::Error::new(e.kind(), format!("{p}: {e}")))?;
            // Only a regular file's length is known in advance (not a FIFO's or a device's).
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), len)
        }
    };
    let mut opts = opts;
    opts.core.input_len = len;
    let use_arca = match a.net {
        NetKind::Arca => true,
        NetKind::Std => false,
        NetKind::Auto => std::env::var_os(arca::ENV_FD).is_some(),
    };
    if use_arca {
        let bind = opts.bind;
        run_sender(&ArcaNet::from_env()?, opts, input).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (the arca monitor's policy refused it; its default allows listening \
                         on loopback only: try --bind 127.0.0.1, bound {bind} now)"
                    ),
                )
            } else {
                e
            }
        })
    } else {
        run_sender(&StdNet, opts, input)
    }
}
