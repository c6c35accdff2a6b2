//! The one place that names the atomic types used by the ring protocol.
//!
//! Under `cfg(loom)` they are loom's model-checked atomics; otherwise the
//! `core` ones. The rest of the crate imports from here, so the ring logic is
//! the same code in both builds.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
