use bus::Envelope;
use chrono::{Duration, Utc};

use super::model::OrderReadModel;
use crate::catalog::Line;
use crate::codec::{encode, DomainEvent};
use crate::events::{InventoryEvent, OrderEvent, PaymentEvent, RecommendationEvent, ShipmentEvent};

const ORDER: &str = "01939a6e-0000-7000-8000-000000000001";

/// `event` as its service publishes it: version `version` of its aggregate, `seconds` from now.
fn event(event: impl DomainEvent, version: u64, seconds: i64) -> Envelope {
    let mut e = encode(&event, ORDER, None).unwrap();
    e.aggregateversion = Some(version);
    e.time = Utc::now() + Duration::seconds(seconds);
    e
}

fn saga() -> Vec<Envelope> {
    let lines = vec![Line {
        sku: "SKU-MUG".into(),
        quantity: 1,
        unit_price_cents: 1250,
    }];
    vec![
        event(
            OrderEvent::OrderCreated {
                order_id: ORDER.into(),
                customer: "a".into(),
                lines: lines.clone(),
                total_cents: 1250,
                payment_token: "4242".into(),
                card_brand: Some("visa".into()),
                card_last4: Some("4242".into()),
                shipping_address: "x".into(),
                placed_at: Utc::now(),
                request_fingerprint: "f".into(),
            },
            1,
            0,
        ),
        event(
            PaymentEvent::PaymentApproved {
                amount_cents: 1250,
                payment_method: "card".into(),
                authorization_id: "a1".into(),
                approved_at: Utc::now(),
                lines: lines.clone(),
                shipping_address: "x".into(),
            },
            1,
            1,
        ),
        event(
            InventoryEvent::InventoryReserved {
                order_id: ORDER.into(),
                lines: lines.clone(),
                shipping_address: "x".into(),
            },
            41,
            2,
        ),
        event(
            ShipmentEvent::ShipmentBookingRequested {
                lines: lines.clone(),
                shipping_address: "x".into(),
                ship_from: "warehouse".into(),
                requested_at: None,
            },
            1,
            3,
        ),
        event(
            ShipmentEvent::ShipmentScheduled {
                booking_id: "b".into(),
                carrier: "c".into(),
                estimated_delivery: "2026-11-26".into(),
                ship_from: "warehouse".into(),
            },
            2,
            4,
        ),
        event(
            OrderEvent::OrderConfirmed {
                lines,
                estimated_delivery: "2026-11-26".into(),
                ship_from: None,
            },
            2,
            5,
        ),
        event(
            RecommendationEvent::RecommendationUpdated {
                order_id: ORDER.into(),
                skus: vec!["SKU-MUG".into()],
                recommended: vec!["SKU-SOCKS".into()],
            },
            7,
            6,
        ),
        event(ShipmentEvent::ShipmentStarted {}, 3, 7),
        event(OrderEvent::OrderShipped { ship_from: None }, 3, 8),
    ]
}

fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> OrderReadModel {
    let mut row = OrderReadModel::new(ORDER);
    for e in events {
        row.apply(e);
    }
    row
}

#[test]
fn given_the_saga_in_order_then_every_field_is_filled() {
    let row = fold(&saga());
    assert_eq!(row.order_status.as_deref(), Some("SHIPPED"));
    assert_eq!(row.total_amount, Some(1250));
    assert_eq!(row.payment_method.as_deref(), Some("card"));
    assert_eq!(row.payment_status.as_deref(), Some("APPROVED"));
    assert!(row.payment_approved_at.is_some());
    assert_eq!(row.inventory_available, Some(true));
    assert_eq!(row.store_stock_available, None);
    assert_eq!(row.shipment_status.as_deref(), Some("IN_TRANSIT"));
    assert_eq!(row.estimated_delivery.as_deref(), Some("2026-11-26"));
    assert_eq!(row.recommended_items, vec!["SKU-SOCKS"]);
    assert_eq!(row.timeline.len(), 9);
    assert_eq!(row.versions["order"], 3);
    assert_eq!(row.versions["inventory"], 41);
}

#[test]
fn given_a_shipped_order_when_its_payment_closes_then_it_stays_approved() {
    let mut events = saga();
    events.push(event(PaymentEvent::PaymentClosed {}, 2, 9));
    let row = fold(&events);
    assert_eq!(row.payment_status.as_deref(), Some("APPROVED"));
    assert_eq!(row.timeline.len(), 10);
    assert_eq!(row.versions["payment"], 2);
}

#[test]
fn given_any_arrival_order_and_duplicates_then_the_same_row() {
    let events = saga();
    let expected = fold(&events);
    // Reversed, and every event twice: a later status is never overwritten by an earlier one.
    let mut shuffled: Vec<&Envelope> = events.iter().rev().collect();
    shuffled.extend(events.iter());
    assert_eq!(fold(shuffled), expected);
    // Each source's events out of order across streams.
    let mut interleaved: Vec<&Envelope> = events.iter().filter(|e| e.source != "order").collect();
    interleaved.extend(events.iter().filter(|e| e.source == "order").rev());
    assert_eq!(fold(interleaved), expected);
}

#[test]
fn given_a_duplicate_then_apply_says_nothing_changed() {
    let events = saga();
    let mut row = fold(&events);
    assert!(!row.apply(&events[3]));
}

#[test]
fn given_a_cancel_request_then_cancelling_until_the_answer() {
    let mut events = saga()[..6].to_vec();
    events.push(event(OrderEvent::OrderCancelRequested {}, 3, 6));
    assert_eq!(fold(&events).order_status.as_deref(), Some("CANCELLING"));
    events.push(event(
        OrderEvent::OrderCancelled {
            reason: "cancelled by the customer".into(),
            confirmed: false,
            skus: Vec::new(),
        },
        4,
        7,
    ));
    events.push(event(
        PaymentEvent::PaymentRefunded {
            amount_cents: 1250,
            refund_id: "r".into(),
            reason: "x".into(),
        },
        2,
        8,
    ));
    let row = fold(&events);
    assert_eq!(row.order_status.as_deref(), Some("CANCELLED"));
    assert_eq!(
        row.cancel_reason.as_deref(),
        Some("cancelled by the customer")
    );
    assert_eq!(row.payment_status.as_deref(), Some("REFUNDED"));
}

#[test]
fn a_row_is_stored_compressed_and_reads_back_as_it_was() {
    let row = fold(&saga());
    let stored = super::encode(&row).unwrap();
    let json = serde_json::to_vec(&row).unwrap();
    assert_eq!(stored[0], super::LZ4_ROW);
    assert!(
        stored.len() < json.len() / 2,
        "{} of {} bytes",
        stored.len(),
        json.len()
    );
    assert_eq!(super::decode::<OrderReadModel>(&stored).unwrap(), row);
    // A row written before compression reads as it did.
    assert_eq!(super::decode::<OrderReadModel>(&json).unwrap(), row);
}

#[test]
fn a_damaged_compressed_row_is_an_error_not_a_panic() {
    let stored = super::encode(&fold(&saga())).unwrap();
    let cut = &stored[..stored.len() / 2];
    assert!(super::decode::<OrderReadModel>(cut).is_err());
    assert!(super::decode::<OrderReadModel>(&[super::LZ4_ROW, 1]).is_err());
    let mut huge = vec![super::LZ4_ROW];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&stored[5..]);
    let error = super::decode::<OrderReadModel>(&huge).unwrap_err();
    assert!(error.to_string().contains("claimed"), "{error}");
}

#[test]
fn a_row_too_big_to_be_read_back_is_refused_when_written() {
    let mut row = fold(&saga());
    row.customer = Some("x".repeat(super::MAX_ROW_BYTES));
    let error = super::encode(&row).unwrap_err();
    assert!(error.to_string().contains("encoding"), "{error}");
}

/// A rebuild reads each event's data as the text on the wire, a live row writes it from the
/// envelope's tree: the rows are the same, to the byte.
#[test]
fn a_row_folded_from_the_wire_is_the_live_row() {
    // The wire carries milliseconds, as every envelope's time has.
    let events: Vec<Envelope> = saga()
        .into_iter()
        .map(|mut e| {
            e.time = chrono::SubsecRound::trunc_subsecs(e.time, 3);
            e
        })
        .collect();
    let live = fold(&events);
    let mut replayed = OrderReadModel::new(ORDER);
    for e in &events {
        let wire = e.to_json().unwrap();
        let raw = Envelope::<Box<serde_json::value::RawValue>>::decode(wire.as_bytes()).unwrap();
        assert!(replayed.insert_entry(raw.into()));
    }
    replayed.refold();
    assert_eq!(replayed, live);
    assert_eq!(
        serde_json::to_vec(&replayed).unwrap(),
        serde_json::to_vec(&live).unwrap()
    );
}

/// Entries compare by what their data says, not how it is spaced or ordered.
#[test]
fn entries_with_the_same_data_written_differently_are_equal() {
    let row = fold(&saga());
    let entry = row.timeline[0].clone();
    let value: serde_json::Value = serde_json::from_str(entry.data.get()).unwrap();
    let mut spaced = entry.clone();
    spaced.data =
        serde_json::value::RawValue::from_string(serde_json::to_string_pretty(&value).unwrap())
            .unwrap();
    assert_ne!(spaced.data.get(), entry.data.get());
    assert_eq!(spaced, entry);
    let mut other = entry.clone();
    other.data = serde_json::value::RawValue::from_string(r#"{"customer":"b"}"#.into()).unwrap();
    assert_ne!(other, entry);
}

/// A generation from before the index is read row by row once, and indexed: the next start
/// reads the index alone (a row changed behind its back is not seen).
#[test]
fn a_generation_written_before_its_index_is_read_once_then_from_its_index() {
    use super::sagas::OpenSagas;
    let dir = tempfile::tempdir().unwrap();
    let store = storage::Store::open(dir.path(), &storage::StoreConfig::default()).unwrap();
    let open_sagas = |store: &storage::Store| {
        let sagas = OpenSagas::default();
        super::load_sagas(&sagas, store, 0).unwrap();
        let report = sagas.report(Duration::seconds(60), Utc::now());
        (report.open, report.total)
    };
    let pending = fold(&saga()[..1]);
    let mut done = fold(&saga());
    done.order_status = Some("COMPLETED".into());
    let row = |row: &OrderReadModel| vec![(row.order_id.clone(), super::encode(row).unwrap())];
    store.write_models(0, &row(&pending), &[]).unwrap();
    assert_eq!(open_sagas(&store), (1, 1), "read from its row");

    store.write_models(0, &row(&done), &[]).unwrap();
    assert_eq!(open_sagas(&store), (1, 1), "read from the index");
}

/// Live batches write the active generation's index as its tracker counts, through an end, a
/// reopening (the payment's approval read after the cancellation) and the refund: after each,
/// a start from the index finds what the tracker has and what reading every row finds.
#[test]
fn live_batches_keep_the_index_as_the_rows_say() {
    use super::sagas::OpenSagas;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = storage::Store::open(dir.path(), &storage::StoreConfig::default()).unwrap();
    let actor = super::ProjectionActor {
        store: store.clone(),
        active: Arc::new(AtomicU32::new(0)),
        building: None,
        sagas: Arc::new(OpenSagas::default()),
    };
    super::load_sagas(&actor.sagas, &store, 0).unwrap();
    let events = saga();
    let cancelled = event(
        OrderEvent::OrderCancelled {
            reason: "cancelled by the customer".into(),
            confirmed: false,
            skus: Vec::new(),
        },
        2,
        2,
    );
    let refunded = event(
        PaymentEvent::PaymentRefunded {
            amount_cents: 1250,
            refund_id: "r".into(),
            reason: "x".into(),
        },
        2,
        3,
    );
    let counts = |sagas: &OpenSagas| {
        let r = sagas.report(Duration::seconds(60), Utc::now());
        (r.open, r.total, r.by_status)
    };
    let batches = [
        (vec![&events[0]], 1),
        (vec![&cancelled], 0),
        (vec![&events[1]], 1),
        (vec![&refunded], 0),
    ];
    for (batch, open) in batches {
        actor.apply(0, &batch).unwrap();
        let (from_index, from_rows) = (OpenSagas::default(), OpenSagas::default());
        super::load_sagas(&from_index, &store, 0).unwrap();
        super::read_every_saga(&from_rows, &store, 0).unwrap();
        let live = counts(&actor.sagas);
        assert_eq!(live.0, open, "{live:?}");
        assert_eq!(counts(&from_index), live);
        assert_eq!(counts(&from_rows), live);
    }
    assert_eq!(counts(&actor.sagas).2["CANCELLED"], 1, "counted once");
}
