//! The sender's I/O shell, written once against [`SenderNet`]: an accept thread, one reader
//! and one writer thread per receiver (so a stalled receiver never blocks the others), and
//! the main thread driving the [`Sender`] core, reading input and multicasting.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::net::{McastOptions, McastSender, NetListener, NetStream, SenderNet};
use crate::sender::{Action, Delivery, ReceiverId, Sender, SenderConfig, SenderStats};

/// Shell settings beyond the core's.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Core settings.
    pub core: SenderConfig,
    /// TCP listen address.
    pub bind: SocketAddr,
    /// Multicast options (group must equal `core.group`).
    pub mcast: McastOptions,
    /// Progress bar on stderr (its total is `core.input_len`).
    pub progress: bool,
}

/// How a transfer ended.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Core counters.
    pub stats: SenderStats,
    /// How many of the expected receivers got the whole, verified transfer.
    pub delivery: Delivery,
    /// Wall time from the first round to the end.
    pub seconds: f64,
}

enum Event<S> {
    Accepted(S, SocketAddr),
    Tcp(ReceiverId, Vec<u8>),
    Closed(ReceiverId, String),
    AcceptFailed(String),
}

struct Conn<S> {
    ctl: S,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
}

/// Runs one transfer from `input` over `net`.
///
/// # Errors
/// Setup errors (listen, multicast socket, bad configuration), input read errors and
/// multicast send errors. Receivers failing are not errors: see [`SendReport`].
pub fn run_sender<N: SenderNet>(
    net: &N,
    opts: SendOptions,
    mut input: impl Read,
) -> io::Result<SendReport> {
    let listener = net.listen(opts.bind)?;
    let mut mcast = net.multicast_sender(opts.mcast)?;
    let start = Instant::now();
    let mut core = Sender::new(opts.core.clone(), start)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let (ev_tx, ev_rx) = mpsc::channel::<Event<<N::Listener as NetListener>::Stream>>();
    {
        let ev_tx = ev_tx.clone();
        thread::Builder::new()
            .name("daisy-accept".into())
            .spawn(move || loop {
                match listener.accept_stream() {
                    Ok((s, a)) => {
                        if ev_tx.send(Event::Accepted(s, a)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = ev_tx.send(Event::AcceptFailed(e.to_string()));
                        return;
                    }
                }
            })?;
    }
    let bar = crate::progress::on_stderr(opts.progress, opts.core.input_len);
    let mut conns: HashMap<ReceiverId, Conn<<N::Listener as NetListener>::Stream>> = HashMap::new();
    let mut first_round: Option<Instant> = None;
    'run: loop {
        core.handle_timeout(Instant::now());
        while let Some(a) = core.poll_action() {
            match a {
                Action::SendTcp { to, bytes } => {
                    if let Some(tx) = conns.get(&to).and_then(|c| c.tx.as_ref()) {
                        let _ = tx.send(bytes);
                    }
                }
                Action::Multicast { first, count } => {
                    let list: Vec<(&[u8], &[u8])> = (first..first + count)
                        .filter_map(|i| core.datagram(i).map(|(h, p)| (&h[..], p)))
                        .collect();
                    mcast.send_packets(&list)?;
                }
                Action::Fill => {
                    first_round.get_or_insert_with(Instant::now);
                    let buf = core.buffer_mut();
                    let n = fill(&mut input, buf)?;
                    tracing::debug!(bytes = n, "round filled from the input");
                    if let Some(b) = &bar {
                        b.inc(n as u64);
                    }
                    core.handle_filled(n, Instant::now());
                }
                Action::Close { who, reason } => {
                    let addr = core.addr(who);
                    match &reason {
                        Some(r) => tracing::info!(receiver = who.0, ?addr, "dropped: {r}"),
                        None => tracing::info!(receiver = who.0, ?addr, "completed"),
                    }
                    if let Some(c) = conns.get_mut(&who) {
                        c.tx = None;
                        if reason.is_some() {
                            let _ = c.ctl.shutdown_stream(Shutdown::Both);
                        }
                    }
                }
                Action::Finished => {
                    let st = core.stats();
                    tracing::info!(
                        bytes = st.bytes,
                        completed = st.completed,
                        "transfer finished"
                    );
                    break 'run;
                }
            }
        }
        let now = Instant::now();
        let wait = core
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        let mut ev = match ev_rx.recv_timeout(wait) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("event channel closed"))
            }
        };
        let mut budget = 256;
        while let Some(e) = ev.take() {
            let now = Instant::now();
            match e {
                Event::Accepted(s, addr) => match core.handle_connect(addr, now) {
                    Ok(id) => {
                        tracing::info!(receiver = id.0, %addr, "connected");
                        conns.insert(id, spawn_conn(id, s, ev_tx.clone())?);
                    }
                    Err(_) => {
                        tracing::info!(%addr, "refused: the transfer is full");
                        refuse(s, core.full_greeting());
                    }
                },
                Event::Tcp(id, bytes) => core.handle_tcp(id, &bytes, now),
                Event::Closed(id, why) => core.handle_closed(id, &why, now),
                Event::AcceptFailed(why) => {
                    if !core.is_finished() && conns.len() < opts.core.clients {
                        return Err(io::Error::other(format!("accept failed: {why}")));
                    }
                }
            }
            budget -= 1;
            if budget > 0 {
                ev = ev_rx.try_recv().ok();
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // Let the writers flush the last bytes (bounded by the deadline).
    let until = Instant::now() + opts.core.deadline;
    for c in conns.values_mut() {
        c.tx = None;
    }
    for c in conns.values_mut() {
        if let Some(w) = c.writer.take() {
            while !w.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(2));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                let _ = c.ctl.shutdown_stream(Shutdown::Both);
            }
        }
    }
    let seconds = first_round.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(SendReport {
        delivery: core.delivery(),
        stats: core.stats().clone(),
        seconds,
    })
}

/// Reads until `buf` is full or end of input.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn spawn_conn<S: NetStream>(
    id: ReceiverId,
    s: S,
    ev: mpsc::Sender<Event<S>>,
) -> io::Result<Conn<S>> {
    let mut rd = s.clone_stream()?;
    let mut wr = s.clone_stream()?;
    let ev2 = ev.clone();
    thread::Builder::new()
        .name(format!("daisy-rd{}", id.0))
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) => {
                        let _ = ev.send(Event::Closed(id, "end of stream".into()));
                        return;
                    }
                    Ok(n) => {
                        if ev.send(Event::Tcp(id, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = ev.send(Event::Closed(id, e.to_string()));
                        return;
                    }
                }
            }
        })?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let writer = thread::Builder::new()
        .name(format!("daisy-wr{}", id.0))
        .spawn(move || {
            while let Ok(b) = rx.recv() {
                if let Err(e) = wr.write_all(&b).and_then(|()| wr.flush()) {
                    let _ = ev2.send(Event::Closed(id, e.to_string()));
                    return;
                }
            }
            let _ = wr.shutdown_stream(Shutdown::Write);
        })?;
    Ok(Conn {
        ctl: s,
        tx: Some(tx),
        writer: Some(writer),
    })
}

/// Tells a late connection the transfer is full, then closes it (in the background).
fn refuse<S: NetStream>(mut s: S, greeting: [u8; 16]) {
    let _ = thread::Builder::new()
        .name("daisy-refuse".into())
        .spawn(move || {
            let _ = s.write_all(&greeting);
            let _ = s.shutdown_stream(Shutdown::Write);
            let mut sink = [0u8; 256];
            // Drain briefly so the close is graceful; bounded.
            for _ in 0..8 {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
}

/// Formats the sender's summary line. `failed` lists the dropped receivers as `ID@ADDRESS`
/// separated by commas (`-` for none); `missing` counts those that never connected. The
/// `rate_*` fields are the pacing rate's trajectory in MB/s (`-` without rounds) and `losses`
/// the worst receiver's lost packets per round, run-length encoded (`30*12` is 12 rounds of
/// 30; see [`SenderStats::losses_compact`]).
pub fn summary_line(r: &SendReport) -> String {
    let s = &r.stats;
    let mbps = crate::mbps(s.bytes, r.seconds);
    let failed = if s.dropped.is_empty() {
        "-".to_string()
    } else {
        s.dropped
            .iter()
            .map(|d| format!("{}@{}", d.id.0, d.addr))
            .collect::<Vec<_>>()
            .join(",")
    };
    let rates = match s.rate_summary() {
        Some((start, min, last, mean)) => format!(
            "rate_start={:.1} rate_min={:.1} rate_final={:.1} rate_mean={:.1}",
            start / 1e6,
            min / 1e6,
            last / 1e6,
            mean / 1e6
        ),
        None => "rate_start=- rate_min=- rate_final=- rate_mean=-".to_string(),
    };
    format!(
        "daisy-send: summary bytes={} packets={} repaired={} duplicates={} dropped_receivers={} \
         completed_receivers={} failed={failed} missing={} seconds={:.3} mbps={:.1} {rates} \
         losses={} sha256={}",
        s.bytes,
        s.packets,
        s.repaired,
        s.duplicates,
        s.dropped.len(),
        s.completed,
        s.missing,
        r.seconds,
        mbps,
        s.losses_compact(),
        crate::wire::hex(&s.sha256)
    )
}

/// The summary as one JSON object (`daisy-send --json` prints it on stdout): the summary
/// line's counters, `delivery` (`"all"`, `"partial"`, `"failed"`), `failed` as objects with
/// `id`, `addr` and `reason`, `rate_mbps` with `start`, `min`, `final` and `mean` (`null`
/// without rounds), and `rounds`, one object per round with data: `rate_mbps`, `packets`
/// and `lost` (the worst receiver's repair requests).
pub fn summary_json(r: &SendReport) -> String {
    let s = &r.stats;
    let mb = |x: f64| x / 1e6;
    let rate = s.rate_summary().map(|(start, min, last, mean)| {
        serde_json::json!({
            "start": mb(start),
            "min": mb(min),
            "final": mb(last),
            "mean": mb(mean),
        })
    });
    let delivery = match r.delivery {
        Delivery::All => "all",
        Delivery::Partial => "partial",
        Delivery::Failed => "failed",
    };
    serde_json::json!({
        "bytes": s.bytes,
        "packets": s.packets,
        "repaired": s.repaired,
        "duplicates": s.duplicates,
        "completed_receivers": s.completed,
        "dropped_receivers": s.dropped.len(),
        "extended_receivers": s.extended,
        "missing": s.missing,
        "failed": s.dropped.iter().map(|d| serde_json::json!({
            "id": d.id.0,
            "addr": d.addr.to_string(),
            "reason": d.reason.to_string(),
        })).collect::<Vec<_>>(),
        "delivery": delivery,
        "seconds": r.seconds,
        "mbps": crate::mbps(s.bytes, r.seconds),
        "sha256": crate::wire::hex(&s.sha256),
        "rate_mbps": rate,
        "rounds": s.rounds.iter().map(|x| serde_json::json!({
            "rate_mbps": mb(x.rate),
            "packets": x.packets,
            "lost": x.lost,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}
