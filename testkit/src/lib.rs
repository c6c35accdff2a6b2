//! The test kit of the arca workspace: what the end-to-end tests (`tests/`), the monitor's
//! integration tests (`monitor/tests/`), the examples and the benchmarks share.
//!
//! - [`twoproc`]: spawn a child process that re-executes the current binary in
//!   a named role and inherits chosen file descriptors; the child side reads
//!   them back. Every child is killed and reaped when its guard drops.
//! - [`shm_link`]: one shm-ring pipe between a parent (owner) and a child
//!   (peer): region memfd, four doorbells and a liveness socket, handed over
//!   through [`twoproc`].
//! - [`pattern`]: deterministic byte streams with a checksum that can be
//!   computed without generating the stream, and a reader-side tally.
//! - [`daisy_run`]: the Daisy binaries (and, for the examples' test, any workspace binary)
//!   as child processes for the end-to-end tests and the Daisy benchmark: locating or
//!   building them, process-group guards, summary lines, `/proc` socket look-ups.
//! - [`servers`]: host-side echo and byte-counting servers on 127.0.0.1.
//! - [`raw_guest`]: a guest written against the wire format and shm-ring directly.
//! - [`in_proc`]: a monitor running on a thread of the test process.
//! - [`monitor_proc`]: `arca-monitor` as a child process, guests re-executed from the test
//!   binary, an epoll echo server, `/proc` figures and bounded waits.

pub mod daisy_run;
pub mod in_proc;
pub mod monitor_proc;
pub mod pattern;
pub mod raw_guest;
pub mod servers;
pub mod shm_link;
pub mod twoproc;
