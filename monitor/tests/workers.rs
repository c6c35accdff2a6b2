//! A monitor with several workers: guests spread across them and each moves
//! its bytes; the session limits hold across workers; a guest killed on one
//! worker while guests on the others move bytes; `serve --workers N` stopped
//! by SIGTERM while every worker is busy. Guests that must die are this test
//! binary re-executed in a guest role (`guest_entry`). A reuse-bound UDP port
//! stays one guest's across workers; `--pin` pins worker i to the i-th allowed
//! CPU, and only then. Every wait is bounded.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::{Config, MonitorStats};
use arca_testkit::child::{guest_command, read_marker, Reaped, ROLE};
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::monitor_proc::MonitorProc;
use arca_testkit::servers::{count_sink, echo_server};
use arca_testkit::wait::wait_until;

const TARGET: &str = "ARCA_TEST_TARGET";
const SOCKET: &str = "ARCA_TEST_SOCKET";
const WAIT: Duration = Duration::from_secs(10);

/// The guest side of the scenarios that kill a guest; only runs when
/// re-executed as a guest.
#[test]
#[ignore = "guest entry point: runs only when re-executed by the other tests"]
fn guest_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let target: SocketAddr = std::env::var(TARGET).unwrap().parse().unwrap();
    match role.as_str() {
        "stream_forever" => {
            let s = ArcaSession::attach(std::env::var(SOCKET).unwrap()).unwrap();
            let conns: Vec<_> = (0..4).map(|_| s.connect(target).unwrap()).collect();
            println!("guest-ready");
            std::io::stdout().flush().unwrap();
            let chunk = vec![7u8; 64 << 10];
            // Until killed; bounded all the same.
            let end = Instant::now() + Duration::from_secs(120);
            while Instant::now() < end {
                for mut c in &conns {
                    let _ = c.write_all(&chunk);
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn config(workers: usize) -> Config {
    Config {
        region_size: 16 << 20,
        data_ring: 64 << 10,
        max_conns: 64,
        workers,
        ..Config::default()
    }
}

/// Live sessions on each worker.
fn per_worker(st: &MonitorStats) -> Vec<usize> {
    st.workers.iter().map(|w| w.sessions.len()).collect()
}

/// A guest echoing verified rounds through its own connection on a thread
/// until `stop`; counts the rounds in `rounds`.
fn echo_rounds(
    s: ArcaSession,
    echo: SocketAddr,
    seed: u8,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let mut c = s.connect(echo).map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        let out: Vec<u8> = (0..32u32 << 10)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let mut back = vec![0u8; out.len()];
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            c.write_all(&out).map_err(|e| format!("write: {e}"))?;
            c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
            if back != out {
                return Err(format!("guest {seed}: echoed bytes differ"));
            }
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })
}

#[test]
fn guests_spread_across_workers_and_each_moves_its_bytes() {
    let m = InProcMonitor::start("workers-spread", config(3));
    let echo = echo_server();
    let sessions: Vec<ArcaSession> = (0..6).map(|_| m.session()).collect();
    let st = m.stats();
    assert_eq!(st.sessions.len(), 6);
    assert_eq!(per_worker(&st), vec![2, 2, 2], "{:?}", st.workers);

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<_> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let threads: Vec<_> = sessions
        .into_iter()
        .zip(&counters)
        .enumerate()
        .map(|(i, (s, n))| echo_rounds(s, echo, i as u8, Arc::clone(&stop), Arc::clone(n)))
        .collect();
    let all_moving = wait_until(WAIT, || {
        counters.iter().all(|n| n.load(Ordering::Relaxed) >= 20)
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert!(all_moving, "rounds: {counters:?}");
    // Every session ended on its own worker, and each worker counts its own.
    let (gone, st) = (
        wait_until(WAIT, || m.stats().sessions.is_empty()),
        m.stats(),
    );
    assert!(gone, "{st:?}");
    let ended: Vec<u64> = st.workers.iter().map(|w| w.ended).collect();
    assert_eq!(ended, vec![2, 2, 2]);
    assert_eq!((st.ended, st.unreclaimed), (6, 0));
}

#[test]
fn the_session_limits_hold_across_workers() {
    // All of this test's guests share its user: the per-user limit.
    let m = InProcMonitor::start(
        "workers-uid",
        Config {
            max_sessions_per_uid: 3,
            ..config(2)
        },
    );
    let mut held: Vec<_> = (0..3).map(|_| m.session()).collect();
    assert_eq!(per_worker(&m.stats()), vec![2, 1]);
    assert!(
        ArcaSession::attach(&m.path).is_err(),
        "a fourth session of one user"
    );
    // A place given back on one worker is free for the next guest.
    drop(held.remove(0));
    assert!(wait_until(WAIT, || m.stats().sessions.len() == 2));
    let again = ArcaSession::attach(&m.path);
    assert!(again.is_ok(), "{:?}", again.err());
    drop(m);

    let m = InProcMonitor::start(
        "workers-total",
        Config {
            max_sessions: 2,
            ..config(3)
        },
    );
    let held: Vec<_> = (0..2).map(|_| m.session()).collect();
    assert_eq!(per_worker(&m.stats()), vec![1, 1, 0]);
    assert!(
        ArcaSession::attach(&m.path).is_err(),
        "a third session with two allowed, a worker idle"
    );
    drop(held);
    assert!(wait_until(WAIT, || m.stats().sessions.is_empty()));
    let again: Vec<_> = (0..2).map(|_| ArcaSession::attach(&m.path)).collect();
    assert!(again.iter().all(Result::is_ok), "{again:?}");
}

#[test]
fn a_guest_killed_on_one_worker_leaves_the_others_moving() {
    let m = InProcMonitor::start("workers-kill", config(2));
    let echo = echo_server();
    let sink = count_sink();
    // The least-loaded worker, the first among equals, takes each guest:
    // worker 0 the first good guest, worker 1 the doomed one, worker 0 the
    // second good guest.
    let first = m.session();
    let mut cmd = guest_command("stream_forever");
    cmd.env(TARGET, sink.to_string()).env(SOCKET, &m.path);
    let mut doomed = Reaped(cmd.spawn().unwrap());
    assert!(
        read_marker(&mut doomed.0, "guest-ready", WAIT).is_some(),
        "the streaming guest never became ready"
    );
    let second = m.session();
    let st = m.stats();
    assert_eq!(per_worker(&st), vec![2, 1], "{:?}", st.workers);
    let doomed_worker = st
        .workers
        .iter()
        .position(|w| w.sessions.contains(&2))
        .expect("the streaming guest is session 2");

    let stop = Arc::new(AtomicBool::new(false));
    let counters = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let threads: Vec<_> = [first, second]
        .into_iter()
        .zip(&counters)
        .enumerate()
        .map(|(i, (s, n))| echo_rounds(s, echo, i as u8, Arc::clone(&stop), Arc::clone(n)))
        .collect();
    let total = || {
        counters
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    assert!(
        wait_until(WAIT, || total() >= 20),
        "no rounds before the kill"
    );

    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let at_kill: Vec<u64> = counters.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let reclaimed = wait_until(WAIT, || {
        let st = m.stats();
        st.sessions.len() == 2 && st.workers[doomed_worker].ended == 1
    });
    let st = m.stats();
    assert!(reclaimed, "the killed guest's session stays: {st:?}");
    assert_eq!(st.unreclaimed, 0);
    // Both good guests kept going through the kill and after it.
    let moved = wait_until(WAIT, || {
        counters
            .iter()
            .zip(&at_kill)
            .all(|(n, &k)| n.load(Ordering::Relaxed) >= k + 20)
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert!(moved, "rounds at the kill {at_kill:?}, now {counters:?}");
}

#[test]
fn serve_with_busy_workers_stops_promptly_on_sigterm() {
    let m = MonitorProc::serve("workers-stop", &["--workers", "2"]);
    let sink = count_sink();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let guests: Vec<_> = (0..4)
        .map(|_| {
            let s = ArcaSession::attach(&m.path).unwrap();
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                let Ok(mut c) = s.connect(sink) else { return };
                let chunk = vec![3u8; 64 << 10];
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    if c.write_all(&chunk).is_err() {
                        return; // the monitor went away
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    assert!(
        wait_until(WAIT, || sent.load(Ordering::Relaxed) >= 64 << 20),
        "the guests never got going: {} bytes",
        sent.load(Ordering::Relaxed)
    );
    let path = m.path.clone();
    let started = Instant::now();
    let status = m.stop();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for g in guests {
        g.join().unwrap();
    }
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    assert!(!path.exists(), "serve removes its socket on exit");
}

#[test]
fn serve_refuses_zero_workers_with_a_clear_error() {
    let out = std::process::Command::new(arca_testkit::bins::monitor_bin())
        .args(["serve", "--socket", "/nonexistent/x.sock", "--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workers must be non-zero"), "{err}");
}

#[test]
fn a_reuse_bound_udp_port_is_one_guests_across_workers() {
    let m = InProcMonitor::start("workers-reuse", config(2));
    let (a, b) = (m.session(), m.session());
    assert_eq!(per_worker(&m.stats()), vec![1, 1]);
    let first = a.bind_udp_reuse("127.0.0.1:0").unwrap();
    let port = first.local_addr().unwrap();
    let again = a.bind_udp_reuse(port);
    assert!(again.is_ok(), "its holder binds it again: {again:?}");
    let e = b.bind_udp_reuse(port).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::AddrInUse,
        "a guest on the other worker: {e}"
    );
    // Released when the holder's last socket on it closes.
    drop((first, again));
    let mut got = None;
    let freed = wait_until(WAIT, || {
        got = b.bind_udp_reuse(port).ok();
        got.is_some()
    });
    assert!(freed, "the port never came free for the other guest");
}

/// The CPUs thread `tid` of process `pid` may run on, as /proc lists them.
fn cpus_allowed(pid: u32, tid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The thread id of `pid`'s thread named `name`.
fn thread_named(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().into_owned())
}

#[test]
fn serve_pins_worker_i_to_the_i_th_allowed_cpu_only_when_asked() {
    let cpus = arca_monitor::cpus::allowed().unwrap();
    let want = [cpus[0].to_string(), cpus[1 % cpus.len()].to_string()];
    let m = MonitorProc::serve("workers-pin", &["--workers", "2", "--pin"]);
    let pid = m.pid();
    let mut seen = (None, None);
    let pinned = wait_until(WAIT, || {
        seen = (
            cpus_allowed(pid, &pid.to_string()),
            thread_named(pid, "arca-worker-1").and_then(|t| cpus_allowed(pid, &t)),
        );
        seen.0.as_deref() == Some(&want[0]) && seen.1.as_deref() == Some(&want[1])
    });
    assert!(pinned, "want {want:?}, threads allow {seen:?}");
    assert!(m.stop().success());

    // Unpinned, the workers may run wherever the monitor may.
    let everywhere = cpus_allowed(std::process::id(), &nix::unistd::gettid().to_string());
    let m = MonitorProc::serve("workers-nopin", &["--workers", "2"]);
    let pid = m.pid();
    let mut worker = None;
    assert!(wait_until(WAIT, || {
        worker = thread_named(pid, "arca-worker-1");
        worker.is_some()
    }));
    assert_eq!(cpus_allowed(pid, &pid.to_string()), everywhere);
    assert_eq!(cpus_allowed(pid, worker.as_deref().unwrap()), everywhere);
    assert!(m.stop().success());
}
