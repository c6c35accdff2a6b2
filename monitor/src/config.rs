//! Monitor settings: region and pipe sizes, per-turn work bounds.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policy;

/// Why a [`Config`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The region size is not a power of two of at least 1 MiB.
    #[error("region size {0} must be a power of two of at least 1 MiB")]
    RegionSize(u64),
    /// A ring's capacity is out of range.
    #[error("{ring} capacity {cap} must be a power of two between 4096 and 2^{max_log2}")]
    RingSize {
        /// Which ring.
        ring: &'static str,
        /// The capacity asked for.
        cap: u64,
        /// Its largest allowed power of two.
        max_log2: u32,
    },
    /// The UDP ring's capacity is out of range.
    #[error("udp ring capacity {0} must be a power of two between 128 KiB and 2^30")]
    UdpRingSize(u64),
    /// The region cannot hold the fixed structures and one data pipe.
    #[error("region size {region} cannot hold the control pipe, the bitmap and one data pipe ({need} bytes)")]
    RegionTooSmall {
        /// The region size.
        region: u64,
        /// What it must hold.
        need: u64,
    },
    /// More workers than [`MAX_WORKERS`].
    #[error("{0} workers asked for; at most {MAX_WORKERS}")]
    Workers(usize),
    /// A count or budget that must be non-zero is zero.
    #[error("{0} must be non-zero")]
    Zero(&'static str),
}

/// How the monitor sizes each guest's resources. Defaults suit a guest with
/// up to a few thousand connections.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes of each guest's shared region (a power of two).
    pub region_size: u64,
    /// Capacity of each ring of the control pipe.
    pub control_ring: u64,
    /// Capacity of a connection's host → guest ring; its guest → host ring is
    /// twice this ([`upload_ring`](Config::upload_ring)).
    pub data_ring: u64,
    /// Connection slots per guest (size of the notification bitmap).
    pub max_conns: u32,
    /// Capacity of each ring of a UDP socket's pipe, in bytes (at least
    /// 128 KiB, so any datagram record fits).
    pub udp_ring: u64,
    /// Bytes moved per connection per direction per turn, so one busy
    /// connection cannot starve the rest or the control pipe.
    pub relay_budget: usize,
    /// Control requests handled per guest per turn.
    pub control_budget: usize,
    /// Replies a guest may leave unread before the monitor stops reading its
    /// requests (backpressure on the control pipe).
    pub max_outbox_bytes: usize,
    /// After doing work, keep polling without sleeping for this long, so a
    /// flowing exchange does not pay a wake per hop. An empty poll yields the
    /// CPU to any thread waiting for it, so the polling never delays the
    /// guest or a local peer on a machine with few cores; while yields show
    /// the CPU contended (`shm_ring::cpu_contended`) the loop sleeps instead.
    pub busy_poll: Duration,
    /// Listen backlog when the guest asks for 0.
    pub default_backlog: u32,
    /// What guests may reach and hold (POLICY.md); shared by every session.
    pub policy: Arc<Policy>,
    /// Sessions served at once; an attach beyond it is refused.
    pub max_sessions: usize,
    /// Sessions one user (by the attaching peer's uid) may hold at once.
    pub max_sessions_per_uid: usize,
    /// Worker threads, each an event loop owning whole sessions; new guests
    /// go to the least-loaded one. At most [`MAX_WORKERS`].
    pub workers: usize,
    /// Pin worker `i` to the `i`-th CPU the process may use.
    pub pin: bool,
    /// Resolves names for guests (`Resolve`); without one, every `Resolve` is answered
    /// `ResolverFailure`.
    pub resolver: Option<crate::resolver::Resolver>,
    /// How long past its TTL an address learned through an allowed name stays allowed
    /// (POLICY.md §5): a guest that resolved just before the answer expired still connects.
    pub learn_grace: Duration,
}

/// The most workers a monitor runs.
pub const MAX_WORKERS: usize = 1024;

impl Default for Config {
    fn default() -> Self {
        Self {
            region_size: 256 << 20,
            control_ring: 64 << 10,
            data_ring: 256 << 10,
            max_conns: 16384,
            udp_ring: 256 << 10,
            relay_budget: 256 << 10,
            control_budget: 256,
            max_outbox_bytes: 256 << 10,
            busy_poll: Duration::from_micros(50),
            default_backlog: 1024,
            policy: Arc::new(Policy::default()),
            max_sessions: 1024,
            max_sessions_per_uid: 64,
            workers: 1,
            pin: false,
            resolver: None,
            learn_grace: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Capacity of a connection's guest → host ring: twice [`data_ring`](Config::data_ring).
    /// A pipe block (4 KiB of headers and both rings) is rounded up to a power of two,
    /// 4 × `data_ring`, so with equal rings a quarter of it would lie unused; the
    /// guest → host ring takes it, at no cost in region space. Uploads gain most from it: a
    /// guest fills its ring far faster than the monitor can send, so the larger ring halves
    /// how often the guest must sleep and be woken (BENCHMARKS.md).
    pub fn upload_ring(&self) -> u64 {
        self.data_ring.saturating_mul(2)
    }

    /// The size of one connection's pipe block as the allocator hands it out.
    pub fn data_pipe_block(&self) -> u64 {
        shm_ring::BidirectionalPipe::block_size(self.upload_ring(), self.data_ring)
    }

    /// Checks the sizes fit together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.region_size.is_power_of_two() || self.region_size < (1 << 20) {
            return Err(ConfigError::RegionSize(self.region_size));
        }
        // The data ring's guest → host twin is twice it, and no ring exceeds 2^30.
        for (ring, cap, max_log2) in [
            ("control ring", self.control_ring, 30),
            ("data ring", self.data_ring, 29),
        ] {
            if !cap.is_power_of_two() || !(4096..=(1 << max_log2)).contains(&cap) {
                return Err(ConfigError::RingSize {
                    ring,
                    cap,
                    max_log2,
                });
            }
        }
        if !self.udp_ring.is_power_of_two() || !((128 << 10)..=(1 << 30)).contains(&self.udp_ring) {
            return Err(ConfigError::UdpRingSize(self.udp_ring));
        }
        let need = shm_ring::BidirectionalPipe::block_size(self.control_ring, self.control_ring)
            + shm_ring::NotifyBitmap::bytes_for(self.max_conns)
            + self.data_pipe_block();
        if need > self.region_size {
            return Err(ConfigError::RegionTooSmall {
                region: self.region_size,
                need,
            });
        }
        if self.max_conns == 0 || self.relay_budget == 0 || self.control_budget == 0 {
            return Err(ConfigError::Zero(
                "max_conns, relay_budget and control_budget",
            ));
        }
        if self.max_sessions == 0 || self.max_sessions_per_uid == 0 {
            return Err(ConfigError::Zero("the session limits"));
        }
        if self.workers == 0 {
            return Err(ConfigError::Zero("workers"));
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Workers(self.workers));
        }
        Ok(())
    }
}
