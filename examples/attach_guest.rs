//! A guest that attaches to a running monitor instead of being started by it: a program
//! that `arca-monitor serve --socket PATH` serves, alongside any number of others. It
//! attaches to PATH (`ArcaSession::attach`), connects to HOST:PORT through the monitor,
//! sends one line, and prints the line that comes back.
//!
//! ```text
//! cargo build --release -p arca-monitor -p arca-suite --bins --example attach_guest
//! target/release/arca-monitor serve --socket /tmp/arca.sock &
//! target/release/examples/attach_guest /tmp/arca.sock 127.0.0.1:7000
//! ```
//!
//! (`127.0.0.1:7000` being a line echo server, such as the `tokio_server` example.)

use std::io::{self, BufRead, BufReader, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use arca::ArcaSession;

const USAGE: &str = "usage: attach_guest SOCKET_PATH HOST:PORT   \
                     (SOCKET_PATH of a running `arca-monitor serve --socket SOCKET_PATH`)";
/// Longest wait for the reply.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn run(socket: &Path, target: &str) -> io::Result<()> {
    let session = ArcaSession::attach(socket)?;
    println!("attach_guest: attached to {}", socket.display());
    let stream = session.connect(target)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let line = format!("hello from attached guest {}", std::process::id());
    writeln!(&stream, "{line}")?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    println!(
        "attach_guest: sent {line:?}, got back {:?}",
        reply.trim_end()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, target] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if !target
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        eprintln!("attach_guest: `{target}` is not HOST:PORT\n{USAGE}");
        return ExitCode::from(2);
    }
    match run(Path::new(socket), target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attach_guest: {e}");
            ExitCode::FAILURE
        }
    }
}
