//! `GET /orders/{id}/composed`: the fan-out baseline. It asks each of the six services for its
//! part of the order (compare with the read model's one lookup), each through its own bulkhead
//! and breaker on its own Arbiter, with a 2 s limit. A service that cannot answer makes it a
//! 503 that still carries the parts it has and names the missing ones (why is logged under its
//! incident); with its breaker open, that is immediate. `?guards=false` skips the guards: the baseline for `commerce bench reads`, for
//! operators only. A customer sees only their own order, and nothing when the order service
//! cannot say whose it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::incident::Incident;
use super::{error, failed, may_see, not_theirs, order_id, unavailable};
use crate::contract::{
    InventoryPart, InventoryService, OrderService, OrderView, Part, Payment, PaymentService,
    RecommendationPart, RecommendationService, Service, Shipment, ShipmentService, StorePart,
    StoreService,
};
use crate::resilience::{Guard, Guarded, Ops};
use crate::rpc::{call_at, Component, DomainError, Routes};

/// How long each service has to answer.
const LIMIT: Duration = Duration::from_secs(2);

/// Each service's guard (bulkhead + breaker) and the Arbiter its calls run on: a dependency
/// that hangs holds only its own thread and permits.
pub struct FanOut(HashMap<Component, (Arc<Guard>, actix_rt::ArbiterHandle)>);

impl FanOut {
    pub fn new(ops: &Ops) -> FanOut {
        FanOut(
            Component::SERVICES
                .into_iter()
                .map(|service| {
                    let guard = ops.guard(&format!("composed-{service}"));
                    (service, (guard, actix_rt::Arbiter::new().handle()))
                })
                .collect(),
        )
    }
}

#[derive(Deserialize)]
pub struct ComposedQuery {
    #[serde(default = "yes")]
    guards: bool,
}

fn yes() -> bool {
    true
}

/// Every service's part of one order: `null` when that service knows nothing of it, absent
/// when it did not answer (then it is listed in `missing`).
#[derive(Serialize)]
struct Composed {
    order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Option<OrderView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment: Option<Option<Payment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inventory: Option<Option<InventoryPart>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<Option<StorePart>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shipment: Option<Option<Shipment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recommendation: Option<Option<RecommendationPart>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<Missing>,
}

/// A service that did not answer; why is logged under the answer's incident.
#[derive(Serialize)]
struct Missing {
    service: Component,
    #[serde(skip)]
    cause: String,
}

pub async fn composed_order(
    client: web::Data<async_nats::Client>,
    routes: web::Data<Routes>,
    fan_out: web::Data<FanOut>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<ComposedQuery>,
) -> HttpResponse {
    if !query.guards && caller != Caller::Operator {
        return error(StatusCode::FORBIDDEN, "guards=false is for operators only");
    }
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return failed(e),
    };
    let ask = Ask {
        client: client.get_ref().clone(),
        routes: **routes,
        fan_out: &fan_out,
        order_id: &id,
        guards: query.guards,
    };
    let (order, payment, inventory, store, shipment, recommendation) = futures::join!(
        ask.part::<OrderService>(),
        ask.part::<PaymentService>(),
        ask.part::<InventoryService>(),
        ask.part::<StoreService>(),
        ask.part::<ShipmentService>(),
        ask.part::<RecommendationService>(),
    );
    let mut missing = Vec::new();
    let composed = Composed {
        order_id: id.clone(),
        order: keep(order, &mut missing),
        payment: keep(payment, &mut missing),
        inventory: keep(inventory, &mut missing),
        store: keep(store, &mut missing),
        shipment: keep(shipment, &mut missing),
        recommendation: keep(recommendation, &mut missing),
        error: None,
        incident: None,
        missing,
    };
    let causes = composed
        .missing
        .iter()
        .map(|m| format!("{}: {}", m.service, m.cause))
        .collect::<Vec<_>>()
        .join("; ");
    match (&composed.order, &caller) {
        (Some(None), _) => return not_theirs(&id),
        (Some(Some(order)), caller) if !may_see(caller, Some(&order.customer)) => {
            return not_theirs(&id)
        }
        // The order is named in what is logged, not in the cause: one outage is one incident.
        (None, Caller::Customer(_)) => {
            let what = format!("the composed view of order {id}, whose order it is unknown");
            return unavailable(Incident::of(&what, &causes));
        }
        _ => {}
    }
    if composed.missing.is_empty() {
        return HttpResponse::Ok().json(composed);
    }
    let incident = Incident::of(&format!("the composed view of order {id}"), &causes);
    HttpResponse::ServiceUnavailable().json(Composed {
        error: Some("some services did not answer"),
        incident: Some(incident.id().to_string()),
        ..composed
    })
}

/// The answer (`Some(None)`: knows nothing of the order), or `None` with the service noted as
/// missing.
fn keep<T>(part: Result<Option<T>, Missing>, missing: &mut Vec<Missing>) -> Option<Option<T>> {
    part.map_err(|m| missing.push(m)).ok()
}

struct Ask<'a> {
    client: async_nats::Client,
    routes: Routes,
    fan_out: &'a FanOut,
    order_id: &'a str,
    guards: bool,
}

impl Ask<'_> {
    /// Service `S`'s part: `Ok(None)` if it knows nothing of the order.
    async fn part<S: Service>(&self) -> Result<Option<S::Part>, Missing> {
        let service = S::COMPONENT;
        let every = self.routes.about_order(service, self.order_id);
        let (client, id) = (self.client.clone(), self.order_id.to_string());
        let ask = move || async move {
            let asked = every.into_iter().map(|at| {
                let (client, id) = (client.clone(), id.clone());
                async move {
                    tokio::time::timeout(LIMIT, call_at::<Part<S>>(&client, at, &id))
                        .await
                        .unwrap_or_else(|_| {
                            Err(DomainError::unavailable(format!("{at} took over 2 s")))
                        })
                }
            });
            // Every shard of a service split by SKU knows its own lines of the order.
            let mut parts = Vec::new();
            for answer in futures::future::join_all(asked).await {
                match answer {
                    Ok(part) => parts.push(part),
                    Err(DomainError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            S::merge(parts).ok_or_else(|| {
                DomainError::not_found(format!("{service} knows nothing of order {id}"))
            })
        };
        let guarded = self
            .fan_out
            .0
            .get(&service)
            .filter(|_| self.guards)
            .cloned();
        let answer = match guarded {
            None => ask().await,
            Some((guard, arbiter)) => {
                // "Knows nothing of it" is an answer; only unavailability counts against it.
                let failed = |r: &Result<S::Part, DomainError>| {
                    matches!(r, Err(DomainError::Unavailable(_)))
                };
                // Fallback: the part is marked missing, at once.
                let refused = |refused: Guarded<DomainError>| {
                    Err(DomainError::unavailable(refused.to_string()))
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                arbiter.spawn(async move {
                    let _ = tx.send(guard.call_or(failed, ask, refused).await);
                });
                rx.await.unwrap_or_else(|_| {
                    Err(DomainError::unavailable(format!("{service}: stopped")))
                })
            }
        };
        match answer {
            Ok(part) => Ok(Some(part)),
            Err(DomainError::NotFound(_)) => Ok(None),
            Err(e) => Err(Missing {
                service,
                cause: e.message().to_string(),
            }),
        }
    }
}
