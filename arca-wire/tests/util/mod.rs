//! Helpers shared by the integration tests: the golden frames and proptest strategies.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod golden;
pub mod strategies;
