//! Daisy: reliable multicast file distribution.
//!
//! One sender multicasts a file (or stdin) to N receivers in rounds: a round's packets go to
//! a UDP multicast group, each receiver asks over its own TCP control connection for what it
//! missed, and the next round starts when every receiver has written the round out. The wire
//! format is the deployed Daisy tool's, byte for byte (`daisy/WIRE.md`); negotiated
//! extensions (`DAISY-EXT.md`) add per-packet strong checks, a whole-transfer SHA-256, large
//! payloads and a "transfer is full" refusal, invisible to plain peers.
//!
//! # Design
//! The protocol lives in two sans-IO cores, [`sender::Sender`] and [`receiver::Receiver`]:
//! they take events (bytes from a peer, a datagram, the time now, a filled input buffer) and
//! emit actions (send these bytes, multicast these packets, deliver this round, drop that
//! receiver). They never touch a socket, clock or file, so the deterministic simulation in
//! `tests/sim.rs` drives them with seeded loss, duplication, reordering and forgery.
//!
//! The shells do the I/O: [`send_shell::run_sender`] is written once against the
//! [`net::SenderNet`] trait, with [`net::StdNet`] (host sockets) and [`net::ArcaNet`] (the
//! sender inside an isolated arca guest, its sockets relayed by the monitor);
//! [`recv_shell::run_receiver`] runs on the host with `recvmmsg` batches.
//!
//! # Trust and memory
//! Everything from the network is hostile: parsers return typed errors and never panic,
//! counts are capped before allocating, a receiver that misbehaves or stalls past its
//! deadline is dropped and the others finish. The sender holds one round's buffer shared by
//! all receivers; a receiver holds one round's slots and streams each round to its output.
//!
//! All `unsafe` (socket options and `poll`) is confined to the private `sys` module; the
//! batched socket calls are the `udp-batch` crate's.
#![deny(unsafe_code)]

pub mod net;
mod progress;
pub mod receiver;
pub mod recv_shell;
pub mod send_shell;
pub mod sender;
mod sys;
pub mod wire;

/// Throughput in MB/s (10^6 bytes per second), as the summary lines print it; 0 for no time.
pub(crate) fn mbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e6
    } else {
        0.0
    }
}
