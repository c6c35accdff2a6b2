//! A tokio line-echo server through the monitor (the `arca` crate's `tokio` feature): listens
//! on ADDR through the session, and on every connection sends back each line it receives,
//! until the client closes. Serves forever, or CONNECTIONS connections and then exits.
//!
//! ```text
//! cargo build --release -p arca-suite --example tokio_server
//! target/release/arca-monitor run -- target/release/examples/tokio_server 127.0.0.1:7000
//! printf 'hello\nworld\n' | nc -N 127.0.0.1 7000
//! ```
//!
//! The monitor's default policy lets a guest listen on loopback ports 1024–65535 (or 0).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use arca::tokio::{AsyncTcpListener, AsyncTcpStream};
use arca::ArcaSession;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const USAGE: &str =
    "usage: tokio_server ADDR [CONNECTIONS]   (ADDR like 127.0.0.1:7000; run under `arca-monitor run --`)";

async fn run(addr: SocketAddr, connections: Option<u64>) -> io::Result<()> {
    let session = ArcaSession::from_env()?;
    let listener = AsyncTcpListener::bind(&session, addr)?;
    println!("tokio_server: listening on {}", listener.local_addr()?);
    let mut tasks = Vec::new();
    let mut accepted = 0u64;
    while connections.is_none_or(|max| accepted < max) {
        let (stream, peer) = listener.accept().await?;
        accepted += 1;
        tasks.push(tokio::spawn(async move {
            match serve(stream).await {
                Ok(n) => println!("tokio_server: {peer}: echoed {n} lines"),
                Err(e) => eprintln!("tokio_server: {peer}: {e}"),
            }
        }));
    }
    for t in tasks {
        t.await.map_err(io::Error::other)?;
    }
    Ok(())
}

/// Echoes `stream` line by line until EOF; returns the number of lines.
async fn serve(stream: AsyncTcpStream) -> io::Result<u64> {
    let (reader, mut writer) = (stream.clone(), stream);
    let mut lines = BufReader::new(reader).lines();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        writer.write_all(line.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        n += 1;
    }
    writer.shutdown().await?;
    Ok(n)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, connections) = match args.as_slice() {
        [a] => (a, None),
        [a, n] => match n.parse::<u64>() {
            Ok(n) if n > 0 => (a, Some(n)),
            _ => {
                eprintln!("tokio_server: CONNECTIONS `{n}` is not a positive number\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("tokio_server: `{addr}` is not an IP:PORT address\n{USAGE}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_server: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(addr, connections)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_server: {e}");
            ExitCode::FAILURE
        }
    }
}
