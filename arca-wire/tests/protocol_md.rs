//! PROTOCOL.md and the code agree: the type table, the error-code table, the socket-option
//! table, every layout table's offsets and sizes, the stated limits, and every example frame,
//! byte for byte.

mod util;

use std::collections::{BTreeMap, BTreeSet};

use arca_wire::{
    encode_socket_addr, Bootstrap, Direction, ErrorCode, Handle, MessageType, PipeInfo,
    SocketOption, BOOTSTRAP_LEN, BOOTSTRAP_MAGIC, HEADER_LEN, MAX_FRAME_PAYLOAD, MAX_PAYLOAD,
    SOCKET_ADDR_LEN,
};
use util::golden;

const SPEC: &str = include_str!("../../PROTOCOL.md");

/// A markdown table row under the nearest heading: its cells, trimmed, backticks removed.
struct Row {
    heading: String,
    cells: Vec<String>,
}

fn rows() -> Vec<Row> {
    let mut heading = String::new();
    let mut out = Vec::new();
    for line in SPEC.lines() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().replace('`', "");
        } else if line.starts_with('|') && !line.starts_with("|--") && !line.starts_with("| --") {
            let cells = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect();
            out.push(Row {
                heading: heading.clone(),
                cells,
            });
        }
    }
    out
}

fn hex_u8(s: &str) -> Option<u8> {
    u8::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

fn hex_u16(s: &str) -> Option<u16> {
    u16::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The example frames: `<!-- golden: NAME -->` followed by a fenced block of hex bytes, each
/// line's bytes ending at the first token that is not two hex digits (the `;` comment).
fn examples() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- golden: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```text"),
            "example {name} opens a text block"
        );
        let mut bytes = Vec::new();
        for line in lines.by_ref() {
            if line == "```" {
                break;
            }
            for token in line.split_whitespace() {
                if token.len() != 2 {
                    break;
                }
                match u8::from_str_radix(token, 16) {
                    Ok(b) => bytes.push(b),
                    Err(_) => break,
                }
            }
        }
        assert!(
            out.insert(name.to_string(), bytes).is_none(),
            "duplicate example {name}"
        );
    }
    out
}

#[test]
fn examples_match_golden_frames() {
    let examples = examples();
    let goldens = golden::all();
    let mut names: BTreeSet<&str> = goldens.iter().map(|g| g.name).collect();
    // Checked by their own tests below.
    names.insert("bootstrap");
    names.insert("socket_addr");
    let documented: BTreeSet<&str> = examples.keys().map(String::as_str).collect();
    assert_eq!(
        documented, names,
        "PROTOCOL.md has one example per golden frame, and the bootstrap's"
    );
    for g in goldens {
        assert_eq!(examples[g.name], g.bytes, "PROTOCOL.md example {}", g.name);
    }
}

#[test]
fn socket_addr_example_matches_code() {
    let addr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(examples()["socket_addr"], encode_socket_addr(&addr));
}

#[test]
fn bootstrap_example_matches_code() {
    let (value, bytes) = golden::bootstrap();
    assert_eq!(examples()["bootstrap"], bytes);
    assert_eq!(value.to_bytes(), bytes);
    assert_eq!(Bootstrap::parse(bytes), Ok(value));
    assert_eq!(&bytes[..4], &BOOTSTRAP_MAGIC);
}

#[test]
fn type_table_matches_code() {
    let mut seen = BTreeSet::new();
    // The second table of section 4 (the first lists ranges, in two columns).
    for row in rows()
        .iter()
        .filter(|r| r.heading == "4. Message types" && r.cells.len() == 5)
    {
        let [number, name, direction, len, answers] = &row.cells[..] else {
            unreachable!("filtered on five cells");
        };
        let Some(number) = hex_u8(number) else {
            continue; // the header row
        };
        let ty = MessageType::from_u8(number)
            .unwrap_or_else(|| panic!("PROTOCOL.md lists unknown type {number:#04x}"));
        assert_eq!(&format!("{ty:?}"), name, "{number:#04x}");
        let want_direction = match direction.as_str() {
            "G→M" => Direction::GuestToMonitor,
            "M→G" => Direction::MonitorToGuest,
            other => panic!("bad direction {other}"),
        };
        assert_eq!(ty.direction(), want_direction, "{name}");
        assert_eq!(len.parse::<u16>().unwrap(), ty.payload_len(), "{name}");
        let want_answers = match (ty, ty.request()) {
            (MessageType::Error, _) => "any request".to_string(),
            (_, Some(request)) => format!("{request:?}"),
            (_, None) => String::new(),
        };
        assert_eq!(answers, &want_answers, "{name}");
        assert!(seen.insert(ty), "{name} listed twice");
    }
    assert_eq!(seen.len(), MessageType::ALL.len(), "every type is listed");
}

#[test]
fn error_code_table_matches_code() {
    let mut seen = BTreeSet::new();
    for row in rows().iter().filter(|r| r.heading == "9. Error codes") {
        let Some(number) = row.cells.first().and_then(|c| hex_u16(c)) else {
            continue;
        };
        let code = ErrorCode::from_u16(number);
        assert_eq!(format!("{code:?}"), row.cells[1], "{number:#06x}");
        assert_eq!(
            format!("{:?}", code.to_io_kind()),
            row.cells[2],
            "{number:#06x}"
        );
        assert!(seen.insert(number));
    }
    let all: BTreeSet<u16> = ErrorCode::ALL.iter().map(|c| c.to_u16()).collect();
    assert_eq!(seen, all, "every error code is listed");
}

#[test]
fn socket_option_table_matches_code() {
    let mut listed = 0;
    for row in rows().iter().filter(|r| r.heading.starts_with("5.6 ")) {
        let Some(number) = row.cells.first().and_then(|c| hex_u16(c)) else {
            continue;
        };
        let option = SocketOption::from_u16(number);
        assert!(!matches!(option, SocketOption::Unknown(_)), "{number:#06x}");
        assert_eq!(format!("{option:?}"), row.cells[1]);
        listed += 1;
    }
    assert_eq!(
        listed,
        SocketOption::ALL.len(),
        "every socket option is listed"
    );
}

/// `(heading, total)` for every layout table: offsets start at 0 and each field starts where
/// the previous one ended.
fn layouts() -> BTreeMap<String, usize> {
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows() {
        let (Some(Ok(offset)), Some(Ok(size))) = (
            row.cells.first().map(|c| c.parse::<usize>()),
            row.cells.get(1).map(|c| c.parse::<usize>()),
        ) else {
            continue;
        };
        let total = totals.entry(row.heading.clone()).or_default();
        assert_eq!(
            offset, *total,
            "{}: field {:?} offset",
            row.heading, row.cells[2]
        );
        *total += size;
    }
    totals
}

#[test]
fn field_layouts_have_the_right_sizes() {
    let layouts = layouts();
    assert_eq!(layouts["3. Frames"], HEADER_LEN);
    assert_eq!(layouts["5.1 Socket address (27 bytes)"], SOCKET_ADDR_LEN);
    assert_eq!(layouts["5.2 PipeInfo (16 bytes)"], PipeInfo::LEN);
    assert_eq!(layouts["5.3 Handle (5 bytes)"], Handle::LEN);
    assert_eq!(layouts["Session bootstrap"], BOOTSTRAP_LEN);
    assert_eq!(
        layouts["5.8 Answer entry (24 bytes)"],
        arca_wire::ANSWER_LEN
    );
}

#[test]
fn message_layouts_match_payload_lengths() {
    let layouts = layouts();
    let mut documented = BTreeSet::new();
    let mut lines = SPEC.lines().peekable();
    while let Some(line) = lines.next() {
        // "### `0x14` ConnectRequest", then a blank line, then "G→M, 31 bytes. …"
        let Some(rest) = line.strip_prefix("### `0x") else {
            continue;
        };
        let heading = line.trim_start_matches('#').trim().replace('`', "");
        let (number, name) = rest
            .split_once("` ")
            .expect("heading has a type and a name");
        let ty = MessageType::from_u8(u8::from_str_radix(number, 16).unwrap()).unwrap();
        assert_eq!(format!("{ty:?}"), name);
        let summary = lines.by_ref().find(|l| !l.is_empty()).unwrap();
        let direction = match ty.direction() {
            Direction::GuestToMonitor => "G→M",
            Direction::MonitorToGuest => "M→G",
        };
        let want = format!("{direction}, {} bytes.", ty.payload_len());
        assert!(
            summary.starts_with(&want),
            "{name}: {summary:?} should start {want:?}"
        );
        let table_total = layouts.get(&heading).copied().unwrap_or(0);
        assert_eq!(
            table_total,
            usize::from(ty.payload_len()),
            "{name} layout table"
        );
        documented.insert(ty);
    }
    assert_eq!(
        documented.len(),
        MessageType::ALL.len(),
        "every message has a section"
    );
}

#[test]
fn stated_limits_match_constants() {
    assert!(SPEC.contains(&format!("`MAX_FRAME_PAYLOAD` = **{MAX_FRAME_PAYLOAD}**")));
    assert!(SPEC.contains(&format!("`MAX_PAYLOAD` = **{MAX_PAYLOAD}**")));
    assert!(SPEC.contains(&format!(
        "text of 1 to {} bytes (`MAX_NAME_LEN`)",
        arca_wire::MAX_NAME_LEN
    )));
    assert!(SPEC.contains(&format!("`MAX_ANSWERS` = {}", arca_wire::MAX_ANSWERS)));
    assert!(SPEC.contains(&format!("Version {}:", arca_wire::PROTOCOL_VERSION)));
    assert!(SPEC.contains(&format!(
        "never buffers more than {} bytes",
        HEADER_LEN + MAX_FRAME_PAYLOAD
    )));
}
