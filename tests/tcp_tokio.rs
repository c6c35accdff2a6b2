//! The `tokio` feature: async streams and accept through a real monitor.

use std::time::Duration;

use arca::tokio::{AsyncTcpListener, AsyncTcpStream};
use arca_monitor::Config;
use arca_testkit::in_proc::InProcMonitor;
use arca_testkit::pattern::random_bytes;
use arca_testkit::servers::echo_server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn async_echo_and_accept() {
    let m = InProcMonitor::start("tcp-tokio", Config::default());
    let s = m.session();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            // Out to a host echo server, 4 MiB each way.
            let c = AsyncTcpStream::connect(&s, echo_server()).await.unwrap();
            let data = random_bytes(11, 4 << 20);
            let (mut r, mut w) = (c.clone(), c);
            let d = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&d).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert_eq!(crc32c::crc32c(&back), crc32c::crc32c(&data));

            // In: async accept from a host client.
            let l = AsyncTcpListener::bind(&s, "127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            let client = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut h = std::net::TcpStream::connect(addr).unwrap();
                h.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                h.read_exact(&mut b).unwrap();
                b
            });
            let (mut c, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            c.write_all(b"pong").await.unwrap();
            assert_eq!(&client.await.unwrap(), b"pong");
        })
        .await
        .expect("async test timed out");
    });
}
