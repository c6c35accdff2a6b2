//! `arca-monitor`: run one guest, or serve many, relaying their sockets.

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use arca_monitor::resolver::{Resolver, ResolverSettings, Upstream};
use arca_monitor::serve_socket::Access;
use arca_monitor::session::SetupError;
use arca_monitor::{confine, guest, Config, GuestOutcome, Monitor, Policy};
use clap::{Args, Parser, Subcommand};

/// Gives sandboxed guests TCP and UDP through shared memory: the guest asks,
/// the monitor makes the real socket calls and relays the bytes.
#[derive(Debug, Parser)]
#[command(name = "arca-monitor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start PROGRAM as a guest, serve it, and exit with its exit status.
    #[command(after_help = EXIT_STATUS)]
    Run {
        /// Start the guest in a network namespace of its own, so the monitor
        /// is its only way to the network.
        #[arg(long)]
        isolate: bool,
        /// With --isolate, how the guest reaches the network. `stack`: a network stack
        /// inside the guest's namespace (a TUN device with addresses, routes and a private
        /// resolv.conf) turns any program's TCP and UDP into arca connections, so PROGRAM
        /// needs no arca library (NETSTACK.md). Without it, PROGRAM must use arca itself.
        #[arg(long, value_name = "MODE", requires = "isolate")]
        net: Option<NetMode>,
        /// After passing a stop signal (SIGINT, SIGTERM) on to the guest,
        /// wait this many seconds for it to exit, then kill it (SIGKILL). A
        /// second stop signal kills it at once.
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_grace)]
        grace: f64,
        #[command(flatten)]
        sizes: Sizes,
        #[command(flatten)]
        policy: PolicyFile,
        #[command(flatten)]
        confine: ConfineArgs,
        #[command(flatten)]
        workers: Workers,
        #[command(flatten)]
        names: NameArgs,
        /// The guest program and its arguments.
        #[arg(required = true, last = true, value_name = "PROGRAM ARGS")]
        program: Vec<OsString>,
    },
    /// Serve guests that attach to a Unix socket, until SIGINT or SIGTERM.
    #[command(after_help = SERVE_EXIT_STATUS)]
    Serve {
        /// Path of the Unix socket guests attach to (`ArcaSession::attach`).
        /// A stale socket there is replaced; anything else (a file, a socket
        /// another monitor serves on) is refused.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Mode of the socket file, in octal (default: 600, or 660 with
        /// --allow-gid, 666 with --allow-uid; peers are checked either way).
        #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
        socket_mode: Option<u32>,
        /// A user (numeric uid) who may attach besides the monitor's own and
        /// root. Repeatable.
        #[arg(long, value_name = "UID")]
        allow_uid: Vec<u32>,
        /// A group (numeric gid) whose members may attach. Repeatable.
        #[arg(long, value_name = "GID")]
        allow_gid: Vec<u32>,
        /// Sessions served at once (further attaches are refused); lowered to
        /// fit the descriptor limit.
        #[arg(long, value_name = "N", default_value_t = 1024)]
        max_sessions: usize,
        /// Sessions one user may hold at once.
        #[arg(long, value_name = "N", default_value_t = 64)]
        max_sessions_per_uid: usize,
        /// Once the socket is bound, become this user (a name or a numeric
        /// uid): no supplementary groups, its primary group. Needs root.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        #[command(flatten)]
        sizes: Sizes,
        #[command(flatten)]
        policy: PolicyFile,
        #[command(flatten)]
        confine: ConfineArgs,
        #[command(flatten)]
        workers: Workers,
        #[command(flatten)]
        names: NameArgs,
    },
    /// The guest-side network stack (what `run --net stack` starts inside the guest):
    /// `arca-monitor netstack [--no-dns] -- PROGRAM ARGS`.
    #[command(hide = true)]
    Netstack {
        /// The stack's arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Print the default policy, or check a policy file (POLICY.md).
    Policy {
        /// Print the policy used when no `--policy` is given, as TOML.
        #[arg(long, conflicts_with = "check")]
        print_default: bool,
        /// Parse FILE and report the first problem, as `--policy` would; say
        /// which sections it leaves to the default.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
        /// With --check: print the effective policy (the file with the
        /// default's sections filled in), as TOML.
        #[arg(long, requires = "check")]
        print: bool,
    },
}

/// How the monitor resolves names for guests (`ArcaSession::lookup_host`).
#[derive(Debug, Args)]
struct NameArgs {
    /// Resolve guests' names with this DNS server only (default: the host's
    /// /etc/resolv.conf and /etc/hosts, read at start-up). Port 53 when omitted.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_server)]
    resolver: Option<SocketAddr>,
    /// Seconds one resolution may take before the guest gets TimedOut.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = parse_resolve_timeout)]
    resolve_timeout: f64,
}

impl NameArgs {
    /// Builds the resolver, having read what it needs; its thread starts once the monitor
    /// is confined (`Resolver::run`). Without `--resolver`, a host whose configuration cannot
    /// be read gets a monitor that answers every `Resolve` with `ResolverFailure` (and says
    /// so once); a named server that cannot be set up is an error.
    fn prepare(&self) -> anyhow::Result<Option<Resolver>> {
        let upstream = match self.resolver {
            Some(addr) => Upstream::Server(addr),
            None => Upstream::System,
        };
        let settings = ResolverSettings {
            upstream: upstream.clone(),
            timeout: Duration::from_secs_f64(self.resolve_timeout),
        };
        match (Resolver::prepare(settings), upstream) {
            (Ok(r), _) => Ok(Some(r)),
            (Err(e), Upstream::System) => {
                tracing::warn!("resolving names for guests is off: {e}");
                Ok(None)
            }
            (Err(e), Upstream::Server(_)) => Err(anyhow::Error::new(e)),
        }
    }
}

fn parse_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .or_else(|_| {
            let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
            bare.ok_or(())
                .and_then(|b| b.parse::<IpAddr>().map_err(|_| ()))
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{s}` is not ADDR or ADDR:PORT (examples: 127.0.0.1:53, [::1]:5353)"))
}

fn parse_resolve_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=300.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0.01 and 300"
        )),
    }
}

#[derive(Debug, Args)]
struct ConfineArgs {
    /// Do not confine the monitor once set up (no seccomp filter, no
    /// Landlock, capabilities kept): for debugging only, and said so loudly.
    #[arg(long)]
    no_confine: bool,
}

/// How an isolated guest reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NetMode {
    /// The guest-side network stack: unmodified programs work.
    Stack,
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

#[derive(Debug, Args)]
struct Workers {
    /// Worker threads, each an event loop serving whole guest sessions; new
    /// guests go to the least-loaded one. Default: for `serve`, the CPUs the
    /// monitor may use (its affinity mask); for `run`, 1.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Pin worker i to the i-th CPU the monitor may use.
    #[arg(long)]
    pin: bool,
}

impl Workers {
    /// `config` with these workers, `default` of them unless `--workers`.
    fn apply(&self, config: Config, default: usize) -> Config {
        Config {
            workers: self.workers.unwrap_or(default),
            pin: self.pin,
            ..config
        }
    }
}

/// Exit status for bad usage, bad configuration included (as clap's).
const USAGE: u8 = 2;

const SERVE_EXIT_STATUS: &str = "\
Exit status:
  0    stopped by SIGINT or SIGTERM
  1    the monitor failed while serving, or could not confine itself
  2    bad usage or configuration, or a socket path it refuses to replace
  159  the monitor's confinement stopped a forbidden system call (SECURITY.md)";

const EXIT_STATUS: &str = "\
Exit status:
  the guest's own status; 128+N when a signal N ended it
  1    the monitor failed while serving, or could not confine itself (the guest
       is killed)
  2    bad usage or configuration (arguments, sizes, policy file)
  126  PROGRAM could not be executed
  127  PROGRAM was not found
  159  the monitor's confinement stopped a forbidden system call (SECURITY.md);
       also a guest's own 159, or its death by SIGSYS

Stopping: the first SIGINT or SIGTERM is passed on to the guest; a second one,
or --grace seconds without the guest exiting, kills it (SIGKILL).";

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
        config.validate()?;
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

fn parse_grace(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0 and 86400"
        )),
    }
}

fn run(
    isolate: bool,
    net: Option<NetMode>,
    grace: Duration,
    config: Config,
    program: &[OsString],
    confined: bool,
) -> anyhow::Result<ExitCode> {
    // With the stack, the guest is this binary's `netstack` mode, which starts PROGRAM.
    let program = match net {
        None => program.to_vec(),
        Some(NetMode::Stack) => {
            let me = std::env::current_exe().context("locating arca-monitor's own binary")?;
            let mut v = vec![me.into_os_string(), "netstack".into(), "--".into()];
            v.extend(program.iter().cloned());
            v
        }
    };
    let (prog, args) = program.split_first().context("no guest program given")?;
    let bind_privileged_ports = privileged_ports(&config.policy);
    let resolver = config.resolver.clone();
    let mut monitor = Monitor::new(config).context("starting the monitor")?;
    monitor
        .handle_signals()
        .context("installing signal handlers")?;
    let (mut spawned, isolation) = match guest::spawn_as(prog, args, isolate, net.is_some()) {
        Ok(spawned) => spawned,
        Err(e) => {
            let status = e.exit_status();
            eprintln!("arca-monitor: {:#}", anyhow::Error::new(e));
            return Ok(ExitCode::from(status));
        }
    };
    tracing::info!(pid = spawned.child.id(), ?isolation, "guest started");
    match monitor.add_guest(spawned.sock) {
        Ok(_) => {}
        // A guest may exit (or close fd 3) before its session is set up: a
        // program that never uses the network is served by waiting for it.
        Err(SetupError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            tracing::debug!(error = %e, "the guest closed its session socket before the bootstrap");
        }
        Err(e) => {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            return Err(anyhow::Error::new(e).context("setting up the guest's session"));
        }
    }
    let plan = confine::Plan {
        guest_pid: i32::try_from(spawned.child.id()).ok(),
        bind_privileged_ports,
        ..confine::Plan::default()
    };
    if let Err(e) = confine_now(confined, &plan).and_then(|()| run_resolver(resolver.as_ref())) {
        let _ = spawned.child.kill();
        let _ = spawned.child.wait();
        return Err(e);
    }
    let GuestOutcome::Exited(status) = monitor
        .run_guest(&mut spawned.child, spawned.pidfd.as_ref(), grace)
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

/// Whether the policy lets guests listen on ports only a privileged
/// process may bind (the confined monitor then keeps that one capability).
fn privileged_ports(policy: &Policy) -> bool {
    confine::needs_privileged_ports(policy, confine::unprivileged_port_start())
}

/// Confines the monitor as `plan` says ([`confine::confine`]), or, when
/// `confined` is off, only switches to `plan.user`.
fn confine_now(confined: bool, plan: &confine::Plan) -> anyhow::Result<()> {
    if !confined {
        if let Some(user) = &plan.user {
            confine::switch_user(user, false)?;
        }
        // The same attempts unconfined, so tests can see them succeed.
        #[cfg(feature = "confine-test")]
        {
            confine::test_hooks::after_landlock();
            confine::test_hooks::after_confine();
        }
        return Ok(());
    }
    let report = confine::confine(plan).context("confining the monitor")?;
    match report.landlock {
        confine::LandlockState::Full => {}
        confine::LandlockState::Partial => {
            tracing::warn!("this kernel's Landlock enforces only part of the file system rules")
        }
        confine::LandlockState::Unavailable => tracing::warn!(
            "Landlock is not available on this kernel: file system access is limited by the \
             seccomp filter alone"
        ),
    }
    if report.threads > 1 {
        tracing::warn!(
            threads = report.threads,
            "threads started before confinement have the seccomp filter but not Landlock or \
             the capability drop"
        );
    }
    tracing::info!(
        landlock = ?report.landlock,
        bounding_set_dropped = report.bounding_set_dropped,
        capabilities = format!("{:#x}", report.kept_capabilities),
        allowed_calls = report.allowed_calls,
        user = plan.user.as_ref().map(|u| u.name.as_str()),
        "confined"
    );
    #[cfg(feature = "confine-test")]
    confine::test_hooks::after_confine();
    Ok(())
}

/// Starts the resolver's thread, once the monitor is confined (it inherits the
/// confinement, Landlock and the capability drop included).
fn run_resolver(resolver: Option<&Resolver>) -> anyhow::Result<()> {
    match resolver {
        Some(r) => r.run().context("starting the resolver thread"),
        None => Ok(()),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not a file mode in octal (examples: 600, 660)"))
}

/// Descriptors each session holds however idle: its socket, region and two
/// doorbells.
const FDS_PER_SESSION: u64 = 4;
/// Descriptors kept for the monitor itself (epoll, signals, logs, ...).
const FDS_RESERVED: u64 = 64;
/// Descriptors each worker holds: its epoll and its waker.
const FDS_PER_WORKER: u64 = 2;

/// Raises the soft descriptor limit to the hard one and lowers
/// `max_sessions` so that every session's fixed descriptors fit.
fn fit_descriptor_limit(config: &mut Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let workers = u64::try_from(config.workers).unwrap_or(u64::MAX);
    let reserved = FDS_RESERVED.saturating_add(workers.saturating_mul(FDS_PER_WORKER));
    let fits = usize::try_from(limit.saturating_sub(reserved) / FDS_PER_SESSION)
        .unwrap_or(usize::MAX)
        .max(1);
    if config.max_sessions > fits {
        tracing::warn!(
            descriptors = limit,
            sessions = fits,
            "the descriptor limit caps the sessions served at once"
        );
        config.max_sessions = fits;
    }
    tracing::info!(
        descriptors = limit,
        sessions = config.max_sessions,
        "descriptor limit"
    );
}

fn serve(
    socket: &std::path::Path,
    access: Access,
    mut config: Config,
    user: Option<confine::User>,
    confined: bool,
) -> anyhow::Result<ExitCode> {
    fit_descriptor_limit(&mut config);
    let bind_privileged_ports = privileged_ports(&config.policy);
    let resolver = config.resolver.clone();
    let mut monitor = Monitor::new(config).context("starting the monitor")?;
    monitor
        .handle_signals()
        .context("installing signal handlers")?;
    // Refusals here (a live socket, a file in the way) are configuration
    // errors; the socket is removed when `monitor` drops, if still ours.
    if let Err(e) = monitor.listen_unix_with(socket, access) {
        eprintln!("arca-monitor: {e}");
        return Ok(ExitCode::from(USAGE));
    }
    let plan = confine::Plan {
        socket: Some(socket.to_path_buf()),
        bind_privileged_ports,
        user,
        ..confine::Plan::default()
    };
    confine_now(confined, &plan)?;
    run_resolver(resolver.as_ref())?;
    monitor.run().context("serving guests")?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli_log::init("ARCA_LOG", "warn");
    if let Command::Netstack { args } = cli.command {
        return arca_netstack::main_with(args);
    }
    let (sizes, policy, names) = match &cli.command {
        Command::Run {
            sizes,
            policy,
            names,
            ..
        }
        | Command::Serve {
            sizes,
            policy,
            names,
            ..
        } => (sizes, policy, names),
        Command::Policy {
            print_default,
            check,
            print,
        } => return policy_command(*print_default, check.as_deref(), *print),
        Command::Netstack { .. } => return ExitCode::FAILURE,
    };
    if let Command::Run { confine: how, .. } | Command::Serve { confine: how, .. } = &cli.command {
        if how.no_confine {
            tracing::warn!(
                "--no-confine: NOT CONFINED. The monitor keeps every system call, file and \
                 capability it started with; a compromise of it is a compromise of this user"
            );
        }
    }
    // Bad configuration is a usage error (2), like clap's own.
    let config = match policy
        .load()
        .map_err(anyhow::Error::new)
        .and_then(|p| sizes.config(p))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("arca-monitor: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    let config = match names.prepare() {
        Ok(resolver) => Config { resolver, ..config },
        Err(e) => {
            eprintln!("arca-monitor: starting the resolver: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Command::Run {
            isolate,
            net,
            grace,
            program,
            confine: how,
            workers,
            ..
        } => {
            let config = workers.apply(config, 1);
            match config.validate() {
                Ok(()) => run(
                    *isolate,
                    *net,
                    Duration::from_secs_f64(*grace),
                    config,
                    program,
                    !how.no_confine,
                ),
                Err(e) => {
                    eprintln!("arca-monitor: {e}");
                    return ExitCode::from(USAGE);
                }
            }
        }
        Command::Serve {
            socket,
            socket_mode,
            allow_uid,
            allow_gid,
            max_sessions,
            max_sessions_per_uid,
            user,
            confine: how,
            workers,
            ..
        } => {
            let user = match user.as_deref().map(confine::User::lookup).transpose() {
                Ok(user) => user,
                Err(e) => {
                    eprintln!("arca-monitor: --user: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            let access = Access {
                mode: *socket_mode,
                uids: allow_uid.clone(),
                gids: allow_gid.clone(),
            };
            let config = workers.apply(
                Config {
                    max_sessions: *max_sessions,
                    max_sessions_per_uid: *max_sessions_per_uid,
                    ..config
                },
                arca_monitor::cpus::available().min(arca_monitor::config::MAX_WORKERS),
            );
            match config.validate() {
                Ok(()) => serve(socket, access, config, user, !how.no_confine),
                Err(e) => {
                    eprintln!("arca-monitor: {e}");
                    return ExitCode::from(USAGE);
                }
            }
        }
        Command::Policy { .. } | Command::Netstack { .. } => Ok(ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arca-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The policy file's sections that `path` leaves out (they keep the
/// default's rules, POLICY.md §1).
fn defaulted_sections(path: &std::path::Path) -> Vec<&'static str> {
    let table = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default();
    ["limits", "outbound", "listen", "multicast"]
        .into_iter()
        .filter(|s| !table.contains_key(*s))
        .collect()
}

fn policy_command(print_default: bool, check: Option<&std::path::Path>, print: bool) -> ExitCode {
    match (print_default, check) {
        (_, Some(path)) => match Policy::load(path) {
            Ok(policy) => {
                let defaulted = defaulted_sections(path);
                if defaulted.is_empty() {
                    eprintln!("{}: ok", path.display());
                } else {
                    eprintln!(
                        "{}: ok; sections taken from the default policy: {} (--print shows the effective policy)",
                        path.display(),
                        defaulted.join(", ")
                    );
                }
                if print {
                    print!("{}", policy.to_toml());
                }
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
