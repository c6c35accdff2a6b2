//! `daisy-recv`: receive one Daisy transfer to stdout or a file.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use daisy::receiver::ReceiverConfig;
use daisy::recv_shell::{run_receiver, summary_line, RecvOptions};
use daisy::wire::DEFAULT_PORT;

/// Receive one Daisy multicast transfer.
#[derive(Debug, Parser)]
#[command(name = "daisy-recv", version)]
struct Args {
    /// Local interface address to join the multicast group on.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    local_ip: Ipv4Addr,
    /// Seconds of silence from the sender before giving up.
    #[arg(long, default_value_t = 10.0)]
    deadline: f64,
    /// Output file (stdout when omitted).
    #[arg(short = 'o', long = "output")]
    output: Option<String>,
    /// No progress display (shown only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Test hook: drop this percentage of received data datagrams.
    #[arg(long, hide = true, default_value_t = 0.0)]
    test_drop_percent: f64,
    /// Test hook: seed for --test-drop-percent.
    #[arg(long, hide = true, default_value_t = 1)]
    test_seed: u64,
    /// Test hook: exit abruptly (no goodbye) after writing this many bytes.
    #[arg(long, hide = true)]
    test_exit_after_bytes: Option<u64>,
    /// The sender, HOST[:PORT] (port 18383 by default).
    server: String,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(line) => {
            eprintln!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("daisy-recv: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(s: &str) -> io::Result<SocketAddr> {
    let with_port = if s.parse::<Ipv4Addr>().is_ok() || !s.contains(':') {
        format!("{s}:{DEFAULT_PORT}")
    } else {
        s.to_string()
    };
    with_port
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: no IPv4 address")))
}

fn run(a: &Args) -> Result<String, Box<dyn std::error::Error>> {
    if !(a.deadline > 0.0 && a.deadline < 1e6) {
        return Err(format!("--deadline {} must be positive", a.deadline).into());
    }
    let server = resolve(&a.server).map_err(|e| format!("server {}: {e}", a.server))?;
    let opts = RecvOptions {
        server,
        local_ip: a.local_ip,
        core: ReceiverConfig {
            deadline: Duration::from_secs_f64(a.deadline),
            ..ReceiverConfig::default()
        },
        progress: !a.no_progress,
        test_drop_percent: a.test_drop_percent,
        test_seed: a.test_seed,
        test_exit_after_bytes: a.test_exit_after_bytes,
    };
    let file = match &a.output {
        Some(p) => File::create(p).map_err(|e| format!("{p}: {e}"))?,
        // Stdout as a plain file: no line buffering over binary data.
        None => File::from(io::stdout().as_fd().try_clone_to_owned()?),
    };
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let r = run_receiver(&opts, &mut out)?;
    out.flush()?;
    Ok(summary_line(&r))
}
