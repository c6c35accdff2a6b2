//! The `tokio` feature: async streams and accept through a real monitor.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
    let rt = runtime();
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

/// A future that counts how often it is polled: a task is polled once per wake.
struct CountPolls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// Traffic on one async connection wakes only its task: the other connections' readers,
/// idle, are not polled again however often the monitor rings the guest for the busy one.
#[test]
fn traffic_on_one_connection_leaves_idle_readers_asleep() {
    const IDLE: usize = 16;
    const ROUND_TRIPS: usize = 200;
    let m = InProcMonitor::start("tcp-tokio-idle", Config::default());
    let s = m.session();
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut busy = AsyncTcpStream::connect(&s, echo_server()).await.unwrap();
            let mut readers = Vec::new();
            for _ in 0..IDLE {
                let mut c = AsyncTcpStream::connect(&s, echo_server()).await.unwrap();
                let polls = Arc::new(AtomicUsize::new(0));
                let read = CountPolls {
                    inner: Box::pin(async move {
                        let mut b = [0u8; 1];
                        c.read(&mut b).await
                    }),
                    polls: Arc::clone(&polls),
                };
                readers.push((tokio::spawn(read), polls));
            }
            // Every idle reader has been polled, found nothing and registered its waker.
            for (_, polls) in &readers {
                for _ in 0..1_000 {
                    if polls.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let before: Vec<usize> = readers
                .iter()
                .map(|(_, p)| p.load(Ordering::Relaxed))
                .collect();
            assert!(before.iter().all(|&n| n >= 1), "{before:?}");
            let msg = random_bytes(3, 64);
            let mut back = vec![0u8; msg.len()];
            for _ in 0..ROUND_TRIPS {
                busy.write_all(&msg).await.unwrap();
                busy.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg);
            }
            let after: Vec<usize> = readers
                .iter()
                .map(|(_, p)| p.load(Ordering::Relaxed))
                .collect();
            assert_eq!(
                after, before,
                "idle readers were woken by another connection"
            );
            for (task, _) in &readers {
                assert!(!task.is_finished());
                task.abort();
            }
        })
        .await
        .expect("async test timed out");
    });
}

/// A two-thread tokio runtime for a test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
