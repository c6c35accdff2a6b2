//! Encode → decode is the identity for every message, through every API, however the byte
//! stream is chunked.

mod util;

use arca_wire::{
    decode_socket_addr, encode_socket_addr, ErrorCode, Frame, FrameDecoder, FrameHeader, Handle,
    Message, PipeInfo, SocketOption, HEADER_LEN, MAX_PAYLOAD,
};
use proptest::prelude::*;
use util::strategies::{self, chunk_bounds};

proptest! {
    #![proptest_config(strategies::config(2048))]

    #[test]
    fn message_round_trips(frame in strategies::frame()) {
        let bytes = frame.to_bytes();
        let ty = frame.message.kind().unwrap();
        prop_assert_eq!(bytes.len(), HEADER_LEN + usize::from(ty.payload_len()));
        prop_assert!(bytes.len() - HEADER_LEN <= MAX_PAYLOAD);

        let header = FrameHeader::parse(&bytes).unwrap();
        prop_assert_eq!(header, frame.message.header(frame.request_id));
        prop_assert_eq!(header.message_type, ty.to_u8());
        prop_assert_eq!(header.request_id, frame.request_id);
        let decoded = Message::decode(&header, &bytes[HEADER_LEN..]);
        prop_assert_eq!(decoded.as_ref(), Ok(&frame.message));
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));

        let mut payload = Vec::new();
        frame.message.encode_payload(&mut payload);
        prop_assert_eq!(&payload[..], &bytes[HEADER_LEN..]);
    }

    #[test]
    fn stream_round_trips_in_any_chunking(
        frames in prop::collection::vec(strategies::frame(), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            frame.encode(&mut stream);
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for (start, end) in chunk_bounds(stream.len(), &cuts) {
            let mut input = &stream[start..end];
            while !input.is_empty() {
                let taken = decoder.feed(input);
                input = &input[taken..];
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn socket_addr_round_trips(addr in strategies::socket_addr()) {
        prop_assert_eq!(decode_socket_addr(encode_socket_addr(&addr)), Ok(addr));
    }

    #[test]
    fn field_types_round_trip(
        code in strategies::error_code(),
        option in strategies::socket_option(),
        handle in strategies::handle(),
        pipe in strategies::pipe(),
        raw in any::<u16>(),
    ) {
        prop_assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
        prop_assert_eq!(ErrorCode::from_u16(raw).to_u16(), raw);
        prop_assert_eq!(SocketOption::from_u16(option.to_u16()), option);
        prop_assert_eq!(SocketOption::from_u16(raw).to_u16(), raw);
        prop_assert_eq!(Handle::from_bytes(handle.to_bytes()), Ok(handle));
        prop_assert_eq!(PipeInfo::from_bytes(pipe.to_bytes()), pipe);
    }
}
