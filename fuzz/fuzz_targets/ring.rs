//! A pipe's owner (the monitor's side) against a peer that stores arbitrary
//! words into the ring headers between operations. The program interpreter
//! and its checks are shared with `shm-ring/tests/fuzz_ring.rs`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../shm-ring/tests/ring_ops/mod.rs"]
mod ring_ops;

/// One region and allocator for the whole run (a region per input would
/// measure memfd creation, not the ring).
static FIXTURE: OnceLock<ring_ops::Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let f = FIXTURE.get_or_init(ring_ops::Fixture::new);
    ring_ops::run(f, data);
    assert_eq!(f.alloc.stats().allocated, 0, "a pipe block leaked");
});
