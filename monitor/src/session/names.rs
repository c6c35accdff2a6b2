//! `Resolve`: a guest's names, resolved off the event loop (POLICY.md §5).
//!
//! The session checks the name against the policy and its limits, hands it to the resolver
//! ([`crate::resolver`]) and answers when the event loop brings the result back
//! ([`Session::on_resolved`]). The addresses of a name an outbound rule allows are learned
//! for that rule, for their TTL and [`Config::learn_grace`](crate::Config::learn_grace).

use arca_wire::{Answers, FamilyHint, HostName};

use super::*;
use crate::resolver::Outcome;

/// A resolution the resolver has not answered yet.
#[derive(Debug)]
pub(super) struct PendingResolve {
    /// The name, in canonical form (for logs).
    name: String,
    /// The outbound rule whose names allow it, if any.
    rule: Option<usize>,
}

impl Session {
    /// Handles `Resolve`.
    pub(super) fn resolve(
        &mut self,
        rid: RequestId,
        family: FamilyHint,
        name: HostName,
        ctx: &mut Ctx<'_>,
    ) {
        let canonical = name.canonical();
        if self.resolving.contains_key(&rid) {
            // The guest reused the id of a request in flight (PROTOCOL.md §6).
            let code = ErrorCode::InvalidInput;
            return self.reply(rid, Message::ResolveErr { code });
        }
        let in_flight = self.in_flight();
        let pending = self.resolving.len();
        let rule = match self
            .admission
            .resolve(ctx.now, rid, &canonical, in_flight, pending)
        {
            Ok(rule) => rule,
            Err(code) => return self.reply(rid, Message::ResolveErr { code }),
        };
        let submitted = match &self.resolver {
            Some(client) => client.submit(self.id, rid, name.as_str(), family),
            None => Err(ErrorCode::ResolverFailure),
        };
        match submitted {
            Ok(()) => {
                self.resolving.insert(
                    rid,
                    PendingResolve {
                        name: canonical,
                        rule,
                    },
                );
            }
            Err(code) => {
                tracing::warn!(session = self.id, request = rid.0, name = %canonical, "no resolver to ask");
                self.reply(rid, Message::ResolveErr { code });
            }
        }
    }

    /// The resolver's answer to request `rid`: learns the addresses for the rule that allowed
    /// the name, and replies. An answer for a request no longer pending is dropped.
    pub fn on_resolved(&mut self, rid: RequestId, outcome: Outcome, ctx: &mut Ctx<'_>) {
        let Some(p) = self.resolving.remove(&rid) else {
            return;
        };
        let reply = match outcome {
            Ok(list) => {
                if let Some(rule) = p.rule {
                    let learned = &self.admission.learned;
                    for a in &list {
                        let ttl = std::time::Duration::from_secs(a.ttl.into());
                        let until = ctx.now + ttl + ctx.config.learn_grace;
                        learned.learn(a.addr, rule, until, ctx.now);
                    }
                }
                tracing::info!(
                    session = self.id,
                    request = rid.0,
                    name = %p.name,
                    rule = ?p.rule.map(|i| format!("outbound[{i}]")),
                    addrs = ?list.iter().map(|a| a.addr).collect::<Vec<_>>(),
                    "name resolved"
                );
                Message::ResolveOk {
                    answers: Answers::new(list),
                }
            }
            Err(code) => {
                tracing::info!(session = self.id, request = rid.0, name = %p.name, ?code, "name not resolved");
                Message::ResolveErr { code }
            }
        };
        self.reply(rid, reply);
        self.flush_outbox();
    }
}
