//! Given / when / then for aggregate tests (cqrs-es's test framework, in small):
//! `given(events).when(command).then(events)` for a client's command, and
//! `given(events).when_event(order_id, &inbound)` for the [`Plan`] an inbound event gets.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

use super::{Aggregate, Plan};
use crate::catalog::Line;
use crate::events::Inbound;
use crate::rpc::DomainError;

/// The state after `events`.
pub(crate) fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> A {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    state
}

/// The tests' clock: inbound events are reacted to at this instant.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
        .expect("a valid instant")
        .into()
}

/// The "when" of a test, on a given state.
pub(crate) trait When: Aggregate {
    /// The aggregate decides on `command`.
    fn when(&self, command: Self::Command) -> Then<Self::Event> {
        Then(self.handle(command))
    }

    /// What an inbound event of order `order_id` needs, at [`now`].
    fn when_event(&self, order_id: &str, event: &Inbound) -> Plan<Self::Event, Self::Call> {
        self.react(order_id, event, now())
    }
}

impl<A: Aggregate> When for A {}

/// A command's decision, to check.
pub(crate) struct Then<E>(Result<Vec<E>, DomainError>);

impl<E: PartialEq + Debug> Then<E> {
    /// It recorded exactly `expected`.
    #[track_caller]
    pub fn then(self, expected: Vec<E>) {
        assert_eq!(self.0, Ok(expected));
    }

    /// It was refused, as `expected` says.
    #[track_caller]
    pub fn then_err(self, expected: impl FnOnce(&DomainError) -> bool) {
        match self.0 {
            Err(e) => assert!(expected(&e), "unexpected error: {e:?}"),
            Ok(events) => panic!("expected an error, got {events:?}"),
        }
    }
}

impl<E: Debug, C: Debug> Plan<E, C> {
    /// The events, when the plan needs no call.
    #[track_caller]
    pub fn events(self) -> Vec<E> {
        match self {
            Plan::Emit(events) => events,
            Plan::Call(call) => panic!("expected events, got a call {call:?}"),
            Plan::Refuse(reason) => panic!("expected events, got a refusal: {reason}"),
        }
    }

    /// Why the event was refused, when it was.
    #[track_caller]
    pub fn refusal(self) -> String {
        match self {
            Plan::Refuse(reason) => reason,
            Plan::Emit(events) => panic!("expected a refusal, got {events:?}"),
            Plan::Call(call) => panic!("expected a refusal, got a call {call:?}"),
        }
    }

    /// The call, when the plan needs one.
    #[track_caller]
    pub fn call(self) -> C {
        match self {
            Plan::Call(call) => call,
            Plan::Emit(events) => panic!("expected a call, got {events:?}"),
            Plan::Refuse(reason) => panic!("expected a call, got a refusal: {reason}"),
        }
    }
}

/// Lines of `(sku, quantity)` at 1.00 each.
pub(crate) fn lines(items: &[(&str, u32)]) -> Vec<Line> {
    items
        .iter()
        .map(|(sku, quantity)| Line {
            sku: sku.to_string(),
            quantity: *quantity,
            unit_price_cents: 100,
        })
        .collect()
}
