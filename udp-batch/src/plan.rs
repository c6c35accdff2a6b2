//! Grouping a batch of datagrams into `sendmmsg` messages.

use std::ops::Range;

use crate::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

/// The messages a batch goes out as, in order: see [`plan_messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a, T, F> {
    datagrams: &'a [T],
    gso: bool,
    key: F,
    next: usize,
}

/// Splits `datagrams` into messages, lazily, front to back. `key` names each
/// datagram's destination and payload length.
///
/// With `gso`, each run of datagrams to one destination with one payload length
/// is one message for the kernel to cut into those datagrams (`UDP_SEGMENT`):
/// the run's last datagram may be shorter (and then ends it), a run holds at most
/// [`GSO_MAX_SEGMENTS`] datagrams and [`GSO_MAX_BYTES`] payload bytes, and an empty
/// datagram is never part of a run. Every other datagram is a message of its own.
/// Either way every datagram is in exactly one message, whole and in order.
///
/// Where a message ends depends only on where it starts and on the datagrams it
/// holds and the one after it, so planning a prefix that ends on a message
/// boundary yields the same messages.
pub fn plan_messages<'a, T, D, F>(datagrams: &'a [T], gso: bool, key: F) -> Messages<'a, T, F>
where
    D: PartialEq,
    F: Fn(&'a T) -> (D, usize),
{
    Messages {
        datagrams,
        gso,
        key,
        next: 0,
    }
}

impl<'a, T, D, F> Iterator for Messages<'a, T, F>
where
    D: PartialEq,
    F: Fn(&'a T) -> (D, usize),
{
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let start = self.next;
        let (to, size) = (self.key)(self.datagrams.get(start)?);
        let mut end = start + 1;
        let mut bytes = size;
        if self.gso && size > 0 {
            while let Some(d) = self.datagrams.get(end) {
                if end - start >= GSO_MAX_SEGMENTS {
                    break;
                }
                let (dest, len) = (self.key)(d);
                if dest != to || len > size || len == 0 || bytes + len > GSO_MAX_BYTES {
                    break;
                }
                bytes += len;
                end += 1;
                if len < size {
                    break; // only the last may be shorter
                }
            }
        }
        self.next = end;
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(batch: &[(u8, usize)], gso: bool) -> Vec<Range<usize>> {
        plan_messages(batch, gso, |&(to, len)| (to, len)).collect()
    }

    #[test]
    fn a_run_to_one_destination_is_one_message_and_its_short_tail_ends_it() {
        let mut batch = vec![(1u8, 1000); 5];
        batch.push((1, 300));
        batch.push((1, 300));
        assert_eq!(plan(&batch, true), vec![0..6, 6..7]);
        assert_eq!(
            plan(&batch, false),
            (0..7).map(|i| i..i + 1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_new_destination_or_a_longer_datagram_starts_a_new_message() {
        let batch = [(1u8, 100), (2, 100), (2, 100), (2, 200), (2, 0), (2, 0)];
        assert_eq!(plan(&batch, true), vec![0..1, 1..3, 3..4, 4..5, 5..6]);
    }

    #[test]
    fn runs_stop_at_the_segment_and_byte_limits() {
        let batch = vec![(0u8, 10); GSO_MAX_SEGMENTS + 1];
        assert_eq!(
            plan(&batch, true),
            vec![0..GSO_MAX_SEGMENTS, GSO_MAX_SEGMENTS..65]
        );
        let batch = vec![(0u8, 30_000); 3];
        assert_eq!(plan(&batch, true), vec![0..2, 2..3]);
        let batch = vec![(0u8, 65_000), (0, 1)];
        assert_eq!(plan(&batch, true), vec![0..1, 1..2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every datagram is in exactly one message, in order; no message breaks a
        /// limit; within a message every datagram goes to one destination and all but
        /// the last have the first's length.
        #[test]
        fn plans_cover_every_datagram_once_within_the_limits(
            batch in proptest::collection::vec(
                (0u8..3, prop_oneof![Just(0usize), Just(1200), Just(1500), 1usize..2000, 20_000usize..70_000]),
                0..200,
            ),
            gso in any::<bool>(),
        ) {
            let messages = plan(&batch, gso);
            let mut next = 0;
            for m in &messages {
                prop_assert_eq!(m.start, next, "messages are contiguous and in order");
                prop_assert!(m.end > m.start, "no empty message");
                next = m.end;
                let run = &batch[m.clone()];
                if run.len() == 1 {
                    continue;
                }
                prop_assert!(gso, "without gso every message is one datagram");
                prop_assert!(run.len() <= GSO_MAX_SEGMENTS);
                prop_assert!(run.iter().map(|d| d.1).sum::<usize>() <= GSO_MAX_BYTES);
                let (to, size) = run[0];
                prop_assert!(size > 0);
                let (last, body) = run.split_last().unwrap();
                prop_assert!(body.iter().all(|&d| d == (to, size)), "{:?}", run);
                prop_assert!(last.0 == to && last.1 > 0 && last.1 <= size, "{:?}", run);
            }
            prop_assert_eq!(next, batch.len(), "every datagram is planned");
        }

        /// A prefix ending on a message boundary plans to the same messages.
        #[test]
        fn a_prefix_ending_on_a_boundary_plans_the_same(
            batch in proptest::collection::vec((0u8..2, prop_oneof![Just(1000usize), 1usize..1000]), 1..150),
            cut in any::<proptest::sample::Index>(),
        ) {
            let messages = plan(&batch, true);
            let upto = cut.index(messages.len()) + 1;
            let end = messages[upto - 1].end;
            prop_assert_eq!(plan(&batch[..end], true), messages[..upto].to_vec());
        }

        /// Without gso no message holds more than one datagram; with it, a batch of
        /// equal datagrams to one destination needs the fewest messages the limits allow.
        #[test]
        fn equal_datagrams_pack_as_tightly_as_the_limits_allow(n in 1usize..300, len in 1usize..3000) {
            let batch = vec![(7u8, len); n];
            let per = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / len);
            prop_assert_eq!(plan(&batch, true).len(), n.div_ceil(per));
            prop_assert_eq!(plan(&batch, false).len(), n);
        }
    }
}
