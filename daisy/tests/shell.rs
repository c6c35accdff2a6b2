//! The shells over real sockets on loopback: a native transfer, the sender isolated under
//! `arca-monitor run --isolate`, and compatibility both ways with an independent plain
//! implementation (`plain_daisy.py`). Each test uses its own port; every wait is bounded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const SEND: &str = env!("CARGO_BIN_EXE_daisy-send");
const RECV: &str = env!("CARGO_BIN_EXE_daisy-recv");
const LIMIT: Duration = Duration::from_secs(60);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daisy-shell-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join(name)
}

fn input(name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = tmp(name);
    std::fs::write(&p, &data).expect("write input");
    (p, data)
}

/// Waits for `c` (killing it past `LIMIT`); returns (success, stderr).
fn finish(c: Child, what: &str) -> (bool, String) {
    let (status, err) = finish_status(c, what);
    (status.success(), err)
}

/// Waits for `c` (killing it past `LIMIT`); returns its exit status and stderr.
fn finish_status(mut c: Child, what: &str) -> (ExitStatus, String) {
    let end = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// A `daisy-send` command; `ARCA_LOG` is cleared so only a test that sets it sees diagnostics.
fn sender_cmd(port: u16, clients: usize, file: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(SEND);
    c.args([
        "--clients",
        &clients.to_string(),
        "--port",
        &port.to_string(),
    ])
    .args(["--no-progress", "--deadline", "20"])
    .args(extra)
    .arg(file)
    .env_remove("ARCA_LOG")
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn sender(port: u16, clients: usize, file: &Path, extra: &[&str]) -> Child {
    sender_cmd(port, clients, file, extra)
        .spawn()
        .expect("spawn daisy-send")
}

/// A `daisy-recv` command writing to `out`, with `ARCA_LOG` cleared.
fn receiver_cmd(port: u16, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(RECV);
    c.args(["--no-progress", "--deadline", "20", "-o"])
        .arg(out)
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("ARCA_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn receiver(port: u16, out: &Path, extra: &[&str]) -> Child {
    receiver_cmd(port, out, extra)
        .spawn()
        .expect("spawn daisy-recv")
}

fn field<'a>(stderr: &'a str, prog: &str, key: &str) -> &'a str {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("{prog}: summary ")))
        .unwrap_or_else(|| panic!("no summary line from {prog} in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("python3")
}

fn plain_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plain_daisy.py")
}

#[test]
fn native_transfer_to_two_receivers() {
    let port = 18_601;
    let (file, data) = input("native.in", 3 << 20, 7);
    let s = sender(port, 2, &file, &[]);
    let outs = [tmp("native.o1"), tmp("native.o2")];
    // One receiver drops 3 % of datagrams: repairs must make it whole.
    let r1 = receiver(port, &outs[0], &[]);
    let r2 = receiver(
        port,
        &outs[1],
        &["--test-drop-percent", "3", "--test-seed", "5"],
    );
    let (ok1, e1) = finish(r1, "receiver 1");
    let (ok2, e2) = finish(r2, "receiver 2");
    let (oks, es) = finish(s, "sender");
    assert!(ok1 && ok2 && oks, "failed:\n{e1}\n{e2}\n{es}");
    let want = sha_hex(&data);
    for o in &outs {
        assert!(std::fs::read(o).expect("output") == data, "{o:?} differs");
    }
    assert_eq!(field(&es, "daisy-send", "sha256"), want);
    assert_eq!(field(&e1, "daisy-recv", "sha256"), want);
    assert_eq!(field(&es, "daisy-send", "completed_receivers"), "2");
    assert_eq!(field(&es, "daisy-send", "bytes"), data.len().to_string());
    assert!(field(&e2, "daisy-recv", "repaired").parse::<u64>().unwrap() > 0);
    // Without ARCA_LOG only warnings and errors are diagnostics; a clean run has none.
    for e in [&es, &e1, &e2] {
        assert!(!e.contains(" INFO ") && !e.contains(" WARN "), "{e}");
    }
}

#[test]
fn arca_log_filters_diagnostics_and_a_bad_value_is_reported() {
    let port = 18_609;
    let (file, data) = input("log.in", 1 << 20, 25);
    let s = sender_cmd(port, 1, &file, &[])
        .env("ARCA_LOG", "daisy=debug")
        .env_remove("NO_COLOR")
        .spawn()
        .expect("spawn daisy-send");
    let out = tmp("log.out");
    let r = receiver_cmd(port, &out, &[])
        .env("ARCA_LOG", "daisy=loud")
        .spawn()
        .expect("spawn daisy-recv");
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "sender");
    assert!(okr && oks, "{er}\n{es}");
    assert!(std::fs::read(&out).unwrap() == data);
    // The sender's filter took: its receiver's connection and the rounds are logged, without
    // colour since stderr is a pipe.
    assert!(es.contains(" INFO daisy::send_shell: connected"), "{es}");
    assert!(
        es.contains(" DEBUG daisy::send_shell: round filled"),
        "{es}"
    );
    assert!(!es.contains('\x1b'), "colour on a pipe:\n{es}");
    // The receiver's value does not parse: one line says so, and the default applies.
    let warned: Vec<&str> = er
        .lines()
        .filter(|l| l.starts_with("daisy-recv: warning: ARCA_LOG=\"daisy=loud\" ignored ("))
        .collect();
    assert_eq!(warned.len(), 1, "{er}");
    assert!(warned[0].ends_with("using \"warn\""), "{er}");
    assert!(!er.contains(" INFO "), "{er}");
}

/// `partial` next to `out`, as daisy-recv names its unverified output.
fn partial_of(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Two receivers, one exiting abruptly after 1 MiB; returns the sender's exit status and
/// stderr after checking the survivor's and the victim's outputs.
fn one_of_two_receivers_dies(port: u16, name: &str, extra: &[&str]) -> (ExitStatus, String) {
    let (file, data) = input(&format!("{name}.in"), 4 << 20, 21);
    // Paced at 8 MB/s the transfer lasts about half a second: the victim dies during it.
    let mut args = vec!["--rate", "8"];
    args.extend_from_slice(extra);
    let s = sender(port, 2, &file, &args);
    let (good, bad) = (tmp(&format!("{name}.good")), tmp(&format!("{name}.bad")));
    std::fs::write(&bad, b"older file").expect("write old output");
    let _ = std::fs::remove_file(&good);
    let rg = receiver(port, &good, &[]);
    let rb = receiver(port, &bad, &["--test-exit-after-bytes", "1048576"]);
    let (okb, eb) = finish(rb, "dying receiver");
    let (okg, eg) = finish(rg, "receiver");
    let (status, es) = finish_status(s, "sender");
    assert!(!okb, "the dying receiver exited 0:\n{eb}");
    assert!(okg, "{eg}\n{es}");
    assert!(std::fs::read(&good).expect("output") == data);
    assert!(
        !partial_of(&good).exists(),
        "a verified output keeps .partial"
    );
    // The killed receiver never renamed: NAME is the old file, NAME.partial what it had.
    assert_eq!(std::fs::read(&bad).expect("old output"), b"older file");
    assert_eq!(
        std::fs::read(partial_of(&bad)).expect("partial output"),
        &data[..1 << 20]
    );
    assert_eq!(field(&es, "daisy-send", "completed_receivers"), "1", "{es}");
    let failed = field(&es, "daisy-send", "failed");
    let (id, addr) = failed
        .split_once('@')
        .unwrap_or_else(|| panic!("failed={failed} is not ID@ADDRESS"));
    assert!(id == "0" || id == "1", "failed={failed}");
    let addr: std::net::SocketAddr = addr.parse().expect("failed= address");
    assert!(addr.ip().is_loopback(), "failed={failed}");
    assert!(
        es.contains(&format!("receiver {id} ({addr}) failed")),
        "no line naming the failed receiver:\n{es}"
    );
    (status, es)
}

#[test]
fn a_dead_receiver_fails_the_transfer_by_default() {
    let (status, es) = one_of_two_receivers_dies(18_606, "dead", &[]);
    assert_eq!(status.code(), Some(1), "sender: {status}\n{es}");
    assert!(es.contains("1 of 2 receivers got the transfer"), "{es}");
}

#[test]
fn a_lowered_bar_makes_a_dead_receiver_a_partial_success() {
    let (status, es) = one_of_two_receivers_dies(18_607, "lowered", &["--min-complete", "1"]);
    assert_eq!(status.code(), Some(3), "sender: {status}\n{es}");
    assert!(es.contains("daisy-send: partial: 1 of 2"), "{es}");
}

#[test]
fn bad_arguments_exit_with_status_2_and_one_line() {
    let (file, _) = input("usage.in", 10, 29);
    let file = file.to_str().expect("UTF-8 temp path");
    let runs: [(&str, &[&str]); 4] = [
        (SEND, &["--clients", "2", "--min-complete", "3", file]),
        (SEND, &["--clients", "1", "--payload-size", "0", file]),
        (SEND, &["--clients", "1", "--deadline", "0", file]),
        (RECV, &["--deadline=-1", "127.0.0.1:9"]),
    ];
    for (bin, args) in runs {
        let o = Command::new(bin)
            .args(args)
            .env_remove("ARCA_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(": error: "), "{args:?}: {err}");
    }
}

#[test]
fn a_failed_receiver_removes_its_partial_output() {
    let port = 18_608;
    let (file, _) = input("cut.in", 8 << 20, 23);
    // 2 MB/s: four seconds, cut short by killing the sender. Rounds of 64 packets reach the
    // output file as the transfer goes (the receiver's 1 MiB output buffer fills in 0.5 s).
    let mut s = sender(
        port,
        1,
        &file,
        &["--rate", "2", "--packets-per-buffer", "64"],
    );
    let out = tmp("cut.out");
    std::fs::write(&out, b"older file").expect("write old output");
    let r = receiver(port, &out, &[]);
    let partial = partial_of(&out);
    let mut waited = 0;
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
        waited += 1;
        assert!(waited < 400, "no data in {partial:?} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"older file");
    s.kill().expect("kill sender");
    let _ = s.wait();
    let (ok, er) = finish(r, "receiver");
    assert!(!ok, "the receiver exited 0 without its sender:\n{er}");
    assert!(er.contains("daisy-recv: error"), "{er}");
    assert!(!partial.exists(), "the failed receiver left {partial:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"older file");
}

#[test]
fn a_file_size_is_announced_to_the_receiver_a_pipe_size_is_not() {
    let port = 18_612;
    let (file, data) = input("size.in", 1 << 20, 27);
    // From the file: the receiver learns the length before the first round.
    let s = sender(port, 1, &file, &[]);
    let out = tmp("size.out");
    let r = receiver_cmd(port, &out, &[])
        .env("ARCA_LOG", "daisy=info")
        .spawn()
        .expect("spawn daisy-recv");
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "sender");
    assert!(okr && oks, "{er}\n{es}");
    assert!(
        er.contains(&format!("transfer size announced bytes={}", data.len())),
        "{er}"
    );
    // From a pipe the length is unknown until the end.
    let mut s = sender_cmd(port + 100, 1, Path::new("-"), &[])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn daisy-send");
    let mut stdin = s.stdin.take().expect("stdin");
    let feed = {
        let data = data.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        })
    };
    let r = receiver_cmd(port + 100, &out, &[])
        .env("ARCA_LOG", "daisy=info")
        .spawn()
        .expect("spawn daisy-recv");
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "sender");
    let _ = feed.join();
    assert!(okr && oks, "{er}\n{es}");
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(!er.contains("transfer size announced"), "{er}");
}

/// A fake plain sender: accepts one receiver, sends the greeting (and optionally a round's
/// header, then SERVER_SENT with no data), then stays silent. Returns how long the receiver
/// took to give up after the last thing sent, and its stderr.
fn silent_sender(port: u16, group_octet: u8, round: bool) -> (Duration, String) {
    use daisy::wire::{BufferHeader, Greeting, CLIENT_READY, SERVER_SENT};
    use std::io::Write;
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let r = Command::new(RECV)
        .args(["--no-progress", "--deadline", "1", "-o"])
        .arg(tmp(&format!("silent{group_octet}.out")))
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("ARCA_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daisy-recv");
    let (mut c, _) = l.accept().expect("accept");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let group = SocketAddrV4::new(Ipv4Addr::new(224, 238, 91, group_octet), port);
    c.write_all(&Greeting { group, ext: None }.encode())
        .expect("greeting");
    if round {
        let h = BufferHeader {
            buffer_id: 1,
            buffer_size: 100,
            packet_id_base: 0,
            pkt_count: 1,
        };
        c.write_all(&h.encode()).expect("header");
        let mut ready = [0u8; 1];
        c.read_exact(&mut ready).expect("CLIENT_READY");
        assert_eq!(ready[0], CLIENT_READY);
        c.write_all(&[SERVER_SENT]).expect("SERVER_SENT");
    }
    let silent_from = Instant::now();
    let (ok, err) = finish(r, "receiver");
    let took = silent_from.elapsed();
    assert!(!ok, "the receiver exited 0 with a silent sender:\n{err}");
    drop(c);
    (took, err)
}

#[test]
fn the_receiver_gives_up_when_its_help_says() {
    let help = Command::new(RECV)
        .arg("--help")
        .output()
        .expect("daisy-recv --help");
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("while it owes this receiver an answer: repairs after SERVER_SENT")
            && help.contains("the limit is 2 × DEADLINE + 1 s"),
        "--help does not state the give-up rule:\n{help}"
    );
    // Waiting for a round's header, the sender may be waiting on others: 2 × 1 + 1 = 3 s.
    let (took, err) = silent_sender(18_610, 1, false);
    assert!(err.contains("nothing from the sender for 3.0 s"), "{err}");
    assert!(
        took >= Duration::from_millis(2_700) && took < Duration::from_millis(4_500),
        "gave up after {took:?}"
    );
    // Missing packets after SERVER_SENT: the sender owes repairs, 1 s.
    let (took, err) = silent_sender(18_611, 2, true);
    assert!(err.contains("nothing from the sender for 1.0 s"), "{err}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2_500),
        "gave up after {took:?}"
    );
}

#[test]
fn extra_receiver_is_told_transfer_is_full() {
    let port = 18_602;
    let (file, data) = input("full.in", 4 << 20, 9);
    // Paced at 4 MB/s, the transfer lasts about a second: the late receiver arrives during it.
    let s = sender(port, 1, &file, &["--rate", "4"]);
    let a = receiver(port, &tmp("full.a"), &[]);
    std::thread::sleep(Duration::from_millis(400));
    let b = receiver(port, &tmp("full.b"), &[]);
    let (okb, eb) = finish(b, "late receiver");
    let (oka, ea) = finish(a, "receiver");
    let (oks, es) = finish(s, "sender");
    assert!(oka && oks, "{ea}\n{es}");
    assert!(std::fs::read(tmp("full.a")).unwrap() == data);
    assert!(!okb, "the late receiver must fail:\n{eb}");
    assert!(eb.contains("transfer is full"), "late receiver said:\n{eb}");
}

#[test]
fn our_receiver_with_plain_python_sender() {
    let Some(py) = python() else {
        eprintln!("SKIP: python3 not found; compatibility with a plain sender not checked");
        return;
    };
    let port = 18_603;
    let (file, data) = input("pysend.in", 1 << 20, 11);
    let s = Command::new(py)
        .arg(plain_script())
        .args(["send", "--clients", "1", "--port", &port.to_string()])
        .args(["--ppb", "256"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python sender");
    let o = tmp("pysend.out");
    let r = receiver(port, &o, &["--test-drop-percent", "2"]);
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "python sender");
    assert!(okr && oks, "{er}\n{es}");
    assert!(std::fs::read(&o).unwrap() == data);
    assert_eq!(field(&er, "daisy-recv", "sha256"), sha_hex(&data));
}

#[test]
fn our_sender_with_plain_python_and_extended_receivers() {
    let Some(py) = python() else {
        eprintln!("SKIP: python3 not found; compatibility with a plain receiver not checked");
        return;
    };
    let port = 18_604;
    let (file, data) = input("pyrecv.in", 1 << 20, 13);
    // --payload-size above 1460 must not be used with a plain receiver present.
    let s = sender(port, 2, &file, &["--payload-size", "8000"]);
    let po = tmp("pyrecv.plain");
    let p = Command::new(py)
        .arg(plain_script())
        .args(["recv", "--port", &port.to_string(), "--out"])
        .arg(&po)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python receiver");
    let o = tmp("pyrecv.ours");
    let r = receiver(port, &o, &[]);
    let (okp, ep) = finish(p, "python receiver");
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "sender");
    assert!(okp && okr && oks, "{ep}\n{er}\n{es}");
    assert!(
        std::fs::read(&po).unwrap() == data,
        "plain receiver output differs"
    );
    assert!(std::fs::read(&o).unwrap() == data);
    let packets: u64 = field(&es, "daisy-send", "packets").parse().unwrap();
    assert_eq!(packets, (data.len() as u64).div_ceil(1460));
}

fn monitor_bin() -> Option<PathBuf> {
    let dir = Path::new(SEND).parent()?;
    let m = dir.join("arca-monitor");
    if m.exists() {
        return Some(m);
    }
    let profile = if dir.ends_with("release") {
        vec!["--release"]
    } else {
        vec![]
    };
    let ok = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "arca-monitor", "--bin", "arca-monitor"])
        .args(profile)
        .status()
        .is_ok_and(|s| s.success());
    (ok && m.exists()).then_some(m)
}

#[test]
fn isolated_sender_through_the_monitor() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        eprintln!("SKIP: not root; the isolated sender (arca-monitor run --isolate) is not tested");
        return;
    }
    let Some(mon) = monitor_bin() else {
        panic!("arca-monitor could not be built");
    };
    let port = 18_605;
    let (file, data) = input("iso.in", 2 << 20, 17);
    let s = Command::new(&mon)
        .args(["run", "--isolate", "--"])
        .arg(SEND)
        .args([
            "--clients",
            "2",
            "--port",
            &port.to_string(),
            "--no-progress",
        ])
        // The monitor's default policy lets a guest listen on loopback only.
        .args(["--deadline", "20", "--net", "arca", "--bind", "127.0.0.1"])
        .arg(&file)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monitor");
    let outs = [tmp("iso.o1"), tmp("iso.o2")];
    let r1 = receiver(port, &outs[0], &[]);
    let r2 = receiver(port, &outs[1], &[]);
    let (ok1, e1) = finish(r1, "receiver 1");
    let (ok2, e2) = finish(r2, "receiver 2");
    let (oks, es) = finish(s, "isolated sender");
    if !oks && es.contains("cannot isolate") {
        eprintln!("SKIP: this system forbids network namespaces:\n{es}");
        return;
    }
    assert!(ok1 && ok2 && oks, "{e1}\n{e2}\n{es}");
    for o in &outs {
        assert!(std::fs::read(o).unwrap() == data);
    }
    assert_eq!(field(&es, "daisy-send", "sha256"), sha_hex(&data));
    assert_eq!(field(&es, "daisy-send", "completed_receivers"), "2");
}

#[test]
fn json_summary_reports_the_rate_trajectory_and_losses() {
    let port = 18_613;
    let (file, data) = input("json.in", 3 << 20, 41);
    let mut s = sender_cmd(port, 2, &file, &["--json", "--packets-per-buffer", "256"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn daisy-send");
    let mut stdout = s.stdout.take().expect("stdout");
    let outs = [tmp("json.o1"), tmp("json.o2")];
    let r1 = receiver(port, &outs[0], &[]);
    let r2 = receiver(
        port,
        &outs[1],
        &["--test-drop-percent", "2", "--test-seed", "9"],
    );
    let (ok1, e1) = finish(r1, "receiver 1");
    let (ok2, e2) = finish(r2, "receiver 2");
    let (oks, es) = finish(s, "sender");
    assert!(ok1 && ok2 && oks, "failed:\n{e1}\n{e2}\n{es}");
    for o in &outs {
        assert!(std::fs::read(o).expect("output") == data, "{o:?} differs");
    }
    let mut text = String::new();
    stdout.read_to_string(&mut text).expect("read stdout");
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    let j: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(j["bytes"], data.len() as u64);
    assert_eq!(j["completed_receivers"], 2);
    assert_eq!(j["delivery"], "all");
    assert_eq!(j["failed"].as_array().map(Vec::len), Some(0));
    assert_eq!(j["sha256"], sha_hex(&data).as_str());
    let rounds = j["rounds"].as_array().expect("rounds");
    // 3 MiB in rounds of 256 × 1460 bytes.
    assert_eq!(rounds.len(), (3usize << 20).div_ceil(256 * 1460));
    let packets: u64 = rounds.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
    assert_eq!(j["packets"].as_u64(), Some(packets));
    let lost: Vec<u64> = rounds.iter().map(|r| r["lost"].as_u64().unwrap()).collect();
    assert!(
        lost.iter().sum::<u64>() > 0,
        "2 % dropped, yet no losses: {lost:?}"
    );
    assert!(j["repaired"].as_u64().unwrap() >= lost.iter().sum::<u64>());
    let rate: Vec<f64> = rounds
        .iter()
        .map(|r| r["rate_mbps"].as_f64().unwrap())
        .collect();
    let traj = &j["rate_mbps"];
    let get = |k: &str| traj[k].as_f64().unwrap_or_else(|| panic!("rate_mbps.{k}"));
    assert_eq!(get("start"), rate[0]);
    assert_eq!(get("final"), *rate.last().unwrap());
    assert_eq!(
        get("min"),
        rate.iter().copied().fold(f64::INFINITY, f64::min)
    );
    let max = rate.iter().copied().fold(0.0, f64::max);
    assert!(get("min") <= get("mean") && get("mean") <= max);
    // The summary line on stderr says the same.
    let field_f = |k: &str| field(&es, "daisy-send", k).parse::<f64>().unwrap();
    assert!((field_f("rate_start") - get("start")).abs() < 0.1);
    assert!((field_f("rate_final") - get("final")).abs() < 0.1);
    let runs = field(&es, "daisy-send", "losses");
    let expanded: Vec<u64> = runs
        .split(',')
        .flat_map(|run| {
            let (l, n) = run.split_once('*').unwrap_or((run, "1"));
            std::iter::repeat_n(l.parse::<u64>().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(expanded, lost, "losses={runs}");
    // The receivers report their learnt settle window (at least the 3 ms floor) and late
    // datagrams.
    for e in [&e1, &e2] {
        assert!(field(e, "daisy-recv", "late").parse::<u64>().is_ok());
        let settle: f64 = field(e, "daisy-recv", "settle_ms").parse().unwrap();
        assert!((3.0..=50.0).contains(&settle), "settle_ms={settle}");
    }
}

#[test]
fn json_summary_without_rounds_has_a_null_trajectory() {
    let port = 18_614;
    let (file, _) = input("json-empty.in", 0, 43);
    let mut s = sender_cmd(port, 1, &file, &["--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn daisy-send");
    let mut stdout = s.stdout.take().expect("stdout");
    let out = tmp("json-empty.out");
    let r = receiver(port, &out, &[]);
    let (okr, er) = finish(r, "receiver");
    let (oks, es) = finish(s, "sender");
    assert!(okr && oks, "failed:\n{er}\n{es}");
    let mut text = String::new();
    stdout.read_to_string(&mut text).expect("read stdout");
    let j: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(j["bytes"], 0);
    assert!(j["rate_mbps"].is_null());
    assert_eq!(j["rounds"].as_array().map(Vec::len), Some(0));
    assert_eq!(field(&es, "daisy-send", "losses"), "-");
    assert_eq!(field(&es, "daisy-send", "rate_start"), "-");
}
