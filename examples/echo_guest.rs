//! The guest of the README's main demo. Run it under the monitor, in a network namespace of
//! its own:
//!
//! ```text
//! cargo build --release --example echo_guest -p arca-suite
//! cargo run --release -p arca-monitor -- run --isolate -- target/release/examples/echo_guest
//! ```
//!
//! Through the monitor it binds a listener on 127.0.0.1:0, connects to it (so both ends are
//! monitor-relayed kernel sockets), moves 16 MiB each way with a CRC-32C check, runs an
//! HTTP-like request/response, and shows that the guest's own `std::net` cannot reach the
//! same port (with `--isolate` it has no network but the monitor).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use arca::{ArcaSession, TcpStream};

const BULK: usize = 16 << 20;
const STEP: Duration = Duration::from_secs(30);

/// Server side of one connection: echo `BULK` bytes, then answer one HTTP-like request.
fn serve(c: &TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut left = BULK;
    while left > 0 {
        let n = (&*c).read(&mut buf[..left.min(256 << 10)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        (&*c).write_all(&buf[..n])?;
        left -= n;
    }
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let body = format!(
        "hello from the guest's listener; you asked for {}",
        line.trim()
    );
    write!(
        &*c,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.shutdown(Shutdown::Write)
}

fn run() -> io::Result<()> {
    let t0 = Instant::now();
    let session = ArcaSession::from_env()?;
    println!("arca echo_guest: session attached (ARCA_FD)");

    let listener = session.bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    println!("  listener bound through the monitor at {addr}");

    let server = std::thread::spawn(move || -> io::Result<()> {
        let (c, peer) = listener.accept()?;
        println!("  accepted {peer}");
        c.set_read_timeout(Some(STEP))?;
        serve(&c)
    });

    let client = session.connect(addr)?;
    client.set_read_timeout(Some(STEP))?;
    client.set_write_timeout(Some(STEP))?;
    client.set_nodelay(true)?;
    println!(
        "  connected {} -> {}",
        client.local_addr()?,
        client.peer_addr()?
    );

    // Bulk: a writer thread sends, this thread reads the echo.
    let data = arca_testkit::pattern::random_bytes(0x9E37_79B9, BULK);
    let want = crc32c::crc32c(&data);
    let w = client.try_clone()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || (&w).write_all(&data));
    let mut got = 0usize;
    let mut crc = 0u32;
    let mut buf = vec![0u8; 256 << 10];
    while got < BULK {
        let n = (&client).read(&mut buf[..(BULK - got).min(256 << 10)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        got += n;
    }
    writer
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    let ok = crc == want;
    println!(
        "  bulk: {} MiB each way in {:.3} s ({:.0} MiB/s), crc32c {crc:#010x} {}",
        BULK >> 20,
        secs,
        (2 * BULK) as f64 / (1 << 20) as f64 / secs,
        if ok { "OK" } else { "MISMATCH" }
    );
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }

    // HTTP-like exchange on the same connection.
    write!(
        &client,
        "GET /status HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: arca-echo-guest\r\n\r\n"
    )?;
    let mut reply = String::new();
    (&client).read_to_string(&mut reply)?;
    let status = reply.lines().next().unwrap_or_default().to_string();
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    println!("  http: {status:?}, body {body:?}");
    server
        .join()
        .map_err(|_| io::Error::other("server thread panicked"))??;
    if !status.starts_with("HTTP/1.0 200") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad HTTP reply"));
    }

    // The guest's own network stack cannot reach the host's loopback.
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => println!(
            "  direct std::net::TcpStream::connect({addr}): CONNECTED (not isolated; run with --isolate)"
        ),
        Err(e) => println!("  direct std::net::TcpStream::connect({addr}): fails as expected: {e}"),
    }
    println!(
        "arca echo_guest: all checks passed in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arca echo_guest: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
