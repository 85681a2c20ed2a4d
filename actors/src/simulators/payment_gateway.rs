//! The payment gateway simulator: authorizations and refunds, each idempotent by its key, kept
//! in a ledger (`GET /v1/ledger`) so a double charge or a missing refund is visible.
//! Card [`DECLINED_CARD`](crate::catalog::DECLINED_CARD) is always declined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::faults::FaultState;
use super::lock;
use crate::catalog::DECLINED_CARD;
use crate::external::payment_gateway::{
    AuthorizationReply, AuthorizeRequest, RefundReply, RefundRequest,
};

/// Everything the gateway ever did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentLedger {
    pub authorizations: Vec<AuthorizationReply>,
    pub refunds: Vec<RefundReply>,
    /// Calls that reached the gateway, including faulted ones.
    #[serde(default)]
    pub calls: u64,
}

#[derive(Default)]
struct Books {
    ledger: PaymentLedger,
    authorization_by_key: HashMap<String, usize>,
    refund_by_key: HashMap<String, usize>,
}

#[derive(Clone, Default)]
pub struct PaymentGateway {
    books: Arc<Mutex<Books>>,
    pub faults: FaultState,
}

impl PaymentGateway {
    pub fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/v1/authorizations", web::post().to(authorize))
            .route("/v1/refunds", web::post().to(refund))
            .route("/v1/ledger", web::get().to(ledger));
    }
}

async fn authorize(
    gw: web::Data<PaymentGateway>,
    req: web::Json<AuthorizeRequest>,
) -> HttpResponse {
    if let Some(failure) = gw.faults.inject().await {
        return failure;
    }
    let req = req.into_inner();
    let mut books = lock(&gw.books);
    if let Some(&i) = books.authorization_by_key.get(&req.idempotency_key) {
        return HttpResponse::Ok().json(&books.ledger.authorizations[i]);
    }
    let declined = req.card_number == DECLINED_CARD;
    let reply = AuthorizationReply {
        id: format!("auth_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: req.idempotency_key.clone(),
        order_id: req.order_id,
        amount_cents: req.amount_cents,
        status: if declined { "declined" } else { "approved" }.into(),
        decline_reason: declined.then(|| "card declined".to_string()),
    };
    let i = books.ledger.authorizations.len();
    books.ledger.authorizations.push(reply.clone());
    books.authorization_by_key.insert(req.idempotency_key, i);
    HttpResponse::Ok().json(reply)
}

async fn refund(gw: web::Data<PaymentGateway>, req: web::Json<RefundRequest>) -> HttpResponse {
    if let Some(failure) = gw.faults.inject().await {
        return failure;
    }
    let req = req.into_inner();
    let mut books = lock(&gw.books);
    if let Some(&i) = books.refund_by_key.get(&req.idempotency_key) {
        return HttpResponse::Ok().json(&books.ledger.refunds[i]);
    }
    let Some(auth) = books
        .ledger
        .authorizations
        .iter()
        .find(|a| a.id == req.authorization_id)
    else {
        return HttpResponse::NotFound().json(json!({ "error": "no such authorization" }));
    };
    if auth.status != "approved" || req.amount_cents > auth.amount_cents {
        return HttpResponse::UnprocessableEntity()
            .json(json!({ "error": "refund exceeds the approved amount" }));
    }
    if books
        .ledger
        .refunds
        .iter()
        .any(|r| r.authorization_id == req.authorization_id)
    {
        return HttpResponse::Conflict()
            .json(json!({ "error": "authorization already refunded under another key" }));
    }
    let reply = RefundReply {
        id: format!("refund_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: req.idempotency_key.clone(),
        order_id: req.order_id,
        authorization_id: req.authorization_id,
        amount_cents: req.amount_cents,
    };
    let i = books.ledger.refunds.len();
    books.ledger.refunds.push(reply.clone());
    books.refund_by_key.insert(req.idempotency_key, i);
    HttpResponse::Ok().json(reply)
}

async fn ledger(gw: web::Data<PaymentGateway>) -> HttpResponse {
    let books = lock(&gw.books);
    let mut ledger = books.ledger.clone();
    ledger.calls = gw.faults.calls();
    HttpResponse::Ok().json(ledger)
}
