//! Shared helpers for the workspace-level tests, examples and benchmarks.
