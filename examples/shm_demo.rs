//! The interim main job: two processes move data both ways at once over one
//! shm-ring pipe in a sealed shared-memory region, and say what they did.
//!
//! ```text
//! cargo run --release --example shm_demo [MiB per direction, default 1024]
//! ```
//!
//! The parent creates and seals the region, carves the pipe out of it, and
//! re-executes this binary as the peer (`ARCA_TWOPROC_ROLE=shm-demo-peer`),
//! which inherits the memfd, four eventfd doorbells and a liveness socket.
//! Each process runs a writer thread and a reader thread; each reader checks
//! the CRC-32C of everything it received against the stream it expected.

use std::io;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use arca_testkit::pattern::{Pattern, Tally, DEFAULT_PERIOD};
use arca_testkit::shm_link::{LinkEnd, OwnerLink};
use arca_testkit::twoproc::{monotonic_ns, report, ChildCommand, ChildEnv};

const ROLE: &str = "shm-demo-peer";
const RING: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
const SEED_TO_PEER: u64 = 0x5eed_0001;
const SEED_TO_OWNER: u64 = 0x5eed_0002;
const CHUNK: usize = 64 << 10;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What one side saw, in `CLOCK_MONOTONIC` nanoseconds (shared by both
/// processes): when it started, when its reader saw EOF; and what arrived.
struct Run {
    start_ns: u64,
    rx_done_ns: u64,
    rx: Tally,
}

/// Sends `total` bytes of `out` and receives to EOF, on two threads.
fn duplex(end: LinkEnd, out: Pattern, total: u64) -> Result<Run, Error> {
    let (mut rd, mut wr) = end.into_stream(Some(TIMEOUT)).split();
    let start_ns = monotonic_ns();
    let writer = thread::spawn(move || -> io::Result<()> {
        out.write_to(&mut wr, total, &[CHUNK])?;
        wr.shutdown();
        Ok(())
    });
    let rx = Tally::read_all(&mut rd, &[CHUNK])?;
    let rx_done_ns = monotonic_ns();
    writer.join().map_err(|_| "writer thread panicked")??;
    Ok(Run {
        start_ns,
        rx_done_ns,
        rx,
    })
}

fn peer(env: &ChildEnv) -> Result<(), Error> {
    let total: u64 = env.parse("BYTES")?;
    let end = LinkEnd::from_child_env(env)?;
    let run = duplex(end, Pattern::new(SEED_TO_OWNER, DEFAULT_PERIOD), total)?;
    report(&[
        ("rx_bytes", &run.rx.bytes),
        ("rx_crc", &run.rx.crc),
        ("start_ns", &run.start_ns),
        ("rx_done_ns", &run.rx_done_ns),
    ])?;
    Ok(())
}

fn owner(mib: u64) -> Result<bool, Error> {
    let total = mib << 20;
    let mut link = OwnerLink::new("shm-demo", RING, RING)?;
    let layout = link.layout();
    let cmd = link.hand_to(ChildCommand::new(ROLE).var("BYTES", total))?;
    let child = cmd.spawn()?;
    let pid = child.id();
    let run = duplex(
        link.into_end(),
        Pattern::new(SEED_TO_PEER, DEFAULT_PERIOD),
        total,
    )?;
    let out = child.finish(TIMEOUT)?;
    if !out.status.success() {
        return Err(format!("peer exited with {}", out.status).into());
    }
    let rep = out.report();
    let get = |k: &str| -> Result<u64, Error> {
        Ok(rep
            .get(k)
            .ok_or_else(|| format!("peer report lacks {k}"))?
            .parse()?)
    };
    let to_peer_crc = Pattern::new(SEED_TO_PEER, DEFAULT_PERIOD).expected_crc(total);
    let to_owner_crc = Pattern::new(SEED_TO_OWNER, DEFAULT_PERIOD).expected_crc(total);
    let (peer_bytes, peer_crc) = (get("rx_bytes")?, get("rx_crc")?);
    let peer_ok = peer_bytes == total && peer_crc == u64::from(to_peer_crc);
    let owner_ok = run.rx.bytes == total && run.rx.crc == to_owner_crc;
    // Both directions are timed from the moment both processes were running
    // to the moment the receiving side saw the last byte.
    let both_up = run.start_ns.max(get("start_ns")?);
    let secs = |done: u64| done.saturating_sub(both_up).max(1) as f64 / 1e9;
    let (to_peer_s, to_owner_s) = (secs(get("rx_done_ns")?), secs(run.rx_done_ns));
    let mark = |ok: bool| if ok { "match" } else { "MISMATCH" };

    println!("shm-ring demo: two processes, one sealed memfd, both directions at once");
    println!(
        "  pipe at offset {:#x}, {} KiB ring each way; peer pid {pid}",
        layout.offset().get(),
        RING >> 10
    );
    println!(
        "  owner -> peer: {peer_bytes} bytes in {to_peer_s:.3} s = {:.2} GB/s, crc32c {peer_crc:08x} (expected {to_peer_crc:08x}) {}",
        peer_bytes as f64 / to_peer_s / 1e9,
        mark(peer_ok)
    );
    println!(
        "  peer -> owner: {} bytes in {to_owner_s:.3} s = {:.2} GB/s, crc32c {:08x} (expected {to_owner_crc:08x}) {}",
        run.rx.bytes,
        run.rx.bytes as f64 / to_owner_s / 1e9,
        run.rx.crc,
        mark(owner_ok)
    );
    Ok(peer_ok && owner_ok)
}

fn main() -> ExitCode {
    if let Some(env) = ChildEnv::get() {
        if env.role() != ROLE {
            eprintln!("shm_demo: unknown child role {}", env.role());
            return ExitCode::FAILURE;
        }
        return match peer(env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shm_demo peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mib = match std::env::args().nth(1).map(|a| a.parse::<u64>()) {
        None => 1024,
        Some(Ok(m)) if m > 0 => m,
        Some(_) => {
            eprintln!("usage: shm_demo [MiB per direction, default 1024]");
            return ExitCode::FAILURE;
        }
    };
    match owner(mib) {
        Ok(true) => {
            println!("  checksums match both ways");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("shm_demo: checksum or byte count mismatch");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("shm_demo: {e}");
            ExitCode::FAILURE
        }
    }
}
