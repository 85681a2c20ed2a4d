//! The HTTP gateway (actix-web). Stateless: every request becomes a NATS request to a service's
//! micro endpoint, so it works the same with all services in one process or one per process.
//!
//! - `POST /orders` (header `Idempotency-Key`: the same key never creates two orders)
//! - `GET /orders/{id}` (the read model, one lookup), `POST /orders/{id}/cancel` (409 once the
//!   parcel has left)
//! - `GET /orders/{id}/composed`: the fan-out baseline, asking all six services
//! - `GET /products` (catalog with warehouse and store stock), `GET /health`
//!
//! Every error is JSON: `{"error": "..."}` with a 4xx/5xx status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::error::{InternalError, JsonPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::catalog::{OrderRequest, PlaceOrder, PRODUCTS};
use crate::engine::host::request;
use crate::engine::ApiError;
use crate::resilience::{Guard, Guarded, Ops};
use crate::status_components;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// `?guards=false` calls the services without bulkhead and breaker: the baseline for
/// `commerce bench reads`.
#[derive(serde::Deserialize)]
struct ComposedQuery {
    #[serde(default = "yes")]
    guards: bool,
}

fn yes() -> bool {
    true
}

/// Each service's guard (bulkhead + breaker) for the composed fan-out, and the Arbiter its calls
/// run on: a dependency that hangs holds only its own thread and permits.
struct FanOut(HashMap<&'static str, (Arc<Guard>, actix_rt::ArbiterHandle)>);

/// Start the gateway on `addr` (port 0: any free port); returns where it listens.
pub fn start(
    addr: &str,
    client: async_nats::Client,
    ops: &Ops,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let client = web::Data::new(client);
    let fan_out = web::Data::new(FanOut(
        crate::SERVICES
            .iter()
            .map(|service| {
                let guard = ops.guard(&format!("composed-{service}"));
                (*service, (guard, actix_rt::Arbiter::new().handle()))
            })
            .collect(),
    ));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(client.clone())
            .app_data(fan_out.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY)
                    .error_handler(json_error),
            )
            .app_data(web::PayloadConfig::default().limit(MAX_BODY))
            .route("/orders", web::post().to(place_order))
            .route("/orders/{id}", web::get().to(get_order))
            .route("/orders/{id}/cancel", web::post().to(cancel_order))
            .route("/orders/{id}/composed", web::get().to(composed_order))
            .route("/products", web::get().to(products))
            .route("/health", web::get().to(health))
            .default_service(web::to(|| async {
                error(ApiError::not_found("no such endpoint"))
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

/// Run a bound server on the current actix system; returns where it listens.
pub fn spawn_server(
    server: actix_web::dev::Server,
    addrs: &[SocketAddr],
    addr: &str,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let bound = addrs
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other(format!("no address bound for {addr}")))?;
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}

/// The error for an address that cannot be listened on, naming it.
pub fn cannot_listen(addr: &str) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}

/// Order ids are UUIDs; anything else names no order.
fn order_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::not_found(format!("no order {raw:?}")))
}

fn error(e: ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({ "error": e.message }))
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::new(413, format!("request body is larger than {limit} bytes"))
        }
        JsonPayloadError::ContentType => {
            ApiError::new(415, "Content-Type must be application/json")
        }
        other => ApiError::bad_request(format!("invalid JSON body: {other}")),
    };
    InternalError::from_response(err, error(e)).into()
}

async fn place_order(
    client: web::Data<async_nats::Client>,
    req: HttpRequest,
    body: web::Json<OrderRequest>,
) -> HttpResponse {
    let key = match req.headers().get("Idempotency-Key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if !key.trim().is_empty() && key.len() <= 255 => Some(key.trim().to_string()),
        Some(_) => {
            return error(ApiError::bad_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ))
        }
    };
    let order = body.into_inner();
    // Validate here too, so a bad request is answered without a round trip.
    if let Err(e) = PlaceOrder::parse(order.clone()) {
        return error(e);
    }
    let body = json!({ "idempotency_key": key, "order": order });
    match request(&client, "order", "place", body.to_string().into_bytes()).await {
        Ok(reply) => {
            let created = reply["created"].as_bool().unwrap_or(false);
            let order = reply["order"].clone();
            let location = format!("/orders/{}", order["order_id"].as_str().unwrap_or_default());
            let mut response = if created {
                HttpResponse::Created()
            } else {
                HttpResponse::Ok()
            };
            response
                .insert_header(("Location", location))
                .insert_header(("Idempotent-Replayed", (!created).to_string()))
                .json(order)
        }
        Err(e) => error(e),
    }
}

async fn get_order(client: web::Data<async_nats::Client>, id: web::Path<String>) -> HttpResponse {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    // The read model: one lookup.
    match request(&client, crate::projection::NAME, "get", id.into_bytes()).await {
        Ok(order) => HttpResponse::Ok().json(order),
        Err(e) => error(e),
    }
}

/// The fan-out baseline: ask each of the six services for its part of the order (compare with
/// the read model's one lookup), each through its own bulkhead and breaker, with a 2 s limit.
/// A service that cannot answer makes it a 503 that still carries the parts it has and names the
/// missing ones; with its breaker open, that is immediate.
async fn composed_order(
    client: web::Data<async_nats::Client>,
    fan_out: web::Data<FanOut>,
    id: web::Path<String>,
    query: web::Query<ComposedQuery>,
) -> HttpResponse {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let asks = crate::SERVICES.iter().map(|service| {
        let (client, id) = (client.get_ref().clone(), id.clone());
        let ask = move || async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                request(&client, service, "part", id.into_bytes()),
            )
            .await
            .unwrap_or_else(|_| Err(ApiError::unavailable(format!("{service} took over 2 s"))))
        };
        let guarded = fan_out.0.get(service).filter(|_| query.guards).cloned();
        async move {
            let Some((guard, arbiter)) = guarded else {
                return ask().await;
            };
            // A 404 is an answer ("knows nothing of it"); only 5xx count against the service.
            let failed = |r: &Result<Value, ApiError>| matches!(r, Err(e) if e.code >= 500);
            // Fallback: the part is marked missing, at once.
            let missing =
                |refused: Guarded<ApiError>| Err(ApiError::unavailable(refused.to_string()));
            let (tx, rx) = tokio::sync::oneshot::channel();
            arbiter.spawn(async move {
                let _ = tx.send(guard.call_or(failed, ask, missing).await);
            });
            rx.await
                .unwrap_or_else(|_| Err(ApiError::unavailable(format!("{service}: stopped"))))
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut body = serde_json::Map::new();
    body.insert("order_id".into(), json!(id));
    let mut missing = Vec::new();
    for (service, answer) in crate::SERVICES.iter().zip(answers) {
        match answer {
            Ok(part) => {
                body.insert(service.to_string(), part);
            }
            Err(e) if e.code == 404 => {
                body.insert(service.to_string(), Value::Null);
            }
            Err(e) => missing.push(json!({ "service": service, "error": e.message })),
        }
    }
    if body.get("order").is_some_and(Value::is_null) {
        return error(ApiError::not_found(format!("no order {id:?}")));
    }
    if !missing.is_empty() {
        body.insert("error".into(), json!("some services did not answer"));
        body.insert("missing".into(), json!(missing));
        return HttpResponse::ServiceUnavailable().json(body);
    }
    HttpResponse::Ok().json(body)
}

async fn cancel_order(
    client: web::Data<async_nats::Client>,
    id: web::Path<String>,
) -> HttpResponse {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    match request(&client, "order", "cancel", id.into_bytes()).await {
        Ok(reply) => {
            let status = if reply["cancel"] == "AlreadyCancelled" {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            HttpResponse::build(status).json(reply["order"].clone())
        }
        Err(e) => error(e),
    }
}

async fn products(client: web::Data<async_nats::Client>) -> HttpResponse {
    let (warehouse, stores) = futures::join!(
        request(&client, "inventory", "get", Vec::new()),
        request(&client, "store", "get", Vec::new())
    );
    let mut warnings = Vec::new();
    let warehouse = warehouse
        .map_err(|e| warnings.push(format!("warehouse stock: {e}")))
        .ok();
    let stores = stores
        .map_err(|e| warnings.push(format!("store stock: {e}")))
        .ok();
    let products: Vec<Value> = PRODUCTS
        .iter()
        .map(|p| {
            let store_stock: Option<serde_json::Map<String, Value>> = stores.as_ref().map(|s| {
                s["available"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(store, stock)| (store.clone(), stock[p.sku].clone()))
                    .filter(|(_, units)| !units.is_null())
                    .collect()
            });
            json!({
                "sku": p.sku,
                "name": p.name,
                "price_cents": p.price_cents,
                "warehouse_stock": warehouse.as_ref().map(|w| w["available"][p.sku].clone()),
                "store_stock": store_stock,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "products": products, "warnings": warnings }))
}

async fn health(client: web::Data<async_nats::Client>) -> HttpResponse {
    let checks = status_components().map(|service| {
        let client = client.clone();
        async move {
            let up = tokio::time::timeout(
                Duration::from_secs(2),
                request(&client, service, "status", Vec::new()),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            (service.to_string(), json!(if up { "up" } else { "down" }))
        }
    });
    let services: serde_json::Map<String, Value> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    let nats = client.connection_state().to_string();
    let healthy = services.values().all(|v| v == "up");
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "nats": nats,
        "services": services,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
