//! WIRE.md and `daisy::wire` agree: the message table's type bytes and lengths, and every
//! layout table's offsets, sizes and byte order (each field's bytes are found where the table
//! says in a message the encoder built), and the limits the tables state.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use daisy::wire::{
    self, BufferHeader, ExtHello, Greeting, GreetingExt, PacketHeader, BUFFER_HEADER_LEN,
    CHECK_LEN, CLIENT_DONE, CLIENT_READY, CLIENT_REQ, DEFAULT_GROUP, DEFAULT_PORT, EXT_CHECKS,
    EXT_CHECKS_HEAD_LEN, EXT_END, EXT_END_LEN, EXT_HELLO, EXT_HELLO_LEN, EXT_MAGIC,
    EXT_MAX_PAYLOAD, EXT_NEED_CHECKS, EXT_ROUND, EXT_ROUND_LEN, EXT_SIZE, EXT_SIZE_LEN,
    GREETING_LEN, GREET_FLAG_FULL, MAX_PACKETS_PER_BUFFER, PACKET_HEADER_LEN, PLAIN_MAX_PAYLOAD,
    SERVER_SENT,
};

const SPEC: &str = include_str!("../WIRE.md");

/// One markdown table: the nearest heading above it and its rows (cells trimmed, backticks
/// removed), header and separator rows left out.
#[derive(Debug)]
struct Table {
    heading: String,
    rows: Vec<Vec<String>>,
}

fn tables() -> Vec<Table> {
    let mut heading = String::new();
    let mut out: Vec<Table> = Vec::new();
    let mut in_table = false;
    for line in SPEC.lines() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('`', ""))
            .collect();
        if !in_table {
            // The first row names the columns.
            in_table = true;
            out.push(Table {
                heading: heading.clone(),
                rows: Vec::new(),
            });
            continue;
        }
        if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
            continue;
        }
        out.last_mut()
            .expect("a table was started")
            .rows
            .push(cells);
    }
    out
}

/// `65536` as the spec writes it: `65 536`.
fn spaced(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The layout tables under `heading` (the heading's text ends with it).
fn layouts(heading: &str) -> Vec<Table> {
    let found: Vec<Table> = tables()
        .into_iter()
        .filter(|t| t.heading.ends_with(heading))
        .collect();
    assert!(
        !found.is_empty(),
        "no table under a heading ending {heading:?}"
    );
    found
}

/// What a layout table's field holds in a sample message.
#[derive(Debug, Clone)]
enum Want {
    /// An integer, encoded as the table's encoding column says (`u16 BE`, `u32 LE`, ...).
    Int(u64),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// `v` as the spec's `encoding` cell says, or `None` for an encoding that is not an integer.
fn encode_int(encoding: &str, v: u64) -> Option<Vec<u8>> {
    let (width, big) = match encoding.trim_end_matches(" each") {
        "u8" => (1, false),
        "u16 LE" => (2, false),
        "u16 BE" => (2, true),
        "u32 LE" => (4, false),
        "u64 LE" => (8, false),
        _ => return None,
    };
    Some(if big {
        v.to_be_bytes()[8 - width..].to_vec()
    } else {
        v.to_le_bytes()[..width].to_vec()
    })
}

/// Checks one layout table against `msg`: rows are contiguous from `from` to the end of
/// `msg`, and each field's bytes in `msg` are `fields[name]`, integers encoded as the row's
/// encoding column says (so a wrong offset, size or byte order in the table fails). Sizes
/// that are not numbers (`4 × req_count`) are taken from the expected bytes.
fn check_layout(t: &Table, from: usize, msg: &[u8], fields: &BTreeMap<&str, Want>) {
    let mut at = from;
    assert!(!t.rows.is_empty(), "{}: an empty table", t.heading);
    for row in &t.rows {
        let [off, size, name, encoding, _values] = &row[..] else {
            panic!("{}: a layout row has 5 cells: {row:?}", t.heading);
        };
        let off: usize = off.parse().unwrap_or_else(|_| panic!("offset {off:?}"));
        assert_eq!(
            off, at,
            "{}: {name} does not follow the field before",
            t.heading
        );
        let want = match fields.get(name.as_str()) {
            Some(Want::Bytes(b)) => b.clone(),
            Some(Want::Int(v)) => encode_int(encoding, *v)
                .unwrap_or_else(|| panic!("{}: {name} has no integer encoding", t.heading)),
            None => panic!("{}: no sample for field {name}", t.heading),
        };
        if let Ok(n) = size.parse::<usize>() {
            assert_eq!(n, want.len(), "{}: size of {name} ({encoding})", t.heading);
        }
        let len = want.len();
        assert_eq!(
            msg.get(off..off + len),
            Some(&want[..]),
            "{}: bytes of {name} at {off}..{}",
            t.heading,
            off + len
        );
        at = off + len;
    }
    assert_eq!(at, msg.len(), "{}: the table covers the message", t.heading);
}

fn values_of(t: &Table, field: &str) -> String {
    t.rows
        .iter()
        .find(|r| r.get(2).map(String::as_str) == Some(field))
        .and_then(|r| r.get(4).cloned())
        .unwrap_or_else(|| panic!("{}: no row for {field}", t.heading))
}

#[test]
fn the_message_table_matches_the_type_bytes_and_lengths() {
    let table = tables()
        .into_iter()
        .find(|t| t.heading.ends_with("Messages"))
        .expect("the message table");
    let mut got: BTreeMap<String, (String, String)> = BTreeMap::new();
    for row in &table.rows {
        let [ty, name, _dir, len] = &row[..] else {
            panic!("a message row has 4 cells: {row:?}");
        };
        got.insert(name.clone(), (ty.clone(), len.clone()));
    }
    let typed = |b: u8| format!("0x{b:02x}");
    let want: BTreeMap<String, (String, String)> = [
        ("greeting", "—".into(), GREETING_LEN.to_string()),
        ("buffer header", "—".into(), BUFFER_HEADER_LEN.to_string()),
        (
            "data packet",
            "—".into(),
            format!("{PACKET_HEADER_LEN} + data_size"),
        ),
        ("CLIENT_READY", typed(CLIENT_READY), "1".into()),
        ("CLIENT_REQ", typed(CLIENT_REQ), "5 + 4 × req_count".into()),
        ("CLIENT_DONE", typed(CLIENT_DONE), "1".into()),
        ("SERVER_SENT", typed(SERVER_SENT), "1".into()),
        ("EXT_HELLO", typed(EXT_HELLO), EXT_HELLO_LEN.to_string()),
        ("EXT_ROUND", typed(EXT_ROUND), EXT_ROUND_LEN.to_string()),
        ("EXT_END", typed(EXT_END), EXT_END_LEN.to_string()),
        ("EXT_NEED_CHECKS", typed(EXT_NEED_CHECKS), "1".into()),
        (
            "EXT_CHECKS",
            typed(EXT_CHECKS),
            format!("{EXT_CHECKS_HEAD_LEN} + {CHECK_LEN} × count"),
        ),
        ("EXT_SIZE", typed(EXT_SIZE), EXT_SIZE_LEN.to_string()),
    ]
    .into_iter()
    .map(|(n, t, l)| (n.to_string(), (t, l)))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn the_greeting_tables_match_the_encoder() {
    let group = SocketAddrV4::new(DEFAULT_GROUP, DEFAULT_PORT);
    let plain = Greeting { group, ext: None }.encode();
    let ext = Greeting {
        group,
        ext: Some(GreetingExt {
            version: wire::EXT_VERSION,
            flags: GREET_FLAG_FULL,
        }),
    }
    .encode();
    let t = layouts("Greeting");
    assert_eq!(t.len(), 2, "the plain greeting and the trailer");
    let fields = BTreeMap::from([
        ("family", Want::Int(2)),
        ("port", Want::Int(u64::from(DEFAULT_PORT))),
        ("group", Want::Bytes(DEFAULT_GROUP.octets().to_vec())),
        ("trailer", Want::Bytes(vec![0; 8])),
        ("magic", Want::Bytes(EXT_MAGIC.to_vec())),
        ("version", Want::Int(u64::from(wire::EXT_VERSION))),
        ("flags", Want::Int(u64::from(GREET_FLAG_FULL))),
        ("reserved", Want::Bytes(vec![0; 3])),
    ]);
    check_layout(&t[0], 0, &plain, &fields);
    check_layout(&t[1], 8, &ext, &fields);
    let intro = &SPEC[..SPEC.find("## 3.").expect("section 3")];
    assert!(
        intro.contains(&format!("**{DEFAULT_PORT}**")),
        "default port"
    );
    assert!(
        intro.contains(&format!("**{DEFAULT_GROUP}**")),
        "default group"
    );
}

#[test]
fn the_buffer_header_table_matches_the_encoder() {
    let h = BufferHeader {
        buffer_id: 0x0403_0201,
        buffer_size: 0x0807_0605,
        packet_id_base: 0x0c0b_0a09,
        pkt_count: 0x0001_0000,
    };
    let fields = BTreeMap::from([
        ("buffer_id", Want::Int(u64::from(h.buffer_id))),
        ("buffer_size", Want::Int(u64::from(h.buffer_size))),
        ("packet_id_base", Want::Int(u64::from(h.packet_id_base))),
        ("pkt_count", Want::Int(u64::from(h.pkt_count))),
    ]);
    let t = layouts("Buffer header");
    check_layout(&t[0], 0, &h.encode(), &fields);
    let count = values_of(&t[0], "pkt_count");
    let max = usize::try_from(MAX_PACKETS_PER_BUFFER).unwrap();
    assert!(count.contains(&format!("0..={}", spaced(max))), "{count}");
    let section = &SPEC[SPEC.find("## 5.").unwrap()..SPEC.find("## 6.").unwrap()];
    assert!(section.contains(&format!("1..={} bytes", spaced(PLAIN_MAX_PAYLOAD))));
    assert!(section.contains(&format!("up to {}", spaced(EXT_MAX_PAYLOAD))));
}

#[test]
fn the_data_packet_table_matches_the_encoder() {
    let payload = [0x5au8, 0xa5, 1, 2, 3];
    let mut msg = Vec::new();
    wire::encode_packet(0x0403_0201, &payload, &mut msg);
    let h = PacketHeader::for_payload(0x0403_0201, &payload);
    let fields = BTreeMap::from([
        ("seq", Want::Int(u64::from(h.seq))),
        ("crc", Want::Int(u64::from(wire::additive_sum(&payload)))),
        ("data_size", Want::Int(5)),
        ("payload", Want::Bytes(payload.to_vec())),
    ]);
    check_layout(&layouts("Data packet")[0], 0, &msg, &fields);
}

#[test]
fn the_client_req_table_matches_the_encoder() {
    let seqs = [0x0403_0201u32, 0x0807_0605];
    let mut msg = Vec::new();
    wire::encode_req(&seqs, &mut msg);
    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(CLIENT_REQ))),
        ("req_count", Want::Int(2)),
        (
            "seq",
            Want::Bytes(seqs.iter().flat_map(|s| s.to_le_bytes()).collect()),
        ),
    ]);
    let t = &layouts("CLIENT_REQ")[0];
    check_layout(t, 0, &msg, &fields);
    let max = usize::try_from(MAX_PACKETS_PER_BUFFER).unwrap();
    assert!(values_of(t, "req_count").contains(&format!("0..={}", spaced(max))));
}

#[test]
fn the_extension_tables_match_the_encoders() {
    let hello = ExtHello {
        version: 1,
        caps: 0x01,
        max_payload: 0x0403_0201,
    };
    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(EXT_HELLO))),
        ("version", Want::Int(1)),
        ("caps", Want::Int(0x01)),
        ("reserved", Want::Int(0)),
        ("max_payload", Want::Int(0x0403_0201)),
    ]);
    check_layout(&layouts("EXT_HELLO")[0], 0, &hello.encode(), &fields);

    let digest: [u8; 32] = std::array::from_fn(|i| i as u8);
    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(EXT_ROUND))),
        ("payload_size", Want::Int(0xff01)),
        ("digest", Want::Bytes(digest.to_vec())),
    ]);
    let t = &layouts("EXT_ROUND")[0];
    check_layout(t, 0, &wire::encode_round(0xff01, &digest), &fields);
    let size = values_of(t, "payload_size");
    assert!(
        size.contains(&format!("1..={}", spaced(EXT_MAX_PAYLOAD))),
        "{size}"
    );

    let checks = [[0xaa; CHECK_LEN], [0xbb; CHECK_LEN]];
    let mut msg = Vec::new();
    wire::encode_checks(&checks, &mut msg);
    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(EXT_CHECKS))),
        ("count", Want::Int(2)),
        ("check", Want::Bytes(checks.concat())),
    ]);
    let t = &layouts("EXT_CHECKS")[0];
    check_layout(t, 0, &msg, &fields);
    let max = usize::try_from(MAX_PACKETS_PER_BUFFER).unwrap();
    assert!(values_of(t, "count").contains(&format!("0..={}", spaced(max))));

    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(EXT_END))),
        ("sha256", Want::Bytes(digest.to_vec())),
        ("total", Want::Int(0x0807_0605_0403_0201)),
    ]);
    let msg = wire::encode_end(&digest, 0x0807_0605_0403_0201);
    check_layout(&layouts("EXT_END")[0], 0, &msg, &fields);

    let fields = BTreeMap::from([
        ("type", Want::Int(u64::from(EXT_SIZE))),
        ("total", Want::Int(0x0807_0605_0403_0201)),
    ]);
    let msg = wire::encode_size(0x0807_0605_0403_0201);
    check_layout(&layouts("EXT_SIZE")[0], 0, &msg, &fields);
}

#[test]
fn every_layout_table_is_checked() {
    let checked = [
        "Greeting",
        "Buffer header",
        "Data packet",
        "CLIENT_REQ",
        "EXT_HELLO",
        "EXT_ROUND",
        "EXT_CHECKS",
        "EXT_END",
        "EXT_SIZE",
    ];
    for t in tables() {
        if t.heading.ends_with("Messages") {
            continue;
        }
        assert!(
            checked.iter().any(|h| t.heading.ends_with(h)),
            "table under {:?} is not checked",
            t.heading
        );
    }
}
