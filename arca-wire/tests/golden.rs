//! Golden bytes: every message's exact encoding, pinned by hand-written frames (which
//! `protocol_md.rs` checks against PROTOCOL.md's examples).

mod util;

use std::collections::BTreeSet;

use arca_wire::{Frame, FrameDecoder, FrameHeader, Message, MessageType, HEADER_LEN};
use util::golden;

#[test]
fn every_message_type_has_a_golden_frame() {
    let covered: BTreeSet<u8> = golden::all()
        .iter()
        .map(|g| g.message.message_type())
        .collect();
    let all: BTreeSet<u8> = MessageType::ALL.iter().map(|t| t.to_u8()).collect();
    assert_eq!(covered, all);
    assert_eq!(golden::all().len(), MessageType::ALL.len());
}

#[test]
fn encode_matches_golden_bytes() {
    for g in golden::all() {
        let mut out = Vec::new();
        g.message.encode(g.request_id, &mut out);
        assert_eq!(out, g.bytes, "{}", g.name);
        assert_eq!(g.message.to_frame(g.request_id), g.bytes, "{}", g.name);
        assert_eq!(
            Frame::new(g.request_id, g.message.clone()).to_bytes(),
            g.bytes,
            "{}",
            g.name
        );
    }
}

#[test]
fn decode_matches_golden_message() {
    for g in golden::all() {
        let header = FrameHeader::parse(g.bytes).unwrap();
        assert_eq!(header.request_id, g.request_id, "{}", g.name);
        assert_eq!(header.message_type, g.message.message_type(), "{}", g.name);
        assert_eq!(header.frame_len(), g.bytes.len(), "{}", g.name);
        let payload = &g.bytes[HEADER_LEN..];
        assert_eq!(
            Message::decode(&header, payload),
            Ok(g.message.clone()),
            "{}",
            g.name
        );
        assert_eq!(
            Frame::decode(g.bytes),
            Ok(Frame::new(g.request_id, g.message.clone())),
            "{}",
            g.name
        );
    }
}

#[test]
fn lengths_match_the_type_table() {
    for g in golden::all() {
        let ty = g.message.kind().unwrap();
        assert_eq!(
            g.bytes.len(),
            HEADER_LEN + usize::from(ty.payload_len()),
            "{}",
            g.name
        );
        assert_eq!(g.message.payload_len(), ty.payload_len(), "{}", g.name);
    }
}

#[test]
fn decoder_reads_all_goldens_back_to_back() {
    let stream: Vec<u8> = golden::all()
        .iter()
        .flat_map(|g| g.bytes.to_vec())
        .collect();
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    let mut input = &stream[..];
    while !input.is_empty() {
        let taken = decoder.feed(input);
        input = &input[taken..];
        while let Some(frame) = decoder.next_frame().unwrap() {
            got.push(frame);
        }
    }
    let want: Vec<Frame> = golden::all()
        .into_iter()
        .map(|g| Frame::new(g.request_id, g.message))
        .collect();
    assert_eq!(got, want);
    assert_eq!(decoder.buffered_len(), 0);
}
