//! The HTTP gateway (actix-web). Stateless: every request becomes a typed call to a component's
//! endpoint ([`crate::contract`]), so it works the same with all services in one process or one
//! per process. It is the only place that speaks HTTP: it maps [`DomainError`] kinds to status
//! codes.
//!
//! - `POST /orders` (header `Idempotency-Key`: the same key never creates two orders)
//! - `GET /orders/{id}` (the read model, one lookup), `POST /orders/{id}/cancel` (409 once the
//!   parcel has left)
//! - `GET /orders/{id}/composed`: the fan-out baseline, asking all six services
//! - `GET /products` (catalog with warehouse and store stock), `GET /health` (which component
//!   is down: for operators)
//!
//! The order routes need a bearer token ([`auth`]): a customer places, reads and cancels only
//! their own orders (another's is a 404, as if it did not exist); an operator, any. No CORS
//! headers are sent (browsers keep other origins out) and bodies are JSON only.
//!
//! Every error is JSON: `{"error": "..."}` with a 4xx/5xx status. A 503 also names an
//! `incident`, under which the log holds its cause ([`incident`]).

pub mod auth;
mod composed;
mod incident;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::error::{InternalError, JsonPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Serialize;
use serde_json::json;

use self::auth::{ApiAuth, Caller};
use self::composed::FanOut;
use self::incident::Incident;
use crate::catalog::{card_digits, OrderForm, PaymentMethod, PRODUCTS};
use crate::contract::{
    Cancel, CancelOutcome, CancelRequest, Get, IdempotencyKey, InventoryService, Place,
    PlaceRequest, ReadOrder, Status, StoreService, StoreStock, WarehouseStock,
};
use crate::external::payment_gateway::GatewayClient;
use crate::external::CallError;
use crate::http::{cannot_listen, spawn_server};
use crate::resilience::Ops;
use crate::rpc::{call, call_at, Component, DomainError, Routes};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// Start the gateway on `addr` (port 0: any free port); returns where it listens.
pub fn start(
    addr: &str,
    client: async_nats::Client,
    payment_gateway_url: &str,
    ops: &Ops,
    callers: ApiAuth,
    routes: Routes,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let client = web::Data::new(client);
    let routes = web::Data::new(routes);
    let callers = web::Data::new(callers);
    let fan_out = web::Data::new(FanOut::new(ops));
    // Card numbers are exchanged for tokens here, at the edge, and go no further.
    let vault = GatewayClient::new(payment_gateway_url, ops.guard("payment-gateway-vault"))
        .map_err(std::io::Error::other)?;
    let vault = web::Data::new(vault);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(client.clone())
            .app_data(routes.clone())
            .app_data(fan_out.clone())
            .app_data(vault.clone())
            .app_data(callers.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY)
                    .error_handler(json_error),
            )
            .app_data(web::PayloadConfig::default().limit(MAX_BODY))
            .route("/orders", web::post().to(place_order))
            .route("/orders/{id}", web::get().to(get_order))
            .route("/orders/{id}/cancel", web::post().to(cancel_order))
            .route(
                "/orders/{id}/composed",
                web::get().to(composed::composed_order),
            )
            .route("/products", web::get().to(products))
            .route("/health", web::get().to(health))
            .default_service(web::to(|| async {
                error(StatusCode::NOT_FOUND, "no such endpoint")
            }))
    })
    .workers(2)
    // Signals are the launcher's: it stops servers in order.
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)
    .map_err(cannot_listen(addr))?;
    let addrs = server.addrs();
    spawn_server(server.run(), &addrs, addr)
}

/// Order ids are UUIDs; anything else names no order.
fn order_id(raw: &str) -> Result<String, DomainError> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| DomainError::not_found(format!("no order {raw:?}")))
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// An order `caller` may not see is one that does not exist, for them.
fn not_theirs(id: &str) -> HttpResponse {
    failed(DomainError::not_found(format!("no order {id:?}")))
}

/// Whether `caller` may see an order of `owner`'s.
fn may_see(caller: &Caller, owner: Option<&str>) -> bool {
    match caller {
        Caller::Operator => true,
        Caller::Customer(me) => owner == Some(me.as_str()),
    }
}

/// The HTTP status for each kind of domain error: the one place the domain meets HTTP.
fn status_of(e: &DomainError) -> StatusCode {
    match e {
        DomainError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DomainError::Conflict(_) => StatusCode::CONFLICT,
        DomainError::NotFound(_) => StatusCode::NOT_FOUND,
        DomainError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A refusal says why; an unavailable component only that it is, with an incident to quote (its
/// words are the system's insides: paths, addresses, which process failed how).
pub(super) fn failed(e: DomainError) -> HttpResponse {
    match e {
        DomainError::Unavailable(cause) => unavailable(Incident::of("answered 503", &cause)),
        e => error(status_of(&e), e.message()),
    }
}

/// 503 with the incident whose cause the log holds.
pub(super) fn unavailable(incident: Incident) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "error": UNAVAILABLE,
        "incident": incident.id(),
    }))
}

/// What a 503 says: retrying is safe (an order's under its Idempotency-Key).
const UNAVAILABLE: &str =
    "cannot answer now: send the request again (an order under the same Idempotency-Key)";

fn answer<T: Serialize>(result: Result<T, DomainError>) -> HttpResponse {
    match result {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(e) => failed(e),
    }
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let response = match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than {limit} bytes"),
        ),
        JsonPayloadError::ContentType => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ),
        // The parser quotes what it could not read, which may be a card number.
        other => error(
            StatusCode::BAD_REQUEST,
            &redact_card_numbers(&format!("invalid JSON body: {other}")),
        ),
    };
    InternalError::from_response(err, response).into()
}

/// The order's payment: the token a client brought, or a token for the card number it sent.
async fn payment_method(
    vault: &GatewayClient,
    form: &mut OrderForm,
) -> Result<PaymentMethod, DomainError> {
    let card = match (form.payment_token.take(), form.card_number.take()) {
        (Some(token), None) => vault.card(token.trim()).await,
        (None, Some(card_number)) => vault.tokenize(&card_digits(&card_number)?).await,
        _ => {
            return Err(DomainError::rejected(
                "give exactly one of payment_token and card_number",
            ))
        }
    };
    let card = card.map_err(vault_failed)?;
    Ok(PaymentMethod {
        token: card.token,
        brand: card.brand,
        last4: card.last4,
    })
}

/// What the client is told of the payment gateway's failure to tokenize or find a card.
fn vault_failed(e: CallError) -> DomainError {
    match e {
        CallError::Refused { status: 404, .. } => DomainError::rejected("unknown payment_token"),
        // The card refused: the gateway's reason, cut short, and no card number it may quote.
        CallError::Refused {
            status: 400 | 402 | 422,
            message,
        } => {
            // Redacted before it is cut, so no cut leaves part of a number unredacted.
            let reason: String = redact_card_numbers(&message).chars().take(200).collect();
            DomainError::rejected(format!("the payment gateway refused the card: {reason}"))
        }
        // Any other refusal is ours (a key, a route, a proxy): nothing the client can mend.
        e => DomainError::unavailable(format!("the payment gateway cannot take the card now: {e}")),
    }
}

/// `text` with every run of 12 or more digits (spaces and dashes between them included)
/// replaced, so no card number is echoed back.
pub(super) fn redact_card_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let mut digits = 0;
    let flush = |run: &mut String, digits: &mut usize, out: &mut String| {
        if *digits >= 12 {
            out.push_str("[redacted]");
            // Keep a trailing separator that was not part of the number.
            if run.ends_with([' ', '-']) {
                out.push(' ');
            }
        } else {
            out.push_str(run);
        }
        run.clear();
        *digits = 0;
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
            digits += 1;
        } else if (c == ' ' || c == '-') && digits > 0 {
            run.push(c);
        } else {
            flush(&mut run, &mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut digits, &mut out);
    out
}

/// Validation is the order service's; the gateway only exchanges a card number for a token.
async fn place_order(
    client: web::Data<async_nats::Client>,
    routes: web::Data<Routes>,
    vault: web::Data<GatewayClient>,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<OrderForm>,
) -> HttpResponse {
    let idempotency_key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(value) => match value
            .to_str()
            .map(|k| IdempotencyKey::try_from(k.to_string()))
        {
            Ok(Ok(key)) => Some(key),
            Ok(Err(reason)) => return error(StatusCode::BAD_REQUEST, &reason),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            }
        },
    };
    let mut form = body.into_inner();
    let customer = match (caller, form.customer.take()) {
        (Caller::Customer(me), None) => me,
        (Caller::Customer(me), Some(named)) if named.trim() == me => me,
        (Caller::Customer(_), Some(_)) => {
            return error(
                StatusCode::FORBIDDEN,
                "a customer places orders only as themselves",
            )
        }
        (Caller::Operator, Some(named)) => named,
        (Caller::Operator, None) => {
            return failed(DomainError::rejected("customer: whose order is it?"))
        }
    };
    let payment = match payment_method(&vault, &mut form).await {
        Ok(payment) => payment,
        Err(e) => return failed(e),
    };
    let request = PlaceRequest {
        idempotency_key,
        order: form.paid_with(customer, payment),
    };
    let at = crate::order::placed_by(**routes, &request);
    match call_at::<Place>(&client, at, &request).await {
        Ok(placed) => {
            let mut response = if placed.created {
                HttpResponse::Created()
            } else {
                HttpResponse::Ok()
            };
            response
                .insert_header(("Location", format!("/orders/{}", placed.order.order_id)))
                .insert_header(("Idempotent-Replayed", (!placed.created).to_string()))
                .json(placed.order)
        }
        Err(e) => failed(e),
    }
}

async fn get_order(
    client: web::Data<async_nats::Client>,
    caller: Caller,
    id: web::Path<String>,
) -> HttpResponse {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return failed(e),
    };
    // The read model: one lookup.
    match call::<ReadOrder>(&client, Component::Projection, &id).await {
        Ok(row) if !may_see(&caller, row.customer.as_deref()) => not_theirs(&id),
        other => answer(other),
    }
}

async fn cancel_order(
    client: web::Data<async_nats::Client>,
    routes: web::Data<Routes>,
    caller: Caller,
    id: web::Path<String>,
) -> HttpResponse {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return failed(e),
    };
    let at = routes.of_order(Component::Order, &id);
    let request = CancelRequest {
        order_id: id,
        customer: match caller {
            Caller::Customer(me) => Some(me),
            Caller::Operator => None,
        },
    };
    match call_at::<Cancel>(&client, at, &request).await {
        Ok(cancelled) => {
            let status = match cancelled.outcome {
                CancelOutcome::AlreadyCancelled => StatusCode::OK,
                CancelOutcome::Requested | CancelOutcome::AlreadyRequested => StatusCode::ACCEPTED,
            };
            HttpResponse::build(status).json(cancelled.order)
        }
        Err(e) => failed(e),
    }
}

#[derive(Serialize)]
struct Product {
    sku: &'static str,
    name: &'static str,
    price_cents: u64,
    warehouse_stock: Option<i64>,
    /// Units per store that carries it.
    store_stock: Option<std::collections::BTreeMap<String, i64>>,
}

/// The answers of every host of `component` (each shard of split stock), or the first error.
async fn every<E: crate::rpc::Endpoint<Request = Option<String>>>(
    client: &async_nats::Client,
    routes: &Routes,
    component: Component,
) -> Result<Vec<E::Reply>, DomainError> {
    let asked = routes
        .all(component)
        .into_iter()
        .map(|at| call_at::<E>(client, at, &None));
    futures::future::join_all(asked).await.into_iter().collect()
}

async fn products(
    client: web::Data<async_nats::Client>,
    routes: web::Data<Routes>,
) -> HttpResponse {
    let (warehouse, stores) = futures::join!(
        every::<Get<InventoryService>>(&client, &routes, Component::Inventory),
        every::<Get<StoreService>>(&client, &routes, Component::Store)
    );
    // Each shard of split stock answers for its own SKUs.
    let warehouse = warehouse.map(|shards| WarehouseStock {
        available: shards.into_iter().flat_map(|s| s.available).collect(),
    });
    let stores = stores.map(|shards| {
        let mut available: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (store, stock) in shards.into_iter().flat_map(|s| s.available) {
            available.entry(store).or_default().extend(stock);
        }
        StoreStock { available }
    });
    let mut warnings = Vec::new();
    let warehouse = warehouse
        .map_err(|e| warnings.push(unknown("warehouse stock", &e)))
        .ok();
    let stores = stores
        .map_err(|e| warnings.push(unknown("store stock", &e)))
        .ok();
    let products: Vec<Product> = PRODUCTS
        .iter()
        .map(|p| Product {
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            warehouse_stock: warehouse
                .as_ref()
                .and_then(|w| w.available.get(p.sku).copied()),
            store_stock: stores.as_ref().map(|s| {
                s.available
                    .iter()
                    .filter_map(|(store, stock)| Some((store.clone(), *stock.get(p.sku)?)))
                    .collect()
            }),
        })
        .collect();
    HttpResponse::Ok().json(json!({ "products": products, "warnings": warnings }))
}

/// The warning for a part of `/products` that could not be read: an incident, as a 503's.
fn unknown(part: &str, cause: &DomainError) -> String {
    let incident = Incident::of(&format!("GET /products: {part}"), cause);
    format!("{part} is unknown now (incident {})", incident.id())
}

/// Healthy or not for anyone (a load balancer's probe needs no token); which component is
/// down, and the broker connection, for operators only: the rest of the world has no need of
/// the system's layout.
async fn health(
    client: web::Data<async_nats::Client>,
    routes: web::Data<Routes>,
    caller: Option<Caller>,
) -> HttpResponse {
    let every = Component::with_status().flat_map(|c| routes.all(c));
    let checks = every.map(|at| {
        let client = client.clone();
        async move {
            let up =
                tokio::time::timeout(Duration::from_secs(2), call_at::<Status>(&client, at, &()))
                    .await
                    .is_ok_and(|r| r.is_ok());
            (at.to_string(), json!(if up { "up" } else { "down" }))
        }
    });
    let services: serde_json::Map<String, serde_json::Value> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    let nats = client.connection_state().to_string();
    let healthy = services.values().all(|v| v == "up");
    let status = if healthy { "ok" } else { "degraded" };
    let body = match caller {
        Some(Caller::Operator) => json!({ "status": status, "nats": nats, "services": services }),
        _ => json!({ "status": status }),
    };
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::{failed, redact_card_numbers, vault_failed, CallError, DomainError, HttpResponse};

    async fn body(response: HttpResponse) -> serde_json::Value {
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[actix_rt::test]
    async fn an_unavailable_answer_names_an_incident_and_not_its_cause() {
        let cause = "flush failed: cannot make database /var/lib/commerce/order durable";
        let response = failed(DomainError::unavailable(cause));
        assert_eq!(response.status(), 503);
        let said = body(response).await;
        assert!(!said.to_string().contains("/var/lib"), "{said}");
        let incident = said["incident"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(incident).is_ok(), "{said}");
        assert!(said["error"]
            .as_str()
            .unwrap()
            .contains("send the request again"));

        // An outage answers every request alike: one incident for its cause, not one each.
        let again = body(failed(DomainError::unavailable(cause))).await;
        assert_eq!(again["incident"], said["incident"]);
        let other = body(failed(DomainError::unavailable(
            "the broker is unreachable",
        )))
        .await;
        assert_ne!(other["incident"], said["incident"]);
    }

    #[test]
    fn a_refused_card_says_why_and_the_vault_refusing_us_is_ours() {
        let refused = |status, message: &str| {
            vault_failed(CallError::Refused {
                status,
                message: message.into(),
            })
        };
        assert_eq!(
            refused(404, "{}"),
            DomainError::rejected("unknown payment_token")
        );
        let declined = refused(422, r#"{"error":"card 4242 4242 4242 4242 expired"}"#);
        assert!(matches!(declined, DomainError::Rejected(_)), "{declined:?}");
        assert!(!declined.message().contains("4242 4242"), "{declined:?}");
        assert!(declined.message().contains("expired"), "{declined:?}");
        // A number where the reason is cut short is redacted whole first.
        let long = format!("{}4242 4242 4242 4242", "x".repeat(190));
        let cut = refused(422, &long);
        assert!(!cut.message().contains("4242"), "{cut:?}");
        for status in [401, 403, 405] {
            let ours = refused(status, "invalid API key sk_live_x");
            assert!(matches!(ours, DomainError::Unavailable(_)), "{ours:?}");
        }
    }

    #[actix_rt::test]
    async fn a_refusal_says_why() {
        let response = failed(DomainError::rejected("quantity must be 1 to 100"));
        assert_eq!(response.status(), 422);
        let said = body(response).await;
        assert_eq!(said["error"], "quantity must be 1 to 100");
        assert!(said.get("incident").is_none(), "{said}");
    }

    #[test]
    fn card_numbers_are_not_echoed_in_errors() {
        assert_eq!(
            redact_card_numbers("invalid type: integer `4242424242424242`, expected a string"),
            "invalid type: integer `[redacted]`, expected a string"
        );
        assert_eq!(
            redact_card_numbers("got 4242 4242-4242 4242 at line 1 column 20"),
            "got [redacted] at line 1 column 20"
        );
        assert_eq!(redact_card_numbers("line 1 column 20"), "line 1 column 20");
    }
}
