//! Load: two guests hold 10,000 connections at once between them through one
//! `arca-monitor serve --workers 2` process (a guest on each worker) to a host
//! epoll echo server, move data through every one of them with every byte
//! verified, and close them all; the monitor's resident memory per idle
//! connection and the shared-region bytes per pipe are reported.
//!
//! `ARCA_LOAD_CONNS` sets the count (default 10,000; at most 16,383, the
//! monitor's default connection slots); `scripts/load N` runs it alone. The
//! monitor runs with a policy file raising the per-guest connection limit
//! and connect burst above the defaults (4,096 and 10,000).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_testkit::monitor_proc::MonitorProc;
use arca_testkit::pattern::{check, fill};
use arca_testkit::procfs::raise_nofile;
use arca_testkit::servers::EchoServer;
use arca_testkit::wait::wait_until;

/// Capacity of each ring of a data pipe: the smallest the monitor allows, so
/// 10,000 pipes fit a modest region.
const DATA_RING: u64 = 4096;
/// Bytes each connection sends per round (each way).
const PAYLOAD: usize = 1000;
/// Rounds of writes-to-all-then-reads-from-all.
const ROUNDS: u64 = 2;
/// Guest threads opening connections in parallel, spread over the guests.
const CONNECT_THREADS: usize = 4;
/// Guests, each a session of its own: the monitor serves each on its own
/// worker.
const GUESTS: usize = 2;

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

#[test]
fn ten_thousand_connections_across_two_workers_every_byte_verified() {
    let n: usize = std::env::var("ARCA_LOAD_CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    assert!(
        (1..=16_383).contains(&n),
        "ARCA_LOAD_CONNS must be 1..=16383 (the monitor's connection slots)"
    );
    // This process holds the echo server's end of every connection, the
    // monitor (which inherits the limit) the other.
    let want = (n as u64) + 1024;
    let limit = raise_nofile(want);
    if limit < want {
        // Root can always raise it (CI runs as root): there it is a failure.
        assert!(
            !nix::unistd::geteuid().is_root(),
            "cannot raise RLIMIT_NOFILE to {want} as root (got {limit})"
        );
        eprintln!(
            "SKIPPED: RLIMIT_NOFILE cannot be raised to {want} for this user (hard limit {limit}); \
             run as root or set ARCA_LOAD_CONNS below {}",
            limit.saturating_sub(1024)
        );
        return;
    }

    // Size the region: every pipe block (rounded up by the buddy allocator)
    // plus the control pipe and bitmap, with room to spare.
    let block = shm_ring::BidirectionalPipe::block_size(DATA_RING, DATA_RING).next_power_of_two();
    let region = ((n as u64) * block + (8 << 20)).next_power_of_two();
    let region_arg = region.to_string();
    let ring_arg = DATA_RING.to_string();
    // The default policy holds a guest to 4,096 connections and 10,000
    // connects in a burst: each guest is allowed the whole slot table.
    let policy = std::env::temp_dir().join(format!("arca-load-{}.toml", std::process::id()));
    std::fs::write(
        &policy,
        "[limits]\nconnections = 16384\nconnect_rate = 100000\nconnect_burst = 20000\n",
    )
    .expect("write the policy file");
    let policy_arg = policy.to_str().expect("utf-8 temp path").to_owned();
    let echo = EchoServer::start();
    let mon = MonitorProc::serve(
        "load",
        &[
            "--region-size",
            &region_arg,
            "--data-ring",
            &ring_arg,
            "--policy",
            &policy_arg,
            "--workers",
            &GUESTS.to_string(),
        ],
    );
    let _ = std::fs::remove_file(&policy);
    let sessions: Vec<ArcaSession> = (0..GUESTS)
        .map(|_| ArcaSession::attach(&mon.path).expect("attach"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = mon.rss();
    let fds_before = mon.fds();

    // Open n connections from CONNECT_THREADS threads, taking the guests in
    // turn.
    let t = Instant::now();
    let per = n.div_ceil(CONNECT_THREADS);
    let mut conns: Vec<arca::TcpStream> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECT_THREADS)
            .map(|k| {
                let session = &sessions[k % GUESTS];
                let target = echo.addr;
                s.spawn(move || {
                    let count = per.min(n.saturating_sub(k * per));
                    (0..count)
                        .map(|i| {
                            session.connect(target).unwrap_or_else(|e| {
                                panic!("connection {} of {n}: {e}", k * per + i)
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("connect thread panicked"))
            .collect()
    });
    let connect_time = t.elapsed();
    assert_eq!(conns.len(), n);
    assert!(
        wait_until(Duration::from_secs(20), || echo.counts.open() == n as u64),
        "echo server holds {} of {n} connections",
        echo.counts.open()
    );
    // All n idle and held: the memory they cost the monitor.
    std::thread::sleep(Duration::from_millis(200));
    let idle = mon.rss();
    let fds_held = mon.fds();

    // Every connection carries data at once: write to all, then read all back.
    let t = Instant::now();
    let mut verified = 0u64;
    let mut buf = vec![0u8; PAYLOAD];
    for round in 0..ROUNDS {
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_write_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            fill(i as u64, round * PAYLOAD as u64, &mut buf);
            c.write_all(&buf)
                .unwrap_or_else(|e| panic!("write on connection {i}: {e}"));
        }
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            c.read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("read on connection {i}, round {round}: {e}"));
            check(i as u64, round * PAYLOAD as u64, &buf)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            verified += PAYLOAD as u64;
        }
    }
    let transfer_time = t.elapsed();
    let busy = mon.rss();

    // Half-close every one; each must then see the echo's EOF.
    let t = Instant::now();
    for c in &conns {
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut rest = [0u8; 16];
        let k = c
            .read(&mut rest)
            .unwrap_or_else(|e| panic!("EOF on connection {i}: {e}"));
        assert_eq!(k, 0, "connection {i}: bytes after the echo's EOF");
    }
    drop(conns);
    let closed = wait_until(Duration::from_secs(20), || {
        echo.counts.open() == 0 && mon.fds() <= fds_before
    });
    let close_time = t.elapsed();

    let per_conn = idle.total.saturating_sub(before.total) / n as u64;
    let per_conn_anon = idle.anon.saturating_sub(before.anon) / n as u64;
    let per_conn_shmem = idle.shmem.saturating_sub(before.shmem) / n as u64;
    println!(
        "load: {n} connections held at once by {GUESTS} guests through one monitor with {GUESTS} workers"
    );
    println!(
        "load: connect {:.2} s ({:.0}/s), transfer {:.2} s, close {:.2} s",
        connect_time.as_secs_f64(),
        n as f64 / connect_time.as_secs_f64(),
        transfer_time.as_secs_f64(),
        close_time.as_secs_f64()
    );
    println!(
        "load: {verified} bytes sent and {verified} echoed bytes verified ({ROUNDS} rounds x {PAYLOAD} B x {n})"
    );
    println!(
        "load: monitor RSS {:.1} MiB before, {:.1} MiB with {n} idle, {:.1} MiB after traffic; \
         per idle connection {per_conn} B ({per_conn_anon} B private, {per_conn_shmem} B of touched shared region)",
        mib(before.total),
        mib(idle.total),
        mib(busy.total)
    );
    println!(
        "load: shared region {} MiB; {block} B per pipe block ({DATA_RING} B rings each way); monitor fds {fds_before} -> {fds_held} -> {}",
        region >> 20,
        mon.fds()
    );
    assert!(
        closed,
        "not released: echo connections open {}, monitor fds {} (before {fds_before})",
        echo.counts.open(),
        mon.fds()
    );
    assert!(
        fds_held >= fds_before + n,
        "the monitor held {fds_held} fds for {n} connections (before {fds_before})"
    );
    assert_eq!(verified, ROUNDS * (PAYLOAD * n) as u64);
    drop(sessions);
    let st = mon.stop();
    assert!(st.success(), "monitor exited with {st:?}");
}
