//! The arca monitor: the host daemon that gives sandboxed guests TCP through
//! shared memory.
//!
//! For each guest it creates a sealed shared region, a control pipe and two
//! eventfd doorbells, hands them over a Unix socket (PROTOCOL.md, "Session
//! bootstrap"), and then performs the guest's socket calls — listen, connect,
//! accept — on real kernel sockets, relaying each connection's bytes between
//! the socket and a data pipe. Sessions are spread over worker threads, each
//! an event loop owning whole sessions (`Config::workers`). The monitor also
//! resolves host names for guests, on a resolver thread of its own
//! ([`resolver`]), so its policy can speak in names (POLICY.md §5).
//!
//! # Trust model
//! The monitor is the security boundary. The guest and every byte it writes
//! into its region are untrusted: control frames are decoded by `arca-wire`,
//! which never panics; ring indices are validated on every load (a violation
//! closes that pipe alone); a guest names only ids of its own session; the
//! allocator's metadata lives in the monitor's private memory. A guest that
//! misbehaves loses its pipe or its session, never the monitor.

#![deny(unsafe_code)]

pub mod config;
pub mod confine;
pub mod cpus;
pub mod event_loop;
pub mod guest;
pub mod handoff;
pub mod limits;
pub mod net;
pub mod policy;
pub mod ratelimit;
pub mod relay;
pub mod resolver;
pub mod serve_socket;
pub mod session;
#[allow(unsafe_code)]
mod sys;
pub mod udp;
mod worker;

pub use config::{Config, ConfigError};
pub use event_loop::{GuestOutcome, Monitor, MonitorHandle, MonitorStats, WorkerStats};
pub use policy::Policy;
pub use session::{SessionId, SessionStats};
