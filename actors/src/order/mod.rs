//! The order service: takes orders and cancels from clients, and follows the saga's outcomes to
//! the order's final status. One aggregate per order (id = order id).

pub mod aggregate;
pub mod events;

use bus::Domain;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use self::aggregate::{CancelOutcome, Order, OrderStatus};
use self::events::OrderEvent;
use crate::catalog::{OrderRequest, PlaceOrder};
use crate::engine::{ApiError, Command, EngineError, Executed, Reaction, Service};
use crate::events::Inbound;
use crate::Settings;

/// Namespace of order ids derived from an Idempotency-Key (UUID v5).
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_8c2a_4b7e_4e21_9a53_0c1e_77d4_a001);
/// Namespace of request fingerprints.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_8c2a_4b7e_4e21_9a53_0c1e_77d4_a002);

pub struct OrderService;

/// Body of `commerce.order.place`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub order: OrderRequest,
}

/// The order id for a request: derived from (customer, Idempotency-Key) when there is a key, so
/// the same key always names the same order; time-ordered (v7) otherwise.
pub fn order_id_for(customer: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => Uuid::new_v5(&ORDER_ID_NAMESPACE, format!("{customer}\0{key}").as_bytes()),
        None => Uuid::now_v7(),
    }
    .to_string()
}

impl Service for OrderService {
    type State = Order;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Payments, &["PaymentDeclined", "PaymentAbandoned"]),
        (Domain::Stores, &["StoreStockUnavailable"]),
        (
            Domain::Shipments,
            &[
                "ShipmentScheduled",
                "ShipmentFailed",
                "ShipmentStarted",
                "ShipmentDelivered",
                "ShipmentCancelled",
                "ShipmentCancelRejected",
            ],
        ),
    ];
    const COMMANDS: &'static [&'static str] = &["place", "cancel"];

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(OrderService)
    }

    fn route(&self, _event: &Inbound, saga: &str) -> Option<String> {
        Some(saga.to_string())
    }

    async fn react(&self, state: &Order, event: &Inbound, _saga: &str) -> Reaction<OrderEvent> {
        Ok(state.react(event))
    }

    fn command(endpoint: &str, body: &[u8]) -> Result<Command<Order>, ApiError> {
        match endpoint {
            "place" => {
                let request: PlaceRequest = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid order: {e}")))?;
                let key = request.idempotency_key.filter(|k| !k.is_empty());
                if key.as_ref().is_some_and(|k| k.len() > 255) {
                    return Err(ApiError::bad_request(
                        "Idempotency-Key is longer than 255 bytes",
                    ));
                }
                let order = PlaceOrder::parse(request.order)?;
                let order_id = order_id_for(&order.customer, key.as_deref());
                let canonical =
                    serde_json::to_vec(&order).map_err(|e| ApiError::bad_request(e.to_string()))?;
                let fingerprint = Uuid::new_v5(&FINGERPRINT_NAMESPACE, &canonical).to_string();
                let id = order_id.clone();
                Ok(Command {
                    aggregate_id: order_id,
                    decide: Box::new(move |state: &Order, _| {
                        state.place(&id, &order, &fingerprint, Utc::now())
                    }),
                })
            }
            "cancel" => {
                let order_id = parse_order_id(body)?;
                Ok(Command {
                    aggregate_id: order_id,
                    decide: Box::new(|state: &Order, _| state.cancel().map(|(_, events)| events)),
                })
            }
            other => Err(ApiError::not_found(format!("no command {other}"))),
        }
    }

    fn reply(endpoint: &str, executed: &Executed<Order>) -> Value {
        let order = view(&executed.state);
        match endpoint {
            "place" => json!({ "created": !executed.events.is_empty(), "order": order }),
            _ => {
                let outcome = match (executed.events.is_empty(), executed.state.status) {
                    (false, _) => CancelOutcome::Requested,
                    (true, OrderStatus::Cancelled) => CancelOutcome::AlreadyCancelled,
                    (true, _) => CancelOutcome::AlreadyRequested,
                };
                json!({ "cancel": format!("{outcome:?}"), "order": order })
            }
        }
    }

    fn get_id(body: &str) -> String {
        body.trim().to_string()
    }

    fn view(_version: u64, state: &Order) -> Option<Value> {
        state.exists().then(|| view(state))
    }
}

fn parse_order_id(body: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("order id is not UTF-8"))?
        .trim();
    Uuid::parse_str(text)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found(format!("no order {text:?} (order ids are UUIDs)")))
}

/// The order as clients see it.
pub fn view(order: &Order) -> Value {
    let status = match order.status {
        OrderStatus::Pending | OrderStatus::Confirmed if order.cancel_requested => {
            "CANCELLING".to_string()
        }
        status => serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    };
    json!({
        "order_id": order.order_id,
        "status": status,
        "customer": order.customer,
        "lines": order.lines,
        "total_cents": order.total_cents,
        "shipping_address": order.shipping_address,
        "placed_at": order.placed_at,
        "estimated_delivery": order.estimated_delivery,
        "cancel_reason": order.cancel_reason,
    })
}

#[cfg(test)]
mod tests;
