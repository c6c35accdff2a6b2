//! `arca-monitor`: run one guest, or serve many, relaying their sockets.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use arca_monitor::{guest, Config, GuestOutcome, Monitor, Policy};
use clap::{Args, Parser, Subcommand};

/// Gives sandboxed guests TCP through shared memory: the guest asks, the
/// monitor makes the real socket calls and relays the bytes.
#[derive(Debug, Parser)]
#[command(name = "arca-monitor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start PROGRAM as a guest, serve it, and exit with its exit status.
    Run {
        /// Start the guest in a network namespace of its own, so the monitor
        /// is its only way to the network.
        #[arg(long)]
        isolate: bool,
        #[command(flatten)]
        sizes: Sizes,
        #[command(flatten)]
        policy: PolicyFile,
        /// The guest program and its arguments.
        #[arg(required = true, last = true, value_name = "PROGRAM ARGS")]
        program: Vec<OsString>,
    },
    /// Serve guests that attach to a Unix socket, until SIGINT or SIGTERM.
    Serve {
        /// Path of the Unix socket guests attach to (`ArcaSession::attach`).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        #[command(flatten)]
        sizes: Sizes,
        #[command(flatten)]
        policy: PolicyFile,
    },
    /// Print the default policy, or check a policy file (POLICY.md).
    Policy {
        /// Print the policy used when no `--policy` is given, as TOML.
        #[arg(long, conflicts_with = "check")]
        print_default: bool,
        /// Parse FILE and report the first problem, as `--policy` would.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct PolicyFile {
    /// What guests may reach and hold (TOML, POLICY.md); the safe default
    /// (`arca-monitor policy --print-default`) when omitted.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

impl PolicyFile {
    fn load(&self) -> Result<Arc<Policy>, arca_monitor::policy::PolicyError> {
        match &self.policy {
            Some(path) => Policy::load(path).map(Arc::new),
            None => Ok(Arc::new(Policy::default())),
        }
    }
}

/// Exit status for bad usage, bad configuration included (as clap's).
const USAGE: u8 = 2;

const DEFAULT_HEADER: &str = "\
# arca-monitor's default policy (POLICY.md). Rules are tried in order, the
# first match wins, and an address no rule matches is denied.
# limits.pipe_memory is absent: the guest's region size is the bound.
";

#[derive(Debug, Args)]
struct Sizes {
    /// Size of each guest's shared region (power of two; K, M, G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "256M")]
    region_size: u64,
    /// Capacity of a connection's host → guest ring (power of two); the guest → host ring
    /// is twice it, which fits the same power-of-two pipe block.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "256K")]
    data_ring: u64,
}

impl Sizes {
    fn config(&self, policy: Arc<Policy>) -> anyhow::Result<Config> {
        let config = Config {
            region_size: self.region_size,
            data_ring: self.data_ring,
            policy,
            ..Config::default()
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 4096, 64K, 256M, 1G)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(isolate: bool, config: Config, program: &[OsString]) -> anyhow::Result<ExitCode> {
    let (prog, args) = program.split_first().context("no guest program given")?;
    let mut monitor = Monitor::new(config).context("starting the monitor")?;
    monitor
        .handle_signals()
        .context("installing signal handlers")?;
    let (mut spawned, isolation) = guest::spawn(prog, args, isolate)?;
    tracing::info!(pid = spawned.child.id(), ?isolation, "guest started");
    monitor
        .add_guest(spawned.sock)
        .context("setting up the guest's session")?;
    let GuestOutcome::Exited(status) = monitor
        .run_guest(&mut spawned.child, spawned.pidfd.as_ref())
        .context("serving the guest")?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => {
            eprintln!("arca-monitor: guest killed by signal {sig}");
            ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))
        }
        _ => ExitCode::FAILURE,
    })
}

fn serve(socket: &std::path::Path, config: Config) -> anyhow::Result<ExitCode> {
    let mut monitor = Monitor::new(config).context("starting the monitor")?;
    monitor
        .handle_signals()
        .context("installing signal handlers")?;
    monitor
        .listen_unix(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    monitor.run().context("serving guests")?;
    let _ = std::fs::remove_file(socket);
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let (sizes, policy) = match &cli.command {
        Command::Run { sizes, policy, .. } | Command::Serve { sizes, policy, .. } => {
            (sizes, policy)
        }
        Command::Policy {
            print_default,
            check,
        } => return policy_command(*print_default, check.as_deref()),
    };
    let config = match policy.load() {
        Ok(p) => sizes.config(p),
        Err(e) => {
            eprintln!("arca-monitor: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let result = config.and_then(|config| match &cli.command {
        Command::Run {
            isolate, program, ..
        } => run(*isolate, config, program),
        Command::Serve { socket, .. } => serve(socket, config),
        Command::Policy { .. } => Ok(ExitCode::SUCCESS),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arca-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_command(print_default: bool, check: Option<&std::path::Path>) -> ExitCode {
    match (print_default, check) {
        (_, Some(path)) => match Policy::load(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("arca-monitor: {e}");
                ExitCode::from(USAGE)
            }
        },
        (true, None) => {
            print!("{DEFAULT_HEADER}{}", Policy::default().to_toml());
            ExitCode::SUCCESS
        }
        (false, None) => {
            eprintln!("arca-monitor: policy needs --print-default or --check FILE");
            ExitCode::from(USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
