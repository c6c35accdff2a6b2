//! Host-side `std::net` servers for end-to-end tests and benchmarks: each
//! listens on 127.0.0.1:0, serves every connection on its own thread, and
//! lives for the rest of the process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn serve_each(handler: fn(TcpStream)) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || handler(s));
        }
    });
    Ok(addr)
}

/// Echoes every byte until EOF, then shuts down writing. Reads time out
/// after 30 s so a stuck test cannot keep a thread forever.
///
/// # Errors
/// Binding the listener.
pub fn echo_server() -> std::io::Result<SocketAddr> {
    serve_each(|mut s| {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// Counts the bytes of each connection until EOF, then answers the count as
/// a little-endian `u64`.
///
/// # Errors
/// Binding the listener.
pub fn count_sink() -> std::io::Result<SocketAddr> {
    serve_each(|mut s| {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(&n.to_le_bytes());
    })
}
