//! Name resolution for guests, off the event loop (PROTOCOL.md `Resolve`, POLICY.md §5).
//!
//! One dedicated thread runs a current-thread tokio runtime and a `hickory-resolver`
//! resolver, which keeps a cache of answers for their TTL and of failures (NXDOMAIN, no
//! records) for theirs. Everything it reads from files — `/etc/resolv.conf` and `/etc/hosts`
//! for the host's configuration — is read by [`Resolver::prepare`], at start-up, before the
//! monitor confines itself; the thread starts after ([`Resolver::run`]), confined like the
//! rest; with `--resolver ADDR[:PORT]` it asks that one server and reads
//! no file at all.
//!
//! Requests come in through a channel ([`ResolverClient::submit`]); each answer goes back to
//! the [`Inbox`] of the event loop that asked, whose [`mio::Waker`] wakes that loop. A
//! [`ResolverClient`] is `Send` and cheap to clone, so each session holds its own and any
//! number of event loops can share one resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_wire::{Answer, ErrorCode, FamilyHint, RequestId};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use tokio::sync::mpsc;

use crate::session::SessionId;

/// Where the resolver asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The host's configuration: the servers, search list and options of
    /// `/etc/resolv.conf`, and `/etc/hosts`.
    System,
    /// This one server (UDP, then TCP for a truncated answer); no hosts file.
    Server(SocketAddr),
}

/// How the resolver behaves.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    /// Where it asks.
    pub upstream: Upstream,
    /// How long one resolution may take in all before it fails with `TimedOut`.
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            upstream: Upstream::System,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The thread or its runtime could not be created.
    #[error("starting the resolver thread: {0}")]
    Io(#[from] std::io::Error),
    /// The host's resolver configuration could not be read.
    #[error("reading the host's resolver configuration: {0}")]
    Config(#[from] ResolveError),
}

/// What a resolution came to.
pub type Outcome = Result<Vec<Answer>, ErrorCode>;

/// One finished resolution, for the event loop to hand to its session.
#[derive(Debug)]
pub struct Resolved {
    /// The session that asked.
    pub session: SessionId,
    /// Its request.
    pub request: RequestId,
    /// The addresses (at most [`arca_wire::MAX_ANSWERS`]) or why there are none.
    pub outcome: Outcome,
}

/// Where one event loop receives finished resolutions: a queue, and the waker of its poll.
#[derive(Debug)]
pub struct Inbox {
    done: Mutex<Vec<Resolved>>,
    waker: mio::Waker,
}

impl Inbox {
    /// An inbox that wakes `registry`'s poll with `token`.
    ///
    /// # Errors
    /// Creating the waker failed.
    pub fn new(registry: &mio::Registry, token: mio::Token) -> std::io::Result<Self> {
        Ok(Self {
            done: Mutex::new(Vec::new()),
            waker: mio::Waker::new(registry, token)?,
        })
    }

    fn push(&self, r: Resolved) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        // A failed wake leaves the answer queued for the loop's next wake-up.
        let _ = self.waker.wake();
    }

    /// Takes every finished resolution.
    pub fn take(&self) -> Vec<Resolved> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Job {
    session: SessionId,
    request: RequestId,
    name: String,
    family: FamilyHint,
    inbox: Arc<Inbox>,
}

/// The resolver: cloning shares it. Built by [`Resolver::prepare`] (which reads every file
/// it needs), serving once [`Resolver::run`] has started its thread; requests submitted in
/// between wait in its queue. The thread ends when the last clone (and every client) is
/// dropped.
#[derive(Clone)]
pub struct Resolver {
    jobs: mpsc::UnboundedSender<Job>,
    /// What the thread runs, until [`Resolver::run`] takes it.
    parked: Arc<Mutex<Option<Parked>>>,
}

/// A built resolver and its runtime, waiting for a thread.
struct Parked {
    rt: tokio::runtime::Runtime,
    resolver: TokioResolver,
    jobs: mpsc::UnboundedReceiver<Job>,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("open", &!self.jobs.is_closed())
            .finish()
    }
}

impl Resolver {
    /// Builds the resolver on this thread, reading the configuration `settings` names, and
    /// starts its thread: [`Resolver::prepare`] then [`Resolver::run`].
    ///
    /// # Errors
    /// As those two.
    pub fn start(settings: ResolverSettings) -> Result<Resolver, StartError> {
        let r = Self::prepare(settings)?;
        r.run()?;
        Ok(r)
    }

    /// Builds the resolver and its runtime on this thread, reading every file it needs,
    /// without starting its thread: the monitor prepares it before confining itself and
    /// runs it after, so the thread is confined like every other.
    ///
    /// # Errors
    /// [`StartError`] when the runtime cannot be made or the host's configuration cannot be
    /// read.
    pub fn prepare(settings: ResolverSettings) -> Result<Resolver, StartError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Io)?;
        let resolver = {
            let _in_runtime = rt.enter();
            build(&settings)?
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        Ok(Resolver {
            jobs,
            parked: Arc::new(Mutex::new(Some(Parked {
                rt,
                resolver,
                jobs: rx,
                timeout: settings.timeout,
            }))),
        })
    }

    /// Starts the resolver's thread; a second call does nothing.
    ///
    /// # Errors
    /// The thread cannot be started (or the signal mask set around it).
    pub fn run(&self) -> Result<(), StartError> {
        let Some(parked) = self.parked.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        // The thread starts with every signal blocked (it inherits the mask of the thread that
        // spawns it): the monitor takes its stop signals through a signalfd, which works only
        // while no thread of the process would take them itself.
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))
            .map_err(std::io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("arca-resolver".into())
            .spawn(move || {
                let Parked {
                    rt,
                    resolver,
                    jobs,
                    timeout,
                } = parked;
                rt.block_on(serve(Arc::new(resolver), jobs, timeout));
            });
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(std::io::Error::from)?;
        spawned?;
        Ok(())
    }

    /// A client whose answers go to `inbox`.
    pub fn client(&self, inbox: Arc<Inbox>) -> ResolverClient {
        ResolverClient {
            jobs: self.jobs.clone(),
            inbox,
        }
    }
}

/// A session's way to the resolver: submits names, and its event loop's [`Inbox`] gets the
/// answers.
#[derive(Debug, Clone)]
pub struct ResolverClient {
    jobs: mpsc::UnboundedSender<Job>,
    inbox: Arc<Inbox>,
}

impl ResolverClient {
    /// Asks for `name`'s addresses of `family`; the answer arrives in the inbox tagged with
    /// `session` and `request`. The caller bounds how many it has outstanding.
    ///
    /// # Errors
    /// `ResolverFailure` when the resolver thread is gone.
    pub fn submit(
        &self,
        session: SessionId,
        request: RequestId,
        name: &str,
        family: FamilyHint,
    ) -> Result<(), ErrorCode> {
        self.jobs
            .send(Job {
                session,
                request,
                name: name.to_owned(),
                family,
                inbox: Arc::clone(&self.inbox),
            })
            .map_err(|_| ErrorCode::ResolverFailure)
    }
}

fn build(settings: &ResolverSettings) -> Result<TokioResolver, StartError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match &settings.upstream {
        Upstream::System => TokioResolver::builder(provider)?,
        Upstream::Server(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            let mut b = TokioResolver::builder_with_config(config, provider);
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = settings.timeout;
    opts.attempts = 1;
    Ok(builder.build())
}

async fn serve(
    resolver: Arc<TokioResolver>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    limit: Duration,
) {
    while let Some(job) = jobs.recv().await {
        let resolver = Arc::clone(&resolver);
        tokio::spawn(async move {
            let lookup = tokio::time::timeout(limit, resolver.lookup_ip(job.name.as_str())).await;
            let outcome = match lookup {
                Err(_) => Err(ErrorCode::TimedOut),
                Ok(Err(e)) => Err(code_for(&e)),
                Ok(Ok(found)) => {
                    let left = found
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    answers(found.iter(), job.family, left)
                }
            };
            job.inbox.push(Resolved {
                session: job.session,
                request: job.request,
                outcome,
            });
        });
    }
}

/// The answer entries for `addrs` of `family`, each valid for `left` (rounded up to a
/// second); `NoSuchName` when none is of that family.
fn answers(addrs: impl Iterator<Item = IpAddr>, family: FamilyHint, left: Duration) -> Outcome {
    let ttl =
        u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
    let mut list: Vec<Answer> = Vec::new();
    for addr in addrs.filter(|a| family.admits(*a)) {
        if !list.iter().any(|a| a.addr == addr) {
            list.push(Answer { addr, ttl });
        }
    }
    // IPv4 first, as the resolver's IPv4-and-IPv6 strategy answers, whatever the merge order.
    list.sort_by_key(|a| a.addr.is_ipv6());
    list.truncate(arca_wire::MAX_ANSWERS);
    if list.is_empty() {
        Err(ErrorCode::NoSuchName)
    } else {
        Ok(list)
    }
}

/// The code for a failed lookup.
fn code_for(e: &ResolveError) -> ErrorCode {
    if e.is_nx_domain() || e.is_no_records_found() {
        ErrorCode::NoSuchName
    } else if e
        .proto()
        .is_some_and(|p| matches!(p.kind(), ProtoErrorKind::Timeout))
    {
        ErrorCode::TimedOut
    } else {
        ErrorCode::ResolverFailure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_family_asked_for_ipv4_first_without_repeats() {
        let addrs: Vec<IpAddr> = ["2001:db8::1", "192.0.2.1", "192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let left = Duration::from_millis(1500);
        let any = answers(addrs.iter().copied(), FamilyHint::Any, left).unwrap();
        let got: Vec<String> = any.iter().map(|a| a.addr.to_string()).collect();
        assert_eq!(got, ["192.0.2.1", "192.0.2.2", "2001:db8::1"]);
        assert!(any.iter().all(|a| a.ttl == 2), "rounded up");
        let v6 = answers(addrs.iter().copied(), FamilyHint::V6, left).unwrap();
        assert_eq!(v6.len(), 1);
        let only_v4 = addrs.iter().copied().filter(IpAddr::is_ipv4);
        assert_eq!(
            answers(only_v4, FamilyHint::V6, left),
            Err(ErrorCode::NoSuchName)
        );
        let many = (0..20u8).map(|i| IpAddr::from([10, 0, 0, i]));
        assert_eq!(
            answers(many, FamilyHint::Any, left).unwrap().len(),
            arca_wire::MAX_ANSWERS
        );
    }
}
