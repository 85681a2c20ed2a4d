//! Echoes ([`Service::ECHO`]): a service's own recorded event reacted to at once, its stream's
//! copy then a no-op, and that copy the fallback when the echo could not be applied.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::*;
use crate::engine::testing::lines;
use crate::engine::{Placement, Plan};
use crate::events::{InventoryEvent, ShipmentEvent};
use crate::rpc::DomainError;

/// A booking in two steps, as the shipment service books: record the request, then call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Booking {
    requested: bool,
    scheduled: bool,
}

impl Aggregate for Booking {
    type Event = ShipmentEvent;
    type Command = std::convert::Infallible;
    type Call = ();
    type Answer = ();

    fn handle(&self, command: Self::Command) -> Result<Vec<ShipmentEvent>, DomainError> {
        match command {}
    }

    fn react(&self, _: &str, event: &Inbound, now: DateTime<Utc>) -> Plan<ShipmentEvent, ()> {
        match event {
            Inbound::Inventory(InventoryEvent::InventoryReserved { .. }) if !self.requested => {
                Plan::Emit(vec![ShipmentEvent::ShipmentBookingRequested {
                    lines: lines(&[("SKU-MUG", 1)]),
                    shipping_address: "1 Main St".into(),
                    ship_from: "warehouse".into(),
                    requested_at: Some(now),
                }])
            }
            Inbound::Shipment(ShipmentEvent::ShipmentBookingRequested { .. })
                if self.requested && !self.scheduled =>
            {
                Plan::Call(())
            }
            _ => Plan::Emit(Vec::new()),
        }
    }

    fn outcome(&self, _: (), _: (), _: DateTime<Utc>) -> Vec<ShipmentEvent> {
        vec![ShipmentEvent::ShipmentScheduled {
            booking_id: "bk1".into(),
            carrier: "c".into(),
            estimated_delivery: "soon".into(),
            ship_from: "warehouse".into(),
        }]
    }

    fn apply(&mut self, event: &ShipmentEvent) {
        match event {
            ShipmentEvent::ShipmentBookingRequested { .. } => self.requested = true,
            ShipmentEvent::ShipmentScheduled { .. } => self.scheduled = true,
            _ => {}
        }
    }
}

/// Books through a carrier that is `down` (a retry) or answers; counts the calls.
#[derive(Default)]
struct Booker {
    down: AtomicBool,
    calls: AtomicUsize,
}

impl Service for Booker {
    type State = Booking;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Inventory, &["InventoryReserved"]),
        (Domain::Shipments, &["ShipmentBookingRequested"]),
    ];
    const ECHO: &'static [&'static str] = &["ShipmentBookingRequested"];
    const PLACEMENT: Placement = Placement::PerOrder;
    type View = Booking;
    type Part = Booking;

    fn new(_: &crate::Settings, _: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(Booker::default())
    }

    async fn call(&self, _: &str, _: &()) -> Result<(), Verdict> {
        self.calls.fetch_add(1, Relaxed);
        match self.down.load(Relaxed) {
            true => Err(Verdict::Retry("carrier down".into())),
            false => Ok(()),
        }
    }

    fn view(_: u64, state: &Booking) -> Option<Booking> {
        Some(state.clone())
    }

    fn part(_: &str, _: u64, state: &Booking) -> Option<Booking> {
        Some(state.clone())
    }
}

fn reserved(order: &str) -> Envelope {
    let event = InventoryEvent::InventoryReserved {
        order_id: order.into(),
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "1 Main St".into(),
    };
    encode(&event, order, None).unwrap()
}

/// The event types on the aggregate's log, in order.
fn logged(store: &Store, aggregate: &str) -> Vec<String> {
    let events = store.events_after(aggregate, 0).unwrap();
    events.into_iter().map(|e| e.event_type).collect()
}

/// The stream's copy of the request: what the relay publishes from the outbox.
fn streams_copy(store: &Store) -> Envelope {
    let rows = store.pending(100).unwrap();
    let row = rows
        .iter()
        .find(|row| {
            row.message
                .subject
                .contains("shipment_booking_requested.o1")
        })
        .expect("the request is in the outbox");
    Envelope::from_slice(row.message.payload.as_bytes()).unwrap()
}

fn open() -> (tempfile::TempDir, Store, Engine<Booker>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &Default::default()).unwrap();
    let engine = Engine::new(Booker::default(), store.clone());
    (dir, store, engine)
}

const REQUESTED: &str = "ShipmentBookingRequested";
const SCHEDULED: &str = "ShipmentScheduled";

#[tokio::test]
async fn an_echoed_event_is_reacted_to_at_once_and_its_streams_copy_changes_nothing() {
    let (_dir, store, mut engine) = open();

    let applied = engine.deliver(&[&reserved("o1")]).await.unwrap();
    assert_eq!(applied.verdicts, [Verdict::Done]);
    assert_eq!(
        logged(&store, "o1"),
        [REQUESTED, SCHEDULED],
        "booked at once"
    );
    assert_eq!(engine.service().calls.load(Relaxed), 1);
    assert_eq!(store.pending(100).unwrap().len(), 2, "both are published");

    let copy = streams_copy(&store);
    let applied = engine.deliver(&[&copy]).await.unwrap();
    assert_eq!(applied.verdicts, [Verdict::Done]);
    assert_eq!(logged(&store, "o1"), [REQUESTED, SCHEDULED]);
    assert_eq!(engine.service().calls.load(Relaxed), 1, "not called again");
    let counts = engine.counts();
    assert_eq!(
        counts.duplicates_dropped.load(Relaxed),
        0,
        "expected, no duplicate"
    );

    // A second copy is a duplicate.
    engine.deliver(&[&copy]).await.unwrap();
    assert_eq!(counts.duplicates_dropped.load(Relaxed), 1);
}

#[tokio::test]
async fn an_echo_that_cannot_be_applied_is_left_to_the_streams_copy() {
    let (_dir, store, mut engine) = open();
    engine.service().down.store(true, Relaxed);

    let applied = engine.deliver(&[&reserved("o1")]).await.unwrap();
    assert_eq!(applied.verdicts, [Verdict::Done], "the cause is done");
    assert_eq!(logged(&store, "o1"), [REQUESTED], "the request is kept");
    assert_eq!(engine.service().calls.load(Relaxed), 1, "the echo tried");

    // Echoes pause after a retry: the next request is left to its copy, not called twice.
    engine.service().down.store(false, Relaxed);
    engine.deliver(&[&reserved("o2")]).await.unwrap();
    assert_eq!(logged(&store, "o2"), [REQUESTED], "no echo while paused");
    assert_eq!(engine.service().calls.load(Relaxed), 1);

    let copy = streams_copy(&store);
    let applied = engine.deliver(&[&copy]).await.unwrap();
    assert_eq!(applied.verdicts, [Verdict::Done]);
    assert_eq!(
        logged(&store, "o1"),
        [REQUESTED, SCHEDULED],
        "booked from the copy"
    );
    assert_eq!(engine.service().calls.load(Relaxed), 2);
}
