//! The order service: takes orders and cancels from clients, and follows the saga's outcomes to
//! the order's final status. One aggregate per order (id = order id).

pub mod aggregate;
pub mod api;

use std::convert::Infallible;

use bus::{Domain, Verdict};
use chrono::Utc;
use uuid::Uuid;

use self::aggregate::{CancelOutcome, Order, OrderCommand, OrderStatus};
use self::api::{
    Cancel, CancelRequest, Cancelled, IdempotencyKey, OrderView, Place, PlaceRequest, Placed,
};
use crate::catalog::PlaceOrder;
use crate::engine::{Command, EngineError, Executed, Handle, Placement, Scope, Service};
use crate::rpc::server::ServeError;
use crate::rpc::{Address, Component, DomainError, Routes, Server};
use crate::Settings;

/// Namespace of order ids derived from an Idempotency-Key (UUID v5).
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_8c2a_4b7e_4e21_9a53_0c1e_77d4_a001);
/// Namespace of request fingerprints.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_8c2a_4b7e_4e21_9a53_0c1e_77d4_a002);

pub struct OrderService;

/// The order id for a request: derived from (customer, Idempotency-Key) when there is a key, so
/// the same key always names the same order; time-ordered (v7) otherwise.
pub fn order_id_for(customer: &str, idempotency_key: Option<&IdempotencyKey>) -> String {
    match idempotency_key {
        Some(key) => Uuid::new_v5(
            &ORDER_ID_NAMESPACE,
            format!("{customer}\0{}", key.as_str()).as_bytes(),
        ),
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
    const PLACEMENT: Placement = Placement::PerOrder;
    type View = OrderView;
    type Part = OrderView;

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(OrderService)
    }

    /// It never calls anyone.
    async fn call(&self, _order_id: &str, call: &Infallible) -> Result<Infallible, Verdict> {
        match *call {}
    }

    fn view(_version: u64, state: &Order) -> Option<OrderView> {
        state.exists().then(|| OrderView::from(state))
    }

    fn part(_order_id: &str, version: u64, state: &Order) -> Option<OrderView> {
        Self::view(version, state)
    }

    /// `place` and `cancel`: each batch of requests is one commit and one flush.
    async fn endpoints(
        server: &mut Server,
        handle: Handle<Self>,
        scope: Scope,
    ) -> Result<(), ServeError> {
        let h = handle.clone();
        server
            .batch::<Place, _, _>(move |requests| {
                let h = h.clone();
                async move {
                    let place = |request| place(request, scope);
                    execute(&h, requests, place, |executed| Placed {
                        created: !executed.events.is_empty(),
                        order: OrderView::from(&executed.state),
                    })
                    .await
                }
            })
            .await?;
        server
            .batch::<Cancel, _, _>(move |requests| {
                let h = handle.clone();
                async move {
                    let cancel = |request| cancel(request, scope);
                    execute(&h, requests, cancel, cancelled).await
                }
            })
            .await
    }
}

/// Run one command per request (those that cannot be built are answered at once), all in one
/// commit and one flush, and answer each.
async fn execute<R, T>(
    handle: &Handle<OrderService>,
    requests: Vec<R>,
    command: impl Fn(R) -> Result<Command<Order>, DomainError>,
    reply: impl Fn(&Executed<Order>) -> T,
) -> Vec<Result<T, DomainError>> {
    let mut answers: Vec<Option<Result<T, DomainError>>> = Vec::with_capacity(requests.len());
    let mut commands = Vec::new();
    for request in requests {
        match command(request) {
            Ok(c) => {
                commands.push(c);
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    let mut executed = handle.execute_all(commands).await.into_iter();
    answers
        .into_iter()
        .map(|answer| match answer {
            Some(refused) => refused,
            None => match executed.next() {
                Some(result) => result.map(|e| reply(&e)),
                None => Err(DomainError::unavailable("the order service is stopping")),
            },
        })
        .collect()
}

/// Who places `request`: the partition of its order when the order id is known before (a valid
/// keyed request), else any partition (which draws an id of its own), at random.
pub fn placed_by(routes: Routes, request: &PlaceRequest) -> Address {
    let keyed = || {
        let key = request.idempotency_key.as_ref()?;
        let order = PlaceOrder::parse(request.order.clone()).ok()?;
        Some(order_id_for(&order.customer, Some(key)))
    };
    let id = keyed().unwrap_or_else(|| Uuid::now_v7().to_string());
    routes.of_order(Component::Order, &id)
}

fn place(request: PlaceRequest, scope: Scope) -> Result<Command<Order>, DomainError> {
    let order = PlaceOrder::parse(request.order)?;
    let order_id = match &request.idempotency_key {
        Some(key) => order_id_for(&order.customer, Some(key)),
        // A new id of this partition (one draw in each partition count, on average).
        None => std::iter::repeat_with(|| order_id_for(&order.customer, None))
            .find(|id| scope.owns(id))
            .unwrap_or_default(),
    };
    owned(&order_id, scope)?;
    let canonical = serde_json::to_vec(&order)
        .map_err(|e| DomainError::rejected(format!("unencodable order: {e}")))?;
    let fingerprint = Uuid::new_v5(&FINGERPRINT_NAMESPACE, &canonical).to_string();
    Ok(Command {
        aggregate_id: order_id.clone(),
        command: OrderCommand::Place {
            order_id,
            order: Box::new(order),
            fingerprint,
            placed_at: Utc::now(),
        },
    })
}

/// A command about an order of another partition is not executed here (where the order's
/// events would be in the wrong partition's database). The client's fault is a deployment's
/// (its partition count is not this one's), not the request's, so it is unavailability.
fn owned(order_id: &str, scope: Scope) -> Result<(), DomainError> {
    if scope.owns(order_id) {
        return Ok(());
    }
    Err(DomainError::unavailable(format!(
        "order {order_id} is not in {}'s partition (a client computed its partition wrongly)",
        scope.address
    )))
}

fn cancel(request: CancelRequest, scope: Scope) -> Result<Command<Order>, DomainError> {
    let CancelRequest { order_id, customer } = request;
    let order_id = Uuid::parse_str(order_id.trim())
        .map_err(|_| {
            DomainError::not_found(format!("no order {order_id:?} (order ids are UUIDs)"))
        })?
        .to_string();
    owned(&order_id, scope)?;
    Ok(Command {
        aggregate_id: order_id,
        command: OrderCommand::Cancel { customer },
    })
}

fn cancelled(executed: &Executed<Order>) -> Cancelled {
    let outcome = match (executed.events.is_empty(), executed.state.status) {
        (false, _) => CancelOutcome::Requested,
        (true, OrderStatus::Cancelled) => CancelOutcome::AlreadyCancelled,
        (true, _) => CancelOutcome::AlreadyRequested,
    };
    Cancelled {
        outcome,
        order: OrderView::from(&executed.state),
    }
}

#[cfg(test)]
mod tests;
