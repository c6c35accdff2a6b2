//! Loom models of the ring protocol (filled in below).
