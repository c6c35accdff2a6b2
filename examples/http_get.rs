//! A blocking HTTP/1.0 GET through the monitor: connects to HOST:PORT through the session,
//! sends `GET PATH`, and prints the whole response (status line, headers, body) to stdout.
//!
//! ```text
//! cargo build --release -p arca-suite --example http_get
//! target/release/arca-monitor run -- target/release/examples/http_get 127.0.0.1:8080 /
//! ```
//!
//! The guest gets its session from `arca-monitor run` (`ArcaSession::from_env`). A host name
//! is resolved in the guest with `std`'s resolver; a guest under `--isolate` has no DNS, so
//! give it an address.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use arca::ArcaSession;

const USAGE: &str = "usage: http_get HOST:PORT [PATH]   (run under `arca-monitor run --`)";
/// Longest wait for the server's next bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn run(target: &str, host: &str, path: &str) -> io::Result<()> {
    let session = ArcaSession::from_env()?;
    let stream = session.connect(target)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    eprintln!(
        "http_get: connected {} -> {}",
        stream.local_addr()?,
        stream.peer_addr()?
    );
    write!(
        &stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: arca-http_get\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    (&stream).read_to_end(&mut response)?;
    io::stdout().write_all(&response)?;
    eprintln!("http_get: {} bytes", response.len());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, path) = match args.as_slice() {
        [t] => (t.as_str(), "/"),
        [t, p] => (t.as_str(), p.as_str()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let host = match target.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => h,
        _ => {
            eprintln!("http_get: `{target}` is not HOST:PORT\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        eprintln!("http_get: PATH `{path}` must start with `/` and hold no spaces\n{USAGE}");
        return ExitCode::from(2);
    }
    match run(target, host, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_get: {e}");
            ExitCode::FAILURE
        }
    }
}
