//! The carrier simulator: bookings (idempotent by key) that progress on their own, booked →
//! picked_up → delivered, published as a tracking feed (`GET /v1/tracking?after=N`).
//! An address containing [`UNDELIVERABLE`] is refused (422); one containing [`HOLD`] is booked
//! but never picked up; a picked-up parcel cannot be cancelled (409). `GET /v1/bookings?
//! idempotency_key=K` finds a booking by its key.
//! Its latency fault is a slow answer: a booking or cancel is done when the call arrives and
//! answered late, so a caller that gives up waiting does not know what the carrier did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::faults::FaultState;
use super::lock;
use crate::catalog::{HOLD, UNDELIVERABLE};
use crate::external::carrier::{BookingReply, BookingRequest, TrackingPage, TrackingUpdate};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierLedger {
    pub bookings: Vec<BookingReply>,
    #[serde(default)]
    pub calls: u64,
}

/// How fast parcels move on their own.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub pickup_after: Duration,
    pub deliver_after: Duration,
}

struct Parcel {
    since: Instant,
}

#[derive(Default)]
struct Books {
    ledger: CarrierLedger,
    parcels: Vec<Parcel>,
    /// Parcels that may still move (not held, not delivered or cancelled): what `advance` scans.
    moving: Vec<usize>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    updates: Vec<TrackingUpdate>,
}

impl Books {
    fn set_status(&mut self, i: usize, status: &str) {
        let booking = &mut self.ledger.bookings[i];
        booking.status = status.to_string();
        self.parcels[i].since = Instant::now();
        let update = TrackingUpdate {
            seq: self.updates.len() as u64 + 1,
            booking_id: booking.id.clone(),
            order_id: booking.order_id.clone(),
            status: status.to_string(),
        };
        self.updates.push(update);
    }
}

#[derive(Clone)]
pub struct Carrier {
    books: Arc<Mutex<Books>>,
    pace: Pace,
    pub faults: FaultState,
}

const PAGE: usize = 500;

impl Carrier {
    pub fn new(pace: Pace) -> Carrier {
        Carrier {
            books: Arc::default(),
            pace,
            faults: FaultState::default(),
        }
    }

    pub fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/v1/bookings", web::post().to(book))
            .route("/v1/bookings", web::get().to(find))
            .route("/v1/bookings/{id}/cancel", web::post().to(cancel))
            .route("/v1/tracking", web::get().to(tracking))
            .route("/v1/ledger", web::get().to(ledger));
    }

    /// Move parcels along: booked → picked up → delivered, each after its pace.
    pub fn advance(&self) {
        let mut books = lock(&self.books);
        let mut moving = std::mem::take(&mut books.moving);
        moving.retain(|&i| {
            let elapsed = books.parcels[i].since.elapsed();
            let next = match books.ledger.bookings[i].status.as_str() {
                "booked" if elapsed >= self.pace.pickup_after => "picked_up",
                "picked_up" if elapsed >= self.pace.deliver_after => "delivered",
                "booked" | "picked_up" => return true,
                _ => return false,
            };
            books.set_status(i, next);
            next != "delivered"
        });
        books.moving = moving;
    }
}

async fn book(carrier: web::Data<Carrier>, req: web::Json<BookingRequest>) -> HttpResponse {
    if let Some(failure) = carrier.faults.refuse() {
        return failure;
    }
    let answer = booked(&carrier, req.into_inner());
    carrier.faults.answer_late().await;
    answer
}

fn booked(carrier: &Carrier, req: BookingRequest) -> HttpResponse {
    let mut books = lock(&carrier.books);
    if let Some(&i) = books.by_key.get(&req.idempotency_key) {
        return HttpResponse::Ok().json(&books.ledger.bookings[i]);
    }
    let address = req.shipping_address.to_lowercase();
    if address.contains(UNDELIVERABLE) {
        return HttpResponse::UnprocessableEntity()
            .json(json!({ "error": "undeliverable address" }));
    }
    let reply = BookingReply {
        id: format!("bk_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: req.idempotency_key.clone(),
        order_id: req.order_id,
        ship_from: req.ship_from,
        estimated_delivery: (chrono::Utc::now() + chrono::Duration::days(2))
            .format("%Y-%m-%d")
            .to_string(),
        status: "booked".into(),
    };
    let i = books.ledger.bookings.len();
    books.ledger.bookings.push(reply.clone());
    books.parcels.push(Parcel {
        since: Instant::now(),
    });
    // A held parcel is never picked up.
    if !address.contains(HOLD) {
        books.moving.push(i);
    }
    books.by_key.insert(req.idempotency_key, i);
    books.by_id.insert(reply.id.clone(), i);
    HttpResponse::Ok().json(reply)
}

#[derive(Deserialize)]
struct ByKey {
    idempotency_key: String,
}

/// `GET /v1/bookings?idempotency_key=K`: the booking made under a key, or 404.
async fn find(carrier: web::Data<Carrier>, query: web::Query<ByKey>) -> HttpResponse {
    if let Some(failure) = carrier.faults.inject().await {
        return failure;
    }
    let books = lock(&carrier.books);
    match books.by_key.get(&query.idempotency_key) {
        Some(&i) => HttpResponse::Ok().json(&books.ledger.bookings[i]),
        None => HttpResponse::NotFound().json(json!({ "error": "no booking under this key" })),
    }
}

async fn cancel(carrier: web::Data<Carrier>, id: web::Path<String>) -> HttpResponse {
    if let Some(failure) = carrier.faults.refuse() {
        return failure;
    }
    let answer = cancelled(&carrier, &id);
    carrier.faults.answer_late().await;
    answer
}

fn cancelled(carrier: &Carrier, id: &str) -> HttpResponse {
    let mut books = lock(&carrier.books);
    let Some(&i) = books.by_id.get(id) else {
        return HttpResponse::NotFound().json(json!({ "error": "no such booking" }));
    };
    match books.ledger.bookings[i].status.as_str() {
        "booked" => books.set_status(i, "cancelled"),
        "cancelled" => {}
        _ => {
            return HttpResponse::Conflict()
                .json(json!({ "error": "the parcel was already picked up" }))
        }
    }
    HttpResponse::Ok().json(&books.ledger.bookings[i])
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn tracking(carrier: web::Data<Carrier>, query: web::Query<After>) -> HttpResponse {
    let books = lock(&carrier.books);
    let start = usize::try_from(query.after)
        .unwrap_or(usize::MAX)
        .min(books.updates.len());
    let updates: Vec<TrackingUpdate> = books.updates[start..].iter().take(PAGE).cloned().collect();
    let next = updates.last().map_or(query.after, |u| u.seq);
    HttpResponse::Ok().json(TrackingPage { updates, next })
}

async fn ledger(carrier: web::Data<Carrier>) -> HttpResponse {
    let books = lock(&carrier.books);
    let mut ledger = books.ledger.clone();
    ledger.calls = carrier.faults.calls();
    HttpResponse::Ok().json(ledger)
}
