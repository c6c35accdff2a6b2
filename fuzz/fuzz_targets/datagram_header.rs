//! Datagram record headers (DATAPIPE.md §10) as the monitor reads them from a
//! guest's ring: whatever parses is within its family's limit and round-trips.
#![no_main]

use arca_wire::{max_datagram_for, DatagramHeader, DATAGRAM_HEADER_LEN, MAX_DATAGRAM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for raw in data.chunks_exact(DATAGRAM_HEADER_LEN) {
        let Ok(raw) = <&[u8; DATAGRAM_HEADER_LEN]>::try_from(raw) else {
            continue;
        };
        if let Ok(h) = DatagramHeader::parse(raw) {
            assert!(usize::from(h.payload_len) <= max_datagram_for(&h.addr));
            assert!(h.record_len() <= DATAGRAM_HEADER_LEN + MAX_DATAGRAM);
            assert_eq!(DatagramHeader::parse(&h.to_bytes()), Ok(h));
        }
    }
});
