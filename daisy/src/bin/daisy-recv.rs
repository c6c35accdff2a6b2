//! `daisy-recv`: receive one Daisy transfer to stdout or a file.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use daisy::receiver::ReceiverConfig;
use daisy::recv_shell::{run_receiver, summary_line, RecvOptions};
use daisy::wire::DEFAULT_PORT;

/// Exit status for bad arguments (clap uses it for its own errors too).
const EXIT_USAGE: u8 = 2;

/// Receive one Daisy multicast transfer.
///
/// Diagnostics: ARCA_LOG sets their filter (default warn; e.g. info, daisy=debug); colour
/// only on a terminal without NO_COLOR.
#[derive(Debug, Parser)]
#[command(
    name = "daisy-recv",
    version,
    after_help = "Output: with -o NAME the data goes to NAME.partial, renamed to NAME only once \
        the whole transfer is in and verified; on an error NAME.partial is removed (a killed \
        receiver leaves it). NAME itself is untouched until then. A NAME that exists and is \
        not a regular file (a device, a pipe) is written directly.\n\n\
        Exit status:\n  0  the whole transfer was received and verified\n  \
        1  failure (network, sender, output)\n  2  usage: bad arguments"
)]
struct Args {
    /// Local interface address to join the multicast group on.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    local_ip: Ipv4Addr,
    /// Seconds of silence from the sender (no TCP bytes, no datagrams) before giving up
    /// while it owes this receiver an answer: repairs after SERVER_SENT, a round's checks or
    /// payload size. While it may be waiting on other receivers instead (for each round's header, and
    /// for a round's data after this receiver is ready) the limit is 2 × DEADLINE + 1 s,
    /// since the sender drops a stalled receiver only after its own --deadline. Connecting
    /// is retried for DEADLINE.
    #[arg(long, default_value_t = 10.0)]
    deadline: f64,
    /// Output file (stdout when omitted), written as NAME.partial until verified.
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
    cli_log::init("ARCA_LOG", "warn");
    if !(a.deadline > 0.0 && a.deadline < 1e6) {
        eprintln!(
            "daisy-recv: error: --deadline {} must be positive",
            a.deadline
        );
        return ExitCode::from(EXIT_USAGE);
    }
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

/// Where the output goes while the transfer runs, and where it ends up.
enum Sink {
    /// Standard output, or a path that is not a regular file: written directly.
    Direct(File),
    /// `partial` while running, renamed to `path` once verified.
    Staged {
        file: File,
        partial: PathBuf,
        path: PathBuf,
    },
}

impl Sink {
    fn open(output: Option<&str>) -> Result<Sink, String> {
        let Some(p) = output else {
            // Stdout as a plain file: no line buffering over binary data.
            let out = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("stdout: {e}"))?;
            return Ok(Sink::Direct(File::from(out)));
        };
        let path = PathBuf::from(p);
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| format!("{p}: {e}"))?;
            return Ok(Sink::Direct(f));
        }
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        Ok(Sink::Staged {
            file,
            partial,
            path,
        })
    }

    fn file(&self) -> io::Result<File> {
        match self {
            Sink::Direct(f) | Sink::Staged { file: f, .. } => f.try_clone(),
        }
    }

    /// Puts a verified output in place.
    fn commit(self) -> Result<(), String> {
        if let Sink::Staged { partial, path, .. } = self {
            std::fs::rename(&partial, &path)
                .map_err(|e| format!("rename {} to {}: {e}", partial.display(), path.display()))?;
        }
        Ok(())
    }

    /// Removes an unfinished output.
    fn discard(self) {
        if let Sink::Staged { partial, .. } = self {
            let _ = std::fs::remove_file(partial);
        }
    }
}

fn run(a: &Args) -> Result<String, Box<dyn std::error::Error>> {
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
    let sink = Sink::open(a.output.as_deref())?;
    let received = sink.file().map_err(|e| e.to_string()).and_then(|f| {
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let r = run_receiver(&opts, &mut out).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| format!("write output: {e}"))?;
        Ok(r)
    });
    match received {
        Ok(r) => {
            sink.commit()?;
            Ok(summary_line(&r))
        }
        Err(e) => {
            sink.discard();
            Err(e.into())
        }
    }
}
