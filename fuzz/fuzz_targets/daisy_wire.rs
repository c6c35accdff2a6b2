//! Daisy's wire parsers (the `daisy` crate) on arbitrary bytes: the greeting,
//! buffer and packet headers, whole data datagrams, and the receiver's and
//! sender's TCP message streams. Nothing panics, a parser never claims more
//! bytes than it was given (nor zero for a message), and every fixed-layout
//! header it accepts survives encode-then-parse.
#![no_main]

use daisy::wire::{
    parse_datagram, BufferHeader, Greeting, PacketHeader, ReceiverMsg, SenderMsg, PACKET_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((g, n))) = Greeting::parse(data) {
        assert!(n <= data.len());
        assert_eq!(
            Greeting::parse(&g.encode()).ok().flatten().map(|x| x.0),
            Some(g)
        );
    }
    if let Ok(Some((h, n))) = BufferHeader::parse(data) {
        assert!(n <= data.len());
        assert_eq!(
            BufferHeader::parse(&h.encode()).ok().flatten().map(|x| x.0),
            Some(h)
        );
    }
    if let Some(h) = PacketHeader::parse(data) {
        assert_eq!(PacketHeader::parse(&h.encode()), Some(h));
    }
    if let Ok((_, payload)) = parse_datagram(data) {
        assert!(payload.len() + PACKET_HEADER_LEN <= data.len());
    }
    // Message streams: parse back to back until more bytes are needed.
    let mut rest = data;
    for _ in 0..=data.len() {
        match ReceiverMsg::parse(rest) {
            Ok(Some((_, n))) => {
                assert!(n > 0 && n <= rest.len());
                rest = &rest[n..];
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut rest = data;
    for _ in 0..=data.len() {
        match SenderMsg::parse(rest) {
            Ok(Some((_, n))) => {
                assert!(n > 0 && n <= rest.len());
                rest = &rest[n..];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
