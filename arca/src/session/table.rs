//! The session's request table: which requests are in flight, and which one a reply from the
//! monitor completes.
//!
//! A sans-IO core: no channels, threads, clocks or descriptors. The shell (`session.rs`)
//! holds it under a lock and calls it in this order:
//! 1. [`register`](RequestTable::register) before sending a request (it allocates the id the
//!    frame carries); [`remove`](RequestTable::remove) if the send fails;
//! 2. [`handle_reply`](RequestTable::handle_reply) for every frame decoded from the control
//!    pipe, and [`remove`](RequestTable::remove) for a reply that could not be decoded;
//! 3. [`handle_death`](RequestTable::handle_death) once the session is over; every later
//!    `register` fails.
//!
//! Everything a reply carries is monitor input: an id that was never issued, a second reply
//! to one request, or a reply of a type that does not answer its request is reported as such
//! ([`Delivery`]), never a panic.

use std::collections::HashMap;

use arca_wire::{Frame, Message, MessageType, RequestId};

/// How the requester waits for its reply: what the shell must do to hand it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// A thread blocked in a request that drains the control pipe itself and may sleep on
    /// the guest bell: whoever else completes the request must ring it awake.
    Thread,
    /// A thread blocked on the reply alone (an accept, which may wait for a peer
    /// indefinitely): only the dispatcher delivers it.
    Channel,
    /// An async task, whose waker is registered under the request's id.
    Task,
    /// Nobody: the reply is given back when it comes (fire and forget).
    Detached,
}

/// A request in flight.
#[derive(Debug)]
pub(crate) struct Pending<S> {
    /// The request's type: a reply must answer it ([`MessageType::answers`]).
    pub(crate) request: MessageType,
    pub(crate) waiter: Waiter,
    /// Where the shell puts the reply.
    pub(crate) sink: S,
}

impl<S> Pending<S> {
    /// True if nobody but the dispatcher will take this request's reply.
    fn needs_dispatcher(&self) -> bool {
        self.waiter != Waiter::Thread
    }

    /// True if the reply is due promptly to a waiter that cannot poll for it itself (an
    /// async task's request other than an accept).
    fn is_prompt(&self) -> bool {
        self.waiter == Waiter::Task && self.request != MessageType::AcceptRequest
    }
}

/// What a reply frame did to the table.
#[derive(Debug)]
pub(crate) enum Delivery<S> {
    /// It completed request `id`: hand `reply` to the waiter.
    Completed {
        id: RequestId,
        pending: Pending<S>,
        reply: Message,
    },
    /// It named request `id`, but its type does not answer that request: the request is
    /// over (fail it) and `reply` answers nothing (give back what it holds).
    WrongType {
        id: RequestId,
        pending: Pending<S>,
        reply: Message,
    },
    /// It names a request issued before and no longer in flight: a second reply, or one
    /// to a request withdrawn when its send failed.
    Duplicate { reply: Message },
    /// It names an id this table never issued (0, or beyond every id issued).
    Unknown { reply: Message },
}

/// The table is closed: the session is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dead;

/// Requests in flight, keyed by request id.
///
/// Invariants: every key is an id this table issued and not yet completed, failed or
/// removed; no key is [`RequestId::NONE`]; after [`handle_death`](Self::handle_death) the
/// map is empty and stays so.
#[derive(Debug)]
pub(crate) struct RequestTable<S> {
    pending: HashMap<RequestId, Pending<S>>,
    /// The last id issued (`NONE` before the first).
    last: RequestId,
    /// Whether the ids issued have wrapped past `u32::MAX`: every non-zero id was then
    /// issued once, and a reply to one not in flight counts as a duplicate.
    wrapped: bool,
    dead: bool,
}

impl<S> Default for RequestTable<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> RequestTable<S> {
    pub(crate) fn new() -> Self {
        Self::starting_after(RequestId::NONE)
    }

    /// A table whose first id is the one after `last` (tests use it to reach the wrap).
    pub(crate) fn starting_after(last: RequestId) -> Self {
        RequestTable {
            pending: HashMap::new(),
            last,
            wrapped: false,
            dead: false,
        }
    }

    /// Allocates an id for a request of type `request` and records it as in flight.
    ///
    /// # Errors
    /// [`Dead`] once [`handle_death`](Self::handle_death) has run.
    pub(crate) fn register(
        &mut self,
        request: MessageType,
        waiter: Waiter,
        sink: S,
    ) -> Result<RequestId, Dead> {
        if self.dead {
            return Err(Dead);
        }
        // An id still in flight after a wrap is skipped; at most `len()` ids are.
        let mut id = self.last.next();
        while self.pending.contains_key(&id) {
            id = id.next();
        }
        if id <= self.last {
            self.wrapped = true;
        }
        self.last = id;
        self.pending.insert(
            id,
            Pending {
                request,
                waiter,
                sink,
            },
        );
        Ok(id)
    }

    /// Takes request `id` out of the table (its send failed, or its reply could not be
    /// decoded); `None` if it is not in flight.
    pub(crate) fn remove(&mut self, id: RequestId) -> Option<Pending<S>> {
        self.pending.remove(&id)
    }

    /// Matches a reply frame to the request it answers.
    pub(crate) fn handle_reply(&mut self, frame: Frame) -> Delivery<S> {
        let Frame {
            request_id: id,
            message: reply,
        } = frame;
        let Some(pending) = self.pending.remove(&id) else {
            return if self.was_issued(id) {
                Delivery::Duplicate { reply }
            } else {
                Delivery::Unknown { reply }
            };
        };
        if reply.kind().is_some_and(|k| k.answers(pending.request)) {
            Delivery::Completed { id, pending, reply }
        } else {
            Delivery::WrongType { id, pending, reply }
        }
    }

    /// The session is over: closes the table and returns every request in flight, to fail.
    pub(crate) fn handle_death(&mut self) -> Vec<(RequestId, Pending<S>)> {
        self.dead = true;
        self.pending.drain().collect()
    }

    /// How many requests are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// True if some request's reply will be taken by nobody but the dispatcher.
    pub(crate) fn needs_dispatcher(&self) -> bool {
        self.pending.values().any(Pending::needs_dispatcher)
    }

    /// True if a reply is due promptly to a waiter that cannot poll for it (the dispatcher
    /// then polls briefly before it sleeps).
    pub(crate) fn replies_due(&self) -> bool {
        self.pending.values().any(Pending::is_prompt)
    }

    fn was_issued(&self, id: RequestId) -> bool {
        id != RequestId::NONE && (self.wrapped || id <= self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_wire::{ConnId, ErrorCode, ListenerId, PipeInfo};
    use std::collections::HashSet;

    fn frame(id: RequestId, message: Message) -> Frame {
        Frame {
            request_id: id,
            message,
        }
    }

    fn close_ok(id: RequestId) -> Frame {
        frame(id, Message::CloseOk)
    }

    #[test]
    fn ids_start_at_one_and_never_repeat_in_flight() {
        let mut t = RequestTable::new();
        let a = t.register(MessageType::Close, Waiter::Thread, 'a').unwrap();
        let b = t.register(MessageType::Close, Waiter::Thread, 'b').unwrap();
        assert_eq!((a, b), (RequestId(1), RequestId(2)));
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn reply_completes_its_request_in_any_order() {
        let mut t = RequestTable::new();
        let a = t.register(MessageType::Close, Waiter::Thread, 'a').unwrap();
        let b = t
            .register(MessageType::SetOption, Waiter::Task, 'b')
            .unwrap();
        match t.handle_reply(frame(b, Message::SetOptionOk)) {
            Delivery::Completed { id, pending, reply } => {
                assert_eq!((id, pending.sink, reply), (b, 'b', Message::SetOptionOk));
            }
            other => panic!("{other:?}"),
        }
        match t.handle_reply(close_ok(a)) {
            Delivery::Completed { id, pending, .. } => assert_eq!((id, pending.sink), (a, 'a')),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn error_reply_answers_any_request() {
        let mut t = RequestTable::new();
        let a = t
            .register(MessageType::ConnectRequest, Waiter::Task, ())
            .unwrap();
        let err = Message::Error {
            code: ErrorCode::InvalidInput,
            rejected_type: MessageType::ConnectRequest.to_u8(),
        };
        assert!(matches!(
            t.handle_reply(frame(a, err)),
            Delivery::Completed { .. }
        ));
    }

    #[test]
    fn second_reply_is_a_duplicate_and_unissued_id_unknown() {
        let mut t = RequestTable::new();
        let a = t
            .register(MessageType::Close, Waiter::Detached, ())
            .unwrap();
        assert!(matches!(
            t.handle_reply(close_ok(a)),
            Delivery::Completed { .. }
        ));
        assert!(matches!(
            t.handle_reply(close_ok(a)),
            Delivery::Duplicate { .. }
        ));
        assert!(matches!(
            t.handle_reply(close_ok(RequestId(a.0 + 1))),
            Delivery::Unknown { .. }
        ));
        assert!(matches!(
            t.handle_reply(close_ok(RequestId::NONE)),
            Delivery::Unknown { .. }
        ));
    }

    #[test]
    fn reply_of_wrong_type_fails_its_request_and_returns_the_message() {
        let mut t = RequestTable::new();
        let a = t
            .register(MessageType::SetOption, Waiter::Thread, ())
            .unwrap();
        let stray = Message::ListenOk {
            listener: ListenerId(3),
            local: "127.0.0.1:1".parse().unwrap(),
        };
        match t.handle_reply(frame(a, stray.clone())) {
            Delivery::WrongType { id, reply, .. } => assert_eq!((id, reply), (a, stray)),
            other => panic!("{other:?}"),
        }
        // A request message sent back, and an unknown type, are wrong types too.
        for reply in [Message::hello(), Message::Unknown(0x6e)] {
            let b = t
                .register(MessageType::SetOption, Waiter::Thread, ())
                .unwrap();
            assert!(matches!(
                t.handle_reply(frame(b, reply)),
                Delivery::WrongType { .. }
            ));
        }
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn death_fails_everything_and_closes_the_table() {
        let mut t = RequestTable::new();
        for n in 0..5 {
            t.register(MessageType::Close, Waiter::Thread, n).unwrap();
        }
        let mut failed: Vec<i32> = t.handle_death().into_iter().map(|(_, p)| p.sink).collect();
        failed.sort_unstable();
        assert_eq!(failed, [0, 1, 2, 3, 4]);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.register(MessageType::Close, Waiter::Thread, 9), Err(Dead));
        // A reply after death completes nothing.
        assert!(matches!(
            t.handle_reply(close_ok(RequestId(2))),
            Delivery::Duplicate { .. }
        ));
    }

    #[test]
    fn wrap_skips_zero_and_ids_in_flight() {
        let mut t = RequestTable::starting_after(RequestId(u32::MAX - 2));
        let held = t.register(MessageType::Close, Waiter::Thread, ()).unwrap();
        assert_eq!(held, RequestId(u32::MAX - 1));
        let last = t.register(MessageType::Close, Waiter::Thread, ()).unwrap();
        assert_eq!(last, RequestId(u32::MAX));
        assert!(!t.wrapped);
        assert!(t.remove(last).is_some());
        assert_eq!(
            t.register(MessageType::Close, Waiter::Thread, ()),
            Ok(RequestId(1))
        );
        assert!(t.wrapped);
        // Round the ids again: the one still in flight is skipped.
        t.last = RequestId(held.0 - 1);
        assert_eq!(
            t.register(MessageType::Close, Waiter::Thread, ()),
            Ok(RequestId(u32::MAX))
        );
        // Past the wrap every non-zero id was issued: a stray reply is a duplicate.
        assert!(matches!(
            t.handle_reply(close_ok(RequestId(77))),
            Delivery::Duplicate { .. }
        ));
        assert!(matches!(
            t.handle_reply(close_ok(RequestId::NONE)),
            Delivery::Unknown { .. }
        ));
    }

    #[test]
    fn dispatcher_interest_follows_the_waiters() {
        let mut t = RequestTable::new();
        let a = t.register(MessageType::Close, Waiter::Thread, ()).unwrap();
        assert!(!t.needs_dispatcher() && !t.replies_due());
        let b = t
            .register(MessageType::AcceptRequest, Waiter::Task, ())
            .unwrap();
        assert!(t.needs_dispatcher() && !t.replies_due());
        let c = t
            .register(MessageType::ConnectRequest, Waiter::Task, ())
            .unwrap();
        assert!(t.replies_due());
        for id in [a, b, c] {
            t.remove(id);
        }
        let _d = t
            .register(MessageType::AcceptRequest, Waiter::Channel, ())
            .unwrap();
        assert!(t.needs_dispatcher() && !t.replies_due());
    }

    /// A small deterministic generator (xorshift64*), so the sequence below is the same on
    /// every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// A reply that answers `request` correctly, or one that does not.
    fn reply_for(request: MessageType, right: bool) -> Message {
        let pipe = PipeInfo {
            shm_offset: 0,
            cap_to_monitor: 0,
            cap_to_guest: 0,
        };
        let connect_ok = Message::ConnectOk {
            conn: ConnId(1),
            pipe,
            local: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:2".parse().unwrap(),
        };
        match (request, right) {
            (MessageType::ConnectRequest, true) => connect_ok,
            (MessageType::ConnectRequest, false) => Message::CloseOk,
            (_, true) => Message::CloseOk,
            (_, false) => connect_ok,
        }
    }

    /// Sends, replies out of order, wrong types, unknown ids, duplicates and death, in a
    /// seeded random mix, checked against a model: each request completes at most once,
    /// only with a reply that answers it, and `in_flight` always matches.
    #[test]
    fn seeded_random_sequence_matches_the_model() {
        for seed in [1_u64, 0x5eed, 0xdead_beef, 42_424_242] {
            let mut rng = Rng(seed);
            let mut t = RequestTable::starting_after(RequestId(u32::MAX - 40));
            let mut model: HashMap<RequestId, (MessageType, u64)> = HashMap::new();
            let mut done: HashSet<RequestId> = HashSet::new();
            let mut next_sink = 0_u64;
            for step in 0..3_000 {
                match rng.below(100) {
                    0..=39 => {
                        let request = if rng.below(2) == 0 {
                            MessageType::ConnectRequest
                        } else {
                            MessageType::Close
                        };
                        next_sink += 1;
                        let id = t.register(request, Waiter::Task, next_sink).unwrap();
                        assert_ne!(id, RequestId::NONE);
                        assert!(model.insert(id, (request, next_sink)).is_none());
                        done.remove(&id);
                    }
                    40..=79 if !model.is_empty() => {
                        // Any request in flight: out of order.
                        let mut ids: Vec<_> = model.keys().copied().collect();
                        ids.sort_unstable();
                        let id = ids[rng.below(ids.len())];
                        let right = rng.below(8) != 0;
                        let (request, sink) = model.remove(&id).unwrap();
                        match t.handle_reply(frame(id, reply_for(request, right))) {
                            Delivery::Completed {
                                id: got, pending, ..
                            } => {
                                assert!(right, "seed {seed} step {step}");
                                assert_eq!((got, pending.sink), (id, sink));
                            }
                            Delivery::WrongType {
                                id: got, pending, ..
                            } => {
                                assert!(!right, "seed {seed} step {step}");
                                assert_eq!((got, pending.sink), (id, sink));
                            }
                            other => panic!("seed {seed} step {step}: {other:?}"),
                        }
                        done.insert(id);
                    }
                    80..=89 if !done.is_empty() => {
                        let mut ids: Vec<_> = done.iter().copied().collect();
                        ids.sort_unstable();
                        let id = ids[rng.below(ids.len())];
                        assert!(
                            matches!(t.handle_reply(close_ok(id)), Delivery::Duplicate { .. }),
                            "seed {seed} step {step}"
                        );
                    }
                    90..=98 => {
                        // Ids never issued: 0, or ahead of the last one (before the wrap).
                        let id = if t.wrapped {
                            RequestId::NONE
                        } else {
                            RequestId(t.last.0.saturating_add(1 + rng.below(5) as u32))
                        };
                        if id.0 == 0 || id > t.last {
                            assert!(
                                matches!(t.handle_reply(close_ok(id)), Delivery::Unknown { .. }),
                                "seed {seed} step {step} id {id}"
                            );
                        }
                    }
                    99 if step > 2_500 => {
                        let mut failed: Vec<u64> =
                            t.handle_death().into_iter().map(|(_, p)| p.sink).collect();
                        let mut expected: Vec<u64> = model.drain().map(|(_, (_, s))| s).collect();
                        failed.sort_unstable();
                        expected.sort_unstable();
                        assert_eq!(failed, expected);
                        break;
                    }
                    _ => {}
                }
                assert_eq!(t.in_flight(), model.len(), "seed {seed} step {step}");
            }
            assert!(t.wrapped, "seed {seed}: the sequence should cross the wrap");
        }
    }
}
