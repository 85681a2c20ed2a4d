//! The order read model: one denormalized row per order, everything the "order detail" screen
//! needs in ONE lookup.
//!
//! A row keeps the order's timeline (every event about it, from every service) and its fields
//! are a fold of that timeline in (source, aggregate version) order. So a duplicate is dropped by
//! its event id, an event that arrives late from another stream lands in its place, and the row
//! is the same whatever the arrival order: a live row equals a rebuilt one.

use std::collections::BTreeMap;

use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::events::{
    Inbound, InventoryEvent, OrderEvent, PaymentEvent, RecommendationEvent, ShipmentEvent,
    StoreEvent,
};

/// One event in an order's timeline. Its `data` is kept as the JSON text it came in: a row is
/// decoded and encoded again at every event of its order, and a refold reads each entry's data
/// once, straight into its typed event, so a tree of it would only be built to be thrown away.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub event_id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
    /// Its version in its source aggregate's log.
    pub version: u64,
    pub data: Box<RawValue>,
}

/// Equal when they say the same: the same event with the same data, however its JSON is spaced
/// or its keys are ordered (a live row's data was written from a tree, a rebuilt one's read
/// from the stream).
impl PartialEq for TimelineEntry {
    fn eq(&self, other: &TimelineEntry) -> bool {
        let same_data = || {
            let tree = |data: &RawValue| serde_json::from_str::<serde_json::Value>(data.get()).ok();
            self.data.get() == other.data.get()
                || tree(&self.data).is_some_and(|mine| Some(mine) == tree(&other.data))
        };
        (
            self.event_id,
            &self.source,
            &self.event_type,
            self.time,
            self.version,
        ) == (
            other.event_id,
            &other.source,
            &other.event_type,
            other.time,
            other.version,
        ) && same_data()
    }
}

/// A live event becomes an entry: its data tree written out as text once.
impl From<&Envelope> for TimelineEntry {
    fn from(envelope: &Envelope) -> TimelineEntry {
        TimelineEntry {
            event_id: envelope.id,
            source: envelope.source.clone(),
            event_type: envelope.event_type.clone(),
            time: envelope.time,
            version: envelope.aggregateversion.unwrap_or(0),
            // A tree of JSON always writes out; `null` is only there to need no unwrap.
            data: serde_json::value::to_raw_value(&envelope.data)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        }
    }
}

/// A replayed event becomes an entry without copying its data.
impl From<Envelope<Box<RawValue>>> for TimelineEntry {
    fn from(envelope: Envelope<Box<RawValue>>) -> TimelineEntry {
        TimelineEntry {
            event_id: envelope.id,
            source: envelope.source,
            event_type: envelope.event_type,
            time: envelope.time,
            version: envelope.aggregateversion.unwrap_or(0),
            data: envelope.data,
        }
    }
}

/// The saga has not ended: the order is neither completed nor cancelled, or it is cancelled
/// with the customer's money still taken (the refund has not happened yet).
pub fn saga_open(order_status: Option<&str>, payment_status: Option<&str>) -> bool {
    match order_status {
        Some("COMPLETED") => false,
        Some("CANCELLED") => payment_status == Some("APPROVED"),
        _ => true,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderReadModel {
    pub order_id: String,
    /// Whose order it is: the API shows it to that customer only.
    pub customer: Option<String>,
    pub order_date: Option<DateTime<Utc>>,
    pub order_status: Option<String>,
    pub cancel_reason: Option<String>,
    pub total_amount: Option<u64>,
    pub payment_method: Option<String>,
    pub payment_approved_at: Option<DateTime<Utc>>,
    pub payment_status: Option<String>,
    pub inventory_available: Option<bool>,
    pub store_stock_available: Option<bool>,
    pub shipment_status: Option<String>,
    pub estimated_delivery: Option<String>,
    pub recommended_items: Vec<String>,
    /// Every event about the order, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Highest aggregate version applied, per source service.
    pub versions: BTreeMap<String, u64>,
}

impl OrderReadModel {
    /// When its newest event happened.
    pub fn last_event(&self) -> Option<DateTime<Utc>> {
        self.timeline.iter().map(|e| e.time).max()
    }

    pub fn new(order_id: &str) -> Self {
        OrderReadModel {
            order_id: order_id.to_string(),
            ..Self::default()
        }
    }

    /// Add an event and recompute the fields. Returns false if it was already there (a
    /// duplicate changes nothing).
    pub fn apply(&mut self, envelope: &Envelope) -> bool {
        let added = self.insert(envelope);
        if added {
            self.refold();
        }
        added
    }

    /// Add an event to the timeline without recomputing the fields: for a batch, insert every
    /// event, then [`OrderReadModel::refold`] once.
    pub fn insert(&mut self, envelope: &Envelope) -> bool {
        !self.has(envelope.id) && self.insert_entry(envelope.into())
    }

    /// [`OrderReadModel::insert`] for an entry already made. Returns false if it was there.
    pub fn insert_entry(&mut self, entry: TimelineEntry) -> bool {
        if self.has(entry.event_id) {
            return false;
        }
        self.timeline.push(entry);
        true
    }

    fn has(&self, event_id: Uuid) -> bool {
        self.timeline.iter().any(|e| e.event_id == event_id)
    }

    /// Recompute every field from the timeline, each source's events in version order.
    pub fn refold(&mut self) {
        self.timeline
            .sort_by(|a, b| (a.time, &a.source, a.version).cmp(&(b.time, &b.source, b.version)));
        let mut entries: Vec<&TimelineEntry> = self.timeline.iter().collect();
        entries.sort_by(|a, b| (&a.source, a.version).cmp(&(&b.source, b.version)));
        let mut next = OrderReadModel::new(&self.order_id);
        let mut cancel_requested = false;
        for entry in entries {
            *next.versions.entry(entry.source.clone()).or_default() = entry.version;
            // Events this version does not know are kept in the timeline, without effect.
            if let Ok(event) = Inbound::decode_data(&entry.source, &entry.event_type, &*entry.data)
            {
                next.fold(&event, &mut cancel_requested);
            }
        }
        if cancel_requested && matches!(next.order_status.as_deref(), Some("PENDING" | "CONFIRMED"))
        {
            next.order_status = Some("CANCELLING".into());
        }
        next.timeline = std::mem::take(&mut self.timeline);
        *self = next;
    }

    fn fold(&mut self, event: &Inbound, cancel_requested: &mut bool) {
        let status = |s: &str| Some(s.to_string());
        match event {
            Inbound::Order(e) => match e {
                OrderEvent::OrderCreated {
                    customer,
                    total_cents,
                    placed_at,
                    ..
                } => {
                    self.customer = Some(customer.clone());
                    self.order_date = Some(*placed_at);
                    self.total_amount = Some(*total_cents);
                    self.order_status = status("PENDING");
                }
                OrderEvent::OrderConfirmed { .. } => self.order_status = status("CONFIRMED"),
                OrderEvent::OrderShipped { .. } => self.order_status = status("SHIPPED"),
                OrderEvent::OrderCompleted {} => self.order_status = status("COMPLETED"),
                OrderEvent::OrderCancelRequested {} => *cancel_requested = true,
                OrderEvent::OrderCancelRejected { .. } => *cancel_requested = false,
                OrderEvent::OrderCancelled { reason, .. } => {
                    *cancel_requested = false;
                    self.order_status = status("CANCELLED");
                    self.cancel_reason = Some(reason.clone());
                }
            },
            Inbound::Payment(e) => match e {
                PaymentEvent::PaymentApproved {
                    payment_method,
                    approved_at,
                    ..
                } => {
                    self.payment_method = Some(payment_method.clone());
                    self.payment_approved_at = Some(*approved_at);
                    self.payment_status = status("APPROVED");
                }
                PaymentEvent::PaymentDeclined { .. } => self.payment_status = status("DECLINED"),
                PaymentEvent::PaymentVoided { .. } => self.payment_status = status("VOIDED"),
                PaymentEvent::PaymentAbandoned { .. } => self.payment_status = status("ABANDONED"),
                PaymentEvent::PaymentRefunded { .. } => self.payment_status = status("REFUNDED"),
                // Still approved: the money stays taken.
                PaymentEvent::PaymentClosed {} => {}
            },
            Inbound::Inventory(e) => match e {
                InventoryEvent::InventoryReserved { .. } => self.inventory_available = Some(true),
                InventoryEvent::InventoryShortage { .. } => self.inventory_available = Some(false),
                InventoryEvent::InventoryLinesReserved { .. }
                | InventoryEvent::InventoryReleased { .. }
                | InventoryEvent::InventoryCancellationNoted { .. }
                | InventoryEvent::InventoryOrderClosed { .. } => {}
            },
            Inbound::Store(e) => match e {
                StoreEvent::StoreStockReserved { .. } => self.store_stock_available = Some(true),
                StoreEvent::StoreStockUnavailable { .. } => {
                    self.store_stock_available = Some(false)
                }
                StoreEvent::StoreLinesReserved { .. }
                | StoreEvent::StoreStockReleased { .. }
                | StoreEvent::StoreCancellationNoted { .. }
                | StoreEvent::StoreOrderClosed { .. } => {}
            },
            Inbound::Shipment(e) => match e {
                ShipmentEvent::ShipmentBookingRequested { .. } => {
                    self.shipment_status = status("REQUESTED")
                }
                ShipmentEvent::ShipmentScheduled {
                    estimated_delivery, ..
                } => {
                    self.shipment_status = status("SCHEDULED");
                    self.estimated_delivery = Some(estimated_delivery.clone());
                }
                ShipmentEvent::ShipmentBookingOverdue { .. } => {
                    self.shipment_status = status("OVERDUE")
                }
                ShipmentEvent::ShipmentFailed { .. } => self.shipment_status = status("FAILED"),
                ShipmentEvent::ShipmentStarted {} => self.shipment_status = status("IN_TRANSIT"),
                ShipmentEvent::ShipmentDelivered {} => self.shipment_status = status("DELIVERED"),
                ShipmentEvent::ShipmentCancelled { .. } => {
                    self.shipment_status = status("CANCELLED")
                }
                ShipmentEvent::ShipmentCancelRejected { .. } => {}
            },
            Inbound::Recommendation(RecommendationEvent::RecommendationUpdated {
                recommended,
                ..
            }) => self.recommended_items = recommended.clone(),
        }
    }
}
