//! The order: the customer's view of the saga. It decides on commands (place, cancel) and reacts
//! to the outcome events of the other services; it never calls anyone.

use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PlaceOrder};
use crate::engine::{Aggregate, Plan};
use crate::events::OrderEvent;
use crate::events::{Inbound, PaymentEvent, ShipmentEvent, StoreEvent};
use crate::rpc::DomainError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Not placed (no events yet).
    #[default]
    New,
    /// Placed; payment, stock and shipment are being arranged.
    Pending,
    /// Paid, stock reserved, carrier booked.
    Confirmed,
    /// The parcel left: the pivot. No cancel after this.
    Shipped,
    Completed,
    Cancelled,
}

impl OrderStatus {
    /// As serialized: `PENDING`, `CONFIRMED`, …
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::New => "NEW",
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// A snapshot is the only local copy of a closed one: fields added later read as their default.
#[serde(default)]
pub struct Order {
    pub order_id: String,
    pub status: OrderStatus,
    pub customer: String,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    pub shipping_address: String,
    pub placed_at: Option<DateTime<Utc>>,
    pub estimated_delivery: Option<String>,
    /// `warehouse` or the store the parcel leaves from, once confirmed.
    pub ship_from: Option<String>,
    /// A customer's cancel is waiting for the shipment service's answer.
    pub cancel_requested: bool,
    pub cancel_reason: Option<String>,
    pub request_fingerprint: String,
}

/// A client's command.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    /// Place the order `order_id`; `fingerprint` identifies the request (Idempotency-Key reuse).
    Place {
        order_id: String,
        order: Box<PlaceOrder>,
        fingerprint: String,
        placed_at: DateTime<Utc>,
    },
    /// A cancel, by `customer` (`None`: an operator). Another customer's order is not found.
    Cancel { customer: Option<String> },
}

impl Aggregate for Order {
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Call = Infallible;
    type Answer = Infallible;

    fn is_closed(&self) -> bool {
        matches!(self.status, OrderStatus::Completed | OrderStatus::Cancelled)
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated {
                order_id,
                customer,
                lines,
                total_cents,
                shipping_address,
                placed_at,
                request_fingerprint,
                ..
            } => {
                self.order_id = order_id.clone();
                self.status = OrderStatus::Pending;
                self.customer = customer.clone();
                self.lines = lines.clone();
                self.total_cents = *total_cents;
                self.shipping_address = shipping_address.clone();
                self.placed_at = Some(*placed_at);
                self.request_fingerprint = request_fingerprint.clone();
            }
            OrderEvent::OrderConfirmed {
                estimated_delivery,
                ship_from,
                ..
            } => {
                self.status = OrderStatus::Confirmed;
                self.estimated_delivery = Some(estimated_delivery.clone());
                self.ship_from = ship_from.clone();
            }
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCompleted {} => self.status = OrderStatus::Completed,
            OrderEvent::OrderCancelRequested {} => self.cancel_requested = true,
            OrderEvent::OrderCancelRejected { .. } => self.cancel_requested = false,
            OrderEvent::OrderCancelled { reason, .. } => {
                self.status = OrderStatus::Cancelled;
                self.cancel_requested = false;
                self.cancel_reason = Some(reason.clone());
            }
        }
    }

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        match command {
            OrderCommand::Place {
                order_id,
                order,
                fingerprint,
                placed_at,
            } => self.place(&order_id, &order, &fingerprint, placed_at),
            OrderCommand::Cancel { customer } => self.cancel(customer.as_deref()),
        }
    }

    /// React to another service's outcome.
    fn react(
        &self,
        _order_id: &str,
        event: &Inbound,
        _now: DateTime<Utc>,
    ) -> Plan<OrderEvent, Infallible> {
        match self.impossible(event) {
            Some(reason) => Plan::Refuse(reason),
            None => Plan::Emit(self.follow(event)),
        }
    }

    fn outcome(&self, call: Infallible, _: Infallible, _: DateTime<Utc>) -> Vec<OrderEvent> {
        match call {}
    }
}

/// What `cancel` did, for the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The cancel is recorded; the saga now compensates (unless the parcel leaves first).
    Requested,
    /// An earlier cancel is still being compensated.
    AlreadyRequested,
    /// The order was cancelled already.
    AlreadyCancelled,
}

impl Order {
    pub fn exists(&self) -> bool {
        self.status != OrderStatus::New
    }

    /// The parcel left, from where it was booked.
    fn shipped(&self) -> OrderEvent {
        OrderEvent::OrderShipped {
            ship_from: self.ship_from.clone(),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self.status, OrderStatus::Completed | OrderStatus::Cancelled)
    }

    /// Place the order. Placing it again with the same request is a no-op (idempotency); with a
    /// different request under the same id (Idempotency-Key reuse) it is refused.
    fn place(
        &self,
        order_id: &str,
        order: &PlaceOrder,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>, DomainError> {
        if self.exists() {
            if self.request_fingerprint == fingerprint {
                return Ok(Vec::new());
            }
            return Err(DomainError::rejected(
                "this Idempotency-Key was already used for a different order",
            ));
        }
        Ok(vec![OrderEvent::OrderCreated {
            order_id: order_id.to_string(),
            customer: order.customer.clone(),
            lines: order.lines.clone(),
            total_cents: order.total_cents,
            payment_token: order.payment.token.clone(),
            card_brand: Some(order.payment.brand.clone()),
            card_last4: Some(order.payment.last4.clone()),
            shipping_address: order.shipping_address.clone(),
            placed_at: now,
            request_fingerprint: fingerprint.to_string(),
        }])
    }

    /// A customer's cancel: allowed until the parcel has left. A cancel already requested or
    /// done records nothing.
    fn cancel(&self, customer: Option<&str>) -> Result<Vec<OrderEvent>, DomainError> {
        if customer.is_some_and(|c| c != self.customer) {
            return Err(DomainError::not_found("no such order"));
        }
        match self.status {
            OrderStatus::New => Err(DomainError::not_found("no such order")),
            OrderStatus::Cancelled => Ok(Vec::new()),
            OrderStatus::Shipped | OrderStatus::Completed => Err(DomainError::conflict(format!(
                "the order is {}: it has left the warehouse and can no longer be cancelled",
                self.status.name()
            ))),
            OrderStatus::Pending | OrderStatus::Confirmed if self.cancel_requested => {
                Ok(Vec::new())
            }
            OrderStatus::Pending | OrderStatus::Confirmed => {
                Ok(vec![OrderEvent::OrderCancelRequested {}])
            }
        }
    }

    /// A failure that would cancel the order after its parcel has left: no service fails a
    /// step the saga has passed, so it is not believed (and nothing is compensated).
    fn impossible(&self, event: &Inbound) -> Option<String> {
        let failure = match event {
            Inbound::Payment(PaymentEvent::PaymentDeclined { .. }) => "PaymentDeclined",
            Inbound::Payment(PaymentEvent::PaymentAbandoned { .. }) => "PaymentAbandoned",
            Inbound::Store(StoreEvent::StoreStockUnavailable { .. }) => "StoreStockUnavailable",
            Inbound::Shipment(ShipmentEvent::ShipmentFailed { .. }) => "ShipmentFailed",
            Inbound::Shipment(ShipmentEvent::ShipmentCancelled { .. }) => "ShipmentCancelled",
            _ => return None,
        };
        matches!(self.status, OrderStatus::Shipped | OrderStatus::Completed).then(|| {
            format!(
                "{failure} is impossible for an order that is {}: its parcel has left",
                self.status.name()
            )
        })
    }

    /// Follow another service's outcome.
    fn follow(&self, event: &Inbound) -> Vec<OrderEvent> {
        if !self.exists() || self.is_final() {
            return Vec::new();
        }
        let cancel = |reason: &str| {
            vec![OrderEvent::OrderCancelled {
                reason: reason.to_string(),
                confirmed: self.status == OrderStatus::Confirmed,
                skus: self.lines.iter().map(|l| l.sku.clone()).collect(),
            }]
        };
        let status = self.status;
        match event {
            Inbound::Payment(PaymentEvent::PaymentDeclined { reason, .. }) => {
                cancel(&format!("payment declined: {reason}"))
            }
            Inbound::Payment(PaymentEvent::PaymentAbandoned { reason, .. }) => cancel(reason),
            Inbound::Store(StoreEvent::StoreStockUnavailable { .. }) => {
                cancel("out of stock in the warehouse and every store")
            }
            Inbound::Shipment(ShipmentEvent::ShipmentFailed { reason, .. }) => {
                cancel(&format!("shipment failed: {reason}"))
            }
            Inbound::Shipment(ShipmentEvent::ShipmentCancelled { .. }) => {
                cancel("cancelled by the customer")
            }
            Inbound::Shipment(ShipmentEvent::ShipmentScheduled {
                estimated_delivery,
                ship_from,
                ..
            }) if status == OrderStatus::Pending => vec![OrderEvent::OrderConfirmed {
                lines: self.lines.clone(),
                estimated_delivery: estimated_delivery.clone(),
                ship_from: Some(ship_from.clone()),
            }],
            Inbound::Shipment(ShipmentEvent::ShipmentStarted {})
                if matches!(status, OrderStatus::Pending | OrderStatus::Confirmed) =>
            {
                vec![self.shipped()]
            }
            Inbound::Shipment(ShipmentEvent::ShipmentDelivered {}) => {
                let mut events = Vec::new();
                if status != OrderStatus::Shipped {
                    events.push(self.shipped());
                }
                events.push(OrderEvent::OrderCompleted {});
                events
            }
            Inbound::Shipment(ShipmentEvent::ShipmentCancelRejected { reason })
                if self.cancel_requested =>
            {
                vec![OrderEvent::OrderCancelRejected {
                    reason: reason.clone(),
                }]
            }
            _ => Vec::new(),
        }
    }
}
