//! `arca-monitor --policy` from the outside: a bad file stops the monitor before it starts
//! (exit 2, one clear line naming the line of the problem), a good one is applied, and
//! `policy --print-default` prints TOML that parses back to the default. Every wait is bounded.

use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arca::ArcaSession;
use arca_monitor::Policy;
use arca_testkit::bins::monitor_bin;
use arca_testkit::child::Reaped;
use arca_testkit::monitor_proc::wait_for_socket;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("arca-policy-cli-{}-{name}", std::process::id()))
}

fn write_policy(name: &str, text: &str) -> PathBuf {
    let path = temp(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// What a finished monitor process left.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the monitor to completion (it must exit on its own, within the bound; its output is
/// small enough for the pipes).
fn run_to_exit(args: &[&str]) -> Output {
    let child = Command::new(monitor_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "monitor did not exit: {args:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = Output {
        status,
        stdout: String::new(),
        stderr: String::new(),
    };
    if let Some(mut o) = child.0.stdout.take() {
        o.read_to_string(&mut out.stdout).unwrap();
    }
    if let Some(mut e) = child.0.stderr.take() {
        e.read_to_string(&mut out.stderr).unwrap();
    }
    out
}

fn stderr(o: &Output) -> String {
    o.stderr.clone()
}

#[test]
fn a_bad_policy_file_stops_the_monitor_with_exit_2() {
    let cases = [
        (
            "unknown-key",
            "[limits]\nconnections = 8\nsockets = 3\n",
            "line 3",
            "sockets",
        ),
        (
            "bad-cidr",
            "[[outbound]]\naction = \"allow\"\nnets = [\"10.0.0.0/40\"]\n",
            "line 3",
            "10.0.0.0/40",
        ),
        (
            "bad-range",
            "[[listen]]\naction = \"allow\"\nnets = [\"::1\"]\nports = [\"9000-80\"]\n",
            "line 4",
            "9000-80",
        ),
        (
            "idna-name",
            "[[outbound]]\naction = \"allow\"\nnames = [\"github.com\", \"bücher.de\"]\n",
            "line 3",
            "IDNA",
        ),
        (
            "nul-name",
            "[[outbound]]\naction = \"allow\"\nnames = [\"a\\u0000b.com\"]\n",
            "line 3",
            "cannot appear in a host name",
        ),
    ];
    for (name, text, line, detail) in cases {
        let path = write_policy(name, text);
        let p = path.to_str().unwrap();
        let sock = temp(&format!("{name}.sock"));
        for args in [
            vec!["serve", "--socket", sock.to_str().unwrap(), "--policy", p],
            vec!["run", "--policy", p, "--", "true"],
            vec!["policy", "--check", p],
        ] {
            let out = run_to_exit(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.starts_with("arca-monitor: policy file "), "{err}");
            assert!(
                err.contains(p) && err.contains(line) && err.contains(detail),
                "{err}"
            );
            assert!(!sock.exists(), "serve must not start with a bad policy");
        }
        let _ = std::fs::remove_file(&path);
    }
    // What TOML's types cannot say is checked too, naming the rule.
    for (name, text, detail) in [
        (
            "no-nets-no-names",
            "[[outbound]]\naction = \"allow\"\nports = [443]\n",
            "outbound[0] has neither `nets` nor `names`",
        ),
        (
            "listen-names",
            "[[listen]]\naction = \"allow\"\nnets = [\"::1\"]\nnames = [\"x.com\"]\n",
            "listen[0] has `names`",
        ),
    ] {
        let path = write_policy(name, text);
        let out = run_to_exit(&["policy", "--check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(detail), "{}", stderr(&out));
        let _ = std::fs::remove_file(&path);
    }
    let good = write_policy(
        "names-ok",
        "[[outbound]]\naction = \"allow\"\nnames = [\"GitHub.com.\", \"*.pypi.org\", \"*\"]\n",
    );
    let out = run_to_exit(&["policy", "--check", good.to_str().unwrap(), "--print"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout
            .contains(r#"names = ["github.com", "*.pypi.org", "*"]"#),
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_file(&good);
    let sock = temp("bad-resolver.sock");
    let out = run_to_exit(&[
        "serve",
        "--socket",
        sock.to_str().unwrap(),
        "--resolver",
        "dns.example",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not ADDR or ADDR:PORT"),
        "{}",
        stderr(&out)
    );
    assert!(!sock.exists());
    let out = run_to_exit(&[
        "serve",
        "--socket",
        "/nonexistent/x",
        "--policy",
        "/nonexistent/p",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read policy file /nonexistent/p"));
}

#[test]
fn print_default_parses_back_to_the_default() {
    let out = run_to_exit(&["policy", "--print-default"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = out.stdout;
    assert_eq!(
        Policy::from_toml(&text, "stdout").unwrap(),
        Policy::default()
    );
    let path = write_policy("default.toml", &text);
    let check = run_to_exit(&["policy", "--check", path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_good_policy_file_is_applied() {
    // Listening anywhere is refused, one connection at a time.
    let path = write_policy(
        "good.toml",
        "listen = []\n[limits]\nconnections = 1\n# outbound and multicast: the default\n",
    );
    let sock = temp("good.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(monitor_bin())
        .args(["serve", "--socket", sock.to_str().unwrap(), "--policy"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    wait_for_socket(&sock, &mut child.0, Duration::from_secs(20));
    let s = ArcaSession::attach(&sock).unwrap();
    let e = s.bind("127.0.0.1:0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = s.bind_udp("127.0.0.1:0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    // Outbound keeps the default: a host listener is reachable.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = s.connect(host.local_addr().unwrap()).unwrap();
    let e = s.connect(host.local_addr().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
    let _ = std::fs::remove_file(&path);
}
