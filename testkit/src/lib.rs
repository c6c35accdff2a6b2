//! The test kit of the arca workspace: what the end-to-end tests (`tests/`), the monitor's
//! integration tests (`monitor/tests/`), the examples and the benchmarks share.
//!
//! Monitors and guests:
//! - [`in_proc`]: a monitor running on a thread of the test process.
//! - [`monitor_proc`]: `arca-monitor serve` as a child process; socket paths.
//! - [`raw_guest`]: a guest written against the wire format and shm-ring directly, for
//!   sending what no honest guest would.
//!
//! Processes:
//! - [`child`]: children killed and reaped by their guards; the test binary re-executed as
//!   a guest in a role.
//! - [`bins`]: where the workspace's binaries are, and building them with `$CARGO`.
//! - [`daisy_run`]: the Daisy binaries and their summary lines.
//! - [`lan_bed`]: a LAN of network namespaces with lossy, rate-limited, delayed links.
//! - [`twoproc`]: re-execute the current binary in a named role and hand it file
//!   descriptors; the child side reads them back.
//! - [`shm_link`]: one shm-ring pipe between a parent (owner) and a child (peer), handed
//!   over through [`twoproc`].
//! - [`procfs`]: descriptors, resident memory, CPU time and sockets of a process, from `/proc`.
//! - [`load`]: a busy-loop process per CPU, the standard load of the benchmarks under
//!   contention.
//! - [`wait`]: bounded polling waits.
//!
//! Data and peers:
//! - [`stats`]: medians and quantiles of measurements.
//! - [`pattern`]: deterministic byte streams with checksums computed without generating
//!   them, positional streams checkable at any offset, and a reader-side tally.
//! - [`servers`]: host-side echo and byte-counting servers on 127.0.0.1.
//! - [`dns`]: a DNS server on 127.0.0.1 with hand-built answers, for the monitor's
//!   `--resolver`.
//!
//! Every child is killed and reaped when its guard drops; every wait has a deadline.

use std::time::Duration;

pub mod bins;
pub mod child;
pub mod daisy_run;
pub mod dns;
pub mod in_proc;
pub mod lan_bed;
pub mod load;
pub mod monitor_proc;
pub mod pattern;
pub mod procfs;
pub mod raw_guest;
pub mod servers;
pub mod shm_link;
pub mod stats;
pub mod twoproc;
pub mod wait;

/// Upper bound for any single blocking step in a test.
pub const STEP: Duration = Duration::from_secs(20);
