#![forbid(unsafe_code)]
//! Wire types of the arca control protocol (see PROTOCOL.md).
