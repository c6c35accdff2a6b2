//! The monitor with real processes: `run --isolate`, a guest killed with
//! SIGKILL mid-transfer, the monitor killed with SIGKILL. Guests are this test
//! binary re-executed in a guest role (`guest_entry`, selected by
//! `ARCA_TEST_ROLE`). Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::{Config, Monitor};
use arca_testkit::bins::monitor_bin;
use arca_testkit::child::{guest_command, wait_exit, Reaped, GUEST_ARGS, ROLE};
use arca_testkit::monitor_proc::{self, socket_path, wait_for_socket};
use arca_testkit::procfs::open_fds;
use arca_testkit::servers::echo_server;

const TARGET: &str = "ARCA_TEST_TARGET";

/// Tests here count this process's descriptors, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This binary as a guest in `role`.
fn guest_cmd(program: &mut Command, role: &str, target: SocketAddr) {
    program
        .arg(std::env::current_exe().unwrap())
        .args(GUEST_ARGS)
        .env(ROLE, role)
        .env(TARGET, target.to_string());
}

/// The guest side of every scenario; only runs when re-executed as a guest.
#[test]
#[ignore = "guest entry point: runs only when re-executed by the other tests"]
fn guest_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let target: SocketAddr = std::env::var(TARGET).unwrap().parse().unwrap();
    match role.as_str() {
        "isolated" => {
            // No network of its own: the kernel refuses a direct connect.
            let direct = TcpStream::connect_timeout(&target, Duration::from_secs(2));
            assert!(
                direct.is_err(),
                "std::net reached {target} from the isolated guest"
            );
            let s = ArcaSession::from_env().unwrap();
            let mut c = s.connect(target).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"through the monitor").unwrap();
            let mut back = [0u8; 19];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"through the monitor");
            println!(
                "guest-report: direct={} arca=ok",
                direct.unwrap_err().kind()
            );
            std::process::exit(0);
        }
        "exit3" => {
            let _s = ArcaSession::from_env().unwrap();
            std::process::exit(3);
        }
        "stream_forever" => {
            // Attach to `serve`, open several connections and stream until
            // killed.
            let path = std::env::var("ARCA_TEST_SOCKET").unwrap();
            let s = ArcaSession::attach(path).unwrap();
            let conns: Vec<_> = (0..8).map(|_| s.connect(target).unwrap()).collect();
            println!("guest-ready");
            std::io::stdout().flush().unwrap();
            let chunk = vec![1u8; 65536];
            loop {
                for mut c in &conns {
                    let _ = c.write_all(&chunk);
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn isolation_available() -> bool {
    match monitor_proc::isolation_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: {why}; `run --isolate` cannot be tested here");
            false
        }
    }
}

#[test]
fn isolated_guest_reaches_the_host_only_through_the_monitor() {
    let _serial = serial();
    if !isolation_available() {
        return;
    }
    let target = echo_server();
    let mut cmd = Command::new(monitor_bin());
    cmd.args(["run", "--isolate", "--"]);
    guest_cmd(&mut cmd, "isolated", target);
    let mut child = Reaped(cmd.stdout(Stdio::piped()).spawn().unwrap());
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "guest failed: {status:?}\n{out}");
    assert!(out.contains("arca=ok"), "{out}");
}

#[test]
fn run_exits_with_the_guests_status() {
    let _serial = serial();
    let target = echo_server();
    let mut cmd = Command::new(monitor_bin());
    cmd.args(["run", "--"]);
    guest_cmd(&mut cmd, "exit3", target);
    let mut child = Reaped(cmd.spawn().unwrap());
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(3));
}

#[test]
fn run_refuses_bad_arguments_with_a_clear_error() {
    let _serial = serial();
    let out = Command::new(monitor_bin())
        .args(["run", "--region-size", "12Q", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("12Q"), "{err}");
    let out = Command::new(monitor_bin())
        .args(["run", "--", "/nonexistent/guest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start /nonexistent/guest"), "{err}");
}

#[test]
fn guest_killed_mid_transfer_releases_everything_and_the_monitor_carries_on() {
    let _serial = serial();
    // A sink that reads forever.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let path = socket_path("kill");
    let mut m = Monitor::new(Config {
        region_size: 64 << 20,
        ..Config::default()
    })
    .unwrap();
    m.listen_unix(&path).unwrap();
    let handle = m.handle();
    let loop_thread = std::thread::spawn(move || m.run());
    // Let the loop settle, then take the fd baseline.
    assert!(handle.stats().unwrap().sessions.is_empty());
    let baseline = open_fds();

    let mut cmd = guest_command("stream_forever");
    cmd.env(TARGET, target.to_string())
        .env("ARCA_TEST_SOCKET", &path);
    let mut guest = Reaped(cmd.spawn().unwrap());
    // libtest prints its own header first: read lines up to the marker.
    let out = std::io::BufReader::new(guest.0.stdout.take().unwrap());
    let ready = std::io::BufRead::lines(out)
        .take(10)
        .map_while(Result::ok)
        .any(|line| line.contains("guest-ready"));
    assert!(ready, "guest never became ready");
    std::thread::sleep(Duration::from_millis(200)); // mid-transfer
    let st = handle.stats().unwrap();
    assert_eq!(st.sessions.len(), 1);
    assert_eq!(st.sessions[0].1.conns, 8);
    assert!(st.sessions[0].1.alloc.allocated > st.sessions[0].1.fixed_bytes);
    guest.0.kill().unwrap();
    guest.0.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = handle.stats().unwrap();
        if st.sessions.is_empty() && open_fds() <= baseline {
            assert_eq!(st.ended, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reclaimed: sessions {:?}, fds {} vs baseline {baseline}",
            st.sessions,
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The monitor keeps serving: a new guest works end to end.
    let echo = echo_server();
    let s = ArcaSession::attach(&path).unwrap();
    let mut c = s.connect(echo).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"again").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"again");
    drop((c, s));
    handle.stop();
    loop_thread.join().unwrap().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn monitor_killed_blocked_guest_calls_fail_within_a_second() {
    let _serial = serial();
    // A host peer that accepts and then says nothing.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let conns: Vec<_> = l.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(conns);
    });
    let path = socket_path("monkill");
    let mut monitor = Reaped(
        Command::new(monitor_bin())
            .args(["serve", "--socket"])
            .arg(&path)
            .spawn()
            .unwrap(),
    );
    wait_for_socket(&path, &mut monitor.0, Duration::from_secs(10));
    let s = ArcaSession::attach(&path).unwrap();
    let c = s.connect(target).unwrap();
    let reader = std::thread::spawn(move || {
        let mut c = c;
        let mut b = [0u8; 16];
        let r = c.read(&mut b);
        (r.map_err(|e| e.kind()), Instant::now())
    });
    std::thread::sleep(Duration::from_millis(200));
    monitor.0.kill().unwrap();
    let killed = Instant::now();
    monitor.0.wait().unwrap();
    let (result, when) = reader.join().unwrap();
    assert!(
        result.is_err(),
        "blocked read returned {result:?} after the monitor died"
    );
    assert!(
        when.duration_since(killed) < Duration::from_secs(1),
        "took {:?}",
        when.duration_since(killed)
    );
    // New calls fail at once too.
    let t = Instant::now();
    assert!(s.connect(target).is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
    let _ = std::fs::remove_file(&path);
}
