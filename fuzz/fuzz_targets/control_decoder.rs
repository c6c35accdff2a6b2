//! The control decoder on arbitrary bytes: the first byte picks chunk sizes,
//! the rest is the stream. The streaming decoder must agree with decoding the
//! whole stream at once, stay bounded, and never panic; every payload that
//! decodes must re-encode to a payload that decodes to the same message.
#![no_main]

use arca_wire::{Frame, FrameDecoder, FrameHeader, Message, HEADER_LEN, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunking, stream)) = data.split_first() else {
        return;
    };
    // Whole-stream reference.
    let mut want = Vec::new();
    let mut rest = stream;
    while let Ok(h) = FrameHeader::parse(rest) {
        if rest.len() < h.frame_len() {
            break;
        }
        let (frame, tail) = rest.split_at(h.frame_len());
        let decoded = Message::decode(&h, &frame[HEADER_LEN..]);
        if let Ok(m) = &decoded {
            let mut again = Vec::new();
            m.encode_payload(&mut again);
            if !matches!(m, Message::Unknown(_)) {
                let h2 = FrameHeader::new(h.message_type, again.len() as u16, h.request_id);
                assert_eq!(Message::decode(&h2, &again).as_ref(), Ok(m));
            }
        }
        want.push(decoded.map(|m| Frame::new(h.request_id, m)).ok());
        rest = tail;
    }
    // Streaming, in chunks of 1..=chunking+1 bytes.
    let step = usize::from(chunking) + 1;
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    'outer: for chunk in stream.chunks(step) {
        let mut input = chunk;
        while !input.is_empty() {
            let taken = d.feed(input);
            assert!(d.buffered_len() <= MAX_FRAME_LEN);
            input = &input[taken..];
            loop {
                match d.next_frame() {
                    Ok(None) => break,
                    Ok(Some(f)) => got.push(Some(f)),
                    Err(e) if e.is_fatal() => break 'outer,
                    Err(_) => got.push(None),
                }
            }
            if taken == 0 && d.is_poisoned() {
                break 'outer;
            }
        }
    }
    assert_eq!(got, want);
});
