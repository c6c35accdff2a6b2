//! `arca-monitor` as a user meets it on the command line: signals and exit
//! statuses of `run` (as `timeout(1)` and `unshare(1)` behave), and the
//! `serve` socket (what it refuses to replace, who may attach, how many).
//! Guests are shell commands, or this test binary re-executed in a guest role
//! (`guest_entry`). Every wait is bounded.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arca_testkit::bins::monitor_bin;
use arca_testkit::child::{guest_command, wait_exit, Reaped, ROLE};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("arca-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn run_output(args: &[&str]) -> Output {
    let mut child = Command::new(monitor_bin())
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_exit(&mut child, Duration::from_secs(20));
    child.wait_with_output().unwrap()
}

/// Starts `run -- sh -c SCRIPT` where the script first writes its pid to a
/// file; returns the monitor and the guest's pid once the guest runs.
fn run_guest_script(dir: &Path, extra: &[&str], script: &str) -> (Reaped, i32) {
    let pidfile = dir.join("guest.pid");
    let _ = std::fs::remove_file(&pidfile);
    let full = format!("echo $$ > {}; {script}", pidfile.display());
    let child = Reaped(
        Command::new(monitor_bin())
            .arg("run")
            .args(extra)
            .args(["--", "sh", "-c", &full])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            // The trap (if any) is set up right after the pid is written.
            std::thread::sleep(Duration::from_millis(200));
            return (child, pid);
        }
        assert!(Instant::now() < deadline, "the guest never started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn the_guest_starts_with_no_signal_blocked_and_sigpipe_at_default() {
    let out = run_output(&[
        "--",
        "sh",
        "-c",
        "grep -E '^Sig(Blk|Ign)' /proc/self/status",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "no signal blocked: {text}");
    let pipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(field("SigIgn:") & pipe, 0, "SIGPIPE not ignored: {text}");
}

#[test]
fn a_stop_signal_reaches_the_guest_and_run_exits_128_plus_n() {
    let dir = scratch("stop");
    // Straight to the guest, as `kill` from another terminal.
    let (mut m, guest) = run_guest_script(&dir, &[], "exec sleep 30");
    signal(guest, libc::SIGTERM);
    let st = wait_exit(&mut m.0, Duration::from_secs(5));
    assert_eq!(st.code(), Some(128 + libc::SIGTERM));
    // To the monitor: passed on to the guest.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (mut m, _guest) = run_guest_script(&dir, &[], "exec sleep 30");
        signal(i32::try_from(m.0.id()).unwrap(), sig);
        let st = wait_exit(&mut m.0, Duration::from_secs(5));
        assert_eq!(st.code(), Some(128 + sig), "signal {sig}");
    }
}

#[test]
fn a_guest_that_ignores_the_stop_is_killed_after_its_grace_or_a_second_signal() {
    let dir = scratch("grace");
    let stubborn = "trap '' TERM INT; while :; do sleep 0.05; done";
    let (mut m, _) = run_guest_script(&dir, &["--grace", "0.3"], stubborn);
    let asked = Instant::now();
    signal(i32::try_from(m.0.id()).unwrap(), libc::SIGTERM);
    let st = wait_exit(&mut m.0, Duration::from_secs(10));
    assert_eq!(st.code(), Some(128 + libc::SIGKILL));
    assert!(asked.elapsed() >= Duration::from_millis(300));
    let mut err = String::new();
    m.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("grace period"), "says why: {err}");

    let (mut m, _) = run_guest_script(&dir, &["--grace", "60"], stubborn);
    let monitor = i32::try_from(m.0.id()).unwrap();
    signal(monitor, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(monitor, libc::SIGINT);
    let st = wait_exit(&mut m.0, Duration::from_secs(5));
    assert_eq!(st.code(), Some(128 + libc::SIGKILL));
}

#[test]
fn a_guest_that_exits_at_once_keeps_its_status() {
    for _ in 0..20 {
        let out = run_output(&["--", "sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_output(&["--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hi\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_statuses_follow_one_convention() {
    // Bad configuration is a usage error, as clap's own are.
    let out = run_output(&["--region-size", "3M", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = run_output(&["--grace", "soon", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    // A program that is not there, or not executable: 127 and 126, with the
    // OS error said once.
    let out = run_output(&["--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let data = scratch("exit").join("not-a-program");
    std::fs::write(&data, b"data").unwrap();
    let out = run_output(&["--", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    // A guest killed by a signal: 128 + N.
    let out = run_output(&["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGKILL));
    // --help states it.
    let help = Command::new(monitor_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("127") && help.contains("--grace"), "{help}");
}

fn serve(socket: &Path, extra: &[&str]) -> Reaped {
    let before = inode(socket);
    let child = Reaped(
        Command::new(monitor_bin())
            .args(["serve", "--socket"])
            .arg(socket)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Ready once the path names a new socket (a stale one may be there).
    let deadline = Instant::now() + Duration::from_secs(10);
    while inode(socket) == before {
        assert!(Instant::now() < deadline, "serve never made its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Which file `path` names: inode numbers are reused at once, so the
/// change time goes with it.
fn inode(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

#[test]
fn serve_refuses_to_replace_a_file_or_a_live_socket_and_removes_only_its_own() {
    let dir = scratch("serve-path");
    let file = dir.join("precious");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(monitor_bin())
        .args(["serve", "--socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let sock = dir.join("arca.sock");
    let mut first = serve(&sock, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "owner-only by default");
    let out = Command::new(monitor_bin())
        .args(["serve", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another monitor"));
    // The first monitor still serves.
    assert_eq!(attach_as(&sock, None), "attached");
    signal(i32::try_from(first.0.id()).unwrap(), libc::SIGTERM);
    assert!(wait_exit(&mut first.0, Duration::from_secs(5)).success());
    assert!(!sock.exists(), "its own socket is removed");

    // A stale socket (its monitor killed) is replaced.
    let mut killed = serve(&sock, &[]);
    killed.0.kill().unwrap();
    let _ = killed.0.wait();
    assert!(sock.exists());
    let _again = serve(&sock, &[]);
    assert_eq!(attach_as(&sock, None), "attached");
}

#[test]
fn serve_admits_peers_by_credentials_and_caps_sessions_per_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP serve_admits_peers_by_credentials: needs root to attach as another user");
        return;
    }
    let nobody = 65534;
    let dir = scratch("serve-cred");
    let sock = dir.join("arca.sock");
    // The file mode lets anyone connect; the credentials check refuses.
    let _m = serve(&sock, &["--socket-mode", "666"]);
    assert_eq!(attach_as(&sock, Some(nobody)), "refused");
    assert_eq!(attach_as(&sock, None), "attached");

    let sock2 = dir.join("allowed.sock");
    let _m2 = serve(
        &sock2,
        &["--allow-uid", "65534", "--max-sessions-per-uid", "2"],
    );
    let mode = std::fs::metadata(&sock2).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    assert_eq!(attach_as(&sock2, Some(nobody)), "attached");
    // Two sessions held by one user; the third is refused.
    let held: Vec<_> = (0..2).map(|_| hold_session(&sock2)).collect();
    assert!(held.iter().all(Option::is_some), "two sessions fit");
    assert!(hold_session(&sock2).is_none(), "the third is refused");
}

/// Attaches as this process's user; the session socket while it is held.
fn hold_session(path: &Path) -> Option<arca::ArcaSession> {
    arca::ArcaSession::attach(path).ok()
}

/// Runs this binary as a guest that attaches to `path` (as `uid` when
/// given) and reports "attached" or "refused".
fn attach_as(path: &Path, uid: Option<u32>) -> String {
    let mut cmd = guest_command("attach");
    cmd.env("ARCA_TEST_SOCKET", path);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("guest-report: "))
        .unwrap_or_else(|| panic!("no report: {out:?}"))
        .to_string()
}

/// The guest side; only runs when re-executed by the tests above.
#[test]
#[ignore = "guest entry point: runs only when re-executed by the other tests"]
fn guest_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "attach" => {
            let path = std::env::var("ARCA_TEST_SOCKET").unwrap();
            let report = match arca::ArcaSession::attach(&path) {
                Ok(_) => "attached",
                Err(_) => "refused",
            };
            println!("guest-report: {report}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn policy_check_says_what_the_file_leaves_to_the_default_and_prints_the_effect() {
    let dir = scratch("policy");
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(monitor_bin())
        .args(["policy", "--check"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("taken from the default policy: limits, outbound, listen, multicast"),
        "{err}"
    );
    let partial = dir.join("partial.toml");
    std::fs::write(&partial, "listen = []\n").unwrap();
    let out = Command::new(monitor_bin())
        .args(["policy", "--print", "--check"])
        .arg(&partial)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits, outbound, multicast") && !err.contains("listen,"),
        "{err}"
    );
    let effective = String::from_utf8(out.stdout).unwrap();
    let policy = arca_monitor::Policy::from_toml(&effective, "stdout").unwrap();
    let default = arca_monitor::Policy::default();
    assert!(policy.listen.is_empty(), "the file's empty listen list");
    assert_eq!(
        policy.outbound, default.outbound,
        "the default's outbound rules"
    );
}

#[test]
fn diagnostics_are_plain_on_a_pipe_and_a_bad_filter_is_reported() {
    let out = Command::new(monitor_bin())
        .args(["run", "--", "true"])
        .env("ARCA_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest started"), "info lines shown: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes on a pipe: {err:?}"
    );
    let out = Command::new(monitor_bin())
        .args(["run", "--", "true"])
        .env("ARCA_LOG", "arca_monitor=loud")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("ARCA_LOG").count(), 1, "one warning: {err}");
    assert!(err.contains("ignored"), "{err}");
}

/// The main job's script shows its (first, long) build instead of hiding it.
#[test]
fn the_demo_script_shows_its_build() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo");
    let text = std::fs::read_to_string(&demo).unwrap();
    let builds: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "scripts/demo builds first");
    for line in builds {
        assert!(!line.contains("--quiet") && !line.contains(" -q"), "{line}");
    }
}

#[test]
fn net_stack_needs_isolate_and_a_known_mode() {
    for (args, says) in [
        (&["--net", "stack", "--", "true"][..], "--isolate"),
        (&["--isolate", "--net", "slirp", "--", "true"][..], "stack"),
    ] {
        let out = run_output(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should mention {says}: {err}");
    }
}

#[test]
fn net_stack_reports_a_missing_program_as_127() {
    if arca_testkit::monitor_proc::isolation_available().is_err()
        || !Path::new("/dev/net/tun").exists()
    {
        eprintln!("SKIPPED: no network namespace or no /dev/net/tun here; `run --isolate --net stack` cannot run");
        return;
    }
    let out = run_output(&["--isolate", "--net", "stack", "--", "/nonexistent/program"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(err.contains("/nonexistent/program"), "{err}");
}
