//! Hostile input: random bytes, random chunkings, mutated frames, and every hand-picked way a
//! frame can be wrong. Decoding must never panic, and every outcome must be the one the spec
//! prescribes.
//!
//! Long runs: `PROPTEST_CASES=1000000 cargo test --release -p arca-wire --test hostile`.

mod util;

use arca_wire::{
    ErrorCode, Frame, FrameDecoder, FrameError, FrameHeader, Message, MessageType, RequestId,
    WireError, HEADER_LEN, MAX_FRAME_LEN, MAX_FRAME_PAYLOAD,
};
use proptest::prelude::*;
use util::golden;
use util::strategies::{self, chunk_bounds};

/// What a decoder should report, frame by frame, for a whole stream given at once: the
/// reference the streaming decoder is checked against.
fn reference_decode(stream: &[u8]) -> Vec<Result<Frame, FrameError>> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        let header = match FrameHeader::parse(rest) {
            Ok(header) => header,
            Err(WireError::HeaderTruncated { .. }) => return out,
            Err(error) => {
                out.push(Err(FrameError::Desync(error)));
                return out;
            }
        };
        if rest.len() < header.frame_len() {
            return out;
        }
        let (frame, tail) = rest.split_at(header.frame_len());
        out.push(match Message::decode(&header, &frame[HEADER_LEN..]) {
            Ok(message) => Ok(Frame::new(header.request_id, message)),
            Err(error) => Err(FrameError::Malformed { header, error }),
        });
        rest = tail;
    }
}

/// Feeds `stream` in the given chunks and collects every outcome until the stream is used up
/// or the decoder is poisoned.
fn stream_decode(stream: &[u8], cuts: &[usize]) -> Vec<Result<Frame, FrameError>> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for (start, end) in chunk_bounds(stream.len(), cuts) {
        let mut input = &stream[start..end];
        while !input.is_empty() {
            let taken = decoder.feed(input);
            assert!(taken <= input.len());
            assert!(decoder.buffered_len() <= MAX_FRAME_LEN);
            input = &input[taken..];
            loop {
                match decoder.next_frame() {
                    Ok(None) => break,
                    Ok(Some(frame)) => out.push(Ok(frame)),
                    Err(error) => {
                        let fatal = error.is_fatal();
                        out.push(Err(error));
                        if fatal {
                            assert_eq!(decoder.feed(input), 0, "a poisoned decoder takes nothing");
                            return out;
                        }
                    }
                }
            }
        }
    }
    out
}

/// A stream of valid frames with some bytes overwritten.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(strategies::frame(), 1..12),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    )
        .prop_map(|(frames, edits)| {
            let mut stream = Vec::new();
            for frame in &frames {
                frame.encode(&mut stream);
            }
            for (at, byte) in edits {
                let len = stream.len();
                stream[at % len] = byte;
            }
            stream
        })
}

/// Frames with well-formed headers (payload lengths under the cap) but any type byte and any
/// payload bytes: a mix of unknown, malformed and valid frames, so the decoder gets past the
/// first header (random bytes usually declare a payload over the cap).
fn random_frames() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        prop_oneof![
            any::<u8>(),
            strategies::known_type().prop_map(|t| t.to_u8())
        ],
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..90),
    );
    prop::collection::vec(frame, 0..16).prop_map(|frames| {
        let mut stream = Vec::new();
        for (message_type, request_id, payload) in frames {
            let len = u16::try_from(payload.len()).unwrap();
            stream.extend_from_slice(
                &FrameHeader::new(message_type, len, RequestId(request_id)).to_bytes(),
            );
            stream.extend_from_slice(&payload);
        }
        stream
    })
}

proptest! {
    #![proptest_config(strategies::config(4096))]

    #[test]
    fn header_parse_of_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
        match FrameHeader::parse(&bytes) {
            Ok(header) => {
                prop_assert!(bytes.len() >= HEADER_LEN);
                prop_assert!(usize::from(header.payload_len) <= MAX_FRAME_PAYLOAD);
                prop_assert_eq!(&header.to_bytes()[..], &bytes[..HEADER_LEN]);
            }
            Err(WireError::HeaderTruncated { need, have }) => {
                prop_assert_eq!((need, have), (HEADER_LEN, bytes.len()));
                prop_assert!(bytes.len() < HEADER_LEN);
            }
            Err(WireError::PayloadTooLarge { message_type, len, max }) => {
                prop_assert_eq!(message_type, bytes[0]);
                prop_assert_eq!(len, usize::from(u16::from_le_bytes([bytes[1], bytes[2]])));
                prop_assert!(len > max);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// Any type byte, any payload: no panic, and anything accepted re-encodes to the same bytes
    /// (every message has exactly one encoding).
    #[test]
    fn decode_of_random_payloads(
        message_type in any::<u8>(),
        request_id in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        check_payload(message_type, request_id, &payload)?;
    }

    /// Known types with payloads of the right length (give or take), so field validation is
    /// exercised rather than only the length check.
    #[test]
    fn decode_of_random_payloads_near_the_right_length(
        ty in strategies::known_type(),
        delta in -2i32..=2,
        request_id in any::<u32>(),
        seed in prop::collection::vec(any::<u8>(), arca_wire::MAX_PAYLOAD + 2),
    ) {
        let len = usize::try_from((i32::from(ty.payload_len()) + delta).max(0)).unwrap();
        check_payload(ty.to_u8(), request_id, &seed[..len])?;
    }

    #[test]
    fn stream_of_random_bytes(
        stream in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        prop_assert_eq!(stream_decode(&stream, &cuts), reference_decode(&stream));
    }

    #[test]
    fn stream_of_random_frames(
        stream in random_frames(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        prop_assert_eq!(stream_decode(&stream, &cuts), reference_decode(&stream));
    }

    #[test]
    fn stream_of_mutated_frames(
        stream in mutated_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        prop_assert_eq!(stream_decode(&stream, &cuts), reference_decode(&stream));
    }
}

fn check_payload(message_type: u8, request_id: u32, payload: &[u8]) -> Result<(), TestCaseError> {
    let header = FrameHeader::new(
        message_type,
        u16::try_from(payload.len()).unwrap(),
        RequestId(request_id),
    );
    let result = Message::decode(&header, payload);
    match (MessageType::from_u8(message_type), result) {
        (None, result) => prop_assert_eq!(result, Ok(Message::Unknown(message_type))),
        (Some(ty), Ok(message)) => {
            prop_assert_eq!(message.kind(), Some(ty));
            let mut again = Vec::new();
            message.encode_payload(&mut again);
            prop_assert_eq!(&again[..], payload, "canonical encoding");
        }
        (Some(ty), Err(error)) => {
            let want = usize::from(ty.payload_len());
            match error {
                WireError::Truncated {
                    message,
                    need,
                    have,
                } => {
                    prop_assert_eq!((message, need, have), (ty.name(), want, payload.len()));
                    prop_assert!(have < need);
                }
                WireError::TrailingBytes {
                    message,
                    expected,
                    have,
                } => {
                    prop_assert_eq!((message, expected, have), (ty.name(), want, payload.len()));
                    prop_assert!(have > expected);
                }
                WireError::UnknownAddressFamily(_)
                | WireError::Ipv4NonZero { .. }
                | WireError::UnknownHandleKind(_)
                | WireError::UnknownMembershipOp(_)
                | WireError::UnknownFamilyHint(_)
                | WireError::BadName(_)
                | WireError::NamePadding
                | WireError::AnswerCount { .. }
                | WireError::BadAnswer(_) => prop_assert_eq!(payload.len(), want),
                other => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
    Ok(())
}

#[test]
fn every_type_truncated_and_with_trailing_bytes() {
    for g in golden::all() {
        let ty = g.message.kind().unwrap();
        let payload = &g.bytes[HEADER_LEN..];
        for have in 0..payload.len() {
            let header = FrameHeader::new(ty.to_u8(), u16::try_from(have).unwrap(), g.request_id);
            assert_eq!(
                Message::decode(&header, &payload[..have]),
                Err(WireError::Truncated {
                    message: ty.name(),
                    need: payload.len(),
                    have
                }),
                "{} truncated to {have}",
                g.name
            );
        }
        for extra in 1..=3 {
            let mut long = payload.to_vec();
            long.extend(std::iter::repeat_n(0, extra));
            let header =
                FrameHeader::new(ty.to_u8(), u16::try_from(long.len()).unwrap(), g.request_id);
            assert_eq!(
                Message::decode(&header, &long),
                Err(WireError::TrailingBytes {
                    message: ty.name(),
                    expected: payload.len(),
                    have: long.len()
                }),
                "{} with {extra} trailing bytes",
                g.name
            );
        }
    }
}

#[test]
fn truncated_message_error_text() {
    let header = FrameHeader::new(MessageType::ConnectRequest.to_u8(), 12, RequestId(1));
    let error = Message::decode(&header, &[0; 12]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "connect request payload truncated: need 31 bytes, have 12"
    );
}

#[test]
fn every_unknown_type_is_skipped_and_the_stream_continues() {
    let follow = Message::CloseOk.to_frame(RequestId(2));
    for raw in 0..=u8::MAX {
        if MessageType::from_u8(raw).is_some() {
            continue;
        }
        for len in [0u16, 1, 78, 1024] {
            let mut stream = FrameHeader::new(raw, len, RequestId(1)).to_bytes().to_vec();
            stream.extend(std::iter::repeat_n(0xEE, usize::from(len)));
            stream.extend_from_slice(&follow);
            assert_eq!(
                stream_decode(&stream, &[]),
                vec![
                    Ok(Frame::new(RequestId(1), Message::Unknown(raw))),
                    Ok(Frame::new(RequestId(2), Message::CloseOk)),
                ],
                "type {raw:#04x}, payload {len}"
            );
        }
    }
}

#[test]
fn oversized_payload_len_is_fatal_for_every_type() {
    for raw in [0x00, 0x10, 0x14, 0x19, 0x7F, 0xC3, 0xFF] {
        for len in [
            u16::try_from(MAX_FRAME_PAYLOAD + 1).unwrap(),
            4096,
            u16::MAX,
        ] {
            let mut stream = Message::CloseOk.to_frame(RequestId(1));
            stream.extend_from_slice(&FrameHeader::new(raw, len, RequestId(2)).to_bytes());
            stream.extend_from_slice(&Message::CloseOk.to_frame(RequestId(3)));
            let error = WireError::PayloadTooLarge {
                message_type: raw,
                len: usize::from(len),
                max: MAX_FRAME_PAYLOAD,
            };
            assert_eq!(
                stream_decode(&stream, &[3, 9, 11]),
                vec![
                    Ok(Frame::new(RequestId(1), Message::CloseOk)),
                    Err(FrameError::Desync(error)),
                ]
            );
        }
    }
}

/// Offsets of every socket address in the payloads that carry them.
fn address_offsets(ty: MessageType) -> &'static [usize] {
    match ty {
        MessageType::ListenRequest | MessageType::ConnectRequest => &[0],
        MessageType::ListenOk => &[4],
        MessageType::ConnectOk => &[20, 47],
        MessageType::IncomingConnection => &[24, 51],
        _ => &[],
    }
}

#[test]
fn bad_address_family_in_every_address_field() {
    let mut checked = 0;
    for g in golden::all() {
        let ty = g.message.kind().unwrap();
        for &offset in address_offsets(ty) {
            for family in [0u8, 5, 0xFF] {
                let mut payload = g.bytes[HEADER_LEN..].to_vec();
                payload[offset] = family;
                let header = FrameHeader::parse(g.bytes).unwrap();
                assert_eq!(
                    Message::decode(&header, &payload),
                    Err(WireError::UnknownAddressFamily(family)),
                    "{} address at {offset}",
                    g.name
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "every address field of every message was tried");
}

#[test]
fn ipv4_padding_must_be_zero() {
    let g = golden::all()
        .into_iter()
        .find(|g| g.name == "listen_request")
        .unwrap();
    let header = FrameHeader::parse(g.bytes).unwrap();
    for (index, field) in [
        (7, "address bytes 4..16"),
        (19, "flowinfo"),
        (26, "scope_id"),
    ] {
        let mut payload = g.bytes[HEADER_LEN..].to_vec();
        payload[index] = 0x01;
        assert_eq!(
            Message::decode(&header, &payload),
            Err(WireError::Ipv4NonZero { field }),
        );
    }
}

#[test]
fn bad_handle_kind() {
    for name in ["close", "set_option"] {
        let g = golden::all().into_iter().find(|g| g.name == name).unwrap();
        let header = FrameHeader::parse(g.bytes).unwrap();
        for kind in [0u8, 4, 0xFF] {
            let mut payload = g.bytes[HEADER_LEN..].to_vec();
            payload[0] = kind;
            assert_eq!(
                Message::decode(&header, &payload),
                Err(WireError::UnknownHandleKind(kind)),
                "{name}"
            );
        }
    }
}

#[test]
fn malformed_frame_reports_its_request_id_and_the_stream_continues() {
    let mut stream = Vec::new();
    // A listen request whose address family is 9.
    let mut bad = Message::ListenRequest {
        addr: "127.0.0.1:80".parse().unwrap(),
        backlog: 1,
    }
    .to_frame(RequestId(41));
    bad[HEADER_LEN] = 9;
    stream.extend_from_slice(&bad);
    Message::AcceptRequest {
        listener: arca_wire::ListenerId(2),
    }
    .encode(RequestId(42), &mut stream);

    let got = stream_decode(&stream, &[1, 20, 40]);
    assert_eq!(got.len(), 2);
    let Err(FrameError::Malformed { header, error }) = &got[0] else {
        panic!("first frame is malformed: {:?}", got[0]);
    };
    assert_eq!(header.request_id, RequestId(41));
    assert_eq!(header.message_type, MessageType::ListenRequest.to_u8());
    assert_eq!(error, &WireError::UnknownAddressFamily(9));
    // What the monitor would send back.
    let reply = Message::Error {
        code: ErrorCode::InvalidInput,
        rejected_type: header.message_type,
    };
    assert_eq!(
        reply.to_frame(header.request_id),
        [0x7f, 3, 0, 41, 0, 0, 0, 0x03, 0x00, 0x10]
    );
    assert!(matches!(&got[1], Ok(frame) if frame.request_id == RequestId(42)));
}

/// A `Resolve` frame whose name bytes are `name` and whose length byte is `len`.
fn resolve_payload(family: u8, len: u8, name: &[u8]) -> Vec<u8> {
    let mut p = vec![family, len];
    p.extend_from_slice(name);
    p.resize(usize::from(MessageType::Resolve.payload_len()), 0);
    p
}

#[test]
fn hostile_resolve_payloads_are_typed_errors() {
    let header = FrameHeader::new(MessageType::Resolve.to_u8(), 255, arca_wire::RequestId(3));
    let decode = |p: &[u8]| Message::decode(&header, p);
    assert!(decode(&resolve_payload(0, 11, b"example.com")).is_ok());
    let cases: [(Vec<u8>, WireError); 7] = [
        (
            resolve_payload(5, 11, b"example.com"),
            WireError::UnknownFamilyHint(5),
        ),
        (
            resolve_payload(0, 0, b""),
            WireError::BadName(arca_wire::NameError::Empty),
        ),
        (
            resolve_payload(0, 254, b"a"),
            WireError::BadName(arca_wire::NameError::TooLong(254)),
        ),
        (resolve_payload(0, 3, b"abcd"), WireError::NamePadding),
        (
            resolve_payload(0, 5, b"a\0.bc"),
            WireError::BadName(arca_wire::NameError::BadByte { at: 1, byte: 0 }),
        ),
        (
            resolve_payload(0, 6, "é.com".as_bytes()),
            WireError::BadName(arca_wire::NameError::NonAscii { at: 0, byte: 0xc3 }),
        ),
        (
            resolve_payload(0, 9, b"127.0.0.1"),
            WireError::BadName(arca_wire::NameError::Numeric),
        ),
    ];
    for (payload, want) in cases {
        assert_eq!(decode(&payload), Err(want));
    }
}

#[test]
fn hostile_resolve_ok_payloads_are_typed_errors() {
    let header = FrameHeader::new(MessageType::ResolveOk.to_u8(), 196, arca_wire::RequestId(3));
    let decode = |p: &[u8]| Message::decode(&header, p);
    let mut good = vec![0u8; 196];
    good[0] = 1;
    good[4] = 4;
    good[12..16].copy_from_slice(&[192, 0, 2, 1]);
    assert!(decode(&good).is_ok());
    let mut over = good.clone();
    over[0] = 9;
    assert_eq!(
        decode(&over),
        Err(WireError::AnswerCount { count: 9, max: 8 })
    );
    let mut stray = good.clone();
    stray[30] = 1;
    assert!(matches!(decode(&stray), Err(WireError::BadAnswer(_))));
    let mut reserved = good.clone();
    reserved[2] = 1;
    assert!(matches!(decode(&reserved), Err(WireError::BadAnswer(_))));
    let mut family = good;
    family[4] = 7;
    assert!(matches!(decode(&family), Err(WireError::BadAnswer(_))));
}
