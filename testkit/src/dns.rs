//! A DNS server on 127.0.0.1 for the tests, with hand-built answers: A, AAAA, CNAME chains,
//! NXDOMAIN, a name that never answers (for timeouts) and per-name TTLs. It counts the
//! queries it receives per name, so a test can tell a cache hit from a miss.
//!
//! UDP only, one question per query, answers never truncated: what a resolver pointed at it
//! with `--resolver` needs. The server thread stops when the [`FakeDns`] drops (it polls a
//! stop flag every 50 ms).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server answers for one name.
#[derive(Debug, Clone)]
pub enum Record {
    /// Addresses (A and AAAA records), with a TTL in seconds.
    Addrs {
        /// IPv4 addresses, answered to A queries, in order.
        v4: Vec<Ipv4Addr>,
        /// IPv6 addresses, answered to AAAA queries, in order.
        v6: Vec<Ipv6Addr>,
        /// Seconds.
        ttl: u32,
    },
    /// A CNAME to another name of the zone, whose records follow it in the answer.
    Cname(String),
    /// NXDOMAIN.
    NxDomain,
    /// No answer at all (the resolver times out).
    Silent,
}

/// The server.
pub struct FakeDns {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;
/// The SOA minimum of empty answers (NXDOMAIN, no record of the type): how long a resolver
/// caches them.
pub const NEGATIVE_TTL: u32 = 60;

impl FakeDns {
    /// Starts a server answering from `zone` (names in lower case, without a trailing dot);
    /// a name not in it is NXDOMAIN.
    pub fn start(zone: &[(&str, Record)]) -> FakeDns {
        let zone: HashMap<String, Record> = zone
            .iter()
            .map(|(n, r)| (n.to_ascii_lowercase(), r.clone()))
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the fake DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = sock.local_addr().expect("local addr");
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queries, stop) = (Arc::clone(&queries), Arc::clone(&stop));
            std::thread::spawn(move || serve(&sock, &zone, &queries, &stop))
        };
        FakeDns {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received for `name` (any type), so far.
    pub fn queries(&self, name: &str) -> usize {
        let q = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        q.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    sock: &UdpSocket,
    zone: &HashMap<String, Record>,
    queries: &Mutex<HashMap<String, usize>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Some(q) = parse_query(&buf[..n]) else {
            continue;
        };
        *queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(q.name.clone())
            .or_default() += 1;
        if let Some(reply) = answer(&q, zone) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

struct Query {
    id: [u8; 2],
    /// Lower case, no trailing dot.
    name: String,
    qtype: u16,
    /// The question section's bytes, echoed in the reply.
    question: Vec<u8>,
    /// Whether the query carried an OPT record (EDNS), echoed back.
    edns: bool,
}

fn parse_query(b: &[u8]) -> Option<Query> {
    let id = [*b.first()?, *b.get(1)?];
    let qdcount = u16::from_be_bytes([*b.get(4)?, *b.get(5)?]);
    let arcount = u16::from_be_bytes([*b.get(10)?, *b.get(11)?]);
    if qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*b.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(b.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
    let question = b.get(12..at + 4)?.to_vec();
    Some(Query {
        id,
        name: labels.join("."),
        qtype,
        question,
        edns: arcount > 0,
    })
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).expect("label fits"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn record(owner: &str, rtype: u16, ttl: u32, rdata: &[u8], out: &mut Vec<u8>) {
    encode_name(owner, out);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // class IN
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(
        &u16::try_from(rdata.len())
            .expect("rdata fits")
            .to_be_bytes(),
    );
    out.extend_from_slice(rdata);
}

/// The reply to `q`, or `None` to stay silent.
fn answer(q: &Query, zone: &HashMap<String, Record>) -> Option<Vec<u8>> {
    let mut answers = Vec::new();
    let mut count = 0u16;
    let mut rcode = 0u8;
    let mut name = q.name.clone();
    // Follow CNAMEs, at most 8 deep.
    for _ in 0..8 {
        match zone.get(&name) {
            None | Some(Record::NxDomain) => {
                if count == 0 {
                    rcode = 3;
                }
                break;
            }
            Some(Record::Silent) => return None,
            Some(Record::Cname(target)) => {
                let mut rdata = Vec::new();
                encode_name(target, &mut rdata);
                record(&name, TYPE_CNAME, 300, &rdata, &mut answers);
                count += 1;
                name = target.to_ascii_lowercase();
            }
            Some(Record::Addrs { v4, v6, ttl }) => {
                if q.qtype == TYPE_A {
                    for a in v4 {
                        record(&name, TYPE_A, *ttl, &a.octets(), &mut answers);
                        count += 1;
                    }
                }
                if q.qtype == TYPE_AAAA {
                    for a in v6 {
                        record(&name, TYPE_AAAA, *ttl, &a.octets(), &mut answers);
                        count += 1;
                    }
                }
                break;
            }
        }
    }
    // An empty answer carries the zone's SOA, so resolvers cache it (RFC 2308).
    let mut authority = Vec::new();
    if count == 0 {
        let mut rdata = Vec::new();
        encode_name("ns.test", &mut rdata);
        encode_name("admin.test", &mut rdata);
        for v in [1u32, 3600, 600, 86400, NEGATIVE_TTL] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        record("test", TYPE_SOA, NEGATIVE_TTL, &rdata, &mut authority);
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q.id);
    out.push(0x81); // QR, RD
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    out.extend_from_slice(&count.to_be_bytes()); // ancount
    out.extend_from_slice(&u16::from(count == 0).to_be_bytes()); // nscount
    out.extend_from_slice(&u16::from(q.edns).to_be_bytes()); // arcount
    out.extend_from_slice(&q.question);
    out.extend_from_slice(&answers);
    out.extend_from_slice(&authority);
    if q.edns {
        // OPT: root owner, type 41, UDP size 1232, no flags, no data.
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    Some(out)
}
