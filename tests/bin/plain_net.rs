//! `plain-net`: an unmodified network program for the netstack tests. It uses `std::net`
//! only (no arca), so under `arca-monitor run --isolate --net stack` its sockets reach the
//! host through the guest-side stack alone. Every mode prints one result line and exits 0,
//! or prints `err KIND MS` (the error kind and milliseconds taken) and exits 1.
//!
//! ```text
//! plain-net connect ADDR             connect, print `ok MS`
//! plain-net echo ADDR BYTES          send BYTES (then FIN) while reading to EOF:
//!                                    `sent N FNV received M FNV`
//! plain-net fin-first ADDR BYTES     read to the peer's FIN first, then send BYTES:
//!                                    `got N FNV sent M FNV`
//! plain-net slow ADDR CHUNK TICKS    read CHUNK bytes every 20 ms, TICKS times: `read N`
//! plain-net udp ADDR COUNT SIZE      COUNT datagrams of SIZE, each echo awaited (2 s):
//!                                    `udp sent N echoed M`
//! plain-net http ADDR PATH           HTTP/1.0 GET: `status CODE body N FNV`
//! plain-net lookup NAME              resolve NAME as any program does (getaddrinfo):
//!                                    `addrs A B ...`, sorted
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// FNV-1a, 64-bit, fed in pieces.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Deterministic bytes (xorshift64).
fn fill(state: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = (*state >> 24) as u8;
    }
}

fn send_all(s: &mut TcpStream, total: u64) -> std::io::Result<Fnv> {
    let mut h = Fnv::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        fill(&mut state, &mut buf[..n]);
        s.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    Ok(h)
}

fn read_all(s: &mut TcpStream) -> std::io::Result<(u64, Fnv)> {
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

fn run(args: &[String]) -> std::io::Result<String> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad arguments");
    let mode = args.first().ok_or_else(bad)?;
    if mode == "lookup" {
        use std::net::ToSocketAddrs as _;
        let name = args.get(1).ok_or_else(bad)?;
        let mut found: Vec<String> = (name.as_str(), 0)
            .to_socket_addrs()?
            .map(|a| a.ip().to_string())
            .collect();
        found.sort();
        found.dedup();
        return Ok(format!("addrs {}", found.join(" ")));
    }
    let addr: SocketAddr = args.get(1).ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let num = |i: usize| -> std::io::Result<u64> {
        args.get(i).ok_or_else(bad)?.parse().map_err(|_| bad())
    };
    let start = Instant::now();
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok::<_, std::io::Error>(s)
    };
    match mode.as_str() {
        "connect" => {
            connect()?;
            Ok(format!("ok {}", start.elapsed().as_millis()))
        }
        "echo" => {
            let total = num(2)?;
            let mut s = connect()?;
            let mut w = s.try_clone()?;
            let writer = std::thread::spawn(move || send_all(&mut w, total));
            let (got, rh) = read_all(&mut s)?;
            let sh = writer
                .join()
                .map_err(|_| std::io::Error::other("writer panicked"))??;
            Ok(format!(
                "sent {total} {:016x} received {got} {:016x}",
                sh.0, rh.0
            ))
        }
        "fin-first" => {
            let total = num(2)?;
            let mut s = connect()?;
            let (got, rh) = read_all(&mut s)?;
            let sh = send_all(&mut s, total)?;
            Ok(format!(
                "got {got} {:016x} sent {total} {:016x}",
                rh.0, sh.0
            ))
        }
        "slow" => {
            let chunk = usize::try_from(num(2)?).map_err(|_| bad())?;
            let ticks = num(3)?;
            let mut s = connect()?;
            let mut buf = vec![0u8; chunk];
            let mut total = 0u64;
            for _ in 0..ticks {
                s.read_exact(&mut buf)?;
                total += chunk as u64;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(format!("read {total}"))
        }
        "udp" => {
            let count = num(2)?;
            let size = usize::try_from(num(3)?).map_err(|_| bad())?.max(8);
            let any: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().map_err(|_| bad())?
            } else {
                "[::]:0".parse().map_err(|_| bad())?
            };
            let u = UdpSocket::bind(any)?;
            // connect() filters by source: only replies from ADDR itself are received.
            u.connect(addr)?;
            u.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut echoed = 0u64;
            let mut out = vec![0u8; size];
            let mut back = vec![0u8; size + 1];
            for i in 0..count {
                out[..8].copy_from_slice(&i.to_be_bytes());
                u.send(&out)?;
                match u.recv(&mut back) {
                    Ok(n) if n == size && back[..n] == out[..] => echoed += 1,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(format!("udp sent {count} echoed {echoed}"))
        }
        "http" => {
            let path = args.get(2).ok_or_else(bad)?;
            let mut s = connect()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut all = Vec::new();
            s.read_to_end(&mut all)?;
            let head_end = all
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or_else(|| std::io::Error::other("no end of headers"))?;
            let head = String::from_utf8_lossy(&all[..head_end]);
            let code = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let body = &all[head_end + 4..];
            let mut h = Fnv::new();
            h.update(body);
            Ok(format!("status {code} body {} {:016x}", body.len(), h.0))
        }
        _ => Err(bad()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = Instant::now();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("err {:?} {}", e.kind(), start.elapsed().as_millis());
            eprintln!("plain-net: {e}");
            ExitCode::FAILURE
        }
    }
}
