//! The payment gateway simulator: a card vault (`POST /v1/tokens`, `GET /v1/tokens/{token}`),
//! and authorizations and refunds, each idempotent by its key, kept in a ledger
//! (`GET /v1/ledger`) so a double charge or a missing refund is visible.
//! Card [`DECLINED_CARD`](crate::catalog::DECLINED_CARD) tokenizes, then is always declined.
//! Faults apply to authorizations and refunds; the vault (a card form's tokenization) stays up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::faults::FaultState;
use super::lock;
use crate::catalog::{card_digits, DECLINED_CARD};
use crate::external::payment_gateway::{
    AuthorizationReply, AuthorizeRequest, CardToken, RefundReply, RefundRequest, TokenRequest,
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
    /// token → card number: the only place card numbers are kept.
    vault: HashMap<String, String>,
    ledger: PaymentLedger,
    authorization_by_key: HashMap<String, usize>,
    authorization_by_id: HashMap<String, usize>,
    refund_by_key: HashMap<String, usize>,
    /// Authorization ids refunded (under whatever key).
    refunded: HashSet<String>,
}

#[derive(Clone)]
pub struct PaymentGateway {
    books: Arc<Mutex<Books>>,
    /// Tokens are derived from the card under this run's secret: the same card, the same token.
    secret: uuid::Uuid,
    pub faults: FaultState,
}

impl Default for PaymentGateway {
    fn default() -> Self {
        PaymentGateway {
            books: Arc::default(),
            secret: uuid::Uuid::now_v7(),
            faults: FaultState::default(),
        }
    }
}

impl PaymentGateway {
    pub fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/v1/tokens", web::post().to(tokenize))
            .route("/v1/tokens/{token}", web::get().to(card))
            .route("/v1/authorizations", web::post().to(authorize))
            .route("/v1/refunds", web::post().to(refund))
            .route("/v1/ledger", web::get().to(ledger));
    }
}

async fn tokenize(gw: web::Data<PaymentGateway>, req: web::Json<TokenRequest>) -> HttpResponse {
    let digits = match card_digits(&req.card_number) {
        Ok(digits) => digits,
        Err(e) => return HttpResponse::UnprocessableEntity().json(json!({ "error": e.message() })),
    };
    let token = format!(
        "tok_{}",
        uuid::Uuid::new_v5(&gw.secret, digits.as_bytes()).simple()
    );
    let answer = card_token(&token, &digits);
    lock(&gw.books).vault.insert(token, digits);
    HttpResponse::Ok().json(answer)
}

async fn card(gw: web::Data<PaymentGateway>, token: web::Path<String>) -> HttpResponse {
    match lock(&gw.books).vault.get(token.as_str()) {
        Some(digits) => HttpResponse::Ok().json(card_token(&token, digits)),
        None => HttpResponse::NotFound().json(json!({ "error": "unknown payment token" })),
    }
}

fn card_token(token: &str, digits: &str) -> CardToken {
    let brand = match digits.as_bytes() {
        [b'4', ..] => "visa",
        [b'5', b'1'..=b'5', ..] => "mastercard",
        [b'3', b'4' | b'7', ..] => "amex",
        _ => "card",
    };
    CardToken {
        token: token.to_string(),
        brand: brand.into(),
        last4: digits[digits.len().saturating_sub(4)..].to_string(),
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
    // A token from the vault; events written before tokenization carry the test card itself.
    let card = match books.vault.get(&req.payment_token) {
        Some(digits) => Some(digits.clone()),
        None => card_digits(&req.payment_token).ok(),
    };
    let decline_reason = match card.as_deref() {
        None => Some("unknown payment token"),
        Some(DECLINED_CARD) => Some("card declined"),
        Some(_) => None,
    };
    let declined = decline_reason.is_some();
    let reply = AuthorizationReply {
        id: format!("auth_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: req.idempotency_key.clone(),
        order_id: req.order_id,
        amount_cents: req.amount_cents,
        status: if declined { "declined" } else { "approved" }.into(),
        decline_reason: decline_reason.map(str::to_string),
    };
    let i = books.ledger.authorizations.len();
    books.ledger.authorizations.push(reply.clone());
    books.authorization_by_key.insert(req.idempotency_key, i);
    books.authorization_by_id.insert(reply.id.clone(), i);
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
        .authorization_by_id
        .get(&req.authorization_id)
        .map(|&i| &books.ledger.authorizations[i])
    else {
        return HttpResponse::NotFound().json(json!({ "error": "no such authorization" }));
    };
    if auth.status != "approved" || req.amount_cents > auth.amount_cents {
        return HttpResponse::UnprocessableEntity()
            .json(json!({ "error": "refund exceeds the approved amount" }));
    }
    if books.refunded.contains(&req.authorization_id) {
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
    books.refunded.insert(reply.authorization_id.clone());
    HttpResponse::Ok().json(reply)
}

async fn ledger(gw: web::Data<PaymentGateway>) -> HttpResponse {
    let books = lock(&gw.books);
    let mut ledger = books.ledger.clone();
    ledger.calls = gw.faults.calls();
    HttpResponse::Ok().json(ledger)
}
